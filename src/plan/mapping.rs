//! Mapping (pure): a source object as the target should hold it (INTERFACE.md "Attribute
//! mapping"). There is one way of mapping: a table of target attribute = CEL expression,
//! compiled once when the configuration is loaded. The defaults are that same table
//! written as CEL ([`defaults`]); `[mapping.user]` / `[mapping.group]` replace rows of it
//! or add attributes.
//!
//! Each expression sees `src` (lower-cased source attribute name -> list of its text
//! values, trimmed, blank ones left out; an attribute without one is an absent key, tested
//! with `has()`), `dn` and `anchor` (strings). `null` leaves an attribute unset. An
//! expression that fails, or gives a value of the wrong type, for one object makes that
//! object [`Unmappable`]; a group's members are not mapped by an expression: they are the
//! synced members' target ids (resolved in the plan).
//!
//! Speed: expressions of the shapes mappings are mostly written in are lowered at load to
//! plain code ([`Fast`]) that gives the interpreter's value (unit-tested against it), the
//! source attributes it reads given slots at load and an object's found in one pass over
//! its sorted attributes ([`Names`]); the rest are evaluated against one context per
//! object, made only when needed, whose variables are resolved on access from the object
//! itself, borrowed (no copy of its attributes, no map built per object or per
//! expression); a value read is a string borrowing the object's own bytes.

use std::collections::BTreeSet;
use std::fmt;
use std::sync::Arc;

use cel::common::ast::{operators, EntryExpr, Expr, LiteralValue};
use cel::common::traits::{Container, Indexer};
use cel::common::types::{self, CelBool, CelList, CelNull, CelString, Type};
use cel::common::value::{CowVal, Val};
use cel::context::VariableResolver;
use cel::{Context, Env, ExecutionError, Program};
use compact_str::CompactString;
use sha2::{Digest, Sha256};

use crate::config::{SourceKind, TargetKind};
use crate::log::event::Values;
use crate::log::event::{AttrValue, Attrs, ObjectKind};
use crate::project::ObjectRecord;
use crate::target::{MappedGroup, MappedUser};

/// A source object mapped for the target, before member anchors are resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Desired {
    User(MappedUser),
    Group {
        display_name: CompactString,
        /// Member anchors.
        members: BTreeSet<String>,
    },
}

impl Desired {
    pub fn kind(&self) -> ObjectKind {
        match self {
            Desired::User(_) => ObjectKind::User,
            Desired::Group { .. } => ObjectKind::Group,
        }
    }
}

/// Why an object cannot be exported: reported, never guessed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unmappable(pub String);

/// Where a target attribute's value goes in the mapped object.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Slot {
    UserName,
    DisplayName,
    GivenName,
    FamilyName,
    Email,
    Title,
    Department,
    Active,
    /// Any other attribute the target can hold (`MappedUser::extra`, a string).
    Extra,
    /// A reference to another source object (`manager`): the expression gives its DN or
    /// anchor, the plan puts that object's target id in `MappedUser::extra`.
    Reference,
    /// A group's displayName.
    GroupName,
}

impl Slot {
    fn wants_bool(self) -> bool {
        self == Slot::Active
    }
}

/// The target attributes of the default table, by target kind, with their slots.
const SCIM_USER: &[(&str, Slot)] = &[
    ("userName", Slot::UserName),
    ("displayName", Slot::DisplayName),
    ("name.givenName", Slot::GivenName),
    ("name.familyName", Slot::FamilyName),
    ("emails[type eq \"work\"].value", Slot::Email),
    ("title", Slot::Title),
    (
        "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:department",
        Slot::Department,
    ),
    ("active", Slot::Active),
];

const GRAPH_USER: &[(&str, Slot)] = &[
    ("userPrincipalName", Slot::UserName),
    ("displayName", Slot::DisplayName),
    ("givenName", Slot::GivenName),
    ("surname", Slot::FamilyName),
    ("mail", Slot::Email),
    ("jobTitle", Slot::Title),
    ("department", Slot::Department),
    ("accountEnabled", Slot::Active),
];

/// The default table for a source kind, in [`Slot`] order (INTERFACE.md "Identity and
/// attribute mapping"), as CEL.
pub fn defaults(kind: SourceKind) -> [(Slot, &'static str); 8] {
    match kind {
        SourceKind::Ad => [
            (Slot::UserName, "src.userprincipalname[0]"),
            (
                Slot::DisplayName,
                "has(src.displayname) ? src.displayname[0] : has(src.cn) ? src.cn[0] : null",
            ),
            (
                Slot::GivenName,
                "has(src.givenname) ? src.givenname[0] : null",
            ),
            (Slot::FamilyName, "has(src.sn) ? src.sn[0] : null"),
            (Slot::Email, "has(src.mail) ? src.mail[0] : null"),
            (Slot::Title, "has(src.title) ? src.title[0] : null"),
            (
                Slot::Department,
                "has(src.department) ? src.department[0] : null",
            ),
            // userAccountControl bit 0x2: ACCOUNTDISABLE.
            (
                Slot::Active,
                "!has(src.useraccountcontrol) || int(src.useraccountcontrol[0]) / 2 % 2 == 0",
            ),
        ],
        SourceKind::Openldap | SourceKind::Ldap => [
            (
                Slot::UserName,
                "has(src.mail) ? src.mail[0] : src.uid[0]",
            ),
            (
                Slot::DisplayName,
                "has(src.displayname) ? src.displayname[0] : has(src.cn) ? src.cn[0] : null",
            ),
            (
                Slot::GivenName,
                "has(src.givenname) ? src.givenname[0] : null",
            ),
            (Slot::FamilyName, "has(src.sn) ? src.sn[0] : null"),
            (Slot::Email, "has(src.mail) ? src.mail[0] : null"),
            (Slot::Title, "has(src.title) ? src.title[0] : null"),
            (
                Slot::Department,
                "has(src.departmentnumber) ? src.departmentnumber[0] : has(src.ou) ? src.ou[0] : null",
            ),
            // 389 DS's nsAccountLock, compared case-insensitively as 389 does.
            (
                Slot::Active,
                "!(has(src.nsaccountlock) && src.nsaccountlock[0].lowerAscii() == 'true')",
            ),
        ],
    }
}

/// The default group table: displayName.
pub const DEFAULT_GROUP_NAME: &str = "src.cn[0]";

/// Where a rule came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    Default,
    /// `[mapping.user]` / `[mapping.group]` at this line of the file.
    Config {
        line: usize,
    },
}

/// One row of the table: a target attribute and its compiled expression.
pub struct Rule {
    /// The target attribute as the target names it (SCIM path or Graph property).
    pub key: String,
    /// The same, as the mapped object's `extra` keys it: a clone allocates nothing.
    extra_key: CompactString,
    pub slot: Slot,
    pub expr: String,
    pub origin: Origin,
    /// Lower-case source attributes the expression reads (`src.NAME`).
    pub reads: BTreeSet<String>,
    program: Program,
    /// The same expression lowered to plain code when every part of it has one of the
    /// shapes [`Fast`] knows (the default table's rows all do): the interpreter's value,
    /// without the interpreter.
    fast: Option<Fast>,
}

/// An expression lowered to plain code: the subset of CEL mappings are mostly written in
/// (`src.a[0]`, `has(src.a)`, `? :`, `!`, `&&`, `||`, `==`, `!=`, `in [...]` of string
/// literals, string `+`, `lowerAscii()`, `upperAscii()`, string, bool and null literals,
/// `dn`, `anchor`), each shape typed at load so that it runs only where the interpreter
/// would give a value. What the fast path cannot tell for certain (an attribute missing
/// where it is indexed, an operand of another type) it leaves to the interpreter, which
/// then gives its own value or error: the fast path never decides an error.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Fast {
    Null,
    Bool(bool),
    Lit(String),
    Dn,
    Anchor,
    /// `src.a[0]`: the first value.
    First(Key),
    /// `has(src.a)`.
    Has(Key),
    /// `has(src.a) ? src.a[0] : REST` (the default table's shape): one lookup.
    FirstOr(Key, Box<Fast>),
    Cond(Box<[Fast; 3]>),
    Not(Box<Fast>),
    And(Box<[Fast; 2]>),
    Or(Box<[Fast; 2]>),
    /// `==` (true) or `!=` (false) of two strings or two bools.
    Eq(Box<[Fast; 2]>, bool),
    /// String `+`.
    Concat(Box<[Fast; 2]>),
    Lower(Box<Fast>),
    Upper(Box<Fast>),
    /// `x in ['a', 'b']`.
    In(Box<Fast>, Vec<String>),
}

