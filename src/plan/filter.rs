//! LDAP search filters (RFC 4515) over the source projection (pure): parse a filter, tell
//! whether one filter admits no more than another, and evaluate a filter over the
//! attributes the log holds for an object.
//!
//! Evaluation follows LDAP's default matching for directory strings (caseIgnoreMatch,
//! caseIgnoreSubstringsMatch, caseIgnoreOrderingMatch): values compare case-insensitively
//! with runs of spaces folded; attribute names are case-insensitive. Approximate match
//! (`~=`) is treated as equality. Extensible match (`:=`) and attributes the log does not
//! hold cannot be evaluated: the evaluator says so instead of guessing.

use std::fmt;

use crate::log::event::{AttrValue, Attrs};

/// A parsed filter. Attribute names are lower case, options dropped from nothing (an
/// attribute description with options is kept whole, lower-cased).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Filter {
    And(Vec<Filter>),
    Or(Vec<Filter>),
    Not(Box<Filter>),
    Equal(String, String),
    Approx(String, String),
    GreaterOrEqual(String, String),
    LessOrEqual(String, String),
    Present(String),
    Substring {
        attr: String,
        initial: Option<String>,
        any: Vec<String>,
        last: Option<String>,
    },
    /// `attr:dn:rule:=value`, kept as written (it cannot be evaluated here).
    Extensible(String),
}

/// Why a filter does not parse, with the byte offset where it went wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParseError {
    pub at: usize,
    pub why: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} at character {}", self.why, self.at + 1)
    }
}

/// Why a filter cannot be evaluated over the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Unknown {
    /// The filter tests an attribute the log does not hold.
    Attribute(String),
    /// An extensible match (`attr:rule:=value`): matching rules are the server's.
    Extensible(String),
}

impl fmt::Display for Unknown {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Unknown::Attribute(a) => write!(f, "it tests {a}, which the log does not hold"),
            Unknown::Extensible(x) => {
                write!(
                    f,
                    "it has an extensible match ({x}), which only the server can evaluate"
                )
            }
        }
    }
}

/// Parse an RFC 4515 filter. A filter without its outer parentheses (`uid=ann`) is taken
/// as ldap3 and OpenLDAP's tools take it.
pub fn parse(text: &str) -> Result<Filter, ParseError> {
    let trimmed = text.trim();
    let owned;
    let s = if trimmed.starts_with('(') {
        trimmed
    } else {
        owned = format!("({trimmed})");
        owned.as_str()
    };
    let mut p = Parser {
        s: s.as_bytes(),
        at: 0,
    };
    let f = p.filter()?;
    if p.at != p.s.len() {
        return Err(p.err("unexpected text after the filter"));
    }
    Ok(f)
}

struct Parser<'a> {
    s: &'a [u8],
    at: usize,
}

