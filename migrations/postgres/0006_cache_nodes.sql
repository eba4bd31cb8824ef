-- Nodes that keep a cache of sessions and orgs (`--node-cache`, see src/service/peers.rs):
-- a change is answered once every node whose lease has not ended confirmed that it forgot
-- the org, or once that lease ended.
CREATE TABLE cache_nodes (
    id          BIGINT      PRIMARY KEY,
    lease_until TIMESTAMPTZ NOT NULL
);