/// A value of the fast path.
#[derive(Clone, Debug, PartialEq, Eq)]
enum FastVal<'a> {
    Null,
    Bool(bool),
    Str(Txt<'a>),
}

/// A string of the fast path: borrowed, or made (a short one inline, without allocating).
#[derive(Clone, Debug, PartialEq, Eq)]
enum Txt<'a> {
    Borrowed(&'a str),
    Made(CompactString),
}

impl std::ops::Deref for Txt<'_> {
    type Target = str;
    fn deref(&self) -> &str {
        match self {
            Txt::Borrowed(s) => s,
            Txt::Made(s) => s,
        }
    }
}

impl Txt<'_> {
    fn into_compact(self) -> CompactString {
        match self {
            Txt::Borrowed(s) => CompactString::new(s),
            Txt::Made(s) => s,
        }
    }
}

/// The source attributes the fast path of one kind's rules reads, each given a slot when
/// the mapping is compiled; an object's are looked up together, in one pass over its
/// sorted attributes ([`Names::resolve`]), rather than by name once per expression.
#[derive(Clone, Debug, Default)]
struct Names {
    /// By slot.
    names: Vec<String>,
    /// (name, slot), sorted by name as [`Attrs`] sorts its names.
    sorted: Vec<(String, usize)>,
}

/// Where `src.NAME` is found: the slot of NAME as written, and of NAME lower-cased (the
/// same slot when it is lower case), looked up in that order as the indexer does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Key {
    exact: usize,
    folded: usize,
}

/// An object's first text value (trimmed, blanks left out) of each of [`Names`], by slot.
type Firsts<'a> = smallvec::SmallVec<[Option<&'a str>; 24]>;

impl Names {
    fn key(&mut self, name: &str) -> Key {
        let exact = self.slot(name);
        let folded = if name.bytes().any(|b| b.is_ascii_uppercase()) {
            self.slot(&name.to_ascii_lowercase())
        } else {
            exact
        };
        Key { exact, folded }
    }

    fn slot(&mut self, name: &str) -> usize {
        match self.names.iter().position(|n| n == name) {
            Some(i) => i,
            None => {
                self.names.push(name.to_string());
                let i = self.names.len() - 1;
                let at = self.sorted.partition_point(|(n, _)| n.as_str() < name);
                self.sorted.insert(at, (name.to_string(), i));
                i
            }
        }
    }

    /// The first values of `attrs` by slot: one merge of two sorted lists.
    fn resolve<'a>(&self, attrs: &'a Attrs) -> Firsts<'a> {
        let mut out: Firsts<'a> = smallvec::smallvec![None; self.names.len()];
        let mut want = self.sorted.iter().peekable();
        'attrs: for (name, values) in attrs {
            let name = name.as_str();
            while let Some((w, slot)) = want.peek() {
                match cmp_names(w, name) {
                    std::cmp::Ordering::Less => {
                        want.next();
                    }
                    std::cmp::Ordering::Equal => {
                        out[*slot] = texts(values).next();
                        want.next();
                        continue 'attrs;
                    }
                    std::cmp::Ordering::Greater => continue 'attrs,
                }
            }
            break;
        }
        out
    }
}

/// `a.cmp(b)`, most often told by the first bytes without a call to compare the rest.
fn cmp_names(a: &str, b: &str) -> std::cmp::Ordering {
    match (a.as_bytes().first(), b.as_bytes().first()) {
        (Some(x), Some(y)) if x != y => x.cmp(y),
        _ => a.cmp(b),
    }
}

impl Key {
    fn first<'a>(self, firsts: &Firsts<'a>) -> Option<&'a str> {
        firsts[self.exact].or(firsts[self.folded])
    }
}

impl Fast {
    /// `e` lowered, when every part of it has one of the shapes; the attributes it reads
    /// given slots in `names`.
    fn lower(e: &Expr, names: &mut Names) -> Option<Fast> {
        let src_field = |e: &Expr, test: bool| match e {
            Expr::Select(s)
                if s.test == test && matches!(&s.operand.expr, Expr::Ident(n) if n == "src") =>
            {
                Some(s.field.clone())
            }
            _ => None,
        };
        fn two(c: &cel::common::ast::CallExpr, names: &mut Names) -> Option<Box<[Fast; 2]>> {
            Some(Box::new([
                Fast::lower(&c.args[0].expr, names)?,
                Fast::lower(&c.args[1].expr, names)?,
            ]))
        }
        match e {
            Expr::Literal(LiteralValue::Null) => Some(Fast::Null),
            Expr::Literal(LiteralValue::Boolean(b)) => Some(Fast::Bool(*b.inner())),
            Expr::Literal(LiteralValue::String(s)) => Some(Fast::Lit(s.inner().to_string())),
            Expr::Ident(n) if n == "dn" => Some(Fast::Dn),
            Expr::Ident(n) if n == "anchor" => Some(Fast::Anchor),
            Expr::Select(_) => src_field(e, true).map(|f| Fast::Has(names.key(&f))),
            Expr::Call(c) => match (c.func_name.as_str(), c.target.as_deref(), c.args.len()) {
                (operators::INDEX, None, 2) if matches!(&c.args[1].expr, Expr::Literal(LiteralValue::Int(i)) if *i.inner() == 0) => {
                    src_field(&c.args[0].expr, false).map(|f| Fast::First(names.key(&f)))
                }
                (operators::CONDITIONAL, None, 3) => {
                    let [c, yes, no] = [
                        Fast::lower(&c.args[0].expr, names)?,
                        Fast::lower(&c.args[1].expr, names)?,
                        Fast::lower(&c.args[2].expr, names)?,
                    ];
                    Some(match (c, yes) {
                        (Fast::Has(a), Fast::First(b)) if a == b => Fast::FirstOr(a, Box::new(no)),
                        (c, yes) => Fast::Cond(Box::new([c, yes, no])),
                    })
                }
                (operators::LOGICAL_NOT, None, 1) => {
                    Some(Fast::Not(Box::new(Fast::lower(&c.args[0].expr, names)?)))
                }
                (operators::LOGICAL_AND, None, 2) => two(c, names).map(Fast::And),
                (operators::LOGICAL_OR, None, 2) => two(c, names).map(Fast::Or),
                (operators::EQUALS, None, 2) => two(c, names).map(|b| Fast::Eq(b, true)),
                (operators::NOT_EQUALS, None, 2) => two(c, names).map(|b| Fast::Eq(b, false)),
                (operators::ADD, None, 2) => two(c, names).map(Fast::Concat),
                (operators::IN, None, 2) => {
                    let Expr::List(l) = &c.args[1].expr else {
                        return None;
                    };
                    if !l.optional_indices.is_empty() {
                        return None;
                    }
                    let items = l
                        .elements
                        .iter()
                        .map(|x| match &x.expr {
                            Expr::Literal(LiteralValue::String(s)) => Some(s.inner().to_string()),
                            _ => None,
                        })
                        .collect::<Option<Vec<String>>>()?;
                    Some(Fast::In(
                        Box::new(Fast::lower(&c.args[0].expr, names)?),
                        items,
                    ))
                }
                ("lowerAscii", Some(t), 0) => {
                    Some(Fast::Lower(Box::new(Fast::lower(&t.expr, names)?)))
                }
                ("upperAscii", Some(t), 0) => {
                    Some(Fast::Upper(Box::new(Fast::lower(&t.expr, names)?)))
                }
                _ => None,
            },
            _ => None,
        }
    }

