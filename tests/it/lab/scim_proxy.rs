//! A small HTTP proxy in front of a real scim2-server, for SCIM behaviours the server lacks
//! but service providers in the field have (issue 17): a filter refused with 400
//! `invalidFilter` for some values only, attribute names spelt in another case, `eq`
//! compared case-exactly, no ETag support, writes refused for chosen objects, writes answered
//! late, and a target that goes down.
//!
//! One request per connection: the request is read whole (headers and a `Content-Length`
//! body), answered by the proxy itself when a rule says so, else written to the upstream
//! server unchanged and its whole answer (scim2-server speaks HTTP/1.0 and closes) copied
//! back, its JSON body rewritten when a rule says so. The rules can be changed while the
//! proxy runs ([`ScimProxy::set_rules`]), and every request is remembered
//! ([`ScimProxy::requests`]). The proxy task is aborted when the [`ScimProxy`] is dropped.
//!
//! A slow network (issue 18.3): POSTs can be held ([`ProxyRules::hold_posts_to`]) and
//! forwarded only when the test releases them ([`ScimProxy::release`]), after the client
//! gave up on them, so the server applies a create its sender recorded as failed.

use std::sync::{Arc, Mutex};

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the proxy alters.
#[derive(Clone, Debug, Default)]
pub struct ProxyRules {
    /// A GET whose `filter` query parameter contains one of these strings is answered
    /// `400 invalidFilter` (as a server that cannot filter on some attribute or value).
    pub refuse_filters_containing: Vec<String>,
    /// Every attribute name in a JSON response is spelt otherwise: `id` as `ID`, every other
    /// name with its first letter upper-cased (`UserName`, `Members`, `Value`, `Urn:...`),
    /// as RFC 7643 §2.1 allows (attribute names are case-insensitive).
    pub rename_attributes: bool,
    /// `attr eq "value"` compares case-exactly: a filtered GET keeps only the resources
    /// that some `eq` term of the filter matches exactly (userName, displayName,
    /// externalId, emails.value), as servers in the field do.
    pub case_exact_eq: bool,
    /// The ServiceProviderConfig says `etag.supported = false`, and any request carrying
    /// `If-Match` is answered `412` (a server without versions that cannot honour it).
    pub no_etags: bool,
    /// A filtered GET leaves out the resources whose JSON contains one of these strings
    /// (a search index that lags behind the store); plain listings still show them.
    pub hide_from_filters: Vec<String>,
    /// A POST, PATCH or PUT whose path or body contains one of these strings is answered
    /// `400 invalidValue` (the target refuses that one object).
    pub refuse_writes_containing: Vec<String>,
    /// A POST whose path contains one of these strings is held, read whole, until
    /// [`ScimProxy::release`]; then it is forwarded whether or not its client is still
    /// waiting (a network that delays a request past its sender's timeout).
    pub hold_posts_to: Vec<String>,
    /// Writes (POST, PUT, PATCH, DELETE) are done upstream at once but answered only after
    /// this delay (a slow network or a slow server: the write is applied, its answer late).
    pub delay_writes: Option<std::time::Duration>,
    /// After this many connections the proxy stops listening: every later connection is
    /// refused (the target went down mid-cycle). Read when the proxy starts.
    pub down_after: Option<usize>,
}

/// One request the proxy saw.
#[derive(Clone, Debug)]
pub struct SeenRequest {
    /// When the request arrived whole.
    pub at: chrono::DateTime<chrono::Utc>,
    pub method: String,
    /// Path and query.
    pub target: String,
    pub if_match: bool,
    pub body: String,
    /// The status answered (0: not answered yet, or no answer could be read).
    pub status: u16,
}

/// Requests held by [`ProxyRules::hold_posts_to`]: their path, and what lets them go on.
type Held = Mutex<Vec<(String, tokio::sync::oneshot::Sender<()>)>>;

