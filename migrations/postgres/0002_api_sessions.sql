CREATE TABLE api_sessions (
    id_hash      TEXT   PRIMARY KEY,
    org_id       BIGINT NOT NULL REFERENCES orgs(id),
    admin_id     BIGINT NOT NULL REFERENCES admins(id),
    generation   BIGINT NOT NULL,
    created_at   BIGINT NOT NULL,
    last_seen_at BIGINT NOT NULL
);
CREATE INDEX api_sessions_org ON api_sessions(org_id);
CREATE INDEX api_sessions_admin ON api_sessions(admin_id);
