-- dirsync log, schema 2 (SQLite): the history index (src/log/index.rs). Derived from the
-- payloads, filled with the events they describe, never part of the hash chain.
CREATE TABLE event_anchors (
    anchor TEXT    NOT NULL,
    seq    INTEGER NOT NULL,
    PRIMARY KEY (anchor, seq)
) WITHOUT ROWID;
CREATE TABLE object_keys (
    key    TEXT NOT NULL,
    anchor TEXT NOT NULL,
    PRIMARY KEY (key, anchor)
) WITHOUT ROWID;
-- `log show --type T`.
CREATE INDEX events_type ON events (event_type, seq);
