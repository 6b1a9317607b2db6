use super::*;

use crate::cli::PlaybookCommand;
use crate::playbook::file::Playbook;

/// `dirsync playbook list|show`: the built-in playbooks (no configuration, no store).
pub(super) fn playbook(c: PlaybookCommand, fmt: Format) -> Result<Exit> {
    match c {
        PlaybookCommand::List => {
            let all = Playbook::built_ins()?;
            match fmt {
                Format::Json => emit_json(&json!({ "playbooks": all }))?,
                Format::Table | Format::Csv => {
                    let rows: Vec<Vec<String>> = all
                        .iter()
                        .map(|p| {
                            vec![
                                p.name.clone(),
                                p.steps.len().to_string(),
                                p.description.clone(),
                            ]
                        })
                        .collect();
                    print(&table(&["NAME", "STEPS", "DESCRIPTION"], &rows))?;
                }
            }
        }
        PlaybookCommand::Show { name } => {
            let p = Playbook::resolve(&name)?;
            match fmt {
                Format::Json => emit_json(&p)?,
                Format::Table | Format::Csv => {
                    let rows: Vec<Vec<String>> = p
                        .steps
                        .iter()
                        .enumerate()
                        .map(|(i, s)| {
                            vec![
                                (i + 1).to_string(),
                                s.describe(),
                                humantime::format_duration(s.timeout).to_string(),
                                s.note.clone().unwrap_or_default(),
                            ]
                        })
                        .collect();
                    print(&format!(
                        "playbook {} ({}): {}\n{}",
                        p.name,
                        p.source,
                        p.description,
                        table(&["STEP", "ACTION", "TIMEOUT", "NOTE"], &rows)
                    ))?;
                }
            }
        }
    }
    Ok(Exit::Ok)
}
