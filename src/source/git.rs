//! [`GitSource`]: one repository, one ref; [`GitSource::sync`] asks the
//! remote where the ref points, fetches, verifies and checks out a new
//! commit, and switches `current` only when every step succeeded.
//!
//! Decisions kept here, in one place: a pinned commit id is never fetched
//! again once present; a ref that names both a branch and a tag is refused;
//! a commit that does not descend from the applied one is applied (it is
//! what the ref says) and counted as a rewind.

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};
use tracing::{info, warn};

use super::checkouts::{self, is_commit_id, Layout, TempCheckout};
use super::command::GitRunner;
use super::url::GitUrl;
use super::{normalise_repo_path, SourceError, SourceStatus};
use crate::source::config::GitSourceConfig;

/// The commit whose manifests are applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revision {
    pub commit: String,
    /// `<state_dir>/git/<hash>/checkouts/<commit>/<path>`: the folder to
    /// load. A fixed path per commit, so one pass reads one commit.
    pub manifests: PathBuf,
}

/// What a successful [`GitSource::sync`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// The ref still points at the applied commit.
    Unchanged,
    /// `current` now names `to`.
    Switched {
        from: Option<String>,
        to: String,
        /// `to` does not descend from `from` (a force-push).
        rewind: bool,
    },
}

/// The repository as both the agent and `plan --ref` use it.
struct Repo {
    layout: Layout,
    git: GitRunner,
    path: String,
    verify: Option<PathBuf>,
}

/// The agent's view of one git source. Owns the state directory's
/// repository folder (an exclusive lock), so two berths cannot share it.
pub struct GitSource {
    repo: Repo,
    git_ref: String,
    applied: Option<Revision>,
    status: SourceStatus,
    /// Held for the life of the source; the lock goes with the file.
    _lock: std::fs::File,
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn short(commit: &str) -> String {
    commit.chars().take(7).collect()
}

/// `<state_dir>/git/<url hash>/`, keyed by the shown URL: a change of
/// user name or token keeps the clone.
fn layout_for(state_dir: &Path, url: &GitUrl) -> Layout {
    let hash = hex::encode(Sha256::digest(url.redacted().as_bytes()));
    Layout {
        base: state_dir.join("git").join(&hash[..16]),
    }
}

/// The manifest folder as the agent shows it: `<state_dir>/git/<url
/// hash>/current/<path>`, the `current` link that always names the applied
/// commit's checkout. (Passes read the applied commit's own folder,
/// [`Revision::manifests`], so a switch in the middle of one is harmless.)
pub fn manifests_link(state_dir: &Path, config: &GitSourceConfig) -> Result<PathBuf, SourceError> {
    let url = GitUrl::parse(&config.url).map_err(|e| SourceError::Config(format!("url: {e}")))?;
    let link = layout_for(state_dir, &url).current_link();
    let path = normalise_repo_path(&config.path);
    Ok(if path.is_empty() {
        link
    } else {
        link.join(path)
    })
}

impl Repo {
    fn new(state_dir: &Path, config: &GitSourceConfig) -> Result<Repo, SourceError> {
        let url =
            GitUrl::parse(&config.url).map_err(|e| SourceError::Config(format!("url: {e}")))?;
        let layout = layout_for(state_dir, &url);
        for dir in [
            layout.base.clone(),
            layout.home(),
            layout.checkouts(),
            layout.plans(),
        ] {
            std::fs::create_dir_all(&dir).map_err(|e| SourceError::io("cannot create", &dir, e))?;
        }
        let git = GitRunner::new(
            url,
            layout.home(),
            config.timeout.get(),
            config.ssh_key_file.clone(),
            config.known_hosts_file.clone(),
            config.token_file.clone(),
        );
        Ok(Repo {
            layout,
            git,
            path: normalise_repo_path(&config.path),
            verify: config.verify.as_ref().map(|v| v.allowed_signers.clone()),
        })
    }

    fn dir(&self) -> PathBuf {
        self.layout.repo()
    }

