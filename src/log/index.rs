//! The history index: which events touched which object, and the names an object went by.
//!
//! Two side tables beside `events`, filled in the same transaction as the events they
//! describe (on append, on `log import`, and by the migration that adds them to an existing
//! store) and never covered by the hash chain: they are derived from the payloads and can be
//! rebuilt from them at any time.
//!
//! - `event_anchors (anchor_hash, seq)`: every anchor an event is about: the object imported,
//!   changed, deleted, exported, failed or removed as a duplicate; a group's members as the
//!   change adds or removes them (and as it was imported); each anchor of a held deletion
//!   list; both anchors of a re-key. The anchor is kept as its [`anchor_hash`]: a row of two
//!   integers costs an append a fraction of one with the anchor's text (schema 3), and a
//!   reader keeps only the events whose payload names the anchor ([`names`]), so two anchors
//!   with one hash never mix.
//! - `object_keys (key, anchor)`: the lower-cased names an object was known by: its DN, its
//!   `mail`, `userPrincipalName` and `uid`, the userName, e-mail and group name an export
//!   recorded, and its anchor when that is not already lower case. A key stays once seen:
//!   `object show` checks a key against the object's current values.
//!
//! `dirsync object show` and `log show --anchor` read these instead of scanning the log.

use std::borrow::Cow;

use serde::Deserialize;

use super::event::{AttrValue, AttrValueRef, Attrs, AttrsRef, Event};

/// The source attributes whose values name an object (`object show KEY`), lower case.
pub const KEY_ATTRIBUTES: [&str; 3] = ["mail", "userprincipalname", "uid"];

/// The index rows of some events.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rows {
    /// (anchor, seq), each pair once.
    pub anchors: Vec<(String, u64)>,
    /// (lower-cased key, anchor); may repeat (the stores ignore repeats).
    pub keys: Vec<(String, String)>,
}

impl Rows {
    pub fn is_empty(&self) -> bool {
        self.anchors.is_empty() && self.keys.is_empty()
    }

