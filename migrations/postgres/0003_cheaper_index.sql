-- dirsync log, schema 3 (PostgreSQL): the history index made cheaper to append to.
-- event_anchors is keyed by the anchor's 64-bit hash (src/log/index.rs, anchor_hash) instead
-- of its text: a row of two integers costs an append a fraction of one with a 36-character
-- anchor. Refilled from the payloads by the migration (`dirsync init`).
DROP TABLE event_anchors;
CREATE TABLE event_anchors (
    anchor_hash BIGINT NOT NULL,
    seq         BIGINT NOT NULL,
    PRIMARY KEY (anchor_hash, seq)
);

-- `log show --type T` reads, for each block of 256 seqs (seq >> 8), whether it holds an
-- event of type T, then only those blocks of the log: one row per type and block instead
-- of an index entry per event.
DROP INDEX events_type;
CREATE TABLE event_type_blocks (
    event_type TEXT   NOT NULL,
    block      BIGINT NOT NULL,
    PRIMARY KEY (event_type, block)
);
INSERT INTO event_type_blocks (event_type, block) SELECT DISTINCT event_type, seq >> 8 FROM events;