    /// Create the bare clone on first use (under a temporary name, then
    /// renamed, so an interrupted `init` is never mistaken for a clone).
    async fn ensure(&self) -> Result<(), SourceError> {
        let dir = self.dir();
        if dir.join("HEAD").is_file() {
            return Ok(());
        }
        let tmp = self
            .layout
            .base
            .join(format!(".repo.tmp-{}", checkouts::unique_suffix()));
        let _ = std::fs::remove_dir_all(&tmp);
        self.git
            .local(
                "init",
                None,
                &[
                    OsStr::new("init"),
                    OsStr::new("--bare"),
                    OsStr::new("--quiet"),
                    tmp.as_os_str(),
                ],
            )
            .await?;
        // Sample hooks are inert, but an empty folder says it plainly.
        let _ = std::fs::remove_dir_all(tmp.join("hooks"));
        match std::fs::rename(&tmp, &dir) {
            Ok(()) => Ok(()),
            // Another process (plan --ref) made it first: use theirs.
            Err(_) if dir.join("HEAD").is_file() => {
                let _ = std::fs::remove_dir_all(&tmp);
                Ok(())
            }
            Err(e) => Err(SourceError::io("cannot create", &dir, e)),
        }
    }

    async fn has_commit(&self, object: &str) -> bool {
        let spec = format!("{object}^{{commit}}");
        self.git
            .status(
                "cat-file",
                &self.dir(),
                &[OsStr::new("cat-file"), OsStr::new("-e"), OsStr::new(&spec)],
                &[],
            )
            .await
            .is_ok_and(|f| f.success)
    }

    async fn peel(&self, object: &str) -> Result<String, SourceError> {
        let spec = format!("{object}^{{commit}}");
        let out = self
            .git
            .local(
                "rev-parse",
                Some(&self.dir()),
                &[
                    OsStr::new("rev-parse"),
                    OsStr::new("--verify"),
                    OsStr::new("--quiet"),
                    OsStr::new(&spec),
                ],
            )
            .await?;
        Ok(out.trim().to_string())
    }

    /// Ask the remote where `git_ref` points and make sure that commit is
    /// here; returns its id. `local_ref` is where a fetch stores it.
    async fn fetch(&self, git_ref: &str, local_ref: &str) -> Result<String, SourceError> {
        self.ensure().await?;
        let pinned = git_ref.to_ascii_lowercase();
        if is_commit_id(&pinned) {
            return self.fetch_pinned(&pinned, local_ref).await;
        }
        let candidates: Vec<String> = if git_ref.starts_with("refs/") {
            vec![git_ref.to_string()]
        } else {
            vec![
                format!("refs/heads/{git_ref}"),
                format!("refs/tags/{git_ref}"),
            ]
        };
        let mut args: Vec<&OsStr> = vec![
            OsStr::new("ls-remote"),
            OsStr::new("--quiet"),
            OsStr::new(self.git.url().as_str()),
        ];
        args.extend(candidates.iter().map(OsStr::new));
        let listing = self.git.remote("ls-remote", &self.dir(), &args).await?;
        // ls-remote matches patterns against ref tails; keep exact names only.
        let found: Vec<(&str, &str)> = listing
            .lines()
            .filter_map(|line| line.split_once('\t'))
            .filter(|(_, name)| candidates.iter().any(|c| c == name))
            .collect();
        let (object, name) = match found.as_slice() {
            [] => {
                return Err(SourceError::RefNotFound {
                    git_ref: git_ref.to_string(),
                    url: self.git.url().redacted().to_string(),
                })
            }
            [one] => *one,
            _ => return Err(SourceError::AmbiguousRef(git_ref.to_string())),
        };
        if self.has_commit(object).await {
            return self.peel(object).await;
        }
        let refspec = format!("+{name}:{local_ref}");
        self.git
            .remote(
                "fetch",
                &self.dir(),
                &[
                    OsStr::new("fetch"),
                    OsStr::new("--quiet"),
                    OsStr::new("--no-tags"),
                    OsStr::new("--no-write-fetch-head"),
                    OsStr::new(self.git.url().as_str()),
                    OsStr::new(&refspec),
                ],
            )
            .await?;
        self.housekeeping().await;
        self.peel(local_ref).await
    }

