-- dirsync log, schema 1 (PostgreSQL).
CREATE TABLE events (
    seq             BIGINT  PRIMARY KEY,
    stream          TEXT    NOT NULL,
    stream_version  BIGINT  NOT NULL,
    event_type      TEXT    NOT NULL,
    schema_version  INTEGER NOT NULL,
    instance        TEXT    NOT NULL,
    recorded_at_us  BIGINT  NOT NULL,
    idempotency_key TEXT,
    payload         TEXT    NOT NULL,
    prev_hash       BYTEA   NOT NULL,
    hash            BYTEA   NOT NULL,
    UNIQUE (stream, stream_version)
);
CREATE UNIQUE INDEX events_idempotency_key ON events (idempotency_key)
    WHERE idempotency_key IS NOT NULL;

-- The log is append-only: the store refuses to change or remove an event.
CREATE FUNCTION dirsync_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the event log is append-only';
END $$;
CREATE TRIGGER events_append_only BEFORE UPDATE OR DELETE ON events
    FOR EACH ROW EXECUTE FUNCTION dirsync_append_only();

CREATE TABLE streams (
    stream  TEXT PRIMARY KEY,
    version BIGINT NOT NULL
);

CREATE TABLE log_head (
    id   INTEGER PRIMARY KEY CHECK (id = 1),
    seq  BIGINT NOT NULL,
    hash BYTEA  NOT NULL
);
INSERT INTO log_head (id, seq, hash) VALUES (1, 0, decode(repeat('00', 32), 'hex'));

CREATE TABLE snapshots (
    name TEXT PRIMARY KEY,
    seq  BIGINT NOT NULL,
    hash BYTEA  NOT NULL,
    body BYTEA  NOT NULL
);
