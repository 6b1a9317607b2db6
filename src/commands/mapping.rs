use super::*;

use crate::plan::mapping::Origin;

/// Where a rule came from, in words.
fn origin(o: &Origin, path: Option<&Path>) -> String {
    match o {
        Origin::Default => "default".into(),
        Origin::Config { line } => match path {
            Some(p) => format!("{}:{line}", p.display()),
            None => format!("line {line}"),
        },
    }
}

pub(super) async fn mapping(cfg: &Config, c: MappingCommand, fmt: Format) -> Result<Exit> {
    let m = cfg.mapping()?;
    match c {
        MappingCommand::Show => {
            let rows: Vec<Vec<String>> = crate::plan::mapping::rows(m)
                .into_iter()
                .map(|(kind, key, expr, o)| {
                    vec![
                        kind.as_str().to_string(),
                        key.to_string(),
                        expr.to_string(),
                        origin(o, cfg.path.as_deref()),
                    ]
                })
                .collect();
            let v = json!({
                "source": format!("{:?}", m.source).to_lowercase(),
                "target": format!("{:?}", m.target).to_lowercase(),
                "fingerprint": m.fingerprint(),
                "rules": rows.iter().map(|r| json!({
                    "kind": r[0], "attribute": r[1], "expression": r[2], "from": r[3],
                })).collect::<Vec<_>>(),
            });
            emit_rows(fmt, &["KIND", "ATTRIBUTE", "EXPRESSION", "FROM"], &rows, &v)?;
            Ok(Exit::Ok)
        }
        MappingCommand::Test { dn, anchor } => {
            let store = open(cfg).await?;
            let state = projection::current(&store).await?;
            let objects = &state.objects.objects;
            let found = match (&anchor, &dn) {
                (Some(a), _) => objects.get_key_value(a.as_str()),
                (None, Some(d)) => objects.iter().find(|(_, r)| r.dn.eq_ignore_ascii_case(d)),
                (None, None) => None,
            };
            let Some((anchor, rec)) = found else {
                return Err(Error::BadInput(format!(
                    "no source object {} in the log (a sync or `sync --staging` imports them)",
                    anchor.or(dn).unwrap_or_default()
                )));
            };
            let each = m.each(anchor, rec);
            let failed = each.iter().any(|(_, v)| v.is_err());
            let rows: Vec<Vec<String>> = each
                .iter()
                .map(|(r, v)| {
                    let (value, error) = match v {
                        Ok(serde_json::Value::String(s)) => (s.clone(), String::new()),
                        Ok(serde_json::Value::Null) => ("(unset)".into(), String::new()),
                        Ok(x) => (x.to_string(), String::new()),
                        Err(e) => (String::new(), e.clone()),
                    };
                    vec![r.key.clone(), value, error]
                })
                .collect();
            let v = json!({
                "anchor": anchor,
                "dn": rec.dn,
                "kind": rec.kind.as_str(),
                "live": rec.live(),
                "mapped": each.iter().filter_map(|(r, v)| Some((r.key.clone(), v.as_ref().ok()?.clone()))).collect::<serde_json::Map<_, _>>(),
                "errors": each.iter().filter_map(|(r, v)| Some(json!({"attribute": r.key, "error": v.as_ref().err()?}))).collect::<Vec<_>>(),
            });
            if fmt == Format::Table {
                print(&format!("{} {anchor} {}\n", rec.kind.as_str(), rec.dn))?;
            }
            emit_rows(fmt, &["ATTRIBUTE", "VALUE", "ERROR"], &rows, &v)?;
            Ok(if failed { Exit::Failure } else { Exit::Ok })
        }
    }
}