    /// A full commit id: immutable, so once here it is never asked for again
    /// (a pinned host keeps working with the remote gone).
    async fn fetch_pinned(&self, commit: &str, local_ref: &str) -> Result<String, SourceError> {
        if self.has_commit(commit).await {
            return Ok(commit.to_string());
        }
        let url = OsStr::new(self.git.url().as_str());
        let refspec = format!("+{commit}:{local_ref}");
        let direct = self
            .git
            .remote(
                "fetch",
                &self.dir(),
                &[
                    OsStr::new("fetch"),
                    OsStr::new("--quiet"),
                    OsStr::new("--no-tags"),
                    OsStr::new("--no-write-fetch-head"),
                    url,
                    OsStr::new(&refspec),
                ],
            )
            .await;
        if direct.is_err() {
            // Servers that refuse unadvertised ids: fetch every branch and
            // tag and look for the commit among them.
            self.git
                .remote(
                    "fetch",
                    &self.dir(),
                    &[
                        OsStr::new("fetch"),
                        OsStr::new("--quiet"),
                        OsStr::new("--no-tags"),
                        OsStr::new("--no-write-fetch-head"),
                        url,
                        OsStr::new("+refs/heads/*:refs/berth/all/heads/*"),
                        OsStr::new("+refs/tags/*:refs/berth/all/tags/*"),
                    ],
                )
                .await?;
        }
        self.housekeeping().await;
        if self.has_commit(commit).await {
            Ok(commit.to_string())
        } else {
            Err(SourceError::CommitNotFound {
                commit: commit.to_string(),
                url: self.git.url().redacted().to_string(),
            })
        }
    }

    /// Pack files pile up one per fetch; `gc --auto` keeps them in check
    /// and does nothing most of the time. Never fatal.
    async fn housekeeping(&self) {
        let args = [
            OsStr::new("-c"),
            OsStr::new("gc.auto=6700"),
            OsStr::new("gc"),
            OsStr::new("--auto"),
            OsStr::new("--quiet"),
        ];
        if let Err(e) = self.git.local("gc", Some(&self.dir()), &args).await {
            warn!(error = %e, "source: git gc failed (harmless; retried after the next fetch)");
        }
    }

    /// Refuse a commit that fails the configured checks: its signature, and
    /// the manifest folder existing in it.
    async fn admit(&self, commit: &str) -> Result<(), SourceError> {
        if let Some(signers) = &self.verify {
            self.verify_signature(commit, signers).await?;
        }
        if !self.path.is_empty() {
            let spec = format!("{commit}:{}", self.path);
            let kind = self
                .git
                .status(
                    "cat-file",
                    &self.dir(),
                    &[OsStr::new("cat-file"), OsStr::new("-t"), OsStr::new(&spec)],
                    &[],
                )
                .await?;
            if !(kind.success && kind.stdout.trim() == "tree") {
                return Err(SourceError::PathMissing {
                    short: short(commit),
                    path: self.path.clone(),
                });
            }
        }
        Ok(())
    }

    async fn verify_signature(&self, commit: &str, signers: &Path) -> Result<(), SourceError> {
        let not_verified = |detail: String| SourceError::NotVerified {
            short: short(commit),
            detail,
        };
        // A missing file must read as what it is, not as "unsigned".
        if let Err(e) = std::fs::metadata(signers) {
            return Err(not_verified(format!(
                " (verify.allowed_signers {} cannot be read: {e})",
                signers.display()
            )));
        }
        let mut signers_flag = OsString::from("gpg.ssh.allowedSignersFile=");
        signers_flag.push(signers);
        let finished = self
            .git
            .status(
                "verify-commit",
                &self.dir(),
                &[
                    OsStr::new("-c"),
                    OsStr::new("gpg.format=ssh"),
                    OsStr::new("-c"),
                    &signers_flag,
                    OsStr::new("verify-commit"),
                    OsStr::new(commit),
                ],
                &[],
            )
            .await?;
        if finished.success {
            Ok(())
        } else {
            Err(not_verified(String::new()))
        }
    }

    /// Is `ancestor` an ancestor of (or equal to) `commit`? `None` when git
    /// cannot tell (the old commit's objects are gone).
    async fn is_ancestor(&self, ancestor: &str, commit: &str) -> Option<bool> {
        let finished = self
            .git
            .status(
                "merge-base",
                &self.dir(),
                &[
                    OsStr::new("merge-base"),
                    OsStr::new("--is-ancestor"),
                    OsStr::new(ancestor),
                    OsStr::new(commit),
                ],
                &[],
            )
            .await
            .ok()?;
        match finished.code {
            Some(0) => Some(true),
            Some(1) => Some(false),
            _ => None,
        }
    }

