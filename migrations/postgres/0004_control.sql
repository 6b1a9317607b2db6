-- dirsync log, schema 4 (PostgreSQL): the control projections (src/log/control.rs): who
-- holds the relationship, the instances, their cursors, held deletions, handovers,
-- quarantine suspects, folded up to `seq` (always the head: every append rewrites the row
-- in its own transaction). Derived from the log, never part of the hash chain; filled by
-- the migration (`dirsync init`) from the events already stored.
CREATE TABLE control (
    id   INTEGER PRIMARY KEY CHECK (id = 1),
    seq  BIGINT NOT NULL,
    body TEXT   NOT NULL
);
