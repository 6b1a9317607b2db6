-- dirsync log, schema 3 (SQLite): the history index made cheaper to append to.
-- event_anchors is keyed by the anchor's 64-bit hash (src/log/index.rs, anchor_hash) instead
-- of its text: a row of two integers costs an append a fraction of one with a 36-character
-- anchor. Refilled from the payloads by the migration (`dirsync init`).
DROP TABLE event_anchors;
CREATE TABLE event_anchors (
    anchor_hash INTEGER NOT NULL,
    seq         INTEGER NOT NULL,
    PRIMARY KEY (anchor_hash, seq)
) WITHOUT ROWID;

-- `log show --type T` reads, for each block of 256 seqs (seq >> 8), whether it holds an
-- event of type T, then only those blocks of the log: one row per type and block instead
-- of an index entry per event.
DROP INDEX events_type;
CREATE TABLE event_type_blocks (
    event_type TEXT    NOT NULL,
    block      INTEGER NOT NULL,
    PRIMARY KEY (event_type, block)
) WITHOUT ROWID;
INSERT INTO event_type_blocks (event_type, block) SELECT DISTINCT event_type, seq >> 8 FROM events;
