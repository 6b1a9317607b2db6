-- dirsync log, schema 3 (PostgreSQL): event_anchors keyed by the anchor's 64-bit hash
-- (src/log/index.rs, anchor_hash) instead of its text: a row of two integers is a fraction of
-- the cost of one with a 36-character anchor on every append. Refilled from the payloads
-- by the migration (`dirsync init`).
DROP TABLE event_anchors;
CREATE TABLE event_anchors (
    anchor_hash BIGINT NOT NULL,
    seq         BIGINT NOT NULL,
    PRIMARY KEY (anchor_hash, seq)
);
