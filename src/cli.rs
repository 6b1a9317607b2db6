//! Command-line interface (INTERFACE.md): the clap definitions.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum Format {
    #[default]
    Table,
    Json,
    /// Comma-separated values (audits and replay --diff/--what-if only).
    Csv,
}

#[derive(Debug, Parser)]
#[command(
    name = "dirsync",
    version,
    about = "One-way directory sync with an event log as the system of record"
)]
pub struct Cli {
    /// Configuration file (else $DIRSYNC_CONFIG, else ./dirsync.toml).
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Output format.
    #[arg(long, global = true, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    /// Show times in tables in this computer's time zone (JSON stays RFC 3339 UTC).
    #[arg(long, global = true)]
    pub local_time: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create or migrate the store; idempotent.
    Init,
    /// Check the store, the source bind, the target, the tombstone lifetime and duplicate
    /// userNames / mails; exit 0 only if all pass.
    Preflight {
        /// The instance whose view is checked; default: this host's name.
        #[arg(long, value_parser = check_instance)]
        instance: Option<String>,
    },
    /// Read, check and carry the event log.
    #[command(subcommand)]
    Log(LogCommand),
    /// State as of a point of the log; --verify rebuilds every projection and compares.
    Replay(ReplayArgs),
    /// Instance lifecycle, recorded in the log.
    #[command(subcommand)]
    Instance(InstanceCommand),
    /// One sync cycle: import (delta from the instance's cursor, or full) -> plan -> guard
    /// -> export.
    Sync(SyncArgs),
    /// Deletions held by the guard, and their approval.
    #[command(subcommand)]
    Deletions(DeletionsCommand),
    /// Run or resume a handover playbook (default: the built-in new-computer); `handover
    /// status` shows the current or last one.
    Handover(HandoverArgs),
    /// The handover playbooks built into this binary.
    #[command(subcommand)]
    Playbook(PlaybookCommand),
    /// The sync service: a sync every [sync] interval; obeys stop and retire recorded in the
    /// log; SIGTERM finishes the current batch and exits.
    Run {
        /// The instance this computer runs as; default: this host's name.
        #[arg(long, value_parser = check_instance)]
        instance: Option<String>,
        /// Serve GET /metrics (Prometheus text format), /healthz and /readyz on IP:PORT,
        /// e.g. 127.0.0.1:9464.
        #[arg(long, value_name = "ADDR")]
        listen: Option<String>,
        /// Stand by: import every interval (warm state) and export nothing, until the
        /// holder's heartbeat is older than `[ha] failover_after`; then take over through
        /// the store's epoch bump and run the `failover` playbook. A holder fenced by a
        /// newer epoch stands by instead of exiting 4.
        #[arg(long)]
        standby: bool,
    },
    /// Audits over the log: missed deletions, sync gaps.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// One self-contained HTML page for the auditor: sync runs per instance with their gaps,
    /// stops and take-overs, handovers and their steps, deletions over time, missed and
    /// pending deletions, and the hash chain's verification (exit 5 when it is broken).
    Report {
        /// Where to write the page (its directory must exist; nothing is written otherwise).
        #[arg(long, value_name = "FILE")]
        html: PathBuf,
        /// Only what happened after this point: an RFC 3339 time or a sequence number.
        #[arg(long, value_name = "TIME")]
        since: Option<String>,
    },
    /// One object's history: `object show KEY`.
    #[command(subcommand)]
    Object(ObjectCommand),
    /// The source anchor: the attribute recorded, and moving the ledger to another one.
    #[command(subcommand)]
    Anchors(AnchorsCommand),
    /// The attribute mapping: the effective table, and one object mapped.
    #[command(subcommand)]
    Mapping(MappingCommand),
    /// Per instance: role, epoch, last success and failure, deletions held, cursor age,
    /// handover in progress; quarantined objects. Exit 0 healthy, 4 the named instance is
    /// fenced, 1 the last cycle failed or none succeeded within three intervals, 3
    /// deletions held.
    Status {
        /// Only this instance (and its health); default: every instance, the holder's health.
        #[arg(long, value_parser = check_instance)]
        instance: Option<String>,
    },
    /// Print shell completions for SHELL on stdout (for packaging: scripts/package).
    #[command(hide = true)]
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write the man pages (dirsync.1 and one per subcommand) into DIR (for packaging:
    /// scripts/package).
    #[command(hide = true)]
    Man {
        #[arg(value_name = "DIR")]
        dir: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub enum MappingCommand {
    /// The effective mapping: every target attribute and its CEL expression, defaults
    /// included, and where each came from.
    Show,
    /// One source object (as the log last recorded it) mapped: each target attribute's
    /// value, or why it cannot be mapped. Exit 1 when the object is unmappable.
    Test {
        /// The object's DN (compared case-insensitively).
        #[arg(long, conflicts_with = "anchor", required_unless_present = "anchor")]
        dn: Option<String>,
        /// The object's anchor.
        #[arg(long)]
        anchor: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum ObjectCommand {
    /// One object: its source attributes, mapped values, target id, and every event that
    /// touched it, read through the history index (exit 2 when KEY names no object or
    /// several).
    Show {
        /// An anchor, DN, userName or mail (case-insensitive).
        key: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum AnchorsCommand {
    /// The anchor attribute recorded in the log, the pinned one, and the owned objects.
    Show,
    /// Re-key the ledger in place to the anchors under ATTR: each owned object's old anchor
    /// is paired with the same source entry's new one (same target objects: no delete, no
    /// create). Owned objects that cannot be paired refuse it (exit 1), listed.
    Migrate {
        /// The new anchor attribute (as `[source] anchor` takes it).
        #[arg(long, value_name = "ATTR")]
        to: String,
        /// The instance recording the migration; default: this host's name.
        #[arg(long, value_parser = check_instance)]
        instance: Option<String>,
        /// Leave owned objects that cannot be paired under their old anchors (the next sync
        /// deletes and creates them again, under the deletion guard).
        #[arg(long)]
        allow_unpaired: bool,
    },
}

#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct HandoverArgs {
    #[command(subcommand)]
    pub command: Option<HandoverCommand>,
    /// The old instance.
    #[arg(long, required = true, value_parser = check_instance)]
    pub from: Option<String>,
    /// The new instance.
    #[arg(long, required = true, value_parser = check_instance)]
    pub to: Option<String>,
    /// A built-in playbook (new-computer, reinstall, old-computer-lost, failover; see
    /// `dirsync playbook list`), else a playbook file's path.
    #[arg(long, value_name = "NAME|FILE", default_value = crate::playbook::file::DEFAULT)]
    pub playbook: String,
    /// Print the steps; run and record nothing.
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Debug, Subcommand)]
pub enum PlaybookCommand {
    /// The built-in playbooks: name, steps and what each is for.
    List,
    /// One playbook's steps (a built-in name, else a playbook file's path).
    Show {
        #[arg(value_name = "NAME|FILE")]
        name: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum HandoverCommand {
    /// The current or last handover: each step, its state and times.
    Status,
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Objects we own in the target that are gone (or out of scope) in the source and whose
    /// deletion has not reached the target, with the evidence; each `missed` (no active
    /// holder's next cycle would export it) or `pending`. Read-only unless --refresh.
    MissedDeletes {
        /// Exit 5 when any deletion is `missed` (`pending` ones do not count).
        #[arg(long)]
        fail_if_any: bool,
        /// The log's view only (the default; kept for scripts).
        #[arg(long, conflicts_with = "refresh")]
        from_log: bool,
        /// First run a full import in staging as --instance, for fresh evidence (the only
        /// way this audit writes to the log).
        #[arg(long, requires = "instance")]
        refresh: bool,
        /// The existing instance whose full import --refresh runs.
        #[arg(long, value_parser = check_instance, requires = "refresh")]
        instance: Option<String>,
    },
    /// Per instance, the windows in which no sync completed, against the tombstone
    /// lifetime and the cursor's age (exit 5 with --fail-if-any when one is past it).
    Gaps {
        /// Leave out closed windows shorter than this (default: twice the sync interval).
        #[arg(long, value_name = "DURATION")]
        longer_than: Option<String>,
        #[arg(long)]
        fail_if_any: bool,
    },
    /// Every reconcile of the whole target (`sync --full`, `[sync] reconcile_target`):
    /// the drift found (missing, changed out of band, duplicates) and what was repaired
    /// (exit 5 with --fail-if-any when the last one found drift).
    Drift {
        #[arg(long)]
        fail_if_any: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum DeletionsCommand {
    /// Held deletion lists, each with its plan hash and anchors.
    Show,
    /// Release exactly the list with this hash (a different list needs its own approval).
    Approve {
        #[arg(long, value_name = "HASH")]
        plan: String,
    },
}

#[derive(Debug, clap::Args)]
pub struct SyncArgs {
    /// The instance (computer) running the sync; default: this host's name.
    #[arg(long, value_parser = check_instance)]
    pub instance: Option<String>,
    /// A full import instead of a delta from the cursor.
    #[arg(long)]
    pub full: bool,
    /// Import and plan only; export nothing.
    #[arg(long)]
    pub staging: bool,
    /// Read the source (and the target, for matching) and print the plan; write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Establish a new sync relationship epoch for this instance first (fences the holder).
    #[arg(long, conflicts_with_all = ["staging", "dry_run"])]
    pub take_over: bool,
}

#[derive(Debug, Subcommand)]
pub enum LogCommand {
    /// Print events (JSON Lines with --format json). --anchor and --type read the history
    /// index, not the whole log.
    Show {
        /// Only events after this point: a sequence number, or an RFC 3339 time (events
        /// recorded after it).
        #[arg(long, value_name = "SEQ|RFC3339")]
        since: Option<String>,
        /// Only events up to this point: a sequence number, or an RFC 3339 time.
        #[arg(long, value_name = "SEQ|RFC3339")]
        until: Option<String>,
        /// Only events that touched this object (its anchor, in any case).
        #[arg(long, value_name = "ANCHOR")]
        anchor: Option<String>,
        /// Only events of this type (e.g. ObjectDeleted).
        #[arg(long = "type", value_name = "TYPE")]
        event_type: Option<String>,
        /// At most this many events.
        #[arg(long)]
        limit: Option<u64>,
    },
    /// Check the hash chain; exit 5 naming the first bad sequence number.
    Verify,
    /// Write the whole log as JSON Lines (stdout, or --output).
    Export {
        #[arg(long, short, value_name = "FILE")]
        output: Option<PathBuf>,
    },
    /// Append a log exported elsewhere; the chain is verified before anything is written.
    Import { file: PathBuf },
}

#[derive(Debug, clap::Args)]
pub struct ReplayArgs {
    /// A sequence number or an RFC 3339 time.
    #[arg(long, value_name = "SEQ|RFC3339", conflicts_with = "verify")]
    pub until: Option<String>,
    /// With --until: only this object (an anchor, DN, userName or mail), as of that point.
    #[arg(long, value_name = "KEY", conflicts_with_all = ["verify", "diff", "to_target", "what_if"])]
    pub anchor: Option<String>,
    /// Rebuild every projection from seq 0 and compare with the stored ones (exit 5 on a difference).
    #[arg(long)]
    pub verify: bool,
    /// What changed between two points (SEQ or RFC 3339 each): added, changed, deleted.
    #[arg(long, num_args = 2, value_names = ["A", "B"], conflicts_with_all = ["until", "verify"])]
    pub diff: Option<Vec<String>>,
    /// Rebuild a fresh, empty target from the log through the normal plan, guard and
    /// fencing (needs --instance).
    #[arg(long, requires = "instance", conflicts_with_all = ["until", "verify", "diff"])]
    pub to_target: bool,
    /// The instance exporting with --to-target.
    #[arg(long, value_parser = check_instance)]
    pub instance: Option<String>,
    /// With --to-target: print the plan, write nothing.
    #[arg(long, requires = "to_target")]
    pub dry_run: bool,
    /// Replay the recorded source history under this configuration's scope and mapping and
    /// print how the target would differ from today's.
    #[arg(long, value_name = "CONFIG", conflicts_with_all = ["until", "verify", "diff", "to_target"])]
    pub what_if: Option<PathBuf>,
}

impl ReplayArgs {
    /// --diff, --to-target or --what-if: the history commands.
    pub fn is_history(&self) -> bool {
        self.diff.is_some() || self.to_target || self.what_if.is_some()
    }
}

#[derive(Debug, Subcommand)]
pub enum InstanceCommand {
    /// Every instance the log knows, with its state.
    List,
    /// Record that the instance must stop syncing.
    Stop {
        #[arg(value_parser = check_instance)]
        instance: String,
    },
    /// Record that the instance may sync again.
    Start {
        #[arg(value_parser = check_instance)]
        instance: String,
    },
    /// Retire the instance for good (refused while it has a sync in progress unless --force).
    Retire {
        #[arg(value_parser = check_instance)]
        instance: String,
        #[arg(long)]
        force: bool,
    },
}

/// This computer's name: the default instance name.
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".to_string())
}

/// The longest instance name: it appears in stream names, table columns and lock keys.
pub const INSTANCE_MAX: usize = 64;

/// An instance name is 1 to 64 ASCII letters, digits, `.`, `-` or `_`: it is printed in
/// tables and error lines and names log streams, so nothing in it may need escaping.
pub fn check_instance(name: &str) -> Result<String, String> {
    if name.is_empty() {
        return Err("an instance name may not be empty".into());
    }
    if name.len() > INSTANCE_MAX {
        return Err(format!(
            "an instance name has at most {INSTANCE_MAX} characters (this one has {})",
            name.chars().count()
        ));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
    {
        return Err(format!(
            "`{}` is not an instance name: use letters, digits, `.`, `-` and `_`",
            name.escape_default()
        ));
    }
    Ok(name.to_string())
}

/// The instance named on the command line, or else this host's name. A host name that is
/// not a valid instance name (longer than 64 characters, say) is refused rather than
/// shortened or rewritten: two hosts must never end up as the same instance.
pub fn instance_or_host(instance: Option<String>) -> crate::Result<String> {
    match instance {
        Some(i) => Ok(i),
        None => {
            let h = host_name();
            check_instance(&h).map_err(|e| {
                crate::Error::BadInput(format!(
                    "this host's name cannot be the default instance ({e}); pass --instance NAME"
                ))
            })
        }
    }
}