    /// Add the rows of the event `seq` of type `event_type` with this payload. A payload
    /// that does not read as its type gives no rows (the chain check and decoding report it
    /// elsewhere; the index never refuses what the log accepts).
    pub fn add(&mut self, seq: u64, event_type: &str, payload: &str) {
        if !INDEXED.contains(&event_type) {
            return;
        }
        let Ok(t) = serde_json::from_str::<Touch<'_>>(payload) else {
            return;
        };
        let mut anchors: Vec<&str> = Vec::new();
        let mut keys: Vec<(String, &str)> = Vec::new();
        fn name<'s>(anchors: &mut Vec<&'s str>, keys: &mut Vec<(String, &'s str)>, a: &'s str) {
            anchors.push(a);
            let lower = a.to_lowercase();
            if lower != a {
                keys.push((lower, a));
            }
        }
        if let Some(a) = t.anchor.as_deref() {
            name(&mut anchors, &mut keys, a);
            if let Some(dn) = t.dn.as_deref() {
                keys.push((dn.to_lowercase(), a));
            }
            if let Some(set) = &t.set {
                add_attr_keys(&mut keys, set, a);
            }
            if let Some(s) = &t.state {
                for v in [&s.user_name, &s.email].into_iter().flatten() {
                    keys.push((v.to_lowercase(), a));
                }
                if s.kind.as_deref() == Some("group") {
                    if let Some(v) = &s.display_name {
                        keys.push((v.to_lowercase(), a));
                    }
                }
            }
        }
        if let Some(o) = &t.object {
            name(&mut anchors, &mut keys, &o.anchor);
            keys.push((o.dn.to_lowercase(), &o.anchor));
            add_attr_keys(&mut keys, &o.attrs, &o.anchor);
            anchors.extend(o.members.iter().map(|m| m.as_ref()));
        }
        anchors.extend(t.members_added.iter().map(|m| m.as_ref()));
        anchors.extend(t.members_removed.iter().map(|m| m.as_ref()));
        anchors.extend(t.anchors.iter().map(|m| m.as_ref()));
        anchors.extend(t.unpaired.iter().map(|m| m.as_ref()));
        for r in &t.rekeyed {
            name(&mut anchors, &mut keys, &r.old);
            name(&mut anchors, &mut keys, &r.new);
        }
        self.push(seq, anchors, keys);
    }

    /// [`Rows::add`] for the typed event, as the append path has it before its payload is
    /// written: the same rows (tested against `add` of the payload), without parsing the
    /// payload back.
    pub fn add_event(&mut self, seq: u64, event: &Event) {
        let mut anchors: Vec<&str> = Vec::new();
        let mut keys: Vec<(String, &str)> = Vec::new();
        fn name<'s>(anchors: &mut Vec<&'s str>, keys: &mut Vec<(String, &'s str)>, a: &'s str) {
            anchors.push(a);
            let lower = a.to_lowercase();
            if lower != a {
                keys.push((lower, a));
            }
        }
        match event {
            Event::ObjectImported(i) => {
                let o = &i.object;
                name(&mut anchors, &mut keys, &o.anchor);
                keys.push((o.dn.to_lowercase(), &o.anchor));
                add_typed_attr_keys(&mut keys, &o.attrs, &o.anchor);
                anchors.extend(o.members.iter().map(String::as_str));
            }
            Event::ObjectChanged(c) => {
                name(&mut anchors, &mut keys, &c.anchor);
                if let Some(dn) = &c.dn {
                    keys.push((dn.to_lowercase(), &c.anchor));
                }
                add_typed_attr_keys(&mut keys, &c.set, &c.anchor);
                anchors.extend(c.members_added.iter().map(String::as_str));
                anchors.extend(c.members_removed.iter().map(String::as_str));
            }
            Event::ExportApplied(x) => {
                // Read as `add` reads the payload's `state`: a state that does not read so
                // gives the event no rows at all.
                let state = match &x.state {
                    None => None,
                    Some(v) => match Option::<State<'_>>::deserialize(v) {
                        Ok(s) => s,
                        Err(_) => return,
                    },
                };
                name(&mut anchors, &mut keys, &x.anchor);
                if let Some(s) = state {
                    for v in [s.user_name, s.email].into_iter().flatten() {
                        keys.push((v.to_lowercase(), &x.anchor));
                    }
                    if s.kind.as_deref() == Some("group") {
                        if let Some(v) = s.display_name {
                            keys.push((v.to_lowercase(), &x.anchor));
                        }
                    }
                }
            }
            Event::ObjectDeleted(super::event::ObjectDeleted { anchor, .. })
            | Event::ExportFailed(super::event::ExportFailed { anchor, .. })
            | Event::TargetDuplicateRemoved(super::event::TargetDuplicateRemoved {
                anchor, ..
            })
            | Event::DuplicateRemoved(super::event::DuplicateRemoved { anchor, .. }) => {
                name(&mut anchors, &mut keys, anchor);
            }
            Event::DeletionsHeld(h) => anchors.extend(h.anchors.iter().map(String::as_str)),
            Event::AnchorsMigrated(m) => {
                anchors.extend(m.unpaired.iter().map(String::as_str));
                for r in &m.rekeyed {
                    name(&mut anchors, &mut keys, &r.old);
                    name(&mut anchors, &mut keys, &r.new);
                }
            }
            _ => return,
        }
        self.push(seq, anchors, keys);
    }

    /// Add one event's anchors and keys, sorted and each once.
    fn push(&mut self, seq: u64, mut anchors: Vec<&str>, mut keys: Vec<(String, &str)>) {
        anchors.sort_unstable();
        anchors.dedup();
        self.anchors
            .extend(anchors.into_iter().map(|a| (a.to_string(), seq)));
        keys.sort_unstable();
        keys.dedup();
        self.keys
            .extend(keys.into_iter().map(|(k, a)| (k, a.to_string())));
    }

    /// The rows of stored events.
    pub fn of<'a>(events: impl IntoIterator<Item = &'a super::StoredEvent>) -> Rows {
        let mut r = Rows::default();
        for e in events {
            r.add(e.seq, &e.event_type, &e.payload);
        }
        r
    }

    pub fn extend(&mut self, other: Rows) {
        self.anchors.extend(other.anchors);
        self.keys.extend(other.keys);
    }

    /// The rows as the stores write them ([`Ready`]).
    pub fn ready(self) -> Ready {
        let mut anchors: Vec<(i64, i64)> = self
            .anchors
            .iter()
            .map(|(a, s)| (anchor_hash(a), *s as i64))
            .collect();
        anchors.sort_unstable();
        anchors.dedup();
        let mut keys = self.keys;
        keys.sort_unstable();
        keys.dedup();
        Ready {
            anchors,
            keys,
            types: Vec::new(),
        }
    }
}

/// Index rows ready to write: `event_anchors` rows as (anchor hash, seq), `object_keys`
/// rows and `event_type_blocks` rows, each list sorted in its table's key order (inserts
/// walk each b-tree once, left to right) and each row once.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ready {
    pub anchors: Vec<(i64, i64)>,
    pub keys: Vec<(String, String)>,
    pub types: Vec<(String, i64)>,
}

