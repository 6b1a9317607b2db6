//! Schema migrations, shared by both backends: an ordered list of SQL scripts and a
//! `dirsync_schema` table recording which have been applied.

/// (version, SQL) for SQLite.
pub(crate) const SQLITE: &[(i64, &str)] =
    &[(1, include_str!("../../migrations/sqlite/0001_log.sql"))];
/// (version, SQL) for PostgreSQL.
pub(crate) const POSTGRES: &[(i64, &str)] =
    &[(1, include_str!("../../migrations/postgres/0001_log.sql"))];

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
