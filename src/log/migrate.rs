//! Schema migrations, shared by both backends: an ordered list of SQL scripts and a
//! `dirsync_schema` table recording which have been applied.

/// (version, SQL) for SQLite.
pub(crate) const SQLITE: &[(i64, &str)] = &[
    (1, include_str!("../../migrations/sqlite/0001_log.sql")),
    (
        2,
        include_str!("../../migrations/sqlite/0002_history_index.sql"),
    ),
    (
        3,
        include_str!("../../migrations/sqlite/0003_cheaper_index.sql"),
    ),
    (4, include_str!("../../migrations/sqlite/0004_control.sql")),
    (
        5,
        include_str!("../../migrations/sqlite/0005_heartbeats.sql"),
    ),
    (
        6,
        include_str!("../../migrations/sqlite/0006_idle_cycles.sql"),
    ),
];
/// (version, SQL) for PostgreSQL.
pub(crate) const POSTGRES: &[(i64, &str)] = &[
    (1, include_str!("../../migrations/postgres/0001_log.sql")),
    (
        2,
        include_str!("../../migrations/postgres/0002_history_index.sql"),
    ),
    (
        3,
        include_str!("../../migrations/postgres/0003_cheaper_index.sql"),
    ),
    (
        4,
        include_str!("../../migrations/postgres/0004_control.sql"),
    ),
    (
        5,
        include_str!("../../migrations/postgres/0005_heartbeats.sql"),
    ),
    (
        6,
        include_str!("../../migrations/postgres/0006_idle_cycles.sql"),
    ),
];
/// The version that adds the history index (`src/log/index.rs`).
pub(crate) const HISTORY_INDEX: i64 = 2;
/// The version that keys `event_anchors` by the anchor's hash (and empties it).
pub(crate) const ANCHOR_HASH: i64 = 3;

/// The version that adds the stored control projections (`src/log/control.rs`).
pub(crate) const CONTROL: i64 = 4;

/// Whether a migration from schema `found` must fold the control projections from the
/// events already stored (in the same transaction, once every script has run).
pub(crate) fn control_to_fill(found: i64, list: &[(i64, &str)]) -> bool {
    found < CONTROL && latest(list) >= CONTROL
}

/// Which history index tables a migration from schema `found` must fill from the events
/// already stored, once every script has run, in the same transaction: none when the store
/// had them current; `event_anchors` alone from schema 2; both from an older one.
pub(crate) fn index_to_fill(found: i64, list: &[(i64, &str)]) -> Fill {
    let latest = latest(list);
    Fill {
        anchors: found < ANCHOR_HASH && latest >= ANCHOR_HASH,
        keys: found < HISTORY_INDEX && latest >= HISTORY_INDEX,
    }
}

/// The index tables to fill (see [`index_to_fill`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Fill {
    pub anchors: bool,
    pub keys: bool,
}

impl Fill {
    pub(crate) fn any(self) -> bool {
        self.anchors || self.keys
    }
}
/// Events read at a time while the index is filled.
pub(crate) const FILL_PAGE: i64 = 10_000;

pub(crate) const SCHEMA_TABLE: &str =
    "CREATE TABLE IF NOT EXISTS dirsync_schema (version BIGINT NOT NULL, applied_at_us BIGINT NOT NULL)";

/// The schema version this build writes.
pub(crate) fn latest(list: &[(i64, &str)]) -> i64 {
    list.last().map(|(v, _)| *v).unwrap_or(0)
}

/// Decide, from the version found in a store, whether it can be used as is.
pub(crate) fn check(found: i64, list: &[(i64, &str)]) -> crate::error::Result<()> {
    use crate::error::Error;
    let latest = latest(list);
    if found > latest {
        Err(Error::SchemaTooNew {
            found,
            supported: latest,
        })
    } else if found < latest {
        Err(Error::NotInitialised {
            found,
            needed: latest,
        })
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_migration_fills_the_index_tables_it_empties_or_adds() {
        let fill = |found| index_to_fill(found, SQLITE);
        assert_eq!(
            fill(0),
            Fill {
                anchors: true,
                keys: true
            }
        );
        assert_eq!(
            fill(1),
            Fill {
                anchors: true,
                keys: true
            }
        );
        assert_eq!(
            fill(2),
            Fill {
                anchors: true,
                keys: false
            }
        );
        assert!(!fill(3).any());
        assert!(!fill(4).any());
        assert!(!fill(5).any());
        assert_eq!(latest(SQLITE), latest(POSTGRES));
        for (found, refold) in [(0, true), (2, true), (3, true), (4, false), (5, false)] {
            assert_eq!(control_to_fill(found, SQLITE), refold, "{found}");
            assert_eq!(control_to_fill(found, POSTGRES), refold, "{found}");
        }
    }
}
