//! Configuration (INTERFACE.md). Secrets are never in the file: only the name of an
//! environment variable or a file holding them, resolved when needed, redacted in Debug.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::plan::mapping::{Mapping, RawRule};

/// A secret value. Its Debug and Display never show it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Secret {
        Secret(s.into())
    }
    /// The value, for the one place that must send it (a bind, an Authorization header).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// Where a secret comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SecretRef {
    Env(String),
    File(PathBuf),
}

impl SecretRef {
    /// Read the secret now. `key` names the setting in errors.
    pub fn resolve(&self, key: &str) -> Result<Secret> {
        match self {
            SecretRef::Env(var) => match std::env::var(var) {
                Ok(v) if !v.is_empty() => Ok(Secret(v)),
                // A value that cannot be a variable name is probably the secret itself,
                // typed into `*_env` by mistake: it must not be echoed (issue 18).
                _ if !plausible_env_name(var) => Err(Error::Config(format!(
                    "{key}_env: the value is not an environment variable name (letters, digits \
                     and `_`); did you put the secret itself there? It is not shown"
                ))),
                _ => Err(Error::Config(format!(
                    "{key}: environment variable {var} is not set"
                ))),
            },
            SecretRef::File(p) => {
                let v = std::fs::read_to_string(p).map_err(|e| {
                    Error::Config(format!("{key}: cannot read {}: {e}", p.display()))
                })?;
                let v = v.trim_end_matches(['\r', '\n']).to_string();
                if v.is_empty() {
                    return Err(Error::Config(format!("{key}: {} is empty", p.display())));
                }
                Ok(Secret(v))
            }
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceKind {
    Ad,
    Openldap,
    Ldap,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Tls {
    #[default]
    None,
    Starttls,
    Ldaps,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TargetKind {
    Scim,
    Graph,
}

/// Deletions per cycle exported without approval.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Threshold {
    Count(u64),
    /// Percent of owned objects.
    Percent(f64),
}

impl Threshold {
    /// The largest number of deletions allowed when `owned` objects are owned.
    pub fn limit(&self, owned: u64) -> u64 {
        match *self {
            Threshold::Count(n) => n,
            Threshold::Percent(p) => ((owned as f64) * p / 100.0).floor() as u64,
        }
    }
}

/// What the deletion guard holds when it trips: `[sync] hold`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Hold {
    /// The deletions wait for approval; creates and updates are exported.
    #[default]
    Deletions,
    /// The whole cycle waits: nothing is exported.
    All,
}

/// What a user gone from the source (deleted or out of scope) becomes in the target:
/// `[sync] on_delete` with `disabled_for`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OnDelete {
    /// Deleted from the target by the next cycle (the default).
    #[default]
    Delete,
    /// Set inactive (SCIM `active = false`, Graph `accountEnabled = false`) by the next
    /// cycle, and deleted once `after` has passed since that disable was recorded. Groups
    /// are deleted at once.
    Disable { after: Duration },
}

/// The default `[sync] disabled_for`.
pub const DISABLED_FOR: Duration = Duration::from_secs(30 * 86_400);

#[derive(Clone, Debug)]
pub struct StoreConfig {
    /// `sqlite://ABSOLUTE_PATH` or a PostgreSQL URL.
    pub url: String,
}

/// What dirsync accepts from a source server before it gives up on it: a server that
/// breaks one of these costs one error (exit 1), never unbounded time or memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SourceLimits {
    /// `max_message_bytes`: the largest LDAP message read (one entry with all its values).
    pub max_message_bytes: usize,
    /// `max_entries`: entries (and references and intermediate messages) one search may
    /// return, all its pages or DirSync rounds together.
    pub max_entries: u64,
    /// `operation_timeout`: one LDAP operation (a bind, a search, one page of a paged
    /// search), from the request to its last response byte.
    pub operation_timeout: Duration,
    /// `import_timeout`: one read of the source (every operation of an import, retries
    /// included).
    pub import_timeout: Duration,
}

impl Default for SourceLimits {
    fn default() -> Self {
        SourceLimits {
            max_message_bytes: 64 << 20,
            max_entries: 2_000_000,
            operation_timeout: Duration::from_secs(120),
            import_timeout: Duration::from_secs(30 * 60),
        }
    }
}

#[derive(Clone, Debug)]
pub struct SourceConfig {
    pub kind: SourceKind,
    pub url: String,
    pub tls: Tls,
    pub ca_file: Option<PathBuf>,
    pub limits: SourceLimits,
    pub bind_dn: String,
    pub password: SecretRef,
    pub base_dn: String,
    pub users: String,
    pub groups: String,
    pub include: Vec<String>,
    pub exclude: Vec<String>,
    /// `[source] anchor`: the attribute pinned as the anchor (INTERFACE.md "Source anchor
    /// and scope"), spelled as documented; `None`: the kind's default.
    pub anchor: Option<String>,
    /// The source attributes the mapping reads (lower case): imports keep them besides the
    /// kind's own list.
    pub mapped: Vec<String>,
    /// `[source] member_of`: only users that are members, direct or nested, of these groups
    /// are in scope (resolved from the source projection); empty: no such rule.
    pub member_of: Vec<String>,
    /// `Mapping::fingerprint` of the effective mapping (empty before the mapping is compiled).
    pub mapping_fingerprint: String,
}

impl SourceConfig {
    /// The effective scope, as `EffectiveConfigRecorded` records it.
    pub fn effective(&self) -> crate::log::event::EffectiveScope {
        let attributes = crate::source::kept(self);
        crate::log::event::EffectiveScope {
            base_dn: self.base_dn.clone(),
            users: self.users.clone(),
            groups: self.groups.clone(),
            include: self.include.clone(),
            exclude: self.exclude.clone(),
            member_of: self.member_of.clone(),
            attributes,
        }
    }

