//! Output helpers: aligned tables for people, JSON for machines, progress on stderr.

use std::io::{self, Write};
use std::time::Duration;

use chrono::{SecondsFormat, TimeZone, Utc};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Render rows as an aligned table with a header.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    // A control character from the directory (an escape sequence in a display name, a
    // newline in a description) would drive the terminal or break the row: escape it.
    let escaped: Vec<Vec<String>> = rows
        .iter()
        .map(|r| r.iter().map(|c| escape_controls(c)).collect())
        .collect();
    let rows = &escaped;
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(c.chars().count());
            }
        }
    }
    let mut out = String::new();
    let mut line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut l = String::new();
        for (i, c) in cells.enumerate() {
            if i > 0 {
                l.push_str("  ");
            }
            l.push_str(c);
            let pad = widths
                .get(i)
                .copied()
                .unwrap_or(0)
                .saturating_sub(c.chars().count());
            l.extend(std::iter::repeat_n(' ', pad));
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(&mut headers.iter().copied());
    for r in rows {
        line(&mut r.iter().map(String::as_str));
    }
    out
}

/// `--local-time`: tables show times in the local time zone.
static LOCAL_TIME: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Set by `--local-time` for the process.
pub fn set_local_time(on: bool) {
    LOCAL_TIME.store(on, std::sync::atomic::Ordering::Relaxed);
}

/// A time for a table: RFC 3339 UTC, or with `--local-time` RFC 3339 in the local zone
/// (with its offset). JSON uses [`time`] always.
pub fn shown(us: i64) -> String {
    if !LOCAL_TIME.load(std::sync::atomic::Ordering::Relaxed) {
        return time(us);
    }
    chrono::Local
        .timestamp_micros(us)
        .single()
        .map(|t| t.to_rfc3339_opts(SecondsFormat::Secs, false))
        .unwrap_or_else(|| time(us))
}

/// A table cell that holds an RFC 3339 UTC time from [`time`], shown per `--local-time`
/// (any other text unchanged).
pub fn shown_str(s: &str) -> String {
    match chrono::DateTime::parse_from_rfc3339(s) {
        Ok(t) if LOCAL_TIME.load(std::sync::atomic::Ordering::Relaxed) => {
            shown(t.timestamp_micros())
        }
        _ => s.to_string(),
    }
}

/// Serialise a log point ([`crate::project::At`]) for JSON output: its seq and its time
/// as RFC 3339 (`{"seq": N, "at": "..."}`), never a microsecond integer.
pub fn at_json<S: serde::Serializer>(a: &crate::project::At, s: S) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeStruct;
    let mut st = s.serialize_struct("At", 2)?;
    st.serialize_field("seq", &a.seq)?;
    st.serialize_field("at", &time(a.at_us))?;
    st.end()
}

/// [`at_json`] for an optional point.
pub fn at_json_opt<S: serde::Serializer>(
    a: &Option<crate::project::At>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match a {
        Some(a) => at_json(a, s),
        None => s.serialize_none(),
    }
}

/// Serialise optional microseconds since the epoch as an RFC 3339 time.
pub fn us_json_opt<S: serde::Serializer>(us: &Option<i64>, s: S) -> Result<S::Ok, S::Error> {
    match us {
        Some(us) => s.serialize_str(&time(*us)),
        None => s.serialize_none(),
    }
}

