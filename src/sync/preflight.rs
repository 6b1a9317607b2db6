//! `dirsync preflight`: can this computer sync? The store opens at this dirsync's schema;
//! the source answers and the bind identity works; the target answers and the credentials
//! work; the tombstone lifetime is known (AD); and no two source objects would map to the
//! same userName or mail (the target would refuse one, or matching would guess). Nothing is
//! recorded: the source is read in a dry-run full import.
//!
//! Issue 17 (the account that reads nothing passed with "0 objects in scope"): the source
//! read fails when the bind account reads no object in scope while the ledger owns
//! objects; the delta control the kind needs must be in the rootDSE's `supportedControl`;
//! and every user must have the attribute its userName comes from (else it fails), while a
//! mapped attribute that no user in scope has is a warning (the directory may not use it,
//! or the account cannot read it: only the operator can tell). A warning passes: exit 0.

use std::collections::{BTreeMap, HashSet};

use indicatif::ProgressBar;
use serde::Serialize;

use super::export::with_planned;
use super::run::{import_run, probe_source, ImportOptions};
use crate::config::{Config, SourceConfig, SourceKind};
use crate::log::event::{Attrs, ObjectKind};
use crate::log::{AnyStore, OpenMode};
use crate::plan::mapping::{Desired, Mapping, Origin, Rule, Slot};
use crate::project::replay;
use crate::source::ldap::{ConnectOptions, LdapClient};
use crate::target::scim::ExtraPath;
use crate::target::{AnyTarget, Target};

#[derive(Clone, Debug, Serialize)]
pub struct Check {
    pub check: &'static str,
    pub ok: bool,
    /// Passed, but with something the operator should look at.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub warning: bool,
    pub detail: String,
}

impl Check {
    /// "ok", "warn" or "FAIL".
    pub fn result(&self) -> &'static str {
        match (self.ok, self.warning) {
            (false, _) => "FAIL",
            (true, true) => "warn",
            (true, false) => "ok",
        }
    }
}

fn check(check: &'static str, r: std::result::Result<String, String>) -> Check {
    match r {
        Ok(detail) => Check {
            check,
            ok: true,
            warning: false,
            detail,
        },
        Err(detail) => Check {
            check,
            ok: false,
            warning: false,
            detail,
        },
    }
}

fn warn(check: &'static str, detail: String) -> Check {
    Check {
        check,
        ok: true,
        warning: true,
        detail,
    }
}

/// The control a kind's deltas need (OID, name) and what to do when the server lacks it;
/// None for `kind = "ldap"` (full imports only).
fn sync_control_of(kind: SourceKind) -> Option<(&'static str, &'static str, &'static str)> {
    match kind {
        SourceKind::Ad => Some((
            "1.2.840.113556.1.4.841",
            "DirSync",
            "is it an Active Directory domain controller? For another LDAP server set kind = \"openldap\" or \"ldap\"",
        )),
        SourceKind::Openldap => Some((
            "1.3.6.1.4.1.4203.1.9.1.1",
            "RFC 4533 content synchronisation",
            "enable the syncprov overlay (OpenLDAP) or the Content Sync plugin (389 DS: `dsconf NAME plugin contentsync enable`), or set kind = \"ldap\" (full imports only)",
        )),
        SourceKind::Ldap => None,
    }
}

/// Whether `supported` (the rootDSE's `supportedControl`) has the control `kind` needs.
fn control_verdict(
    kind: SourceKind,
    url: &str,
    supported: &[String],
) -> Option<std::result::Result<String, String>> {
    let (oid, name, hint) = sync_control_of(kind)?;
    Some(if supported.iter().any(|s| s.trim() == oid) {
        Ok(format!("{name} ({oid}) is offered"))
    } else {
        Err(format!(
            "{url} does not offer {name}: {oid} is not in the rootDSE's supportedControl, so no delta can be read; {hint}"
        ))
    })
}

