//! One agent per namespace on a host: two `berth run` on the same namespace
//! (say, with different folders) would delete each other's containers
//! forever. The first takes an exclusive lock on `<run_dir>/<namespace>.lock`
//! and writes who it is into it; a second one finds the lock taken, reads
//! who holds it and refuses to start.
//!
//! Warning: the lock is a file on this host. Two hosts sharing one remote
//! Docker daemon (`docker.endpoint: tcp://…`) do not see each other's lock;
//! run one agent per namespace per daemon (README, "Operating berth").

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

/// The held lock; released when dropped (and by the kernel when the process
/// dies, even by kill -9).
#[derive(Debug)]
pub struct AgentLock {
    _file: File,
    pub path: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error(
        "namespace {namespace} is already managed by another berth on this host ({holder}); \
         stop it first, or give this one another namespace"
    )]
    Taken { namespace: String, holder: String },
    #[error("cannot take the agent lock {}: {cause}", path.display())]
    Io {
        path: PathBuf,
        cause: std::io::Error,
    },
}

impl AgentLock {
    /// Take the namespace's lock, or say who holds it. `manifests` is
    /// recorded so the refusal can name the other agent's folder.
    pub fn acquire(
        run_dir: &Path,
        namespace: &str,
        manifests: &Path,
    ) -> Result<AgentLock, LockError> {
        let path = run_dir.join(format!("{namespace}.lock"));
        let io = |source| LockError::Io {
            path: path.clone(),
            cause: source,
        };
        std::fs::create_dir_all(run_dir).map_err(io)?;
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io)?;
        if let Err(e) =
            rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive)
        {
            if e == rustix::io::Errno::WOULDBLOCK {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = holder.trim().replace('\n', ", ");
                return Err(LockError::Taken {
                    namespace: namespace.to_string(),
                    holder: if holder.is_empty() {
                        "a berth that has not said who it is yet".into()
                    } else {
                        holder
                    },
                });
            }
            return Err(io(e.into()));
        }
        let me = format!(
            "pid {}\nmanifests {}\n",
            std::process::id(),
            manifests.display()
        );
        file.set_len(0).map_err(io)?;
        file.rewind().map_err(io)?;
        file.write_all(me.as_bytes()).map_err(io)?;
        Ok(AgentLock { _file: file, path })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_agent_on_a_namespace_is_refused_and_told_who_runs_it() {
        let dir = tempfile::tempdir().unwrap();
        let first = AgentLock::acquire(dir.path(), "edge", Path::new("/srv/a")).unwrap();
        let err = AgentLock::acquire(dir.path(), "edge", Path::new("/srv/b")).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("namespace edge is already managed"), "{text}");
        assert!(
            text.contains(&format!("pid {}", std::process::id())),
            "{text}"
        );
        assert!(text.contains("/srv/a"), "{text}");
        // Another namespace is free, and the lock is free once dropped.
        AgentLock::acquire(dir.path(), "other", Path::new("/srv/b")).unwrap();
        drop(first);
        AgentLock::acquire(dir.path(), "edge", Path::new("/srv/b")).unwrap();
    }
}