impl Parser<'_> {
    fn err(&self, why: &str) -> ParseError {
        ParseError {
            at: self.at,
            why: why.to_string(),
        }
    }

    fn peek(&self) -> Option<u8> {
        self.s.get(self.at).copied()
    }

    fn expect(&mut self, c: u8) -> Result<(), ParseError> {
        if self.peek() == Some(c) {
            self.at += 1;
            Ok(())
        } else {
            Err(self.err(&format!("expected `{}`", c as char)))
        }
    }

    fn filter(&mut self) -> Result<Filter, ParseError> {
        self.expect(b'(')?;
        let f = match self.peek() {
            Some(b'&') => {
                self.at += 1;
                Filter::And(self.list()?)
            }
            Some(b'|') => {
                self.at += 1;
                Filter::Or(self.list()?)
            }
            Some(b'!') => {
                self.at += 1;
                Filter::Not(Box::new(self.filter()?))
            }
            Some(_) => self.item()?,
            None => return Err(self.err("the filter ends early")),
        };
        self.expect(b')')?;
        Ok(f)
    }

    fn list(&mut self) -> Result<Vec<Filter>, ParseError> {
        let mut v = Vec::new();
        while self.peek() == Some(b'(') {
            v.push(self.filter()?);
        }
        if v.is_empty() {
            return Err(self.err("`&` and `|` need at least one filter"));
        }
        Ok(v)
    }

    fn item(&mut self) -> Result<Filter, ParseError> {
        let start = self.at;
        // The attribute description (or, for an extensible match, everything up to `:=`).
        while let Some(c) = self.peek() {
            if matches!(c, b'=' | b'~' | b'>' | b'<' | b'(' | b')') {
                break;
            }
            self.at += 1;
        }
        let desc = std::str::from_utf8(&self.s[start..self.at])
            .map_err(|_| self.err("the attribute is not UTF-8"))?;
        if desc.is_empty() {
            return Err(self.err("an attribute name is missing"));
        }
        if desc.ends_with(':') {
            // Extensible: `attr:dn:rule:=value`.
            self.expect(b'=')?;
            self.value()?;
            let text = std::str::from_utf8(&self.s[start..self.at]).unwrap_or_default();
            return Ok(Filter::Extensible(text.to_string()));
        }
        if desc.contains(':')
            || !desc
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-;.".contains(&b))
        {
            return Err(ParseError {
                at: start,
                why: format!("`{desc}` is not an attribute description"),
            });
        }
        let attr = desc.to_ascii_lowercase();
        let op = match self.peek() {
            Some(b'=') => {
                self.at += 1;
                b'='
            }
            Some(c @ (b'~' | b'>' | b'<')) => {
                self.at += 1;
                self.expect(b'=')?;
                c
            }
            _ => return Err(self.err("expected `=`, `~=`, `>=` or `<=`")),
        };
        let raw_start = self.at;
        // Substrings and presence are told apart by unescaped `*`s, so split first.
        let mut parts = vec![Vec::new()];
        while let Some(c) = self.peek() {
            match c {
                b')' => break,
                b'(' => return Err(self.err("`(` must be escaped as \\28 in a value")),
                b'*' => {
                    self.at += 1;
                    parts.push(Vec::new());
                }
                b'\\' => {
                    let hex = self
                        .s
                        .get(self.at + 1..self.at + 3)
                        .and_then(|h| std::str::from_utf8(h).ok())
                        .and_then(|h| u8::from_str_radix(h, 16).ok())
                        .ok_or_else(|| self.err("`\\` must be followed by two hex digits"))?;
                    if let Some(last) = parts.last_mut() {
                        last.push(hex);
                    }
                    self.at += 3;
                }
                _ => {
                    if let Some(last) = parts.last_mut() {
                        last.push(c);
                    }
                    self.at += 1;
                }
            }
        }
        let text = |b: Vec<u8>| {
            String::from_utf8(b).map_err(|_| ParseError {
                at: raw_start,
                why: "the value is not UTF-8".into(),
            })
        };
        if parts.len() == 1 {
            let v = text(parts.pop().unwrap_or_default())?;
            return Ok(match op {
                b'~' => Filter::Approx(attr, v),
                b'>' => Filter::GreaterOrEqual(attr, v),
                b'<' => Filter::LessOrEqual(attr, v),
                _ => Filter::Equal(attr, v),
            });
        }
        if op != b'=' {
            return Err(ParseError {
                at: raw_start,
                why: "`*` is only allowed with `=`".into(),
            });
        }
        if parts.len() == 2 && parts.iter().all(Vec::is_empty) {
            return Ok(Filter::Present(attr));
        }
        let n = parts.len();
        let mut initial = None;
        let mut last = None;
        let mut any = Vec::new();
        for (i, p) in parts.into_iter().enumerate() {
            if i == 0 {
                initial = (!p.is_empty()).then(|| text(p)).transpose()?;
            } else if i == n - 1 {
                last = (!p.is_empty()).then(|| text(p)).transpose()?;
            } else if p.is_empty() {
                return Err(ParseError {
                    at: raw_start,
                    why: "`**` is not a substring filter".into(),
                });
            } else {
                any.push(text(p)?);
            }
        }
        Ok(Filter::Substring {
            attr,
            initial,
            any,
            last,
        })
    }

    /// An extensible match's value: up to the closing parenthesis.
    fn value(&mut self) -> Result<(), ParseError> {
        while let Some(c) = self.peek() {
            if c == b')' {
                return Ok(());
            }
            self.at += 1;
        }
        Err(self.err("the filter ends early"))
    }
}

/// caseIgnoreMatch's form of a value: lower case, leading and trailing spaces dropped,
/// runs of spaces folded into one.
fn fold(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for word in s.split(' ').filter(|w| !w.is_empty()) {
        if !out.is_empty() {
            out.push(' ');
        }
        out.extend(word.chars().flat_map(char::to_lowercase));
    }
    out
}

impl Filter {
    /// Every attribute the filter tests (lower case), extensible matches left out.
    pub fn attributes(&self) -> Vec<&str> {
        let mut out = Vec::new();
        self.collect(&mut out);
        out.sort();
        out.dedup();
        out
    }

