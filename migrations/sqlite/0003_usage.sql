-- API call counts per org and period (R9, metering). Written in the background from the
-- in-memory counters; one row per (org, period length, period start).
CREATE TABLE usage_counters (
    org_id         INTEGER NOT NULL REFERENCES orgs(id),
    period_seconds INTEGER NOT NULL,
    period_start   INTEGER NOT NULL,              -- unix seconds, a multiple of period_seconds
    calls          INTEGER NOT NULL,
    PRIMARY KEY (org_id, period_seconds, period_start)
);
