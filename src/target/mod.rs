//! Cloud targets: SCIM 2.0 ([`scim`]) and Microsoft Graph ([`graph`]) behind one interface.
//!
//! The sync engine never speaks HTTP itself. It hands a target a chunk of planned
//! [`Op`]s and gets one [`Outcome`] per op back; how the target sends them (concurrent
//! connections, `$batch` of 20, retries on 429 / 5xx) is the target's business. What the
//! engine needs for matching it gets from [`Target::list`] and [`Target::candidates`] as
//! [`RemoteObject`]s. Decisions (what to create, update, delete, match) are pure and live in
//! `plan::matching` and `plan::plan`.

pub mod graph;
pub mod retry;
pub mod scim;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use compact_str::CompactString;
use serde::{Deserialize, Serialize};

use crate::config::{TargetConfig, TargetKind};
use crate::error::Result;
use crate::log::event::ObjectKind;

/// A user as the target should hold it (INTERFACE.md mapping). Its strings are mostly short
/// and held inline: a ledger of a million users keeps one.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MappedUser {
    /// SCIM `userName` / Graph `userPrincipalName`.
    pub user_name: CompactString,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<CompactString>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub given_name: Option<CompactString>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub family_name: Option<CompactString>,
    /// The work (primary) e-mail address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<CompactString>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<CompactString>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub department: Option<CompactString>,
    pub active: bool,
    /// Other attributes the mapping sets (`[mapping.user]`), by the target's name for
    /// them (a SCIM path, a Graph property): strings. Read back (the ledger's states),
    /// their names are [`interned`]: a ledger of a million users keeps each name once,
    /// and the plan's comparison with a freshly mapped user reads no scattered copies.
    #[serde(
        default,
        skip_serializing_if = "BTreeMap::is_empty",
        deserialize_with = "interned_keys"
    )]
    pub extra: BTreeMap<CompactString, CompactString>,
}

/// `extra` as read back: each long name [`interned`].
fn interned_keys<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<BTreeMap<CompactString, CompactString>, D::Error> {
    let read = BTreeMap::<CompactString, CompactString>::deserialize(d)?;
    Ok(read.into_iter().map(|(k, v)| (interned(&k), v)).collect())
}

/// `key` as a string whose clones allocate nothing: inline when short, else a reference to
/// one copy kept for the life of the process (one per distinct key, however often a mapping
/// is compiled or a mapped state read back).
pub fn interned(key: &str) -> CompactString {
    use std::sync::{Mutex, OnceLock};
    if key.len() <= std::mem::size_of::<CompactString>() {
        return CompactString::new(key);
    }
    static KEYS: OnceLock<Mutex<std::collections::HashSet<&'static str>>> = OnceLock::new();
    let mut keys = KEYS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let kept: &'static str = match keys.get(key) {
        Some(k) => k,
        None => {
            let k: &'static str = Box::leak(key.to_string().into_boxed_str());
            keys.insert(k);
            k
        }
    };
    CompactString::const_new(kept)
}

/// A group as the target should hold it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MappedGroup {
    pub display_name: CompactString,
    /// Target ids of the members (users and groups) that are synced.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub members: BTreeSet<String>,
}

/// The target-side state of one object: what the plan wants, and what the ledger records
/// we last exported.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Mapped {
    User(MappedUser),
    Group(MappedGroup),
}

impl Mapped {
    pub fn kind(&self) -> ObjectKind {
        match self {
            Mapped::User(_) => ObjectKind::User,
            Mapped::Group(_) => ObjectKind::Group,
        }
    }

    /// The name people know it by: userName for users, displayName for groups.
    pub fn name(&self) -> &str {
        match self {
            Mapped::User(u) => &u.user_name,
            Mapped::Group(g) => &g.display_name,
        }
    }

    /// This state with only the extra attributes `keep` names: what the target holds of
    /// the attributes a mapping sets, not of every attribute the target has.
    pub fn with_extras_of(&self, keep: &[&Mapped]) -> Mapped {
        match self {
            Mapped::User(u) if !u.extra.is_empty() => {
                let mut u = u.clone();
                u.extra.retain(|k, _| {
                    keep.iter()
                        .any(|m| matches!(m, Mapped::User(x) if x.extra.contains_key(k)))
                });
                Mapped::User(u)
            }
            m => m.clone(),
        }
    }

    /// The mapped state an export recorded (None when it has another shape). Read in
    /// place, by its `kind` first: no copy of the JSON value.
    pub fn from_state(v: &serde_json::Value) -> Option<Mapped> {
        match v.get("kind")?.as_str()? {
            "user" => MappedUser::deserialize(v).ok().map(Mapped::User),
            "group" => MappedGroup::deserialize(v).ok().map(Mapped::Group),
            _ => None,
        }
    }
}

