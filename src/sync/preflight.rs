//! `dirsync preflight`: can this computer sync? The store opens at this dirsync's schema;
//! the source answers and the bind identity works; the target answers and the credentials
//! work; the tombstone lifetime is known (AD); and no two source objects would map to the
//! same userName or mail (the target would refuse one, or matching would guess). Nothing is
//! recorded: the source is read in a dry-run full import.

use std::collections::BTreeMap;

use indicatif::ProgressBar;
use serde::Serialize;

use super::export::with_planned;
use super::run::{import_run, probe_source, ImportOptions};
use super::scope::Scope;
use crate::config::{Config, SourceKind};
use crate::log::event::ObjectKind;
use crate::log::{AnyStore, OpenMode};
use crate::project::replay;
use crate::source::mapping::{map_object, Desired};
use crate::target::{AnyTarget, Target};

#[derive(Clone, Debug, Serialize)]
pub struct Check {
    pub check: &'static str,
    pub ok: bool,
    pub detail: String,
}

fn check(check: &'static str, r: std::result::Result<String, String>) -> Check {
    match r {
        Ok(detail) => Check {
            check,
            ok: true,
            detail,
        },
        Err(detail) => Check {
            check,
            ok: false,
            detail,
        },
    }
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
            if bound.is_ok() {
                out.extend(source_checks(&store, src, instance, progress).await);
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
            out.push(check("target", r));
        }
    }
    out
}

async fn source_checks(
    store: &AnyStore,
    src: &crate::config::SourceConfig,
    instance: &str,
    progress: &ProgressBar,
) -> Vec<Check> {
    let mut out = Vec::new();
    let scope = Scope::new(&src.base_dn, &src.include, &src.exclude);
    let opts = ImportOptions {
        instance: instance.to_string(),
        full: true,
        dry_run: true,
    };
    let state = match replay::refresh(store, 10_000).await {
        Ok(s) => s,
        Err(e) => return vec![check("source read", Err(e.to_string()))],
    };
    let imported = match import_run(store, src, &scope, &opts, "preflight", progress).await {
        Ok(r) => r,
        Err(e) => return vec![check("source read", Err(e.to_string()))],
    };
    out.push(check(
        "source read",
        Ok(format!("{} objects in scope", imported.seen)),
    ));
    let state = with_planned(&state, &imported, instance);
    if src.kind == SourceKind::Ad {
        out.push(check(
            "tombstone lifetime",
            state
                .objects
                .tombstone_lifetime_days
                .map(|d| format!("{d} days: a cursor older than that falls back to a full import"))
                .ok_or_else(|| "unknown".to_string()),
        ));
    }
    // userName and mail must each name one source user.
    let mut seen: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut unmappable = 0;
    for (anchor, rec) in state.objects.live() {
        if rec.kind != ObjectKind::User {
            continue;
        }
        match map_object(src.kind, rec) {
            Ok(Desired::User(u)) => {
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
            _ => unmappable += 1,
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
    out.push(check(
        "userName",
        if unmappable == 0 {
            Ok("every user has one".into())
        } else {
            Err(format!(
                "{unmappable} user(s) have no userName: they would not be exported"
            ))
        },
    ));
    out
}
