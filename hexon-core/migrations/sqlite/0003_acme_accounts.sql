-- ACME (RFC 8555) accounts of the certificate authority.
--
-- key_thumbprint is the RFC 7638 SHA-256 thumbprint of the account key
-- (base64url): one account per key. jwk is the public key as JSON text;
-- contacts is a JSON array of strings. Times are Unix seconds.

CREATE TABLE acme_accounts (
    id             TEXT    NOT NULL PRIMARY KEY,
    key_thumbprint TEXT    NOT NULL UNIQUE,
    jwk            TEXT    NOT NULL,
    contacts       TEXT    NOT NULL,
    status         TEXT    NOT NULL CHECK (status IN ('valid', 'deactivated', 'revoked')),
    eab_key_id     TEXT,
    created_at     INTEGER NOT NULL,
    version        INTEGER NOT NULL
);
