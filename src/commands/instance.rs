use super::*;

use crate::sync::instance::{self as lifecycle, Change};

pub(super) async fn instance(store: &AnyStore, c: InstanceCommand, fmt: Format) -> Result<Exit> {
    let (name, change) = match c {
        InstanceCommand::List => {
            return list_instances(&projection::control(store).await?.1, fmt);
        }
        InstanceCommand::Stop { instance } => (instance, Change::Stop),
        InstanceCommand::Start { instance } => (instance, Change::Start),
        InstanceCommand::Retire { instance, force } => (instance, Change::Retire { force }),
    };
    let what = lifecycle::record(store, &name, change).await?;
    match fmt {
        Format::Json => emit_json(&json!({"instance": name, "recorded": what}))?,
        Format::Table | Format::Csv => print(&format!("{name}: {what}\n"))?,
    }
    Ok(Exit::Ok)
}

pub(super) fn list_instances(control: &Control, fmt: Format) -> Result<Exit> {
    let list = lifecycle::list(control);
    if fmt == Format::Json {
        emit_json(&list)?;
        return Ok(Exit::Ok);
    }
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|l| {
            vec![
                l.instance.clone(),
                l.status.as_str().into(),
                l.epoch
                    .map_or("-".into(), |e| format!("holder (epoch {e})")),
                l.running.clone().unwrap_or_else(|| "-".into()),
                at(l.last_completed.as_ref()),
                at(l.cursor.as_ref()),
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