/// The name a ledger entry is known by (its recorded userName or displayName), or "".
pub fn ledger_name(ledger: &crate::project::Ledger, anchor: &str) -> String {
    ledger
        .entries
        .get(anchor)
        .and_then(|l| l.state.as_ref())
        .map(|m| m.name().to_string())
        .unwrap_or_default()
}

/// One object found in the target, with what matching needs to know about it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteObject {
    pub kind: ObjectKind,
    /// The target's id (SCIM `id`, Graph object id).
    pub id: String,
    /// The anchor it carries, in dirsync's form (lowercase hyphenated UUID): SCIM
    /// `externalId` as is, Graph `onPremisesImmutableId` decoded from base64. None when the
    /// object carries none (a cloud-only object).
    pub anchor: Option<String>,
    /// userName (users) or displayName (groups).
    pub name: String,
    /// The user's e-mail addresses (empty for groups).
    pub emails: Vec<String>,
    /// Its version, when the target offers one (SCIM `meta.version`, for If-Match).
    pub etag: Option<String>,
    /// When the target created it, when it says (SCIM `meta.created`, Graph
    /// `createdDateTime`): the oldest of two objects carrying one anchor is kept
    /// (`sync::duplicates`).
    pub created: Option<chrono::DateTime<chrono::Utc>>,
    /// Its current state in the mapped form, when the response carried enough to tell (a
    /// group listed without its members has `None`). Used to PATCH only what differs after
    /// a match.
    pub state: Option<Mapped>,
}

/// One planned change to the target. Members are target ids, resolved by the planner.
// Ops live only for one chunk; boxing the update's states would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// Create the object carrying `anchor` (SCIM `externalId`, Graph `onPremisesImmutableId`).
    Create { anchor: String, object: Mapped },
    /// Change the object from what we last exported (`from`, None when unknown, e.g. right
    /// after a match without state: then every attribute of `to` is written) to `to`.
    /// Only the differences are sent. When `from` is None the anchor is written too (SCIM
    /// `externalId`, Graph `onPremisesImmutableId` / the group anchor): that is how a soft
    /// match becomes a hard one for every later cycle.
    Update {
        anchor: String,
        target_id: String,
        from: Option<Mapped>,
        to: Mapped,
        /// The version we last saw, for If-Match.
        etag: Option<String>,
    },
    Delete {
        anchor: String,
        kind: ObjectKind,
        target_id: String,
    },
}

impl Op {
    pub fn anchor(&self) -> &str {
        match self {
            Op::Create { anchor, .. } | Op::Update { anchor, .. } | Op::Delete { anchor, .. } => {
                anchor
            }
        }
    }

    pub fn kind(&self) -> ObjectKind {
        match self {
            Op::Create { object, .. } => object.kind(),
            Op::Update { to, .. } => to.kind(),
            Op::Delete { kind, .. } => *kind,
        }
    }
}

/// Why an operation (or a read) failed, after the target's own retries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TargetError {
    /// The HTTP status, if the target answered.
    pub status: Option<u16>,
    /// One line, for the log and the operator; never a secret.
    pub message: String,
    /// The whole cycle must stop (401: the token was revoked or is wrong). Everything not
    /// yet sent is [`Outcome::NotAttempted`].
    pub fatal: bool,
    /// The object the op was about is no longer in the target (deleted out of band: 404 on
    /// the object itself). An update answered so is re-created by the export.
    pub gone: bool,
}

impl TargetError {
    pub fn new(status: Option<u16>, message: impl Into<String>) -> TargetError {
        TargetError {
            status,
            message: message.into(),
            fatal: status == Some(401),
            gone: false,
        }
    }

    /// The same error, saying the object itself is gone from the target.
    pub fn gone(mut self) -> TargetError {
        self.gone = true;
        self
    }
}

