//! Checkout folders on disk: one fresh, complete folder per commit, a
//! `current` symlink switched with rename(2), and pruning of the rest.
//!
//! A checkout is written under a temporary name, flushed to disk, then
//! renamed into place, so a crash or a power cut never leaves a half
//! checkout that looks complete; `current` only ever names a finished one.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use super::command::GitRunner;
use super::SourceError;

/// Where one repository's state lives: `<state_dir>/git/<url hash>/`.
#[derive(Debug, Clone)]
pub(crate) struct Layout {
    pub(crate) base: PathBuf,
}

impl Layout {
    pub(crate) fn repo(&self) -> PathBuf {
        self.base.join("repo")
    }
    /// git's HOME: empty, so no user config is ever read.
    pub(crate) fn home(&self) -> PathBuf {
        self.base.join("home")
    }
    pub(crate) fn checkouts(&self) -> PathBuf {
        self.base.join("checkouts")
    }
    /// Temporary checkouts for `plan --ref`, apart from the agent's.
    pub(crate) fn plans(&self) -> PathBuf {
        self.base.join("plans")
    }
    pub(crate) fn current_link(&self) -> PathBuf {
        self.base.join("current")
    }
    pub(crate) fn checkout(&self, commit: &str) -> PathBuf {
        self.checkouts().join(commit)
    }
    pub(crate) fn lock_file(&self) -> PathBuf {
        self.base.join("lock")
    }
}

/// A full commit id (sha1 or sha256), lowercase hex.
pub(crate) fn is_commit_id(text: &str) -> bool {
    (text.len() == 40 || text.len() == 64)
        && text
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The commit `current` names, if it points at a finished checkout.
pub(crate) fn read_current(layout: &Layout) -> Option<String> {
    let target = std::fs::read_link(layout.current_link()).ok()?;
    let commit = target.file_name()?.to_str()?.to_string();
    (is_commit_id(&commit) && layout.checkout(&commit).is_dir()).then_some(commit)
}

/// A name no other writer uses at the same time.
pub(crate) fn unique_suffix() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    format!("{}-{nanos}", std::process::id())
}

