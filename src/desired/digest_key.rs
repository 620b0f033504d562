//! The host's digest key: what keys every digest berth derives from a secret
//! value (the secret part of the spec hash, the digests in the applied
//! record). Labels are readable by anyone who can `docker inspect`; an
//! unkeyed digest of a short secret can be guessed offline, a keyed one
//! cannot without this key.
//!
//! The key is 32 random bytes, kept in the agent's `state_dir` as 64 hex
//! digits in a file only its owner may read. The agent creates it on its
//! first start: written to a temporary file, then linked into place, which
//! fails when the name exists. So when two agents race, the first link wins
//! and both read and use that one key (a rename would replace a key another
//! agent already used). Commands that only look (`berth plan`) read it and
//! never create it.

use std::fmt;
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The key file's name in `state_dir`.
pub const KEY_FILE: &str = "digest.key";

/// The key. Its `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct DigestKey([u8; 32]);

impl fmt::Debug for DigestKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DigestKey(..)")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("the digest key {}: {why}", path.display())]
    Io { path: PathBuf, why: std::io::Error },
    #[error("the digest key {} is not 64 hex digits; remove it and berth makes a new one (containers with secrets are then replaced once)", path.display())]
    Malformed { path: PathBuf },
}

impl DigestKey {
    /// A key from its bytes (tests, and the file's content).
    pub fn from_bytes(bytes: [u8; 32]) -> DigestKey {
        DigestKey(bytes)
    }

    /// HMAC-SHA256 of `value` under this key, bound to `domain` (what the
    /// digest is for) and `field` (which field the value is), as hex.
    pub fn digest(&self, domain: &str, field: &str, value: &str) -> String {
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(&self.0) else {
            // HMAC takes a key of any length: unreachable.
            return String::new();
        };
        mac.update(domain.as_bytes());
        mac.update(b"\0");
        mac.update(field.as_bytes());
        mac.update(b"\0");
        mac.update(value.as_bytes());
        hex::encode(mac.finalize().into_bytes())
    }

    /// Read the key in `state_dir`; `Ok(None)` when there is none yet.
    pub fn load(state_dir: &Path) -> Result<Option<DigestKey>, KeyError> {
        let path = state_dir.join(KEY_FILE);
        let mut text = String::new();
        match std::fs::File::open(&path) {
            Ok(mut f) => {
                // Never more than the key's size: the file is not trusted to be small.
                Read::by_ref(&mut f)
                    .take(128)
                    .read_to_string(&mut text)
                    .map_err(|why| KeyError::Io {
                        path: path.clone(),
                        why,
                    })?;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(why) => return Err(KeyError::Io { path, why }),
        }
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(text.trim(), &mut bytes).map_err(|_| KeyError::Malformed { path })?;
        Ok(Some(DigestKey(bytes)))
    }

    /// The key in `state_dir`, created (mode 0600) when there is none.
    pub fn load_or_create(state_dir: &Path) -> Result<DigestKey, KeyError> {
        if let Some(key) = DigestKey::load(state_dir)? {
            return Ok(key);
        }
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |why| KeyError::Io { path, why }
        };
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(state_dir)
            .map_err(io(state_dir))?;
        let mut bytes = [0u8; 32];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut r| r.read_exact(&mut bytes))
            .map_err(io(Path::new("/dev/urandom")))?;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or_default();
        let tmp = state_dir.join(format!(".{KEY_FILE}.{}.{nanos}", std::process::id()));
        let written = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .and_then(|mut f| {
                // The mode of a new file is also masked by the umask: 0600 at most.
                f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
                f.write_all(format!("{}\n", hex::encode(bytes)).as_bytes())?;
                f.sync_all()
            });
        let linked =
            written.and_then(
                |()| match std::fs::hard_link(&tmp, state_dir.join(KEY_FILE)) {
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
                    other => other,
                },
            );
        let _ = std::fs::remove_file(&tmp);
        linked.map_err(io(&state_dir.join(KEY_FILE)))?;
        // Ours or the agent's that linked first: the file is the one key.
        DigestKey::load(state_dir)?.ok_or_else(|| KeyError::Io {
            path: state_dir.join(KEY_FILE),
            why: std::io::ErrorKind::NotFound.into(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_created_once_private_and_then_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        assert!(DigestKey::load(&state).unwrap().is_none());
        let key = DigestKey::load_or_create(&state).unwrap();
        let meta = std::fs::metadata(state.join(KEY_FILE)).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(DigestKey::load(&state).unwrap(), Some(key.clone()));
        assert_eq!(DigestKey::load_or_create(&state).unwrap(), key);
        let names: Vec<_> = std::fs::read_dir(&state).unwrap().collect();
        assert_eq!(names.len(), 1, "no temporary file left: {names:?}");
        assert_eq!(format!("{key:?}"), "DigestKey(..)");
    }

    #[test]
    fn agents_racing_to_create_the_key_all_use_one() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().to_path_buf();
        let keys: Vec<DigestKey> = std::thread::scope(|s| {
            let racers: Vec<_> = (0..8)
                .map(|_| s.spawn(|| DigestKey::load_or_create(&state).unwrap()))
                .collect();
            racers.into_iter().map(|r| r.join().unwrap()).collect()
        });
        assert!(keys.iter().all(|k| k == &keys[0]));
        assert_eq!(DigestKey::load(&state).unwrap().as_ref(), Some(&keys[0]));
    }

    #[test]
    fn a_malformed_key_is_an_error_not_a_new_key() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(KEY_FILE), "not hex\n").unwrap();
        assert!(matches!(
            DigestKey::load_or_create(dir.path()),
            Err(KeyError::Malformed { .. })
        ));
    }

    #[test]
    fn digests_are_keyed_and_bound_to_their_field() {
        let a = DigestKey::from_bytes([1; 32]);
        let b = DigestKey::from_bytes([2; 32]);
        let d = a.digest("applied", "env.PW", "hunter2");
        assert_eq!(d.len(), 64);
        assert_eq!(d, a.digest("applied", "env.PW", "hunter2"));
        assert_ne!(d, b.digest("applied", "env.PW", "hunter2"));
        assert_ne!(d, a.digest("applied", "env.OTHER", "hunter2"));
        assert_ne!(d, a.digest("spec", "env.PW", "hunter2"));
        // Not the unkeyed sha256 of the value.
        use sha2::Digest;
        assert_ne!(d, hex::encode(sha2::Sha256::digest(b"hunter2")));
    }
}