impl Ready {
    /// The rows of stored events.
    pub fn of(events: &[super::StoredEvent]) -> Ready {
        let mut r = Rows::of(events).ready();
        r.add_types(events);
        r
    }

    /// Add the `event_type_blocks` rows of these events.
    pub fn add_types(&mut self, events: &[super::StoredEvent]) {
        let mut last: Option<(&str, i64)> = None;
        for e in events {
            let row = (e.event_type.as_str(), type_block(e.seq));
            if last != Some(row) {
                self.types.push((row.0.to_string(), row.1));
                last = Some(row);
            }
        }
        self.types.sort_unstable();
        self.types.dedup();
    }
}

/// Seqs per `event_type_blocks` block, as a shift: the block of seq s is s >> 8.
pub const TYPE_BLOCK_BITS: u32 = 8;

/// The `event_type_blocks` block of a seq.
pub fn type_block(seq: u64) -> i64 {
    (seq >> TYPE_BLOCK_BITS) as i64
}

/// The first seq of a block.
pub fn block_start(block: i64) -> u64 {
    (block as u64) << TYPE_BLOCK_BITS
}

/// The `event_anchors` key of an anchor: 64-bit FNV-1a of its UTF-8 bytes, as a signed
/// integer (both databases' integers are). Fixed here for good: stored indexes are made of it.
pub fn anchor_hash(anchor: &str) -> i64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let h = anchor
        .bytes()
        .fold(OFFSET, |h, b| (h ^ u64::from(b)).wrapping_mul(PRIME));
    h as i64
}

/// Whether the event `seq` of this type and payload is about `anchor` (has an
/// `event_anchors` row for it): what a reader checks of each event found by the anchor's hash.
pub fn names(seq: u64, event_type: &str, payload: &str, anchor: &str) -> bool {
    let mut r = Rows::default();
    r.add(seq, event_type, payload);
    r.anchors.iter().any(|(a, _)| a == anchor)
}

fn add_attr_keys<'a>(keys: &mut Vec<(String, &'a str)>, attrs: &AttrsRef<'_>, anchor: &'a str) {
    for (name, values) in &attrs.0 {
        let texts = values.iter().filter_map(|v| match v {
            AttrValueRef::Text(t) => Some(t.as_ref()),
            _ => None,
        });
        add_key_values(keys, name.as_str(), texts, anchor);
    }
}

/// [`add_attr_keys`] for typed attributes.
fn add_typed_attr_keys<'a>(keys: &mut Vec<(String, &'a str)>, attrs: &Attrs, anchor: &'a str) {
    for (name, values) in attrs {
        let texts = values.iter().filter_map(|v| match v {
            AttrValue::Text(t) => Some(t.as_str()),
            _ => None,
        });
        add_key_values(keys, name, texts, anchor);
    }
}

/// The keys of one attribute's text values, when it is one of [`KEY_ATTRIBUTES`].
fn add_key_values<'a, 't>(
    keys: &mut Vec<(String, &'a str)>,
    name: &str,
    texts: impl Iterator<Item = &'t str>,
    anchor: &'a str,
) {
    if KEY_ATTRIBUTES.iter().any(|k| k.eq_ignore_ascii_case(name)) {
        for t in texts.map(str::trim).filter(|t| !t.is_empty()) {
            keys.push((t.to_lowercase(), anchor));
        }
    }
}

/// The event types that name objects.
const INDEXED: &[&str] = &[
    "ObjectImported",
    "ObjectChanged",
    "ObjectDeleted",
    "ExportApplied",
    "ExportFailed",
    "TargetDuplicateRemoved",
    "DuplicateRemoved",
    "DeletionsHeld",
    "AnchorsMigrated",
];

/// What the index reads of any payload: the fields that name objects, whatever the type.
#[derive(Deserialize)]
struct Touch<'a> {
    #[serde(default, borrow)]
    anchor: Option<Cow<'a, str>>,
    /// ObjectChanged's new DN.
    #[serde(default, borrow)]
    dn: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    set: Option<AttrsRef<'a>>,
    #[serde(default, borrow)]
    object: Option<Object<'a>>,
    #[serde(default, borrow)]
    members_added: Vec<Cow<'a, str>>,
    #[serde(default, borrow)]
    members_removed: Vec<Cow<'a, str>>,
    /// DeletionsHeld.
    #[serde(default, borrow)]
    anchors: Vec<Cow<'a, str>>,
    #[serde(default, borrow)]
    rekeyed: Vec<Rekey<'a>>,
    #[serde(default, borrow)]
    unpaired: Vec<Cow<'a, str>>,
    /// ExportApplied's mapped state.
    #[serde(default, borrow)]
    state: Option<State<'a>>,
}

