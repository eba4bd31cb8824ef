-- Global rate limits (issue 14): each org's count per rule per clock-aligned window, shared by
-- every node. Nodes only ever claim a share of what is left (`taken` grows up to the rule's
-- limit in one statement) and give back what they did not use. Swept once the window is over.
CREATE TABLE rate_windows (
    org_id BIGINT NOT NULL,
    rule TEXT NOT NULL,
    window_start BIGINT NOT NULL,
    window_end BIGINT NOT NULL,
    taken INTEGER NOT NULL CHECK (taken >= 0),
    claimers INTEGER NOT NULL,
    last_grant INTEGER NOT NULL,
    PRIMARY KEY (org_id, rule, window_start)
);
CREATE INDEX rate_windows_end ON rate_windows (window_end);
