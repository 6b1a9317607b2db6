//! Playbook files (`playbooks/*.toml`): the steps of a handover, validated on load.
//!
//! ```toml
//! name = "new-computer"
//! description = "..."
//!
//! [[step]]
//! action = "stop"        # stop | start | sync | wait-sync | replay-cursor | retire
//! role = "old"           # old | new: the instance given by --from / --to
//! timeout = "10m"        # optional; each action has a default
//! full = false           # sync only: a full import instead of a delta from the cursor
//! take_over = true       # sync and replay-cursor: establish a new relationship epoch first
//! force = false          # stop and retire: even with a sync in progress (a dead computer)
//! note = "..."           # shown by `handover status`
//! ```
//!
//! Errors name the file and the line: an unknown key, action or role, a missing step, and
//! an impossible order (an instance used after its retirement, waiting for a sync that no
//! earlier step starts, an option on an action it does not apply to).

use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::error::{Error, Result};

/// What a step does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Record that the instance stops syncing (its `dirsync run` service idles). Waits for
    /// a sync in progress to finish first, as the documentation warns.
    Stop,
    /// Record that the instance may sync again.
    Start,
    /// One sync cycle as the instance (import, plan, guard, export).
    Sync,
    /// Wait until the instance has completed a sync since the handover began: an event in
    /// the log, not a human watching an event viewer.
    WaitSync,
    /// The new instance continues from the old instance's last cursor in the log (a delta
    /// that reveals the deletions the old one had not seen), falling back to a full import
    /// where the source no longer accepts it.
    ReplayCursor,
    /// Retire the instance for good.
    Retire,
}

impl Action {
    pub fn name(self) -> &'static str {
        match self {
            Action::Stop => "stop",
            Action::Start => "start",
            Action::Sync => "sync",
            Action::WaitSync => "wait-sync",
            Action::ReplayCursor => "replay-cursor",
            Action::Retire => "retire",
        }
    }

    fn parse(s: &str) -> Option<Action> {
        Some(match s {
            "stop" => Action::Stop,
            "start" => Action::Start,
            "sync" => Action::Sync,
            "wait-sync" => Action::WaitSync,
            "replay-cursor" => Action::ReplayCursor,
            "retire" => Action::Retire,
            _ => return None,
        })
    }

    /// How long the step may take unless the playbook says otherwise.
    pub fn default_timeout(self) -> Duration {
        match self {
            Action::Stop | Action::WaitSync | Action::Retire => Duration::from_secs(30 * 60),
            Action::Start => Duration::from_secs(60),
            Action::Sync | Action::ReplayCursor => Duration::from_secs(6 * 3600),
        }
    }
}

/// Which instance a step acts on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Old,
    New,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Old => "old",
            Role::New => "new",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    pub action: Action,
    pub role: Role,
    pub timeout: Duration,
    pub full: bool,
    pub take_over: bool,
    pub force: bool,
    pub note: Option<String>,
    /// 1-based line of the step's `action` in the file.
    pub line: usize,
}

