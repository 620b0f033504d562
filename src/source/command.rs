//! Running the `git` program so that nothing but berth's own settings
//! decide what it does: a clean environment, no host or user config, no
//! hooks, one allowed protocol, no prompts, and a hard deadline after which
//! the whole process group is killed.

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use base64::Engine as _;
use tokio::process::Command;

use super::url::{GitUrl, Transport};
use super::SourceError;

/// Settings on every git command line. Each one closes a way the
/// repository, the host or the remote could change berth's behaviour.
const HARDENING: &[&str] = &[
    // No hook ever runs, whatever lands in the clone's hooks folder.
    "core.hooksPath=/dev/null",
    "core.fsmonitor=false",
    // Nothing may outlive the command's deadline in the background.
    "gc.autoDetach=false",
    "maintenance.auto=false",
    "fetch.recurseSubmodules=false",
    "submodule.recurse=false",
    // No credential helper from anywhere; the token (if any) is a header.
    "credential.helper=",
    "core.askPass=",
    "init.defaultBranch=main",
    "advice.detachedHead=false",
];

/// How long any single git command may take, and what it is told.
#[derive(Clone)]
pub(crate) struct GitRunner {
    url: GitUrl,
    /// berth's own HOME for git, so `~/.gitconfig` of the host is never read.
    home: PathBuf,
    timeout: Duration,
    ssh_key_file: Option<PathBuf>,
    known_hosts_file: Option<PathBuf>,
    token_file: Option<PathBuf>,
}

/// What a network command needs beyond the common environment; built per
/// call so a rotated token file is read at every fetch.
struct Credentials {
    env: Vec<(OsString, OsString)>,
    /// Strings that must never reach an error message.
    secrets: Vec<String>,
}

impl GitRunner {
    pub(crate) fn new(
        url: GitUrl,
        home: PathBuf,
        timeout: Duration,
        ssh_key_file: Option<PathBuf>,
        known_hosts_file: Option<PathBuf>,
        token_file: Option<PathBuf>,
    ) -> GitRunner {
        GitRunner {
            url,
            home,
            timeout,
            ssh_key_file,
            known_hosts_file,
            token_file,
        }
    }

    pub(crate) fn url(&self) -> &GitUrl {
        &self.url
    }

    pub(crate) fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Run `git <args>` in `git_dir` (none for `init`) without network
    /// credentials. Returns stdout; a non-zero exit is [`SourceError::Git`].
    pub(crate) async fn local(
        &self,
        op: &'static str,
        git_dir: Option<&Path>,
        args: &[&OsStr],
    ) -> Result<String, SourceError> {
        self.local_with_env(op, git_dir, args, &[]).await
    }

    /// [`Self::local`] with extra environment (`GIT_INDEX_FILE`).
    pub(crate) async fn local_with_env(
        &self,
        op: &'static str,
        git_dir: Option<&Path>,
        args: &[&OsStr],
        extra_env: &[(&str, &OsStr)],
    ) -> Result<String, SourceError> {
        let out = self.run(op, git_dir, args, None, extra_env).await?;
        out.into_result(op, &[])
    }

    /// Like [`Self::local`], but the command talks to the remote: ssh and
    /// token settings apply.
    pub(crate) async fn remote(
        &self,
        op: &'static str,
        git_dir: &Path,
        args: &[&OsStr],
    ) -> Result<String, SourceError> {
        let creds = self.credentials()?;
        let out = self
            .run(op, Some(git_dir), args, Some(&creds.env), &[])
            .await?;
        out.into_result(op, &creds.secrets)
    }

    /// Run and return the exit status too, for commands whose "no" is an
    /// answer (`merge-base --is-ancestor`, `verify-commit`).
    pub(crate) async fn status(
        &self,
        op: &'static str,
        git_dir: &Path,
        args: &[&OsStr],
        extra_env: &[(&str, &OsStr)],
    ) -> Result<Finished, SourceError> {
        self.run(op, Some(git_dir), args, None, extra_env).await
    }

