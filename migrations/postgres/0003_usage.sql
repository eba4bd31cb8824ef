CREATE TABLE usage_counters (
    org_id         BIGINT NOT NULL REFERENCES orgs(id),
    period_seconds BIGINT NOT NULL,
    period_start   BIGINT NOT NULL,
    calls          BIGINT NOT NULL,
    PRIMARY KEY (org_id, period_seconds, period_start)
);
