//! The stored form of [`State`]: a compact binary encoding of the two projections that grow
//! with the directory (source objects and the ledger), and JSON for the rest.
//!
//! A million-object state is most of a gigabyte as JSON, and decoding it took longer than
//! the commands that read it had. Here every string is a length and its bytes, every
//! number a varint, so a decoder sizes each map and string once; and the large maps are
//! stored in chunks that are decoded on every core at once.
//!
//! Layout: `MAGIC`, then three sections, each a little-endian `u64` byte length and its
//! bytes: the rest of the state as JSON (the two maps empty), the source objects, the
//! ledger entries. A map section is a varint count of entries and one of chunks, then the
//! chunks, each a `u64` byte length and its bytes: the `u32` length of the chunk unpacked,
//! then the chunk packed as an LZ4 block; unpacked, a varint count and that many entries
//! (key, then value). Packed, a snapshot is a third of the size, which is what a snapshot
//! read from PostgreSQL waits for; each chunk is unpacked by the thread that decodes it.
//!
//! Each codec below destructures its struct, so a field added to a projection fails to
//! compile here until it is encoded; a change of layout changes `MAGIC`, and a snapshot
//! written by another version is not read (the state is rebuilt from the log instead).

use std::sync::atomic::{AtomicUsize, Ordering};

use compact_str::CompactString;

use super::{At, Deletion, FastMap, LedgerEntry, ObjectRecord, Origin, State};
use crate::log::event::{AttrValue, Attrs, ObjectKind, Values};
use crate::target::{Mapped, MappedGroup, MappedUser};

/// Format and version: a different layout is a different magic.
const MAGIC: &[u8; 8] = b"DSNAP\x00\x00\x0b";

/// Entries per chunk of a map section: enough that a chunk is worth a thread's time, few
/// enough that a 100,000-object directory keeps two cores busy.
const CHUNK: usize = 8_192;

