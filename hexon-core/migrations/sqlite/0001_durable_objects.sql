-- Durable objects: the directory (per source, normalised), credentials,
-- API clients and their permissions, OIDC clients, issued certificates and
-- the audit trail.
--
-- Times are Unix seconds. Lists are JSON arrays of strings (TEXT). Secrets
-- arrive sealed by the gateway (material_type = 'sealed'); the database
-- never sees them in the clear.

CREATE TABLE directory_sources (
    source   TEXT    NOT NULL PRIMARY KEY,
    saved_at INTEGER NOT NULL
);

CREATE TABLE directory_users (
    source       TEXT    NOT NULL REFERENCES directory_sources (source) ON DELETE CASCADE,
    subject      TEXT    NOT NULL,
    position     INTEGER NOT NULL,
    username     TEXT,
    email        TEXT,
    display_name TEXT,
    disabled     INTEGER CHECK (disabled IN (0, 1)),
    PRIMARY KEY (source, subject)
);
CREATE INDEX directory_users_by_subject ON directory_users (subject);

CREATE TABLE directory_groups (
    source       TEXT    NOT NULL REFERENCES directory_sources (source) ON DELETE CASCADE,
    name         TEXT    NOT NULL,
    position     INTEGER NOT NULL,
    display_name TEXT,
    PRIMARY KEY (source, name)
);

-- User `subject` is a direct member of `group_name`.
CREATE TABLE directory_user_memberships (
    source     TEXT NOT NULL REFERENCES directory_sources (source) ON DELETE CASCADE,
    subject    TEXT NOT NULL,
    group_name TEXT NOT NULL,
    PRIMARY KEY (source, subject, group_name)
);

-- Group `child` is a member of group `parent`.
CREATE TABLE directory_group_memberships (
    source TEXT NOT NULL REFERENCES directory_sources (source) ON DELETE CASCADE,
    child  TEXT NOT NULL,
    parent TEXT NOT NULL,
    PRIMARY KEY (source, child, parent)
);

CREATE TABLE credentials (
    id            TEXT    NOT NULL PRIMARY KEY,
    owner         TEXT    NOT NULL,
    kind          TEXT    NOT NULL,
    label         TEXT    NOT NULL,
    lookup        TEXT,
    material_type TEXT    NOT NULL CHECK (material_type IN ('hash', 'public', 'sealed')),
    material      BLOB    NOT NULL,
    counter       INTEGER NOT NULL DEFAULT 0,
    created_at    INTEGER NOT NULL,
    last_used_at  INTEGER,
    expires_at    INTEGER,
    UNIQUE (kind, lookup)
);
CREATE INDEX credentials_by_owner ON credentials (owner, created_at, id);

CREATE TABLE api_clients (
    id                    TEXT    NOT NULL PRIMARY KEY,
    name                  TEXT    NOT NULL UNIQUE,
    status                TEXT    NOT NULL CHECK (status IN ('active', 'suspended', 'revoked')),
    groups                TEXT    NOT NULL,
    description           TEXT    NOT NULL,
    rate_limit_per_minute INTEGER,
    created_at            INTEGER NOT NULL,
    updated_at            INTEGER NOT NULL,
    version               INTEGER NOT NULL
);

CREATE TABLE api_client_permissions (
    client_id TEXT NOT NULL REFERENCES api_clients (id) ON DELETE CASCADE,
    route     TEXT NOT NULL,
    methods   TEXT NOT NULL,
    PRIMARY KEY (client_id, route)
);

CREATE TABLE oidc_clients (
    client_id     TEXT    NOT NULL PRIMARY KEY,
    name          TEXT    NOT NULL,
    redirect_uris TEXT    NOT NULL,
    secret_hash   TEXT,
    grant_types   TEXT    NOT NULL,
    scopes        TEXT    NOT NULL,
    created_at    INTEGER NOT NULL,
    version       INTEGER NOT NULL
);

CREATE TABLE certificates (
    issuer            TEXT    NOT NULL,
    serial            TEXT    NOT NULL,
    subject           TEXT    NOT NULL,
    sans              TEXT    NOT NULL,
    profile           TEXT    NOT NULL,
    not_before        INTEGER NOT NULL,
    not_after         INTEGER NOT NULL,
    requester         TEXT,
    der               BLOB    NOT NULL,
    revoked_at        INTEGER,
    revocation_reason INTEGER,
    PRIMARY KEY (issuer, serial),
    CHECK ((revoked_at IS NULL) = (revocation_reason IS NULL))
);
CREATE INDEX certificates_revoked ON certificates (issuer, serial) WHERE revoked_at IS NOT NULL;

-- AUTOINCREMENT: a position is never handed out twice.
CREATE TABLE audit_log (
    seq     INTEGER PRIMARY KEY AUTOINCREMENT,
    at      INTEGER NOT NULL,
    kind    TEXT    NOT NULL,
    actor   TEXT,
    subject TEXT,
    outcome TEXT    NOT NULL,
    detail  TEXT    NOT NULL
);
