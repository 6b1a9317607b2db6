//! Domain events: the facts dirsync records. Named in the past tense, versioned.
//!
//! Each variant is stored as `event_type` (the variant name), `schema_version` and a JSON
//! payload (the variant's struct). Decoding an older schema version upcasts it here, so the
//! rest of the code only ever sees the current shape.

use std::borrow::Cow;
use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use compact_str::CompactString;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Schema version written for every event type today.
pub const SCHEMA_VERSION: u32 = 1;

/// Users and groups are the two kinds of object we sync.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ObjectKind {
    User,
    Group,
}

impl ObjectKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ObjectKind::User => "user",
            ObjectKind::Group => "group",
        }
    }
}

/// One attribute value as the source returned it: text when it is valid UTF-8, else bytes.
/// JSON: a string, or `{"b64": "..."}`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(untagged)]
pub enum AttrValue {
    Text(CompactString),
    Binary {
        #[serde(serialize_with = "b64::serialize")]
        b64: Vec<u8>,
    },
}

// Written out rather than derived: serde's untagged enums buffer every value and try each
// variant in turn, which made loading a snapshot of a million objects (six or so values
// each) several times slower than reading the JSON. Same format both ways.
impl<'de> Deserialize<'de> for AttrValue {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = AttrValue;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string or {\"b64\": \"...\"}")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> std::result::Result<AttrValue, E> {
                Ok(AttrValue::Text(CompactString::new(v)))
            }
            fn visit_string<E: serde::de::Error>(
                self,
                v: String,
            ) -> std::result::Result<AttrValue, E> {
                Ok(AttrValue::Text(CompactString::from(v)))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut m: A,
            ) -> std::result::Result<AttrValue, A::Error> {
                use base64::Engine;
                let mut bytes = None;
                while let Some(k) = m.next_key::<std::borrow::Cow<'de, str>>()? {
                    if k == "b64" {
                        let s: std::borrow::Cow<'de, str> = m.next_value()?;
                        bytes = Some(
                            base64::engine::general_purpose::STANDARD
                                .decode(s.as_bytes())
                                .map_err(serde::de::Error::custom)?,
                        );
                    } else {
                        m.next_value::<serde::de::IgnoredAny>()?;
                    }
                }
                bytes
                    .map(|b64| AttrValue::Binary { b64 })
                    .ok_or_else(|| serde::de::Error::missing_field("b64"))
            }
        }
        d.deserialize_any(V)
    }
}

/// A string of a payload, borrowed from it when it holds no escapes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Text<'a>(pub Cow<'a, str>);

impl Text<'_> {
    pub fn as_str(&self) -> &str {
        &self.0
    }
    pub fn into_owned(self) -> String {
        self.0.into_owned()
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Text<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Text<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: serde::de::Error>(
                self,
                v: &'de str,
            ) -> std::result::Result<Text<'de>, E> {
                Ok(Text(Cow::Borrowed(v)))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> std::result::Result<Text<'de>, E> {
                Ok(Text(Cow::Owned(v.to_string())))
            }
            fn visit_string<E: serde::de::Error>(
                self,
                v: String,
            ) -> std::result::Result<Text<'de>, E> {
                Ok(Text(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V)
    }
}

/// [`AttrValue`] with its text borrowed from the payload: same format, same errors.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AttrValueRef<'a> {
    Text(Cow<'a, str>),
    Binary(Vec<u8>),
}

