-- dirsync log, schema 5: heartbeats of running services (`[ha] heartbeat`).
-- A liveness row is not history: one row per instance, overwritten in place, outside the
-- hash chain, so an idle deployment does not grow the log. Take-overs and failovers are
-- events (SyncRelationshipEstablished, FailoverStarted). Version 4 is left to another change.
CREATE TABLE heartbeats (
    instance TEXT   NOT NULL PRIMARY KEY,
    role     TEXT   NOT NULL,
    epoch    BIGINT NOT NULL,
    at_us    BIGINT NOT NULL,
    host     TEXT   NOT NULL,
    pid      BIGINT NOT NULL
);
