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

/// A point of the log in a table: "TIME (seq N)", the time per `--local-time`.
pub fn shown_at(a: &crate::project::At) -> String {
    format!("{} (seq {})", shown(a.at_us), a.seq)
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

/// Text for a table with each RFC 3339 UTC time in it (as [`time`] writes them, in a
/// sentence such as a status detail) shown per `--local-time`.
pub fn shown_in(text: &str) -> String {
    if !LOCAL_TIME.load(std::sync::atomic::Ordering::Relaxed) {
        return text.to_string();
    }
    rewrite_times(text, shown)
}

/// `text` with each RFC 3339 UTC time in whole seconds (`2023-11-14T22:13:20Z`) replaced
/// by `f` of its microseconds (pure).
fn rewrite_times(text: &str, f: impl Fn(i64) -> String) -> String {
    const LEN: usize = "2023-11-14T22:13:20Z".len();
    let mut out = String::with_capacity(text.len() + 16);
    let mut rest = text;
    while let Some(i) = rest.find(|c: char| c.is_ascii_digit()) {
        let (before, from) = rest.split_at(i);
        out.push_str(before);
        let cand = from.get(..LEN).filter(|c| c.ends_with('Z'));
        match cand.map(chrono::DateTime::parse_from_rfc3339) {
            Some(Ok(t)) => {
                out.push_str(&f(t.timestamp_micros()));
                rest = &from[LEN..];
            }
            _ => {
                let n = from
                    .find(|c: char| !c.is_ascii_digit())
                    .unwrap_or(from.len());
                out.push_str(&from[..n]);
                rest = &from[n..];
            }
        }
    }
    out.push_str(rest);
    out
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

/// Serialise a duration in microseconds as whole seconds (JSON names durations in seconds).
pub fn seconds_json<S: serde::Serializer>(us: &i64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_i64(us.div_euclid(1_000_000))
}

/// [`seconds_json`] for an optional duration.
pub fn seconds_json_opt<S: serde::Serializer>(us: &Option<i64>, s: S) -> Result<S::Ok, S::Error> {
    match us {
        Some(us) => seconds_json(us, s),
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
/// Times in it pass through [`Times`]: RFC 3339, never microsecond integers.
pub fn print_json<T: serde::Serialize + ?Sized>(v: &T) -> io::Result<()> {
    let mut out = io::BufWriter::with_capacity(1 << 16, io::stdout().lock());
    let written = serde_json::to_writer_pretty(&mut out, &Times(v))
        .map_err(io::Error::from)
        .and_then(|()| out.write_all(b"\n"))
        .and_then(|()| out.flush());
    match written {
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        r => r,
    }
}

/// `v` as a JSON value for output, its times as [`print_json`] writes them.
pub fn json_value<T: serde::Serialize + ?Sized>(
    v: &T,
) -> Result<serde_json::Value, serde_json::Error> {
    serde_json::to_value(Times(v))
}

/// A value as JSON output shows it: every field of a struct named `NAME_us` that holds
/// microseconds since the epoch (a log point's `at_us`, a lease's `until_us`) is written
/// as `NAME`, an RFC 3339 time. So a log point ([`crate::project::At`]) is `{"seq": N,
/// "at": TIME}` wherever it appears, and the stored forms (snapshots, `log export`) keep
/// their integers. A struct field ending `_us` is an instant by this rule: a duration
/// given to JSON is named in seconds (`age_seconds`).
pub struct Times<'a, T: ?Sized>(pub &'a T);

impl<T: serde::Serialize + ?Sized> serde::Serialize for Times<'_, T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(times::Ser(s))
    }
}

mod times {
    //! The serializer behind [`super::Times`]: it hands everything to the one it wraps,
    //! and rewrites struct fields named `*_us`.
    use serde::ser::{self, Serialize};

    use super::Times;

    pub struct Ser<S>(pub S);

    /// A compound (sequence, map, struct, ...) whose parts are written as [`Times`].
    pub struct Parts<C>(C);

    /// `key` without `_us`, and `value` as an RFC 3339 time (or null), when it is a
    /// microsecond time; None to write it as it is.
    fn instant<T: Serialize + ?Sized>(
        key: &'static str,
        value: &T,
    ) -> Option<(&'static str, Option<String>)> {
        let name = key.strip_suffix("_us").filter(|n| !n.is_empty())?;
        match serde_json::to_value(value).ok()? {
            serde_json::Value::Number(n) => Some((name, Some(super::time(n.as_i64()?)))),
            serde_json::Value::Null => Some((name, None)),
            _ => None,
        }
    }

    macro_rules! plain {
        ($($f:ident($t:ty)),* $(,)?) => {
            $(fn $f(self, v: $t) -> Result<S::Ok, S::Error> { self.0.$f(v) })*
        };
    }

    impl<S: ser::Serializer> ser::Serializer for Ser<S> {
        type Ok = S::Ok;
        type Error = S::Error;
        type SerializeSeq = Parts<S::SerializeSeq>;
        type SerializeTuple = Parts<S::SerializeTuple>;
        type SerializeTupleStruct = Parts<S::SerializeTupleStruct>;
        type SerializeTupleVariant = Parts<S::SerializeTupleVariant>;
        type SerializeMap = Parts<S::SerializeMap>;
        type SerializeStruct = Parts<S::SerializeStruct>;
        type SerializeStructVariant = Parts<S::SerializeStructVariant>;

        plain!(
            serialize_bool(bool),
            serialize_i8(i8),
            serialize_i16(i16),
            serialize_i32(i32),
            serialize_i64(i64),
            serialize_i128(i128),
            serialize_u8(u8),
            serialize_u16(u16),
            serialize_u32(u32),
            serialize_u64(u64),
            serialize_u128(u128),
            serialize_f32(f32),
            serialize_f64(f64),
            serialize_char(char),
            serialize_str(&str),
            serialize_bytes(&[u8]),
            serialize_unit_struct(&'static str),
        );

        fn serialize_none(self) -> Result<S::Ok, S::Error> {
            self.0.serialize_none()
        }
        fn serialize_some<T: Serialize + ?Sized>(self, v: &T) -> Result<S::Ok, S::Error> {
            self.0.serialize_some(&Times(v))
        }
        fn serialize_unit(self) -> Result<S::Ok, S::Error> {
            self.0.serialize_unit()
        }
        fn serialize_unit_variant(
            self,
            name: &'static str,
            index: u32,
            variant: &'static str,
        ) -> Result<S::Ok, S::Error> {
            self.0.serialize_unit_variant(name, index, variant)
        }
        fn serialize_newtype_struct<T: Serialize + ?Sized>(
            self,
            name: &'static str,
            v: &T,
        ) -> Result<S::Ok, S::Error> {
            self.0.serialize_newtype_struct(name, &Times(v))
        }
        fn serialize_newtype_variant<T: Serialize + ?Sized>(
            self,
            name: &'static str,
            index: u32,
            variant: &'static str,
            v: &T,
        ) -> Result<S::Ok, S::Error> {
            self.0
                .serialize_newtype_variant(name, index, variant, &Times(v))
        }
        fn serialize_seq(self, len: Option<usize>) -> Result<Self::SerializeSeq, S::Error> {
            self.0.serialize_seq(len).map(Parts)
        }
        fn serialize_tuple(self, len: usize) -> Result<Self::SerializeTuple, S::Error> {
            self.0.serialize_tuple(len).map(Parts)
        }
        fn serialize_tuple_struct(
            self,
            name: &'static str,
            len: usize,
        ) -> Result<Self::SerializeTupleStruct, S::Error> {
            self.0.serialize_tuple_struct(name, len).map(Parts)
        }
        fn serialize_tuple_variant(
            self,
            name: &'static str,
            index: u32,
            variant: &'static str,
            len: usize,
        ) -> Result<Self::SerializeTupleVariant, S::Error> {
            self.0
                .serialize_tuple_variant(name, index, variant, len)
                .map(Parts)
        }
        fn serialize_map(self, len: Option<usize>) -> Result<Self::SerializeMap, S::Error> {
            self.0.serialize_map(len).map(Parts)
        }
        fn serialize_struct(
            self,
            name: &'static str,
            len: usize,
        ) -> Result<Self::SerializeStruct, S::Error> {
            self.0.serialize_struct(name, len).map(Parts)
        }
        fn serialize_struct_variant(
            self,
            name: &'static str,
            index: u32,
            variant: &'static str,
            len: usize,
        ) -> Result<Self::SerializeStructVariant, S::Error> {
            self.0
                .serialize_struct_variant(name, index, variant, len)
                .map(Parts)
        }
        fn is_human_readable(&self) -> bool {
            self.0.is_human_readable()
        }
    }

    macro_rules! parts {
        ($tr:ident, $f:ident) => {
            impl<C: ser::$tr> ser::$tr for Parts<C> {
                type Ok = C::Ok;
                type Error = C::Error;
                fn $f<T: Serialize + ?Sized>(&mut self, v: &T) -> Result<(), C::Error> {
                    self.0.$f(&Times(v))
                }
                fn end(self) -> Result<C::Ok, C::Error> {
                    self.0.end()
                }
            }
        };
    }
    parts!(SerializeSeq, serialize_element);
    parts!(SerializeTuple, serialize_element);
    parts!(SerializeTupleStruct, serialize_field);
    parts!(SerializeTupleVariant, serialize_field);

    impl<C: ser::SerializeMap> ser::SerializeMap for Parts<C> {
        type Ok = C::Ok;
        type Error = C::Error;
        fn serialize_key<T: Serialize + ?Sized>(&mut self, k: &T) -> Result<(), C::Error> {
            self.0.serialize_key(&Times(k))
        }
        fn serialize_value<T: Serialize + ?Sized>(&mut self, v: &T) -> Result<(), C::Error> {
            self.0.serialize_value(&Times(v))
        }
        fn serialize_entry<K: Serialize + ?Sized, V: Serialize + ?Sized>(
            &mut self,
            k: &K,
            v: &V,
        ) -> Result<(), C::Error> {
            self.0.serialize_entry(&Times(k), &Times(v))
        }
        fn end(self) -> Result<C::Ok, C::Error> {
            self.0.end()
        }
    }

    macro_rules! fields {
        ($tr:ident) => {
            impl<C: ser::$tr> ser::$tr for Parts<C> {
                type Ok = C::Ok;
                type Error = C::Error;
                fn serialize_field<T: Serialize + ?Sized>(
                    &mut self,
                    key: &'static str,
                    v: &T,
                ) -> Result<(), C::Error> {
                    match instant(key, v) {
                        Some((name, t)) => self.0.serialize_field(name, &t),
                        None => self.0.serialize_field(key, &Times(v)),
                    }
                }
                fn skip_field(&mut self, key: &'static str) -> Result<(), C::Error> {
                    self.0.skip_field(key)
                }
                fn end(self) -> Result<C::Ok, C::Error> {
                    self.0.end()
                }
            }
        };
    }
    fields!(SerializeStruct);
    fields!(SerializeStructVariant);
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
        // The same shape from the derived Serialize of the stored types, through Times.
        let lease = crate::project::Lease {
            batch_id: "b".into(),
            instance: "a".into(),
            epoch: 2,
            until_us: a.at_us + 60_000_000,
            from_us: a.at_us,
            unanswered: Vec::new(),
        };
        #[derive(serde::Serialize)]
        struct Stored {
            a: crate::project::At,
            b: Option<crate::project::At>,
            pairs: Vec<(String, crate::project::At)>,
            lease: crate::project::Lease,
            #[serde(skip_serializing_if = "Option::is_none")]
            skipped_us: Option<i64>,
            none_us: Option<i64>,
            text_us: &'static str,
            map: std::collections::BTreeMap<&'static str, crate::project::At>,
        }
        let stored = Stored {
            a,
            b: Some(a),
            pairs: vec![("run".into(), a)],
            lease,
            skipped_us: None,
            none_us: None,
            text_us: "not a time",
            map: [("x", a)].into(),
        };
        let point = serde_json::json!({"seq": 7, "at": "2023-11-14T22:13:20Z"});
        let want = serde_json::json!({
            "a": point,
            "b": point,
            "pairs": [["run", point]],
            "lease": {"batch_id": "b", "instance": "a", "epoch": 2,
                      "until": "2023-11-14T22:14:20Z", "from": "2023-11-14T22:13:20Z"},
            "none": null,
            "text_us": "not a time",
            "map": {"x": point},
        });
        assert_eq!(super::json_value(&stored).unwrap(), want);
        // Written as print_json writes: the same document.
        let text = serde_json::to_string(&super::Times(&stored)).unwrap();
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&text).unwrap(),
            want
        );
        // Without --local-time, a table's time is the JSON's.
        assert_eq!(super::shown(a.at_us), "2023-11-14T22:13:20Z");
        assert_eq!(super::shown_str("-"), "-");
        assert_eq!(
            super::shown_in("sync (2023-11-14T22:13:20Z)"),
            "sync (2023-11-14T22:13:20Z)"
        );
    }

    #[test]
    fn times_in_text_are_found_whole() {
        let t = super::rewrite_times(
            "older than a's last sync (2023-11-14T22:13:20Z (seq 7)); 12 of 2023-11-14T22:13:20.5Z, 2023-11-14Z",
            |us| format!("<{us}>"),
        );
        assert_eq!(
            t,
            "older than a's last sync (<1700000000000000> (seq 7)); 12 of 2023-11-14T22:13:20.5Z, 2023-11-14Z"
        );
        assert_eq!(super::rewrite_times("", |_| String::new()), "");
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