/// A spinner on stderr labelled `what` (its message) with the time elapsed; hidden when
/// stderr is not a terminal.
pub fn spinner(what: &str) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template("{spinner} {elapsed:>4} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    bar.set_message(what.to_string());
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

/// Microseconds since the epoch as RFC 3339 (UTC).
pub fn time(us: i64) -> String {
    Utc.timestamp_micros(us)
        .single()
        .map(|t| t.to_rfc3339_opts(SecondsFormat::Secs, true))
        .unwrap_or_else(|| us.to_string())
}

/// Write to stdout; a closed pipe (`| head`) is not an error.
pub fn print(s: &str) -> io::Result<()> {
    let mut out = io::stdout().lock();
    match out.write_all(s.as_bytes()).and_then(|_| out.flush()) {
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        r => r,
    }
}

/// `v` as indented JSON and a newline on stdout, written as it is serialised (a report
/// listing a plan of 100,000 operations is not built up as one string first).
pub fn print_json<T: serde::Serialize + ?Sized>(v: &T) -> io::Result<()> {
    let mut out = io::BufWriter::with_capacity(1 << 16, io::stdout().lock());
    let written = serde_json::to_writer_pretty(&mut out, v)
        .map_err(io::Error::from)
        .and_then(|()| out.write_all(b"\n"))
        .and_then(|()| out.flush());
    match written {
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        r => r,
    }
}

/// A progress bar on stderr for `len` items; hidden when stderr is not a terminal.
pub fn progress(len: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template("{msg:>10} [{bar:30}] {pos}/{len} {per_sec} eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_message(what.to_string());
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

/// Render rows as CSV (RFC 4180: fields with commas, quotes or line breaks are quoted).
pub fn csv(headers: &[&str], rows: &[Vec<String>]) -> String {
    fn field(out: &mut String, s: &str) {
        if s.contains([',', '"', '\n', '\r']) {
            out.push('"');
            out.push_str(&s.replace('"', "\"\""));
            out.push('"');
        } else {
            out.push_str(s);
        }
    }
    let mut out = String::new();
    let mut line = |cells: &mut dyn Iterator<Item = &str>| {
        for (i, c) in cells.enumerate() {
            if i > 0 {
                out.push(',');
            }
            field(&mut out, c);
        }
        out.push_str("\r\n");
    };
    line(&mut headers.iter().copied());
    for r in rows {
        line(&mut r.iter().map(String::as_str));
    }
    out
}

/// `s` with each control character written as a Rust escape (`\u{1b}`, `\n`).
pub fn escape_controls(s: &str) -> String {
    if !s.chars().any(char::is_control) {
        return s.to_string();
    }
    s.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn csv_quotes_what_needs_it() {
        let s = super::csv(
            &["A", "B"],
            &[
                vec!["CN=Smith, Ann".into(), "say \"hi\"".into()],
                vec!["x".into(), String::new()],
            ],
        );
        assert_eq!(s, "A,B\r\n\"CN=Smith, Ann\",\"say \"\"hi\"\"\"\r\nx,\r\n");
    }
}

#[cfg(test)]
mod time_tests {
    #[derive(serde::Serialize)]
    struct Point {
        #[serde(serialize_with = "super::at_json")]
        a: crate::project::At,
        #[serde(serialize_with = "super::at_json_opt")]
        b: Option<crate::project::At>,
        #[serde(serialize_with = "super::us_json_opt")]
        c: Option<i64>,
    }

    #[test]
    fn log_points_are_rfc3339_in_json() {
        let a = crate::project::At {
            seq: 7,
            at_us: 1_700_000_000_123_456,
        };
        let v = serde_json::to_value(Point {
            a,
            b: None,
            c: Some(a.at_us),
        })
        .unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "a": {"seq": 7, "at": "2023-11-14T22:13:20Z"},
                "b": null,
                "c": "2023-11-14T22:13:20Z",
            })
        );
        // Without --local-time, a table's time is the JSON's.
        assert_eq!(super::shown(a.at_us), "2023-11-14T22:13:20Z");
        assert_eq!(super::shown_str("-"), "-");
    }
}

#[cfg(test)]
mod escape_tests {
    #[test]
    fn control_characters_are_escaped_in_tables() {
        let t = super::table(&["A"], &[vec!["x\u{1b}[31my\nz\u{7}".into()]]);
        assert_eq!(t, "A\nx\\u{1b}[31my\\nz\\u{7}\n");
        assert_eq!(super::escape_controls("Zoë"), "Zoë");
    }
}
