-- Core schema: orgs, their admins, the one key per org, the audit log, provider tokens,
-- admin console sessions. Append-only: later changes go in new files.

CREATE TABLE orgs (
    id                      INTEGER PRIMARY KEY AUTOINCREMENT,
    name                    TEXT    NOT NULL,
    subscription_enabled    INTEGER NOT NULL CHECK (subscription_enabled IN (0, 1)),
    subscription_expires_at INTEGER,              -- unix seconds; NULL = never
    call_threshold_calls    INTEGER,              -- NULL = no threshold
    call_threshold_period_s INTEGER,
    rate_limits             TEXT,                 -- JSON; NULL = deployment default
    key_generation          INTEGER NOT NULL DEFAULT 0, -- bumped by every key change
    created_at              INTEGER NOT NULL      -- unix ms
);

CREATE TABLE admins (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    org_id        INTEGER NOT NULL REFERENCES orgs(id),
    login_name    TEXT    NOT NULL UNIQUE,        -- lower-cased
    password_hash TEXT    NOT NULL,               -- argon2id PHC string
    role          TEXT    NOT NULL CHECK (role IN ('FULL', 'VIEW_ONLY')),
    created_at    INTEGER NOT NULL
);
CREATE INDEX admins_org ON admins(org_id);

-- R1: at most one key per org, enforced here by UNIQUE(org_id).
CREATE TABLE api_keys (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    org_id           INTEGER NOT NULL UNIQUE REFERENCES orgs(id),
    sealed           BLOB    NOT NULL,            -- AES-256-GCM, AAD bound to org_id
    disabled_reason  TEXT CHECK (disabled_reason IN ('CALL_THRESHOLD_EXCEEDED', 'TERMS_VIOLATION', 'OTHER')),
    disabled_note    TEXT,
    modified_at      INTEGER NOT NULL,            -- unix ms
    modified_by_id   INTEGER NOT NULL,
    modified_by_name TEXT    NOT NULL
);

CREATE TABLE audit_log (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    at          INTEGER NOT NULL,                 -- unix ms
    org_id      INTEGER,                          -- NULL for a failed login under an unknown name
    actor_kind  TEXT    NOT NULL,
    actor_id    INTEGER NOT NULL,
    actor_name  TEXT    NOT NULL,
    action      TEXT    NOT NULL,
    key_suffix  TEXT CHECK (key_suffix IS NULL OR length(key_suffix) <= 3),
    details     TEXT    NOT NULL DEFAULT '{}',
    client_addr TEXT
);
CREATE INDEX audit_log_org ON audit_log(org_id, id);

CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END;
CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END;

CREATE TABLE provider_tokens (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    token_hash TEXT    NOT NULL UNIQUE,           -- SHA-256 of a 256-bit token
    label      TEXT    NOT NULL,
    created_at INTEGER NOT NULL
);

CREATE TABLE console_sessions (
    id_hash      TEXT    PRIMARY KEY,             -- SHA-256 of the cookie value
    admin_id     INTEGER NOT NULL REFERENCES admins(id),
    csrf_hash    TEXT    NOT NULL,
    created_at   INTEGER NOT NULL,
    last_seen_at INTEGER NOT NULL
);
CREATE INDEX console_sessions_admin ON console_sessions(admin_id);