impl Step {
    /// "sync new (full, take over)": how the step is named in events and output.
    pub fn describe(&self) -> String {
        let mut opts = Vec::new();
        if self.full {
            opts.push("full");
        }
        if self.take_over {
            opts.push("take over");
        }
        if self.force {
            opts.push("force");
        }
        let base = format!("{} {}", self.action.name(), self.role.name());
        if opts.is_empty() {
            base
        } else {
            format!("{base} ({})", opts.join(", "))
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Playbook {
    pub name: String,
    pub description: String,
    pub steps: Vec<Step>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPlaybook {
    name: Spanned<String>,
    #[serde(default)]
    description: String,
    #[serde(default)]
    step: Vec<RawStep>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStep {
    action: Spanned<String>,
    role: Spanned<String>,
    timeout: Option<Spanned<String>>,
    full: Option<Spanned<bool>>,
    take_over: Option<Spanned<bool>>,
    force: Option<Spanned<bool>>,
    note: Option<String>,
}

impl Playbook {
    pub fn load(path: &Path) -> Result<Playbook> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::BadInput(format!("{}: {e}", path.display())))?;
        Playbook::parse(&text, &path.display().to_string())
    }

    /// Parse and validate; `name` is the file, for messages.
    pub fn parse(text: &str, name: &str) -> Result<Playbook> {
        let line_of = |offset: usize| text[..offset.min(text.len())].matches('\n').count() + 1;
        let at = |offset: usize, msg: String| {
            Error::BadInput(format!("{name}:{}: {msg}", line_of(offset)))
        };
        let raw: RawPlaybook = toml::from_str(text).map_err(|e| match e.span() {
            Some(s) => at(s.start, e.message().replace('\n', " ")),
            None => Error::BadInput(format!("{name}: {}", e.message().replace('\n', " "))),
        })?;
        if raw.step.is_empty() {
            return Err(at(
                raw.name.span().start,
                "the playbook has no [[step]]".into(),
            ));
        }
        let mut steps = Vec::with_capacity(raw.step.len());
        for s in raw.step {
            let action = Action::parse(s.action.get_ref()).ok_or_else(|| {
                at(
                    s.action.span().start,
                    format!(
                        "unknown action `{}` (stop, start, sync, wait-sync, replay-cursor, retire)",
                        s.action.get_ref()
                    ),
                )
            })?;
            let role = match s.role.get_ref().as_str() {
                "old" => Role::Old,
                "new" => Role::New,
                other => {
                    return Err(at(
                        s.role.span().start,
                        format!("unknown role `{other}` (old, new)"),
                    ))
                }
            };
            let only = |opt: &Option<Spanned<bool>>, key: &str, allowed: &[Action]| match opt {
                Some(v) if !allowed.contains(&action) => Err(at(
                    v.span().start,
                    format!("`{key}` does not apply to {}", action.name()),
                )),
                Some(v) => Ok(*v.get_ref()),
                None => Ok(false),
            };
            let full = only(&s.full, "full", &[Action::Sync])?;
            let take_over = only(
                &s.take_over,
                "take_over",
                &[Action::Sync, Action::ReplayCursor],
            )?;
            let force = only(&s.force, "force", &[Action::Stop, Action::Retire])?;
            let timeout = match &s.timeout {
                None => action.default_timeout(),
                Some(t) => humantime::parse_duration(t.get_ref())
                    .map_err(|e| at(t.span().start, format!("timeout: {e}")))?,
            };
            steps.push(Step {
                action,
                role,
                timeout,
                full,
                take_over,
                force,
                note: s.note,
                line: line_of(s.action.span().start),
            });
        }
        check_order(&steps, name)?;
        Ok(Playbook {
            name: raw.name.into_inner(),
            description: raw.description,
            steps,
        })
    }
}

/// Orders no run can carry out are refused before anything runs.
fn check_order(steps: &[Step], name: &str) -> Result<()> {
    let mut retired: Vec<Role> = Vec::new();
    let mut synced: Vec<Role> = Vec::new();
    for s in steps {
        let bad = |msg: String| Error::BadInput(format!("{name}:{}: {msg}", s.line));
        if retired.contains(&s.role) {
            return Err(bad(format!(
                "{} uses the {} instance after it was retired",
                s.action.name(),
                s.role.name()
            )));
        }
        match s.action {
            Action::Retire => retired.push(s.role),
            Action::Sync => synced.push(s.role),
            Action::ReplayCursor => {
                if s.role != Role::New {
                    return Err(bad(
                        "replay-cursor replays the old instance's cursor as the new one: role must be new".into(),
                    ));
                }
                synced.push(s.role);
            }
            Action::WaitSync if !synced.contains(&s.role) => {
                return Err(bad(format!(
                    "wait-sync waits for a sync of the {} instance that no earlier step starts",
                    s.role.name()
                )));
            }
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        Playbook::parse(text, "p.toml").unwrap_err().to_string()
    }

    #[test]
    fn the_shipped_playbooks_load() {
        for f in ["new-computer", "reinstall", "old-computer-lost"] {
            let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("playbooks/{f}.toml"));
            let p = Playbook::load(&path).unwrap_or_else(|e| panic!("{f}: {e}"));
            assert_eq!(p.name, f);
        }
    }

    #[test]
    fn errors_name_the_line() {
        let head = "name = \"x\"\n";
        assert_eq!(
            err(&format!("{head}[[step]]\naction = \"dance\"\nrole = \"old\"\n")),
            "p.toml:3: unknown action `dance` (stop, start, sync, wait-sync, replay-cursor, retire)"
        );
        assert!(err(&format!(
            "{head}[[step]]\naction = \"stop\"\nrole = \"boss\"\n"
        ))
        .starts_with("p.toml:4: unknown role"));
        assert!(err(&format!(
            "{head}[[step]]\naction = \"stop\"\nrole = \"old\"\ncolour = 1\n"
        ))
        .starts_with("p.toml:5:"));
        assert!(err(head).contains("no [[step]]"));
        assert!(err(&format!("{head}[[step]]\nrole = \"old\"\n")).contains("action"));
        assert!(err(&format!(
            "{head}[[step]]\naction = \"stop\"\nrole = \"old\"\nfull = true\n"
        ))
        .starts_with("p.toml:5: `full` does not apply to stop"));
    }

    #[test]
    fn impossible_orders_are_refused() {
        let head = "name = \"x\"\n";
        let e = err(&format!(
            "{head}[[step]]\naction = \"retire\"\nrole = \"old\"\n[[step]]\naction = \"sync\"\nrole = \"old\"\n"
        ));
        assert!(
            e.starts_with("p.toml:6:") && e.contains("after it was retired"),
            "{e}"
        );
        let e = err(&format!(
            "{head}[[step]]\naction = \"wait-sync\"\nrole = \"new\"\n"
        ));
        assert!(e.contains("no earlier step"), "{e}");
        let e = err(&format!(
            "{head}[[step]]\naction = \"replay-cursor\"\nrole = \"old\"\n"
        ));
        assert!(e.contains("role must be new"), "{e}");
    }
}
