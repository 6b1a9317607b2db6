use super::*;

pub(super) fn event_json(e: &StoredEvent) -> serde_json::Value {
    let payload: serde_json::Value =
        serde_json::from_str(&e.payload).unwrap_or(serde_json::Value::String(e.payload.clone()));
    json!({
        "seq": e.seq,
        "recorded_at": time(e.recorded_at_us),
        "instance": e.instance,
        "stream": e.stream,
        "stream_version": e.stream_version,
        "type": e.event_type,
        "schema_version": e.schema_version,
        "payload": payload,
        "hash": hex::encode(e.hash),
    })
}

/// What `log show` selects: its flags, as given.
pub(super) struct LogFilter {
    pub since: Option<String>,
    pub until: Option<String>,
    pub anchor: Option<String>,
    pub event_type: Option<String>,
    pub limit: Option<u64>,
}

/// A point given as a seq or an RFC 3339 time, as the last seq at or before it.
async fn point_seq(store: &AnyStore, p: Until) -> Result<u64> {
    match p {
        Until::Seq(n) => Ok(n),
        Until::Time(t) => store.seq_at_or_before(t.timestamp_micros()).await,
        Until::Head => Ok(store.head().await?.0),
    }
}

pub(super) async fn log_show(store: &AnyStore, f: LogFilter, fmt: Format) -> Result<Exit> {
    use crate::log::store::HistoryQuery;
    let limit = f.limit.unwrap_or(u64::MAX);
    let since = f
        .since
        .as_deref()
        .map(|s| parse_point("--since", s))
        .transpose()?;
    let until = f
        .until
        .as_deref()
        .map(|s| parse_point("--until", s))
        .transpose()?;
    if let Some(t) = &f.event_type {
        if !crate::log::event::EVENT_TYPES.contains(&t.as_str()) {
            return Err(Error::BadInput(format!(
                "--type `{}` is not an event type; one of: {}",
                t.escape_default(),
                crate::log::event::EVENT_TYPES.join(", ")
            )));
        }
    }
    if let (Some(Until::Time(a)), Some(Until::Time(b))) = (&since, &until) {
        if a > b {
            return Err(Error::BadInput(format!(
                "--since {} is after --until {}",
                a.to_rfc3339(),
                b.to_rfc3339()
            )));
        }
    }
    let after = match since {
        Some(p) => point_seq(store, p).await?,
        None => 0,
    };
    let until = match until {
        Some(p) => Some(point_seq(store, p).await?),
        None => None,
    };
    if let Some(u) = until {
        if after > u {
            return Err(Error::BadInput(format!(
                "--since (seq {after}) is after --until (seq {u})"
            )));
        }
    }
    let anchor = match &f.anchor {
        None => None,
        Some(a) => {
            let known = store.anchors_named(a).await?;
            let pick = known
                .iter()
                .find(|k| *k == a)
                .or_else(|| known.iter().find(|k| k.to_lowercase() == a.to_lowercase()));
            match pick {
                Some(k) => Some(k.clone()),
                None => {
                    return Err(Error::BadInput(format!(
                        "no event names the anchor `{}` (`dirsync object show` also takes a DN, userName or mail)",
                        a.escape_default()
                    )))
                }
            }
        }
    };
    let mut n = 0u64;
    let mut rows = Vec::new();
    let mut out = String::new();
    let mut emit = |e: &StoredEvent| match fmt {
        Format::Json => {
            out.push_str(&event_json(e).to_string());
            out.push('\n');
        }
        Format::Table | Format::Csv => {
            let mut summary = e.payload.clone();
            if summary.chars().count() > 90 {
                summary = summary.chars().take(87).collect::<String>() + "...";
            }
            rows.push(vec![
                e.seq.to_string(),
                output::shown(e.recorded_at_us),
                e.instance.clone(),
                format!("{}@{}", e.stream, e.stream_version),
                e.event_type.clone(),
                summary,
            ]);
        }
    };
    if anchor.is_none() && f.event_type.is_none() {
        projection::scan(store, after, None, |e| {
            if n >= limit || until.is_some_and(|u| e.seq > u) {
                return Ok(ControlFlow::Break(()));
            }
            n += 1;
            emit(e);
            Ok(ControlFlow::Continue(()))
        })
        .await?;
    } else {
        // Through the history index, a page at a time.
        let q = HistoryQuery {
            anchor,
            event_type: f.event_type.clone(),
            until,
        };
        let mut after = after;
        while n < limit {
            let want = (limit - n).min(10_000) as u32;
            let page = store.history(&q, after, want).await?;
            for e in &page {
                emit(e);
            }
            n += page.len() as u64;
            match page.last() {
                Some(e) if page.len() == want as usize => after = e.seq,
                _ => break,
            }
        }
    }
    if fmt == Format::Table {
        out = table(
            &["SEQ", "RECORDED", "INSTANCE", "STREAM", "TYPE", "PAYLOAD"],
            &rows,
        );
    }
    print(&out)?;
    Ok(Exit::Ok)
}

pub(super) async fn log_verify(store: &AnyStore, fmt: Format) -> Result<Exit> {
    let (head, hash) = store.head().await?;
    let bar = output::progress(head, "verify");
    let r = projection::verify_chain(store, Some(&bar)).await;
    bar.finish_and_clear();
    let n = r?;
    match fmt {
        Format::Json => emit_json(&json!({"ok": true, "events": n, "head": hex::encode(hash)}))?,
        Format::Table | Format::Csv => print(&format!(
            "chain verified: {n} events, head {}\n",
            hex::encode(hash)
        ))?,
    }
    Ok(Exit::Ok)
}

pub(super) async fn log_export(store: &AnyStore, output: Option<&Path>) -> Result<Exit> {
    // Streamed into a temporary file beside the destination, checked against the chain and
    // its head as it goes, and only then renamed (or copied to stdout): a broken log is
    // reported, never carried elsewhere, and no half file is left behind.
    let dir = match output.and_then(Path::parent) {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        Some(_) => std::path::PathBuf::from("."),
        None => std::env::temp_dir(),
    };
    let tmp = tempfile::NamedTempFile::new_in(&dir)?;
    let (head, _) = store.head().await?;
    let bar = output::progress(head, "export");
    let r = crate::project::carry::export(store, tmp.as_file(), Some(&bar)).await;
    bar.finish_and_clear();
    r?;
    match output {
        Some(path) => {
            tmp.persist(path).map_err(|e| Error::Io(e.error))?;
        }
        None => {
            let mut f = std::fs::File::open(tmp.path())?;
            let mut out = std::io::stdout().lock();
            match std::io::copy(&mut f, &mut out).and_then(|_| out.flush()) {
                Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => return Err(e.into()),
                _ => {}
            }
        }
    }
    Ok(Exit::Ok)
}

pub(super) async fn log_import(store: &AnyStore, file: &Path, fmt: Format) -> Result<Exit> {
    let events = crate::project::carry::read_file(file)?;
    let done = crate::project::carry::import(store, &events, file).await?;
    match fmt {
        Format::Json => emit_json(
            &json!({"imported": done.imported, "already_present": done.already_present, "head": done.head}),
        )?,
        Format::Table | Format::Csv => print(&format!(
            "imported {} events ({} already present); log now ends at seq {}\n",
            done.imported, done.already_present, done.head
        ))?,
    }
    Ok(Exit::Ok)
}