    /// The value, or None: the interpreter decides (a missing attribute indexed, an operand
    /// of a type the shape does not take).
    fn eval<'a, 'v: 'a>(
        &'a self,
        src: &Firsts<'v>,
        dn: &'a str,
        anchor: &'a str,
    ) -> Option<FastVal<'a>> {
        let bool_of = |f: &'a Fast| match f.eval(src, dn, anchor)? {
            FastVal::Bool(b) => Some(b),
            _ => None,
        };
        let str_of = |f: &'a Fast| match f.eval(src, dn, anchor)? {
            FastVal::Str(s) => Some(s),
            _ => None,
        };
        Some(match self {
            Fast::Null => FastVal::Null,
            Fast::Bool(b) => FastVal::Bool(*b),
            Fast::Lit(s) => FastVal::Str(Txt::Borrowed(s)),
            Fast::Dn => FastVal::Str(Txt::Borrowed(dn)),
            Fast::Anchor => FastVal::Str(Txt::Borrowed(anchor)),
            Fast::First(a) => FastVal::Str(Txt::Borrowed(a.first(src)?)),
            Fast::Has(a) => FastVal::Bool(a.first(src).is_some()),
            Fast::FirstOr(a, rest) => match a.first(src) {
                Some(v) => FastVal::Str(Txt::Borrowed(v)),
                None => rest.eval(src, dn, anchor)?,
            },
            Fast::Cond(x) => {
                let [c, yes, no] = &**x;
                if bool_of(c)? {
                    yes.eval(src, dn, anchor)?
                } else {
                    no.eval(src, dn, anchor)?
                }
            }
            Fast::Not(x) => FastVal::Bool(!bool_of(x)?),
            // Left first; a false left is false whatever the right (as the interpreter).
            Fast::And(x) => FastVal::Bool(bool_of(&x[0])? && bool_of(&x[1])?),
            Fast::Or(x) => FastVal::Bool(bool_of(&x[0])? || bool_of(&x[1])?),
            Fast::Eq(x, eq) => {
                let same = match (x[0].eval(src, dn, anchor)?, x[1].eval(src, dn, anchor)?) {
                    (FastVal::Str(a), FastVal::Str(b)) => *a == *b,
                    (FastVal::Bool(a), FastVal::Bool(b)) => a == b,
                    _ => return None,
                };
                FastVal::Bool(same == *eq)
            }
            Fast::Concat(x) => {
                let (a, b) = (str_of(&x[0])?, str_of(&x[1])?);
                let mut c = CompactString::with_capacity(a.len() + b.len());
                c.push_str(&a);
                c.push_str(&b);
                FastVal::Str(Txt::Made(c))
            }
            Fast::Lower(x) => {
                let mut c = str_of(x)?.into_compact();
                c.make_ascii_lowercase();
                FastVal::Str(Txt::Made(c))
            }
            Fast::Upper(x) => {
                let mut c = str_of(x)?.into_compact();
                c.make_ascii_uppercase();
                FastVal::Str(Txt::Made(c))
            }
            Fast::In(x, items) => {
                let v = str_of(x)?;
                FastVal::Bool(items.iter().any(|i| *i == *v))
            }
        })
    }
}

impl fmt::Debug for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Rule")
            .field("key", &self.key)
            .field("expr", &self.expr)
            .field("origin", &self.origin)
            .finish()
    }
}

/// An attribute given in `[mapping.*]`, before compiling: key, expression and line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawRule {
    pub key: String,
    pub expr: String,
    pub line: usize,
}

/// A row of `[mapping.*]` (or a default) that does not compile: the line it is on (for a
/// row of the file) and what is wrong, naming the key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MappingError {
    pub line: Option<usize>,
    pub message: String,
}

impl fmt::Display for MappingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(l) => write!(f, "line {l}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

impl From<String> for MappingError {
    fn from(message: String) -> MappingError {
        MappingError {
            line: None,
            message,
        }
    }
}

/// The compiled mapping.
pub struct Mapping {
    pub source: SourceKind,
    pub target: TargetKind,
    env: Arc<Env>,
    /// Users' rules, in slot order (userName first), extras after, by key.
    pub user: Vec<Rule>,
    pub group: Vec<Rule>,
    /// The source attributes the users' and the groups' fast paths read, by slot.
    user_names: Names,
    group_names: Names,
}

impl fmt::Debug for Mapping {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Mapping")
            .field("source", &self.source)
            .field("target", &self.target)
            .field("user", &self.user)
            .field("group", &self.group)
            .finish()
    }
}

/// The environment every expression is compiled and run in: the standard library and the
/// strings extension (`lowerAscii()`, `split()`, `replace()`, ...).
fn env() -> std::result::Result<Env, String> {
    let mut env = Env::stdlib();
    env.add_extension(cel::extensions::strings)
        .map_err(|e| e.to_string())?;
    Ok(env)
}

impl Mapping {
    /// The defaults for `source` and `target`, with `user` and `group` rows replacing or
    /// adding to them. An error names the key (and line) at fault, for the caller to
    /// prefix with the file.
    pub fn compile(
        source: SourceKind,
        target: TargetKind,
        user: &[RawRule],
        group: &[RawRule],
    ) -> std::result::Result<Mapping, MappingError> {
        let env = env()?;
        let table = match target {
            TargetKind::Scim => SCIM_USER,
            TargetKind::Graph => GRAPH_USER,
        };
        let mut users = Vec::new();
        let (mut user_names, mut group_names) = (Names::default(), Names::default());
        for (slot, expr) in defaults(source) {
            let key = table
                .iter()
                .find(|(_, s)| *s == slot)
                .map_or("", |(k, _)| *k);
            let given = user.iter().find(|r| r.key == key);
            users.push(match given {
                Some(r) => compile_rule(
                    &env,
                    &mut user_names,
                    &r.key,
                    slot,
                    &r.expr,
                    Origin::Config { line: r.line },
                )?,
                None => compile_rule(&env, &mut user_names, key, slot, expr, Origin::Default)
                    .map_err(|e| format!("the default mapping: {e}"))?,
            });
        }
        let mut extras: Vec<&RawRule> = user
            .iter()
            .filter(|r| !table.iter().any(|(k, _)| *k == r.key))
            .collect();
        extras.sort_by(|a, b| a.key.cmp(&b.key));
        for r in extras {
            let at = |why: String| MappingError {
                line: Some(r.line),
                message: format!("mapping.user.\"{}\": {why}", r.key),
            };
            let slot = match target {
                TargetKind::Scim => crate::target::scim::extra_path(&r.key).map(|p| match p {
                    crate::target::scim::ExtraPath::Reference { .. } => Slot::Reference,
                    _ => Slot::Extra,
                }),
                TargetKind::Graph => {
                    crate::target::graph::extra_property(&r.key).map(|p| match p {
                        crate::target::graph::ExtraProperty::Reference => Slot::Reference,
                        crate::target::graph::ExtraProperty::Plain => Slot::Extra,
                    })
                }
            }
            .map_err(at)?;
            users.push(compile_rule(
                &env,
                &mut user_names,
                &r.key,
                slot,
                &r.expr,
                Origin::Config { line: r.line },
            )?);
        }
        let mut groups = Vec::new();
        for r in group {
            if r.key != "displayName" {
                return Err(MappingError {
                    line: Some(r.line),
                    message: format!(
                        "mapping.group.\"{}\": not a group attribute dirsync maps (displayName; members are the synced members)",
                        r.key
                    ),
                });
            }
        }
        groups.push(match group.first() {
            Some(r) => compile_rule(
                &env,
                &mut group_names,
                "displayName",
                Slot::GroupName,
                &r.expr,
                Origin::Config { line: r.line },
            )?,
            None => compile_rule(
                &env,
                &mut group_names,
                "displayName",
                Slot::GroupName,
                DEFAULT_GROUP_NAME,
                Origin::Default,
            )
            .map_err(|e| format!("the default mapping: {e}"))?,
        });
        Ok(Mapping {
            source,
            target,
            env: Arc::new(env),
            user: users,
            group: groups,
            user_names,
            group_names,
        })
    }

