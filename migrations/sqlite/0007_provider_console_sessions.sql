-- Provider console sessions as rows (issue 14), like console_sessions: any node serves any
-- page, and a logout or expiry holds on every node. Only hashes of the secrets are stored.
CREATE TABLE provider_console_sessions (
    id_hash      TEXT    PRIMARY KEY,             -- SHA-256 of the cookie value
    token_id     INTEGER NOT NULL REFERENCES provider_tokens(id),
    csrf_hash    TEXT    NOT NULL,                -- SHA-256 of the CSRF token
    created_at   INTEGER NOT NULL,                -- unix ms
    last_seen_at INTEGER NOT NULL
);
-- For the sweep of expired sessions.
CREATE INDEX provider_console_sessions_last_seen ON provider_console_sessions(last_seen_at);
CREATE INDEX console_sessions_last_seen ON console_sessions(last_seen_at);
