-- Two tiers above an org (issue 15): the platform and its partners (service providers), and
-- named operators of either, with roles. Schema only; later changes go in new files.

CREATE TABLE partners (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    name          TEXT    NOT NULL UNIQUE,
    support_url   TEXT,                           -- shown with a partner's disablement notice
    support_email TEXT,
    created_at    INTEGER NOT NULL                -- unix ms
);

CREATE TABLE operators (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    partner_id    INTEGER REFERENCES partners(id), -- NULL = an operator of the platform
    login_name    TEXT    NOT NULL UNIQUE,        -- lower-cased
    display_name  TEXT    NOT NULL,
    password_hash TEXT    NOT NULL,               -- argon2id PHC string
    role          TEXT    NOT NULL CHECK (role IN ('OWNER', 'OPERATOR', 'AUDITOR')),
    created_at    INTEGER NOT NULL,
    removed_at    INTEGER                         -- NULL = active
);
CREATE INDEX operators_partner ON operators(partner_id);

-- A token with no operator is the bootstrap token (KEYGATE_PROVIDER_TOKEN / first start).
ALTER TABLE provider_tokens ADD COLUMN operator_id INTEGER REFERENCES operators(id);
ALTER TABLE provider_tokens ADD COLUMN expires_at INTEGER;   -- unix ms; NULL = never
ALTER TABLE provider_tokens ADD COLUMN revoked_at INTEGER;   -- unix ms; NULL = live

-- NULL = the platform's own org.
ALTER TABLE orgs ADD COLUMN partner_id INTEGER REFERENCES partners(id);
-- PRODUCT.md §3: the cloud service base URL, optionally per org; NULL = the deployment's.
ALTER TABLE orgs ADD COLUMN base_url TEXT;

-- Who disabled the key: the tier ('PLATFORM' or 'PARTNER', NULL for R9's automatic
-- disablement), the partner and the operator (NULL for a bootstrap token).
ALTER TABLE api_keys ADD COLUMN disabled_tier TEXT CHECK (disabled_tier IN ('PLATFORM', 'PARTNER'));
ALTER TABLE api_keys ADD COLUMN disabled_partner_id INTEGER;
ALTER TABLE api_keys ADD COLUMN disabled_operator_id INTEGER;

-- Audit names the person: the tier and partner of a provider-side actor, and the operator.
ALTER TABLE audit_log ADD COLUMN actor_tier TEXT;             -- 'PLATFORM' | 'PARTNER' | NULL
ALTER TABLE audit_log ADD COLUMN partner_id INTEGER;
ALTER TABLE audit_log ADD COLUMN operator_id INTEGER;