    /// The defaults alone.
    pub fn default_for(source: SourceKind, target: TargetKind) -> Mapping {
        match Mapping::compile(source, target, &[], &[]) {
            Ok(m) => m,
            // The defaults are constants, compiled by the tests: unreachable.
            Err(e) => unreachable!("the default mapping does not compile: {e}"),
        }
    }

    /// SHA-256 (hex) of the effective table: what changes when the mapping does.
    pub fn fingerprint(&self) -> String {
        let mut h = Sha256::new();
        for (kind, rules) in [("user", &self.user), ("group", &self.group)] {
            for r in rules {
                h.update(format!("{kind}\0{}\0{}\n", r.key, r.expr).as_bytes());
            }
        }
        hex::encode(h.finalize())
    }

    /// Map one source object (whose anchor is `anchor`) for the target.
    pub fn map(&self, anchor: &str, o: &ObjectRecord) -> Result<Desired, Unmappable> {
        let vars = Vars {
            src: Src(&o.attrs),
            dn: CelString::from(o.dn.as_str()),
            anchor: CelString::from(anchor),
        };
        let firsts = self.names(o.kind).resolve(&o.attrs);
        // Made only when a rule needs the interpreter.
        let mut ctx = None;
        match o.kind {
            ObjectKind::User => {
                let mut u = MappedUser {
                    active: true,
                    ..MappedUser::default()
                };
                // The other attributes, in key order (as the rules are), put in their map last
                // key first: a map's node is searched from its first key, so each insert then
                // compares one key, where in key order each compares every key before it.
                let mut extra: smallvec::SmallVec<[(CompactString, CompactString); 12]> =
                    smallvec::SmallVec::new();
                for r in &self.user {
                    match eval(&self.env, r, &vars, &firsts, &mut ctx)? {
                        Out::Text(s) => {
                            let slot = match r.slot {
                                Slot::UserName => {
                                    u.user_name = s;
                                    continue;
                                }
                                Slot::DisplayName => &mut u.display_name,
                                Slot::GivenName => &mut u.given_name,
                                Slot::FamilyName => &mut u.family_name,
                                Slot::Email => &mut u.email,
                                Slot::Title => &mut u.title,
                                Slot::Department => &mut u.department,
                                Slot::Extra | Slot::Reference => {
                                    extra.push((r.extra_key.clone(), s));
                                    continue;
                                }
                                Slot::Active | Slot::GroupName => continue,
                            };
                            *slot = Some(s);
                        }
                        Out::Bool(b) => u.active = b,
                        Out::Null if r.slot == Slot::UserName => {
                            return Err(Unmappable(format!(
                                "{} `{}` gave no value: no {} to export",
                                r.key, r.expr, r.key
                            )))
                        }
                        Out::Null => {}
                    }
                }
                for (k, v) in extra.into_iter().rev() {
                    u.extra.insert(k, v);
                }
                Ok(Desired::User(u))
            }
            ObjectKind::Group => {
                let mut display_name = None;
                for r in &self.group {
                    if let Out::Text(s) = eval(&self.env, r, &vars, &firsts, &mut ctx)? {
                        display_name = Some(s);
                    }
                }
                let display_name = display_name.ok_or_else(|| {
                    Unmappable(format!(
                        "displayName `{}` gave no value: no group name to export",
                        self.group.first().map_or("", |r| r.expr.as_str())
                    ))
                })?;
                Ok(Desired::Group {
                    display_name,
                    members: o.members.clone(),
                })
            }
        }
    }

    /// Each rule of the object's kind with what it gives for the object (`mapping test`):
    /// the value as JSON (`null`: unset), or why it fails.
    pub fn each(
        &self,
        anchor: &str,
        o: &ObjectRecord,
    ) -> Vec<(&Rule, Result<serde_json::Value, String>)> {
        let vars = Vars {
            src: Src(&o.attrs),
            dn: CelString::from(o.dn.as_str()),
            anchor: CelString::from(anchor),
        };
        let firsts = self.names(o.kind).resolve(&o.attrs);
        let mut ctx = None;
        self.rules(o.kind)
            .iter()
            .map(|r| {
                let v = match eval(&self.env, r, &vars, &firsts, &mut ctx) {
                    Ok(Out::Text(s)) => Ok(serde_json::Value::from(s.as_str())),
                    Ok(Out::Bool(b)) => Ok(serde_json::Value::Bool(b)),
                    Ok(Out::Null) => Ok(serde_json::Value::Null),
                    Err(e) => Err(e.0),
                };
                (r, v)
            })
            .collect()
    }

    /// The keys and expressions of the reference rules (`manager`): their values are DNs
    /// or anchors until the plan resolves them.
    pub fn references(&self) -> impl Iterator<Item = (&str, &str)> {
        self.user
            .iter()
            .filter(|r| r.slot == Slot::Reference)
            .map(|r| (r.key.as_str(), r.expr.as_str()))
    }

    fn names(&self, kind: ObjectKind) -> &Names {
        match kind {
            ObjectKind::User => &self.user_names,
            ObjectKind::Group => &self.group_names,
        }
    }

    /// The rules of `kind`.
    pub fn rules(&self, kind: ObjectKind) -> &[Rule] {
        match kind {
            ObjectKind::User => &self.user,
            ObjectKind::Group => &self.group,
        }
    }
}

/// A value of the right type for its slot.
enum Out {
    Text(CompactString),
    Bool(bool),
    Null,
}

/// `r` for the object whose variables are `vars`: by the fast path when it gives a value
/// of the slot's type, else by the interpreter in `ctx` (made on first need).
fn eval<'v>(
    env: &Arc<Env>,
    r: &Rule,
    vars: &'v Vars<'v>,
    firsts: &Firsts<'_>,
    ctx: &mut Option<Context<'v, 'v>>,
) -> Result<Out, Unmappable> {
    if let Some(f) = &r.fast {
        match f.eval(firsts, vars.dn.inner(), vars.anchor.inner()) {
            Some(FastVal::Null) => return Ok(Out::Null),
            Some(FastVal::Bool(b)) if r.slot.wants_bool() => return Ok(Out::Bool(b)),
            Some(FastVal::Str(s)) if !r.slot.wants_bool() => {
                // A blank value is no value, as a blank source value is.
                return Ok(if s.trim().is_empty() {
                    Out::Null
                } else {
                    Out::Text(s.into_compact())
                });
            }
            _ => {}
        }
    }
    let ctx = ctx.get_or_insert_with(|| {
        let mut c = Context::with_env(Arc::clone(env));
        c.set_variable_resolver(vars);
        c
    });
    interpret(r, ctx)
}

/// `r` by the interpreter.
fn interpret(r: &Rule, ctx: &Context<'_, '_>) -> Result<Out, Unmappable> {
    let fail = |why: String| Unmappable(format!("{} `{}`: {why}", r.key, r.expr));
    let v = cel::Value::resolve_val(r.program.expression(), ctx).map_err(|e| fail(explain(&e)))?;
    if v.downcast_ref::<CelNull>().is_some() {
        return Ok(Out::Null);
    }
    if r.slot.wants_bool() {
        return match v.downcast_ref::<CelBool>() {
            Some(b) => Ok(Out::Bool(*b.inner())),
            None => Err(fail(format!("gave a {}, not a bool", v.get_type().name()))),
        };
    }
    match v.downcast_ref::<CelString>() {
        // A blank value is no value, as a blank source value is.
        Some(s) if s.inner().trim().is_empty() => Ok(Out::Null),
        Some(s) => Ok(Out::Text(CompactString::new(s.inner()))),
        None => Err(fail(format!(
            "gave a {}, not a string",
            v.get_type().name()
        ))),
    }
}

/// An evaluation error in words an operator can act on.
fn explain(e: &ExecutionError) -> String {
    match e {
        ExecutionError::NoSuchKey(k) => {
            format!("the object has no `{k}` (test it with has(src.{k}))")
        }
        ExecutionError::IndexOutOfBounds(_) => "index out of bounds".into(),
        e => e.to_string(),
    }
}

// ---- the variables an expression sees, borrowed from the object ----

/// `src`, `dn` and `anchor` of one object.
struct Vars<'a> {
    src: Src<'a>,
    dn: CelString<'a>,
    anchor: CelString<'a>,
}