    fn credentials(&self) -> Result<Credentials, SourceError> {
        let mut env = Vec::new();
        let mut secrets = Vec::new();
        match self.url.transport() {
            Transport::Ssh => {
                env.push(("GIT_SSH_COMMAND".into(), self.ssh_command().into()));
                env.push(("GIT_SSH_VARIANT".into(), "ssh".into()));
            }
            Transport::Https => {
                if let Some(path) = &self.token_file {
                    let token = read_token(path)?;
                    let user = self.url.username().unwrap_or("x-access-token");
                    let basic =
                        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{token}"));
                    // Config from the environment, never argv: /proc/PID/cmdline
                    // is world-readable, /proc/PID/environ is not.
                    env.push(("GIT_CONFIG_COUNT".into(), "1".into()));
                    env.push(("GIT_CONFIG_KEY_0".into(), "http.extraHeader".into()));
                    env.push((
                        "GIT_CONFIG_VALUE_0".into(),
                        format!("Authorization: Basic {basic}").into(),
                    ));
                    secrets.push(token);
                    secrets.push(basic);
                }
            }
            Transport::File | Transport::Git => {}
        }
        Ok(Credentials { env, secrets })
    }

    /// `GIT_SSH_COMMAND` is run by a shell, hence the quoting.
    fn ssh_command(&self) -> String {
        let connect = self.timeout.as_secs().clamp(1, 30);
        let mut cmd = format!(
            "ssh -F /dev/null -o BatchMode=yes -o StrictHostKeyChecking=yes -o UpdateHostKeys=no \
             -o ConnectTimeout={connect} -o ServerAliveInterval=5 -o ServerAliveCountMax=3 -o LogLevel=ERROR"
        );
        if let Some(key) = &self.ssh_key_file {
            cmd.push_str(" -o IdentitiesOnly=yes -i ");
            cmd.push_str(&shell_quote(key.as_os_str()));
        }
        if let Some(known) = &self.known_hosts_file {
            cmd.push_str(" -o GlobalKnownHostsFile=/dev/null -o UserKnownHostsFile=");
            cmd.push_str(&shell_quote(known.as_os_str()));
        }
        cmd
    }

    /// The command as it would be spawned (for tests that inspect argv).
    fn command(
        &self,
        git_dir: Option<&Path>,
        args: &[&OsStr],
        creds_env: Option<&[(OsString, OsString)]>,
        extra_env: &[(&str, &OsStr)],
    ) -> Command {
        let mut cmd = Command::new("git");
        cmd.env_clear();
        let path = std::env::var_os("PATH").unwrap_or_else(|| {
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()
        });
        cmd.env("PATH", path)
            .env("HOME", &self.home)
            .env("XDG_CONFIG_HOME", self.home.join(".config"))
            .env("LC_ALL", "C")
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_TERMINAL_PROMPT", "0")
            .env("GIT_ALLOW_PROTOCOL", self.url.transport().protocol_name())
            .env("GCM_INTERACTIVE", "never");
        // A host behind a proxy or with its own CA keeps working.
        for key in [
            "http_proxy",
            "https_proxy",
            "no_proxy",
            "all_proxy",
            "HTTP_PROXY",
            "HTTPS_PROXY",
            "NO_PROXY",
            "ALL_PROXY",
            "SSL_CERT_FILE",
            "SSL_CERT_DIR",
        ] {
            if let Some(value) = std::env::var_os(key) {
                cmd.env(key, value);
            }
        }
        for (key, value) in creds_env.into_iter().flatten() {
            cmd.env(key, value);
        }
        for (key, value) in extra_env {
            cmd.env(key, value);
        }
        for setting in HARDENING {
            cmd.arg("-c").arg(setting);
        }
        // A stalled https transfer gives up on its own, before the hard kill.
        cmd.arg("-c").arg("http.lowSpeedLimit=1");
        cmd.arg("-c").arg(format!(
            "http.lowSpeedTime={}",
            self.timeout.as_secs().max(1)
        ));
        if let Some(dir) = git_dir {
            let mut flag = OsString::from("--git-dir=");
            flag.push(dir);
            cmd.arg(flag);
        }
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            // Its own group, so a timeout kills ssh and remote helpers too.
            .process_group(0);
        cmd
    }