impl AttrValueRef<'_> {
    pub fn into_owned(self) -> AttrValue {
        match self {
            AttrValueRef::Text(t) => AttrValue::Text(CompactString::new(&t)),
            AttrValueRef::Binary(b64) => AttrValue::Binary { b64 },
        }
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for AttrValueRef<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = AttrValueRef<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string or {\"b64\": \"...\"}")
            }
            fn visit_borrowed_str<E: serde::de::Error>(
                self,
                v: &'de str,
            ) -> std::result::Result<AttrValueRef<'de>, E> {
                Ok(AttrValueRef::Text(Cow::Borrowed(v)))
            }
            fn visit_str<E: serde::de::Error>(
                self,
                v: &str,
            ) -> std::result::Result<AttrValueRef<'de>, E> {
                Ok(AttrValueRef::Text(Cow::Owned(v.to_string())))
            }
            fn visit_string<E: serde::de::Error>(
                self,
                v: String,
            ) -> std::result::Result<AttrValueRef<'de>, E> {
                Ok(AttrValueRef::Text(Cow::Owned(v)))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                m: A,
            ) -> std::result::Result<AttrValueRef<'de>, A::Error> {
                let v = AttrValue::deserialize(serde::de::value::MapAccessDeserializer::new(m))?;
                Ok(match v {
                    AttrValue::Text(t) => AttrValueRef::Text(Cow::Owned(t.into_string())),
                    AttrValue::Binary { b64 } => AttrValueRef::Binary(b64),
                })
            }
        }
        d.deserialize_any(V)
    }
}

/// [`Attrs`] as a payload lists them, borrowed from it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AttrsRef<'a>(pub Vec<(Text<'a>, Vec<AttrValueRef<'a>>)>);

impl AttrsRef<'_> {
    /// The attributes as [`Attrs`]: a name listed twice keeps its last values, as when
    /// [`Attrs`] is decoded.
    pub fn into_owned(self) -> Attrs {
        self.0
            .into_iter()
            .map(|(k, v)| {
                (
                    k.into_owned(),
                    v.into_iter()
                        .map(AttrValueRef::into_owned)
                        .collect::<Values>(),
                )
            })
            .collect()
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for AttrsRef<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = AttrsRef<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a map")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut m: A,
            ) -> std::result::Result<AttrsRef<'de>, A::Error> {
                let mut out = Vec::new();
                while let Some(kv) = m.next_entry()? {
                    out.push(kv);
                }
                Ok(AttrsRef(out))
            }
        }
        d.deserialize_map(V)
    }
}

mod b64 {
    use base64::Engine;
    use serde::Serializer;

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(v))
    }
}

pub use super::attrs::{AttrName, Attrs, Values};

/// An object as read from the source directory.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceObject {
    /// Stable identity: AD objectGUID / ms-DS-ConsistencyGuid, OpenLDAP entryUUID.
    pub anchor: String,
    pub kind: ObjectKind,
    pub dn: String,
    pub attrs: Attrs,
    /// Group members as anchors (groups only).
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub members: BTreeSet<String>,
}

/// How we know an object is gone from the source (or from our scope).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "how", rename_all = "snake_case")]
pub enum DeletionEvidence {
    /// AD tombstone (isDeleted) seen through DirSync or the show-deleted control.
    Tombstone {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        deleted_at: Option<DateTime<Utc>>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        last_known_parent: Option<String>,
    },
    /// RFC 4533: a delete state, a syncIdSet with refreshDeletes, or absent from a present phase.
    SyncDelete { phase: String },
    /// Not returned by a complete full import.
    AbsentFromFullImport { run_id: String },
    /// Still exists, but moved out of the configured scope.
    LeftScope { dn: String },
    /// A user still in the DN scope that is no member, direct or nested, of any group of
    /// `[source] member_of` (those groups' DNs).
    NotMember { groups: Vec<String> },
    /// Still exists, but no longer matches the configured users or groups filter (`which`:
    /// "users" or "groups"), as evaluated over the log when that filter was narrowed.
    OutOfFilter { which: String, filter: String },
}

impl DeletionEvidence {
    /// The evidence's particulars: the tombstone's last parent, the RFC 4533 phase, the
    /// full import's run, the DN it moved to.
    pub fn detail(&self) -> Option<String> {
        match self {
            DeletionEvidence::Tombstone {
                last_known_parent, ..
            } => last_known_parent.clone(),
            DeletionEvidence::SyncDelete { phase } => Some(phase.clone()),
            DeletionEvidence::AbsentFromFullImport { run_id } => Some(format!("run {run_id}")),
            DeletionEvidence::LeftScope { dn } => Some(dn.clone()),
            DeletionEvidence::NotMember { groups } => {
                Some(format!("not a member of {}", groups.join("; ")))
            }
            DeletionEvidence::OutOfFilter { which, filter } => {
                Some(format!("no longer matches the {which} filter {filter}"))
            }
        }
    }