pub struct ScimProxy {
    base_url: String,
    rules: Arc<Mutex<ProxyRules>>,
    seen: Arc<Mutex<Vec<SeenRequest>>>,
    held: Arc<Held>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ScimProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl ScimProxy {
    /// A proxy for the SCIM base `upstream_base` (`http://127.0.0.1:P/PATH`).
    pub async fn start(upstream_base: &str, rules: ProxyRules) -> ScimProxy {
        let up = reqwest::Url::parse(upstream_base).unwrap();
        let upstream = format!(
            "{}:{}",
            up.host_str().unwrap(),
            up.port_or_known_default().unwrap()
        );
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let mut base = up.clone();
        base.set_port(Some(port)).unwrap();
        let rules = Arc::new(Mutex::new(rules));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let held: Arc<Held> = Arc::default();
        let (r, s, h) = (rules.clone(), seen.clone(), held.clone());
        let down_after = rules.lock().unwrap().down_after;
        let task = tokio::spawn(async move {
            let mut accepted = 0;
            while let Ok((client, _)) = listener.accept().await {
                let (rules, seen, held, upstream) =
                    (r.clone(), s.clone(), h.clone(), upstream.clone());
                tokio::spawn(async move {
                    let _ = serve(client, &upstream, &rules, &seen, &held).await;
                });
                accepted += 1;
                if down_after.is_some_and(|n| accepted >= n) {
                    // Dropping the listener closes the port: connections are refused.
                    return;
                }
            }
        });
        ScimProxy {
            base_url: base.as_str().trim_end_matches('/').to_string(),
            rules,
            seen,
            held,
            task,
        }
    }

    /// The SCIM base URL to give dirsync.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// Replace the rules (for requests from now on).
    pub fn set_rules(&self, rules: ProxyRules) {
        *self.rules.lock().unwrap() = rules;
    }

    /// How many requests are held now.
    pub fn held(&self) -> usize {
        self.held.lock().unwrap().len()
    }

    /// Forward the held requests whose path contains `path`; how many there were.
    pub fn release(&self, path: &str) -> usize {
        let mut held = self.held.lock().unwrap();
        let (go, stay): (Vec<_>, Vec<_>) = held.drain(..).partition(|(p, _)| p.contains(path));
        *held = stay;
        let n = go.len();
        for (_, tx) in go {
            let _ = tx.send(());
        }
        n
    }

    /// Every request seen so far, oldest first.
    pub fn requests(&self) -> Vec<SeenRequest> {
        self.seen.lock().unwrap().clone()
    }

    /// Every (method, status) answered so far, in order.
    pub fn seen(&self) -> Vec<(String, u16)> {
        self.requests()
            .into_iter()
            .map(|r| (r.method, r.status))
            .collect()
    }
}

fn reply(status: &str, body: &str) -> String {
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/scim+json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

fn scim_error(status: u16, scim_type: &str, detail: &str) -> String {
    serde_json::json!({
        "schemas": ["urn:ietf:params:scim:api:messages:2.0:Error"],
        "status": status.to_string(),
        "scimType": scim_type,
        "detail": detail,
    })
    .to_string()
}

/// One request: read it, answer or forward it.
async fn serve(
    mut client: TcpStream,
    upstream: &str,
    rules: &Mutex<ProxyRules>,
    seen: &Mutex<Vec<SeenRequest>>,
    held: &Held,
) -> std::io::Result<()> {
    let mut buf = Vec::new();
    let head_end = loop {
        let mut chunk = [0u8; 8192];
        let n = client.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let header = |name: &str| {
        head.lines()
            .filter_map(|l| l.split_once(':'))
            .find(|(k, _)| k.trim().eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim().to_string())
    };
    let length: usize = header("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    while buf.len() < head_end + length {
        let mut chunk = [0u8; 8192];
        let n = client.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let rules = rules.lock().unwrap().clone();
    let method = head.split_whitespace().next().unwrap_or("GET").to_string();
    let target = head.split_whitespace().nth(1).unwrap_or("/").to_string();
    let body = String::from_utf8_lossy(&buf[head_end..]).to_string();
    let if_match = header("if-match").is_some();
    // Remembered as it arrives (its time is when the client sent it), its status once
    // answered.
    let idx = {
        let mut seen = seen.lock().unwrap();
        seen.push(SeenRequest {
            at: chrono::Utc::now(),
            method: method.clone(),
            target: target.clone(),
            if_match,
            body: body.clone(),
            status: 0,
        });
        seen.len() - 1
    };
    let record = |status: u16| {
        if let Some(r) = seen.lock().unwrap().get_mut(idx) {
            r.status = status;
        }
    };
    let url = reqwest::Url::parse(&format!("http://proxy{target}")).ok();
    let filter = url
        .as_ref()
        .and_then(|u| u.query_pairs().find(|(k, _)| k == "filter"))
        .map(|(_, v)| v.into_owned());
    let refused = if let Some(f) = filter.as_deref().filter(|f| {
        rules
            .refuse_filters_containing
            .iter()
            .any(|s| f.contains(s.as_str()))
    }) {
        Some(reply(
            "400 Bad Request",
            &scim_error(400, "invalidFilter", &format!("cannot filter: {f}")),
        ))
    } else if rules.no_etags && if_match {
        Some(reply(
            "412 Precondition Failed",
            &scim_error(412, "", "versions are not supported"),
        ))
    } else if matches!(method.as_str(), "POST" | "PATCH" | "PUT")
        && rules
            .refuse_writes_containing
            .iter()
            .any(|s| target.contains(s.as_str()) || body.contains(s.as_str()))
    {
        Some(reply(
            "400 Bad Request",
            &scim_error(400, "invalidValue", "this object is refused"),
        ))
    } else {
        None
    };
    if let Some(r) = refused {
        record(status_of(r.as_bytes()));
        client.write_all(r.as_bytes()).await?;
        return client.shutdown().await;
    }
    if method == "POST"
        && rules
            .hold_posts_to
            .iter()
            .any(|p| target.contains(p.as_str()))
    {
        let (tx, rx) = tokio::sync::oneshot::channel();
        held.lock().unwrap().push((target.clone(), tx));
        // Released (or the proxy dropped); the client may have gone meanwhile.
        let _ = rx.await;
    }
    let mut up = TcpStream::connect(upstream).await?;
    up.write_all(&buf).await?;
    let mut answer = Vec::new();
    up.read_to_end(&mut answer).await?;
    if let Some(d) = rules.delay_writes {
        if matches!(method.as_str(), "POST" | "PUT" | "PATCH" | "DELETE") {
            tokio::time::sleep(d).await;
        }
    }
    let rewrites = rules.rename_attributes
        || rules.case_exact_eq
        || rules.no_etags
        || !rules.hide_from_filters.is_empty();
    if rewrites {
        if let Some(a) = rewrite(&answer, &target, filter.as_deref(), &rules) {
            answer = a;
        }
    }
    record(status_of(&answer));
    client.write_all(&answer).await?;
    client.shutdown().await
}

/// The status code of an HTTP answer (0 if it has none).
fn status_of(answer: &[u8]) -> u16 {
    String::from_utf8_lossy(answer.get(..12).unwrap_or(answer))
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

/// The upstream answer with its JSON body altered by the rules (None: left as it is).
fn rewrite(
    answer: &[u8],
    target: &str,
    filter: Option<&str>,
    rules: &ProxyRules,
) -> Option<Vec<u8>> {
    let end = answer.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = String::from_utf8_lossy(&answer[..end]).to_string();
    let mut v: Value = serde_json::from_slice(&answer[end..]).ok()?;
    if rules.no_etags && target.contains("/ServiceProviderConfig") {
        v["etag"] = serde_json::json!({ "supported": false });
    }
    if let (true, Some(f)) = (rules.case_exact_eq, filter) {
        let terms = eq_terms(f);
        if let Some(Value::Array(resources)) = v.get_mut("Resources") {
            resources.retain(|r| terms.iter().any(|(a, val)| values_of(r, a).contains(val)));
            let n = resources.len();
            v["totalResults"] = Value::from(n);
        }
    }
    if let (false, Some(Value::Array(resources))) = (
        rules.hide_from_filters.is_empty() || filter.is_none(),
        v.get_mut("Resources"),
    ) {
        resources.retain(|r| {
            let text = r.to_string();
            !rules
                .hide_from_filters
                .iter()
                .any(|h| text.contains(h.as_str()))
        });
        let n = resources.len();
        v["totalResults"] = Value::from(n);
    }
    if rules.rename_attributes {
        v = renamed(v);
    }
    let body = v.to_string();
    let mut out = String::new();
    for line in head.trim_end().lines() {
        if !line.to_ascii_lowercase().starts_with("content-length:") {
            out.push_str(line);
            out.push_str("\r\n");
        }
    }
    out.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(body.as_bytes());
    Some(bytes)
}

/// The `attr eq "value"` terms of a filter of `or`ed terms.
fn eq_terms(filter: &str) -> Vec<(String, String)> {
    filter
        .split(" or ")
        .filter_map(|t| {
            let (attr, rest) = t.trim().split_once(" eq ")?;
            let quoted = rest.trim().strip_prefix('"')?.strip_suffix('"')?;
            let value = quoted.replace("\\\"", "\"").replace("\\\\", "\\");
            Some((attr.trim().to_string(), value))
        })
        .collect()
}

/// The string values of `attr` (a name, or `emails.value`) in a resource.
fn values_of(r: &Value, attr: &str) -> Vec<String> {
    match attr.split_once('.') {
        Some((multi, sub)) => r[multi]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|x| x[sub].as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default(),
        None => r[attr].as_str().map(String::from).into_iter().collect(),
    }
}

/// Every object key spelt otherwise (see [`ProxyRules::rename_attributes`]).
fn renamed(v: Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.into_iter()
                .map(|(k, v)| {
                    let k = if k == "id" {
                        "ID".to_string()
                    } else {
                        let mut c = k.chars();
                        match c.next() {
                            Some(f) => f.to_uppercase().chain(c).collect(),
                            None => k,
                        }
                    };
                    (k, renamed(v))
                })
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.into_iter().map(renamed).collect()),
        other => other,
    }
}
