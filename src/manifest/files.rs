//! The files a manifest may read (`env {file:}`, `auth.password_file`), and
//! how every file berth reads on a manifest's behalf is opened.
//!
//! Whoever writes manifests is not necessarily whoever owns the host: a
//! manifest reads only regular files that resolve (symlinks followed) inside
//! the agent's `files.allowed_dirs`, at most `files.max_size` bytes. A file
//! is opened without blocking and checked with `fstat` before a byte is
//! read, so a FIFO or a device cannot hang a pass and a huge file costs
//! nothing. Errors name the path as written and what to do, never content.

use std::fmt;
use std::fs::File;
use std::io::Read;
use std::path::{Component, Path, PathBuf};

use rustix::fs::{FileType, Mode, OFlags};

/// The default of the agent key `files.max_size`: 1 MiB.
pub const DEFAULT_MAX_SIZE: u64 = 1024 * 1024;

/// The folder every host may keep manifest secrets in, allowed by default
/// next to the manifest folder.
pub const DEFAULT_SECRETS_DIR: &str = "/etc/berth/secrets";

/// What the agent lets a manifest read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilePolicy {
    /// `files.allowed_dirs`. `None`: the manifest folder and
    /// [`DEFAULT_SECRETS_DIR`].
    pub allowed_dirs: Option<Vec<PathBuf>>,
    /// `files.max_size` in bytes.
    pub max_size: u64,
}

impl Default for FilePolicy {
    fn default() -> Self {
        FilePolicy {
            allowed_dirs: None,
            max_size: DEFAULT_MAX_SIZE,
        }
    }
}

impl FilePolicy {
    /// The allowed folders for manifests in `manifest_dir`, as configured
    /// (before symlinks are resolved).
    pub fn dirs(&self, manifest_dir: &Path) -> Vec<PathBuf> {
        match &self.allowed_dirs {
            Some(dirs) => dirs.clone(),
            None => vec![
                manifest_dir.to_path_buf(),
                PathBuf::from(DEFAULT_SECRETS_DIR),
            ],
        }
    }
}

/// Text read from a file on a manifest's behalf. Its `Debug` never shows
/// the content: it may be a password.
#[derive(Clone, PartialEq, Eq)]
pub struct FileText(pub String);

impl fmt::Debug for FileText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FileText({} bytes)", self.0.len())
    }
}

/// Why a file was not read. Messages name the path as the manifest wrote
/// it, never what the file holds.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FileError {
    #[error("`{written}` does not exist; create it, or fix the path (a relative path is relative to the manifest's folder)")]
    Missing { written: String },
    #[error("`{written}` cannot be read: {why}")]
    Unreadable { written: String, why: String },
    #[error("`{written}` resolves (symlinks followed) outside the folders the agent allows ({allowed}); move the file into one of them, or add its folder to files.allowed_dirs in the agent config")]
    Outside { written: String, allowed: String },
    #[error("`{written}` is {kind}, not a regular file; only regular files are read")]
    NotRegular { written: String, kind: &'static str },
    #[error("`{written}` is larger than the agent's limit of {max} bytes (files.max_size)")]
    TooLarge { written: String, max: u64 },
    #[error("`{written}` is not UTF-8 text")]
    NotText { written: String },
}

fn kind_name(t: FileType) -> &'static str {
    match t {
        FileType::Directory => "a directory",
        FileType::Fifo => "a FIFO (named pipe)",
        FileType::Socket => "a socket",
        FileType::CharacterDevice => "a character device",
        FileType::BlockDevice => "a block device",
        FileType::Symlink => "a symlink",
        _ => "not a regular file",
    }
}

/// Why [`read_regular`] refused, before any naming is added.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpenError {
    NotFound,
    Io(String),
    NotRegular(&'static str),
    TooLarge,
}

impl OpenError {
    fn named(self, written: &str, max: u64) -> FileError {
        let written = written.to_string();
        match self {
            OpenError::NotFound => FileError::Missing { written },
            OpenError::Io(why) => FileError::Unreadable { written, why },
            OpenError::NotRegular(kind) => FileError::NotRegular { written, kind },
            OpenError::TooLarge => FileError::TooLarge { written, max },
        }
    }
}

impl fmt::Display for OpenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OpenError::NotFound => f.write_str("does not exist"),
            OpenError::Io(why) => write!(f, "cannot be read: {why}"),
            OpenError::NotRegular(kind) => write!(f, "is {kind}, not a regular file"),
            OpenError::TooLarge => f.write_str("is too large"),
        }
    }
}

