//! The event log: the system of record. Append-only, hash-chained, on SQLite or PostgreSQL.

mod attrs;
pub mod control;
pub mod event;
pub mod hash;
pub mod index;
mod migrate;
pub mod postgres;
pub mod sqlite;
pub mod store;

pub use event::{Event, SCHEMA_VERSION};
pub use hash::{ChainVerifier, Hash, GENESIS};
pub use store::{AnyStore, AppendOutcome, Expected, Keep, KeptPart, NewEvent, OpenMode, Store};

use chrono::{DateTime, TimeZone, Utc};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// An event as stored, with its place in the log and in the chain.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredEvent {
    pub seq: u64,
    pub stream: String,
    pub stream_version: u64,
    pub event_type: String,
    pub schema_version: u32,
    pub instance: String,
    /// Microseconds since the Unix epoch, UTC.
    pub recorded_at_us: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    /// The event's JSON payload, exactly as hashed.
    pub payload: String,
    #[serde(with = "hex_hash")]
    pub prev_hash: Hash,
    #[serde(with = "hex_hash")]
    pub hash: Hash,
}

impl StoredEvent {
    pub fn decode(&self) -> Result<Event> {
        Event::decode(&self.event_type, self.schema_version, &self.payload)
    }

    pub fn recorded_at(&self) -> DateTime<Utc> {
        Utc.timestamp_micros(self.recorded_at_us)
            .single()
            .unwrap_or_default()
    }
}

pub(crate) fn hash_from_slice(seq: u64, b: &[u8]) -> Result<Hash> {
    b.try_into().map_err(|_| Error::ChainBroken {
        seq,
        reason: format!("stored hash has {} bytes, not 32", b.len()),
    })
}

mod hex_hash {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(v))
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        let mut out = [0u8; 32];
        hex::decode_to_slice(s.as_bytes(), &mut out).map_err(serde::de::Error::custom)?;
        Ok(out)
    }
}