    /// When the source deleted it, when the source said (a tombstone's deletion time).
    pub fn deleted_at_us(&self) -> Option<i64> {
        match self {
            DeletionEvidence::Tombstone { deleted_at, .. } => {
                deleted_at.map(|t| t.timestamp_micros())
            }
            _ => None,
        }
    }

    pub fn label(&self) -> &'static str {
        match self {
            DeletionEvidence::Tombstone { .. } => "tombstone",
            DeletionEvidence::SyncDelete { .. } => "rfc4533-delete",
            DeletionEvidence::AbsentFromFullImport { .. } => "absent-from-full-import",
            DeletionEvidence::LeftScope { .. } => "left-scope",
            DeletionEvidence::NotMember { .. } => "not-member",
            DeletionEvidence::OutOfFilter { .. } => "out-of-filter",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectImported {
    pub object: SourceObject,
    /// True when the anchor was known before (deleted or out of scope) and came back.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub returned: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectChanged {
    pub anchor: String,
    /// New DN after a rename or move.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dn: Option<String>,
    /// Attributes replaced, with all their new values.
    #[serde(default, skip_serializing_if = "Attrs::is_empty")]
    pub set: Attrs,
    /// Attributes that no longer have a value.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub removed: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub members_added: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub members_removed: Vec<String>,
}

fn check_schema_version(schema_version: u32) -> Result<()> {
    if schema_version > SCHEMA_VERSION {
        return Err(Error::SchemaTooNew {
            found: i64::from(schema_version),
            supported: i64::from(SCHEMA_VERSION),
        });
    }
    Ok(())
}

fn bad_payload(event_type: &str, schema_version: u32, e: serde_json::Error) -> Error {
    Error::BadInput(format!("event {event_type} v{schema_version}: {e}"))
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectDeleted {
    pub anchor: String,
    pub evidence: DeletionEvidence,
}

/// An import of the source finished: a full import's completion is what makes absence evidence.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImportCompleted {
    pub run_id: String,
    pub full: bool,
    pub seen: u64,
    pub added: u64,
    pub changed: u64,
    pub deleted: u64,
    pub left_scope: u64,
}

impl ImportCompleted {
    /// The summary of run `run_id` before it has counted anything.
    pub fn start(run_id: &str, full: bool) -> ImportCompleted {
        ImportCompleted {
            run_id: run_id.to_string(),
            full,
            seen: 0,
            added: 0,
            changed: 0,
            deleted: 0,
            left_scope: 0,
        }
    }
}

/// The instance's position in the source's change stream, recorded after the changes it covers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CursorAdvanced {
    /// "dirsync" (AD) or "rfc4533" (OpenLDAP).
    pub kind: String,
    /// The opaque cookie, base64.
    pub cookie: String,
}

/// The instance's cursor can no longer be used (expired, rejected); the reason is kept.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CursorInvalidated {
    pub reason: String,
}

/// Facts about the source that decide what a cursor can still reveal.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceInfoRecorded {
    pub tombstone_lifetime_days: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub highest_usn: Option<u64>,
}

/// What an export did in the target.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExportOp {
    Create,
    Update,
    Delete,
    /// An existing target object was matched to the anchor (hard or soft match).
    Match,
    /// A user gone from the source was set inactive in the target (`[sync] on_delete =
    /// "disable"`); it is deleted once `disabled_for` has passed since this was recorded.
    Disable,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportApplied {
    pub epoch: u64,
    pub anchor: String,
    pub kind: ObjectKind,
    pub op: ExportOp,
    pub target_id: String,
    /// The target-side state we now own for this object (mapped attributes), absent on delete.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<serde_json::Value>,
    /// The object's version after the export, when the target told (SCIM ETag).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
}

