-- The ZIA audit log report of each admin, kept where every node sees it.
CREATE TABLE audit_reports (
    admin_id    BIGINT PRIMARY KEY REFERENCES admins(id),
    csv         TEXT   NOT NULL,
    rows_count  BIGINT NOT NULL,
    finished_at BIGINT NOT NULL
);