    /// `<checkout>/<path>`, refusing a path that leaves the checkout
    /// through a symlink committed in the repository.
    fn manifests_in(&self, checkout: &Path, commit: &str) -> Result<PathBuf, SourceError> {
        let dir = if self.path.is_empty() {
            checkout.to_path_buf()
        } else {
            checkout.join(&self.path)
        };
        let missing = || SourceError::PathMissing {
            short: short(commit),
            path: self.path.clone(),
        };
        let real = std::fs::canonicalize(&dir).map_err(|_| missing())?;
        let root = std::fs::canonicalize(checkout).map_err(|_| missing())?;
        if !real.starts_with(&root) || !real.is_dir() {
            return Err(missing());
        }
        Ok(dir)
    }

    async fn commit_info(&self, commit: &str) -> (Option<i64>, Option<String>) {
        let out = self
            .git
            .local(
                "log",
                Some(&self.dir()),
                &[
                    OsStr::new("log"),
                    OsStr::new("-1"),
                    OsStr::new("--no-show-signature"),
                    OsStr::new("--format=%ct%n%s"),
                    OsStr::new(commit),
                ],
            )
            .await
            .unwrap_or_default();
        let mut lines = out.lines();
        let time = lines.next().and_then(|t| t.trim().parse().ok());
        let subject = lines.next().map(str::to_string);
        (time, subject)
    }

    async fn set_ref(&self, name: &str, commit: &str) -> Result<(), SourceError> {
        self.git
            .local(
                "update-ref",
                Some(&self.dir()),
                &[
                    OsStr::new("update-ref"),
                    OsStr::new(name),
                    OsStr::new(commit),
                ],
            )
            .await
            .map(|_| ())
    }
}

impl GitSource {
    /// Open (or create) the source's state under `state_dir` and adopt the
    /// checkout a previous run left in `current`, so a host that restarts
    /// offline applies its last good commit at once. No network access.
    pub async fn open(
        state_dir: &Path,
        config: &GitSourceConfig,
    ) -> Result<GitSource, SourceError> {
        let repo = Repo::new(state_dir, config)?;
        let lock = lock(&repo.layout)?;
        let mut status = SourceStatus {
            url: repo.git.url().redacted().to_string(),
            git_ref: config.git_ref.clone(),
            path: repo.path.clone(),
            ..SourceStatus::default()
        };
        let mut applied = None;
        if let Some(commit) = checkouts::read_current(&repo.layout) {
            match repo.manifests_in(&repo.layout.checkout(&commit), &commit) {
                Ok(manifests) => {
                    let (time, subject) = repo.commit_info(&commit).await;
                    status.commit = Some(commit.clone());
                    status.commit_time = time;
                    status.commit_subject = subject;
                    info!(commit = %short(&commit), "source: using the last applied commit until the first fetch");
                    applied = Some(Revision { commit, manifests });
                }
                // The path changed in the config since: wait for a sync.
                Err(e) => status.last_error = Some(e.to_string()),
            }
        }
        Ok(GitSource {
            repo,
            git_ref: config.git_ref.clone(),
            applied,
            status,
            _lock: lock,
        })
    }

    /// The applied commit and its manifest folder, if any commit was ever
    /// applied. `None` means: nothing to load yet (remove nothing).
    pub fn current(&self) -> Option<&Revision> {
        self.applied.as_ref()
    }

    pub fn status(&self) -> &SourceStatus {
        &self.status
    }

    /// How long any one git command may run.
    pub fn timeout(&self) -> std::time::Duration {
        self.repo.git.timeout()
    }

    /// Fetch the ref; if it points at a new commit that passes the checks,
    /// check it out and switch `current` to it. Any error leaves the applied
    /// commit as it was and is recorded in [`Self::status`].
    pub async fn sync(&mut self) -> Result<Change, SourceError> {
        self.status.last_fetch = Some(now_secs());
        let result = self.try_sync().await;
        match &result {
            Ok(Change::Unchanged) => self.status.last_error = None,
            Ok(Change::Switched { from, to, rewind }) => {
                self.status.last_error = None;
                if *rewind {
                    self.status.rewinds += 1;
                    warn!(
                        from = %from.as_deref().map(short).unwrap_or_default(),
                        to = %short(to),
                        git_ref = %self.git_ref,
                        "source: rewind: the ref moved to a commit that does not descend from the applied one; applying it"
                    );
                } else {
                    info!(commit = %short(to), git_ref = %self.git_ref, "source: switched to a new commit");
                }
            }
            Err(e) => {
                if e.is_fetch_failure() {
                    self.status.fetch_failures += 1;
                }
                self.status.last_error = Some(e.to_string());
                warn!(error = %e, kept = %self.applied.as_ref().map(|a| short(&a.commit)).unwrap_or_else(|| "none".into()), "source: {e}");
            }
        }
        result
    }

