//! Instance lifecycle (`dirsync instance`): what stop, start and retire record, decided on
//! the projections (pure), and recorded on the instance's stream; the instances listed.

use serde::Serialize;

use crate::error::{Error, Result};
use crate::log::event::{stream, InstanceLifecycle};
use crate::log::store::{Batch, Expected};
use crate::log::{AnyStore, Event, NewEvent, Store};
use crate::output::time;
use crate::project::replay;
use crate::project::{At, Control, InstanceStatus};

/// A change of an instance's lifecycle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    Stop,
    Start,
    /// `force`: even while it has a sync run in progress.
    Retire {
        force: bool,
    },
}

/// Attempts at recording a change when other writers keep changing the instance's stream.
const CONFLICT_RETRIES: u32 = 10;

/// What `change` of `instance` records, decided on the control projections (pure).
pub fn decide(control: &Control, instance: &str, change: Change) -> Result<Event> {
    let rec = control.instances.instances.get(instance);
    let retired = rec.map(|r| r.status) == Some(InstanceStatus::Retired);
    Ok(match change {
        Change::Stop if retired => {
            return Err(Error::Refused(format!("instance {instance} is retired")));
        }
        Change::Stop => Event::InstanceStopped(InstanceLifecycle::default()),
        Change::Start if retired => {
            return Err(Error::Refused(format!(
                "instance {instance} is retired; a retired instance never syncs again"
            )));
        }
        Change::Start => Event::InstanceStarted(InstanceLifecycle::default()),
        Change::Retire { force } => {
            let rec = rec.ok_or_else(|| {
                Error::BadInput(format!("the log knows no instance named {instance}"))
            })?;
            if let Some((run, since)) = &rec.running {
                if !force {
                    return Err(Error::Refused(format!(
                        "instance {instance} has sync run {run} in progress since {}; wait for it or use --force",
                        time(since.at_us)
                    )));
                }
            }
            Event::InstanceRetired(InstanceLifecycle {
                reason: rec
                    .running
                    .as_ref()
                    .map(|(run, _)| format!("forced during run {run}")),
                forced: force,
            })
        }
    })
}

/// Record `change` of `instance`, decided on the state as of the stream's version: an
/// event that lands in between (the instance's own service starting a run, say) makes the
/// append conflict, and the change is decided again on the newer state rather than failing.
/// Returns the type of the event recorded.
pub async fn record(store: &AnyStore, instance: &str, change: Change) -> Result<&'static str> {
    let s = stream::instance(instance);
    let mut tries = 0;
    let what = loop {
        tries += 1;
        let version = store.stream_version(&s).await?;
        let (_, control) = replay::control(store).await?;
        let event = decide(&control, instance, change)?;
        let what = event.event_type();
        let batch = Batch::new(vec![NewEvent::new(s.clone(), instance.to_string(), event)])
            .expect(s.clone(), Expected::Exactly(version));
        match store.append(batch).await {
            Err(Error::Conflict { .. }) if tries < CONFLICT_RETRIES => continue,
            r => r?,
        };
        break what;
    };
    Ok(what)
}

/// One instance as `instance list` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Listed {
    pub instance: String,
    pub status: InstanceStatus,
    pub holds_relationship: bool,
    /// The relationship epoch it holds (None unless it holds the relationship).
    pub epoch: Option<u64>,
    /// The run in progress.
    pub running: Option<String>,
    pub last_completed: Option<At>,
    /// When its cursor last advanced.
    pub cursor: Option<At>,
}