    /// The scope rules: base DN, include, exclude and member_of.
    pub fn scope(&self) -> crate::sync::scope::Scope {
        crate::sync::scope::Scope::new(&self.base_dn, &self.include, &self.exclude)
            .with_member_of(&self.member_of)
    }
}

#[derive(Clone, Debug)]
pub struct GraphAuth {
    pub tenant_id: String,
    pub client_id: String,
    pub client_secret: SecretRef,
    pub token_url: Option<String>,
}

#[derive(Clone, Debug)]
pub struct TargetConfig {
    pub kind: TargetKind,
    pub url: String,
    /// SCIM bearer token.
    pub token: Option<SecretRef>,
    pub graph: Option<GraphAuth>,
    /// SCIM requests in flight at once (default 4; small servers drop more).
    pub concurrency: Option<usize>,
}

#[derive(Clone, Debug)]
pub struct SyncConfig {
    pub interval: Duration,
    pub deletion_threshold: Threshold,
    /// What a tripped guard holds: the deletions alone (default) or the whole cycle.
    pub hold: Hold,
    /// The export lease: how long one claimed chunk may send requests (README, Fencing).
    pub lease: Duration,
    /// How long a cycle may run: after it no new request is sent (those in flight finish
    /// and are recorded) and the rest waits for the next cycle.
    pub cycle_timeout: Duration,
    /// How often a plain `sync` reads the whole target and repairs drift (`sync --full`
    /// always does): `[sync] reconcile_target`, default 24 h.
    pub reconcile_target: Duration,
    /// `[sync] on_delete` / `disabled_for`.
    pub on_delete: OnDelete,
}

impl Default for SyncConfig {
    fn default() -> Self {
        SyncConfig {
            interval: Duration::from_secs(30 * 60),
            deletion_threshold: Threshold::Count(500),
            hold: Hold::default(),
            lease: crate::sync::export::LEASE,
            cycle_timeout: Duration::from_secs(30 * 60),
            reconcile_target: Duration::from_secs(24 * 3600),
            on_delete: OnDelete::Delete,
        }
    }
}

/// `[notify]`: who is told when something needs a person (`ops::notify`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NotifyConfig {
    /// `webhook_url`: an http(s) URL the notification is POSTed to.
    pub webhook_url: Option<String>,
    /// `webhook_secret_env` / `webhook_secret_file`: the HMAC-SHA256 key of the
    /// `X-Dirsync-Signature` header; without it the webhook is sent unsigned.
    pub webhook_secret: Option<SecretRef>,
    /// `command`: a program (and its arguments) run with the notification on stdin; no shell.
    pub command: Option<Vec<String>>,
    /// `failures_before_alert`: failed cycles in a row before `sync_failed` (default 3).
    pub failures_before_alert: u32,
    /// `timeout`: how long one notification may take on each channel, retries included
    /// (default 60 s); a receiver still not done then is given up on (a command is killed).
    pub timeout: Duration,
}

impl Default for NotifyConfig {
    fn default() -> Self {
        NotifyConfig {
            webhook_url: None,
            webhook_secret: None,
            command: None,
            failures_before_alert: 3,
            timeout: Duration::from_secs(60),
        }
    }
}

/// `[ha]`: heartbeats and failover between a holder and its standbys (`dirsync run
/// --standby`; README, High availability).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HaConfig {
    /// How often a running service records that it is alive (`heartbeat`, default 10 s).
    pub heartbeat: Duration,
    /// How old the holder's last heartbeat must be before a standby takes over
    /// (`failover_after`, default 60 s). More than the lease plus the heartbeat.
    pub failover_after: Duration,
}

impl HaConfig {
    /// The defaults, with `failover_after` raised above a long lease (`[ha]` not given).
    pub fn defaults_for(lease: Duration) -> HaConfig {
        let heartbeat = Duration::from_secs(10);
        HaConfig {
            heartbeat,
            failover_after: Duration::from_secs(60).max(lease + heartbeat * 2),
        }
    }

    /// Why these values are unsafe with `lease`, if they are: a standby must not take over
    /// while the holder may still be inside a lease it renewed since its last heartbeat.
    pub fn unsafe_with(&self, lease: Duration) -> Option<String> {
        if self.heartbeat.is_zero() {
            return Some("ha.heartbeat: must be more than zero".into());
        }
        (self.failover_after <= lease + self.heartbeat).then(|| {
            format!(
                "ha.failover_after: {} must exceed the export lease ({}, [sync] lease) plus the heartbeat ({})",
                humantime::format_duration(self.failover_after),
                humantime::format_duration(lease),
                humantime::format_duration(self.heartbeat)
            )
        })
    }
}

/// The shortest and longest `[sync] lease`.
pub const LEASE_RANGE: (Duration, Duration) = (Duration::from_secs(2), Duration::from_secs(600));

/// A loaded, validated configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// The file it came from, if any.
    pub path: Option<PathBuf>,
    pub store: StoreConfig,
    pub source: Option<SourceConfig>,
    pub target: Option<TargetConfig>,
    pub sync: SyncConfig,
    /// The mapping, compiled (INTERFACE.md "Attribute mapping"): the defaults for the
    /// source's and target's kinds with `[mapping.user]` / `[mapping.group]` applied.
    /// Present with a `[source]`.
    pub mapping: Option<Arc<Mapping>>,
    /// `[notify]`, when given.
    pub notify: Option<NotifyConfig>,
    /// `[ha]`, or its defaults.
    pub ha: HaConfig,
}