    async fn run(
        &self,
        op: &'static str,
        git_dir: Option<&Path>,
        args: &[&OsStr],
        creds_env: Option<&[(OsString, OsString)]>,
        extra_env: &[(&str, &OsStr)],
    ) -> Result<Finished, SourceError> {
        let mut cmd = self.command(git_dir, args, creds_env, extra_env);
        let child = cmd.spawn().map_err(|e| SourceError::Spawn(e.to_string()))?;
        let pid = child.id();
        match tokio::time::timeout(self.timeout, child.wait_with_output()).await {
            Ok(Ok(out)) => Ok(Finished {
                success: out.status.success(),
                code: out.status.code(),
                stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
                stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
                url: self.url.clone(),
            }),
            Ok(Err(e)) => Err(SourceError::Git {
                op,
                message: format!("waiting for git failed: {e}"),
            }),
            Err(_) => {
                // Dropping the future kills git itself (kill_on_drop); its
                // children (ssh, git-remote-https, upload-pack) share the
                // group and go with it, so nothing keeps the pipes open.
                if let Some(pid) = pid
                    .and_then(|p| i32::try_from(p).ok())
                    .and_then(rustix::process::Pid::from_raw)
                {
                    let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
                }
                Err(SourceError::Timeout {
                    op,
                    secs: self.timeout.as_secs_f64(),
                })
            }
        }
    }
}

/// A git command that ran to its end.
pub(crate) struct Finished {
    pub(crate) success: bool,
    pub(crate) code: Option<i32>,
    pub(crate) stdout: String,
    stderr: String,
    url: GitUrl,
}

impl Finished {
    fn into_result(self, op: &'static str, secrets: &[String]) -> Result<String, SourceError> {
        if self.success {
            Ok(self.stdout)
        } else {
            Err(SourceError::Git {
                op,
                message: self.message(secrets),
            })
        }
    }

    /// git's own explanation, redacted and cut to what a status line holds.
    pub(crate) fn message(&self, secrets: &[String]) -> String {
        let text = redact(&self.stderr, &self.url, secrets);
        let lines: Vec<&str> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with("hint:"))
            .collect();
        let mut message = lines[lines.len().saturating_sub(3)..].join("; ");
        if message.is_empty() {
            message = match self.code {
                Some(code) => format!("exit status {code}"),
                None => "killed by a signal".into(),
            };
        }
        if message.len() > 500 {
            let mut cut = 500;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
            message.push('…');
        }
        message
    }
}

/// Replace the raw URL (which may carry a user name) and every secret.
fn redact(text: &str, url: &GitUrl, secrets: &[String]) -> String {
    let mut out = text.replace(url.as_str(), url.redacted());
    for secret in secrets.iter().filter(|s| !s.is_empty()) {
        out = out.replace(secret.as_str(), "***");
    }
    out
}

fn read_token(path: &Path) -> Result<String, SourceError> {
    let text = std::fs::read_to_string(path).map_err(|e| SourceError::Credentials {
        what: format!("token_file {}", path.display()),
        message: e.to_string(),
    })?;
    let token = text.trim();
    if token.is_empty() || token.contains(['\n', '\r']) {
        return Err(SourceError::Credentials {
            what: format!("token_file {}", path.display()),
            message: "must hold one token on one line".into(),
        });
    }
    Ok(token.to_string())
}

