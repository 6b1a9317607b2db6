use super::*;

pub(super) async fn instance(store: &AnyStore, c: InstanceCommand, fmt: Format) -> Result<Exit> {
    let name = match &c {
        InstanceCommand::List => {
            return list_instances(&*projection::refresh(store, SNAPSHOT_EVERY).await?, fmt);
        }
        InstanceCommand::Stop { instance }
        | InstanceCommand::Start { instance }
        | InstanceCommand::Retire { instance, .. } => instance.clone(),
    };
    let s = stream::instance(&name);
    let mut tries = 0;
    let what = loop {
        tries += 1;
        // The version before the state: an event that lands in between (the instance's own
        // service starting a run, say) makes the append conflict, and the command is decided
        // again on the newer state rather than failing.
        let version = store.stream_version(&s).await?;
        let state = projection::refresh(store, SNAPSHOT_EVERY).await?;
        let event = instance_event(&state, &c)?;
        let what = event.event_type();
        let batch = Batch::new(vec![NewEvent::new(s.clone(), name.clone(), event)])
            .expect(s.clone(), Expected::Exactly(version));
        match store.append(batch).await {
            Err(Error::Conflict { .. }) if tries < CONFLICT_RETRIES => continue,
            r => r?,
        };
        break what;
    };
    projection::refresh(store, SNAPSHOT_EVERY).await?;
    match fmt {
        Format::Json => emit_json(&json!({"instance": name, "recorded": what}))?,
        Format::Table | Format::Csv => print(&format!("{name}: {what}\n"))?,
    }
    Ok(Exit::Ok)
}

/// Attempts at recording an instance command when other writers keep changing its stream.
const CONFLICT_RETRIES: u32 = 10;

/// What an instance command records, decided on `state` (pure).
pub(super) fn instance_event(state: &State, c: &InstanceCommand) -> Result<Event> {
    Ok(match c {
        InstanceCommand::List => {
            return Err(Error::BadInput("listing instances records nothing".into()));
        }
        InstanceCommand::Stop { instance } => {
            let rec = state.instances.instances.get(instance);
            if rec.map(|r| r.status) == Some(InstanceStatus::Retired) {
                return Err(Error::Refused(format!("instance {instance} is retired")));
            }
            Event::InstanceStopped(InstanceLifecycle::default())
        }
        InstanceCommand::Start { instance } => {
            let rec = state.instances.instances.get(instance);
            if rec.map(|r| r.status) == Some(InstanceStatus::Retired) {
                return Err(Error::Refused(format!(
                    "instance {instance} is retired; a retired instance never syncs again"
                )));
            }
            Event::InstanceStarted(InstanceLifecycle::default())
        }
        InstanceCommand::Retire { instance, force } => {
            let rec = state.instances.instances.get(instance).ok_or_else(|| {
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
            let reason = rec
                .running
                .as_ref()
                .map(|(run, _)| format!("forced during run {run}"));
            Event::InstanceRetired(InstanceLifecycle {
                reason,
                forced: *force,
            })
        }
    })
}

pub(super) fn list_instances(state: &State, fmt: Format) -> Result<Exit> {
    let holder = state.relationship.holder.as_deref();
    if fmt == Format::Json {
        let list: Vec<_> = state
            .instances
            .instances
            .iter()
            .map(|(n, r)| {
                json!({
                    "instance": n,
                    "status": r.status.as_str(),
                    "holds_relationship": Some(n.as_str()) == holder,
                    "epoch": if Some(n.as_str()) == holder { Some(state.relationship.epoch) } else { None },
                    "running": r.running.as_ref().map(|(id, _)| id),
                    "last_completed": r.last_completed.as_ref().map(|(_, a)| time(a.at_us)),
                    "cursor": state.cursors.current.get(n).map(|c| time(c.at.at_us)),
                })
            })
            .collect();
        emit_json(&serde_json::Value::Array(list))?;
        return Ok(Exit::Ok);
    }
    let rows: Vec<Vec<String>> = state
        .instances
        .instances
        .iter()
        .map(|(n, r)| {
            vec![
                n.clone(),
                r.status.as_str().into(),
                if Some(n.as_str()) == holder {
                    format!("holder (epoch {})", state.relationship.epoch)
                } else {
                    "-".into()
                },
                r.running.as_ref().map_or("-".into(), |(id, _)| id.clone()),
                at(r.last_completed.as_ref().map(|(_, a)| a)),
                at(state.cursors.current.get(n).map(|c| &c.at)),
            ]
        })
        .collect();
    print(&table(
        &[
            "INSTANCE",
            "STATUS",
            "RELATIONSHIP",
            "RUNNING",
            "LAST SYNC",
            "CURSOR",
        ],
        &rows,
    ))?;
    Ok(Exit::Ok)
}