impl VariableResolver for Vars<'_> {
    fn resolve<'b>(&'b self, variable: &str) -> Option<CowVal<'b, 'b>> {
        match variable {
            "src" => Some(CowVal::Borrowed(&self.src)),
            "dn" => Some(CowVal::Borrowed(&self.dn)),
            "anchor" => Some(CowVal::Borrowed(&self.anchor)),
            _ => None,
        }
    }
}

/// The object's attributes as a CEL map of name -> list of strings, read in place.
#[derive(Debug, Clone, Copy)]
struct Src<'a>(&'a Attrs);

/// An attribute's text values, trimmed, blanks left out (borrowed).
fn texts(values: &Values) -> impl Iterator<Item = &str> {
    values.iter().filter_map(|v| match v {
        AttrValue::Text(s) => Some(s.trim()).filter(|s| !s.is_empty()),
        AttrValue::Binary { .. } => None,
    })
}

impl<'a> Src<'a> {
    fn values(&self, name: &str) -> Option<&'a Values> {
        let values = self.0.get(name)?;
        texts(values).next().is_some().then_some(values)
    }
}

impl<'a> Val for Src<'a> {
    fn get_type(&self) -> &Type {
        &types::MAP_TYPE
    }

    fn cel_type() -> &'static Type {
        &types::MAP_TYPE
    }

    fn as_indexer<'b, 'w>(&'b self) -> Option<&'b (dyn Indexer + 'w)>
    where
        Self: 'w,
    {
        Some(self)
    }

    fn as_container(&self) -> Option<&dyn Container> {
        Some(self)
    }

    fn clone_as_boxed<'w>(&self) -> Box<dyn Val + 'w>
    where
        Self: 'w,
    {
        Box::new(*self)
    }
}

impl<'a> Indexer for Src<'a> {
    fn get<'b, 'w>(&'b self, idx: &dyn Val) -> Result<CowVal<'b, 'w>, ExecutionError>
    where
        Self: 'w,
    {
        let name = idx
            .downcast_ref::<CelString>()
            .ok_or_else(|| ExecutionError::UnexpectedType {
                got: idx.get_type().name().to_string(),
                want: "string".into(),
            })?
            .inner();
        let values = match self.values(name) {
            Some(v) => v,
            // Names are lower case; a key spelt otherwise is looked up lower-cased.
            None if name.bytes().any(|b| b.is_ascii_uppercase()) => self
                .values(&name.to_ascii_lowercase())
                .ok_or_else(|| ExecutionError::no_such_key(name))?,
            None => return Err(ExecutionError::no_such_key(name)),
        };
        let list: Vec<Box<dyn Val + 'w>> = texts(values)
            .map(|s| Box::new(CelString::from(s)) as Box<dyn Val + 'w>)
            .collect();
        Ok(CowVal::owned(CelList::from(list)))
    }

    fn steal<'w>(self: Box<Self>, idx: &dyn Val) -> Result<Box<dyn Val + 'w>, ExecutionError>
    where
        Self: 'w,
    {
        self.get(idx).map(CowVal::into_owned)
    }
}

impl Container for Src<'_> {
    fn contains(&self, value: &dyn Val) -> Result<bool, ExecutionError> {
        Ok(value
            .downcast_ref::<CelString>()
            .is_some_and(|s| self.values(&s.inner().to_ascii_lowercase()).is_some()))
    }
}

// ---- compiling and checking ----

/// The coarse type of an expression where it can be told without running it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ty {
    Str,
    Bool,
    Int,
    Double,
    List,
    Map,
    Null,
    /// Not known before it runs.
    Dyn,
}

impl Ty {
    fn name(self) -> &'static str {
        match self {
            Ty::Str => "a string",
            Ty::Bool => "a bool",
            Ty::Int => "an int",
            Ty::Double => "a double",
            Ty::List => "a list",
            Ty::Map => "a map",
            Ty::Null => "null",
            Ty::Dyn => "a value",
        }
    }
}

fn compile_rule(
    env: &Env,
    names: &mut Names,
    key: &str,
    slot: Slot,
    expr: &str,
    origin: Origin,
) -> std::result::Result<Rule, MappingError> {
    let at = |why: String| match (&origin, slot) {
        (Origin::Config { line }, Slot::GroupName) => MappingError {
            line: Some(*line),
            message: format!("mapping.group.\"{key}\": {why}"),
        },
        (Origin::Config { line }, _) => MappingError {
            line: Some(*line),
            message: format!("mapping.user.\"{key}\": {why}"),
        },
        (Origin::Default, _) => MappingError::from(format!("{key}: {why}")),
    };
    let program = env.compile(expr).map_err(|e| {
        let first = e.errors.first();
        at(match first {
            Some(p) => format!(
                "`{expr}`: {} (column {})",
                p.msg.replace('\n', " "),
                p.pos.1 + 1
            ),
            None => format!("`{expr}`: {e}"),
        })
    })?;
    let root = program.expression();
    let mut reads = BTreeSet::new();
    check(env, &root.expr, &mut Vec::new(), &mut reads)
        .map_err(|why| at(format!("`{expr}`: {why}")))?;
    let ty = infer(&root.expr);
    let fits = match slot {
        Slot::Active => matches!(ty, Ty::Bool | Ty::Null | Ty::Dyn),
        _ => matches!(ty, Ty::Str | Ty::Null | Ty::Dyn),
    };
    if !fits {
        return Err(at(format!(
            "`{expr}` gives {}, and {key} takes {}",
            ty.name(),
            if slot.wants_bool() {
                "a bool"
            } else {
                "a string"
            }
        )));
    }
    Ok(Rule {
        key: key.to_string(),
        extra_key: crate::target::interned(key),
        slot,
        expr: expr.to_string(),
        origin,
        reads,
        fast: {
            // Slots only for what lowers: the rest is the interpreter's.
            let mut more = names.clone();
            let fast = Fast::lower(&root.expr, &mut more);
            if fast.is_some() {
                *names = more;
            }
            fast
        },
        program,
    })
}

/// Unknown variables and functions (checked before anything runs), and the source
/// attributes read.
fn check(
    env: &Env,
    e: &Expr,
    bound: &mut Vec<String>,
    reads: &mut BTreeSet<String>,
) -> std::result::Result<(), String> {
    match e {
        Expr::Ident(name) => {
            if !matches!(name.as_str(), "src" | "dn" | "anchor") && !bound.contains(name) {
                return Err(format!(
                    "unknown variable `{name}` (an expression sees src, dn and anchor)"
                ));
            }
        }
        Expr::Select(s) => {
            if matches!(&s.operand.expr, Expr::Ident(n) if n == "src") {
                reads.insert(s.field.to_ascii_lowercase());
            }
            check(env, &s.operand.expr, bound, reads)?;
        }
        Expr::Call(c) => {
            if let Some(t) = &c.target {
                check(env, &t.expr, bound, reads)?;
            }
            for a in &c.args {
                check(env, &a.expr, bound, reads)?;
            }
            // `src['mail']` reads mail too.
            if c.func_name == operators::INDEX && c.args.len() == 2 {
                if let (Expr::Ident(n), Expr::Literal(LiteralValue::String(k))) =
                    (&c.args[0].expr, &c.args[1].expr)
                {
                    if n == "src" {
                        reads.insert(k.inner().to_ascii_lowercase());
                    }
                }
            }
            if !is_operator(&c.func_name) && !function_known(env, c, bound) {
                return Err(format!("unknown function `{}`", c.func_name));
            }
        }
        Expr::Comprehension(c) => {
            check(env, &c.iter_range.expr, bound, reads)?;
            check(env, &c.accu_init.expr, bound, reads)?;
            bound.push(c.iter_var.clone());
            if let Some(v) = &c.iter_var2 {
                bound.push(v.clone());
            }
            bound.push(c.accu_var.clone());
            for x in [&c.loop_cond, &c.loop_step, &c.result] {
                check(env, &x.expr, bound, reads)?;
            }
            bound.truncate(bound.len() - 2 - usize::from(c.iter_var2.is_some()));
        }
        Expr::List(l) => {
            for x in &l.elements {
                check(env, &x.expr, bound, reads)?;
            }
        }
        Expr::Map(m) => {
            for en in &m.entries {
                if let EntryExpr::MapEntry(me) = &en.expr {
                    check(env, &me.key.expr, bound, reads)?;
                    check(env, &me.value.expr, bound, reads)?;
                }
            }
        }
        Expr::Struct(s) => return Err(format!("no message types here (`{}`)", s.type_name)),
        Expr::Literal(_) | Expr::Unspecified => {}
    }
    Ok(())
}