impl std::fmt::Display for TargetError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.status {
            Some(s) => write!(f, "HTTP {s}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

impl From<TargetError> for crate::error::Error {
    fn from(e: TargetError) -> Self {
        crate::error::Error::Target(e.to_string())
    }
}

/// What happened to one [`Op`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Done in the target. `target_id` is the created object's id (for updates and deletes,
    /// the op's own); `etag` its new version when the response told.
    Applied {
        target_id: String,
        etag: Option<String>,
    },
    /// The target refused it or kept failing; recorded as ExportFailed, retried next cycle.
    Failed(TargetError),
    /// Never sent: the deadline passed or a fatal error stopped the chunk. Not recorded.
    NotAttempted,
}

/// What every target does. `apply` returns exactly one outcome per op, in order.
#[allow(async_fn_in_trait)]
pub trait Target {
    /// Reach the target and check the credentials (a cheap authenticated GET).
    async fn probe(&self) -> Result<(), TargetError>;
    /// Every object of `kind` in the target (all pages).
    async fn list(&self, kind: ObjectKind) -> Result<Vec<RemoteObject>, TargetError>;
    /// The objects that could match `object`: those carrying `anchor`, and (users) those
    /// whose userName or an e-mail equals the object's userName or e-mail, (groups) whose
    /// displayName equals it. Used instead of [`list`](Self::list) when few objects are new.
    async fn candidates(
        &self,
        anchor: &str,
        object: &Mapped,
    ) -> Result<Vec<RemoteObject>, TargetError>;
    /// The objects of `kind` carrying `anchor` (a filter on the target's copy of it, all of
    /// them: looking for duplicates). None when the target cannot be asked by that anchor.
    async fn carrying(
        &self,
        kind: ObjectKind,
        anchor: &str,
    ) -> Result<Option<Vec<RemoteObject>>, TargetError>;
    /// Whether the target's `eq` filters compare names case-insensitively, as RFC 7643
    /// says for userName, displayName and emails.value (`caseExact: false`): asked by
    /// looking up `known`, the object `id` holds, by its name (and e-mail) spelt in the
    /// other case (see [`crate::plan::matching::swap_case`]). Only then are [`candidates`](Self::candidates)
    /// complete enough to match by.
    async fn eq_ignores_case(&self, id: &str, known: &Mapped) -> Result<bool, TargetError>;
    /// Send `ops`. An op not started before `deadline` is [`Outcome::NotAttempted`] (the
    /// fencing lease, see `sync::export`).
    async fn apply(&self, ops: &[Op], deadline: Instant) -> Vec<Outcome>;
}

/// How long one HTTP request may take before it counts as failed (and may be retried).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// The timeout of one request about to start under `deadline` (the export lease, see
/// `sync::export`): [`REQUEST_TIMEOUT`], cut so that the whole request (connecting, sending,
/// the whole answer read) ends by the deadline. `None` when the deadline has passed: the
/// request must not be sent.
pub fn request_timeout(deadline: Option<Instant>) -> Option<Duration> {
    let Some(d) = deadline else {
        return Some(REQUEST_TIMEOUT);
    };
    let left = d.saturating_duration_since(Instant::now());
    (!left.is_zero()).then(|| left.min(REQUEST_TIMEOUT))
}

/// The configured target.
pub enum AnyTarget {
    Scim(scim::ScimTarget),
    Graph(graph::GraphTarget),
}

impl AnyTarget {
    /// Build the client from the configuration (secrets are resolved here). No request is
    /// made: call [`Target::probe`] for that.
    pub fn from_config(cfg: &TargetConfig) -> Result<AnyTarget> {
        Ok(match cfg.kind {
            TargetKind::Scim => AnyTarget::Scim(scim::ScimTarget::from_config(cfg)?),
            TargetKind::Graph => AnyTarget::Graph(graph::GraphTarget::from_config(cfg)?),
        })
    }
}

impl Target for AnyTarget {
    async fn probe(&self) -> Result<(), TargetError> {
        match self {
            AnyTarget::Scim(t) => t.probe().await,
            AnyTarget::Graph(t) => t.probe().await,
        }
    }
    async fn list(&self, kind: ObjectKind) -> Result<Vec<RemoteObject>, TargetError> {
        match self {
            AnyTarget::Scim(t) => t.list(kind).await,
            AnyTarget::Graph(t) => t.list(kind).await,
        }
    }
    async fn carrying(
        &self,
        kind: ObjectKind,
        anchor: &str,
    ) -> Result<Option<Vec<RemoteObject>>, TargetError> {
        match self {
            AnyTarget::Scim(t) => t.carrying(kind, anchor).await,
            AnyTarget::Graph(t) => t.carrying(kind, anchor).await,
        }
    }
    async fn candidates(
        &self,
        anchor: &str,
        object: &Mapped,
    ) -> Result<Vec<RemoteObject>, TargetError> {
        match self {
            AnyTarget::Scim(t) => t.candidates(anchor, object).await,
            AnyTarget::Graph(t) => t.candidates(anchor, object).await,
        }
    }
    async fn eq_ignores_case(&self, id: &str, known: &Mapped) -> Result<bool, TargetError> {
        match self {
            AnyTarget::Scim(t) => t.eq_ignores_case(id, known).await,
            AnyTarget::Graph(t) => t.eq_ignores_case(id, known).await,
        }
    }
    async fn apply(&self, ops: &[Op], deadline: Instant) -> Vec<Outcome> {
        match self {
            AnyTarget::Scim(t) => t.apply(ops, deadline).await,
            AnyTarget::Graph(t) => t.apply(ops, deadline).await,
        }
    }
}

/// A top-level field of two mapped states that differs: `attribute` and its values as
/// `"a" -> "b"` (`(none)` when unset); a group's members as the count of ids added and
/// removed (`+2 -1`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FieldChange {
    pub attribute: String,
    pub change: String,
}

