-- The ZIA audit log report of each admin, kept where every node sees it.
CREATE TABLE audit_reports (
    admin_id    INTEGER PRIMARY KEY REFERENCES admins(id),
    csv         TEXT    NOT NULL,
    rows_count  INTEGER NOT NULL,
    finished_at INTEGER NOT NULL
);