/// An instance checked that it holds the sync relationship and claimed the right to send
/// one chunk of export operations until `lease_until`. Appended only while the instance's
/// epoch is current (the append expects the relationship stream's version), so the check
/// and this record are one atomic step. No request of the chunk is sent after the lease.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportBatchStarted {
    pub batch_id: String,
    pub epoch: u64,
    pub ops: u64,
    pub lease_until: DateTime<Utc>,
    /// The anchors the chunk creates (None in claims recorded before they were kept): a
    /// create that gets no answer may still land later, and the holder then looks for
    /// copies of these anchors rather than listing the whole target (`sync::duplicates`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creates: Option<Vec<String>>,
}

/// The requests of a claimed chunk are all answered (or abandoned) and their outcomes are
/// recorded with this event: the lease ends early.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportBatchCompleted {
    pub batch_id: String,
    pub applied: u64,
    pub failed: u64,
}

/// A target object carrying one of our anchors besides the one kept (the ledger's, or the
/// oldest for an anchor not owned yet) was deleted from the target (`sync::duplicates`: a
/// create that reached the target late). The ledger is unchanged by it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetDuplicateRemoved {
    pub epoch: u64,
    pub anchor: String,
    pub kind: ObjectKind,
    /// The object deleted.
    pub target_id: String,
    /// The object kept.
    pub kept: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportFailed {
    pub epoch: u64,
    pub anchor: String,
    pub op: ExportOp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    pub error: String,
}

/// An instance took the sync relationship: from now on only it may export.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncRelationshipEstablished {
    pub holder: String,
    pub epoch: u64,
}

/// A standby won the election (the epoch bump recorded in the same batch) because the
/// holder `old` fell silent: it now runs the `failover` playbook (`dirsync run --standby`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailoverStarted {
    pub old: String,
    pub new: String,
    /// The epoch the new holder took.
    pub epoch: u64,
    /// The old holder's last heartbeat (microseconds since the epoch), if it wrote one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_heartbeat_us: Option<i64>,
    pub reason: String,
}

/// A service that held epoch `held` found `by` holding the newer `epoch`: it exports
/// nothing more (and becomes a standby, or exits 4).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceFenced {
    pub instance: String,
    pub by: String,
    pub epoch: u64,
    pub held: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncRunStarted {
    pub run_id: String,
    pub full: bool,
    /// "sync", "staging" or "dry-run".
    pub mode: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncRunCompleted {
    pub run_id: String,
    #[serde(default)]
    pub created: u64,
    #[serde(default)]
    pub updated: u64,
    #[serde(default)]
    pub deleted: u64,
    #[serde(default)]
    pub matched: u64,
    #[serde(default)]
    pub held: u64,
    #[serde(default)]
    pub failed: u64,
    /// An exporting cycle that tried every operation of its plan: the seq of the state its
    /// plan was made from. Everything the log holds up to there is in the target but what
    /// the projections still name as pending (failures, held or awaiting deletions), so the
    /// instance's next cycle plans only what events after it name (`plan::focus`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub planned_seq: Option<u64>,
    /// A staging cycle: the seq of the state the plan it listed was made from. Its next
    /// staging cycle lists what changed in the plan since: the operations of what the log
    /// names after it (`plan::focus`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listed_seq: Option<u64>,
}

/// A cycle that failed, or never started (fenced, the source or the target unreachable),
/// or ended with deletions held: every cycle leaves a trace (INTERFACE.md).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncRunFailed {
    pub run_id: String,
    pub error: String,
    /// What failed. Events recorded before the field existed lack it (`None`); their
    /// payloads are hashed as stored, so the chain verifies whatever this struct becomes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<FailureReason>,
}

/// The class of a failed cycle's cause.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FailureReason {
    /// The source directory: unreachable, refused, misbehaved.
    Source,
    /// The target: unreachable, refused, down, or the cycle ran past its timeout.
    Target,
    /// The store (or local I/O).
    Store,
    /// Another instance holds the sync relationship (exit 4).
    Fenced,
    /// The deletion guard held the cycle's deletions (exit 3).
    Held,
    /// Bad configuration or input met mid-cycle (exit 2), or a refusal.
    Config,
    /// The process running the cycle stopped before it ended (a handover found it after a
    /// crash, or its step timed out).
    Abandoned,
}