    fn collect<'a>(&'a self, out: &mut Vec<&'a str>) {
        match self {
            Filter::And(v) | Filter::Or(v) => v.iter().for_each(|f| f.collect(out)),
            Filter::Not(f) => f.collect(out),
            Filter::Equal(a, _)
            | Filter::Approx(a, _)
            | Filter::GreaterOrEqual(a, _)
            | Filter::LessOrEqual(a, _)
            | Filter::Present(a)
            | Filter::Substring { attr: a, .. } => out.push(a),
            Filter::Extensible(_) => {}
        }
    }

    /// Whether this filter is known to hold of an object that `known` holds of: it is
    /// `known`, or one of `known`'s conjuncts.
    fn known_from(&self, known: &Filter) -> bool {
        self.same(known)
            || matches!(known, Filter::And(parts) if parts.iter().any(|p| self.known_from(p)))
    }

    /// Structural equality with values compared as the server would (case-insensitively).
    fn same(&self, other: &Filter) -> bool {
        use Filter::*;
        let eq = |a: &str, b: &str| fold(a) == fold(b);
        let all = |x: &[Filter], y: &[Filter]| {
            x.len() == y.len() && x.iter().all(|f| y.iter().any(|g| f.same(g)))
        };
        match (self, other) {
            (And(x), And(y)) | (Or(x), Or(y)) => all(x, y),
            (Not(x), Not(y)) => x.same(y),
            (Equal(a, v), Equal(b, w))
            | (Approx(a, v), Approx(b, w))
            | (GreaterOrEqual(a, v), GreaterOrEqual(b, w))
            | (LessOrEqual(a, v), LessOrEqual(b, w)) => a == b && eq(v, w),
            (Present(a), Present(b)) => a == b,
            (
                Substring {
                    attr: a,
                    initial: i1,
                    any: n1,
                    last: l1,
                },
                Substring {
                    attr: b,
                    initial: i2,
                    any: n2,
                    last: l2,
                },
            ) => {
                let opt = |x: &Option<String>, y: &Option<String>| match (x, y) {
                    (Some(x), Some(y)) => eq(x, y),
                    (None, None) => true,
                    _ => false,
                };
                a == b
                    && opt(i1, i2)
                    && opt(l1, l2)
                    && n1.len() == n2.len()
                    && n1.iter().zip(n2).all(|(x, y)| eq(x, y))
            }
            (Extensible(x), Extensible(y)) => x.eq_ignore_ascii_case(y),
            _ => false,
        }
    }

    /// Whether every object this filter admits is one `wider` admits too, as far as can be
    /// told from the filters alone (conservative: false when unsure). `(&(old)(more))`
    /// narrows `old`; dropping a branch of an `|` narrows it.
    pub fn narrows(&self, wider: &Filter) -> bool {
        if self.same(wider) {
            return true;
        }
        match (self, wider) {
            // Every part of `wider` must follow.
            (_, Filter::And(ws)) => ws.iter().all(|w| self.narrows(w)),
            // One branch of `wider` is enough.
            (_, Filter::Or(ws)) if ws.iter().any(|w| self.narrows(w)) => true,
            // Every branch of this filter must be narrower.
            (Filter::Or(xs), _) => xs.iter().all(|x| x.narrows(wider)),
            // One conjunct of this filter narrower is enough.
            (Filter::And(xs), _) => xs.iter().any(|x| x.narrows(wider)),
            _ => false,
        }
    }

    /// Evaluate over an object's stored attributes, `held` naming (lower case) every
    /// attribute the log holds, and `known` a filter the object is known to match (the one
    /// it was imported under): a part of this filter that is `known` or one of its
    /// conjuncts holds without looking at attributes.
    pub fn eval(
        &self,
        attrs: &Attrs,
        held: &dyn Fn(&str) -> bool,
        known: Option<&Filter>,
    ) -> Result<bool, Unknown> {
        if known.is_some_and(|k| self.known_from(k)) {
            return Ok(true);
        }
        let values = |a: &str| -> Result<Vec<String>, Unknown> {
            if !held(a) {
                return Err(Unknown::Attribute(a.to_string()));
            }
            Ok(attrs
                .get(a)
                .map(|vs| {
                    vs.iter()
                        .filter_map(|v| match v {
                            AttrValue::Text(t) => Some(fold(t)),
                            AttrValue::Binary { .. } => None,
                        })
                        .collect()
                })
                .unwrap_or_default())
        };
        Ok(match self {
            Filter::And(v) => {
                // False wins over unknown: one failing part decides.
                let mut unknown = None;
                for f in v {
                    match f.eval(attrs, held, known) {
                        Ok(false) => return Ok(false),
                        Ok(true) => {}
                        Err(u) => unknown = unknown.or(Some(u)),
                    }
                }
                match unknown {
                    Some(u) => return Err(u),
                    None => true,
                }
            }
            Filter::Or(v) => {
                let mut unknown = None;
                for f in v {
                    match f.eval(attrs, held, known) {
                        Ok(true) => return Ok(true),
                        Ok(false) => {}
                        Err(u) => unknown = unknown.or(Some(u)),
                    }
                }
                match unknown {
                    Some(u) => return Err(u),
                    None => false,
                }
            }
            Filter::Not(f) => !f.eval(attrs, held, known)?,
            Filter::Present(a) => {
                if !held(a) {
                    return Err(Unknown::Attribute(a.clone()));
                }
                attrs.get(a.as_str()).is_some_and(|v| !v.is_empty())
            }
            Filter::Equal(a, want) | Filter::Approx(a, want) => {
                let want = fold(want);
                values(a)?.contains(&want)
            }
            Filter::GreaterOrEqual(a, bound) => {
                let bound = fold(bound);
                values(a)?
                    .iter()
                    .any(|v| order(v, &bound) != std::cmp::Ordering::Less)
            }
            Filter::LessOrEqual(a, bound) => {
                let bound = fold(bound);
                values(a)?
                    .iter()
                    .any(|v| order(v, &bound) != std::cmp::Ordering::Greater)
            }
            Filter::Substring {
                attr,
                initial,
                any,
                last,
            } => {
                let initial = initial.as_deref().map(fold);
                let any: Vec<String> = any.iter().map(|s| fold(s)).collect();
                let last = last.as_deref().map(fold);
                values(attr)?
                    .iter()
                    .any(|v| substring_match(v, initial.as_deref(), &any, last.as_deref()))
            }
            Filter::Extensible(x) => return Err(Unknown::Extensible(x.clone())),
        })
    }
}

