//! The hash chain: each event's hash covers its canonical encoding and the previous hash.
//!
//! Canonical encoding (all integers big-endian, strings as u32 length + UTF-8 bytes):
//! `"dirsync-log-v1" | prev_hash[32] | seq u64 | stream | stream_version u64 | event_type |
//!  schema_version u32 | instance | recorded_at_us i64 | idempotency_key (0xff-absent or 0x01+str) |
//!  payload`. The payload is hashed exactly as stored, so no JSON re-canonicalisation is needed.

use sha2::{Digest, Sha256};

use super::StoredEvent;

pub type Hash = [u8; 32];

/// The previous hash of the first event.
pub const GENESIS: Hash = [0u8; 32];

const DOMAIN: &[u8] = b"dirsync-log-v1";

fn put_str(h: &mut Sha256, s: &str) {
    h.update((s.len() as u32).to_be_bytes());
    h.update(s.as_bytes());
}

/// The fields of an event that the hash covers.
pub struct HashInput<'a> {
    pub seq: u64,
    pub stream: &'a str,
    pub stream_version: u64,
    pub event_type: &'a str,
    pub schema_version: u32,
    pub instance: &'a str,
    pub recorded_at_us: i64,
    pub idempotency_key: Option<&'a str>,
    pub payload: &'a str,
}

pub fn compute(prev: &Hash, e: &HashInput<'_>) -> Hash {
    let mut h = Sha256::new();
    h.update(DOMAIN);
    h.update(prev);
    h.update(e.seq.to_be_bytes());
    put_str(&mut h, e.stream);
    h.update(e.stream_version.to_be_bytes());
    put_str(&mut h, e.event_type);
    h.update(e.schema_version.to_be_bytes());
    put_str(&mut h, e.instance);
    h.update(e.recorded_at_us.to_be_bytes());
    match e.idempotency_key {
        None => h.update([0xffu8]),
        Some(k) => {
            h.update([0x01u8]);
            put_str(&mut h, k);
        }
    }
    put_str(&mut h, e.payload);
    h.finalize().into()
}

impl StoredEvent {
    pub fn hash_input(&self) -> HashInput<'_> {
        HashInput {
            seq: self.seq,
            stream: &self.stream,
            stream_version: self.stream_version,
            event_type: &self.event_type,
            schema_version: self.schema_version,
            instance: &self.instance,
            recorded_at_us: self.recorded_at_us,
            idempotency_key: self.idempotency_key.as_deref(),
            payload: &self.payload,
        }
    }

    /// Recompute this event's hash from its fields and its stored previous hash.
    pub fn recompute(&self) -> Hash {
        compute(&self.prev_hash, &self.hash_input())
    }
}

/// Checks a sequence of events, in order, against the chain. Feed it every event from seq 1.
#[derive(Debug, Clone)]
pub struct ChainVerifier {
    next_seq: u64,
    prev: Hash,
}

impl Default for ChainVerifier {
    fn default() -> Self {
        ChainVerifier {
            next_seq: 1,
            prev: GENESIS,
        }
    }
}

impl ChainVerifier {
    /// Continue a chain after `seq` whose hash is `hash`.
    pub fn after(seq: u64, hash: Hash) -> Self {
        ChainVerifier {
            next_seq: seq + 1,
            prev: hash,
        }
    }

    /// Check one event; the error names what is wrong with it.
    pub fn check(&mut self, e: &StoredEvent) -> Result<(), (u64, String)> {
        if e.seq != self.next_seq {
            let why = if e.seq > self.next_seq {
                format!(
                    "expected seq {}, found {} (rows removed)",
                    self.next_seq, e.seq
                )
            } else {
                format!(
                    "expected seq {}, found {} (rows reordered or duplicated)",
                    self.next_seq, e.seq
                )
            };
            return Err((self.next_seq, why));
        }
        if e.prev_hash != self.prev {
            return Err((
                e.seq,
                "previous hash does not match the preceding event (row removed or reordered)"
                    .into(),
            ));
        }
        if e.recompute() != e.hash {
            return Err((
                e.seq,
                "hash does not match the event's content (row altered)".into(),
            ));
        }
        self.prev = e.hash;
        self.next_seq += 1;
        Ok(())
    }

    /// The last verified sequence number (0 before any).
    pub fn last_seq(&self) -> u64 {
        self.next_seq - 1
    }

    pub fn last_hash(&self) -> Hash {
        self.prev
    }
}