impl FailureReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FailureReason::Source => "source",
            FailureReason::Target => "target",
            FailureReason::Store => "store",
            FailureReason::Fenced => "fenced",
            FailureReason::Held => "held",
            FailureReason::Config => "config",
            FailureReason::Abandoned => "abandoned",
        }
    }

    /// The class of an error that ended a cycle.
    pub fn of(e: &Error) -> FailureReason {
        match e {
            Error::Source(_)
            | Error::SourceCookieRejected(_)
            | Error::CookieUnusable(_)
            | Error::SourceRefused(_)
            | Error::SourceMisbehaved(_) => FailureReason::Source,
            Error::Target(_) | Error::CycleTimeout(_) => FailureReason::Target,
            Error::Store(_)
            | Error::StoreFiles { .. }
            | Error::SchemaTooNew { .. }
            | Error::NotInitialised { .. }
            | Error::Conflict { .. }
            | Error::ChainBroken { .. }
            | Error::ProjectionMismatch(_)
            | Error::Io(_) => FailureReason::Store,
            Error::Fenced(_) => FailureReason::Fenced,
            Error::Held(_) => FailureReason::Held,
            Error::Config(_) | Error::BadInput(_) | Error::Refused(_) => FailureReason::Config,
        }
    }

    /// The class of an error met before a cycle recorded its start, when that is worth
    /// recording: a source, target or store that failed, or a fence. Bad configuration and
    /// refusals (a retired instance, a cycle already running, an anchor change) record
    /// nothing, as promised.
    pub fn before_start(e: &Error) -> Option<FailureReason> {
        match FailureReason::of(e) {
            FailureReason::Config | FailureReason::Abandoned => None,
            r => Some(r),
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceLifecycle {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub forced: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeletionsHeld {
    /// SHA-256 (hex) of the exact, sorted list of anchors.
    pub plan_hash: String,
    pub anchors: Vec<String>,
    pub reason: String,
}

/// The held list `plan_hash` no longer stands: a later cycle's guard did not hold (its
/// deletions were approved, within the threshold, or none), so approving it would release
/// nothing. A cycle that holds another list supersedes it instead (`DeletionsHeld`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeletionsHoldEnded {
    pub plan_hash: String,
    pub reason: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeletionsApproved {
    pub plan_hash: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approved_by: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HandoverStarted {
    pub handover_id: String,
    pub from: String,
    pub to: String,
    pub playbook: String,
    pub steps: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HandoverStep {
    pub handover_id: String,
    pub step: u32,
    pub action: String,
    /// Outcome figures or the error, depending on the event.
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub detail: serde_json::Value,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HandoverCompleted {
    pub handover_id: String,
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub summary: serde_json::Value,
}

/// The target was found (or made) empty: what we owned there is gone, so the ledger starts
/// afresh and the next export rebuilds the target from the log (`replay --to-target`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetReset {
    pub reason: String,
}

/// The attribute the source's anchors come from, recorded with the first import: an import
/// that would take them from another attribute is refused (`dirsync anchors migrate`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AnchorRecorded {
    pub attribute: String,
}

/// The scope and mapping in effect for imports (`[source]` base, filters, include,
/// exclude, member_of; the attributes kept; the mapping), recorded by the first import and
/// by every import whose configuration differs from the last record: what the log's source
/// objects were imported under.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EffectiveScope {
    pub base_dn: String,
    pub users: String,
    pub groups: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub include: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub member_of: Vec<String>,
    /// The source attributes imports keep (lower case, sorted): the kind's own list and
    /// what the mapping reads.
    pub attributes: Vec<String>,
}

/// A part of the effective configuration, as [`EffectiveConfigRecorded`] names what changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConfigPart {
    Base,
    Users,
    Groups,
    Include,
    Exclude,
    MemberOf,
    Attributes,
    Mapping,
}

impl ConfigPart {
    /// As the configuration spells it.
    pub fn label(&self) -> &'static str {
        match self {
            ConfigPart::Base => "base_dn",
            ConfigPart::Users => "users filter",
            ConfigPart::Groups => "groups filter",
            ConfigPart::Include => "include",
            ConfigPart::Exclude => "exclude",
            ConfigPart::MemberOf => "member_of",
            ConfigPart::Attributes => "attributes read",
            ConfigPart::Mapping => "mapping",
        }
    }
}

/// The effective scope and mapping, recorded with the import that first ran under them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EffectiveConfigRecorded {
    /// SHA-256 (hex) of `scope`.
    pub scope_fingerprint: String,
    /// `Mapping::fingerprint`, as `dirsync mapping show` prints it.
    pub mapping_fingerprint: String,
    pub scope: EffectiveScope,
    /// What differs from the previous record (empty for the first).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub changed: Vec<ConfigPart>,
    /// Why the change needed a full import, which this import then was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub full_import: Option<String>,
}