/// Read a regular file of at most `max` bytes without ever blocking on it:
/// it is opened with `O_NONBLOCK` (a FIFO without a writer opens at once)
/// and checked with `fstat` before reading; at most `max + 1` bytes are
/// read, so a file that grows meanwhile cannot make the read unbounded.
/// `follow: false` refuses a symlink as the last component.
pub fn read_regular(path: &Path, max: u64, follow: bool) -> Result<Vec<u8>, OpenError> {
    let mut flags = OFlags::RDONLY | OFlags::NONBLOCK | OFlags::CLOEXEC | OFlags::NOCTTY;
    if !follow {
        flags |= OFlags::NOFOLLOW;
    }
    let fd = rustix::fs::open(path, flags, Mode::empty()).map_err(|e| match e {
        rustix::io::Errno::NOENT => OpenError::NotFound,
        rustix::io::Errno::LOOP => OpenError::NotRegular("a symlink"),
        e => OpenError::Io(std::io::Error::from(e).to_string()),
    })?;
    let stat =
        rustix::fs::fstat(&fd).map_err(|e| OpenError::Io(std::io::Error::from(e).to_string()))?;
    let kind = FileType::from_raw_mode(stat.st_mode);
    if kind != FileType::RegularFile {
        return Err(OpenError::NotRegular(kind_name(kind)));
    }
    if u64::try_from(stat.st_size).unwrap_or(u64::MAX) > max {
        return Err(OpenError::TooLarge);
    }
    let mut bytes = Vec::new();
    File::from(fd)
        .take(max.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(|e| OpenError::Io(e.to_string()))?;
    if bytes.len() as u64 > max {
        return Err(OpenError::TooLarge);
    }
    Ok(bytes)
}

/// Whether `path` (lexically) contains a `..` component.
pub fn has_parent_component(path: &Path) -> bool {
    path.components().any(|c| matches!(c, Component::ParentDir))
}

/// Where `path` leads as far as it exists: symlinks followed through every
/// part that exists (a dangling one included, at most 40 of them), the
/// missing rest appended with `..` taken lexically. For a path that cannot
/// be resolved, where it would be.
fn leads_to(path: &Path, hops: u32) -> PathBuf {
    if let Ok(real) = std::fs::canonicalize(path) {
        return real;
    }
    if hops < 40 {
        if let Ok(target) = std::fs::read_link(path) {
            let parent = path.parent().unwrap_or(Path::new("/"));
            return leads_to(&parent.join(target), hops + 1);
        }
    }
    let Some(parent) = path.parent() else {
        return path.to_path_buf();
    };
    match path.components().next_back() {
        Some(Component::ParentDir) => {
            let base = leads_to(parent, hops);
            base.parent().map_or(base.clone(), Path::to_path_buf)
        }
        Some(Component::Normal(name)) => leads_to(parent, hops).join(name),
        _ => leads_to(parent, hops),
    }
}

/// Read the file a manifest in `manifest_dir` names as `written`, under
/// `policy`. A relative path is relative to `manifest_dir`. The result is
/// the text without one trailing newline.
pub fn read_manifest_file(
    policy: &FilePolicy,
    manifest_dir: &Path,
    written: &str,
) -> Result<FileText, FileError> {
    let joined = manifest_dir.join(written);
    let configured = policy.dirs(manifest_dir);
    // An allowed folder that does not exist allows nothing.
    let allowed: Vec<PathBuf> = configured
        .iter()
        .filter_map(|d| std::fs::canonicalize(d).ok())
        .collect();
    let outside = || FileError::Outside {
        written: written.to_string(),
        allowed: configured
            .iter()
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(", "),
    };
    let real = match std::fs::canonicalize(&joined) {
        Ok(real) => real,
        // Whether a path outside the allowed folders exists (or may be
        // looked at) is not the manifest's to learn: such a path is refused
        // as outside, with the same message whether it exists or not.
        Err(_)
            if !allowed
                .iter()
                .any(|dir| leads_to(&joined, 0).starts_with(dir)) =>
        {
            return Err(outside())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(FileError::Missing {
                written: written.to_string(),
            })
        }
        Err(e) => {
            return Err(FileError::Unreadable {
                written: written.to_string(),
                why: e.to_string(),
            })
        }
    };
    if !allowed.iter().any(|dir| real.starts_with(dir)) {
        return Err(outside());
    }
    // The canonical path has no symlink left; refusing one as the last
    // component closes the window in which the file is swapped for one.
    let bytes = read_regular(&real, policy.max_size, false)
        .map_err(|e| e.named(written, policy.max_size))?;
    let text = String::from_utf8(bytes).map_err(|_| FileError::NotText {
        written: written.to_string(),
    })?;
    Ok(FileText(match text.strip_suffix('\n') {
        Some(t) => t.to_string(),
        None => text,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(dirs: &[&Path]) -> FilePolicy {
        FilePolicy {
            allowed_dirs: Some(dirs.iter().map(|d| d.to_path_buf()).collect()),
            max_size: 64,
        }
    }

    /// A path outside the allowed folders is refused the same way whether
    /// it exists or not, however it leads there; a missing path inside is
    /// said to be missing.
    #[test]
    fn outside_the_allowed_folders_nothing_tells_whether_a_path_exists() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("exists"), "x").unwrap();
        let out = outside.path().display().to_string();
        std::os::unix::fs::symlink(outside.path().join("gone"), dir.path().join("dangling"))
            .unwrap();
        let p = policy(&[dir.path()]);
        for written in [
            format!("{out}/exists"),
            format!("{out}/gone"),
            format!("{out}/no/such/dir/x"),
            "../../../../../../../../nonexistent/x".to_string(),
            "missing/../../../../../../../../../etc/x".to_string(),
            "dangling".to_string(),
        ] {
            let err = read_manifest_file(&p, dir.path(), &written).unwrap_err();
            assert!(matches!(err, FileError::Outside { .. }), "{written}: {err}");
        }
        let err = read_manifest_file(&p, dir.path(), "missing/token").unwrap_err();
        assert!(matches!(err, FileError::Missing { .. }), "{err}");
    }

    #[test]
    fn a_relative_path_is_read_from_the_manifest_folder_without_its_trailing_newline() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("token"), "s3cret\n").unwrap();
        let text = read_manifest_file(&FilePolicy::default(), dir.path(), "token").unwrap();
        assert_eq!(text.0, "s3cret");
        assert_eq!(format!("{text:?}"), "FileText(6 bytes)");
    }

    #[test]
    fn traversal_and_symlinks_out_of_the_allowed_folders_are_refused() {
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("shadow"), "root:x:0\n").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let manifests = dir.path().join("m");
        std::fs::create_dir(&manifests).unwrap();
        std::os::unix::fs::symlink(outside.path().join("shadow"), manifests.join("link")).unwrap();
        let p = policy(&[&manifests]);
        for written in [
            "link".to_string(),
            outside.path().join("shadow").display().to_string(),
            format!(
                "../../../../../../..{}",
                outside.path().join("shadow").display()
            ),
        ] {
            let err = read_manifest_file(&p, &manifests, &written).unwrap_err();
            assert!(matches!(err, FileError::Outside { .. }), "{written}: {err}");
            assert!(!err.to_string().contains("root:x"), "{err}");
        }
    }

    #[test]
    fn a_fifo_is_refused_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("pipe");
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &fifo,
            FileType::Fifo,
            Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        let started = std::time::Instant::now();
        let err = read_manifest_file(&policy(&[dir.path()]), dir.path(), "pipe").unwrap_err();
        assert!(matches!(err, FileError::NotRegular { .. }), "{err}");
        assert!(err.to_string().contains("FIFO"), "{err}");
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
    }

    #[test]
    fn a_directory_a_missing_file_and_a_large_file_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        let big = File::create(dir.path().join("big")).unwrap();
        big.set_len(300 * 1024 * 1024).unwrap();
        let p = policy(&[dir.path()]);
        assert!(matches!(
            read_manifest_file(&p, dir.path(), "sub"),
            Err(FileError::NotRegular { .. })
        ));
        assert!(matches!(
            read_manifest_file(&p, dir.path(), "nope"),
            Err(FileError::Missing { .. })
        ));
        let err = read_manifest_file(&p, dir.path(), "big").unwrap_err();
        assert!(err.to_string().contains("64 bytes"), "{err}");
    }

    #[test]
    fn an_allowed_folder_reached_through_a_symlink_still_allows_its_files() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real");
        std::fs::create_dir(&real).unwrap();
        std::fs::write(real.join("pw"), "x").unwrap();
        std::os::unix::fs::symlink(&real, dir.path().join("current")).unwrap();
        let manifests = dir.path().join("current");
        let text = read_manifest_file(&FilePolicy::default(), &manifests, "pw").unwrap();
        assert_eq!(text.0, "x");
    }
}
