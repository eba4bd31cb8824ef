-- Cloud service API sessions (JSESSIONID). Only a hash of the session id is stored; each
-- session is bound to the org's key generation at login (R7).
CREATE TABLE api_sessions (
    id_hash      TEXT    PRIMARY KEY,
    org_id       INTEGER NOT NULL REFERENCES orgs(id),
    admin_id     INTEGER NOT NULL REFERENCES admins(id),
    generation   INTEGER NOT NULL,
    created_at   INTEGER NOT NULL,
    last_seen_at INTEGER NOT NULL
);
CREATE INDEX api_sessions_org ON api_sessions(org_id);
CREATE INDEX api_sessions_admin ON api_sessions(admin_id);