/// One ledger entry re-keyed: the same source entry, the same target object.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rekey {
    pub old: String,
    pub new: String,
}

/// `dirsync anchors migrate`: the anchor attribute changed from `from` (`None`: none was
/// recorded) to `to`, and the ledger entries were re-keyed in place, their target ids
/// kept. The source objects keep their old anchors until the next (full) import brings
/// them in under the new ones.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AnchorsMigrated {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    pub to: String,
    pub rekeyed: Vec<Rekey>,
    /// Owned objects left under their old anchor (`--allow-unpaired`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unpaired: Vec<String>,
}

/// The whole target was read and compared with the ledger and the mapped source (`sync
/// --full`, or a plain `sync` once `[sync] reconcile_target` has passed since the last
/// one): the drift found, and what of it this cycle repaired. Its time is when the next
/// reconcile is due, for every instance (the interval survives restarts and handovers).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetReconciled {
    pub run_id: String,
    /// Objects read from the target (users and groups).
    pub listed: u64,
    /// Owned objects the target no longer held.
    pub missing: u64,
    /// Owned objects whose attributes differed from the mapped source.
    pub changed: u64,
    /// Target objects carrying one of our anchors that the ledger does not know.
    pub duplicates: u64,
    pub recreated: u64,
    pub restored: u64,
    /// Duplicates deleted from the target.
    pub removed: u64,
    /// Repairs that failed (recorded as ExportFailed, or a duplicate not removed): the
    /// next cycle reconciles again. Quarantined objects are skipped, not failed.
    pub failed: u64,
}

/// A target object carrying `anchor` that the ledger does not know (it owns `anchor` as
/// another object, or owned it once) was deleted from the target. The ledger's own
/// object for `anchor` is untouched.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DuplicateRemoved {
    pub epoch: u64,
    pub anchor: String,
    pub kind: ObjectKind,
    pub target_id: String,
}

/// A notification (`[notify]`) reached its receiver over one channel.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotificationDelivered {
    pub event: crate::ops::notify::NotifyEvent,
    pub channel: crate::ops::notify::Channel,
    /// Where it went: the webhook's URL without credentials, query or fragment, or the
    /// command's program.
    pub receiver: String,
    pub attempts: u32,
}

/// A notification could not be delivered over one channel within its time limit, retries
/// included: the last attempt's error class (never the secret, never the URL's query).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotificationFailed {
    pub event: crate::ops::notify::NotifyEvent,
    pub channel: crate::ops::notify::Channel,
    pub receiver: String,
    pub attempts: u32,
    pub error: crate::ops::notify::DeliveryError,
}

