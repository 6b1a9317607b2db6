//! Playbooks: the steps of a handover, validated on load. The files in `playbooks/` are
//! compiled into the binary ([`BUILT_IN`]), so `handover` works from any directory; a
//! playbook file of one's own is given by its path.
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

use serde::{Deserialize, Serialize, Serializer};
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

impl Serialize for Action {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl Serialize for Role {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

fn human_duration<S: Serializer>(d: &Duration, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_str(&humantime::format_duration(*d).to_string())
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Step {
    pub action: Action,
    pub role: Role,
    #[serde(serialize_with = "human_duration")]
    pub timeout: Duration,
    pub full: bool,
    pub take_over: bool,
    pub force: bool,
    pub note: Option<String>,
    /// 1-based line of the step's `action` in the file.
    #[serde(skip)]
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

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Playbook {
    pub name: String,
    pub description: String,
    /// Where it came from: `built-in`, or the file's path.
    pub source: String,
    pub steps: Vec<Step>,
}

/// The playbooks compiled into the binary: the files in `playbooks/`, by name (each file's
/// `name` is its file name; a unit test holds them to that and to this list being whole).
pub const BUILT_IN: [(&str, &str); 4] = [
    (
        "new-computer",
        include_str!("../../playbooks/new-computer.toml"),
    ),
    ("reinstall", include_str!("../../playbooks/reinstall.toml")),
    (
        "old-computer-lost",
        include_str!("../../playbooks/old-computer-lost.toml"),
    ),
    ("failover", include_str!("../../playbooks/failover.toml")),
];

/// The playbook `handover` runs without `--playbook`.
pub const DEFAULT: &str = "new-computer";

/// The built-in names, for messages: "new-computer, reinstall, ...".
pub fn built_in_names() -> String {
    BUILT_IN.map(|(n, _)| n).join(", ")
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
        let mut p = Playbook::parse(&text, &path.display().to_string())?;
        p.source = path.display().to_string();
        Ok(p)
    }

    /// The built-in playbook `name`, if there is one.
    pub fn built_in(name: &str) -> Option<Result<Playbook>> {
        BUILT_IN.iter().find(|(n, _)| *n == name).map(|(n, text)| {
            let mut p = Playbook::parse(text, &format!("built-in playbook {n}"))?;
            p.source = "built-in".into();
            Ok(p)
        })
    }

    /// Every built-in playbook, in [`BUILT_IN`]'s order.
    pub fn built_ins() -> Result<Vec<Playbook>> {
        BUILT_IN
            .iter()
            .filter_map(|(n, _)| Playbook::built_in(n))
            .collect()
    }

    /// `--playbook NAME|FILE`: the built-in playbook of that name, else the file at that
    /// path. Neither: one line naming the built-ins (exit 2).
    pub fn resolve(name_or_file: &str) -> Result<Playbook> {
        if let Some(p) = Playbook::built_in(name_or_file) {
            return p;
        }
        let path = Path::new(name_or_file);
        match std::fs::read_to_string(path) {
            Ok(_) => Playbook::load(path),
            Err(e) => Err(Error::BadInput(format!(
                "no playbook `{}`: not a built-in one ({}) nor a readable file ({e})",
                name_or_file.escape_default(),
                built_in_names()
            ))),
        }
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
            source: name.to_string(),
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
    fn every_file_in_playbooks_is_built_in_under_its_name() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("playbooks");
        let mut files: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        files.sort();
        let mut names: Vec<String> = BUILT_IN.iter().map(|(n, _)| format!("{n}.toml")).collect();
        names.sort();
        assert_eq!(files, names);
        for (n, text) in BUILT_IN {
            let p = Playbook::built_in(n).unwrap().unwrap();
            assert_eq!((p.name.as_str(), p.source.as_str()), (n, "built-in"));
            // The compiled-in text is the file's.
            let file = Playbook::load(&dir.join(format!("{n}.toml"))).unwrap();
            assert_eq!(file.steps, p.steps);
            assert_eq!(
                std::fs::read_to_string(dir.join(format!("{n}.toml"))).unwrap(),
                text
            );
        }
        assert_eq!(
            Playbook::built_ins().unwrap().len(),
            BUILT_IN.len(),
            "{}",
            built_in_names()
        );
    }

    #[test]
    fn resolve_takes_a_built_in_name_else_a_path() {
        let p = Playbook::resolve("failover").unwrap();
        assert_eq!(p.source, "built-in");
        assert_eq!(
            p.steps.iter().map(|s| s.describe()).collect::<Vec<_>>(),
            ["sync new (full, take over)", "wait-sync new"]
        );
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("mine.toml");
        std::fs::write(
            &f,
            "name = \"mine\"\n[[step]]\naction = \"stop\"\nrole = \"old\"\n",
        )
        .unwrap();
        let p = Playbook::resolve(f.to_str().unwrap()).unwrap();
        assert_eq!(
            (p.name.as_str(), p.source),
            ("mine", f.display().to_string())
        );
        let e = Playbook::resolve("new-computr").unwrap_err();
        assert_eq!(e.exit(), crate::Exit::BadInput);
        assert_eq!(
            e.to_string(),
            "no playbook `new-computr`: not a built-in one (new-computer, reinstall, old-computer-lost, failover) nor a readable file (No such file or directory (os error 2))"
        );
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
