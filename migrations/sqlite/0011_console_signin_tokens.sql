-- The token an operator's console sign-in makes for its session (its value is hashed and
-- dropped at once). It is revoked when that session ends (logout, expiry, sweep); a token the
-- operator typed into the sign-in form is its own and outlives the session.
ALTER TABLE provider_tokens ADD COLUMN console_signin INTEGER NOT NULL DEFAULT 0;