/// Write `commit`'s tree into `dest` (which must not exist), completely,
/// flushed, then renamed into place. Uses a private index so the clone's
/// own HEAD and index are never touched.
pub(crate) async fn materialise(
    git: &GitRunner,
    repo: &Path,
    commit: &str,
    dest: &Path,
) -> Result<(), SourceError> {
    let parent = dest.parent().ok_or_else(|| {
        SourceError::io(
            "checkout folder",
            dest,
            std::io::ErrorKind::InvalidInput.into(),
        )
    })?;
    let tmp = parent.join(format!(".tmp-{}", unique_suffix()));
    let index = parent.join(format!(".tmp-{}.index", unique_suffix()));
    std::fs::create_dir_all(&tmp).map_err(|e| SourceError::io("cannot create", &tmp, e))?;
    let result = write_tree(git, repo, commit, &tmp, &index).await;
    let _ = std::fs::remove_file(&index);
    if let Err(e) = result {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    let dest_owned = dest.to_path_buf();
    let tmp_owned = tmp.clone();
    let finished = tokio::task::spawn_blocking(move || -> Result<(), SourceError> {
        sync_tree(&tmp_owned).map_err(|e| SourceError::io("cannot flush", &tmp_owned, e))?;
        std::fs::rename(&tmp_owned, &dest_owned)
            .map_err(|e| SourceError::io("cannot move checkout into place", &dest_owned, e))?;
        if let Some(parent) = dest_owned.parent() {
            sync_dir(parent).map_err(|e| SourceError::io("cannot flush", parent, e))?;
        }
        Ok(())
    })
    .await
    .unwrap_or_else(|e| {
        Err(SourceError::io(
            "checkout task failed",
            &tmp,
            std::io::Error::other(e.to_string()),
        ))
    });
    if finished.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    finished
}

async fn write_tree(
    git: &GitRunner,
    repo: &Path,
    commit: &str,
    tmp: &Path,
    index: &Path,
) -> Result<(), SourceError> {
    let env = [("GIT_INDEX_FILE", index.as_os_str())];
    git.local_with_env(
        "read-tree",
        Some(repo),
        &[OsStr::new("read-tree"), OsStr::new(commit)],
        &env,
    )
    .await?;
    let mut work_tree = std::ffi::OsString::from("--work-tree=");
    work_tree.push(tmp);
    git.local_with_env(
        "checkout-index",
        Some(repo),
        &[
            work_tree.as_os_str(),
            OsStr::new("checkout-index"),
            OsStr::new("--all"),
            OsStr::new("--force"),
        ],
        &env,
    )
    .await?;
    Ok(())
}

/// fsync every file and folder below `dir` (symlinks are not followed).
fn sync_tree(dir: &Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        if kind.is_dir() {
            sync_tree(&entry.path())?;
        } else if kind.is_file() {
            std::fs::File::open(entry.path())?.sync_all()?;
        }
    }
    sync_dir(dir)
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// Point `current` at `checkouts/<commit>`: a new symlink renamed over the
/// old one, so a reader sees the old or the new checkout, never neither.
pub(crate) fn switch_current(layout: &Layout, commit: &str) -> Result<(), SourceError> {
    let link = layout.current_link();
    let tmp = layout
        .base
        .join(format!(".current.tmp-{}", unique_suffix()));
    let target = Path::new("checkouts").join(commit);
    std::os::unix::fs::symlink(&target, &tmp)
        .map_err(|e| SourceError::io("cannot create link", &tmp, e))?;
    if let Err(e) = std::fs::rename(&tmp, &link) {
        let _ = std::fs::remove_file(&tmp);
        return Err(SourceError::io("cannot switch", &link, e));
    }
    sync_dir(&layout.base).map_err(|e| SourceError::io("cannot flush", &layout.base, e))
}

/// Remove every checkout except `keep` (and leftovers of interrupted ones).
pub(crate) fn prune(layout: &Layout, keep: &[&str]) -> Vec<String> {
    let mut failures = Vec::new();
    let Ok(entries) = std::fs::read_dir(layout.checkouts()) else {
        return failures;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        if keep.iter().any(|k| OsStr::new(k) == name) {
            continue;
        }
        let path = entry.path();
        let removed = if entry.file_type().is_ok_and(|t| t.is_dir()) {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        if let Err(e) = removed {
            failures.push(format!("cannot remove {}: {e}", path.display()));
        }
    }
    failures
}

/// A commit checked out for `plan --ref`, removed when dropped.
#[derive(Debug)]
pub struct TempCheckout {
    dir: PathBuf,
    manifests: PathBuf,
    commit: String,
}

impl TempCheckout {
    pub(crate) fn new(dir: PathBuf, manifests: PathBuf, commit: String) -> Self {
        TempCheckout {
            dir,
            manifests,
            commit,
        }
    }

    /// The manifest folder of the checked-out commit.
    pub fn manifests(&self) -> &Path {
        &self.manifests
    }

    pub fn commit(&self) -> &str {
        &self.commit
    }
}

impl Drop for TempCheckout {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "1111111111111111111111111111111111111111";
    const B: &str = "2222222222222222222222222222222222222222";

    fn layout() -> (tempfile::TempDir, Layout) {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let layout = Layout {
            base: dir.path().to_path_buf(),
        };
        std::fs::create_dir_all(layout.checkouts()).unwrap_or_else(|e| panic!("{e}"));
        (dir, layout)
    }

    #[test]
    fn current_switches_between_finished_checkouts_only() {
        let (_dir, layout) = layout();
        assert_eq!(read_current(&layout), None);
        std::fs::create_dir(layout.checkout(A)).unwrap_or_else(|e| panic!("{e}"));
        switch_current(&layout, A).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(read_current(&layout).as_deref(), Some(A));
        std::fs::create_dir(layout.checkout(B)).unwrap_or_else(|e| panic!("{e}"));
        switch_current(&layout, B).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(read_current(&layout).as_deref(), Some(B));
        // A link to a checkout that is gone is not a current commit.
        std::fs::remove_dir(layout.checkout(B)).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(read_current(&layout), None);
        let leftovers: Vec<_> = std::fs::read_dir(&layout.base)
            .unwrap_or_else(|e| panic!("{e}"))
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with(".current"))
            .collect();
        assert!(leftovers.is_empty());
    }

    #[test]
    fn prune_keeps_only_what_it_is_told_and_clears_leftovers() {
        let (_dir, layout) = layout();
        for name in [A, B, ".tmp-1-2", "3333333333333333333333333333333333333333"] {
            std::fs::create_dir(layout.checkouts().join(name)).unwrap_or_else(|e| panic!("{e}"));
        }
        std::fs::write(layout.checkouts().join(".tmp-1-3.index"), "")
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(prune(&layout, &[A, B]).is_empty());
        let mut left: Vec<String> = std::fs::read_dir(layout.checkouts())
            .unwrap_or_else(|e| panic!("{e}"))
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, vec![A.to_string(), B.to_string()]);
    }

    #[test]
    fn commit_ids_are_full_lowercase_hex() {
        assert!(is_commit_id(A));
        assert!(is_commit_id(&"a".repeat(64)));
        assert!(!is_commit_id("1a2b3c4"));
        assert!(!is_commit_id(&"A".repeat(40)));
        assert!(!is_commit_id(&"g".repeat(40)));
    }
}
