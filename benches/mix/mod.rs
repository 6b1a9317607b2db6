//! What the `log` and `audit` benches share: string arguments and the synthetic users and
//! event mix they append.
// Each bench uses the part it needs.
#![allow(dead_code)]

use std::collections::BTreeSet;

use dirsync::log::event::{
    stream, AttrValue, Attrs, CursorAdvanced, DeletionEvidence, Event, ObjectChanged,
    ObjectDeleted, ObjectImported, ObjectKind, SourceObject,
};
use dirsync::log::NewEvent;

/// `--name VALUE` from the arguments.
pub fn opt(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

pub fn text(v: impl Into<String>) -> Vec<AttrValue> {
    vec![AttrValue::Text(v.into().into())]
}

pub fn anchor(i: u64) -> String {
    format!("{:08x}-0000-4000-8000-{:012x}", i / 7, i)
}

/// User `i` as an AD source reads it.
pub fn user(i: u64) -> SourceObject {
    SourceObject {
        anchor: anchor(i),
        kind: ObjectKind::User,
        dn: format!("CN=User {i},OU=Staff,DC=test,DC=lan"),
        attrs: Attrs::from([
            ("cn".into(), text(format!("User {i}"))),
            ("givenname".into(), text("User")),
            ("sn".into(), text(format!("{i}"))),
            ("mail".into(), text(format!("user{i}@test.lan"))),
            (
                "userprincipalname".into(),
                text(format!("user{i}@test.lan")),
            ),
            ("useraccountcontrol".into(), text("512")),
        ]),
        members: BTreeSet::new(),
    }
}

/// Event `i` of a realistic mix: imports of users (`import`), attribute changes, deletions,
/// exports (`export` of an object) and cursors. Changes, deletions and exports concern an
/// object imported earlier among the first `objects` events, spread over all of them.
pub fn mixed(
    i: u64,
    objects: u64,
    import: impl Fn(u64) -> SourceObject,
    export: impl Fn(u64) -> Event,
) -> NewEvent {
    let pick = (i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 16) % objects.max(1);
    // Imports are the events at multiples of 20 (among others).
    let obj = pick - pick % 20;
    let ev = match i % 20 {
        0..=3 => Event::ObjectImported(ObjectImported {
            object: import(i),
            returned: false,
        }),
        4..=16 => Event::ObjectChanged(ObjectChanged {
            anchor: anchor(obj),
            set: Attrs::from([("title".into(), text(format!("Title {i}")))]),
            ..Default::default()
        }),
        17 => Event::ObjectDeleted(ObjectDeleted {
            anchor: anchor(obj),
            evidence: DeletionEvidence::Tombstone {
                deleted_at: None,
                last_known_parent: None,
            },
        }),
        18 => export(obj),
        _ => Event::CursorAdvanced(CursorAdvanced {
            kind: "dirsync".into(),
            cookie: "TVNEUwMAAAAAAAAAAAAAAA==".into(),
        }),
    };
    let s = match &ev {
        Event::ExportApplied(_) => stream::TARGET.to_string(),
        Event::CursorAdvanced(_) => stream::cursor("bench"),
        _ => stream::SOURCE.to_string(),
    };
    NewEvent::new(s, "bench", ev)
}
