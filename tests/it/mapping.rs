//! `[mapping.user]` / `[mapping.group]` (issue 20): CEL expressions against slapd and
//! scim2-server, and the configuration errors they can make.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use crate::common::dirsync;
use crate::sync_export::E2e;

const PEOPLE: &str = "ou=people,dc=example,dc=org";
const GROUPS: &str = "ou=groups,dc=example,dc=org";

const ENTERPRISE: &str = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User";

fn append(lab: &E2e, toml: &str) {
    let p = lab.dir.path().join("dirsync.toml");
    let mut s = std::fs::read_to_string(&p).unwrap();
    s.push_str(toml);
    std::fs::write(p, s).unwrap();
}

fn n(v: &Value, k: &str) -> u64 {
    v[k].as_u64().unwrap_or(0)
}

/// A user resource as dirsync wrote it: without what the server adds (id, meta).
fn written(mut u: Value) -> Value {
    if let Some(o) = u.as_object_mut() {
        o.remove("id");
        o.remove("meta");
    }
    u
}

const MAPPING: &str = r#"
[mapping.user]
userName = "src.uid[0] + '@corp.example'"
active = "!(has(src.employeetype) && src.employeetype[0] == 'disabled')"
"urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:employeeNumber" = "has(src.employeenumber) ? src.employeenumber[0] : null"
"phoneNumbers[type eq \"work\"].value" = "has(src.telephonenumber) ? src.telephonenumber[0] : null"
nickName = "src.cn[0].lowerAscii()"
[mapping.group]
displayName = "'grp-' + src.cn[0]"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expressions_map_user_name_extras_active_and_groups() {
    let lab = E2e::ldap(0, "500").await;
    lab.slapd()
        .ldapadd(&format!(
            "dn: uid=ann,{PEOPLE}\nobjectClass: inetOrgPerson\nuid: ann\ncn: Ann Smith\nsn: Smith\n\
             employeeNumber: 1001\ntelephoneNumber: +49 30 1234\nmail: ann@example.org\n\n\
             dn: uid=bob,{PEOPLE}\nobjectClass: inetOrgPerson\nuid: bob\ncn: Bob Jones\nsn: Jones\n\
             employeeType: disabled\n\n\
             dn: cn=staff,{GROUPS}\nobjectClass: groupOfNames\ncn: staff\nmember: uid=ann,{PEOPLE}\n\n"
        ))
        .await;
    append(&lab, MAPPING);
    let v = lab.sync("a", &[]);
    // ann, bob, staff, and the lab's groups team and crew.
    assert_eq!((n(&v, "created"), n(&v, "unmappable")), (5, 0), "{v}");
    let ann = lab.anchor(&format!("uid=ann,{PEOPLE}")).await;
    let bob = lab.anchor(&format!("uid=bob,{PEOPLE}")).await;
    let users: BTreeMap<String, Value> = lab
        .view
        .users_by_anchor()
        .await
        .into_iter()
        .map(|(a, u)| (a, written(u)))
        .collect();
    assert_eq!(
        users[&ann],
        json!({
            "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User", ENTERPRISE],
            "externalId": ann,
            "userName": "ann@corp.example",
            "displayName": "Ann Smith",
            "nickName": "ann smith",
            "name": {"familyName": "Smith"},
            "emails": [{"value": "ann@example.org", "type": "work", "primary": true}],
            "phoneNumbers": [{"value": "+49 30 1234", "type": "work"}],
            "active": true,
            ENTERPRISE: {"employeeNumber": "1001"},
        })
    );
    assert_eq!(
        users[&bob],
        json!({
            "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
            "externalId": bob,
            "userName": "bob@corp.example",
            "displayName": "Bob Jones",
            "nickName": "bob jones",
            "name": {"familyName": "Jones"},
            "active": false,
        })
    );
    let groups = lab.view.groups_by_anchor().await;
    let names: std::collections::BTreeSet<&str> = groups
        .values()
        .map(|g| g["displayName"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["grp-crew", "grp-staff", "grp-team"].into());

    // `mapping test`: one object's values, from the log.
    let run = lab.cli(&[
        "mapping",
        "test",
        "--dn",
        &format!("UID=bob,{PEOPLE}"),
        "--format",
        "json",
    ]);
    assert_eq!(run.code, 0, "{run:?}");
    let t: Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(
        t,
        json!({
            "anchor": bob,
            "dn": format!("uid=bob,{PEOPLE}"),
            "kind": "user",
            "live": true,
            "mapped": {
                "userName": "bob@corp.example",
                "displayName": "Bob Jones",
                "name.givenName": null,
                "name.familyName": "Jones",
                "emails[type eq \"work\"].value": null,
                "title": null,
                format!("{ENTERPRISE}:department"): null,
                "active": false,
                format!("{ENTERPRISE}:employeeNumber"): null,
                "nickName": "bob jones",
                "phoneNumbers[type eq \"work\"].value": null,
            },
            "errors": [],
        })
    );
    // `object show` maps through the configured mapping too (not the defaults).
    let run = lab.cli(&["object", "show", &ann, "--format", "json"]);
    assert_eq!(run.code, 0, "{run:?}");
    let o: Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(
        (&o["mapped"], &o["unmappable"]),
        (
            &json!({
                "user_name": "ann@corp.example",
                "display_name": "Ann Smith",
                "family_name": "Smith",
                "email": "ann@example.org",
                "active": true,
                "extra": {
                    "nickName": "ann smith",
                    "phoneNumbers[type eq \"work\"].value": "+49 30 1234",
                    format!("{ENTERPRISE}:employeeNumber"): "1001",
                },
            }),
            &Value::Null
        )
    );
    // `mapping show`: the effective table, defaults included, and where each row is from.
    let run = lab.cli(&["mapping", "show", "--format", "json"]);
    assert_eq!(run.code, 0, "{run:?}");
    let t: Value = serde_json::from_str(&run.stdout).unwrap();
    let from: Vec<(String, String)> = t["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["attribute"].as_str().unwrap().into(),
                r["from"].as_str().unwrap().into(),
            )
        })
        .collect();
    let at = |l: u32| format!("dirsync.toml:{l}");
    let base = std::fs::read_to_string(lab.dir.path().join("dirsync.toml"))
        .unwrap()
        .lines()
        .position(|l| l == "[mapping.user]")
        .unwrap() as u32
        + 1;
    assert_eq!(
        from,
        [
            ("userName".to_string(), at(base + 1)),
            ("displayName".into(), "default".into()),
            ("name.givenName".into(), "default".into()),
            ("name.familyName".into(), "default".into()),
            ("emails[type eq \"work\"].value".into(), "default".into()),
            ("title".into(), "default".into()),
            (format!("{ENTERPRISE}:department"), "default".into()),
            ("active".into(), at(base + 2)),
            ("nickName".into(), at(base + 5)),
            ("phoneNumbers[type eq \"work\"].value".into(), at(base + 4)),
            (format!("{ENTERPRISE}:employeeNumber"), at(base + 3)),
            ("displayName".into(), at(base + 7)),
        ]
    );
    assert_eq!(
        t["rules"][1]["expression"],
        "has(src.displayname) ? src.displayname[0] : has(src.cn) ? src.cn[0] : null"
    );

    // A source change reaches the target through the expressions.
    lab.slapd()
        .ldapmodify(&format!(
            "dn: uid=bob,{PEOPLE}\nchangetype: modify\nadd: employeeNumber\nemployeeNumber: 1002\n-\n\
             delete: employeeType\n\n"
        ))
        .await;
    let v = lab.sync("a", &[]);
    assert_eq!(n(&v, "updated"), 1, "{v}");
    let u = written(lab.view.users_by_anchor().await.remove(&bob).unwrap());
    assert_eq!(
        (&u["active"], &u[ENTERPRISE]),
        (&json!(true), &json!({"employeeNumber": "1002"}))
    );

    // A change of the mapping alone reaches every object it changes on the next sync.
    let p = lab.dir.path().join("dirsync.toml");
    let s = std::fs::read_to_string(&p).unwrap();
    std::fs::write(
        &p,
        s.replace("src.cn[0].lowerAscii()", "src.uid[0].upperAscii()"),
    )
    .unwrap();
    // `--dry-run` shows each update's attributes, old -> new, and the totals.
    let before = lab.view.users_by_anchor().await;
    let v = lab.sync("a", &["--dry-run"]);
    let planned: Vec<(String, String, Value)> = v["plan"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["op"].as_str().unwrap().to_string(),
                p["anchor"].as_str().unwrap().to_string(),
                p["changes"].clone(),
            )
        })
        .collect();
    let change = |a: &str, new: &str| {
        (
            "update".to_string(),
            a.to_string(),
            json!([{"attribute": "nickName", "change": format!("{} -> \"{new}\"", before[a]["nickName"])}]),
        )
    };
    let mut want = vec![change(&ann, "ANN"), change(&bob, "BOB")];
    want.sort_by(|x, y| x.1.cmp(&y.1));
    let mut planned = planned;
    planned.sort_by(|x, y| x.1.cmp(&y.1));
    assert_eq!(planned, want);
    let run = lab.cli(&["sync", "--instance", "a", "--dry-run"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(
        run.stdout.contains(&format!(
            "nickName: {} -> \"ANN\"",
            before[&ann]["nickName"]
        )) && run.stdout.contains("totals: update 2\n")
            && run.stdout.contains("attributes updated: nickName 2\n"),
        "{}",
        run.stdout
    );
    let v = lab.sync("a", &[]);
    assert_eq!(n(&v, "updated"), 2, "{v}");
    let users = lab.view.users_by_anchor().await;
    assert_eq!(
        (&users[&ann]["nickName"], &users[&bob]["nickName"]),
        (&json!("ANN"), &json!("BOB"))
    );
    let v = lab.sync("a", &[]);
    assert_eq!(n(&v, "updated") + n(&v, "created"), 0, "{v}");
    // A reconcile reads the mapped attributes back: no drift.
    let v = lab.sync("a", &["--full"]);
    assert_eq!(n(&v, "updated") + n(&v, "created"), 0, "{v}");
    assert_eq!(
        (&v["reconcile"]["missing"], &v["reconcile"]["changed"]),
        (&json!(0), &json!(0)),
        "{v}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expression_failing_for_one_user_leaves_that_user_out() {
    let lab = E2e::ldap(2, "500").await;
    append(
        &lab,
        "[mapping.user]\n\"urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:employeeNumber\" = \"src.employeenumber[0]\"\n",
    );
    lab.slapd()
        .ldapmodify(&format!(
            "dn: uid=u1,{PEOPLE}\nchangetype: modify\nadd: employeeNumber\nemployeeNumber: 7\n\n"
        ))
        .await;
    // Reported, the rest of the cycle exported.
    let v = lab.sync("a", &[]);
    assert_eq!((n(&v, "created"), n(&v, "unmappable")), (3, 1), "{v}");
    let u2 = lab.anchor(&format!("uid=u2,{PEOPLE}")).await;
    assert_eq!(
        v["problems"][0],
        json!({
            "anchor": u2,
            "problem": "unmappable",
            "detail": format!("{ENTERPRISE}:employeeNumber `src.employeenumber[0]`: the object has no `employeenumber` (test it with has(src.employeenumber))"),
        }),
        "{v}"
    );
    assert_eq!(lab.view.count("Users").await, 1);
}

#[test]
fn bad_mappings_exit_2_naming_file_line_and_key_and_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let base = "[store]\nurl = \"sqlite://log.db\"\n\
                [source]\nkind = \"openldap\"\nurl = \"ldap://127.0.0.1:1\"\nbind_dn = \"cn=x\"\n\
                password_env = \"NOPE\"\nbase_dn = \"dc=x\"\n\
                [target]\nkind = \"scim\"\nurl = \"http://127.0.0.1:1/v2\"\ntoken_env = \"NOPE\"\n";
    // Line 14 is the mapping row.
    let cases = [
        (
            "[mapping.user]\nuserName = \"src.uid[0\"\n",
            "dirsync.toml:14: mapping.user.\"userName\": `src.uid[0`: Syntax error: missing ']' at '<EOF>' (column 11)",
        ),
        (
            "[mapping.user]\ntitle = \"shout(src.title[0])\"\n",
            "dirsync.toml:14: mapping.user.\"title\": `shout(src.title[0])`: unknown function `shout`",
        ),
        (
            "[mapping.user]\nuserName = \"src.mail\"\n",
            "dirsync.toml:14: mapping.user.\"userName\": `src.mail` gives a list, and userName takes a string",
        ),
        (
            "[mapping.user]\nactive = \"src.uid[0]\"\n",
            "dirsync.toml:14: mapping.user.\"active\": `src.uid[0]` gives a string, and active takes a bool",
        ),
        (
            "[mapping.user]\nshoeSize = \"'42'\"\n",
            "dirsync.toml:14: mapping.user.\"shoeSize\": not a SCIM user attribute dirsync writes: nickName, profileUrl, userType, preferredLanguage, locale, timezone, name.formatted|middleName|honorificPrefix|honorificSuffix, typed values, extension attributes (URN:attribute)",
        ),
        (
            "[mapping.group]\nmembers = \"src.member\"\n",
            "dirsync.toml:14: mapping.group.\"members\": not a group attribute dirsync maps (displayName; members are the synced members)",
        ),
    ];
    for (mapping, want) in cases {
        std::fs::write(dir.path().join("dirsync.toml"), format!("{base}{mapping}")).unwrap();
        for args in [
            &["sync", "--instance", "a"][..],
            &["init"][..],
            &["mapping", "show"][..],
        ] {
            let run = dirsync(dir.path(), args);
            assert_eq!(run.code, 2, "{args:?} {run:?}");
            assert_eq!(
                run.stderr.trim(),
                format!("dirsync: configuration: {want}"),
                "{args:?}"
            );
            assert!(!dir.path().join("log.db").exists(), "nothing written");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn employee_number_and_a_manager_chain_are_created_in_one_cycle() {
    let lab = E2e::ldap(0, "500").await;
    lab.slapd()
        .ldapadd(&format!(
            "dn: uid=ann,{PEOPLE}\nobjectClass: inetOrgPerson\nuid: ann\ncn: Ann\nsn: A\nemployeeNumber: 1\n\n\
             dn: uid=bob,{PEOPLE}\nobjectClass: inetOrgPerson\nuid: bob\ncn: Bob\nsn: B\nemployeeNumber: 2\n\
             manager: uid=ann,{PEOPLE}\n\n\
             dn: uid=carol,{PEOPLE}\nobjectClass: inetOrgPerson\nuid: carol\ncn: Carol\nsn: C\nemployeeNumber: 3\n\
             manager: UID=Bob,{PEOPLE}\n\n\
             dn: uid=dave,{PEOPLE}\nobjectClass: inetOrgPerson\nuid: dave\ncn: Dave\nsn: D\nemployeeNumber: 4\n\
             manager: uid=nobody,{PEOPLE}\n\n"
        ))
        .await;
    append(
        &lab,
        &format!(
            "[mapping.user]\n\"{ENTERPRISE}:employeeNumber\" = \"src.employeenumber[0]\"\n\
             \"{ENTERPRISE}:manager\" = \"has(src.manager) ? src.manager[0] : null\"\n"
        ),
    );
    let v = lab.sync("a", &[]);
    // Four users and the lab's two groups created; the two managers set once their users
    // had target ids, in the same cycle; dave's manager names nobody: dave is exported
    // without one, and that is reported.
    assert_eq!(
        (
            n(&v, "created"),
            n(&v, "updated"),
            n(&v, "unmappable"),
            n(&v, "unresolved_references")
        ),
        (6, 2, 0, 1),
        "{v}"
    );
    let dave_anchor = lab.anchor(&format!("uid=dave,{PEOPLE}")).await;
    let unresolved = |anchor: &str, value: &str| {
        json!({
            "anchor": anchor,
            "problem": "unresolved_reference",
            "detail": format!(
                "{ENTERPRISE}:manager `has(src.manager) ? src.manager[0] : null` gave \"{value}\", which names no object in scope (no live object has that DN or anchor): exported without {ENTERPRISE}:manager"
            ),
        })
    };
    let nobody = format!("uid=nobody,{PEOPLE}");
    assert_eq!(
        v["problems"],
        json!([unresolved(&dave_anchor, &nobody)]),
        "{v}"
    );
    let users = lab.view.users_by_anchor().await;
    let by_name = |name: &str| {
        users
            .values()
            .find(|u| u["userName"] == name)
            .unwrap_or_else(|| panic!("{name}"))
    };
    let (ann, bob, carol) = (by_name("ann"), by_name("bob"), by_name("carol"));
    assert_eq!(by_name("dave")[ENTERPRISE], json!({"employeeNumber": "4"}));
    assert_eq!(ann[ENTERPRISE], json!({"employeeNumber": "1"}));
    assert_eq!(
        bob[ENTERPRISE],
        json!({"employeeNumber": "2", "manager": {"value": ann["id"]}})
    );
    assert_eq!(
        carol[ENTERPRISE],
        json!({"employeeNumber": "3", "manager": {"value": bob["id"]}})
    );
    // Nothing left to do, and a reconcile reads the managers back; dave's is reported
    // again by each whole plan, in the table too. A cycle that plans only what changed
    // since (nothing) does not plan dave and reports nothing.
    let v = lab.sync("a", &[]);
    assert_eq!(
        (n(&v, "planned_objects"), v.get("problems")),
        (0, None),
        "{v}"
    );
    let v = lab.sync("a", &["--full"]);
    assert_eq!(n(&v, "updated") + n(&v, "created"), 0, "{v}");
    assert_eq!(v["reconcile"]["changed"], json!(0), "{v}");
    assert_eq!(
        v["problems"],
        json!([unresolved(&dave_anchor, &nobody)]),
        "{v}"
    );
    let table = lab.cli(&["sync", "--instance", "a", "--full"]);
    assert_eq!(table.code, 0, "{table:?}");
    let problems: Vec<Vec<&str>> = table
        .stdout
        .split_once("\nproblems:\n")
        .map_or("", |(_, p)| p)
        .lines()
        .map(|l| l.split_whitespace().take(2).collect())
        .collect();
    assert_eq!(
        problems,
        vec![
            vec!["PROBLEM", "ANCHOR"],
            vec!["unresolved_reference", &dave_anchor]
        ],
        "{}",
        table.stdout
    );
    assert!(
        table.stdout.contains(&format!(
            "gave \"{nobody}\", which names no object in scope"
        )),
        "{}",
        table.stdout
    );
    // `replay --what-if` under the same configuration names the same reference, with the
    // detail sync gave.
    let w = lab.cli(&["replay", "--what-if", "dirsync.toml", "--format", "json"]);
    assert_eq!(w.code, 0, "{w:?}");
    let w: Value = serde_json::from_str(&w.stdout).unwrap();
    assert_eq!(
        w["unresolved"],
        json!([{
            "anchor": dave_anchor,
            "kind": "user",
            "name": format!("uid=dave,{PEOPLE}"),
            "detail": [unresolved(&dave_anchor, &nobody)["detail"]],
        }]),
        "{w}"
    );
    let (ann_id, bob_id, carol_id) = (
        ann["id"].as_str().unwrap().to_string(),
        bob["id"].as_str().unwrap().to_string(),
        carol["id"].as_str().unwrap().to_string(),
    );
    let ann_anchor = lab.anchor(&format!("uid=ann,{PEOPLE}")).await;
    let bob_anchor = lab.anchor(&format!("uid=bob,{PEOPLE}")).await;
    let recorded_manager =
        |state: &dirsync::project::State, anchor: &str| match state.ledger.entries[anchor]
            .state
            .as_ref()
        {
            Some(dirsync::target::Mapped::User(u)) => u
                .extra
                .get(format!("{ENTERPRISE}:manager").as_str())
                .map(|m| m.to_string()),
            other => panic!("{other:?}"),
        };

    // The manager renamed: the same object, so bob keeps ann's target id. (slapd here has
    // no refint overlay: bob's manager is changed to the new DN as refint, or AD, would.)
    lab.slapd()
        .ldapmodrdn(&format!("uid=ann,{PEOPLE}"), "uid=anna", None)
        .await;
    lab.slapd()
        .ldapmodify(&format!(
            "dn: uid=bob,{PEOPLE}\nchangetype: modify\nreplace: manager\nmanager: uid=anna,{PEOPLE}\n\n"
        ))
        .await;
    let before = lab.view.users_by_anchor().await;
    let v = lab.sync("a", &[]);
    // ann's userName follows her uid; bob has nothing to update.
    assert_eq!((n(&v, "updated"), n(&v, "created")), (1, 0), "{v}");
    let users = lab.view.users_by_anchor().await;
    assert_eq!(users[&ann_anchor]["id"], json!(ann_id));
    assert_eq!(users[&ann_anchor]["userName"], json!("anna"));
    assert_eq!(users[&bob_anchor], before[&bob_anchor]);
    assert_eq!(
        recorded_manager(&lab.state().await, &bob_anchor),
        Some(ann_id.clone())
    );

    // The manager deleted: bob's manager cleared, in the target and in the log; his
    // manager attribute still names her (no refint here), which is reported. The cycle
    // plans anna and her reports (bob), not dave: his problem is not news.
    lab.slapd().ldapdelete(&format!("uid=anna,{PEOPLE}")).await;
    let v = lab.sync("a", &[]);
    assert_eq!(
        (
            n(&v, "updated"),
            n(&v, "deleted"),
            n(&v, "created"),
            n(&v, "unresolved_references"),
            n(&v, "planned_objects"),
        ),
        (1, 1, 0, 1, 2),
        "{v}"
    );
    let want = vec![unresolved(&bob_anchor, &format!("uid=anna,{PEOPLE}"))];
    assert_eq!(v["problems"], Value::Array(want), "{v}");
    let users = lab.view.users_by_anchor().await;
    assert!(!users.contains_key(&ann_anchor));
    assert_eq!(users[&bob_anchor]["id"], json!(bob_id));
    assert_eq!(
        users[&bob_anchor][ENTERPRISE],
        json!({"employeeNumber": "2"})
    );
    let carol_now = users.values().find(|u| u["userName"] == "carol").unwrap();
    assert_eq!(
        (&carol_now["id"], &carol_now[ENTERPRISE]),
        (
            &json!(carol_id),
            &json!({"employeeNumber": "3", "manager": {"value": bob_id}})
        )
    );
    assert_eq!(recorded_manager(&lab.state().await, &bob_anchor), None);
    let v = lab.sync("a", &["--full"]);
    assert_eq!(n(&v, "updated") + n(&v, "created"), 0, "{v}");
    assert_eq!(v["reconcile"]["changed"], json!(0), "{v}");
}

const ACME: &str = "urn:example:params:scim:schemas:extension:acme:2.0:User";

/// scim2-server publishing one more extension of User, ACME with `badgeNumber`; and the
/// files that make it so (kept alive with the server).
async fn scim_with_acme() -> (crate::lab::Scim, tempfile::TempDir) {
    // The schemas and resource types scim2-server publishes by default, plus ACME.
    let plain = crate::lab::Scim::tenant().await;
    let http = reqwest::Client::new();
    let read = |what: &'static str| {
        let req = http
            .get(format!("{}/{what}", plain.base_url()))
            .bearer_auth(plain.token());
        async move {
            let v: Value = req.send().await.unwrap().json().await.unwrap();
            let mut list = v["Resources"].as_array().unwrap().clone();
            for r in &mut list {
                r.as_object_mut().unwrap().remove("meta");
            }
            list
        }
    };
    let mut schemas = read("Schemas").await;
    schemas.push(json!({
        "schemas": ["urn:ietf:params:scim:schemas:core:2.0:Schema"],
        "id": ACME,
        "name": "AcmeUser",
        "description": "Acme's user extension",
        "attributes": [{
            "name": "badgeNumber", "type": "string", "multiValued": false, "required": false,
            "caseExact": false, "mutability": "readWrite", "returned": "default",
            "uniqueness": "none",
        }],
    }));
    let mut types = read("ResourceTypes").await;
    let user = types.iter_mut().find(|t| t["name"] == "User").unwrap();
    user["schemaExtensions"]
        .as_array_mut()
        .unwrap()
        .push(json!({"schema": ACME, "required": false}));
    let files = tempfile::tempdir().unwrap();
    let (s, t) = (
        files.path().join("schemas.json"),
        files.path().join("types.json"),
    );
    std::fs::write(&s, Value::Array(schemas).to_string()).unwrap();
    std::fs::write(&t, Value::Array(types).to_string()).unwrap();
    let scim = crate::lab::Scim::start_with(&[
        "--schema",
        s.to_str().unwrap(),
        "--resource-type",
        t.to_str().unwrap(),
    ])
    .await;
    (scim, files)
}

/// Preflight's `target schema` row and its (check, result, detail).
fn schema_row(lab: &E2e) -> (i32, Option<(String, String)>) {
    let run = lab.cli(&["preflight", "--instance", "a", "--format", "json"]);
    let v: Value = serde_json::from_str(&run.stdout).unwrap_or(Value::Null);
    let row = v.as_array().and_then(|a| {
        a.iter().find(|c| c["check"] == "target schema").map(|c| {
            (
                match c["ok"].as_bool() {
                    Some(true) => "ok".to_string(),
                    _ => "FAIL".to_string(),
                },
                c["detail"].as_str().unwrap_or_default().to_string(),
            )
        })
    });
    (run.code, row)
}

/// Attributes of an extension schema the server publishes are written and read back; a
/// key of a schema it does not publish, or an attribute its schema lacks, fails preflight
/// with one line naming the key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extension_schemas_are_checked_against_the_target_and_exported() {
    let (scim, _files) = scim_with_acme().await;
    let lab = E2e::ldap(0, "500").await;
    // The lab's target is a tenant of the shared server: point it at this one instead.
    let conf = lab.dir.path().join("dirsync.toml");
    let toml = std::fs::read_to_string(&conf).unwrap();
    let url = toml
        .lines()
        .find_map(|l| l.strip_prefix("url = \"").filter(|u| u.contains("/v2")))
        .unwrap()
        .trim_end_matches('"')
        .to_string();
    std::fs::write(&conf, toml.replace(&url, scim.base_url())).unwrap();
    std::fs::write(lab.dir.path().join("token"), format!("{}\n", scim.token())).unwrap();
    let view = crate::sync_export::ScimView::of(scim.base_url(), scim.token());
    lab.slapd()
        .ldapadd(&format!(
            "dn: uid=ann,{PEOPLE}\nobjectClass: inetOrgPerson\nuid: ann\ncn: Ann\nsn: A\nemployeeNumber: 1001\n\n"
        ))
        .await;
    let base = std::fs::read_to_string(&conf).unwrap();
    let with = |rows: &str| std::fs::write(&conf, format!("{base}[mapping.user]\n{rows}")).unwrap();

    // Published: preflight passes the row, and the value reaches the server and comes back.
    with(&format!(
        "\"{ACME}:badgeNumber\" = \"src.employeenumber[0]\"\n\"{ENTERPRISE}:employeeNumber\" = \"src.uid[0]\"\n"
    ));
    assert_eq!(
        schema_row(&lab),
        (
            0,
            Some((
                "ok".into(),
                "the target publishes every extension attribute the mapping sets (2)".into()
            ))
        )
    );
    let v = lab.sync("a", &[]);
    assert_eq!((n(&v, "created"), n(&v, "unmappable")), (3, 0), "{v}");
    let ann = lab.anchor(&format!("uid=ann,{PEOPLE}")).await;
    let u = written(view.users_by_anchor().await.remove(&ann).unwrap());
    assert_eq!(
        u,
        json!({
            "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User", ENTERPRISE, ACME],
            "externalId": ann,
            "userName": "ann",
            "displayName": "Ann",
            "name": {"familyName": "A"},
            "active": true,
            ACME: {"badgeNumber": "1001"},
            ENTERPRISE: {"employeeNumber": "ann"},
        })
    );
    let v = lab.sync("a", &["--full"]);
    assert_eq!(n(&v, "updated") + n(&v, "created"), 0, "{v}");
    assert_eq!(v["reconcile"]["changed"], json!(0), "{v}");

    // An attribute the schema lacks, and a schema the server does not publish: each fails
    // preflight (exit 1) in one line naming the key; nothing is written.
    let head = lab.head().await;
    for (row, want) in [
        (
            format!("\"{ACME}:shoeSize\" = \"'44'\"\n"),
            format!("mapping.user.\"{ACME}:shoeSize\": the target's schema {ACME} has no attribute `shoeSize` (it has badgeNumber)"),
        ),
        (
            "\"urn:example:params:scim:schemas:extension:other:1.0:User:x\" = \"'x'\"\n".to_string(),
            format!("mapping.user.\"urn:example:params:scim:schemas:extension:other:1.0:User:x\": the target publishes no schema urn:example:params:scim:schemas:extension:other:1.0:User (its /Schemas: urn:ietf:params:scim:schemas:core:2.0:User, urn:ietf:params:scim:schemas:core:2.0:Group, {ENTERPRISE}, {ACME})"),
        ),
    ] {
        with(&row);
        assert_eq!(
            schema_row(&lab),
            (1, Some(("FAIL".into(), want.clone()))),
            "{row}"
        );
        // `sync` and `run` refuse it themselves, as bad configuration: exit 2, one line,
        // nothing recorded, nothing exported.
        let users = view.users_by_anchor().await;
        let error = format!(
            "configuration: the target cannot hold what the mapping writes: {want}; nothing exported"
        );
        let line = format!("dirsync: {error}");
        let (run, v) = lab.run("a", &[]);
        let said: Value = serde_json::from_str(run.stderr.trim()).unwrap_or(Value::Null);
        assert_eq!(
            (run.code, said, v),
            (2, json!({"error": error, "exit": 2}), Value::Null),
            "{row}"
        );
        let run = lab.cli(&["sync", "--instance", "a"]);
        assert_eq!((run.code, run.stderr.trim()), (2, line.as_str()), "{row}");
        let service = tokio::process::Command::new(crate::common::bin())
            .args(["run", "--instance", "a"])
            .current_dir(lab.dir.path())
            .env_remove("DIRSYNC_CONFIG")
            .kill_on_drop(true)
            .output();
        let service: crate::common::Run =
            tokio::time::timeout(std::time::Duration::from_secs(60), service)
                .await
                .expect("`run` refused the mapping and exited")
                .unwrap()
                .into();
        assert_eq!(service.code, 2, "{service:?}");
        assert_eq!(service.stderr.lines().last(), Some(line.as_str()), "{service:?}");
        assert_eq!(view.users_by_anchor().await, users, "{row}: nothing exported");
    }
    assert_eq!(
        lab.head().await,
        head,
        "preflight, and sync refusing, record nothing"
    );
}

const STAFF: &str = "OU=Staff,DC=test,DC=lan";

/// (active, the manager's userName) per userName, as the target holds them.
async fn active_and_manager(lab: &E2e) -> BTreeMap<String, (bool, Option<String>)> {
    let users = lab.view.users_by_anchor().await;
    let name_of = |id: &Value| {
        users
            .values()
            .find(|u| &u["id"] == id)
            .map(|u| u["userName"].as_str().unwrap().to_string())
    };
    users
        .values()
        .map(|u| {
            (
                u["userName"].as_str().unwrap().to_string(),
                (
                    u["active"].as_bool().unwrap(),
                    name_of(&u[ENTERPRISE]["manager"]["value"]),
                ),
            )
        })
        .collect()
}

/// Samba AD into scim2-server: `active` from userAccountControl's ACCOUNTDISABLE bit (2)
/// and the enterprise `manager` from AD's manager attribute, configured, end to end: a
/// chain created in one cycle, a user disabled and enabled, the manager renamed (AD
/// follows the link: the report keeps its manager) and deleted (the report's is cleared).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ad_user_account_control_and_manager_map_end_to_end() {
    let lab = E2e::ad().await;
    let samba = lab.samba();
    samba
        .ldapmodify(&format!(
            "dn: CN=u2,{STAFF}\nchangetype: modify\nadd: manager\nmanager: CN=u1,{STAFF}\n\n\
             dn: CN=u3,{STAFF}\nchangetype: modify\nadd: manager\nmanager: CN=u2,{STAFF}\n\n\
             dn: CN=u4,{STAFF}\nchangetype: modify\nreplace: userAccountControl\nuserAccountControl: 514\n\n"
        ))
        .await;
    append(
        &lab,
        &format!(
            "[mapping.user]\n\
             active = \"!has(src.useraccountcontrol) || int(src.useraccountcontrol[0]) / 2 % 2 == 0\"\n\
             \"{ENTERPRISE}:manager\" = \"has(src.manager) ? src.manager[0] : null\"\n"
        ),
    );
    let want = |rows: &[(&str, bool, Option<&str>)]| {
        rows.iter()
            .map(|(u, a, m)| {
                (
                    format!("{u}@test.lan"),
                    (*a, m.map(|m| format!("{m}@test.lan"))),
                )
            })
            .collect::<BTreeMap<String, (bool, Option<String>)>>()
    };
    let v = lab.sync("a", &[]);
    // u1..u4 and Team; the two managers set by updates in the same cycle.
    assert_eq!(
        (n(&v, "created"), n(&v, "updated"), n(&v, "unmappable")),
        (5, 2, 0),
        "{v}"
    );
    assert_eq!(
        active_and_manager(&lab).await,
        want(&[
            ("u1", true, None),
            ("u2", true, Some("u1")),
            ("u3", true, Some("u2")),
            ("u4", false, None),
        ])
    );

    // Disabled and enabled through userAccountControl.
    samba
        .ldapmodify(&format!(
            "dn: CN=u1,{STAFF}\nchangetype: modify\nreplace: userAccountControl\nuserAccountControl: 514\n\n\
             dn: CN=u4,{STAFF}\nchangetype: modify\nreplace: userAccountControl\nuserAccountControl: 512\n\n"
        ))
        .await;
    let v = lab.sync("a", &[]);
    assert_eq!((n(&v, "updated"), n(&v, "created")), (2, 0), "{v}");
    assert_eq!(
        active_and_manager(&lab).await,
        want(&[
            ("u1", false, None),
            ("u2", true, Some("u1")),
            ("u3", true, Some("u2")),
            ("u4", true, None),
        ])
    );

    // u1 renamed: AD's manager link follows it, and so does u2's manager in the target.
    samba
        .ldapmodrdn(&format!("CN=u1,{STAFF}"), "CN=u1-renamed", None)
        .await;
    let v = lab.sync("a", &[]);
    assert_eq!(n(&v, "created") + n(&v, "deleted"), 0, "{v}");
    let renamed = want(&[
        ("u1", false, None),
        ("u2", true, Some("u1")),
        ("u3", true, Some("u2")),
        ("u4", true, None),
    ]);
    assert_eq!(active_and_manager(&lab).await, renamed);
    // A full import reads u2's manager under the new name: the same object, nothing to do.
    let v = lab.sync("a", &["--full"]);
    assert_eq!(n(&v, "updated") + n(&v, "created"), 0, "{v}");
    assert_eq!(active_and_manager(&lab).await, renamed);

    // u2 deleted: u3's manager cleared.
    samba.ldapdelete(&format!("CN=u2,{STAFF}")).await;
    let v = lab.sync("a", &[]);
    assert_eq!((n(&v, "deleted"), n(&v, "created")), (1, 0), "{v}");
    assert_eq!(
        active_and_manager(&lab).await,
        want(&[("u1", false, None), ("u3", true, None), ("u4", true, None)])
    );
    // A full import and reconcile agree: nothing to do.
    let v = lab.sync("a", &["--full"]);
    assert_eq!(n(&v, "updated") + n(&v, "created"), 0, "{v}");
    assert_eq!(v["reconcile"]["changed"], json!(0), "{v}");
}