/// POSIX single-quoting: `'` becomes `'\''`.
fn shell_quote(value: &OsStr) -> String {
    let text = value.to_string_lossy();
    format!("'{}'", text.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runner(url: &str, token_file: Option<PathBuf>) -> GitRunner {
        GitRunner::new(
            GitUrl::parse(url).unwrap_or_else(|e| panic!("{e}")),
            PathBuf::from("/nonexistent-home"),
            Duration::from_secs(5),
            Some(PathBuf::from("/etc/berth/it's key")),
            None,
            token_file,
        )
    }

    fn argv(cmd: &Command) -> Vec<String> {
        cmd.as_std()
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn the_token_is_in_the_environment_never_on_the_command_line() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let token = dir.path().join("token");
        std::fs::write(&token, "tok-SECRET-123\n").unwrap_or_else(|e| panic!("{e}"));
        let r = runner("https://example.com/x.git", Some(token));
        let creds = r.credentials().unwrap_or_else(|e| panic!("{e}"));
        let cmd = r.command(
            Some(Path::new("/r")),
            &[OsStr::new("ls-remote")],
            Some(&creds.env),
            &[],
        );
        assert!(
            argv(&cmd).iter().all(|a| !a.contains("SECRET")),
            "{:?}",
            argv(&cmd)
        );
        let header = cmd
            .as_std()
            .get_envs()
            .find(|(k, _)| *k == "GIT_CONFIG_VALUE_0")
            .and_then(|(_, v)| v.map(|v| v.to_string_lossy().into_owned()))
            .unwrap_or_default();
        let expected =
            base64::engine::general_purpose::STANDARD.encode("x-access-token:tok-SECRET-123");
        assert_eq!(header, format!("Authorization: Basic {expected}"));
        assert!(creds.secrets.contains(&"tok-SECRET-123".to_string()));
    }

    #[test]
    fn hooks_host_config_and_prompts_are_switched_off_on_every_command() {
        let r = runner("ssh://git@example.com/x.git", None);
        let cmd = r.command(None, &[OsStr::new("status")], None, &[]);
        let args = argv(&cmd);
        assert!(args.contains(&"core.hooksPath=/dev/null".to_string()));
        let env: Vec<(String, String)> = cmd
            .as_std()
            .get_envs()
            .filter_map(|(k, v)| {
                Some((
                    k.to_string_lossy().into_owned(),
                    v?.to_string_lossy().into_owned(),
                ))
            })
            .collect();
        for (key, value) in [
            ("GIT_CONFIG_NOSYSTEM", "1"),
            ("GIT_CONFIG_GLOBAL", "/dev/null"),
            ("GIT_TERMINAL_PROMPT", "0"),
            ("GIT_ALLOW_PROTOCOL", "ssh"),
            ("HOME", "/nonexistent-home"),
        ] {
            assert!(
                env.contains(&(key.to_string(), value.to_string())),
                "{key} missing in {env:?}"
            );
        }
    }

    #[test]
    fn the_ssh_command_pins_key_and_host_keys_and_quotes_paths() {
        let mut r = runner("ssh://git@example.com/x.git", None);
        r.known_hosts_file = Some(PathBuf::from("/etc/berth/known_hosts"));
        let ssh = r.ssh_command();
        assert!(
            ssh.contains("-o IdentitiesOnly=yes -i '/etc/berth/it'\\''s key'"),
            "{ssh}"
        );
        assert!(
            ssh.contains("UserKnownHostsFile='/etc/berth/known_hosts'"),
            "{ssh}"
        );
        assert!(ssh.contains("StrictHostKeyChecking=yes"), "{ssh}");
        assert!(ssh.contains("BatchMode=yes"), "{ssh}");
        assert!(ssh.contains("ConnectTimeout=5"), "{ssh}");
    }

    #[test]
    fn errors_are_redacted_and_short() {
        let url =
            GitUrl::parse("https://deploy@example.com/x.git").unwrap_or_else(|e| panic!("{e}"));
        let finished = Finished {
            success: false,
            code: Some(128),
            stdout: String::new(),
            stderr: format!(
                "hint: ignore me\nfatal: unable to access 'https://deploy@example.com/x.git/': token tok-1 rejected\n{}",
                "x".repeat(2000)
            ),
            url,
        };
        let message = finished.message(&["tok-1".to_string()]);
        assert!(!message.contains("deploy"), "{message}");
        assert!(!message.contains("tok-1"), "{message}");
        assert!(message.contains("https://example.com/x.git"), "{message}");
        assert!(message.chars().count() <= 501, "{}", message.len());
    }
}
