//! scim2-server (a real SCIM 2.0 service provider, in-memory) from the lab venv
//! `.lab/venv` of this crate.
//!
//! Measured on the 2-core lab machine: `Scim::start` (own server) ~1.0 s
//! (python start-up); `Scim::tenant()` ~1.0 s for the first of a process
//! (starts the shared `--dynamic-tenants` server), then ~5 µs.
//!
//! Two ways to get one:
//! * [`Scim::start`]: a server of its own, killed on drop; `base_url()` is
//!   `http://127.0.0.1:P/v2`.
//! * [`Scim::tenant`]: a fresh tenant `/NAME/v2` on one shared server per test
//!   process (`--dynamic-tenants`: a tenant's store is made on its first request),
//!   much cheaper when many tests need an empty SCIM service.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use tokio::sync::OnceCell;

use super::proc::{self, ServerProcess, SpawnOpts};

/// Own server of a test.
pub struct Scim {
    // Declared before `_dir`: the server must be gone before its dir is removed.
    process: ServerProcess,
    base_url: String,
    token: String,
    _dir: tempfile::TempDir,
}

/// A tenant of the shared server: its own empty store.
#[derive(Clone, Debug)]
pub struct ScimTenant {
    base_url: String,
    token: String,
    server_pid: u32,
}

impl ScimTenant {
    /// `http://127.0.0.1:P/NAME/v2`
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// The bearer token the server accepts.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// Pid of the shared server.
    pub fn server_pid(&self) -> u32 {
        self.server_pid
    }
}

struct Shared {
    process: ServerProcess,
    root: String,
    token: String,
}

static SHARED: OnceCell<Shared> = OnceCell::const_new();

impl Scim {
    /// Starts a server of its own on a free port.
    pub async fn start() -> Scim {
        Scim::start_with(&[]).await
    }

    /// [`Scim::start`] with more arguments, e.g. `--schema FILE --resource-type FILE`.
    pub async fn start_with(args: &[&str]) -> Scim {
        let dir = proc::instance_dir("scim");
        let token = uuid::Uuid::new_v4().simple().to_string();
        let (process, root) = launch(dir.path(), &token, false, args).await;
        Scim {
            process,
            base_url: format!("{root}/v2"),
            token,
            _dir: dir,
        }
    }

    /// A fresh tenant on the shared server of this test process.
    pub async fn tenant() -> ScimTenant {
        let shared = SHARED
            .get_or_init(|| async {
                let dir = proc::instance_dir("scim").keep();
                let token = uuid::Uuid::new_v4().simple().to_string();
                let (process, root) = launch(&dir, &token, true, &[]).await;
                Shared {
                    process,
                    root,
                    token,
                }
            })
            .await;
        ScimTenant {
            base_url: format!("{}/t{}/v2", shared.root, uuid::Uuid::new_v4().simple()),
            token: shared.token.clone(),
            server_pid: shared.process.pid(),
        }
    }

    /// `http://127.0.0.1:P/v2`
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// The bearer token the server accepts.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// Pid of the server.
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }
}

fn scim2_server() -> PathBuf {
    let bin = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".lab/venv/bin/scim2-server");
    assert!(
        bin.exists(),
        "lab: {} not found: {}",
        bin.display(),
        proc::INSTALL_HINT
    );
    bin
}

/// Starts scim2-server on a free port; returns it and `http://127.0.0.1:P`.
async fn launch(dir: &Path, token: &str, dynamic: bool, args: &[&str]) -> (ServerProcess, String) {
    let bin = scim2_server();
    let log = dir.join("scim2-server.log");
    let client = reqwest::Client::new();
    for _attempt in 0..5 {
        let port = proc::free_port();
        let mut cmd = Command::new(&bin);
        cmd.args(["--port", &port.to_string(), "--bearer-token", token]);
        if dynamic {
            cmd.arg("--dynamic-tenants");
        }
        cmd.args(args);
        cmd.env("PYTHONUNBUFFERED", "1").current_dir(dir);
        let mut process = proc::spawn_server(
            "scim2-server",
            &cmd,
            SpawnOpts {
                log: &log,
                stop_signal: "TERM",
                cleanup_dir: Some(dir),
                user: None,
            },
        );
        let root = format!("http://127.0.0.1:{port}");
        // With --dynamic-tenants, /v2 is 404: probe a tenant of its own.
        let probe = if dynamic {
            format!("{root}/ready/v2/ServiceProviderConfig")
        } else {
            format!("{root}/v2/ServiceProviderConfig")
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ok = client
                .get(&probe)
                .bearer_auth(token)
                .timeout(Duration::from_secs(2))
                .send()
                .await
                .map(|r| r.status() == reqwest::StatusCode::OK)
                .unwrap_or(false);
            if ok {
                return (process, root);
            }
            if !process.is_alive() {
                eprintln!(
                    "lab: scim2-server exited on port {port}, retrying:\n{}",
                    process.log_tail()
                );
                process.stop();
                break;
            }
            assert!(
                Instant::now() < deadline,
                "lab: scim2-server not ready in 30 s:\n{}",
                process.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    panic!(
        "lab: scim2-server failed to start 5 times:\n{}",
        proc::log_tail(&log, 30)
    );
}
