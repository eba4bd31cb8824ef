-- Login hardening (issue 12): failure counters that survive restarts and hold across nodes,
-- each admin's key-guessing budget, and the keys an org replaced (to recognize old scripts and
-- to keep a new key distinguishable from them at every login timestamp).

-- One row per counted scope: a client address, a (login, address) pair or a login name. The
-- scope is stored as a SHA-256 hex digest: a typed login name may be a password.
CREATE TABLE login_failures (
    scope        TEXT    PRIMARY KEY,
    window_start INTEGER NOT NULL,              -- unix ms
    failures     INTEGER NOT NULL
);
CREATE INDEX login_failures_window ON login_failures(window_start);

-- The win probability charged by failures with the right password and a wrong key; the
-- admin's API logins are locked while it is at or above the budget (domain::login_guard).
ALTER TABLE admins ADD COLUMN key_guess_spent    REAL    NOT NULL DEFAULT 0;
ALTER TABLE admins ADD COLUMN key_guess_failures INTEGER NOT NULL DEFAULT 0;
ALTER TABLE admins ADD COLUMN key_guess_last_at  INTEGER;

CREATE TABLE replaced_keys (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    org_id      INTEGER NOT NULL REFERENCES orgs(id),
    sealed      BLOB    NOT NULL,               -- AES-256-GCM, AAD bound to org_id
    replaced_at INTEGER NOT NULL
);
CREATE INDEX replaced_keys_org ON replaced_keys(org_id, id);