/// Why a snapshot body could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("not a snapshot of this version")]
    Version,
    #[error("truncated or malformed snapshot ({0})")]
    Malformed(&'static str),
    #[error("snapshot JSON: {0}")]
    Json(#[from] serde_json::Error),
}

type Res<T> = std::result::Result<T, SnapshotError>;

/// Encode `state`.
pub fn encode(state: &State) -> Res<Vec<u8>> {
    let mut rest = State {
        seq: state.seq,
        objects: super::SourceObjects {
            objects: FastMap::default(),
            last_full_import: state.objects.last_full_import,
            anchor_attribute: state.objects.anchor_attribute.clone(),
            anchor_history: state.objects.anchor_history.clone(),
            effective: state.objects.effective.clone(),
            former_dns: state.objects.former_dns.clone(),
        },
        ledger: super::Ledger {
            entries: FastMap::default(),
            failures: state.ledger.failures.clone(),
        },
        ..State::default()
    };
    rest.control.clone_from(&state.control);
    rest.sync_history.clone_from(&state.sync_history);
    let rest = serde_json::to_vec(&rest)?;

    let (objects, ledger) = std::thread::scope(|s| {
        let objects = s.spawn(|| {
            let mut w = Writer::default();
            w.map(&state.objects.objects, Writer::object)?;
            Ok::<_, SnapshotError>(w.0)
        });
        let mut w = Writer::default();
        let ledger = w
            .map(&state.ledger.entries, Writer::ledger_entry)
            .map(|()| w.0);
        let objects = objects
            .join()
            .unwrap_or(Err(SnapshotError::Malformed("encoder thread failed")));
        (objects, ledger)
    });
    let (objects, ledger) = (objects?, ledger?);
    let mut out = Vec::with_capacity(MAGIC.len() + 24 + rest.len() + objects.len() + ledger.len());
    out.extend_from_slice(MAGIC);
    for section in [&rest, &objects, &ledger] {
        out.extend_from_slice(&(section.len() as u64).to_le_bytes());
        out.extend_from_slice(section);
    }
    Ok(out)
}

/// A chunk as [`Writer::map`] packed it, unpacked.
fn unpack(chunk: &[u8]) -> Res<Vec<u8>> {
    let (size, packed) = chunk.split_first_chunk::<4>().ok_or(BAD)?;
    let size = u32::from_le_bytes(*size) as usize;
    // An LZ4 block unpacks to at most 255 times its size: a larger length is damage, not
    // an allocation to attempt.
    if size > packed.len().saturating_mul(255) {
        return Err(SnapshotError::Malformed("chunk length"));
    }
    match lz4_flex::block::decompress(packed, size) {
        Ok(raw) if raw.len() == size => Ok(raw),
        _ => Err(SnapshotError::Malformed("chunk does not unpack")),
    }
}

/// Decode a body written by [`encode`].
pub fn decode(body: &[u8]) -> Res<State> {
    let body = body.strip_prefix(MAGIC).ok_or(SnapshotError::Version)?;
    let mut sections = Reader(body);
    let rest = sections.section()?;
    let objects = sections.section()?;
    let ledger = sections.section()?;
    if !sections.0.is_empty() {
        return Err(SnapshotError::Malformed("trailing bytes"));
    }
    let mut state: State = serde_json::from_slice(rest)?;
    let (n_objects, object_chunks) = Reader(objects).chunks()?;
    let (n_ledger, ledger_chunks) = Reader(ledger).chunks()?;
    let mut jobs: Vec<(bool, &[u8])> = object_chunks.into_iter().map(|c| (true, c)).collect();
    jobs.extend(ledger_chunks.into_iter().map(|c| (false, c)));
    let next = AtomicUsize::new(0);
    let threads = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .clamp(1, 8)
        .min(jobs.len().max(1));
    let decoded = std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    let mut out = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(&(is_object, bytes)) = jobs.get(i) else {
                            return Ok(out);
                        };
                        let raw = unpack(bytes)?;
                        out.push(if is_object {
                            Part::Objects(Reader(&raw).entries(Reader::object)?)
                        } else {
                            Part::Ledger(Reader(&raw).entries(Reader::ledger_entry)?)
                        });
                    }
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| {
                w.join()
                    .unwrap_or(Err(SnapshotError::Malformed("decoder thread failed")))
            })
            .collect::<Res<Vec<Vec<Part>>>>()
    })?;
    let (mut objects, mut ledger) = (Vec::new(), Vec::new());
    for part in decoded.into_iter().flatten() {
        match part {
            Part::Objects(v) => objects.push(v),
            Part::Ledger(v) => ledger.push(v),
        }
    }
    // The two maps are filled at once too.
    let (objects, ledger) = std::thread::scope(|s| {
        let objects = s.spawn(|| collect(n_objects, objects));
        let ledger = collect(n_ledger, ledger);
        let objects = objects
            .join()
            .unwrap_or(Err(SnapshotError::Malformed("decoder thread failed")));
        (objects, ledger)
    });
    state.objects.objects = objects?;
    state.ledger.entries = ledger?;
    Ok(state)
}

/// A decoded chunk of one of the maps.
enum Part {
    Objects(Vec<(String, Box<ObjectRecord>)>),
    Ledger(Vec<(String, Box<LedgerEntry>)>),
}

/// The chunks' entries as one map of the `n` entries the section said it holds.
fn collect<V>(n: usize, chunks: Vec<Vec<(String, Box<V>)>>) -> Res<FastMap<String, Box<V>>> {
    let mut m = FastMap::with_capacity_and_hasher(n, Default::default());
    for (k, v) in chunks.into_iter().flatten() {
        m.insert(k, v);
    }
    if m.len() != n {
        return Err(SnapshotError::Malformed(
            "a map holds another number of entries",
        ));
    }
    Ok(m)
}

#[derive(Default)]
struct Writer(Vec<u8>);

impl Writer {
    fn uint(&mut self, mut n: u64) {
        while n >= 0x80 {
            self.0.push((n as u8) | 0x80);
            n >>= 7;
        }
        self.0.push(n as u8);
    }

    fn int(&mut self, n: i64) {
        self.uint(((n << 1) ^ (n >> 63)) as u64);
    }

    fn len(&mut self, n: usize) {
        self.uint(n as u64);
    }

    fn bytes(&mut self, b: &[u8]) {
        self.len(b.len());
        self.0.extend_from_slice(b);
    }

    fn str(&mut self, s: &str) {
        self.bytes(s.as_bytes());
    }

    fn flag(&mut self, b: bool) {
        self.0.push(u8::from(b));
    }

    fn at(&mut self, a: &At) {
        self.uint(a.seq);
        self.int(a.at_us);
    }