macro_rules! events {
    ($($variant:ident($payload:ty)),+ $(,)?) => {
        /// Every fact dirsync records.
        #[derive(Clone, Debug, PartialEq, Eq)]
        pub enum Event { $($variant($payload)),+ }

        /// Every event type name, for documentation and validation.
        pub const EVENT_TYPES: &[&str] = &[$(stringify!($variant)),+];

        impl Event {
            /// The stored `event_type`.
            pub fn event_type(&self) -> &'static str {
                match self { $(Event::$variant(_) => stringify!($variant)),+ }
            }

            /// The payload as stored: compact JSON of the variant's struct.
            pub fn payload(&self) -> String {
                let r = match self { $(Event::$variant(p) => serde_json::to_string(p)),+ };
                // Serialising these plain structs cannot fail (no maps with non-string keys).
                r.unwrap_or_else(|e| format!("{{\"unserialisable\":\"{e}\"}}"))
            }

            /// Decode a stored event, upcasting older schema versions.
            pub fn decode(event_type: &str, schema_version: u32, payload: &str) -> Result<Event> {
                check_schema_version(schema_version)?;
                let bad = |e| bad_payload(event_type, schema_version, e);
                match event_type {
                    $(stringify!($variant) => Ok(Event::$variant(
                        serde_json::from_str(payload).map_err(bad)?,
                    )),)+
                    other => Err(Error::BadInput(format!("unknown event type `{other}`"))),
                }
            }
        }
    };
}

// A payload much larger than the others is boxed (`EffectiveConfigRecorded`): the largest
// sets the size of every event, and a full import holds a million of them.
events! {
    ObjectImported(ObjectImported),
    ObjectChanged(ObjectChanged),
    ObjectDeleted(ObjectDeleted),
    ImportCompleted(ImportCompleted),
    CursorAdvanced(CursorAdvanced),
    CursorInvalidated(CursorInvalidated),
    SourceInfoRecorded(SourceInfoRecorded),
    ExportApplied(ExportApplied),
    ExportBatchStarted(ExportBatchStarted),
    ExportBatchCompleted(ExportBatchCompleted),
    ExportFailed(ExportFailed),
    TargetDuplicateRemoved(TargetDuplicateRemoved),
    SyncRelationshipEstablished(SyncRelationshipEstablished),
    SyncRunStarted(SyncRunStarted),
    SyncRunCompleted(SyncRunCompleted),
    SyncRunFailed(SyncRunFailed),
    InstanceStarted(InstanceLifecycle),
    InstanceStopped(InstanceLifecycle),
    InstanceRetired(InstanceLifecycle),
    DeletionsHeld(DeletionsHeld),
    DeletionsApproved(DeletionsApproved),
    DeletionsHoldEnded(DeletionsHoldEnded),
    HandoverStarted(HandoverStarted),
    HandoverStepStarted(HandoverStep),
    HandoverStepCompleted(HandoverStep),
    HandoverStepFailed(HandoverStep),
    HandoverCompleted(HandoverCompleted),
    TargetReset(TargetReset),
    AnchorRecorded(AnchorRecorded),
    AnchorsMigrated(AnchorsMigrated),
    EffectiveConfigRecorded(Box<EffectiveConfigRecorded>),
    TargetReconciled(TargetReconciled),
    DuplicateRemoved(DuplicateRemoved),
    NotificationDelivered(NotificationDelivered),
    NotificationFailed(NotificationFailed),
    FailoverStarted(FailoverStarted),
    InstanceFenced(InstanceFenced),
}

/// Well-known stream ids. A stream is the unit of optimistic concurrency.
pub mod stream {
    /// Source objects and imports: one stream, so two concurrent imports conflict.
    pub const SOURCE: &str = "source";
    /// The sync relationship (holder, epoch): fencing checks its version.
    pub const RELATIONSHIP: &str = "relationship";
    /// Exports to the target.
    pub const TARGET: &str = "target";
    /// Deletion guard decisions.
    pub const GUARD: &str = "guard";
    /// Notification deliveries (`[notify]`).
    pub const NOTIFY: &str = "notify";