/// The ordering of two folded values: as integers when both are (integerOrderingMatch, for
/// uidNumber and the like), else as strings (caseIgnoreOrderingMatch).
fn order(v: &str, bound: &str) -> std::cmp::Ordering {
    match (v.parse::<i128>(), bound.parse::<i128>()) {
        (Ok(x), Ok(y)) => x.cmp(&y),
        _ => v.cmp(bound),
    }
}

fn substring_match(v: &str, initial: Option<&str>, any: &[String], last: Option<&str>) -> bool {
    let mut rest = v;
    if let Some(i) = initial {
        match rest.strip_prefix(i) {
            Some(r) => rest = r,
            None => return false,
        }
    }
    for a in any {
        match rest.find(a.as_str()) {
            Some(k) => rest = &rest[k + a.len()..],
            None => return false,
        }
    }
    match last {
        Some(l) => rest.len() >= l.len() && rest.ends_with(l),
        None => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attrs(pairs: &[(&str, &[&str])]) -> Attrs {
        pairs
            .iter()
            .map(|(k, vs)| {
                (
                    *k,
                    vs.iter()
                        .map(|v| AttrValue::Text((*v).into()))
                        .collect::<Vec<AttrValue>>(),
                )
            })
            .collect()
    }

    fn all(_: &str) -> bool {
        true
    }

    #[test]
    fn parses_every_form() {
        assert_eq!(
            parse("(&(objectClass=inetOrgPerson)(!(cn=a*b*c))(|(sn>=m)(sn<=c)(x~=y)(mail=*)))"),
            Ok(Filter::And(vec![
                Filter::Equal("objectclass".into(), "inetOrgPerson".into()),
                Filter::Not(Box::new(Filter::Substring {
                    attr: "cn".into(),
                    initial: Some("a".into()),
                    any: vec!["b".into()],
                    last: Some("c".into()),
                })),
                Filter::Or(vec![
                    Filter::GreaterOrEqual("sn".into(), "m".into()),
                    Filter::LessOrEqual("sn".into(), "c".into()),
                    Filter::Approx("x".into(), "y".into()),
                    Filter::Present("mail".into()),
                ]),
            ]))
        );
        assert_eq!(
            parse("cn=\\2a\\28x\\29"),
            Ok(Filter::Equal("cn".into(), "*(x)".into()))
        );
        assert_eq!(
            parse("(cn=*end)"),
            Ok(Filter::Substring {
                attr: "cn".into(),
                initial: None,
                any: vec![],
                last: Some("end".into()),
            })
        );
        assert_eq!(
            parse("(userAccountControl:1.2.840.113556.1.4.803:=2)"),
            Ok(Filter::Extensible(
                "userAccountControl:1.2.840.113556.1.4.803:=2".into()
            ))
        );
        for bad in [
            "(&(cn=a)",
            "(cn=a))",
            "(=a)",
            "(&)",
            "(cn>=a*)",
            "(cn=\\zz)",
            "(c n=a)",
            "(cn=a(b)",
            "",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
        assert_eq!(
            parse("(&(cn=a)").unwrap_err().to_string(),
            "expected `)` at character 9"
        );
    }

    #[test]
    fn evaluates_as_case_ignore_match() {
        let a = attrs(&[
            ("cn", &["Ann  Smith"]),
            ("title", &["Engineer", "Lead"]),
            ("departmentnumber", &["42"]),
        ]);
        let yes = |f: &str| parse(f).unwrap().eval(&a, &all, None);
        assert_eq!(yes("(CN=ann smith)"), Ok(true));
        assert_eq!(yes("(title=lead)"), Ok(true));
        assert_eq!(yes("(title~=LEAD)"), Ok(true));
        assert_eq!(yes("(title=boss)"), Ok(false));
        assert_eq!(yes("(cn=ann*)"), Ok(true));
        assert_eq!(yes("(cn=*SMITH)"), Ok(true));
        assert_eq!(yes("(cn=a*n*h)"), Ok(true));
        assert_eq!(yes("(cn=a*x*h)"), Ok(false));
        assert_eq!(yes("(cn=*mith*mith)"), Ok(false));
        assert_eq!(yes("(mail=*)"), Ok(false));
        assert_eq!(yes("(title=*)"), Ok(true));
        assert_eq!(yes("(departmentNumber>=40)"), Ok(true));
        assert_eq!(yes("(departmentNumber<=40)"), Ok(false));
        // Integers compare as integers, not as text ("42" < "9" as text).
        assert_eq!(yes("(departmentNumber>=9)"), Ok(true));
        assert_eq!(yes("(departmentNumber<=100)"), Ok(true));
        assert_eq!(yes("(title>=F)"), Ok(true));
        assert_eq!(yes("(title<=F)"), Ok(true));
        assert_eq!(yes("(title>=M)"), Ok(false));
        assert_eq!(yes("(!(title=boss))"), Ok(true));
        assert_eq!(yes("(&(title=lead)(!(cn=bob)))"), Ok(true));
        assert_eq!(yes("(|(title=boss)(cn=ann smith))"), Ok(true));
        let partial = |name: &str| name != "objectclass";
        let f = parse("(&(objectClass=person)(title=boss))").unwrap();
        // One known-false part decides; otherwise the missing attribute is named.
        assert_eq!(f.eval(&a, &partial, None), Ok(false));
        let f = parse("(&(objectClass=person)(title=lead))").unwrap();
        assert_eq!(
            f.eval(&a, &partial, None),
            Err(Unknown::Attribute("objectclass".into()))
        );
        // Known from the filter it was imported under.
        let old = parse("(objectClass=person)").unwrap();
        assert_eq!(f.eval(&a, &partial, Some(&old)), Ok(true));
        let x = parse("(uac:1.2.3:=2)").unwrap();
        assert_eq!(
            x.eval(&a, &all, None),
            Err(Unknown::Extensible("uac:1.2.3:=2".into()))
        );
        assert_eq!(
            Unknown::Attribute("objectclass".into()).to_string(),
            "it tests objectclass, which the log does not hold"
        );
    }

    #[test]
    fn narrower_filters_are_told_from_wider_and_different_ones() {
        let p = |s: &str| parse(s).unwrap();
        let old = p("(objectClass=inetOrgPerson)");
        assert!(p("(objectclass=INETORGPERSON)").narrows(&old));
        assert!(p("(&(objectClass=inetOrgPerson)(title=x))").narrows(&old));
        assert!(!p("(|(objectClass=inetOrgPerson)(title=x))").narrows(&old));
        assert!(!p("(objectClass=person)").narrows(&old));
        let and = p("(&(objectClass=user)(objectCategory=person))");
        assert!(p("(&(objectCategory=person)(objectClass=user)(mail=*))").narrows(&and));
        assert!(!p("(objectClass=user)").narrows(&and));
        let or = p("(|(a=1)(b=2))");
        assert!(p("(a=1)").narrows(&or));
        assert!(p("(|(b=2))").narrows(&or));
        assert!(!p("(|(a=1)(c=3))").narrows(&or));
        assert_eq!(
            p("(&(objectClass=x)(TITLE=y)(title=z))").attributes(),
            ["objectclass", "title"]
        );
    }
}