/// Every instance the log knows, by name (pure).
pub fn list(control: &Control) -> Vec<Listed> {
    let holder = control.relationship.holder.as_deref();
    control
        .instances
        .instances
        .iter()
        .map(|(n, r)| {
            let holds = Some(n.as_str()) == holder;
            Listed {
                instance: n.clone(),
                status: r.status,
                holds_relationship: holds,
                epoch: holds.then_some(control.relationship.epoch),
                running: r.running.as_ref().map(|(id, _)| id.clone()),
                last_completed: r.last_completed.as_ref().map(|(_, a)| *a),
                cursor: control.cursors.current.get(n).map(|c| c.at),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::event::{CursorAdvanced, SyncRelationshipEstablished, SyncRunStarted};
    use crate::project::Meta;

    fn apply(s: &mut Control, seq: u64, instance: &str, e: Event) {
        let m = Meta {
            seq,
            instance,
            recorded_at_us: seq as i64 * 1_000_000,
        };
        s.apply(&m, &e);
    }

    fn at(seq: u64) -> At {
        At {
            seq,
            at_us: seq as i64 * 1_000_000,
        }
    }

    #[test]
    fn a_retired_instance_is_neither_stopped_nor_started() {
        let mut s = Control::default();
        apply(
            &mut s,
            1,
            "a",
            Event::InstanceRetired(InstanceLifecycle::default()),
        );
        for (c, want) in [
            (Change::Stop, "instance a is retired"),
            (
                Change::Start,
                "instance a is retired; a retired instance never syncs again",
            ),
        ] {
            match decide(&s, "a", c) {
                Err(Error::Refused(m)) => assert_eq!(m, want),
                other => panic!("{c:?}: {other:?}"),
            }
        }
        // An instance the log does not know yet may be stopped or started (first record).
        assert_eq!(
            decide(&s, "b", Change::Stop).unwrap(),
            Event::InstanceStopped(InstanceLifecycle::default())
        );
        assert_eq!(
            decide(&s, "b", Change::Start).unwrap(),
            Event::InstanceStarted(InstanceLifecycle::default())
        );
    }

    #[test]
    fn retiring_needs_a_known_instance_and_force_during_a_run() {
        let mut s = Control::default();
        match decide(&s, "a", Change::Retire { force: true }) {
            Err(Error::BadInput(m)) => assert_eq!(m, "the log knows no instance named a"),
            other => panic!("{other:?}"),
        }
        apply(
            &mut s,
            1,
            "a",
            Event::InstanceStarted(InstanceLifecycle::default()),
        );
        assert_eq!(
            decide(&s, "a", Change::Retire { force: false }).unwrap(),
            Event::InstanceRetired(InstanceLifecycle::default())
        );
        apply(
            &mut s,
            2,
            "a",
            Event::SyncRunStarted(SyncRunStarted {
                run_id: "r1".into(),
                full: false,
                mode: "sync".into(),
            }),
        );
        match decide(&s, "a", Change::Retire { force: false }) {
            Err(Error::Refused(m)) => assert_eq!(
                m,
                "instance a has sync run r1 in progress since 1970-01-01T00:00:02Z; wait for it or use --force"
            ),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            decide(&s, "a", Change::Retire { force: true }).unwrap(),
            Event::InstanceRetired(InstanceLifecycle {
                reason: Some("forced during run r1".into()),
                forced: true,
            })
        );
    }

    #[test]
    fn the_list_names_the_holder_its_epoch_and_each_cursor() {
        let mut s = Control::default();
        apply(
            &mut s,
            1,
            "a",
            Event::SyncRelationshipEstablished(SyncRelationshipEstablished {
                holder: "a".into(),
                epoch: 3,
            }),
        );
        apply(
            &mut s,
            2,
            "b",
            Event::InstanceStopped(InstanceLifecycle::default()),
        );
        apply(
            &mut s,
            3,
            "a",
            Event::CursorAdvanced(CursorAdvanced {
                kind: "rfc4533".into(),
                cookie: "c".into(),
            }),
        );
        assert_eq!(
            list(&s),
            [
                Listed {
                    instance: "a".into(),
                    status: InstanceStatus::Active,
                    holds_relationship: true,
                    epoch: Some(3),
                    running: None,
                    last_completed: None,
                    cursor: Some(at(3)),
                },
                Listed {
                    instance: "b".into(),
                    status: InstanceStatus::Stopped,
                    holds_relationship: false,
                    epoch: None,
                    running: None,
                    last_completed: None,
                    cursor: None,
                },
            ]
        );
        // In JSON, the log points are {"seq", "at"}.
        assert_eq!(
            crate::output::json_value(&list(&s)[0]).unwrap(),
            serde_json::json!({
                "instance": "a", "status": "active", "holds_relationship": true, "epoch": 3,
                "running": null, "last_completed": null,
                "cursor": {"seq": 3, "at": "1970-01-01T00:00:03Z"},
            })
        );
    }
}
