-- Durable objects: the directory (per source, normalised), credentials,
-- API clients and their permissions, OIDC clients, issued certificates and
-- the audit trail.
--
-- Times are Unix seconds (BIGINT). Lists are JSON arrays of strings (TEXT,
-- kept byte for byte). Secrets arrive sealed by the gateway
-- (material_type = 'sealed'); the database never sees them in the clear.
-- Keys that are listed in order use COLLATE "C" so every backend sorts the
-- same way (by bytes), whatever the database's locale.

CREATE TABLE directory_sources (
    source   TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    saved_at BIGINT           NOT NULL
);

CREATE TABLE directory_users (
    source       TEXT COLLATE "C" NOT NULL REFERENCES directory_sources (source) ON DELETE CASCADE,
    subject      TEXT COLLATE "C" NOT NULL,
    position     BIGINT           NOT NULL,
    username     TEXT,
    email        TEXT,
    display_name TEXT,
    disabled     BOOLEAN,
    PRIMARY KEY (source, subject)
);
CREATE INDEX directory_users_by_subject ON directory_users (subject);

CREATE TABLE directory_groups (
    source       TEXT COLLATE "C" NOT NULL REFERENCES directory_sources (source) ON DELETE CASCADE,
    name         TEXT COLLATE "C" NOT NULL,
    position     BIGINT           NOT NULL,
    display_name TEXT,
    PRIMARY KEY (source, name)
);

-- User `subject` is a direct member of `group_name`.
CREATE TABLE directory_user_memberships (
    source     TEXT COLLATE "C" NOT NULL REFERENCES directory_sources (source) ON DELETE CASCADE,
    subject    TEXT COLLATE "C" NOT NULL,
    group_name TEXT COLLATE "C" NOT NULL,
    PRIMARY KEY (source, subject, group_name)
);

-- Group `child` is a member of group `parent`.
CREATE TABLE directory_group_memberships (
    source TEXT COLLATE "C" NOT NULL REFERENCES directory_sources (source) ON DELETE CASCADE,
    child  TEXT COLLATE "C" NOT NULL,
    parent TEXT COLLATE "C" NOT NULL,
    PRIMARY KEY (source, child, parent)
);

CREATE TABLE credentials (
    id            TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    owner         TEXT COLLATE "C" NOT NULL,
    kind          TEXT             NOT NULL,
    label         TEXT             NOT NULL,
    lookup        TEXT COLLATE "C",
    material_type TEXT             NOT NULL CHECK (material_type IN ('hash', 'public', 'sealed')),
    material      BYTEA            NOT NULL,
    counter       BIGINT           NOT NULL DEFAULT 0,
    created_at    BIGINT           NOT NULL,
    last_used_at  BIGINT,
    expires_at    BIGINT,
    UNIQUE (kind, lookup)
);
CREATE INDEX credentials_by_owner ON credentials (owner, created_at, id);

CREATE TABLE api_clients (
    id                    TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    name                  TEXT COLLATE "C" NOT NULL UNIQUE,
    status                TEXT             NOT NULL CHECK (status IN ('active', 'suspended', 'revoked')),
    groups                TEXT             NOT NULL,
    description           TEXT             NOT NULL,
    rate_limit_per_minute BIGINT,
    created_at            BIGINT           NOT NULL,
    updated_at            BIGINT           NOT NULL,
    version               BIGINT           NOT NULL
);

CREATE TABLE api_client_permissions (
    client_id TEXT COLLATE "C" NOT NULL REFERENCES api_clients (id) ON DELETE CASCADE,
    route     TEXT COLLATE "C" NOT NULL,
    methods   TEXT             NOT NULL,
    PRIMARY KEY (client_id, route)
);

CREATE TABLE oidc_clients (
    client_id     TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    name          TEXT             NOT NULL,
    redirect_uris TEXT             NOT NULL,
    secret_hash   TEXT,
    grant_types   TEXT             NOT NULL,
    scopes        TEXT             NOT NULL,
    created_at    BIGINT           NOT NULL,
    version       BIGINT           NOT NULL
);

CREATE TABLE certificates (
    issuer            TEXT COLLATE "C" NOT NULL,
    serial            TEXT COLLATE "C" NOT NULL,
    subject           TEXT             NOT NULL,
    sans              TEXT             NOT NULL,
    profile           TEXT             NOT NULL,
    not_before        BIGINT           NOT NULL,
    not_after         BIGINT           NOT NULL,
    requester         TEXT,
    der               BYTEA            NOT NULL,
    revoked_at        BIGINT,
    revocation_reason BIGINT,
    PRIMARY KEY (issuer, serial),
    CHECK ((revoked_at IS NULL) = (revocation_reason IS NULL))
);
CREATE INDEX certificates_revoked ON certificates (issuer, serial) WHERE revoked_at IS NOT NULL;

CREATE TABLE audit_log (
    seq     BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at      BIGINT NOT NULL,
    kind    TEXT   NOT NULL,
    actor   TEXT,
    subject TEXT,
    outcome TEXT   NOT NULL,
    detail  TEXT   NOT NULL
);
