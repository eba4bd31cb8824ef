-- PostgreSQL twin of migrations/sqlite/0011_console_signin_tokens.sql: the token an
-- operator's console sign-in makes for its session, revoked when that session ends.
ALTER TABLE provider_tokens ADD COLUMN console_signin BOOLEAN NOT NULL DEFAULT FALSE;
