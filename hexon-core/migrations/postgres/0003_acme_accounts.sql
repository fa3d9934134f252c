-- ACME (RFC 8555) accounts of the certificate authority.
--
-- key_thumbprint is the RFC 7638 SHA-256 thumbprint of the account key
-- (base64url): one account per key. jwk is the public key as JSON text
-- (kept byte for byte); contacts is a JSON array of strings (TEXT). Times
-- are Unix seconds (BIGINT). Keys use COLLATE "C" (compared by bytes).

CREATE TABLE acme_accounts (
    id             TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    key_thumbprint TEXT COLLATE "C" NOT NULL UNIQUE,
    jwk            TEXT             NOT NULL,
    contacts       TEXT             NOT NULL,
    status         TEXT             NOT NULL CHECK (status IN ('valid', 'deactivated', 'revoked')),
    eab_key_id     TEXT,
    created_at     BIGINT           NOT NULL,
    version        BIGINT           NOT NULL
);
