-- Shared short-lived state (sessions, codes, nonces) in KV buckets, and the
-- audit trail made append-only in the database itself.

-- One sequence for the revisions of every bucket: a key deleted and created
-- again never gets a revision from its previous life, whichever node writes.
CREATE SEQUENCE kv_revision AS BIGINT MINVALUE 1;

-- Keys are bytes (any UTF-8 string, NUL included, which TEXT refuses);
-- expires_at is Unix milliseconds. A row whose expires_at has passed is
-- invisible to every operation and removed by the stores' sweep.
CREATE TABLE kv (
    bucket     TEXT COLLATE "C" NOT NULL,
    key        BYTEA            NOT NULL,
    value      BYTEA            NOT NULL,
    revision   BIGINT           NOT NULL,
    expires_at BIGINT           NOT NULL,
    PRIMARY KEY (bucket, key)
);
CREATE INDEX kv_by_expiry ON kv (expires_at);

-- The audit trail is append-only: rows cannot change or go, one by one or
-- all at once.
CREATE FUNCTION audit_log_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_log is append-only: % refused', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END;
$$;

CREATE TRIGGER audit_log_no_update_or_delete
    BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_append_only();

CREATE TRIGGER audit_log_no_truncate
    BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION audit_log_append_only();
