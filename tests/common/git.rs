//! Real git repositories for the tests: a bare remote and a working clone
//! to commit from (signed with keys `ssh-keygen` makes), `git daemon` on
//! 127.0.0.1, and helpers to run commands and wait for ports.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use berth::config::GitSourceConfig;
use berth::manifest::duration::Duration as BerthDuration;

/// Run a command; panic with its stderr if it fails. Returns stdout.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: cannot run: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A remote repository and a working clone to commit from, in one temp dir.
pub struct Remote {
    tmp: tempfile::TempDir,
}

impl Remote {
    pub fn new() -> Remote {
        let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let remote = Remote { tmp };
        std::fs::create_dir_all(remote.home()).unwrap_or_else(|e| panic!("{e}"));
        run(remote
            .git(None)
            .args(["init", "-q", "--bare", "-b", "main"])
            .arg(remote.bare()));
        run(remote
            .git(None)
            .args(["init", "-q", "-b", "main"])
            .arg(remote.work()));
        remote
    }

    pub fn root(&self) -> &Path {
        self.tmp.path()
    }
    pub fn bare(&self) -> PathBuf {
        self.root().join("remote.git")
    }
    pub fn work(&self) -> PathBuf {
        self.root().join("work")
    }
    pub fn home(&self) -> PathBuf {
        self.root().join("home")
    }
    pub fn state(&self) -> PathBuf {
        self.root().join("state")
    }
    pub fn url(&self) -> String {
        format!("file://{}", self.bare().display())
    }

    /// git for the test's own commits, isolated from the host's config too.
    pub fn git(&self, dir: Option<&Path>) -> Command {
        let mut cmd = Command::new("git");
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", self.home())
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .args(["-c", "user.name=Test", "-c", "user.email=test@example.com"]);
        if let Some(dir) = dir {
            cmd.current_dir(dir);
        }
        cmd
    }

    /// Write files (relative path → content; `None` deletes), commit them,
    /// signed with `key` if given, push to `branch`. Returns the commit id.
    pub fn commit(
        &self,
        files: &[(&str, Option<&str>)],
        key: Option<&Path>,
        branch: &str,
    ) -> String {
        let work = self.work();
        for (path, content) in files {
            let full = work.join(path);
            match content {
                Some(text) => {
                    if let Some(parent) = full.parent() {
                        std::fs::create_dir_all(parent).unwrap_or_else(|e| panic!("{e}"));
                    }
                    std::fs::write(&full, text).unwrap_or_else(|e| panic!("{e}"));
                }
                None => {
                    let _ = std::fs::remove_file(&full);
                }
            }
        }
        run(self.git(Some(&work)).args(["add", "-A"]));
        let mut commit = self.git(Some(&work));
        if let Some(key) = key {
            commit
                .args(["-c", "gpg.format=ssh", "-c"])
                .arg(format!("user.signingkey={}", key.display()))
                .args(["commit", "-q", "-S", "--allow-empty", "-m"]);
        } else {
            commit.args(["commit", "-q", "--allow-empty", "-m"]);
        }
        run(commit.arg(format!("change {files:?}")));
        let id = run(self.git(Some(&work)).args(["rev-parse", "HEAD"]));
        self.push(&id, branch, false);
        id
    }

    pub fn push(&self, commit: &str, branch: &str, force: bool) {
        let mut push = self.git(Some(&self.work()));
        push.args(["push", "-q"]);
        if force {
            push.arg("--force");
        }
        run(push
            .arg(self.bare())
            .arg(format!("{commit}:refs/heads/{branch}")));
    }

    pub fn delete_branch(&self, branch: &str) {
        run(self
            .git(Some(&self.work()))
            .args(["push", "-q"])
            .arg(self.bare())
            .arg(format!(":refs/heads/{branch}")));
    }

    pub fn config(&self, url: &str, git_ref: &str) -> GitSourceConfig {
        GitSourceConfig {
            url: url.to_string(),
            git_ref: git_ref.to_string(),
            path: "hosts".into(),
            interval: BerthDuration::from_secs(60),
            timeout: BerthDuration::from_secs(10),
            ssh_key_file: None,
            token_file: None,
            known_hosts_file: None,
            verify: None,
        }
    }

    /// A new ed25519 key pair; returns the private key's path.
    pub fn key(&self, name: &str) -> PathBuf {
        let path = self.root().join(name);
        run(Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", name, "-f"])
            .arg(&path));
        path
    }

    /// An allowed-signers file trusting `keys`.
    pub fn allowed_signers(&self, keys: &[&Path]) -> PathBuf {
        let mut text = String::new();
        for key in keys {
            let public = std::fs::read_to_string(key.with_extension("pub"))
                .unwrap_or_else(|e| panic!("{e}"));
            text.push_str(&format!("test@example.com {public}"));
        }
        let path = self.root().join("allowed_signers");
        std::fs::write(&path, text).unwrap_or_else(|e| panic!("{e}"));
        path
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("{e}"))
}

pub fn wait_for_port(port: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "{what} never listened on {port}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A child process killed when the test ends, passing or not.
pub struct Server(pub Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn git_daemon(base: &Path) -> (Server, u16) {
    let port = free_port();
    // git-daemon itself, not the `git` wrapper: killing the wrapper would
    // leave the daemon serving.
    let exec_path = run(Command::new("git").arg("--exec-path"));
    let child = Command::new(Path::new(&exec_path).join("git-daemon"))
        .args(["--export-all", "--reuseaddr", "--listen=127.0.0.1"])
        .arg(format!("--port={port}"))
        .arg(format!("--base-path={}", base.display()))
        .arg(base)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("git daemon: {e}"));
    let server = Server(child);
    wait_for_port(port, "git daemon");
    (server, port)
}