fn is_operator(name: &str) -> bool {
    name.starts_with('_') || name.starts_with('@') || name.starts_with('!') || name.starts_with('-')
}

/// Whether `c`'s function is declared: a call of it with no arguments is then refused for
/// its arguments, not as an undeclared reference.
fn function_known(env: &Env, c: &cel::common::ast::CallExpr, bound: &[String]) -> bool {
    // A namespaced function (`base64.encode(x)`) is written as a call on an identifier
    // that is no variable.
    let probe = match c.target.as_deref().map(|t| &t.expr) {
        Some(Expr::Ident(ns))
            if !matches!(ns.as_str(), "src" | "dn" | "anchor") && !bound.contains(ns) =>
        {
            format!("{ns}.{}()", c.func_name)
        }
        Some(_) => format!("null.{}()", c.func_name),
        None => format!("{}()", c.func_name),
    };
    let Ok(p) = env.compile(&probe) else {
        return false;
    };
    let ctx = Context::with_env(Arc::new(match self::env() {
        Ok(e) => e,
        Err(_) => return false,
    }));
    !matches!(p.execute(&ctx), Err(ExecutionError::UndeclaredReference(_)))
}

/// The type of `e` where it is plain from its shape.
fn infer(e: &Expr) -> Ty {
    match e {
        Expr::Literal(l) => match l {
            LiteralValue::Boolean(_) => Ty::Bool,
            LiteralValue::String(_) => Ty::Str,
            LiteralValue::Int(_) | LiteralValue::UInt(_) => Ty::Int,
            LiteralValue::Double(_) => Ty::Double,
            LiteralValue::Null => Ty::Null,
            LiteralValue::Bytes(_) => Ty::Dyn,
        },
        Expr::List(_) => Ty::List,
        Expr::Map(_) => Ty::Map,
        Expr::Ident(n) => match n.as_str() {
            "src" => Ty::Map,
            "dn" | "anchor" => Ty::Str,
            _ => Ty::Dyn,
        },
        Expr::Select(s) if s.test => Ty::Bool,
        Expr::Select(s) => match &s.operand.expr {
            Expr::Ident(n) if n == "src" => Ty::List,
            _ => Ty::Dyn,
        },
        Expr::Call(c) => {
            let arg = |i: usize| c.args.get(i).map_or(Ty::Dyn, |a| infer(&a.expr));
            match c.func_name.as_str() {
                operators::CONDITIONAL => match (arg(1), arg(2)) {
                    (a, b) if a == b => a,
                    (Ty::Null, b) => b,
                    (a, Ty::Null) => a,
                    _ => Ty::Dyn,
                },
                operators::LOGICAL_AND
                | operators::LOGICAL_OR
                | operators::LOGICAL_NOT
                | operators::EQUALS
                | operators::NOT_EQUALS
                | operators::LESS
                | operators::LESS_EQUALS
                | operators::GREATER
                | operators::GREATER_EQUALS
                | operators::IN
                | "startsWith"
                | "endsWith"
                | "contains"
                | "matches" => Ty::Bool,
                operators::INDEX => match arg(0) {
                    Ty::Map if matches!(&c.args[0].expr, Expr::Ident(n) if n == "src") => Ty::List,
                    Ty::List if is_src_list(&c.args[0].expr) => Ty::Str,
                    _ => Ty::Dyn,
                },
                operators::ADD => match (arg(0), arg(1)) {
                    (a, b) if a == b && a != Ty::Null => a,
                    _ => Ty::Dyn,
                },
                "size" | "int" => Ty::Int,
                "string" | "lowerAscii" | "upperAscii" | "trim" | "replace" | "substring"
                | "join" => Ty::Str,
                "split" => Ty::List,
                "double" => Ty::Double,
                "bool" => Ty::Bool,
                _ => Ty::Dyn,
            }
        }
        Expr::Comprehension(_) | Expr::Struct(_) | Expr::Unspecified => Ty::Dyn,
    }
}

/// `src.NAME` or `src['NAME']`: a list of strings.
fn is_src_list(e: &Expr) -> bool {
    match e {
        Expr::Select(s) => !s.test && matches!(&s.operand.expr, Expr::Ident(n) if n == "src"),
        Expr::Call(c) => {
            c.func_name == operators::INDEX
                && matches!(c.args.first().map(|a| &a.expr), Some(Expr::Ident(n)) if n == "src")
        }
        _ => false,
    }
}

/// The effective table as (kind, key, expression, origin) rows, for `mapping show`.
pub fn rows(m: &Mapping) -> Vec<(ObjectKind, &str, &str, &Origin)> {
    [ObjectKind::User, ObjectKind::Group]
        .into_iter()
        .flat_map(|k| {
            m.rules(k)
                .iter()
                .map(move |r| (k, r.key.as_str(), r.expr.as_str(), &r.origin))
        })
        .collect()
}

/// The group as the target should hold it, with member anchors resolved to target ids by
/// `resolve`; members not (yet) in the target are left out and counted.
pub fn resolve_group(
    display_name: &str,
    members: &BTreeSet<String>,
    resolve: impl Fn(&str) -> Option<String>,
) -> (MappedGroup, usize) {
    let mut unresolved = 0;
    let mut ids = BTreeSet::new();
    for m in members {
        match resolve(m) {
            Some(id) => {
                ids.insert(id);
            }
            None => unresolved += 1,
        }
    }
    (
        MappedGroup {
            display_name: CompactString::new(display_name),
            members: ids,
        },
        unresolved,
    )
}

/// A mapping with a `manager` reference, for the unit tests of the plan and the audit.
#[cfg(test)]
pub(crate) mod testkit {
    use super::{Mapping, RawRule};
    use crate::config::{SourceKind, TargetKind};

    pub const MANAGER: &str = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:manager";
    pub const EXPR: &str = "has(src.manager) ? src.manager[0] : null";

