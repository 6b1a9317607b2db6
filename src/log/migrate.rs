//! Schema migrations, shared by both backends: an ordered list of SQL scripts and a
//! `dirsync_schema` table recording which have been applied.

/// (version, SQL) for SQLite.
pub(crate) const SQLITE: &[(i64, &str)] = &[
    (1, include_str!("../../migrations/sqlite/0001_log.sql")),
    (
        2,
        include_str!("../../migrations/sqlite/0002_history_index.sql"),
    ),
];
/// (version, SQL) for PostgreSQL.
pub(crate) const POSTGRES: &[(i64, &str)] = &[
    (1, include_str!("../../migrations/postgres/0001_log.sql")),
    (
        2,
        include_str!("../../migrations/postgres/0002_history_index.sql"),
    ),
];
/// The version that adds the history index (`src/log/index.rs`): applying it also fills
/// the index from the events already stored, in the same transaction.
pub(crate) const HISTORY_INDEX: i64 = 2;
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
