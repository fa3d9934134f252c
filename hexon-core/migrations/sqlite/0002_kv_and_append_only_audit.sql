-- Shared short-lived state (sessions, codes, nonces) in KV buckets, and the
-- audit trail made append-only in the database itself.

-- Keys are bytes (any UTF-8 string, NUL included); expires_at is Unix
-- milliseconds. A row whose expires_at has passed is invisible to every
-- operation and removed by the store's sweep.
CREATE TABLE kv (
    bucket     TEXT    NOT NULL,
    key        BLOB    NOT NULL,
    value      BLOB    NOT NULL,
    revision   INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    PRIMARY KEY (bucket, key)
);
CREATE INDEX kv_by_expiry ON kv (expires_at);

-- The last revision handed out, in every bucket. It only grows (the
-- triggers below keep it at the highest revision ever written), so a key
-- deleted and created again never gets a revision from its previous life.
CREATE TABLE kv_revision (
    id   INTEGER NOT NULL PRIMARY KEY CHECK (id = 1),
    last INTEGER NOT NULL
);
INSERT INTO kv_revision (id, last) VALUES (1, 0);

CREATE TRIGGER kv_revision_on_insert AFTER INSERT ON kv
BEGIN
    UPDATE kv_revision SET last = NEW.revision WHERE id = 1 AND last < NEW.revision;
END;

CREATE TRIGGER kv_revision_on_update AFTER UPDATE OF revision ON kv
BEGIN
    UPDATE kv_revision SET last = NEW.revision WHERE id = 1 AND last < NEW.revision;
END;

-- The audit trail is append-only.
CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
BEGIN
    SELECT RAISE(ABORT, 'audit_log is append-only: rows cannot be updated');
END;

CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
BEGIN
    SELECT RAISE(ABORT, 'audit_log is append-only: rows cannot be removed');
END;