    pub fn cursor(instance: &str) -> String {
        format!("cursor/{instance}")
    }
    pub fn instance(instance: &str) -> String {
        format!("instance/{instance}")
    }
    pub fn handover(id: &str) -> String {
        format!("handover/{id}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_every_shape() {
        let obj = SourceObject {
            anchor: "84856553-a093-4713-b3b0-1667192003bd".into(),
            kind: ObjectKind::User,
            dn: "CN=Ann,OU=Staff,DC=test,DC=lan".into(),
            attrs: Attrs::from([
                ("cn".into(), vec![AttrValue::Text("Ann".into())]),
                (
                    "photo".into(),
                    vec![AttrValue::Binary {
                        b64: vec![0xff, 0, 1],
                    }],
                ),
            ]),
            members: BTreeSet::new(),
        };
        let e = Event::ObjectImported(ObjectImported {
            object: obj,
            returned: false,
        });
        let back = Event::decode(e.event_type(), SCHEMA_VERSION, &e.payload()).unwrap();
        assert_eq!(e, back);
    }

    #[test]
    fn a_failed_run_recorded_before_reasons_decodes_and_encodes_as_stored() {
        let old = r#"{"run_id":"r","error":"target: down"}"#;
        let e = Event::decode("SyncRunFailed", SCHEMA_VERSION, old).unwrap();
        assert_eq!(
            e,
            Event::SyncRunFailed(SyncRunFailed {
                run_id: "r".into(),
                error: "target: down".into(),
                reason: None,
            })
        );
        // The same bytes again: what the hash covered is what such an event still is.
        assert_eq!(e.payload(), old);
        let new = Event::SyncRunFailed(SyncRunFailed {
            run_id: "r".into(),
            error: "deletions held".into(),
            reason: Some(FailureReason::Held),
        });
        assert_eq!(
            new.payload(),
            r#"{"run_id":"r","error":"deletions held","reason":"held"}"#
        );
        assert_eq!(
            Event::decode("SyncRunFailed", SCHEMA_VERSION, &new.payload()).unwrap(),
            new
        );
    }

    #[test]
    fn failure_reasons_of_errors() {
        let cases = [
            (Error::Source("x".into()), Some(FailureReason::Source)),
            (
                Error::SourceRefused("x".into()),
                Some(FailureReason::Source),
            ),
            (Error::Target("x".into()), Some(FailureReason::Target)),
            (Error::CycleTimeout("x".into()), Some(FailureReason::Target)),
            (Error::Store("x".into()), Some(FailureReason::Store)),
            (Error::Fenced("x".into()), Some(FailureReason::Fenced)),
            (Error::Held("x".into()), Some(FailureReason::Held)),
            // Promised to record nothing before a run starts.
            (Error::Config("x".into()), None),
            (Error::BadInput("x".into()), None),
            (Error::Refused("x".into()), None),
        ];
        for (e, before) in cases {
            assert_eq!(FailureReason::before_start(&e), before, "{e}");
        }
        assert_eq!(
            FailureReason::of(&Error::Refused("x".into())),
            FailureReason::Config
        );
    }

    #[test]
    fn newer_schema_is_refused() {
        let err = Event::decode(
            "CursorInvalidated",
            SCHEMA_VERSION + 1,
            "{\"reason\":\"x\"}",
        );
        assert!(matches!(err, Err(Error::SchemaTooNew { .. })));
    }

    #[test]
    fn unknown_type_is_bad_input() {
        assert!(matches!(
            Event::decode("Nope", 1, "{}"),
            Err(Error::BadInput(_))
        ));
    }

    #[test]
    fn attribute_values_are_decoded_in_place() {
        let p = r#"{"object":{"anchor":"a","kind":"user","dn":"d",
            "attrs":{"cn":["x"],"mail":["a","b"],"e":[]}}}"#;
        let Ok(Event::ObjectImported(i)) = Event::decode("ObjectImported", 1, p) else {
            panic!("decode");
        };
        let a = &i.object.attrs;
        assert_eq!(a.keys().collect::<Vec<_>>(), ["cn", "e", "mail"]);
        assert_eq!(a["cn"], vec![AttrValue::Text("x".into())]);
        assert!(a["e"].is_empty());
        assert_eq!(a["mail"].len(), 2);
    }
}
