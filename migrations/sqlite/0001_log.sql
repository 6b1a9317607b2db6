-- dirsync log, schema 1 (SQLite).
CREATE TABLE events (
    seq             INTEGER PRIMARY KEY,
    stream          TEXT    NOT NULL,
    stream_version  INTEGER NOT NULL,
    event_type      TEXT    NOT NULL,
    schema_version  INTEGER NOT NULL,
    instance        TEXT    NOT NULL,
    recorded_at_us  INTEGER NOT NULL,
    idempotency_key TEXT,
    payload         TEXT    NOT NULL,
    prev_hash       BLOB    NOT NULL,
    hash            BLOB    NOT NULL
);
CREATE UNIQUE INDEX events_stream_version ON events (stream, stream_version);
CREATE UNIQUE INDEX events_idempotency_key ON events (idempotency_key)
    WHERE idempotency_key IS NOT NULL;

-- The log is append-only: the store refuses to change or remove an event.
CREATE TRIGGER events_no_update BEFORE UPDATE ON events
BEGIN SELECT RAISE(ABORT, 'the event log is append-only'); END;
CREATE TRIGGER events_no_delete BEFORE DELETE ON events
BEGIN SELECT RAISE(ABORT, 'the event log is append-only'); END;

-- Current version of every stream (optimistic concurrency).
CREATE TABLE streams (
    stream  TEXT PRIMARY KEY,
    version INTEGER NOT NULL
) WITHOUT ROWID;

-- The head of the chain: the last seq and its hash. Appends serialise on it.
CREATE TABLE log_head (
    id   INTEGER PRIMARY KEY CHECK (id = 1),
    seq  INTEGER NOT NULL,
    hash BLOB    NOT NULL
);
INSERT INTO log_head (id, seq, hash) VALUES (1, 0, zeroblob(32));

-- Stored projections (rebuildable from the log at any time).
CREATE TABLE snapshots (
    name TEXT PRIMARY KEY,
    seq  INTEGER NOT NULL,
    hash BLOB    NOT NULL,
    body BLOB    NOT NULL
);
