//! GitOps: manifests from a git repository. berth keeps its own clone,
//! fetches one ref, verifies the commit, checks it out into a fresh folder
//! and switches to it atomically; a failure anywhere keeps the last good one.
//!
//! - [`url`]: which URLs are accepted, and their secret-free form.
//! - `command`: the sandboxed `git` runner (no hooks, no host config, deadlines).
//! - `checkouts`: checkout folders, the atomic `current` link, pruning.
//! - [`git`]: [`GitSource`], the sync logic, and [`checkout_ref`] for `plan --ref`.
//!
//! Why the `git` program rather than a library: it verifies ssh signatures
//! against an allowed-signers file (`gpg.ssh.allowedSignersFile`) exactly as
//! the people signing commits check them, it speaks every transport and
//! credential form a host already uses, and it is patched by the host's
//! distribution. Its risks (hooks, config, hangs) are closed in `command`.

mod checkouts;
mod command;
pub mod config;
pub mod git;
pub mod url;

use serde::{Deserialize, Serialize};

pub use checkouts::TempCheckout;
pub use git::{checkout_ref, manifests_link, Change, GitSource, Revision};
pub use url::{GitUrl, Transport};

/// Why a sync did not apply a new commit. Messages never hold a credential
/// or a URL's user part.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("source.git.{0}")]
    Config(String),
    #[error(
        "git {op} did not finish within {secs}s (remote unreachable or not answering); killed"
    )]
    Timeout { op: &'static str, secs: f64 },
    #[error("git {op} failed: {message}")]
    Git { op: &'static str, message: String },
    #[error("cannot run git (berth's git source needs the git program installed): {0}")]
    Spawn(String),
    #[error("{what}: {message}")]
    Credentials { what: String, message: String },
    #[error("ref `{git_ref}` does not exist on {url}")]
    RefNotFound { git_ref: String, url: String },
    #[error("ref `{0}` is both a branch and a tag; write refs/heads/{0} or refs/tags/{0}")]
    AmbiguousRef(String),
    #[error("commit {commit} is not in the repository at {url}")]
    CommitNotFound { commit: String, url: String },
    #[error("commit {short} not applied: no valid signature{detail}")]
    NotVerified { short: String, detail: String },
    #[error("commit {short} not applied: `{path}` is not a folder in it")]
    PathMissing { short: String, path: String },
    #[error("{what} {}: {cause}", path.display())]
    Io {
        what: &'static str,
        path: std::path::PathBuf,
        cause: std::io::Error,
    },
    #[error("state directory {} is in use by another berth (lock held on {})", dir.display(), lock.display())]
    Locked {
        dir: std::path::PathBuf,
        lock: std::path::PathBuf,
    },
}

impl SourceError {
    pub(crate) fn io(what: &'static str, path: &std::path::Path, source: std::io::Error) -> Self {
        SourceError::Io {
            what,
            path: path.to_path_buf(),
            cause: source,
        }
    }

    /// True when the remote could not be asked (as opposed to a commit
    /// that was fetched and refused): counted as a fetch failure.
    pub fn is_fetch_failure(&self) -> bool {
        matches!(
            self,
            SourceError::Timeout { .. }
                | SourceError::Git { .. }
                | SourceError::Spawn(_)
                | SourceError::Credentials { .. }
                | SourceError::RefNotFound { .. }
                | SourceError::AmbiguousRef(_)
                | SourceError::CommitNotFound { .. }
        )
    }
}

/// What `berth status`, `/v1/status` and the metrics show about the source.
/// Holds no credential: the URL is the redacted form.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SourceStatus {
    pub url: String,
    #[serde(rename = "ref")]
    pub git_ref: String,
    pub path: String,
    /// The commit whose manifests are applied (the last good one).
    pub commit: Option<String>,
    /// Its committer time, Unix seconds.
    pub commit_time: Option<i64>,
    pub commit_subject: Option<String>,
    /// What the ref pointed at on the last successful fetch; differs from
    /// `commit` while a newer commit is refused.
    pub remote_commit: Option<String>,
    /// Unix seconds of the last fetch attempt, and of the last one that
    /// reached the remote.
    pub last_fetch: Option<u64>,
    pub last_success: Option<u64>,
    /// Why the last sync applied nothing new; `None` after a good sync.
    pub last_error: Option<String>,
    /// Fetches that failed (remote unreachable, ref gone, timeout), since start.
    pub fetch_failures: u64,
    /// Commits applied that did not descend from the one before (force-pushes).
    pub rewinds: u64,
}

/// `source.git.path`: relative, inside the repository, no `..`. Empty or
/// `.` is the repository's root.
pub fn check_repo_path(path: &str) -> Result<(), String> {
    if path.starts_with('/') {
        return Err(format!(
            "`{path}` must be relative to the repository's root (e.g. hosts/edge)"
        ));
    }
    if path.chars().any(|c| c.is_control() || c == '\\') {
        return Err(format!("`{path}` contains a control character or `\\`"));
    }
    if path.split('/').any(|part| part == "..") {
        return Err(format!("`{path}` must not leave the repository (`..`)"));
    }
    Ok(())
}

/// The path in canonical git form: no empty, `.` or trailing segments.
pub(crate) fn normalise_repo_path(path: &str) -> String {
    path.split('/')
        .filter(|p| !p.is_empty() && *p != ".")
        .collect::<Vec<_>>()
        .join("/")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_repository_path_must_stay_inside_the_repository() {
        assert!(check_repo_path("").is_ok());
        assert!(check_repo_path(".").is_ok());
        assert!(check_repo_path("hosts/edge/").is_ok());
        assert!(check_repo_path("/etc").unwrap_err().contains("relative"));
        assert!(check_repo_path("hosts/../..").unwrap_err().contains(".."));
        assert!(check_repo_path("..").is_err());
        assert_eq!(normalise_repo_path("./hosts//edge/"), "hosts/edge");
        assert_eq!(normalise_repo_path("."), "");
    }

    #[test]
    fn the_status_serialises_with_ref_as_its_key() {
        let status = SourceStatus {
            git_ref: "main".into(),
            ..SourceStatus::default()
        };
        let json = serde_json::to_value(&status).unwrap_or_default();
        assert_eq!(json["ref"], "main");
    }
}
