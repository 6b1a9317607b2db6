use super::*;

use crate::audit::report::Chain;

/// `dirsync report --html FILE [--since TIME]`: read only (the projections' snapshot may
/// be refreshed, as any reading command does); the page is written whole or not at all.
pub(super) async fn report_cmd(
    cfg: &Config,
    file: &Path,
    since: Option<&str>,
    fmt: Format,
) -> Result<Exit> {
    let dir = match file.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    if !dir.is_dir() {
        return Err(Error::BadInput(format!(
            "--html {}: the directory {} does not exist; nothing written",
            file.display(),
            dir.display()
        )));
    }
    let since = since.map(|s| parse_point("--since", s)).transpose()?;
    let store = open(cfg).await?;
    let report =
        crate::audit::lookup::report(&store, since, cfg.sync.interval, cfg.sync.on_delete).await?;
    let page = crate::audit::report::render(&report);
    let mut tmp = tempfile::NamedTempFile::new_in(&dir)?;
    tmp.write_all(page.as_bytes())?;
    tmp.as_file().sync_all()?;
    tmp.persist(file).map_err(|e| Error::Io(e.error))?;
    let broken = matches!(report.chain, Chain::Broken { .. });
    match fmt {
        Format::Json => emit_json(&json!({
            "report": file.display().to_string(),
            "bytes": page.len(),
            "chain_verified": !broken,
            "head": {"seq": report.head_seq, "hash": report.head_hash},
            "missed": report.missed.len(),
        }))?,
        Format::Table | Format::Csv => print(&format!(
            "report written to {} ({} bytes): chain {}, {} missed or pending deletion(s)\n",
            file.display(),
            page.len(),
            if broken { "BROKEN" } else { "verified" },
            report.missed.len()
        ))?,
    }
    Ok(if broken { Exit::Found } else { Exit::Ok })
}