    async fn try_sync(&mut self) -> Result<Change, SourceError> {
        let commit = self.repo.fetch(&self.git_ref, "refs/berth/fetched").await?;
        self.status.last_success = Some(now_secs());
        self.status.remote_commit = Some(commit.clone());
        if self.applied.as_ref().is_some_and(|a| a.commit == commit) {
            return Ok(Change::Unchanged);
        }
        self.repo.admit(&commit).await?;
        let checkout = self.repo.layout.checkout(&commit);
        if !checkout.is_dir() {
            checkouts::materialise(&self.repo.git, &self.repo.dir(), &commit, &checkout).await?;
        }
        let manifests = self.repo.manifests_in(&checkout, &commit)?;
        let from = self.applied.as_ref().map(|a| a.commit.clone());
        let rewind = match &from {
            Some(old) => self.repo.is_ancestor(old, &commit).await == Some(false),
            None => false,
        };
        checkouts::switch_current(&self.repo.layout, &commit)?;
        // Keeps the applied commit's objects safe from gc.
        if let Err(e) = self.repo.set_ref("refs/berth/applied", &commit).await {
            warn!(error = %e, "source: cannot record the applied commit in the clone");
        }
        let mut keep = vec![commit.as_str()];
        if let Some(old) = &from {
            keep.push(old.as_str());
        }
        for failure in checkouts::prune(&self.repo.layout, &keep) {
            warn!("source: {failure}");
        }
        let (time, subject) = self.repo.commit_info(&commit).await;
        self.status.commit = Some(commit.clone());
        self.status.commit_time = time;
        self.status.commit_subject = subject;
        self.applied = Some(Revision {
            commit: commit.clone(),
            manifests,
        });
        Ok(Change::Switched {
            from,
            to: commit,
            rewind,
        })
    }
}

/// `berth plan --ref REF`: fetch `git_ref` into the clone under
/// `state_dir`, verify it as the agent would, and check it out into a
/// temporary folder (removed when the result is dropped). Takes no lock:
/// it may run beside the agent, and touches neither `current` nor its refs.
pub async fn checkout_ref(
    state_dir: &Path,
    config: &GitSourceConfig,
    git_ref: &str,
) -> Result<TempCheckout, SourceError> {
    let repo = Repo::new(state_dir, config)?;
    let suffix = format!(
        "{}-{}",
        std::process::id(),
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or_default()
    );
    let local_ref = format!("refs/berth/plan/{suffix}");
    let fetched = repo.fetch(git_ref, &local_ref).await;
    let commit = match fetched {
        Ok(commit) => commit,
        Err(e) => {
            let _ = delete_ref(&repo, &local_ref).await;
            return Err(e);
        }
    };
    // Pin the commit while it is checked out, then drop the ref.
    let admitted = repo.admit(&commit).await;
    let dir = repo.layout.plans().join(&suffix);
    let result = match admitted {
        Ok(()) => {
            let dest = dir.join("tree");
            let _ = std::fs::create_dir_all(&dir);
            match checkouts::materialise(&repo.git, &repo.dir(), &commit, &dest).await {
                Ok(()) => repo
                    .manifests_in(&dest, &commit)
                    .map(|manifests| TempCheckout::new(dir.clone(), manifests, commit.clone())),
                Err(e) => Err(e),
            }
        }
        Err(e) => Err(e),
    };
    let _ = delete_ref(&repo, &local_ref).await;
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    result
}

async fn delete_ref(repo: &Repo, name: &str) -> Result<(), SourceError> {
    repo.git
        .local(
            "update-ref",
            Some(&repo.dir()),
            &[OsStr::new("update-ref"), OsStr::new("-d"), OsStr::new(name)],
        )
        .await
        .map(|_| ())
}

/// An exclusive, non-blocking lock on the source's folder.
fn lock(layout: &Layout) -> Result<std::fs::File, SourceError> {
    let path = layout.lock_file();
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| SourceError::io("cannot open", &path, e))?;
    rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive).map_err(
        |_| SourceError::Locked {
            dir: layout.base.clone(),
            lock: path.clone(),
        },
    )?;
    Ok(file)
}