    /// The default mapping of `source` into SCIM, plus the enterprise `manager` from the
    /// source's first `manager` value.
    pub fn with_manager(source: SourceKind) -> Mapping {
        let rule = RawRule {
            key: MANAGER.into(),
            expr: EXPR.into(),
            line: 1,
        };
        match Mapping::compile(source, TargetKind::Scim, &[rule], &[]) {
            Ok(m) => m,
            Err(e) => panic!("the manager mapping compiles: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::project::At;
    use std::collections::BTreeMap;

    fn rec(kind: ObjectKind, attrs: &[(&str, &str)]) -> ObjectRecord {
        let attrs: Attrs = attrs
            .iter()
            .map(|(k, v)| (*k, vec![AttrValue::Text((*v).into())]))
            .collect();
        ObjectRecord {
            kind,
            dn: "CN=x,DC=test,DC=lan".into(),
            attrs,
            members: BTreeSet::from(["m1".to_string(), "m2".to_string()]),
            first_seen: At::default(),
            last_changed: At::default(),
            deletion: None,
        }
    }

    fn map_object(kind: SourceKind, r: &ObjectRecord) -> Result<Desired, Unmappable> {
        Mapping::default_for(kind, TargetKind::Scim).map("a1", r)
    }

    fn raw(key: &str, expr: &str) -> RawRule {
        RawRule {
            key: key.into(),
            expr: expr.into(),
            line: 7,
        }
    }

    #[test]
    fn ad_user_maps_every_attribute_and_disabled_state() {
        let r = rec(
            ObjectKind::User,
            &[
                ("userprincipalname", "ann@test.lan"),
                ("displayname", "Ann Smith"),
                ("givenname", "Ann"),
                ("sn", "Smith"),
                ("mail", "ann.smith@test.lan"),
                ("title", "Engineer"),
                ("department", "R&D"),
                ("useraccountcontrol", "514"),
            ],
        );
        let Desired::User(u) = map_object(SourceKind::Ad, &r).unwrap() else {
            panic!("not a user")
        };
        assert_eq!(
            u,
            MappedUser {
                user_name: "ann@test.lan".into(),
                display_name: Some("Ann Smith".into()),
                given_name: Some("Ann".into()),
                family_name: Some("Smith".into()),
                email: Some("ann.smith@test.lan".into()),
                title: Some("Engineer".into()),
                department: Some("R&D".into()),
                active: false,
                extra: BTreeMap::new(),
            }
        );
        for (uac, active) in [("512", true), ("66050", false), ("66048", true)] {
            let r = rec(
                ObjectKind::User,
                &[("userprincipalname", "b@x"), ("useraccountcontrol", uac)],
            );
            let Desired::User(u) = map_object(SourceKind::Ad, &r).unwrap() else {
                panic!("not a user")
            };
            assert_eq!(u.active, active, "{uac}");
        }
    }

    #[test]
    fn reads_are_what_the_default_mapping_reads() {
        let m = Mapping::default_for(SourceKind::Ad, TargetKind::Scim);
        let user_name = &m.user[0];
        assert_eq!(user_name.key, "userName");
        assert_eq!(
            user_name.reads,
            BTreeSet::from(["userprincipalname".to_string()])
        );
        let m = Mapping::default_for(SourceKind::Openldap, TargetKind::Graph);
        assert_eq!(m.user[0].key, "userPrincipalName");
        assert_eq!(
            m.user[0].reads,
            BTreeSet::from(["mail".to_string(), "uid".to_string()])
        );
    }

    /// The objects the fast path is held to the interpreter on: values present, absent,
    /// blank, padded, in another case, non-ASCII.
    const OBJECTS: &[&[(&str, &str)]] = &[
        &[
            ("uid", "u"),
            ("mail", " m@x "),
            ("cn", "C d"),
            ("ou", "O"),
            ("sn", "S"),
        ],
        &[
            ("userprincipalname", "p@x"),
            ("displayname", "D"),
            ("sn", ""),
            ("useraccountcontrol", "514"),
        ],
        &[("cn", "only")],
        &[("UID", "upper")],
        &[],
        &[("uid", "v"), ("nsaccountlock", "TRUE"), ("title", "T")],
        &[
            ("uid", "w"),
            ("nsaccountlock", " true "),
            ("a", "x"),
            ("b", "y"),
        ],
        &[("uid", "true"), ("nsaccountlock", "false"), ("a", "  ")],
        &[("cn", "ÆbC"), ("uid", "u"), ("a", "x")],
        // More names than are read, before, between and after those read (the slots are
        // found by one pass over both sorted lists), a blank one among them.
        &[
            ("0", "z"),
            ("A", "up"),
            ("a", "x"),
            ("aa", "y"),
            ("b", "  "),
            ("bb", "q"),
            ("c", "c"),
            ("cn", "Cn"),
            ("cna", "no"),
            ("d", "d"),
            ("displayname", "Dn"),
            ("mail", "m@x"),
            ("mailx", "no"),
            ("nsaccountlock", "false"),
            ("o", "o"),
            ("sn", "S"),
            ("title", "T"),
            ("u", "u"),
            ("uid", "me"),
            ("uidx", "no"),
            ("zz", "z"),
        ],
    ];

    /// `m` with every rule's fast path, and without any.
    fn fast_and_slow(m: impl Fn() -> Mapping) -> (Mapping, Mapping) {
        let mut slow = m();
        for r in slow.user.iter_mut().chain(slow.group.iter_mut()) {
            r.fast = None;
        }
        (m(), slow)
    }

    fn assert_same(fast: &Mapping, slow: &Mapping, what: &str) {
        for attrs in OBJECTS {
            for k in [ObjectKind::User, ObjectKind::Group] {
                let r = rec(k, attrs);
                assert_eq!(fast.map("a", &r), slow.map("a", &r), "{what} {attrs:?}");
                let values = |m: &Mapping| -> Vec<(String, Result<serde_json::Value, String>)> {
                    m.each("a", &r)
                        .into_iter()
                        .map(|(rule, v)| (rule.key.clone(), v))
                        .collect()
                };
                assert_eq!(values(fast), values(slow), "{what} {attrs:?}");
            }
        }
    }

    #[test]
    fn the_fast_path_gives_what_the_interpreter_gives() {
        for kind in [SourceKind::Ad, SourceKind::Openldap] {
            let m = Mapping::default_for(kind, TargetKind::Scim);
            let lowered = m.user.iter().filter(|r| r.fast.is_some()).count();
            // AD's active reads an int: the interpreter's.
            let want = if kind == SourceKind::Ad { 7 } else { 8 };
            assert_eq!(lowered, want, "{kind:?}: the default rows");
            let (fast, slow) = fast_and_slow(|| Mapping::default_for(kind, TargetKind::Scim));
            assert_same(&fast, &slow, &format!("{kind:?} defaults"));
        }
        // (slot, expression, lowered): each against the interpreter on every object, value
        // or error alike.
        let cases = [
            ("nickName", "src.uid[0]", true),
            ("nickName", "has(src.mail) ? src.mail[0] : src.uid[0]", true),
            ("nickName", "null", true),
            ("nickName", "'lit'", true),
            ("nickName", "'  '", true),
            ("nickName", "dn", true),
            ("nickName", "anchor + '/' + dn", true),
            ("nickName", "'x-' + src.uid[0]", true),
            ("nickName", "src.uid[0] + '@' + src.mail[0]", true),
            ("nickName", "src.cn[0].lowerAscii()", true),
            ("nickName", "src.cn[0].upperAscii()", true),
            (
                "nickName",
                "has(src.cn) ? src.cn[0].lowerAscii() : null",
                true,
            ),
            ("nickName", "true ? src.uid[0] : 'b'", true),
            ("nickName", "src.uid[0] == 'u' ? 'yes' : 'no'", true),
            (
                "nickName",
                "src.uid[0].lowerAscii() == src.uid[0] ? 'lower' : 'not'",
                true,
            ),
            (
                "nickName",
                "has(src.sn) && src.sn[0] != 'S' ? src.sn[0] : 'none'",
                true,
            ),
            ("nickName", "src.UID[0]", true),
            ("nickName", "has(src.title) ? 'T' : null", true),
            ("nickName", "src.uid[0] in ['u', 'v'] ? 'in' : 'out'", true),
            ("nickName", "has(src.a) || has(src.b) ? 'ab' : 'none'", true),
            ("nickName", "has(src.a) ? src.a[0] : 'blank or none'", true),
            // A bool in a string slot, a comparison of a string with a bool: the
            // interpreter's errors.
            ("nickName", "has(src.title) ? true : 'a'", true),
            ("nickName", "src.uid[0] == true ? 'a' : 'b'", true),
            ("nickName", "src.cn[0].trim()", false),
            ("nickName", "src['uid'][0]", false),
            ("nickName", "has(src.a) ? src.a[1] : 'x'", false),
            ("active", "!has(src.nsaccountlock)", true),
            ("active", "has(src.a) && src.a[0] == 'x'", true),
            ("active", "src.a[0] == 'x' && has(src.b)", true),
            ("active", "src.missing[0] == 'x' || true", true),
            ("active", "false && src.missing[0] == 'x'", true),
            ("active", "true || src.missing[0] == 'x'", true),
            (
                "active",
                "src.uid[0].lowerAscii() in ['tRUE', 'true']",
                true,
            ),
            ("active", "dn == anchor", true),
            ("active", "src.uid[0] in ['U', 'v']", true),
            ("active", "has(src.title) ? true : null", true),
            ("active", "has(src.title) ? true : 'no'", true),
            (
                "active",
                "!(has(src.nsaccountlock) && src.nsaccountlock[0] in ['TRUE', 'true'])",
                true,
            ),
            ("active", "size(src.uid) > 0", false),
        ];
        for (key, expr, lowers) in cases {
            let compile = || {
                Mapping::compile(
                    SourceKind::Openldap,
                    TargetKind::Scim,
                    &[raw(key, expr)],
                    &[],
                )
                .unwrap_or_else(|e| panic!("{expr}: {e}"))
            };
            let m = compile();
            let rule = m.user.iter().find(|r| r.key == key).unwrap();
            assert_eq!(rule.fast.is_some(), lowers, "{expr}");
            let (fast, slow) = fast_and_slow(compile);
            assert_same(&fast, &slow, expr);
        }
    }

    #[test]
    fn the_defaults_read_only_what_imports_keep_anyway() {
        // Otherwise a new version would import more of every object than the last.
        for (kind, kept) in [
            (SourceKind::Ad, crate::source::ad::AD_ATTRIBUTES),
            (
                SourceKind::Openldap,
                crate::source::openldap::LDAP_ATTRIBUTES,
            ),
        ] {
            let m = Mapping::default_for(kind, TargetKind::Scim);
            for r in m.user.iter().chain(&m.group) {
                for a in &r.reads {
                    assert!(kept.contains(&a.as_str()), "{kind:?} {}: {a}", r.key);
                }
            }
        }
    }

    #[test]
    fn ldap_user_name_is_mail_else_uid_and_missing_is_unmappable() {
        let r = rec(ObjectKind::User, &[("uid", "bob"), ("mail", "bob@x.org")]);
        let Desired::User(u) = map_object(SourceKind::Openldap, &r).unwrap() else {
            panic!()
        };
        assert_eq!(u.user_name, "bob@x.org");
        let r = rec(ObjectKind::User, &[("uid", "bob"), ("cn", "Bob")]);
        let Desired::User(u) = map_object(SourceKind::Ldap, &r).unwrap() else {
            panic!()
        };
        assert_eq!(u.user_name, "bob");
        assert_eq!(u.display_name.as_deref(), Some("Bob"));
        let r = rec(ObjectKind::User, &[("cn", "Nobody")]);
        assert_eq!(
            map_object(SourceKind::Openldap, &r),
            Err(Unmappable(
                "userName `has(src.mail) ? src.mail[0] : src.uid[0]`: the object has no `uid` (test it with has(src.uid))".into()
            ))
        );
        // A blank value is no value.
        let r = rec(ObjectKind::User, &[("userprincipalname", "  ")]);
        assert!(map_object(SourceKind::Ad, &r).is_err());
    }

    #[test]
    fn ldap_user_locked_by_ns_account_lock_is_inactive() {
        for (lock, active) in [
            (Some("TRUE"), false),
            (Some("true"), false),
            (Some("FALSE"), true),
            (Some(""), true),
            (None, true),
        ] {
            let mut attrs = vec![("uid", "bob")];
            if let Some(l) = lock {
                attrs.push(("nsaccountlock", l));
            }
            for kind in [SourceKind::Openldap, SourceKind::Ldap] {
                let Desired::User(u) = map_object(kind, &rec(ObjectKind::User, &attrs)).unwrap()
                else {
                    panic!("not a user")
                };
                assert_eq!(u.active, active, "{kind:?} nsAccountLock {lock:?}");
            }
        }
    }

    #[test]
    fn configured_rows_replace_defaults_and_add_extras() {
        let m = Mapping::compile(
            SourceKind::Openldap,
            TargetKind::Scim,
            &[
                raw("userName", "src.uid[0] + '@example.com'"),
                raw("active", "!has(src.pwdaccountlockedtime)"),
                raw(
                    "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:employeeNumber",
                    "src.employeenumber[0]",
                ),
                raw("nickName", "has(src.nick) ? src.nick[0] : null"),
                raw("profileUrl", "'https://x/' + anchor + '?' + dn"),
            ],
            &[raw("displayName", "src.cn[0].upperAscii()")],
        )
        .unwrap();
        let r = rec(
            ObjectKind::User,
            &[
                ("uid", "bob"),
                ("employeenumber", "42"),
                ("pwdaccountlockedtime", "000001010000Z"),
            ],
        );
        let Desired::User(u) = m.map("a1", &r).unwrap() else {
            panic!()
        };
        assert_eq!(
            u,
            MappedUser {
                user_name: "bob@example.com".into(),
                active: false,
                extra: BTreeMap::from([
                    (
                        "profileUrl".into(),
                        "https://x/a1?CN=x,DC=test,DC=lan".into()
                    ),
                    (
                        "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:employeeNumber"
                            .into(),
                        "42".into()
                    ),
                ]),
                ..MappedUser::default()
            }
        );
        let g = rec(ObjectKind::Group, &[("cn", "staff")]);
        assert_eq!(
            m.map("g1", &g).unwrap(),
            Desired::Group {
                display_name: "STAFF".into(),
                members: BTreeSet::from(["m1".to_string(), "m2".to_string()]),
            }
        );
        // An expression that fails for one object: that object alone is unmappable.
        let r = rec(ObjectKind::User, &[("uid", "carol")]);
        assert_eq!(
            m.map("a2", &r),
            Err(Unmappable("urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:employeeNumber `src.employeenumber[0]`: the object has no `employeenumber` (test it with has(src.employeenumber))".into()))
        );
        assert_ne!(
            m.fingerprint(),
            Mapping::default_for(SourceKind::Openldap, TargetKind::Scim).fingerprint()
        );
    }

    #[test]
    fn bad_rows_name_the_line_and_key() {
        let bad = |key: &str, expr: &str| {
            Mapping::compile(SourceKind::Ad, TargetKind::Scim, &[raw(key, expr)], &[])
                .unwrap_err()
                .to_string()
        };
        assert_eq!(
            bad("userName", "src.uid[0"),
            "line 7: mapping.user.\"userName\": `src.uid[0`: Syntax error: missing ']' at '<EOF>' (column 11)"
        );
        assert_eq!(
            bad("userName", "frobnicate(src.uid[0])"),
            "line 7: mapping.user.\"userName\": `frobnicate(src.uid[0])`: unknown function `frobnicate`"
        );
        assert_eq!(
            bad("title", "src.title[0].shout()"),
            "line 7: mapping.user.\"title\": `src.title[0].shout()`: unknown function `shout`"
        );
        assert_eq!(
            bad("userName", "src.uid"),
            "line 7: mapping.user.\"userName\": `src.uid` gives a list, and userName takes a string"
        );
        assert_eq!(
            bad("active", "'yes'"),
            "line 7: mapping.user.\"active\": `'yes'` gives a string, and active takes a bool"
        );
        assert_eq!(
            bad("userName", "user[0]"),
            "line 7: mapping.user.\"userName\": `user[0]`: unknown variable `user` (an expression sees src, dn and anchor)"
        );
        assert!(bad("shoeSize", "'42'").starts_with("line 7: mapping.user.\"shoeSize\": "));
        // Macros bind their variables; known functions pass.
        Mapping::compile(
            SourceKind::Ad,
            TargetKind::Scim,
            &[raw(
                "title",
                "src.title.exists(t, t.startsWith('x')) ? string(size(src.title)) : src.title.map(t, t.lowerAscii()).join(',')",
            )],
            &[],
        )
        .unwrap();
        let e = Mapping::compile(
            SourceKind::Ad,
            TargetKind::Scim,
            &[],
            &[raw("members", "src.member")],
        )
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("line 7: mapping.group.\"members\": "), "{e}");
    }

    #[test]
    fn groups_resolve_members_they_can() {
        let r = rec(ObjectKind::Group, &[("cn", "Staff")]);
        let Desired::Group {
            display_name,
            members,
        } = map_object(SourceKind::Ad, &r).unwrap()
        else {
            panic!()
        };
        let (g, unresolved) = resolve_group(&display_name, &members, |a| {
            (a == "m1").then(|| "T1".to_string())
        });
        assert_eq!(g.display_name, "Staff");
        assert_eq!(g.members, BTreeSet::from(["T1".to_string()]));
        assert_eq!(unresolved, 1);
    }
}