    fn kind(&mut self, k: ObjectKind) {
        self.0.push(match k {
            ObjectKind::User => 0,
            ObjectKind::Group => 1,
        });
    }

    fn map<V>(
        &mut self,
        m: &FastMap<String, Box<V>>,
        entry: fn(&mut Self, &V) -> Res<()>,
    ) -> Res<()> {
        self.len(m.len());
        self.len(m.len().div_ceil(CHUNK));
        let mut chunk = Writer::default();
        let mut entries = m.iter();
        let mut left = m.len();
        while left > 0 {
            let n = left.min(CHUNK);
            left -= n;
            // The count first, so the chunk is packed from where it was written.
            chunk.0.clear();
            chunk.len(n);
            for (k, v) in entries.by_ref().take(n) {
                chunk.str(k);
                entry(&mut chunk, v)?;
            }
            let size = u32::try_from(chunk.0.len())
                .map_err(|_| SnapshotError::Malformed("a chunk of more than 4 GiB"))?;
            let packed = lz4_flex::block::compress(&chunk.0);
            self.0
                .extend_from_slice(&((4 + packed.len()) as u64).to_le_bytes());
            self.0.extend_from_slice(&size.to_le_bytes());
            self.0.extend_from_slice(&packed);
        }
        Ok(())
    }

    fn object(&mut self, r: &ObjectRecord) -> Res<()> {
        let ObjectRecord {
            kind,
            dn,
            attrs,
            members,
            first_seen,
            last_changed,
            deletion,
        } = r;
        self.kind(*kind);
        self.str(dn);
        self.len(attrs.len());
        for (name, values) in attrs {
            self.str(name);
            self.len(values.len());
            for v in values {
                match v {
                    AttrValue::Text(t) => {
                        self.0.push(0);
                        self.str(t);
                    }
                    AttrValue::Binary { b64 } => {
                        self.0.push(1);
                        self.bytes(b64);
                    }
                }
            }
        }
        self.len(members.len());
        for m in members {
            self.str(m);
        }
        self.at(first_seen);
        self.at(last_changed);
        self.flag(deletion.is_some());
        if let Some(Deletion {
            evidence,
            at,
            instance,
        }) = deletion.as_deref()
        {
            // Rare (deleted objects only) and a nested enum: JSON.
            self.bytes(&serde_json::to_vec(evidence)?);
            self.at(at);
            self.str(instance);
        }
        Ok(())
    }

    fn ledger_entry(&mut self, l: &LedgerEntry) -> Res<()> {
        let LedgerEntry {
            kind,
            target_id,
            origin,
            state,
            owned_since,
            last_export,
            epoch,
            etag,
            deleted,
            disabled,
        } = l;
        self.kind(*kind);
        self.str(target_id);
        self.0.push(match origin {
            Origin::Created => 0,
            Origin::Matched => 1,
        });
        self.flag(state.is_some());
        if let Some(m) = state {
            self.mapped(m);
        }
        self.at(owned_since);
        self.at(last_export);
        self.uint(*epoch);
        self.flag(etag.is_some());
        if let Some(e) = etag {
            self.str(e);
        }
        self.flag(deleted.is_some());
        if let Some(d) = deleted {
            self.at(d);
        }
        self.flag(disabled.is_some());
        if let Some(d) = disabled {
            self.at(d);
        }
        Ok(())
    }

    fn opt_str(&mut self, s: &Option<impl AsRef<str>>) {
        self.flag(s.is_some());
        if let Some(s) = s {
            self.str(s.as_ref());
        }
    }

    fn mapped(&mut self, m: &Mapped) {
        match m {
            Mapped::User(MappedUser {
                user_name,
                display_name,
                given_name,
                family_name,
                email,
                title,
                department,
                active,
                extra,
            }) => {
                // 2: a user with other attributes too (0, without, reads as before).
                self.0.push(if extra.is_empty() { 0 } else { 2 });
                self.str(user_name);
                for s in [
                    display_name,
                    given_name,
                    family_name,
                    email,
                    title,
                    department,
                ] {
                    self.opt_str(s);
                }
                self.flag(*active);
                if !extra.is_empty() {
                    self.len(extra.len());
                    for (k, v) in extra {
                        self.str(k);
                        self.str(v);
                    }
                }
            }
            Mapped::Group(MappedGroup {
                display_name,
                members,
            }) => {
                self.0.push(1);
                self.str(display_name);
                self.len(members.len());
                for m in members {
                    self.str(m);
                }
            }
        }
    }
}

