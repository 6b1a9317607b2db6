-- dirsync log, schema 6: the last idle cycle of each instance (`src/sync/idle.rs`).
-- A service cycle that found nothing (a delta with no change and an unmoved cursor, and
-- nothing to export) appends nothing to the hash-chained log; this row, overwritten in
-- place and outside the chain like the heartbeats, says that it ran and succeeded: when,
-- the log's head then (a failure recorded later has a greater seq), and the cursor it
-- found still current.
CREATE TABLE idle_cycles (
    instance   TEXT   NOT NULL PRIMARY KEY,
    run_id     TEXT   NOT NULL,
    mode       TEXT   NOT NULL,
    at_us      BIGINT NOT NULL,
    seq        BIGINT NOT NULL,
    cursor_seq BIGINT NOT NULL
);