/// The delta control of the configured kind is in the rootDSE's `supportedControl`.
async fn sync_control(src: &SourceConfig) -> Option<Check> {
    sync_control_of(src.kind)?;
    let root = async {
        let mut c = LdapClient::connect(src, &ConnectOptions::default()).await?;
        let root = c.root_dse(&["supportedControl"]).await;
        c.close().await;
        root
    }
    .await;
    let verdict = match root {
        Err(e) => Err(format!("cannot read the rootDSE's supportedControl: {e}")),
        Ok(root) => {
            let supported: Vec<String> = root
                .values("supportedControl")
                .unwrap_or(&[])
                .iter()
                .map(|v| String::from_utf8_lossy(v).into_owned())
                .collect();
            control_verdict(src.kind, &src.url, &supported)?
        }
    };
    Some(check("sync control", verdict))
}

/// The source read: an account that reads nothing in scope fails while we own objects
/// (a sync would take every one of them for deleted), and is a warning otherwise.
fn read_check(src: &SourceConfig, seen: u64, owned: usize) -> Check {
    match (seen, owned) {
        (0, 0) => warn(
            "source read",
            format!(
                "0 objects in scope: nothing to sync; check base_dn, include and the filters, and that {} may read the entries",
                src.bind_dn
            ),
        ),
        (0, owned) => check(
            "source read",
            Err(format!(
                "{} reads no object in scope under {} while the ledger owns {owned}: the account lacks read access (or base_dn, include or the filters are wrong)",
                src.bind_dn, src.base_dn
            )),
        ),
        (seen, _) => check("source read", Ok(format!("{seen} objects in scope"))),
    }
}

/// Users that lack every source attribute of a mapped attribute (pure). The first,
/// userName, is required: any user without one fails. Another that no user has is a
/// warning (`active` aside: its sources are usually absent).
fn attribute_checks(mapping: &Mapping, users: &[&Attrs]) -> [Check; 2] {
    let has = |a: &Attrs, sources: &[&str]| {
        sources
            .iter()
            .any(|s| a.get(s).is_some_and(|v| !v.is_empty()))
    };
    fn sources(r: &Rule) -> Vec<&str> {
        r.reads.iter().map(String::as_str).collect()
    }
    let (user_name, rest) = match mapping.user.split_first() {
        Some((first, rest)) => ((first.key.as_str(), sources(first)), rest),
        None => (("userName", Vec::new()), &[][..]),
    };
    let rest: Vec<(&str, Vec<&str>)> = rest
        .iter()
        .filter(|r| r.slot != Slot::Active && !r.reads.is_empty())
        .map(|r| (r.key.as_str(), sources(r)))
        .collect();
    let missing = users
        .iter()
        .filter(|a| !user_name.1.is_empty() && !has(a, &user_name.1))
        .count();
    let name_check = check(
        "userName",
        if missing == 0 {
            Ok("every user has one".into())
        } else {
            Err(format!(
                "{missing} user(s) have no {}: they would not be exported (if the directory sets it, the bind account cannot read it)",
                user_name.1.join(" or ")
            ))
        },
    );
    let absent: Vec<String> = rest
        .iter()
        .filter(|(_, sources)| !users.iter().any(|a| has(a, sources)))
        .map(|(target, sources)| format!("{target} ({})", sources.join(" or ")))
        .collect();
    let attrs_check = if users.is_empty() {
        check("attributes", Ok("no user in scope".into()))
    } else if absent.is_empty() {
        check(
            "attributes",
            Ok(format!(
                "every attribute the mapping reads is set on some of the {} users",
                users.len()
            )),
        )
    } else {
        warn(
            "attributes",
            format!(
                "none of the {} users in scope has {}: if the directory sets them, the bind account cannot read them and they would be exported empty",
                users.len(),
                absent.join(", ")
            ),
        )
    };
    [name_check, attrs_check]
}

