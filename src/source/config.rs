//! The `source.git` keys of the agent config, and the rules serde cannot
//! express. Kept with the source so the agent config only assembles it.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::manifest::duration::Duration;

/// `source:`: where the manifests come from when berth fetches them itself.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    pub git: GitSourceConfig,
}

/// `source.git`: one repository, one ref, one folder in it.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct GitSourceConfig {
    /// `ssh://`, `https://`, `file://`, `git://` or scp-like `user@host:path`.
    /// Never with a password in it: that would show in `ps`; use `token_file`.
    pub url: String,
    /// A branch, a tag, a full ref (`refs/heads/x`) or a full commit id (pinned).
    #[serde(rename = "ref")]
    pub git_ref: String,
    /// The folder of the repository that holds the manifests; empty = its root.
    #[serde(default)]
    pub path: String,
    /// How often the remote is asked for the ref.
    #[serde(default = "default_source_interval")]
    pub interval: Duration,
    /// Hard limit on any one git command (a dead remote must not hold berth).
    #[serde(default = "default_source_timeout")]
    pub timeout: Duration,
    /// Private key for ssh (`-i`, with `IdentitiesOnly`).
    #[serde(default)]
    pub ssh_key_file: Option<PathBuf>,
    /// A token for https, read at every fetch; sent as HTTP basic auth.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// The only host keys ssh accepts (`StrictHostKeyChecking=yes`).
    #[serde(default)]
    pub known_hosts_file: Option<PathBuf>,
    #[serde(default)]
    pub verify: Option<VerifyConfig>,
}

/// `source.git.verify`: apply only commits whose ssh signature verifies.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct VerifyConfig {
    /// git's `gpg.ssh.allowedSignersFile`: lines `PRINCIPAL KEYTYPE KEY`.
    pub allowed_signers: PathBuf,
}

fn default_source_interval() -> Duration {
    Duration::from_secs(60)
}

fn default_source_timeout() -> Duration {
    Duration::from_secs(60)
}

impl GitSourceConfig {
    /// Rules serde cannot express; the message names the key to fix.
    pub fn check(&self) -> Result<(), String> {
        let url = crate::source::url::GitUrl::parse(&self.url).map_err(|e| format!("url: {e}"))?;
        check_git_ref(&self.git_ref).map_err(|e| format!("ref: {e}"))?;
        crate::source::check_repo_path(&self.path).map_err(|e| format!("path: {e}"))?;
        if self.interval.get().is_zero() {
            return Err("interval must be longer than 0s".into());
        }
        if self.timeout.get().is_zero() {
            return Err("timeout must be longer than 0s".into());
        }
        let ssh = url.transport() == crate::source::url::Transport::Ssh;
        if !ssh && self.ssh_key_file.is_some() {
            return Err(format!(
                "ssh_key_file is set but url {} is not an ssh URL",
                url.redacted()
            ));
        }
        if !ssh && self.known_hosts_file.is_some() {
            return Err(format!(
                "known_hosts_file is set but url {} is not an ssh URL",
                url.redacted()
            ));
        }
        if self.token_file.is_some() && url.transport() != crate::source::url::Transport::Https {
            return Err(format!(
                "token_file is set but url {} is not https:// (a token is only ever sent over https)",
                url.redacted()
            ));
        }
        Ok(())
    }
}

/// A ref as git would accept it, minus what could be read as an option or
/// a revision expression (`main~1`, `@{u}`): berth follows names, not formulas.
fn check_git_ref(git_ref: &str) -> Result<(), String> {
    if git_ref.is_empty() {
        return Err("is empty; write a branch (main), a tag (v1.2) or a full commit id".into());
    }
    let bad_char = git_ref
        .chars()
        .find(|c| c.is_whitespace() || c.is_control() || "~^:?*[\\".contains(*c));
    if let Some(c) = bad_char {
        return Err(format!(
            "`{git_ref}` contains {c:?}, which a git ref cannot contain"
        ));
    }
    if git_ref.starts_with(['-', '/', '.'])
        || git_ref.ends_with(['/', '.'])
        || git_ref.ends_with(".lock")
        || git_ref.contains("..")
        || git_ref.contains("//")
        || git_ref.contains("@{")
        || git_ref == "@"
        || git_ref.contains("/.")
    {
        return Err(format!("`{git_ref}` is not a valid git ref name"));
    }
    Ok(())
}