struct Reader<'a>(&'a [u8]);

const BAD: SnapshotError = SnapshotError::Malformed("unexpected end or bad value");

impl<'a> Reader<'a> {
    fn section(&mut self) -> Res<&'a [u8]> {
        let (n, rest) = self.0.split_first_chunk::<8>().ok_or(BAD)?;
        let n = usize::try_from(u64::from_le_bytes(*n)).map_err(|_| BAD)?;
        if rest.len() < n {
            return Err(BAD);
        }
        let (s, rest) = rest.split_at(n);
        self.0 = rest;
        Ok(s)
    }

    fn byte(&mut self) -> Res<u8> {
        let (b, rest) = self.0.split_first().ok_or(BAD)?;
        self.0 = rest;
        Ok(*b)
    }

    fn uint(&mut self) -> Res<u64> {
        let mut n = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            n |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(n);
            }
        }
        Err(BAD)
    }

    fn int(&mut self) -> Res<i64> {
        let u = self.uint()?;
        Ok(((u >> 1) as i64) ^ -((u & 1) as i64))
    }

    /// A count of items that each take at least one byte: never more than are left, so a
    /// corrupt count cannot make a decoder reserve memory it will not fill.
    fn len(&mut self) -> Res<usize> {
        let n = usize::try_from(self.uint()?).map_err(|_| BAD)?;
        if n > self.0.len() {
            return Err(BAD);
        }
        Ok(n)
    }

    fn bytes(&mut self) -> Res<&'a [u8]> {
        let n = self.len()?;
        let (b, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(b)
    }

    fn str(&mut self) -> Res<&'a str> {
        std::str::from_utf8(self.bytes()?).map_err(|_| SnapshotError::Malformed("not UTF-8"))
    }

    fn string(&mut self) -> Res<String> {
        self.str().map(str::to_owned)
    }

    /// A string stored inline when it is short.
    fn compact(&mut self) -> Res<CompactString> {
        self.str().map(CompactString::new)
    }

    fn flag(&mut self) -> Res<bool> {
        match self.byte()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(BAD),
        }
    }

    fn at(&mut self) -> Res<At> {
        Ok(At {
            seq: self.uint()?,
            at_us: self.int()?,
        })
    }

    fn kind(&mut self) -> Res<ObjectKind> {
        match self.byte()? {
            0 => Ok(ObjectKind::User),
            1 => Ok(ObjectKind::Group),
            _ => Err(BAD),
        }
    }

    /// A map section: its number of entries and its chunks.
    fn chunks(mut self) -> Res<(usize, Vec<&'a [u8]>)> {
        let n = usize::try_from(self.uint()?).map_err(|_| BAD)?;
        let k = self.len()?;
        let chunks = (0..k).map(|_| self.section()).collect::<Res<Vec<_>>>()?;
        if !self.0.is_empty() {
            return Err(SnapshotError::Malformed("trailing bytes in a map"));
        }
        Ok((n, chunks))
    }

    /// One chunk's entries.
    fn entries<V>(mut self, entry: fn(&mut Self) -> Res<V>) -> Res<Vec<(String, Box<V>)>> {
        let n = self.len()?;
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            let k = self.string()?;
            out.push((k, Box::new(entry(&mut self)?)));
        }
        if !self.0.is_empty() {
            return Err(SnapshotError::Malformed("trailing bytes in a chunk"));
        }
        Ok(out)
    }

    fn object(&mut self) -> Res<ObjectRecord> {
        let kind = self.kind()?;
        let dn = self.string()?;
        let n = self.len()?;
        let mut attrs = Attrs::with_capacity(n);
        for _ in 0..n {
            let name = self.compact()?;
            let k = self.len()?;
            let mut values = Values::new();
            for _ in 0..k {
                values.push(match self.byte()? {
                    0 => AttrValue::Text(self.compact()?),
                    1 => AttrValue::Binary {
                        b64: self.bytes()?.to_vec(),
                    },
                    _ => return Err(BAD),
                });
            }
            attrs.insert(name, values);
        }
        let n = self.len()?;
        let mut members = Vec::with_capacity(n);
        for _ in 0..n {
            members.push(self.string()?);
        }
        let first_seen = self.at()?;
        let last_changed = self.at()?;
        let deletion = if self.flag()? {
            Some(Deletion {
                evidence: serde_json::from_slice(self.bytes()?)?,
                at: self.at()?,
                instance: self.string()?,
            })
        } else {
            None
        };
        Ok(ObjectRecord {
            kind,
            dn,
            attrs,
            members: members.into_iter().collect(),
            first_seen,
            last_changed,
            deletion: deletion.map(Box::new),
        })
    }

    fn ledger_entry(&mut self) -> Res<LedgerEntry> {
        let kind = self.kind()?;
        let target_id = self.string()?;
        let origin = match self.byte()? {
            0 => Origin::Created,
            1 => Origin::Matched,
            _ => return Err(BAD),
        };
        let state = if self.flag()? {
            Some(self.mapped()?)
        } else {
            None
        };
        let owned_since = self.at()?;
        let last_export = self.at()?;
        let epoch = self.uint()?;
        let etag = if self.flag()? {
            Some(self.string()?)
        } else {
            None
        };
        let deleted = if self.flag()? { Some(self.at()?) } else { None };
        let disabled = if self.flag()? { Some(self.at()?) } else { None };
        Ok(LedgerEntry {
            kind,
            target_id,
            origin,
            state,
            owned_since,
            last_export,
            epoch,
            etag,
            deleted,
            disabled,
        })
    }

    fn opt_compact(&mut self) -> Res<Option<CompactString>> {
        Ok(if self.flag()? {
            Some(self.compact()?)
        } else {
            None
        })
    }

    fn mapped(&mut self) -> Res<Mapped> {
        Ok(match self.byte()? {
            tag @ (0 | 2) => {
                let mut u = MappedUser {
                    user_name: self.compact()?,
                    display_name: self.opt_compact()?,
                    given_name: self.opt_compact()?,
                    family_name: self.opt_compact()?,
                    email: self.opt_compact()?,
                    title: self.opt_compact()?,
                    department: self.opt_compact()?,
                    active: self.flag()?,
                    extra: Default::default(),
                };
                if tag == 2 {
                    for _ in 0..self.len()? {
                        let k = self.compact()?;
                        u.extra.insert(k, self.compact()?);
                    }
                }
                Mapped::User(u)
            }
            1 => {
                let display_name = self.compact()?;
                let n = self.len()?;
                let mut members = Vec::with_capacity(n);
                for _ in 0..n {
                    members.push(self.string()?);
                }
                Mapped::Group(MappedGroup {
                    display_name,
                    members: members.into_iter().collect(),
                })
            }
            _ => return Err(BAD),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use proptest::prelude::*;

    use super::*;
    use crate::log::event::DeletionEvidence;

    fn at(seq: u64, at_us: i64) -> At {
        At { seq, at_us }
    }

    fn sample() -> State {
        let mut s = State {
            seq: 42,
            ..State::default()
        };
        s.objects.last_full_import = Some(at(7, -3));
        s.control.tombstone_lifetime_days = Some(180);
        s.objects.anchor_attribute = Some("entryUUID".into());
        s.objects.anchor_history.push(super::super::AnchorChange {
            at: at(8, 1),
            instance: "old".into(),
            from: Some("nsUniqueId".into()),
            to: "entryUUID".into(),
            migrated: true,
            rekeyed: 3,
            unpaired: 1,
        });
        s.objects
            .former_dns
            .insert("cn=old,ou=x".into(), BTreeSet::from(["a".into()]));
        s.objects.objects.insert(
            "a".into(),
            Box::new(ObjectRecord {
                kind: ObjectKind::User,
                dn: "CN=Zoë\\, Ann,OU=x".into(),
                attrs: Attrs::from([
                    ("cn".into(), vec![AttrValue::Text("Zoë".into())]),
                    (
                        "photo".into(),
                        vec![AttrValue::Binary {
                            b64: vec![0, 255, 1],
                        }],
                    ),
                    ("empty".into(), vec![]),
                ]),
                members: BTreeSet::new(),
                first_seen: at(1, 1_700_000_000_000_000),
                last_changed: at(9, i64::MIN),
                deletion: Some(Box::new(Deletion {
                    evidence: DeletionEvidence::LeftScope { dn: "CN=y".into() },
                    at: at(10, i64::MAX),
                    instance: "old".into(),
                })),
            }),
        );
        s.objects.objects.insert(
            "g".into(),
            Box::new(ObjectRecord {
                kind: ObjectKind::Group,
                dn: "CN=g".into(),
                attrs: Attrs::new(),
                members: BTreeSet::from(["a".into(), "b".into()]),
                first_seen: at(2, 0),
                last_changed: at(2, 0),
                deletion: None,
            }),
        );
        s.ledger.entries.insert(
            "a".into(),
            Box::new(LedgerEntry {
                kind: ObjectKind::User,
                target_id: "t1".into(),
                origin: Origin::Matched,
                state: Some(Mapped::User(MappedUser {
                    user_name: "ann".into(),
                    display_name: Some("Ann Zoë".into()),
                    email: Some(Default::default()),
                    department: Some("x".into()),
                    active: true,
                    ..MappedUser::default()
                })),
                owned_since: at(3, 3),
                last_export: at(4, 4),
                epoch: 2,
                etag: Some("W/\"1\"".into()),
                deleted: Some(at(11, 11)),
                disabled: Some(at(10, 10)),
            }),
        );
        s.ledger.entries.insert(
            "g".into(),
            Box::new(LedgerEntry {
                kind: ObjectKind::Group,
                target_id: "t2".into(),
                origin: Origin::Created,
                state: Some(Mapped::Group(MappedGroup {
                    display_name: "G".into(),
                    members: BTreeSet::from(["t1".into()]),
                })),
                owned_since: at(5, 5),
                last_export: at(5, 5),
                epoch: 1,
                etag: None,
                deleted: None,
                disabled: None,
            }),
        );
        s.control.relationship.holder = Some("new".into());
        s.control.relationship.epoch = 2;
        s
    }

    use crate::log::event::Attrs;

    #[test]
    fn round_trips_every_field() {
        let s = sample();
        let body = encode(&s).unwrap();
        assert_eq!(decode(&body).unwrap(), s);
        assert_eq!(
            decode(&encode(&State::default()).unwrap()).unwrap(),
            State::default()
        );
    }

    #[test]
    fn round_trips_maps_of_many_chunks() {
        let mut s = sample();
        let proto = s.objects.objects["g"].clone();
        let entry = s.ledger.entries["g"].clone();
        for i in 0..(2 * CHUNK + 5) {
            let mut o = proto.clone();
            o.dn = format!("CN=g{i}");
            s.objects.objects.insert(format!("g{i}"), o);
            if i % 3 == 0 {
                s.ledger.entries.insert(format!("g{i}"), entry.clone());
            }
        }
        let body = encode(&s).unwrap();
        assert_eq!(decode(&body).unwrap(), s);
    }

    #[test]
    fn refuses_other_versions_and_damage() {
        let body = encode(&sample()).unwrap();
        assert!(matches!(
            decode(b"{\"seq\":1}"),
            Err(SnapshotError::Version)
        ));
        let mut other = body.clone();
        other[7] ^= 0xff;
        assert!(matches!(decode(&other), Err(SnapshotError::Version)));
        // Every truncation, and every single-byte change, is an error or a different state:
        // never a panic.
        for n in 0..body.len() {
            assert!(decode(&body[..n]).is_err(), "truncated at {n}");
        }
        for i in 8..body.len() {
            let mut b = body.clone();
            b[i] ^= 0xa5;
            let _ = decode(&b);
        }
    }

    proptest! {
        #[test]
        fn round_trips_random_values(
            v in any::<i64>(), u in any::<u64>(), s in ".{0,8}", t in proptest::option::of(".{0,8}"),
            bytes in proptest::collection::vec(any::<u8>(), 0..8),
        ) {
            let mut st = sample();
            if let Some(l) = st.ledger.entries.get_mut("a") {
                l.state = Some(Mapped::User(MappedUser {
                    user_name: s.as_str().into(),
                    title: t.map(Into::into),
                    active: v % 2 == 0,
                    ..MappedUser::default()
                }));
                l.owned_since = at(u, v);
                l.epoch = u;
            }
            if let Some(o) = st.objects.objects.get_mut("g") {
                o.attrs.insert(s, vec![AttrValue::Binary { b64: bytes }]);
            }
            prop_assert_eq!(decode(&encode(&st).unwrap()).unwrap(), st);
        }
    }
}