/// Run every check; a failing one does not stop the others (the store aside: without it,
/// nothing else can be read).
pub async fn preflight(cfg: &Config, instance: &str, progress: &ProgressBar) -> Vec<Check> {
    let mut out = Vec::new();
    let store = match AnyStore::open(&cfg.store.url, OpenMode::Existing).await {
        Ok(s) => {
            out.push(check("store", Ok(crate::log::Store::describe(&s))));
            s
        }
        Err(e) => {
            out.push(check("store", Err(e.to_string())));
            return out;
        }
    };
    match cfg.source() {
        Err(e) => out.push(check("source", Err(e.to_string()))),
        Ok(src) => {
            let bound = probe_source(src).await;
            out.push(check(
                "source bind",
                bound
                    .as_ref()
                    .map(|()| format!("{} as {}", src.url, src.bind_dn))
                    .map_err(|e| e.to_string()),
            ));
            if let (Ok(()), Some(mapping)) = (bound, &cfg.mapping) {
                out.extend(sync_control(src).await);
                out.extend(source_checks(&store, src, mapping, instance, progress).await);
            }
        }
    }
    match &cfg.target {
        None => out.push(check("target", Err("no [target] section".into()))),
        Some(t) => {
            let r = match AnyTarget::from_config(t) {
                Ok(target) => target
                    .probe()
                    .await
                    .map(|()| t.url.clone())
                    .map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            let reached = r.is_ok();
            out.push(check("target", r));
            if reached {
                if let Ok(target) = AnyTarget::from_config(t) {
                    if let (AnyTarget::Scim(scim), Some(mapping)) = (&target, &cfg.mapping) {
                        out.extend(target_schema(scim, mapping).await);
                    }
                    out.push(target_holds_the_ledger(&store, &target).await);
                }
            }
        }
    }
    out
}

/// The `[mapping.user]` keys of an extension schema (`URN:attribute`), as (key, URN,
/// attribute).
fn extension_keys(mapping: &Mapping) -> Vec<(&str, &str, &str)> {
    mapping
        .user
        .iter()
        .filter(|r| matches!(r.origin, Origin::Config { .. }))
        .filter_map(|r| match crate::target::scim::extra_path(&r.key) {
            Ok(ExtraPath::Extension { schema, attr } | ExtraPath::Reference { schema, attr }) => {
                Some((r.key.as_str(), schema, attr))
            }
            _ => None,
        })
        .collect()
}

/// The `target schema` row (SCIM, when the mapping has extension keys): each key's schema
/// URN is one the target publishes in `/Schemas` and extends its User resource type with
/// (`/ResourceTypes`), and the schema has the attribute.
async fn target_schema(t: &crate::target::scim::ScimTarget, mapping: &Mapping) -> Option<Check> {
    if extension_keys(mapping).is_empty() {
        return None;
    }
    Some(match schema_answers(t).await {
        Ok((schemas, types)) => schema_verdict(mapping, schemas.as_ref(), types.as_ref()),
        Err(e) => check("target schema", Err(e.to_string())),
    })
}

/// The target's `/Schemas` and `/ResourceTypes` answers (None: not published).
async fn schema_answers(
    t: &crate::target::scim::ScimTarget,
) -> std::result::Result<
    (Option<serde_json::Value>, Option<serde_json::Value>),
    crate::target::TargetError,
> {
    Ok((
        t.discovery("Schemas").await?,
        t.discovery("ResourceTypes").await?,
    ))
}

/// Before a process's first export to a SCIM target (`sync`, `run`): the `target schema`
/// check of `preflight`, a failure of it a configuration error (exit 2, nothing exported).
/// A target that publishes no `/Schemas` cannot be checked: that passes, as in preflight.
/// Once per process for each target URL and mapping; a target that cannot be read is a
/// target failure (tried again by the next cycle).
pub(crate) async fn require_target_schema(
    t: &crate::target::scim::ScimTarget,
    url: &str,
    mapping: &Mapping,
) -> crate::error::Result<()> {
    use std::sync::{Mutex, OnceLock, PoisonError};
    static PASSED: OnceLock<Mutex<HashSet<String>>> = OnceLock::new();
    if extension_keys(mapping).is_empty() {
        return Ok(());
    }
    let passed = PASSED.get_or_init(Default::default);
    let key = format!("{url}\0{}", mapping.fingerprint());
    if passed
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .contains(&key)
    {
        return Ok(());
    }
    let (schemas, types) = schema_answers(t).await?;
    let c = schema_verdict(mapping, schemas.as_ref(), types.as_ref());
    if !c.ok {
        return Err(crate::error::Error::Config(format!(
            "the target cannot hold what the mapping writes: {}; nothing exported",
            c.detail
        )));
    }
    if c.warning {
        tracing::warn!("target schema: {}", c.detail);
    }
    passed
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .insert(key);
    Ok(())
}

/// A key of a JSON object, its name compared case-insensitively (RFC 7643 §2.1).
fn field<'v>(v: &'v serde_json::Value, name: &str) -> Option<&'v serde_json::Value> {
    v.as_object()?
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, x)| x)
}

