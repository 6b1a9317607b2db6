//! `replay --to-target`: rebuild a fresh, empty target from the log. The target must be a
//! fresh one (no object carrying an anchor the source no longer has); then `TargetReset` is
//! recorded under the export's own fence (the same lock, relationship check and fenced
//! append as every claim: [`export_log`] with `reset`) and what the log holds is exported
//! through the normal plan, guard and claims.

use std::sync::Arc;

use indicatif::ProgressBar;

use super::export::{export_log, ExportOptions, SyncReport};
use crate::config::Threshold;
use crate::error::{Error, Result};
use crate::log::event::{Event, ObjectKind, TargetReset};
use crate::log::AnyStore;
use crate::plan::mapping::Mapping;
use crate::plan::plan::{plan, Plan};
use crate::project::replay;
use crate::project::{Meta, State};
use crate::target::{AnyTarget, RemoteObject, Target};

/// What a rebuild needs besides the store and the target.
#[derive(Clone, Debug)]
pub struct RebuildOptions {
    /// The instance exporting: the relationship's holder, or anyone while nobody holds it.
    pub instance: String,
    /// How source objects map (the configured mapping).
    pub mapping: Arc<Mapping>,
    pub threshold: Threshold,
}

impl RebuildOptions {
    fn reason(&self) -> String {
        format!(
            "replay --to-target by {}: rebuild an empty target from the log",
            self.instance
        )
    }
}

/// Target objects that stop `replay --to-target`: they carry an anchor that is not live in
/// the source projection. Rebuilding would take the others back (hard match) but leave
/// these in the target unowned, never to be deleted. Cloud-only objects (no anchor) are
/// never ours and do not count; objects of an interrupted rebuild carry live anchors.
pub fn foreign_objects<'a>(remote: &'a [RemoteObject], state: &State) -> Vec<&'a RemoteObject> {
    remote
        .iter()
        .filter(|r| {
            r.anchor
                .as_ref()
                .is_some_and(|a| !state.objects.objects.get(a).is_some_and(|o| o.live()))
        })
        .collect()
}

/// What a rebuild would export (`--dry-run`), pure: the plan on `state` as it would be
/// after the reset (the ledger owns nothing in the target).
pub fn rebuild_plan(state: &State, opts: &RebuildOptions, now_us: i64) -> Plan {
    let mut s = state.clone();
    s.apply(
        &Meta {
            seq: s.seq + 1,
            instance: &opts.instance,
            recorded_at_us: now_us,
        },
        Event::TargetReset(TargetReset {
            reason: opts.reason(),
        }),
    );
    plan(&s, &opts.mapping, None)
}

/// Rebuild the target from the log. Refused (nothing written) when the target holds
/// objects the source no longer has; fenced (nothing written) when another instance holds
/// the relationship.
pub async fn rebuild(
    store: &AnyStore,
    target: &AnyTarget,
    opts: &RebuildOptions,
    progress: &ProgressBar,
) -> Result<SyncReport> {
    target.probe().await?;
    let mut remote = target.list(ObjectKind::User).await?;
    remote.extend(target.list(ObjectKind::Group).await?);
    let state = replay::current(store).await?;
    let foreign = foreign_objects(&remote, &state);
    if !foreign.is_empty() {
        let names: Vec<&str> = foreign.iter().take(5).map(|r| r.name.as_str()).collect();
        return Err(Error::Refused(format!(
            "the target is not a fresh one: {} object(s) carry anchors the source no longer has ({}{}); a rebuild would leave them there unowned. `dirsync sync` keeps an existing target in step",
            foreign.len(),
            names.join(", "),
            if foreign.len() > 5 { ", ..." } else { "" }
        )));
    }
    let export = ExportOptions {
        instance: opts.instance.clone(),
        mapping: opts.mapping.clone(),
        threshold: opts.threshold,
        // The ledger is reset first: a rebuild has no deletion to hold.
        hold: Default::default(),
        take_over: false,
        reset: Some(opts.reason()),
    };
    export_log(store, target, &export, progress).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::testkit::Log;
    use crate::log::event::{DeletionEvidence, ExportOp};

    #[test]
    fn only_anchors_gone_from_the_source_stop_a_rebuild() {
        let mut l = Log::new();
        l.import("a1", "uid=u1,dc=t", "u1");
        l.import("a2", "uid=u2,dc=t", "u2");
        l.delete(
            "a2",
            DeletionEvidence::AbsentFromFullImport { run_id: "r".into() },
        );
        let r = |anchor: Option<&str>| crate::target::RemoteObject {
            kind: crate::log::event::ObjectKind::User,
            id: format!("id-{anchor:?}"),
            anchor: anchor.map(String::from),
            name: "n".into(),
            emails: vec![],
            etag: None,
            created: None,
            state: None,
        };
        let remote = [r(None), r(Some("a1")), r(Some("a2")), r(Some("zz"))];
        let f: Vec<_> = foreign_objects(&remote, &l.state)
            .into_iter()
            .map(|o| o.anchor.clone().unwrap())
            .collect();
        assert_eq!(f, ["a2", "zz"]);
    }

    #[test]
    fn the_dry_run_plans_every_live_object_as_new() {
        let mut l = Log::new();
        l.import("a1", "uid=u1,dc=t", "u1");
        l.import("a2", "uid=u2,dc=t", "u2");
        l.export("a1", ExportOp::Create, "u1");
        l.export("a2", ExportOp::Create, "u2");
        let opts = RebuildOptions {
            instance: "a".into(),
            mapping: Arc::new(crate::plan::mapping::Mapping::default_for(
                crate::config::SourceKind::Openldap,
                crate::config::TargetKind::Scim,
            )),
            threshold: Threshold::Count(500),
        };
        assert!(plan(&l.state, &opts.mapping, None).new.is_empty());
        let p = rebuild_plan(&l.state, &opts, 0);
        let new: Vec<&str> = p.new.iter().map(|(a, _)| a.as_str()).collect();
        assert_eq!(new, ["a1", "a2"]);
        assert!(p.deletes.is_empty() && p.updates.is_empty());
    }
}
