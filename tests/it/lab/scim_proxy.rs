//! A small HTTP proxy in front of a real scim2-server, for SCIM behaviours the server lacks
//! but service providers in the field have (issue 17): a filter refused with 400
//! `invalidFilter` for some values only.
//!
//! One request per connection: the request is read whole (headers and a `Content-Length`
//! body), answered by the proxy itself when a rule says so, else written to the upstream
//! server unchanged and its whole answer (scim2-server speaks HTTP/1.0 and closes) copied
//! back. The proxy task is aborted when the [`ScimProxy`] is dropped.

use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the proxy alters.
#[derive(Clone, Debug, Default)]
pub struct ProxyRules {
    /// A GET whose `filter` query parameter contains one of these strings is answered
    /// `400 invalidFilter` (as a server that cannot filter on some attribute or value).
    pub refuse_filters_containing: Vec<String>,
    /// Writes (POST, PUT, PATCH, DELETE) are done upstream at once but answered only after
    /// this delay (a slow network or a slow server: the write is applied, its answer late).
    pub delay_writes: Option<std::time::Duration>,
    /// After this many requests the proxy stops listening: every later connection is
    /// refused (the target went down mid-cycle).
    pub down_after: Option<usize>,
}

/// What the proxy saw: one (method, status) per request answered, in order.
pub type Seen = Arc<std::sync::Mutex<Vec<(String, u16)>>>;

pub struct ScimProxy {
    base_url: String,
    seen: Seen,
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
        let rules = Arc::new(rules);
        let seen = Seen::default();
        let log = seen.clone();
        let task = tokio::spawn(async move {
            let mut accepted = 0;
            while let Ok((client, _)) = listener.accept().await {
                let (r, up, log) = (rules.clone(), upstream.clone(), log.clone());
                tokio::spawn(async move {
                    let _ = serve(client, &up, &r, &log).await;
                });
                accepted += 1;
                if rules.down_after.is_some_and(|n| accepted >= n) {
                    // Dropping the listener closes the port: connections are refused.
                    return;
                }
            }
        });
        ScimProxy {
            base_url: base.as_str().trim_end_matches('/').to_string(),
            seen,
            task,
        }
    }

    /// Every (method, status) answered so far, in order.
    pub fn seen(&self) -> Vec<(String, u16)> {
        self.seen.lock().unwrap().clone()
    }

    /// The SCIM base URL to give dirsync.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }
}

/// One request: read it, answer or forward it.
async fn serve(
    mut client: TcpStream,
    upstream: &str,
    rules: &ProxyRules,
    seen: &Seen,
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
    let length: usize = head
        .lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse().ok())
        .unwrap_or(0);
    while buf.len() < head_end + length {
        let mut chunk = [0u8; 8192];
        let n = client.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let method = head.split_whitespace().next().unwrap_or("").to_string();
    let target = head.split_whitespace().nth(1).unwrap_or("/");
    let url = reqwest::Url::parse(&format!("http://proxy{target}")).ok();
    let filter = url
        .as_ref()
        .and_then(|u| u.query_pairs().find(|(k, _)| k == "filter"))
        .map(|(_, v)| v.into_owned());
    if let Some(f) = filter {
        if rules
            .refuse_filters_containing
            .iter()
            .any(|s| f.contains(s.as_str()))
        {
            let body = format!(
                "{{\"schemas\":[\"urn:ietf:params:scim:api:messages:2.0:Error\"],\"status\":\"400\",\"scimType\":\"invalidFilter\",\"detail\":\"cannot filter: {}\"}}",
                f.replace('\\', "\\\\").replace('"', "\\\"")
            );
            let reply = format!(
                "HTTP/1.1 400 Bad Request\r\nContent-Type: application/scim+json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            seen.lock().unwrap().push((method, 400));
            client.write_all(reply.as_bytes()).await?;
            return client.shutdown().await;
        }
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
    let status = String::from_utf8_lossy(answer.get(..12).unwrap_or_default())
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    seen.lock().unwrap().push((method, status));
    client.write_all(&answer).await?;
    client.shutdown().await
}
