-- `INSERT OR REPLACE` deletes the old row without firing the delete trigger; refuse any
-- insert that would land on an existing audit id.
CREATE TRIGGER audit_log_no_replace BEFORE INSERT ON audit_log
WHEN NEW.id IS NOT NULL AND EXISTS (SELECT 1 FROM audit_log WHERE id = NEW.id)
BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END;

-- Deployment facts, e.g. a value sealed with the master key, so that a start with the wrong
-- master key is refused instead of failing on every key later.
CREATE TABLE meta (
    name  TEXT PRIMARY KEY,
    value BLOB NOT NULL
);
