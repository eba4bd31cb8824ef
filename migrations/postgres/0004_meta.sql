-- (SQLite's 0004 also blocks INSERT OR REPLACE on audit_log; PostgreSQL has no such
-- statement, and ON CONFLICT DO UPDATE is caught by the update trigger.)
CREATE TABLE meta (
    name  TEXT  PRIMARY KEY,
    value BYTEA NOT NULL
);