// ---- raw file shape ----

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    store: Option<RawStore>,
    source: Option<RawSource>,
    target: Option<RawTarget>,
    sync: Option<RawSync>,
    mapping: Option<RawMapping>,
    notify: Option<RawNotify>,
    ha: Option<RawHa>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHa {
    heartbeat: Option<String>,
    failover_after: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMapping {
    #[serde(default)]
    user: BTreeMap<String, toml::Spanned<String>>,
    #[serde(default)]
    group: BTreeMap<String, toml::Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNotify {
    webhook_url: Option<String>,
    webhook_secret_env: Option<String>,
    webhook_secret_file: Option<PathBuf>,
    command: Option<RawCommand>,
    failures_before_alert: Option<u32>,
    timeout: Option<String>,
}

/// `command = "/path/prog"` or `command = ["prog", "arg", ...]`.
#[derive(Deserialize)]
#[serde(untagged)]
enum RawCommand {
    Program(String),
    Argv(Vec<String>),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStore {
    url: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSource {
    kind: SourceKind,
    url: String,
    #[serde(default)]
    tls: Tls,
    ca_file: Option<PathBuf>,
    max_message_bytes: Option<u64>,
    max_entries: Option<u64>,
    operation_timeout: Option<String>,
    import_timeout: Option<String>,
    bind_dn: String,
    password_env: Option<String>,
    password_file: Option<PathBuf>,
    base_dn: String,
    users: Option<String>,
    groups: Option<String>,
    #[serde(default)]
    include: Vec<String>,
    #[serde(default)]
    exclude: Vec<String>,
    anchor: Option<String>,
    #[serde(default)]
    member_of: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTarget {
    kind: TargetKind,
    url: String,
    token_env: Option<String>,
    token_file: Option<PathBuf>,
    tenant_id: Option<String>,
    client_id: Option<String>,
    client_secret_env: Option<String>,
    client_secret_file: Option<PathBuf>,
    token_url: Option<String>,
    concurrency: Option<usize>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawThreshold {
    Count(u64),
    Text(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSync {
    interval: Option<String>,
    deletion_threshold: Option<RawThreshold>,
    hold: Option<Hold>,
    lease: Option<String>,
    cycle_timeout: Option<String>,
    reconcile_target: Option<String>,
    on_delete: Option<String>,
    disabled_for: Option<String>,
}

const DEFAULT_STORE: &str = "sqlite://dirsync.db";

impl Config {
    /// Find and load the configuration: `explicit`, else `$DIRSYNC_CONFIG`, else
    /// `./dirsync.toml`; with none of them present, the defaults (a store in this folder).
    pub fn discover(explicit: Option<&Path>) -> Result<Config> {
        if let Some(p) = explicit {
            return Config::load(p);
        }
        if let Some(p) = std::env::var_os("DIRSYNC_CONFIG") {
            return Config::load(Path::new(&p));
        }
        let local = Path::new("dirsync.toml");
        if local.exists() {
            return Config::load(local);
        }
        Config::parse("", Path::new("."), None)
    }

    pub fn load(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
        let dir = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        Config::parse(&text, dir, Some(path))
    }

    /// Parse `text`; relative paths are relative to `dir`.
    pub fn parse(text: &str, dir: &Path, path: Option<&Path>) -> Result<Config> {
        let name = path.map_or("configuration".to_string(), |p| p.display().to_string());
        let raw: RawConfig = toml::from_str(text).map_err(|e| {
            let line = e
                .span()
                .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
            let msg = e.message().replace('\n', " ");
            match line {
                Some(l) => Error::Config(format!("{name}:{l}: {msg}")),
                None => Error::Config(format!("{name}: {msg}")),
            }
        })?;
        let bad = |key: &str, why: String| Error::Config(format!("{name}: {key}: {why}"));
        let rel = |p: &Path| {
            if p.is_absolute() {
                p.to_path_buf()
            } else {
                dir.join(p)
            }
        };

        let url = raw
            .store
            .and_then(|s| s.url)
            .unwrap_or_else(|| DEFAULT_STORE.to_string());
        let store = StoreConfig {
            url: if let Some(p) = url.strip_prefix("sqlite://") {
                if p.is_empty() {
                    return Err(bad("store.url", "sqlite:// needs a file path".into()));
                }
                format!("sqlite://{}", rel(Path::new(p)).display())
            } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
                url
            } else {
                return Err(bad(
                    "store.url",
                    "must start with sqlite:// or postgres://".into(),
                ));
            },
        };

        let secret = |key: &str,
                      env: Option<String>,
                      file: Option<PathBuf>|
         -> Result<Option<SecretRef>> {
            match (env, file) {
                (Some(_), Some(_)) => Err(bad(key, "give either _env or _file, not both".into())),
                (Some(v), None) if !plausible_env_name(&v) => Err(bad(
                    &format!("{key}_env"),
                    "is not an environment variable name (letters, digits and `_`); did you \
                     put the secret itself there? The value is not shown"
                        .into(),
                )),
                (Some(v), None) => Ok(Some(SecretRef::Env(v))),
                (None, Some(f)) => Ok(Some(SecretRef::File(rel(&f)))),
                (None, None) => Ok(None),
            }
        };

        let source = match raw.source {
            None => None,
            Some(s) => {
                if !(s.url.starts_with("ldap://") || s.url.starts_with("ldaps://")) {
                    return Err(bad(
                        "source.url",
                        format!("`{}` is not ldap:// or ldaps://", s.url),
                    ));
                }
                if s.url.starts_with("ldaps://") && s.tls == Tls::Starttls {
                    return Err(bad(
                        "source.tls",
                        "starttls cannot be used with ldaps://".into(),
                    ));
                }
                let password = secret("source.password", s.password_env, s.password_file)?
                    .ok_or_else(|| {
                        bad("source", "password_env or password_file is required".into())
                    })?;
                let (users, groups) = match s.kind {
                    SourceKind::Ad => (
                        "(&(objectClass=user)(objectCategory=person))",
                        "(objectClass=group)",
                    ),
                    SourceKind::Openldap | SourceKind::Ldap => (
                        "(objectClass=inetOrgPerson)",
                        "(|(objectClass=groupOfNames)(objectClass=groupOfUniqueNames))",
                    ),
                };
                let anchor = s
                    .anchor
                    .map(|a| crate::sync::anchor::pin_for(s.kind, &a))
                    .transpose()
                    .map_err(|why| bad("source.anchor", why))?;
                let mut limits = SourceLimits::default();
                if let Some(n) = s.max_message_bytes {
                    if !(1024..=(1 << 31)).contains(&n) {
                        return Err(bad(
                            "source.max_message_bytes",
                            "must be between 1024 and 2147483648".into(),
                        ));
                    }
                    limits.max_message_bytes = usize::try_from(n)
                        .map_err(|_| bad("source.max_message_bytes", "too large here".into()))?;
                }
                if let Some(n) = s.max_entries {
                    if n == 0 {
                        return Err(bad("source.max_entries", "must be more than zero".into()));
                    }
                    limits.max_entries = n;
                }
                for (key, text, slot) in [
                    (
                        "source.operation_timeout",
                        s.operation_timeout,
                        &mut limits.operation_timeout,
                    ),
                    (
                        "source.import_timeout",
                        s.import_timeout,
                        &mut limits.import_timeout,
                    ),
                ] {
                    if let Some(t) = text {
                        let d = humantime::parse_duration(&t)
                            .map_err(|e| bad(key, format!("`{t}`: {e}")))?;
                        if d.is_zero() {
                            return Err(bad(key, "must be more than zero".into()));
                        }
                        *slot = d;
                    }
                }
                if let Some(bad_dn) = s
                    .member_of
                    .iter()
                    .find(|d| !crate::source::dn::looks_like_dn(d))
                {
                    return Err(bad(
                        "source.member_of",
                        format!("`{bad_dn}` is not a DN (e.g. \"cn=sync-users,ou=groups,dc=example,dc=com\")"),
                    ));
                }
                // A filter the server could not take is the configuration's fault: said now,
                // before anything connects or is written.
                for (key, f) in [("source.users", &s.users), ("source.groups", &s.groups)] {
                    if let Some(f) = f {
                        if ldap3::parse_filter(f.as_str()).is_err() {
                            return Err(bad(
                                key,
                                format!("`{f}` is not an LDAP search filter (RFC 4515)"),
                            ));
                        }
                    }
                }
                Some(SourceConfig {
                    member_of: s.member_of,
                    anchor,
                    kind: s.kind,
                    limits,
                    tls: if s.url.starts_with("ldaps://") {
                        Tls::Ldaps
                    } else {
                        s.tls
                    },
                    url: s.url,
                    ca_file: s.ca_file.map(|p| rel(&p)),
                    bind_dn: s.bind_dn,
                    password,
                    base_dn: s.base_dn,
                    users: s.users.unwrap_or_else(|| users.to_string()),
                    groups: s.groups.unwrap_or_else(|| groups.to_string()),
                    include: s.include,
                    exclude: s.exclude,
                    mapped: Vec::new(),
                    mapping_fingerprint: String::new(),
                })
            }
        };

        let target = match raw.target {
            None => None,
            Some(t) => {
                if !(t.url.starts_with("http://") || t.url.starts_with("https://")) {
                    return Err(bad("target.url", format!("`{}` is not http(s)://", t.url)));
                }
                let token = secret("target.token", t.token_env, t.token_file)?;
                let client_secret = secret(
                    "target.client_secret",
                    t.client_secret_env,
                    t.client_secret_file,
                )?;
                let graph = match t.kind {
                    TargetKind::Scim => {
                        if token.is_none() {
                            return Err(bad(
                                "target",
                                "token_env or token_file is required for scim".into(),
                            ));
                        }
                        None
                    }
                    TargetKind::Graph => Some(GraphAuth {
                        tenant_id: t
                            .tenant_id
                            .ok_or_else(|| bad("target.tenant_id", "required for graph".into()))?,
                        client_id: t
                            .client_id
                            .ok_or_else(|| bad("target.client_id", "required for graph".into()))?,
                        client_secret: client_secret.ok_or_else(|| {
                            bad(
                                "target.client_secret_env",
                                "client_secret_env or client_secret_file is required for graph"
                                    .into(),
                            )
                        })?,
                        token_url: t.token_url,
                    }),
                };
                if t.concurrency.is_some_and(|c| !(1..=64).contains(&c)) {
                    return Err(bad("target.concurrency", "must be between 1 and 64".into()));
                }
                Some(TargetConfig {
                    kind: t.kind,
                    url: t.url.trim_end_matches('/').to_string(),
                    token,
                    graph,
                    concurrency: t.concurrency,
                })
            }
        };

        let mut sync = SyncConfig::default();
        if let Some(s) = raw.sync {
            if let Some(i) = s.interval {
                sync.interval = humantime::parse_duration(&i)
                    .map_err(|e| bad("sync.interval", format!("`{i}`: {e}")))?;
                if sync.interval.is_zero() {
                    return Err(bad("sync.interval", "must be more than zero".into()));
                }
            }
            if let Some(h) = s.hold {
                sync.hold = h;
            }
            if let Some(l) = s.lease {
                sync.lease = humantime::parse_duration(&l)
                    .map_err(|e| bad("sync.lease", format!("`{l}`: {e}")))?;
                let (min, max) = LEASE_RANGE;
                if sync.lease < min || sync.lease > max {
                    return Err(bad(
                        "sync.lease",
                        format!(
                            "`{l}`: must be from {} to {}",
                            humantime::format_duration(min),
                            humantime::format_duration(max)
                        ),
                    ));
                }
            }
            if let Some(t) = s.cycle_timeout {
                sync.cycle_timeout = humantime::parse_duration(&t)
                    .map_err(|e| bad("sync.cycle_timeout", format!("`{t}`: {e}")))?;
                if sync.cycle_timeout.is_zero() {
                    return Err(bad("sync.cycle_timeout", "must be more than zero".into()));
                }
            }
            if let Some(r) = s.reconcile_target {
                sync.reconcile_target = humantime::parse_duration(&r)
                    .map_err(|e| bad("sync.reconcile_target", format!("`{r}`: {e}")))?;
                if sync.reconcile_target.is_zero() {
                    return Err(bad(
                        "sync.reconcile_target",
                        "must be more than zero".into(),
                    ));
                }
            }
            let after = match s.disabled_for {
                None => DISABLED_FOR,
                Some(d) => {
                    let after = humantime::parse_duration(&d)
                        .map_err(|e| bad("sync.disabled_for", format!("`{d}`: {e}")))?;
                    if after.is_zero() {
                        return Err(bad("sync.disabled_for", "must be more than zero".into()));
                    }
                    after
                }
            };
            sync.on_delete = match s.on_delete.as_deref() {
                None | Some("delete") => OnDelete::Delete,
                Some("disable") => OnDelete::Disable { after },
                Some(other) => {
                    return Err(bad(
                        "sync.on_delete",
                        format!("`{other}`: must be \"delete\" or \"disable\""),
                    ))
                }
            };
            if let Some(t) = s.deletion_threshold {
                sync.deletion_threshold = match t {
                    RawThreshold::Count(n) => Threshold::Count(n),
                    RawThreshold::Text(s) => parse_threshold(&s).ok_or_else(|| {
                        bad(
                            "sync.deletion_threshold",
                            format!("`{s}` is not a count or a percentage like \"10%\""),
                        )
                    })?,
                };
            }
        }
        let line_of = |at: usize| text[..at.min(text.len())].matches('\n').count() + 1;
        let rows = |m: &BTreeMap<String, toml::Spanned<String>>| -> Vec<RawRule> {
            m.iter()
                .map(|(k, v)| RawRule {
                    key: k.clone(),
                    expr: v.get_ref().clone(),
                    line: line_of(v.span().start),
                })
                .collect()
        };
        let (user, group) = raw
            .mapping
            .as_ref()
            .map(|m| (rows(&m.user), rows(&m.group)))
            .unwrap_or_default();
        let mut source = source;
        let mapping = match &mut source {
            Some(src) => {
                let kind = target.as_ref().map_or(TargetKind::Scim, |t| t.kind);
                let m =
                    Mapping::compile(src.kind, kind, &user, &group).map_err(|e| match e.line {
                        Some(l) => Error::Config(format!("{name}:{l}: {}", e.message)),
                        None => Error::Config(format!("{name}: {}", e.message)),
                    })?;
                let mut reads: Vec<String> = m
                    .user
                    .iter()
                    .chain(&m.group)
                    .flat_map(|r| r.reads.iter().cloned())
                    .collect();
                reads.sort();
                reads.dedup();
                src.mapped = reads;
                src.mapping_fingerprint = m.fingerprint();
                Some(Arc::new(m))
            }
            None if raw.mapping.is_some() => {
                return Err(bad(
                    "mapping",
                    "needs a [source] (the defaults depend on its kind)".into(),
                ))
            }
            None => None,
        };
        let notify = match raw.notify {
            None => None,
            Some(n) => {
                let mut c = NotifyConfig::default();
                if let Some(u) = n.webhook_url {
                    // The URL is not echoed: its query may carry a token.
                    let ok = reqwest::Url::parse(&u)
                        .is_ok_and(|p| matches!(p.scheme(), "http" | "https") && p.has_host());
                    if !ok {
                        return Err(bad(
                            "notify.webhook_url",
                            "is not an http:// or https:// URL (the value is not shown)".into(),
                        ));
                    }
                    c.webhook_url = Some(u);
                }
                c.webhook_secret = secret(
                    "notify.webhook_secret",
                    n.webhook_secret_env,
                    n.webhook_secret_file,
                )?;
                if c.webhook_secret.is_some() && c.webhook_url.is_none() {
                    return Err(bad(
                        "notify.webhook_secret_env",
                        "signs the webhook: give webhook_url too".into(),
                    ));
                }
                c.command = match n.command {
                    None => None,
                    Some(RawCommand::Program(p)) => Some(vec![p]),
                    Some(RawCommand::Argv(v)) => Some(v),
                };
                if let Some(argv) = &mut c.command {
                    match argv.first_mut() {
                        Some(p) if !p.trim().is_empty() => {
                            // A path is relative to the file; a bare name is looked up in PATH.
                            if p.contains('/') {
                                *p = rel(Path::new(p.as_str())).display().to_string();
                            }
                        }
                        _ => return Err(bad("notify.command", "names no program".into())),
                    }
                }
                if let Some(f) = n.failures_before_alert {
                    if f == 0 {
                        return Err(bad(
                            "notify.failures_before_alert",
                            "must be 1 or more".into(),
                        ));
                    }
                    c.failures_before_alert = f;
                }
                if let Some(t) = n.timeout {
                    c.timeout = humantime::parse_duration(&t)
                        .map_err(|e| bad("notify.timeout", format!("`{t}`: {e}")))?;
                    if c.timeout.is_zero() || c.timeout > Duration::from_secs(3600) {
                        return Err(bad(
                            "notify.timeout",
                            format!("`{t}`: must be more than zero and at most 1h"),
                        ));
                    }
                }
                if c.webhook_url.is_none() && c.command.is_none() {
                    return Err(bad(
                        "notify",
                        "give webhook_url or command (or both)".into(),
                    ));
                }
                Some(c)
            }
        };
        let mut ha = HaConfig::defaults_for(sync.lease);
        if let Some(h) = raw.ha {
            if let Some(b) = h.heartbeat {
                ha.heartbeat = humantime::parse_duration(&b)
                    .map_err(|e| bad("ha.heartbeat", format!("`{b}`: {e}")))?;
            }
            if let Some(f) = h.failover_after {
                ha.failover_after = humantime::parse_duration(&f)
                    .map_err(|e| bad("ha.failover_after", format!("`{f}`: {e}")))?;
            }
            if let Some(why) = ha.unsafe_with(sync.lease) {
                return Err(Error::Config(format!("{name}: {why}")));
            }
        }
        Ok(Config {
            path: path.map(Path::to_path_buf),
            store,
            source,
            target,
            sync,
            mapping,
            notify,
            ha,
        })
    }

    /// The compiled mapping (with a `[source]`).
    pub fn mapping(&self) -> Result<&Arc<Mapping>> {
        self.mapping
            .as_ref()
            .ok_or_else(|| Error::Config("no [source] section: no mapping".into()))
    }

    pub fn source(&self) -> Result<&SourceConfig> {
        self.source
            .as_ref()
            .ok_or_else(|| Error::Config("no [source] section in the configuration".into()))
    }

    pub fn target(&self) -> Result<&TargetConfig> {
        self.target
            .as_ref()
            .ok_or_else(|| Error::Config("no [target] section in the configuration".into()))
    }
}

fn parse_threshold(s: &str) -> Option<Threshold> {
    let s = s.trim();
    if let Some(p) = s.strip_suffix('%') {
        let v: f64 = p.trim().parse().ok()?;
        (0.0..=100.0).contains(&v).then_some(Threshold::Percent(v))
    } else {
        s.parse().ok().map(Threshold::Count)
    }
}

/// Whether `s` looks like an environment variable name: `[A-Za-z_][A-Za-z0-9_]*`, at most
/// 128 characters.
pub fn plausible_env_name(s: &str) -> bool {
    let mut b = s.bytes();
    matches!(b.next(), Some(c) if c.is_ascii_alphabetic() || c == b'_')
        && s.len() <= 128
        && b.all(|c| c.is_ascii_alphanumeric() || c == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    const FULL: &str = r#"
[store]
url = "sqlite://state/dirsync.db"
[source]
kind = "ad"
url = "ldap://127.0.0.2"
bind_dn = "Administrator@test.lan"
password_env = "DIRSYNC_TEST_PW"
base_dn = "DC=test,DC=lan"
include = ["OU=Staff,DC=test,DC=lan"]
[target]
kind = "scim"
url = "http://127.0.0.1:18080/v2/"
token_file = "token.txt"
[sync]
interval = "5m"
deletion_threshold = "10%"
cycle_timeout = "10m"
reconcile_target = "12h"
"#;

    #[test]
    fn parses_the_documented_shape() {
        let c = Config::parse(FULL, Path::new("/etc/dirsync"), None).unwrap();
        assert_eq!(c.store.url, "sqlite:///etc/dirsync/state/dirsync.db");
        let s = c.source().unwrap();
        assert_eq!(s.users, "(&(objectClass=user)(objectCategory=person))");
        assert_eq!(s.password, SecretRef::Env("DIRSYNC_TEST_PW".into()));
        let t = c.target().unwrap();
        assert_eq!(t.url, "http://127.0.0.1:18080/v2");
        assert_eq!(
            t.token,
            Some(SecretRef::File("/etc/dirsync/token.txt".into()))
        );
        assert_eq!(c.sync.interval, Duration::from_secs(300));
        assert_eq!(c.sync.lease, Duration::from_secs(30), "the default lease");
        assert_eq!(c.sync.deletion_threshold, Threshold::Percent(10.0));
        assert_eq!(c.sync.deletion_threshold.limit(1000), 100);
        assert_eq!(c.sync.cycle_timeout, Duration::from_secs(600));
        let d = Config::parse("", Path::new("."), None).unwrap();
        assert_eq!(d.sync.cycle_timeout, Duration::from_secs(30 * 60));
        assert_eq!(c.sync.reconcile_target, Duration::from_secs(12 * 3600));
        let d = Config::parse("", Path::new("."), None).unwrap();
        assert_eq!(d.sync.reconcile_target, Duration::from_secs(24 * 3600));
    }

    #[test]
    fn source_limits_have_defaults_and_are_checked() {
        let c = Config::parse(FULL, Path::new("/etc/dirsync"), None).unwrap();
        assert_eq!(c.source().unwrap().limits, SourceLimits::default());
        let with = |extra: &str| {
            let text = FULL.replace("[target]", &format!("{extra}\n[target]"));
            Config::parse(&text, Path::new("."), Some(Path::new("d.toml")))
        };
        let c = with(
            "max_message_bytes = 1048576\nmax_entries = 10\noperation_timeout = \"5s\"\n\
             import_timeout = \"1m\"",
        )
        .unwrap();
        assert_eq!(
            c.source().unwrap().limits,
            SourceLimits {
                max_message_bytes: 1 << 20,
                max_entries: 10,
                operation_timeout: Duration::from_secs(5),
                import_timeout: Duration::from_secs(60),
            }
        );
        for (bad, key) in [
            ("max_message_bytes = 10", "source.max_message_bytes"),
            ("max_entries = 0", "source.max_entries"),
            ("operation_timeout = \"0s\"", "source.operation_timeout"),
            ("import_timeout = \"soon\"", "source.import_timeout"),
        ] {
            let e = with(bad).unwrap_err();
            assert!(e.to_string().contains(key), "{e}");
            assert_eq!(e.exit(), crate::Exit::BadInput);
        }
    }

    #[test]
    fn unknown_key_is_named_with_its_line() {
        let text = "[store]\nurl = \"sqlite://x.db\"\n[sync]\nintervall = \"5m\"\n";
        let e = Config::parse(text, Path::new("."), Some(Path::new("d.toml"))).unwrap_err();
        let m = e.to_string();
        assert!(m.contains("d.toml:4") && m.contains("intervall"), "{m}");
        assert_eq!(e.exit(), crate::Exit::BadInput);
    }

    #[test]
    fn target_concurrency_is_bounded() {
        let t = |c: &str| {
            format!("[target]\nkind = \"scim\"\nurl = \"http://x/v2\"\ntoken_env = \"T\"\n{c}")
        };
        let c = Config::parse(&t("concurrency = 8"), Path::new("."), None).unwrap();
        assert_eq!(c.target().unwrap().concurrency, Some(8));
        let c = Config::parse(&t(""), Path::new("."), None).unwrap();
        assert_eq!(c.target().unwrap().concurrency, None);
        let e = Config::parse(&t("concurrency = 0"), Path::new("."), None).unwrap_err();
        assert!(e.to_string().contains("target.concurrency"), "{e}");
        assert_eq!(e.exit(), crate::Exit::BadInput);
    }

    #[test]
    fn ha_has_defaults_and_failover_after_must_exceed_lease_plus_heartbeat() {
        let d = Config::parse("", Path::new("."), None).unwrap();
        assert_eq!(
            d.ha,
            HaConfig {
                heartbeat: Duration::from_secs(10),
                failover_after: Duration::from_secs(60)
            }
        );
        // Without [ha], a long lease raises the default instead of refusing.
        let d = Config::parse("[sync]\nlease = \"2m\"", Path::new("."), None).unwrap();
        assert_eq!(d.ha.failover_after, Duration::from_secs(140));
        let c = Config::parse(
            "[sync]\nlease = \"3s\"\n[ha]\nheartbeat = \"1s\"\nfailover_after = \"5s\"",
            Path::new("."),
            None,
        )
        .unwrap();
        assert_eq!(
            c.ha,
            HaConfig {
                heartbeat: Duration::from_secs(1),
                failover_after: Duration::from_secs(5)
            }
        );
        let e = Config::parse("[ha]\nfailover_after = \"40s\"", Path::new("."), None).unwrap_err();
        assert_eq!(e.exit(), crate::Exit::BadInput);
    }

    #[test]
    fn bad_values_name_the_key() {
        for (text, key) in [
            (
                "[sync]\ndeletion_threshold = \"lots\"",
                "sync.deletion_threshold",
            ),
            ("[sync]\ninterval = \"soon\"", "sync.interval"),
            ("[sync]\nlease = \"1s\"", "sync.lease"),
            ("[sync]\nlease = \"1h\"", "sync.lease"),
            ("[sync]\ncycle_timeout = \"0s\"", "sync.cycle_timeout"),
            ("[sync]\ncycle_timeout = \"later\"", "sync.cycle_timeout"),
            ("[sync]\nreconcile_target = \"0s\"", "sync.reconcile_target"),
            ("[store]\nurl = \"mysql://x\"", "store.url"),
            ("[ha]\nheartbeat = \"often\"", "ha.heartbeat"),
            ("[ha]\nheartbeat = \"0s\"", "ha.heartbeat"),
            // The default lease is 30 s: 30 s + 10 s is not exceeded.
            ("[ha]\nfailover_after = \"40s\"", "ha.failover_after"),
            (
                "[sync]\nlease = \"3s\"\n[ha]\nheartbeat = \"1s\"\nfailover_after = \"4s\"",
                "ha.failover_after",
            ),
        ] {
            let m = Config::parse(text, Path::new("."), None)
                .unwrap_err()
                .to_string();
            assert!(m.contains(key), "{m}");
        }
    }

    #[test]
    fn on_delete_disabled_for_and_member_of_are_parsed_and_checked() {
        let d = Config::parse("", Path::new("."), None).unwrap();
        assert_eq!(d.sync.on_delete, OnDelete::Delete);
        let c = Config::parse(
            "[sync]\non_delete = \"disable\"\ndisabled_for = \"12h\"\n",
            Path::new("."),
            None,
        )
        .unwrap();
        assert_eq!(
            c.sync.on_delete,
            OnDelete::Disable {
                after: Duration::from_secs(12 * 3600)
            }
        );
        for (text, want) in [
            ("on_delete = \"disable\"", DISABLED_FOR),
            (
                "on_delete = \"disable\"\ndisabled_for = \"90s\"",
                Duration::from_secs(90),
            ),
            (
                "on_delete = \"disable\"\ndisabled_for = \"30d\"",
                Duration::from_secs(30 * 86_400),
            ),
        ] {
            let c = Config::parse(&format!("[sync]\n{text}"), Path::new("."), None).unwrap();
            assert_eq!(
                c.sync.on_delete,
                OnDelete::Disable { after: want },
                "{text}"
            );
        }
        let c = Config::parse(
            &FULL.replace(
                "[target]",
                "member_of = [\"CN=Sync,OU=Groups,DC=test,DC=lan\"]\n[target]",
            ),
            Path::new("."),
            None,
        )
        .unwrap();
        assert_eq!(
            c.source().unwrap().member_of,
            vec!["CN=Sync,OU=Groups,DC=test,DC=lan".to_string()]
        );
        for (text, key, shown) in [
            (
                "[sync]\non_delete = \"archive\"",
                "sync.on_delete",
                "archive",
            ),
            (
                "[sync]\non_delete = \"disable\"\ndisabled_for = \"a month\"",
                "sync.disabled_for",
                "a month",
            ),
            ("[sync]\ndisabled_for = \"0s\"", "sync.disabled_for", "zero"),
            (
                &FULL.replace("[target]", "member_of = [\"sync-users\"]\n[target]"),
                "source.member_of",
                "sync-users",
            ),
            (
                &FULL.replace("[target]", "users = \"(&(uid=a)\"\n[target]"),
                "source.users",
                "(&(uid=a)",
            ),
        ] {
            let e = Config::parse(text, Path::new("."), Some(Path::new("d.toml"))).unwrap_err();
            let m = e.to_string();
            assert!(
                m.contains(key) && m.contains(shown) && m.contains("d.toml"),
                "{m}"
            );
            assert_eq!(e.exit(), crate::Exit::BadInput);
        }
    }

    #[test]
    fn notify_is_parsed_and_checked() {
        let n = |body: &str| Config::parse(&format!("[notify]\n{body}"), Path::new("/etc/d"), None);
        let c = n(
            "webhook_url = \"https://h.example/x?token=abc\"\nwebhook_secret_env = \"S\"\n\
                   command = \"bin/alert\"\nfailures_before_alert = 2\ntimeout = \"5s\"",
        )
        .unwrap();
        assert_eq!(
            c.notify,
            Some(NotifyConfig {
                webhook_url: Some("https://h.example/x?token=abc".into()),
                webhook_secret: Some(SecretRef::Env("S".into())),
                command: Some(vec!["/etc/d/bin/alert".into()]),
                failures_before_alert: 2,
                timeout: Duration::from_secs(5),
            })
        );
        let c = n("command = [\"logger\", \"-t\", \"dirsync\"]").unwrap();
        assert_eq!(
            c.notify,
            Some(NotifyConfig {
                command: Some(vec!["logger".into(), "-t".into(), "dirsync".into()]),
                ..Default::default()
            })
        );
        assert_eq!(
            Config::parse("", Path::new("."), None).unwrap().notify,
            None
        );
        for (body, key) in [
            (
                "webhook_url = \"ftp://h/x?token=abc\"",
                "notify.webhook_url",
            ),
            ("webhook_url = \"no url\"", "notify.webhook_url"),
            (
                "webhook_secret_env = \"S\"\ncommand = \"x\"",
                "notify.webhook_secret_env",
            ),
            ("command = []", "notify.command"),
            (
                "command = \"x\"\nfailures_before_alert = 0",
                "notify.failures_before_alert",
            ),
            ("command = \"x\"\ntimeout = \"0s\"", "notify.timeout"),
            ("failures_before_alert = 2", "notify"),
            ("command = \"x\"\nwebhook = \"y\"", "webhook"),
        ] {
            let e = n(body).unwrap_err();
            let m = e.to_string();
            assert!(m.contains(key) && !m.contains("token=abc"), "{body}: {m}");
            assert_eq!(e.exit(), crate::Exit::BadInput);
        }
    }

    #[test]
    fn hold_defaults_to_deletions_and_names_its_line_when_wrong() {
        let c = Config::parse("", Path::new("."), None).unwrap();
        assert_eq!(c.sync.hold, Hold::Deletions);
        let c = Config::parse("[sync]\nhold = \"all\"\n", Path::new("."), None).unwrap();
        assert_eq!(c.sync.hold, Hold::All);
        let e = Config::parse(
            "[sync]\nhold = \"everything\"\n",
            Path::new("."),
            Some(Path::new("d.toml")),
        )
        .unwrap_err();
        let m = e.to_string();
        assert!(m.contains("d.toml:2") && m.contains("everything"), "{m}");
        assert_eq!(e.exit(), crate::Exit::BadInput);
    }

    #[test]
    fn secrets_are_redacted() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?} {s}"), "Secret(***) ***");
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("pw");
        std::fs::write(&f, "hunter2\n").unwrap();
        let r = SecretRef::File(f).resolve("k").unwrap();
        assert_eq!(r.expose(), "hunter2");
        assert!(!format!("{r:?}").contains("hunter2"));
    }
}
