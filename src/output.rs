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
mod escape_tests {
    #[test]
    fn control_characters_are_escaped_in_tables() {
        let t = super::table(&["A"], &[vec!["x\u{1b}[31my\nz\u{7}".into()]]);
        assert_eq!(t, "A\nx\\u{1b}[31my\\nz\\u{7}\n");
        assert_eq!(super::escape_controls("Zoë"), "Zoë");
    }
}