#[derive(Deserialize)]
struct Object<'a> {
    #[serde(borrow)]
    anchor: Cow<'a, str>,
    #[serde(borrow)]
    dn: Cow<'a, str>,
    #[serde(default, borrow)]
    attrs: AttrsRef<'a>,
    #[serde(default, borrow)]
    members: Vec<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct Rekey<'a> {
    #[serde(borrow)]
    old: Cow<'a, str>,
    #[serde(borrow)]
    new: Cow<'a, str>,
}

#[derive(Deserialize)]
struct State<'a> {
    #[serde(default, borrow)]
    kind: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    user_name: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    email: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    display_name: Option<Cow<'a, str>>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::event::*;

    /// The rows of `e` as seq 7, from its payload; the same as from the typed event.
    fn rows(e: &Event) -> Rows {
        let mut r = Rows::default();
        r.add(7, e.event_type(), &e.payload());
        let mut typed = Rows::default();
        typed.add_event(7, e);
        assert_eq!(typed, r, "{e:?}");
        r
    }

    #[test]
    fn the_typed_event_gives_the_rows_its_payload_gives() {
        let attrs = Attrs::from([
            (
                "Mail".into(),
                vec![
                    AttrValue::Text(" A@X ".into()),
                    AttrValue::Text("  ".into()),
                    AttrValue::Binary { b64: vec![1, 2] },
                ],
            ),
            ("uid".into(), vec![AttrValue::Text("Ann".into())]),
            ("cn".into(), vec![AttrValue::Text("Ann".into())]),
        ]);
        let export = |state: Option<serde_json::Value>| {
            Event::ExportApplied(ExportApplied {
                epoch: 1,
                anchor: "Ex".into(),
                kind: ObjectKind::Group,
                op: ExportOp::Update,
                target_id: "t".into(),
                state,
                etag: None,
            })
        };
        let events = vec![
            Event::ObjectChanged(ObjectChanged {
                anchor: "C".into(),
                dn: Some("CN=New,DC=X".into()),
                set: attrs.clone(),
                removed: vec!["mail".into()],
                members_added: vec!["m1".into(), "C".into()],
                members_removed: vec!["m2".into()],
            }),
            Event::ObjectImported(ObjectImported {
                object: SourceObject {
                    anchor: "I".into(),
                    kind: ObjectKind::User,
                    dn: "uid=ann,dc=x".into(),
                    attrs,
                    members: Default::default(),
                },
                returned: true,
            }),
            Event::ObjectDeleted(ObjectDeleted {
                anchor: "D".into(),
                evidence: DeletionEvidence::LeftScope {
                    dn: "CN=Elsewhere".into(),
                },
            }),
            export(None),
            export(Some(serde_json::Value::Null)),
            export(Some(
                serde_json::json!({"kind": "group", "display_name": "Staff",
                "user_name": null, "email": "G@X"}),
            )),
            export(Some(
                serde_json::json!({"kind": "user", "display_name": "Ann"}),
            )),
            export(Some(serde_json::json!({"user_name": 3}))),
            export(Some(serde_json::json!("a string"))),
            export(Some(serde_json::json!(["group", "U", "E", "N"]))),
            Event::ExportFailed(ExportFailed {
                epoch: 1,
                anchor: "F".into(),
                op: ExportOp::Create,
                status: Some(400),
                error: "no".into(),
            }),
            Event::TargetDuplicateRemoved(TargetDuplicateRemoved {
                epoch: 1,
                anchor: "T".into(),
                kind: ObjectKind::User,
                target_id: "t".into(),
                kept: "k".into(),
            }),
            Event::DuplicateRemoved(DuplicateRemoved {
                epoch: 1,
                anchor: "R".into(),
                kind: ObjectKind::User,
                target_id: "t".into(),
            }),
            Event::AnchorsMigrated(AnchorsMigrated {
                from: Some("uid".into()),
                to: "entryUUID".into(),
                rekeyed: vec![crate::log::event::Rekey {
                    old: "Old".into(),
                    new: "new".into(),
                }],
                unpaired: vec!["U".into()],
            }),
            Event::DeletionsHeld(DeletionsHeld {
                plan_hash: "h".into(),
                anchors: vec!["B".into(), "a".into()],
                reason: "r".into(),
            }),
            Event::CursorAdvanced(CursorAdvanced {
                kind: "dirsync".into(),
                cookie: "c".into(),
            }),
        ];
        let mut indexed = 0;
        for e in &events {
            if !rows(e).is_empty() {
                indexed += 1;
            }
        }
        // All but the cursor and the two states that do not read as one.
        assert_eq!(indexed, events.len() - 3);
    }

    #[test]
    fn an_import_names_the_object_its_dn_mail_and_members() {
        let o = SourceObject {
            anchor: "AB-1".into(),
            kind: ObjectKind::Group,
            dn: "CN=Staff,DC=Test".into(),
            attrs: Attrs::from([
                (
                    "mail".into(),
                    vec![AttrValue::Text("Staff@Test.lan".into())],
                ),
                ("cn".into(), vec![AttrValue::Text("Staff".into())]),
            ]),
            members: ["m1".to_string(), "m2".to_string()].into(),
        };
        let r = rows(&Event::ObjectImported(ObjectImported {
            object: o,
            returned: false,
        }));
        assert_eq!(
            r,
            Rows {
                anchors: vec![("AB-1".into(), 7), ("m1".into(), 7), ("m2".into(), 7)],
                keys: vec![
                    ("ab-1".into(), "AB-1".into()),
                    ("cn=staff,dc=test".into(), "AB-1".into()),
                    ("staff@test.lan".into(), "AB-1".into()),
                ],
            }
        );
    }

    #[test]
    fn exports_held_lists_and_rekeys_are_indexed() {
        let r = rows(&Event::ExportApplied(ExportApplied {
            epoch: 1,
            anchor: "a".into(),
            kind: ObjectKind::User,
            op: ExportOp::Create,
            target_id: "t".into(),
            state: Some(serde_json::json!({"kind": "user", "user_name": "Ann@X", "active": true})),
            etag: None,
        }));
        assert_eq!(r.anchors, vec![("a".to_string(), 7)]);
        assert_eq!(r.keys, vec![("ann@x".to_string(), "a".to_string())]);
        let r = rows(&Event::DeletionsHeld(DeletionsHeld {
            plan_hash: "h".into(),
            anchors: vec!["b".into(), "a".into(), "a".into()],
            reason: "r".into(),
        }));
        assert_eq!(r.anchors, vec![("a".to_string(), 7), ("b".to_string(), 7)]);
        let r = rows(&Event::AnchorsMigrated(AnchorsMigrated {
            from: None,
            to: "x".into(),
            rekeyed: vec![crate::log::event::Rekey {
                old: "o".into(),
                new: "n".into(),
            }],
            unpaired: vec![],
        }));
        assert_eq!(r.anchors, vec![("n".to_string(), 7), ("o".to_string(), 7)]);
        let r = rows(&Event::CursorInvalidated(CursorInvalidated {
            reason: "r".into(),
        }));
        assert!(r.is_empty());
        let mut r = Rows::default();
        r.add(1, "ObjectChanged", "not json");
        assert!(r.is_empty());
    }

    #[test]
    fn ready_rows_are_hashed_sorted_and_once_each() {
        let r = Rows {
            anchors: vec![("b".into(), 2), ("a".into(), 1), ("b".into(), 2)],
            keys: vec![
                ("y".into(), "b".into()),
                ("x".into(), "a".into()),
                ("y".into(), "b".into()),
            ],
        };
        let mut anchors = vec![(anchor_hash("a"), 1), (anchor_hash("b"), 2)];
        anchors.sort_unstable();
        assert_eq!(
            r.ready(),
            Ready {
                anchors,
                keys: vec![("x".into(), "a".into()), ("y".into(), "b".into())],
                types: vec![],
            }
        );
    }

    #[test]
    fn the_anchor_hash_is_64_bit_fnv_1a() {
        // The published FNV-1a 64 test values: stored indexes depend on them never changing.
        assert_eq!(anchor_hash(""), 0xcbf2_9ce4_8422_2325_u64 as i64);
        assert_eq!(anchor_hash("a"), 0xaf63_dc4c_8601_ec8c_u64 as i64);
        assert_eq!(anchor_hash("foobar"), 0x8594_4171_f739_67e8_u64 as i64);
        assert_ne!(anchor_hash("AB-1"), anchor_hash("ab-1"));
    }

    #[test]
    fn an_event_names_the_anchors_it_is_about_only() {
        let e = Event::ObjectChanged(ObjectChanged {
            anchor: "a".into(),
            members_added: vec!["m".into()],
            ..Default::default()
        });
        let names = |anchor| names(3, e.event_type(), &e.payload(), anchor);
        assert!(names("a"));
        assert!(names("m"));
        assert!(!names("A"));
        assert!(!names("b"));
    }
}