/// The resources of a discovery answer: a ListResponse's `Resources`, or a bare list.
fn resources(v: &serde_json::Value) -> &[serde_json::Value] {
    match v {
        serde_json::Value::Array(a) => a,
        v => field(v, "Resources")
            .and_then(serde_json::Value::as_array)
            .map_or(&[], Vec::as_slice),
    }
}

fn text<'v>(v: &'v serde_json::Value, name: &str) -> &'v str {
    field(v, name)
        .and_then(serde_json::Value::as_str)
        .unwrap_or_default()
}

/// [`target_schema`]'s verdict on the target's `/Schemas` and `/ResourceTypes` answers
/// (None: not published) (pure).
fn schema_verdict(
    mapping: &Mapping,
    schemas: Option<&serde_json::Value>,
    types: Option<&serde_json::Value>,
) -> Check {
    let keys = extension_keys(mapping);
    let Some(schemas) = schemas else {
        return warn(
            "target schema",
            format!(
                "the target does not publish /Schemas: cannot check {}",
                keys.iter()
                    .map(|(k, _, _)| format!("mapping.user.\"{k}\""))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        );
    };
    let published = resources(schemas);
    // The User resource type's extensions, when /ResourceTypes is published.
    let extensions: Option<Vec<&str>> = types.map(|t| {
        resources(t)
            .iter()
            .filter(|r| {
                text(r, "name").eq_ignore_ascii_case("User")
                    || text(r, "endpoint").eq_ignore_ascii_case("/Users")
            })
            .flat_map(|r| {
                field(r, "schemaExtensions")
                    .and_then(serde_json::Value::as_array)
                    .map_or(&[][..], Vec::as_slice)
            })
            .map(|e| text(e, "schema"))
            .collect()
    });
    let mut bad = Vec::new();
    for (key, urn, attr) in &keys {
        let schema = published
            .iter()
            .find(|s| text(s, "id").eq_ignore_ascii_case(urn));
        let Some(schema) = schema else {
            let ids: Vec<&str> = published.iter().map(|s| text(s, "id")).collect();
            bad.push(format!(
                "mapping.user.\"{key}\": the target publishes no schema {urn} (its /Schemas: {})",
                ids.join(", ")
            ));
            continue;
        };
        if let Some(ext) = &extensions {
            if !ext.iter().any(|e| e.eq_ignore_ascii_case(urn)) {
                bad.push(format!(
                    "mapping.user.\"{key}\": {urn} is not an extension of the target's User resource type (its schemaExtensions: {})",
                    if ext.is_empty() { "none".to_string() } else { ext.join(", ") }
                ));
                continue;
            }
        }
        let names: Vec<&str> = field(schema, "attributes")
            .and_then(serde_json::Value::as_array)
            .map_or(&[][..], Vec::as_slice)
            .iter()
            .map(|a| text(a, "name"))
            .collect();
        if !names.iter().any(|n| n.eq_ignore_ascii_case(attr)) {
            bad.push(format!(
                "mapping.user.\"{key}\": the target's schema {urn} has no attribute `{attr}` (it has {})",
                names.join(", ")
            ));
        }
    }
    check(
        "target schema",
        if bad.is_empty() {
            Ok(format!(
                "the target publishes every extension attribute the mapping sets ({})",
                keys.len()
            ))
        } else {
            Err(bad.join("; "))
        },
    )
}

/// The `target content` row: whether the target still holds every object the ledger
/// owns (one listing of users and groups). A target restored empty, or objects deleted
/// out of band, would otherwise pass every check while a plain sync believes the ledger.
async fn target_holds_the_ledger(store: &AnyStore, target: &AnyTarget) -> Check {
    let state = match replay::current(store).await {
        Ok(s) => s,
        Err(e) => return check("target content", Err(e.to_string())),
    };
    let mut listed = HashSet::new();
    for kind in [ObjectKind::User, ObjectKind::Group] {
        match target.list(kind).await {
            Ok(objects) => listed.extend(objects.into_iter().map(|o| o.id)),
            Err(e) => {
                return check(
                    "target content",
                    Err(format!("listing {}s: {e}", kind.as_str())),
                )
            }
        }
    }
    let owned: Vec<&str> = state
        .ledger
        .owned()
        .map(|(_, l)| l.target_id.as_str())
        .collect();
    check("target content", missing_from_target(&owned, &listed))
}

/// The verdict on the owned target ids against those the target listed (pure).
fn missing_from_target(
    owned: &[&str],
    listed: &HashSet<String>,
) -> std::result::Result<String, String> {
    let missing = owned.iter().filter(|id| !listed.contains(**id)).count();
    if missing == 0 {
        Ok(format!(
            "the target holds all {} objects the ledger owns",
            owned.len()
        ))
    } else {
        Err(format!(
            "{missing} of the {} objects the ledger owns are missing from the target (deleted out of band, or the target was restored): `dirsync sync --full` creates them again",
            owned.len()
        ))
    }
}

async fn source_checks(
    store: &AnyStore,
    src: &SourceConfig,
    mapping: &Mapping,
    instance: &str,
    progress: &ProgressBar,
) -> Vec<Check> {
    let mut out = Vec::new();
    let scope = src.scope();
    let opts = ImportOptions {
        instance: instance.to_string(),
        full: true,
        dry_run: true,
        pending_start: None,
    };
    let state = match replay::current(store).await {
        Ok(s) => s,
        Err(e) => return vec![check("source read", Err(e.to_string()))],
    };
    let imported = match import_run(store, src, &scope, &opts, "preflight", None, progress).await {
        Ok(r) => r,
        Err(e) => return vec![check("source read", Err(e.to_string()))],
    };
    out.push(read_check(src, imported.seen, state.ledger.owned().count()));
    let state = with_planned(&state, &imported, instance);
    if src.kind == SourceKind::Ad {
        out.push(check(
            "tombstone lifetime",
            state
                .control
                .tombstone_lifetime_days
                .map(|d| format!("{d} days: a cursor older than that falls back to a full import"))
                .ok_or_else(|| "unknown".to_string()),
        ));
    }
    // userName and mail must each name one source user.
    let mut seen: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut users = Vec::new();
    for (anchor, rec) in state.objects.live() {
        if rec.kind != ObjectKind::User {
            continue;
        }
        users.push(&rec.attrs);
        // An unmappable user is counted by the userName check below.
        if let Ok(Desired::User(u)) = mapping.map(anchor, rec) {
            let mut keys = vec![u.user_name.as_str().to_lowercase()];
            if let Some(m) = &u.email {
                keys.push(m.as_str().to_lowercase());
            }
            keys.sort();
            keys.dedup();
            for k in keys {
                seen.entry(k)
                    .or_default()
                    .push(format!("{anchor} ({})", rec.dn));
            }
        }
    }
    let dups: Vec<String> = seen
        .iter()
        .filter(|(_, v)| v.len() > 1)
        .map(|(k, v)| format!("`{k}`: {}", v.join(", ")))
        .collect();
    out.push(check(
        "duplicates",
        if dups.is_empty() {
            Ok("no userName or mail is used twice".into())
        } else {
            Err(format!(
                "{} value(s) used twice: {}",
                dups.len(),
                dups.join("; ")
            ))
        },
    ));
    out.extend(attribute_checks(mapping, &users));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{SecretRef, Tls};
    use crate::log::event::AttrValue;

    fn src(kind: SourceKind) -> SourceConfig {
        SourceConfig {
            kind,
            url: "ldap://h".into(),
            tls: Tls::None,
            ca_file: None,
            bind_dn: "cn=reader".into(),
            password: SecretRef::Env("X".into()),
            base_dn: "dc=x".into(),
            users: String::new(),
            groups: String::new(),
            include: Vec::new(),
            exclude: Vec::new(),
            anchor: None,
            limits: Default::default(),
            mapped: Vec::new(),
            mapping_fingerprint: String::new(),
            member_of: Vec::new(),
        }
    }

    fn attrs(pairs: &[(&str, &str)]) -> Attrs {
        pairs
            .iter()
            .map(|(k, v)| (*k, vec![AttrValue::Text((*v).into())]))
            .collect()
    }

    #[test]
    fn extension_keys_must_be_published_by_the_target() {
        use crate::plan::mapping::RawRule;
        const ACME: &str = "urn:example:acme:2.0:User";
        const ENT: &str = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User";
        let mapping = |keys: &[&str]| {
            let rows: Vec<RawRule> = keys
                .iter()
                .enumerate()
                .map(|(i, k)| RawRule {
                    key: k.to_string(),
                    expr: "'x'".into(),
                    line: 10 + i,
                })
                .collect();
            Mapping::compile(
                SourceKind::Openldap,
                crate::config::TargetKind::Scim,
                &rows,
                &[],
            )
            .unwrap()
        };
        let schemas = serde_json::json!({"Resources": [
            {"id": "urn:ietf:params:scim:schemas:core:2.0:User", "attributes": [{"name": "userName"}]},
            {"id": ENT, "attributes": [{"name": "employeeNumber"}, {"name": "manager"}]},
            {"id": ACME, "attributes": [{"name": "badgeNumber"}]},
        ]});
        // Attribute names in any case (RFC 7643 §2.1), as a server may spell its keys.
        let types = serde_json::json!({"Resources": [
            {"Name": "User", "Endpoint": "/Users", "SchemaExtensions": [{"Schema": ENT}, {"Schema": ACME}]},
            {"name": "Group", "endpoint": "/Groups"},
        ]});
        let verdict = |keys: &[&str], types: Option<&serde_json::Value>| {
            let c = schema_verdict(&mapping(keys), Some(&schemas), types);
            (c.result(), c.detail)
        };
        let good = [
            format!("{ENT}:employeeNumber"),
            format!("{ENT}:manager"),
            format!("{ACME}:BADGENUMBER"),
        ];
        let good: Vec<&str> = good.iter().map(String::as_str).collect();
        assert_eq!(
            verdict(&good, Some(&types)),
            (
                "ok",
                "the target publishes every extension attribute the mapping sets (3)".into()
            )
        );
        // Neither nickName (core) nor the default department is this check's business.
        assert!(extension_keys(&mapping(&["nickName"])).is_empty());
        assert_eq!(
            verdict(&["urn:example:other:1.0:User:x"], Some(&types)),
            ("FAIL", "mapping.user.\"urn:example:other:1.0:User:x\": the target publishes no schema urn:example:other:1.0:User (its /Schemas: urn:ietf:params:scim:schemas:core:2.0:User, urn:ietf:params:scim:schemas:extension:enterprise:2.0:User, urn:example:acme:2.0:User)".into())
        );
        assert_eq!(
            verdict(&[&format!("{ACME}:shoeSize")], Some(&types)),
            ("FAIL", format!("mapping.user.\"{ACME}:shoeSize\": the target's schema {ACME} has no attribute `shoeSize` (it has badgeNumber)"))
        );
        let types_without_acme = serde_json::json!([
            {"name": "User", "endpoint": "/Users", "schemaExtensions": [{"schema": ENT}]},
        ]);
        assert_eq!(
            verdict(&[&format!("{ACME}:badgeNumber")], Some(&types_without_acme)),
            ("FAIL", format!("mapping.user.\"{ACME}:badgeNumber\": {ACME} is not an extension of the target's User resource type (its schemaExtensions: {ENT})"))
        );
        // Without /ResourceTypes the schema alone decides.
        assert_eq!(verdict(&[&format!("{ACME}:badgeNumber")], None).0, "ok");
        let c = schema_verdict(&mapping(&[&format!("{ACME}:badgeNumber")]), None, None);
        assert_eq!(
            (c.result(), c.detail.as_str()),
            ("warn", "the target does not publish /Schemas: cannot check mapping.user.\"urn:example:acme:2.0:User:badgeNumber\"")
        );
    }

    #[test]
    fn the_target_must_hold_every_owned_object() {
        let listed: HashSet<String> = ["a", "b"].map(String::from).into();
        assert_eq!(
            missing_from_target(&["a", "b"], &listed),
            Ok("the target holds all 2 objects the ledger owns".into())
        );
        let e = missing_from_target(&["a", "b", "c", "d"], &listed).unwrap_err();
        assert!(
            e.starts_with("2 of the 4 objects the ledger owns are missing"),
            "{e}"
        );
        assert!(missing_from_target(&[], &HashSet::new()).is_ok());
    }

    #[test]
    fn the_kind_needs_its_control_in_the_root_dse() {
        let rfc4533 = vec![
            "1.2.840.113556.1.4.319".to_string(),
            "1.3.6.1.4.1.4203.1.9.1.1".into(),
        ];
        let ok = control_verdict(SourceKind::Openldap, "ldap://h", &rfc4533).unwrap();
        assert_eq!(
            ok,
            Ok("RFC 4533 content synchronisation (1.3.6.1.4.1.4203.1.9.1.1) is offered".into())
        );
        let e = control_verdict(SourceKind::Ad, "ldap://h", &rfc4533)
            .unwrap()
            .unwrap_err();
        assert!(
            e.starts_with("ldap://h does not offer DirSync: 1.2.840.113556.1.4.841 is not in"),
            "{e}"
        );
        let e = control_verdict(SourceKind::Openldap, "ldap://h", &[])
            .unwrap()
            .unwrap_err();
        assert!(
            e.contains("syncprov") && e.contains("kind = \"ldap\""),
            "{e}"
        );
        assert_eq!(control_verdict(SourceKind::Ldap, "ldap://h", &[]), None);
    }

    #[test]
    fn reading_nothing_fails_only_while_the_ledger_owns_objects() {
        let s = src(SourceKind::Openldap);
        let c = read_check(&s, 0, 7);
        assert_eq!((c.ok, c.warning), (false, false));
        assert_eq!(c.detail, "cn=reader reads no object in scope under dc=x while the ledger owns 7: the account lacks read access (or base_dn, include or the filters are wrong)");
        let c = read_check(&s, 0, 0);
        assert_eq!((c.ok, c.warning, c.result()), (true, true, "warn"));
        let c = read_check(&s, 3, 7);
        assert_eq!(
            (c.ok, c.warning, c.detail.as_str()),
            (true, false, "3 objects in scope")
        );
    }

    #[test]
    fn a_missing_user_name_fails_an_attribute_no_one_has_warns() {
        let full = attrs(&[
            ("uid", "a"),
            ("cn", "A"),
            ("givenname", "G"),
            ("sn", "S"),
            ("mail", "a@x"),
            ("title", "T"),
            ("ou", "D"),
        ]);
        let bare = attrs(&[("uid", "b"), ("cn", "B")]);
        let ldap = Mapping::default_for(SourceKind::Openldap, crate::config::TargetKind::Scim);
        let [name, rest] = attribute_checks(&ldap, &[&full, &bare]);
        assert_eq!((name.ok, rest.ok, rest.warning), (true, true, false));
        let nameless = attrs(&[("cn", "C"), ("sn", "S")]);
        let [name, rest] = attribute_checks(&ldap, &[&nameless, &bare]);
        assert!(!name.ok);
        assert_eq!(name.detail, "1 user(s) have no mail or uid: they would not be exported (if the directory sets it, the bind account cannot read it)");
        assert_eq!((rest.ok, rest.warning), (true, true));
        assert_eq!(rest.detail, "none of the 2 users in scope has name.givenName (givenname), emails[type eq \"work\"].value (mail), title (title), urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:department (departmentnumber or ou): if the directory sets them, the bind account cannot read them and they would be exported empty");
        let ad = Mapping::default_for(SourceKind::Ad, crate::config::TargetKind::Scim);
        let [name, rest] = attribute_checks(&ad, &[]);
        assert_eq!((name.result(), rest.result()), ("ok", "ok"));
    }
}