/// The top-level fields that differ from `a` to `b` (pure), by name; each of the mapping's
/// extra attributes counts as a field.
pub fn field_changes(a: Option<&Mapped>, b: Option<&Mapped>) -> Vec<FieldChange> {
    let obj = |v: Option<&Mapped>| {
        v.and_then(|m| serde_json::to_value(m).ok())
            .as_ref()
            .and_then(|v| v.as_object())
            .map(|o| {
                // The mapping's extra attributes are attributes of their own.
                let mut fields = BTreeMap::new();
                for (k, v) in o {
                    match (k.as_str(), v.as_object()) {
                        ("extra", Some(extra)) => {
                            fields.extend(extra.iter().map(|(k, v)| (k.clone(), v.clone())))
                        }
                        _ => {
                            fields.insert(k.clone(), v.clone());
                        }
                    }
                }
                fields
            })
            .unwrap_or_default()
    };
    let (a, b) = (obj(a), obj(b));
    let keys: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    let show = |v: Option<&serde_json::Value>| v.map_or("(none)".to_string(), |v| v.to_string());
    keys.into_iter()
        .filter(|k| a.get(*k) != b.get(*k))
        .map(|k| {
            let (x, y) = (a.get(k), b.get(k));
            let change = if k == "members" {
                let set = |v: Option<&serde_json::Value>| -> BTreeSet<String> {
                    v.and_then(|v| v.as_array())
                        .map(|l| l.iter().map(|m| m.to_string()).collect())
                        .unwrap_or_default()
                };
                let (x, y) = (set(x), set(y));
                format!(
                    "+{} -{}",
                    y.difference(&x).count(),
                    x.difference(&y).count()
                )
            } else {
                format!("{} -> {}", show(x), show(y))
            };
            FieldChange {
                attribute: k.clone(),
                change,
            }
        })
        .collect()
}

/// [`field_changes`] as lines: `title: "a" -> "b"`, `members +2 -1`.
pub fn mapped_changes(a: Option<&Mapped>, b: Option<&Mapped>) -> Vec<String> {
    field_changes(a, b)
        .into_iter()
        .map(|c| match c.attribute.as_str() {
            "members" => format!("members {}", c.change),
            _ => format!("{}: {}", c.attribute, c.change),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extra_names_read_back_are_one_copy_and_the_user_is_unchanged() {
        let long = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:employeeNumber";
        let user = MappedUser {
            user_name: "ann".into(),
            active: true,
            extra: BTreeMap::from([
                (CompactString::from(long), CompactString::from("7")),
                (CompactString::from("nickName"), CompactString::from("a")),
            ]),
            ..Default::default()
        };
        let json = serde_json::to_value(&user).unwrap();
        let (a, b): (MappedUser, MappedUser) = (
            serde_json::from_value(json.clone()).unwrap(),
            serde_json::from_value(json).unwrap(),
        );
        assert_eq!((&a, &b), (&user, &user));
        let key = |u: &MappedUser| u.extra.keys().find(|k| k.len() > 24).unwrap().as_ptr();
        assert_eq!(key(&a), key(&b), "the long name is shared, not read twice");
        assert_ne!(key(&a), key(&user));
    }

    #[test]
    fn a_request_under_a_deadline_ends_by_it() {
        assert_eq!(request_timeout(None), Some(REQUEST_TIMEOUT));
        let t = request_timeout(Some(Instant::now() + Duration::from_secs(2))).unwrap();
        assert!(
            t <= Duration::from_secs(2) && t > Duration::from_secs(1),
            "{t:?}"
        );
        assert_eq!(
            request_timeout(Some(Instant::now() + Duration::from_secs(600))),
            Some(REQUEST_TIMEOUT)
        );
        assert_eq!(request_timeout(Some(Instant::now())), None);
    }
}
