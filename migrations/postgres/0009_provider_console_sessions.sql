-- Provider console sessions as rows (PostgreSQL twin of
-- migrations/sqlite/0007_provider_console_sessions.sql).
CREATE TABLE provider_console_sessions (
    id_hash      TEXT   PRIMARY KEY,
    token_id     BIGINT NOT NULL REFERENCES provider_tokens(id),
    csrf_hash    TEXT   NOT NULL,
    created_at   BIGINT NOT NULL,
    last_seen_at BIGINT NOT NULL
);
CREATE INDEX provider_console_sessions_last_seen ON provider_console_sessions(last_seen_at);
CREATE INDEX console_sessions_last_seen ON console_sessions(last_seen_at);
