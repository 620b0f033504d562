//! `berth run` as a child process, the one harness every end-to-end test
//! uses: its own namespace, folder and HTTP port; its log in a file; killed
//! (SIGKILL, containers left to the namespace guard) when dropped, printing
//! its log when the test failed.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use super::{berth_bin, wait_for_sync, TestNamespace};

/// A free port on 127.0.0.1 (bound and released; good enough for tests that
/// each take their own).
pub fn free_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

/// How to start a berth; see [`Berth::run`].
pub struct BerthBuilder {
    bin: PathBuf,
    args: Vec<String>,
    envs: Vec<(String, String)>,
    log: Option<PathBuf>,
    rust_log: String,
}

impl BerthBuilder {
    /// Extra arguments after `run --manifests DIR --namespace NS --listen ADDR`.
    pub fn args(mut self, extra: &[&str]) -> Self {
        self.args.extend(extra.iter().map(|s| s.to_string()));
        self
    }

    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.envs.push((key.into(), value.into()));
        self
    }

    /// The binary to run (default: the one under test).
    pub fn bin(mut self, bin: &Path) -> Self {
        self.bin = bin.to_path_buf();
        self
    }

    /// Append the log to this file (default: a fresh temporary file).
    pub fn log_to(mut self, path: &Path) -> Self {
        self.log = Some(path.to_path_buf());
        self
    }

    /// `RUST_LOG` (default `berth=debug`).
    pub fn rust_log(mut self, filter: &str) -> Self {
        self.rust_log = filter.into();
        self
    }

    pub fn start(mut self) -> Berth {
        // A `--resync` among the extra arguments replaces the default one.
        if self.args.iter().filter(|a| *a == "--resync").count() > 1 {
            if let Some(i) = self.args.iter().position(|a| a == "--resync") {
                self.args.drain(i..i + 2);
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let log = self.log.unwrap_or_else(|| dir.path().join("berth.log"));
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let given = self
            .args
            .iter()
            .position(|a| a == "--listen")
            .and_then(|i| self.args.get(i + 1))
            .and_then(|a| a.parse::<SocketAddr>().ok());
        let mut cmd = Command::new(&self.bin);
        cmd.env("BERTH_STATE_DIR", super::test_state_dir())
            .env("BERTH_RUN_DIR", super::test_state_dir().join("run"));
        cmd.args(&self.args);
        let addr = match given {
            Some(addr) => addr,
            None => {
                let addr = free_addr();
                cmd.args(["--listen", &addr.to_string()]);
                addr
            }
        };
        let child = cmd
            .env("RUST_LOG", &self.rust_log)
            .env_remove("BERTH_CONFIG")
            .envs(self.envs)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap();
        Berth {
            child,
            addr,
            log,
            _dir: dir,
        }
    }
}

/// A running `berth run`.
pub struct Berth {
    child: Child,
    pub addr: SocketAddr,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Berth {
    /// `berth run` on `manifests` in the test's namespace with a 60 s resync.
    pub fn run(ns: &TestNamespace, manifests: &Path) -> BerthBuilder {
        BerthBuilder {
            bin: berth_bin(),
            args: vec![
                "run".into(),
                "--manifests".into(),
                manifests.display().to_string(),
                "--namespace".into(),
                ns.ns.clone(),
                "--resync".into(),
                "60s".into(),
            ],
            envs: Vec::new(),
            log: None,
            rust_log: "berth=debug".into(),
        }
    }

    /// Shorthand: `run(ns, manifests).args(extra).start()`.
    pub fn start(ns: &TestNamespace, manifests: &Path, extra: &[&str]) -> Berth {
        Self::run(ns, manifests).args(extra).start()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Passes logged so far (with work, without, and failed).
    pub fn passes(&self) -> usize {
        self.log()
            .lines()
            .filter(|l| {
                l.contains("pass done")
                    || l.contains("pass: nothing to do")
                    || l.contains("pass failed")
            })
            .count()
    }

    /// Wait for a log line containing `needle`; returns it.
    pub fn wait_for_log(&self, deadline: Duration, needle: &str) -> String {
        wait_for_sync(deadline, &format!("berth to log {needle:?}"), || {
            self.log()
                .lines()
                .find(|l| l.contains(needle))
                .map(str::to_string)
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `kill -SIG` the berth process (e.g. `-HUP`, `-TERM`).
    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.pid().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {sig} berth");
    }

    /// SIGKILL now, and reap it.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().unwrap()
    }

    /// `GET path` on berth's HTTP port: (status, body), `None` when nothing answers.
    pub fn get(&self, path: &str) -> Option<(u16, String)> {
        http_get(self.addr, path)
    }

    /// `POST path` on berth's HTTP port: (status, body).
    pub fn post(&self, path: &str) -> Option<(u16, String)> {
        http_request(self.addr, "POST", path)
    }

    /// `/v1/status` as JSON.
    pub fn status(&self) -> Option<serde_json::Value> {
        let (code, body) = self.get("/v1/status")?;
        (code == 200).then(|| serde_json::from_str(&body).ok())?
    }

    /// Wait until every listed (task, index) runs, per `/v1/status`.
    pub fn wait_running(&self, deadline: Duration, instances: &[(&str, u64)]) -> serde_json::Value {
        wait_for_sync(deadline, "instances running in /v1/status", || {
            let s = self.status()?;
            let all = s["instances"].as_array()?;
            instances
                .iter()
                .all(|(task, index)| {
                    all.iter().any(|i| {
                        i["task"] == *task && i["index"] == *index && i["state"] == "running"
                    })
                })
                .then_some(s)
        })
    }
}

impl Drop for Berth {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- berth log ---\n{}", self.log());
        }
    }
}

/// A blocking HTTP/1.1 GET; `None` when nothing answers.
pub fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    http_request(addr, "GET", path)
}

/// A blocking HTTP/1.1 request without a body (e.g. `POST /v1/sync`);
/// `None` when nothing answers within 30 s.
pub fn http_request(addr: SocketAddr, method: &str, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(30))).ok()?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut raw = String::new();
    s.read_to_string(&mut raw).ok()?;
    let (head, body) = raw.split_once("\r\n\r\n")?;
    let code = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((code, body.to_string()))
}
