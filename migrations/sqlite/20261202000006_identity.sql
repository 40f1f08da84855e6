-- Single sign-on: identity providers (OIDC and LDAP directories) configured by admins and shared by
-- every webapp instance; users that come from one (the provider and their stable id there: the OIDC
-- `sub`, the LDAP DN); and the OIDC logins under way (state, nonce and PKCE verifier, bound to the
-- browser that started them, used once).
CREATE TABLE identity_providers (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    name TEXT NOT NULL UNIQUE,
    config TEXT NOT NULL,
    secret_enc TEXT,
    enabled BIGINT NOT NULL DEFAULT 1,
    created_at BIGINT NOT NULL
);

ALTER TABLE users ADD COLUMN provider_id TEXT REFERENCES identity_providers(id);
ALTER TABLE users ADD COLUMN external_id TEXT;
CREATE UNIQUE INDEX users_external ON users(provider_id, external_id);

CREATE TABLE oidc_logins (
    state_hash TEXT PRIMARY KEY,
    provider_id TEXT NOT NULL REFERENCES identity_providers(id) ON DELETE CASCADE,
    nonce TEXT NOT NULL,
    verifier TEXT NOT NULL,
    binding_hash TEXT NOT NULL,
    next_path TEXT NOT NULL,
    expires_at BIGINT NOT NULL
);
