//! berth as a child process, the one harness every test uses: `berth run`
//! ([`Berth`]) with its own namespace, folder and HTTP port and its log in a
//! file, and one-shot commands ([`run_berth`]) with their output in files.
//! Either child is killed (SIGKILL, containers left to the namespace guard)
//! and reaped when dropped; a `berth run` prints its log when the test failed.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use super::{berth_bin, test_state_dir, wait_for_sync, TestNamespace};

/// `bin` as the tests run berth: state and run directories inside the build
/// directory, never the host's /var/lib/berth or /run/berth.
fn command(bin: &Path) -> Command {
    let mut cmd = Command::new(bin);
    cmd.env("BERTH_STATE_DIR", test_state_dir())
        .env("BERTH_RUN_DIR", test_state_dir().join("run"));
    cmd
}

/// `berth` as the tests run it: the binary under test (see [`command`]).
pub fn berth_command() -> Command {
    command(&berth_bin())
}

/// A child berth: killed and reaped when dropped, so no test leaves one
/// behind, even when it panics.
struct Reaped(Child);

impl Reaped {
    /// Start `cmd` without stdin, its output going where the caller says.
    fn spawn(mut cmd: Command, stdout: Stdio, stderr: File) -> Reaped {
        Reaped(
            cmd.stdin(Stdio::null())
                .stdout(stdout)
                .stderr(stderr)
                .spawn()
                .unwrap(),
        )
    }

    fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Reaped {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Run `berth <args>`; kill it and panic if it outlives `timeout`.
pub fn run_berth(args: &[&str], timeout: Duration) -> Output {
    run_berth_env(args, &[], timeout)
}

/// `berth run --once` on `dir` in namespace `ns`, killed after `timeout`.
pub fn run_once(dir: &Path, ns: &str, timeout: Duration) -> Output {
    run_once_with(dir, ns, &[], timeout)
}

/// [`run_once`] with more arguments (e.g. `--config FILE`).
pub fn run_once_with(dir: &Path, ns: &str, more: &[&str], timeout: Duration) -> Output {
    let mut args = vec![
        "run",
        "--once",
        "--manifests",
        dir.to_str().unwrap(),
        "--namespace",
        ns,
    ];
    args.extend_from_slice(more);
    run_berth(&args, timeout)
}

/// Run `berth <args>` with extra environment variables, the one one-shot
/// runner every test uses: output goes to files (a chatty or aborting berth
/// never blocks on a pipe), and the child is killed and reaped if it
/// outlives `timeout`.
pub fn run_berth_env(args: &[&str], env: &[(&str, &str)], timeout: Duration) -> Output {
    let logs = tempfile::tempdir().unwrap();
    let (out_path, err_path) = (logs.path().join("out"), logs.path().join("err"));
    let mut cmd = berth_command();
    cmd.args(args).envs(env.iter().copied());
    let stdout = File::create(&out_path).unwrap();
    let mut child = Reaped::spawn(cmd, stdout.into(), File::create(&err_path).unwrap());
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "berth {args:?} did not finish within {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: std::fs::read(out_path).unwrap(),
        stderr: std::fs::read(err_path).unwrap(),
    }
}

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
        let mut cmd = command(&self.bin);
        cmd.args(&self.args);
        let addr = match given {
            Some(addr) => addr,
            None => {
                let addr = free_addr();
                cmd.args(["--listen", &addr.to_string()]);
                addr
            }
        };
        cmd.env("RUST_LOG", &self.rust_log)
            .env_remove("BERTH_CONFIG")
            .envs(self.envs);
        let child = Reaped::spawn(cmd, Stdio::null(), stderr);
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
    child: Reaped,
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
        self.child.0.id()
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
        self.child.kill();
    }

    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.0.try_wait().unwrap()
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
        self.child.kill();
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
    http_request_with(addr, method, path, "")
}

/// [`http_request`] with extra header lines, each ending in `\r\n`.
pub fn http_request_with(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &str,
) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(30))).ok()?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\n{headers}Connection: close\r\n\r\n"
    )
    .ok()?;
    let mut raw = String::new();
    s.read_to_string(&mut raw).ok()?;
    let (head, body) = raw.split_once("\r\n\r\n")?;
    let code = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((code, body.to_string()))
}
