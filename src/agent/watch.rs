//! Folder watching: file-system activity in the manifest directory becomes
//! debounced "look again" triggers. A trigger carries no state; the controller
//! always rescans the whole folder, so a lost or spurious trigger costs at most
//! one pass (the periodic resync covers anything missed entirely).
//!
//! # Why our own debounce instead of `notify-debouncer-*`
//!
//! The debouncer crates emit *batches of events* per path, after a fixed
//! timeout, on their own thread. We need neither the per-path bookkeeping nor
//! the events: one boolean "something happened" is the whole message. A small
//! trailing-edge debounce on tokio timers gives exactly the behaviour we want
//! and can be tested with plain instants:
//!
//! - a trigger fires `debounce` after the *last* event of a burst (an editor's
//!   write + rename + chmod becomes one pass, seen after the file is complete);
//! - but never later than `max_wait` after the *first* event, so a file that is
//!   written continuously still gets looked at.
//!
//! # Why the directory, non-recursive
//!
//! Watching individual files misses atomic saves (the inode being watched is
//! replaced), editors' probe and swap files, delete + re-create and the
//! Kubernetes/git-sync `..data` symlink swap. All of those are events *in the
//! directory*, so the directory is what we watch, and every event except a
//! read-only access triggers (the rescan applies the ignore rules).

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use notify::event::{AccessKind, AccessMode};
use notify::{Event, EventKind, PollWatcher, RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::config::WatchMode;
use crate::engine::trigger::Trigger;

/// How often the poll watcher rescans the folder. Short because manifest
/// folders are small (a few files hashed per scan) and a person who saves a
/// file expects to see the effect within a second or so.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_millis(500);

/// How often a missing (or replaced) directory is checked for, so a watch is
/// set up again once it is back. The periodic resync covers correctness
/// meanwhile, so this only bounds how quickly berth notices.
pub const DEFAULT_RETRY_INTERVAL: Duration = Duration::from_secs(2);

/// The default quiet period after the last event before a trigger fires.
pub const DEFAULT_DEBOUNCE: Duration = Duration::from_millis(250);

/// `max_wait` is this many times the debounce (250 ms → 1 s).
const MAX_WAIT_FACTOR: u32 = 4;

/// Raw notifications between notify's thread and the debounce task. Bounded
/// so a flood cannot grow memory; a full queue already means "activity".
const RAW_QUEUE: usize = 64;

/// Everything [`FolderWatcher::start`] can be tuned with; [`watch_folder`]
/// uses the defaults except for mode and debounce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WatchOptions {
    pub mode: WatchMode,
    /// Quiet period after the last event before a trigger fires.
    pub debounce: Duration,
    /// The longest a trigger is held back by a continuous stream of events.
    pub max_wait: Duration,
    /// Rescan interval of the poll watcher.
    pub poll_interval: Duration,
    /// How often a missing or replaced directory is checked for.
    pub retry_interval: Duration,
}

impl WatchOptions {
    /// Options for `mode` with `debounce`, `max_wait` = 4 × `debounce`, and
    /// the default poll and retry intervals.
    pub fn new(mode: WatchMode, debounce: Duration) -> Self {
        WatchOptions {
            mode,
            debounce,
            max_wait: debounce.saturating_mul(MAX_WAIT_FACTOR),
            poll_interval: DEFAULT_POLL_INTERVAL,
            retry_interval: DEFAULT_RETRY_INTERVAL,
        }
    }
}

impl Default for WatchOptions {
    fn default() -> Self {
        WatchOptions::new(WatchMode::Auto, DEFAULT_DEBOUNCE)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error("watching a folder needs a tokio runtime; call it from within one")]
    NoRuntime,
    #[error("cannot watch {dir} with inotify: {cause} (use `watch: poll` where inotify is not available, e.g. on network file systems)")]
    Inotify { dir: PathBuf, cause: notify::Error },
}

/// A running watch of one manifest directory. It sends
/// [`Trigger::ManifestsChanged`] on the channel it was given, and stops when
/// dropped.
///
/// Warning: it starts watching before [`watch_folder`] returns, but it does
/// not send a trigger for the folder's initial contents. Start it *before*
/// the first pass so nothing written in between is missed.
pub struct FolderWatcher {
    dir: PathBuf,
    status: Arc<Status>,
    task: JoinHandle<()>,
}

impl FolderWatcher {
    /// Starts watching `dir` with all options explicit; see [`watch_folder`].
    pub fn start(
        dir: &Path,
        options: WatchOptions,
        tx: mpsc::Sender<Trigger>,
    ) -> Result<FolderWatcher, WatchError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| WatchError::NoRuntime)?;
        let (raw_tx, raw_rx) = mpsc::channel(RAW_QUEUE);
        let status = Arc::new(Status::default());
        let mut supervisor = Supervisor {
            dir: dir.to_path_buf(),
            options,
            backend: Backend::Inotify,
            watcher: None,
            watched: None,
            warned_missing: false,
            raw_tx,
            status: Arc::clone(&status),
        };
        supervisor.choose_backend()?;
        // The first setup runs here, not in the task, so the watch is live when
        // we return and an explicit `Inotify` that cannot work is an error.
        let mut debounce = Debounce::new(options.debounce, options.max_wait);
        supervisor.ensure_watch(&mut debounce, Instant::now(), true)?;
        let task = runtime.spawn(supervisor.run(debounce, raw_rx, tx));
        Ok(FolderWatcher {
            dir: dir.to_path_buf(),
            status,
            task,
        })
    }

    /// The directory being watched.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether the poll watcher is in use (asked for, or the fallback from
    /// inotify). Polling sees changes up to a poll interval later.
    pub fn is_polling(&self) -> bool {
        self.status.polling.load(Ordering::Relaxed)
    }

    /// Whether the directory is currently watched; false while it is missing.
    pub fn is_watching(&self) -> bool {
        self.status.watching.load(Ordering::Relaxed)
    }
}

impl Drop for FolderWatcher {
    fn drop(&mut self) {
        // Aborting drops the task's notify watcher, which stops its thread.
        self.task.abort();
    }
}

impl fmt::Debug for FolderWatcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FolderWatcher")
            .field("dir", &self.dir)
            .field("polling", &self.is_polling())
            .field("watching", &self.is_watching())
            .finish()
    }
}

/// Watches `dir` (non-recursively) and sends [`Trigger::ManifestsChanged`]
/// on `tx`, at most one per burst of changes: `debounce` after the last event
/// and at most 4 × `debounce` after the first.
///
/// `WatchMode::Auto` uses inotify and falls back to polling, with a warning,
/// when inotify cannot be set up; `Inotify` fails instead. A directory that
/// does not exist (yet) is not an error: it is looked for every 2 s, and a
/// trigger is sent once it is watched again.
///
/// Triggers are sent with `try_send`: when the channel is full, a trigger is
/// already pending and this one is coalesced into it. The watcher stops when
/// the [`FolderWatcher`] is dropped or the receiver is closed. Must be called
/// within a tokio runtime.
pub fn watch_folder(
    dir: &Path,
    mode: WatchMode,
    debounce: Duration,
    tx: mpsc::Sender<Trigger>,
) -> Result<FolderWatcher, WatchError> {
    FolderWatcher::start(dir, WatchOptions::new(mode, debounce), tx)
}

#[derive(Debug, Default)]
struct Status {
    polling: AtomicBool,
    watching: AtomicBool,
}

/// What notify's thread tells the debounce task.
#[derive(Debug)]
enum RawSignal {
    Activity,
    /// A file was closed after writing or moved in: it is complete.
    Complete,
    /// An error about the watched directory itself: check it now rather than
    /// at the next retry tick.
    RootError,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Backend {
    Inotify,
    Poll,
}

/// The identity of the directory a watch was set up on. inotify follows an
/// inode, so a directory renamed away and replaced (a checkout swapping
/// folders, a symlinked manifests path re-pointed) must be noticed by
/// comparing identities, not by existence alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct DirIdentity {
    #[cfg(unix)]
    dev: u64,
    #[cfg(unix)]
    ino: u64,
}

impl DirIdentity {
    /// `None` when the path is missing or not a directory.
    fn of(dir: &Path) -> Option<DirIdentity> {
        let meta = std::fs::metadata(dir).ok().filter(|m| m.is_dir())?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::MetadataExt;
            Some(DirIdentity {
                dev: meta.dev(),
                ino: meta.ino(),
            })
        }
        #[cfg(not(unix))]
        {
            let _ = meta;
            Some(DirIdentity {})
        }
    }
}

/// Owns the notify watcher and keeps it pointed at the directory.
struct Supervisor {
    dir: PathBuf,
    options: WatchOptions,
    backend: Backend,
    watcher: Option<Box<dyn Watcher + Send>>,
    watched: Option<DirIdentity>,
    warned_missing: bool,
    /// Kept so `raw_rx` never reports closed while no watcher exists.
    raw_tx: mpsc::Sender<RawSignal>,
    status: Arc<Status>,
}

impl Supervisor {
    /// Picks inotify or polling once. inotify's instance can be created
    /// without the directory, so an unusable inotify is found out (and, in
    /// `Auto`, replaced by polling) even while the directory is missing.
    fn choose_backend(&mut self) -> Result<(), WatchError> {
        self.backend = match self.options.mode {
            WatchMode::Poll => Backend::Poll,
            WatchMode::Inotify | WatchMode::Auto => {
                match RecommendedWatcher::new(|_| {}, notify::Config::default()) {
                    Ok(_) => Backend::Inotify,
                    Err(source) if self.options.mode == WatchMode::Inotify => {
                        return Err(WatchError::Inotify {
                            dir: self.dir.clone(),
                            cause: source,
                        })
                    }
                    Err(error) => {
                        warn!(dir = %self.dir.display(), %error, "inotify is not available; falling back to polling");
                        Backend::Poll
                    }
                }
            }
        };
        self.status
            .polling
            .store(self.backend == Backend::Poll, Ordering::Relaxed);
        Ok(())
    }

    async fn run(
        mut self,
        mut debounce: Debounce,
        mut raw_rx: mpsc::Receiver<RawSignal>,
        tx: mpsc::Sender<Trigger>,
    ) {
        let mut retry = tokio::time::interval(self.options.retry_interval);
        retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let due = debounce.due_at();
            tokio::select! {
                signal = raw_rx.recv() => {
                    let now = Instant::now();
                    match signal {
                        // A file is complete: look now, unless a look was
                        // just triggered (then it joins the burst).
                        Some(RawSignal::Complete) if debounce.complete(now) => {
                            match tx.try_send(Trigger::ManifestsChanged) {
                                Ok(()) => debug!(dir = %self.dir.display(), "a manifest was written; trigger sent"),
                                Err(TrySendError::Full(_)) => debug!("trigger queue full; coalesced into the pending one"),
                                Err(TrySendError::Closed(_)) => return,
                            }
                        }
                        Some(RawSignal::RootError) => {
                            debounce.record(now);
                            self.check(&mut debounce, now);
                        }
                        _ => debounce.record(now),
                    }
                }
                () = sleep_until_opt(due) => {
                    let now = Instant::now();
                    // One stat per trigger: a removed or replaced directory is
                    // re-watched before the controller looks at it.
                    self.check(&mut debounce, now);
                    if debounce.take_if_due(now) {
                        match tx.try_send(Trigger::ManifestsChanged) {
                            Ok(()) => debug!(dir = %self.dir.display(), "manifests changed; trigger sent"),
                            Err(TrySendError::Full(_)) => debug!("trigger queue full; coalesced into the pending one"),
                            Err(TrySendError::Closed(_)) => return,
                        }
                    }
                }
                _ = retry.tick() => self.check(&mut debounce, Instant::now()),
                () = tx.closed() => return,
            }
        }
    }

    fn check(&mut self, debounce: &mut Debounce, now: Instant) {
        // Only the first setup may fail hard; later failures are retried.
        if let Err(error) = self.ensure_watch(debounce, now, false) {
            warn!(dir = %self.dir.display(), %error, "cannot watch the manifest folder; retrying");
        }
    }

    /// Makes sure the watch points at the directory now at `dir`. Losing or
    /// regaining it records activity: the folder's contents changed as far as
    /// the controller knows.
    fn ensure_watch(
        &mut self,
        debounce: &mut Debounce,
        now: Instant,
        first: bool,
    ) -> Result<(), WatchError> {
        let current = DirIdentity::of(&self.dir);
        if current.is_some() && current == self.watched {
            return Ok(());
        }
        if self.watcher.take().is_some() {
            self.watched = None;
            self.status.watching.store(false, Ordering::Relaxed);
            debounce.record(now);
            if current.is_none() {
                warn!(dir = %self.dir.display(), retry = ?self.options.retry_interval, "manifest folder disappeared; watching again once it is back");
                self.warned_missing = true;
            } else {
                info!(dir = %self.dir.display(), "manifest folder was replaced; watching the new one");
            }
        }
        let Some(identity) = current else {
            if !self.warned_missing {
                warn!(dir = %self.dir.display(), retry = ?self.options.retry_interval, "manifest folder does not exist; watching it once it does");
                self.warned_missing = true;
            }
            return Ok(());
        };
        let watcher = match self.establish() {
            Ok(watcher) => watcher,
            Err(error) if is_not_found(&error) => return Ok(()), // gone again: next tick
            Err(source) if self.backend == Backend::Inotify => {
                if self.options.mode == WatchMode::Auto {
                    warn!(dir = %self.dir.display(), error = %source, "cannot watch with inotify; falling back to polling");
                    self.backend = Backend::Poll;
                    self.status.polling.store(true, Ordering::Relaxed);
                    return self.ensure_watch(debounce, now, first);
                }
                return Err(WatchError::Inotify {
                    dir: self.dir.clone(),
                    cause: source,
                });
            }
            Err(error) => {
                // PollWatcher::watch does not fail today; should it, the next
                // tick tries again.
                warn!(dir = %self.dir.display(), %error, "cannot poll the manifest folder; retrying");
                return Ok(());
            }
        };
        self.watcher = Some(watcher);
        self.watched = Some(identity);
        self.status.watching.store(true, Ordering::Relaxed);
        self.warned_missing = false;
        let mode = match self.backend {
            Backend::Inotify => "inotify",
            Backend::Poll => "poll",
        };
        info!(dir = %self.dir.display(), mode, "watching the manifest folder");
        if !first {
            // It may have been filled while unwatched.
            debounce.record(now);
        }
        Ok(())
    }

    fn establish(&self) -> notify::Result<Box<dyn Watcher + Send>> {
        let handler = event_handler(self.dir.clone(), self.raw_tx.clone());
        let mut watcher: Box<dyn Watcher + Send> = match self.backend {
            Backend::Inotify => {
                Box::new(RecommendedWatcher::new(handler, notify::Config::default())?)
            }
            Backend::Poll => Box::new(PollWatcher::new(
                handler,
                notify::Config::default()
                    .with_poll_interval(self.options.poll_interval)
                    // The poll watcher compares mtimes in whole seconds, so a
                    // rewrite within the same second is only seen by content.
                    .with_compare_contents(true)
                    // Following symlinks makes a `..data` swap visible as a
                    // content change of `web.yaml -> ..data/web.yaml`.
                    .with_follow_symlinks(true),
            )?),
        };
        watcher.watch(&self.dir, RecursiveMode::NonRecursive)?;
        Ok(watcher)
    }
}

/// Runs on notify's thread: classify, log, and pass on without blocking.
fn event_handler(
    dir: PathBuf,
    raw_tx: mpsc::Sender<RawSignal>,
) -> impl FnMut(notify::Result<Event>) + Send + 'static {
    move |result| {
        let signal = match result {
            Ok(event) => {
                debug!(kind = ?event.kind, paths = ?event.paths, "manifest folder event");
                if !triggers(&event.kind) {
                    return;
                }
                if completes(&event) {
                    RawSignal::Complete
                } else {
                    RawSignal::Activity
                }
            }
            Err(error) if error.paths.is_empty() || error.paths.iter().any(|p| p == &dir) => {
                warn!(dir = %dir.display(), %error, "manifest folder watch error");
                RawSignal::RootError
            }
            // E.g. a dangling symlink seen by the poll watcher on every scan:
            // not worth a warning each time; the rescan reports bad files.
            Err(error) => {
                debug!(%error, "manifest folder watch error about an entry");
                RawSignal::Activity
            }
        };
        // Full means activity is already queued; closed means we are stopping.
        let _ = raw_tx.try_send(signal);
    }
}

/// A manifest closed after writing, or moved into the folder, is complete:
/// no need to wait for the quiet period. Anything else (an editor's swap
/// file, a `..data` symlink swap) waits for the burst to end.
fn completes(event: &Event) -> bool {
    use notify::event::{ModifyKind, RenameMode};
    let kind_completes = matches!(
        event.kind,
        EventKind::Access(AccessKind::Close(AccessMode::Write))
            | EventKind::Modify(ModifyKind::Name(RenameMode::To | RenameMode::Both))
    );
    // For a rename with both paths, the last one is the new name.
    let is_manifest = event
        .paths
        .last()
        .and_then(|p| p.file_name())
        .and_then(|n| n.to_str())
        .is_some_and(crate::desired::folder::is_manifest_file_name);
    kind_completes && is_manifest
}

/// Every event triggers except reading: the controller's own rescan opens
/// each manifest, and that must not trigger another pass. A close after
/// writing does trigger: it marks the end of a save.
fn triggers(kind: &EventKind) -> bool {
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        _ => true,
    }
}

fn is_not_found(error: &notify::Error) -> bool {
    match &error.kind {
        notify::ErrorKind::PathNotFound => true,
        notify::ErrorKind::Io(io) => io.kind() == std::io::ErrorKind::NotFound,
        _ => false,
    }
}

async fn sleep_until_opt(due: Option<Instant>) {
    match due {
        Some(due) => tokio::time::sleep_until(due).await,
        None => std::future::pending().await,
    }
}

/// Trailing-edge debounce with a maximum wait, and a leading edge for files
/// that are known to be complete. Pure: time is passed in.
#[derive(Debug, Clone)]
struct Debounce {
    quiet: Duration,
    max_wait: Duration,
    /// First and last event of the pending burst.
    pending: Option<(Instant, Instant)>,
    /// When the last trigger fired.
    last_fire: Option<Instant>,
}

impl Debounce {
    fn new(quiet: Duration, max_wait: Duration) -> Self {
        Debounce {
            quiet,
            max_wait: max_wait.max(quiet),
            pending: None,
            last_fire: None,
        }
    }

    /// A file is complete. True means "send a trigger now"; when one fired
    /// within the quiet period, this joins the trailing burst instead, so a
    /// copy of many files still coalesces into few passes.
    fn complete(&mut self, now: Instant) -> bool {
        if self
            .last_fire
            .is_some_and(|t| now.saturating_duration_since(t) < self.quiet)
        {
            self.record(now);
            return false;
        }
        // What was pending was this file being written.
        self.pending = None;
        self.last_fire = Some(now);
        true
    }

    fn record(&mut self, now: Instant) {
        self.pending = match self.pending {
            Some((first, _)) => Some((first, now)),
            None => Some((now, now)),
        };
    }

    /// When the pending burst should fire, if there is one.
    fn due_at(&self) -> Option<Instant> {
        self.pending
            .map(|(first, last)| (last + self.quiet).min(first + self.max_wait))
    }

    /// Ends the pending burst if it is due; true means "send a trigger".
    fn take_if_due(&mut self, now: Instant) -> bool {
        match self.due_at() {
            Some(due) if now >= due => {
                self.pending = None;
                self.last_fire = Some(now);
                true
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    //! Real file system, real timers. Every wait is bounded by a deadline; a
    //! test that expects *no* trigger waits for a timeout on purpose.

    use super::*;
    use std::fs;
    use std::io::Write;
    use std::os::unix::fs::symlink;
    use tokio::time::timeout;

    /// Generous enough for polling (500 ms scan + 250 ms debounce) on a busy
    /// two-core machine.
    const WITHIN: Duration = Duration::from_secs(2);

    fn options(mode: WatchMode) -> WatchOptions {
        WatchOptions {
            // Short so a missing directory's tests do not wait 2 s per step.
            retry_interval: Duration::from_millis(200),
            ..WatchOptions::new(mode, DEFAULT_DEBOUNCE)
        }
    }

    fn start(dir: &Path, mode: WatchMode) -> (FolderWatcher, mpsc::Receiver<Trigger>) {
        let (tx, rx) = mpsc::channel(16);
        let watcher = FolderWatcher::start(dir, options(mode), tx).expect("watch starts");
        (watcher, rx)
    }

    /// Waits for one trigger and returns how long it took.
    async fn expect_trigger(rx: &mut mpsc::Receiver<Trigger>, what: &str) -> Duration {
        let started = std::time::Instant::now();
        match timeout(WITHIN, rx.recv()).await {
            Ok(Some(trigger)) => assert_eq!(trigger, Trigger::ManifestsChanged),
            Ok(None) => panic!("{what}: the watcher stopped"),
            Err(_) => panic!("{what}: no trigger within {WITHIN:?}"),
        }
        started.elapsed()
    }

    /// Counts triggers until none arrives for `quiet`.
    async fn count_triggers(rx: &mut mpsc::Receiver<Trigger>, quiet: Duration) -> usize {
        let mut count = 0;
        while let Ok(Some(_)) = timeout(quiet, rx.recv()).await {
            count += 1;
        }
        count
    }

    fn write(path: &Path, contents: &str) {
        fs::write(path, contents).expect("write");
    }

    /// Writes a temporary file and renames it over `path`, as editors and
    /// config-management tools do.
    fn atomic_write(path: &Path, contents: &str) {
        let tmp = path.with_extension("tmp~");
        write(&tmp, contents);
        fs::rename(&tmp, path).expect("rename over");
    }

    /// Quiet period long enough for any trigger of the setup to have arrived.
    const SETTLE: Duration = Duration::from_millis(1200);

    async fn a_new_file_triggers_once(mode: WatchMode) {
        let dir = tempfile::tempdir().expect("tempdir");
        let (_watcher, mut rx) = start(dir.path(), mode);

        write(&dir.path().join("web.yaml"), "name: web\n");

        let latency = expect_trigger(&mut rx, "new file").await;
        eprintln!("{mode:?}: new file → trigger in {latency:?}");
        assert_eq!(
            count_triggers(&mut rx, SETTLE).await,
            0,
            "exactly one trigger"
        );
    }

    /// The new-file test writes right after the start, before the poll
    /// thread's first scan; this one waits for a watch that has settled, so
    /// the latency is the steady-state one.
    async fn a_change_is_seen_within_a_scan_interval_plus_the_debounce(mode: WatchMode) {
        let dir = tempfile::tempdir().expect("tempdir");
        let (_watcher, mut rx) = start(dir.path(), mode);
        assert_eq!(
            count_triggers(&mut rx, SETTLE).await,
            0,
            "no trigger at start"
        );

        write(&dir.path().join("web.yaml"), "name: web\n");

        let latency = expect_trigger(&mut rx, "new file").await;
        eprintln!("{mode:?}: settled watch, new file → trigger in {latency:?}");
        let scan = match mode {
            WatchMode::Poll => DEFAULT_POLL_INTERVAL,
            _ => Duration::ZERO,
        };
        let slack = Duration::from_millis(300);
        assert!(
            latency <= scan + DEFAULT_DEBOUNCE + slack,
            "took {latency:?}"
        );
    }

    async fn an_atomic_rename_over_an_existing_file_triggers(mode: WatchMode) {
        let dir = tempfile::tempdir().expect("tempdir");
        let web = dir.path().join("web.yaml");
        write(&web, "name: web\nimage: nginx:1.26\n");
        let (_watcher, mut rx) = start(dir.path(), mode);

        atomic_write(&web, "name: web\nimage: nginx:1.27\n");

        expect_trigger(&mut rx, "rename over").await;
    }

    async fn deleting_and_recreating_a_file_triggers(mode: WatchMode) {
        let dir = tempfile::tempdir().expect("tempdir");
        let web = dir.path().join("web.yaml");
        write(&web, "name: web\n");
        let (_watcher, mut rx) = start(dir.path(), mode);

        fs::remove_file(&web).expect("delete");
        expect_trigger(&mut rx, "delete").await;
        write(&web, "name: web\n");
        expect_trigger(&mut rx, "re-create").await;
    }

    /// The Kubernetes ConfigMap / git-sync layout: `web.yaml -> ..data/web.yaml`,
    /// `..data -> ..<timestamp>`, updated by renaming a new `..data_tmp`
    /// symlink over `..data`. Everything but the rename is prepared before the
    /// watch starts, so the rename alone must be seen.
    async fn a_symlink_swap_of_the_data_dir_triggers(mode: WatchMode) {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        for (version, image) in [
            ("..2026_11_28_old", "nginx:1.26"),
            ("..2026_11_28_new", "nginx:1.27"),
        ] {
            fs::create_dir(root.join(version)).expect("mkdir");
            write(
                &root.join(version).join("web.yaml"),
                &format!("name: web\nimage: {image}\n"),
            );
        }
        symlink("..2026_11_28_old", root.join("..data")).expect("symlink ..data");
        symlink("..data/web.yaml", root.join("web.yaml")).expect("symlink web.yaml");
        symlink("..2026_11_28_new", root.join("..data_tmp")).expect("symlink ..data_tmp");
        let (_watcher, mut rx) = start(root, mode);

        fs::rename(root.join("..data_tmp"), root.join("..data")).expect("swap ..data");

        expect_trigger(&mut rx, "..data swap").await;
        assert_eq!(
            fs::read_to_string(root.join("web.yaml")).expect("read through the links"),
            "name: web\nimage: nginx:1.27\n"
        );
    }

    async fn a_burst_of_writes_yields_few_triggers(mode: WatchMode) {
        let dir = tempfile::tempdir().expect("tempdir");
        let web = dir.path().join("web.yaml");
        write(&web, "name: web\n");
        let (_watcher, mut rx) = start(dir.path(), mode);

        for i in 0..50 {
            let mut file = fs::OpenOptions::new()
                .append(true)
                .open(&web)
                .expect("open");
            writeln!(file, "# line {i}").expect("append");
            std::thread::sleep(Duration::from_millis(2));
        }

        let triggers = count_triggers(&mut rx, SETTLE + WITHIN).await;
        eprintln!("{mode:?}: 50 writes → {triggers} trigger(s)");
        assert!(
            (1..=3).contains(&triggers),
            "50 writes gave {triggers} triggers"
        );
    }

    async fn a_folder_created_after_the_watch_starts_triggers_once_it_exists(mode: WatchMode) {
        let parent = tempfile::tempdir().expect("tempdir");
        let dir = parent.path().join("manifests");
        let (watcher, mut rx) = start(&dir, mode);
        assert!(!watcher.is_watching());

        fs::create_dir(&dir).expect("mkdir");
        expect_trigger(&mut rx, "folder appears").await;
        assert!(watcher.is_watching());

        write(&dir.join("web.yaml"), "name: web\n");
        expect_trigger(&mut rx, "file in the new folder").await;
    }

    async fn a_folder_removed_and_recreated_is_watched_again(mode: WatchMode) {
        let parent = tempfile::tempdir().expect("tempdir");
        let dir = parent.path().join("manifests");
        fs::create_dir(&dir).expect("mkdir");
        let (watcher, mut rx) = start(&dir, mode);

        fs::remove_dir(&dir).expect("rmdir");
        expect_trigger(&mut rx, "folder removed").await;
        fs::create_dir(&dir).expect("mkdir again");
        // Let the retry tick find it, then expect the trigger for a new file.
        let deadline = Instant::now() + WITHIN;
        while !watcher.is_watching() {
            assert!(
                Instant::now() < deadline,
                "not watching again within {WITHIN:?}"
            );
            let _ = timeout(Duration::from_millis(50), rx.recv()).await;
        }
        let _ = count_triggers(&mut rx, SETTLE).await;

        write(&dir.join("web.yaml"), "name: web\n");
        expect_trigger(&mut rx, "file in the re-created folder").await;
    }

    /// A checkout that moves the old folder aside and puts a new one in its
    /// place: inotify would keep following the old inode, so the watch must
    /// move to the new folder.
    async fn a_folder_replaced_by_rename_is_watched_anew(mode: WatchMode) {
        let parent = tempfile::tempdir().expect("tempdir");
        let dir = parent.path().join("manifests");
        let next = parent.path().join("manifests.next");
        fs::create_dir(&dir).expect("mkdir");
        fs::create_dir(&next).expect("mkdir next");
        write(&next.join("web.yaml"), "name: web\n");
        let (_watcher, mut rx) = start(&dir, mode);

        fs::rename(&dir, parent.path().join("manifests.old")).expect("move aside");
        fs::rename(&next, &dir).expect("move in");
        expect_trigger(&mut rx, "folder replaced").await;
        let _ = count_triggers(&mut rx, SETTLE).await;

        write(&dir.join("db.yaml"), "name: db\n");
        expect_trigger(&mut rx, "file in the replacing folder").await;
    }

    macro_rules! in_mode {
        ($module:ident, $mode:expr) => {
            mod $module {
                use super::*;

                #[tokio::test]
                async fn a_new_file_triggers_once_within_two_seconds() {
                    a_new_file_triggers_once($mode).await
                }

                #[tokio::test]
                async fn a_change_is_seen_within_a_scan_interval_plus_the_debounce() {
                    super::a_change_is_seen_within_a_scan_interval_plus_the_debounce($mode).await
                }

                #[tokio::test]
                async fn an_atomic_rename_over_an_existing_file_triggers() {
                    super::an_atomic_rename_over_an_existing_file_triggers($mode).await
                }

                #[tokio::test]
                async fn deleting_and_recreating_a_file_triggers() {
                    super::deleting_and_recreating_a_file_triggers($mode).await
                }

                #[tokio::test]
                async fn a_symlink_swap_of_the_data_dir_triggers() {
                    super::a_symlink_swap_of_the_data_dir_triggers($mode).await
                }

                #[tokio::test]
                async fn a_burst_of_fifty_writes_yields_at_most_three_triggers() {
                    a_burst_of_writes_yields_few_triggers($mode).await
                }

                #[tokio::test]
                async fn a_folder_created_after_the_watch_starts_triggers_once_it_exists() {
                    super::a_folder_created_after_the_watch_starts_triggers_once_it_exists($mode)
                        .await
                }

                #[tokio::test]
                async fn a_folder_removed_and_recreated_is_watched_again() {
                    super::a_folder_removed_and_recreated_is_watched_again($mode).await
                }

                #[tokio::test]
                async fn a_folder_replaced_by_rename_is_watched_anew() {
                    super::a_folder_replaced_by_rename_is_watched_anew($mode).await
                }
            }
        };
    }

    in_mode!(inotify, WatchMode::Inotify);
    in_mode!(poll, WatchMode::Poll);

    #[tokio::test]
    async fn auto_mode_uses_inotify_where_it_works() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (watcher, _rx) = start(dir.path(), WatchMode::Auto);
        assert!(!watcher.is_polling());
        assert!(watcher.is_watching());
    }

    #[tokio::test]
    async fn poll_mode_reports_polling() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (watcher, _rx) = start(dir.path(), WatchMode::Poll);
        assert!(watcher.is_polling());
    }

    #[tokio::test]
    async fn a_continuous_stream_of_writes_still_triggers_within_the_max_wait() {
        let dir = tempfile::tempdir().expect("tempdir");
        let web = dir.path().join("web.yaml");
        write(&web, "name: web\n");
        let (_watcher, mut rx) = start(dir.path(), WatchMode::Inotify);
        let max_wait = options(WatchMode::Inotify).max_wait;

        // A write every 50 ms for 2.5 s: never quiet for the 250 ms debounce.
        let writer = tokio::task::spawn_blocking(move || {
            for i in 0..50 {
                let mut file = fs::OpenOptions::new()
                    .append(true)
                    .open(&web)
                    .expect("open");
                writeln!(file, "# line {i}").expect("append");
                std::thread::sleep(Duration::from_millis(50));
            }
        });

        let latency = expect_trigger(&mut rx, "continuous writes").await;
        eprintln!("Inotify: continuous writes → first trigger in {latency:?}");
        assert!(
            latency <= max_wait + Duration::from_millis(300),
            "took {latency:?}"
        );
        assert!(
            !writer.is_finished(),
            "the trigger came before the stream ended"
        );
        writer.await.expect("writer");
    }

    #[tokio::test]
    async fn reading_manifests_does_not_trigger() {
        let dir = tempfile::tempdir().expect("tempdir");
        let web = dir.path().join("web.yaml");
        write(&web, "name: web\n");
        let (_watcher, mut rx) = start(dir.path(), WatchMode::Inotify);

        // What the controller's rescan does; it must not feed back into a pass.
        for _ in 0..5 {
            fs::read_to_string(&web).expect("read");
            let _ = fs::read_dir(dir.path()).expect("list").count();
        }

        assert_eq!(count_triggers(&mut rx, SETTLE).await, 0);
    }

    /// The save itself triggers at once (the file is closed after writing);
    /// the editor's cleanup afterwards coalesces into one trailing trigger.
    #[tokio::test]
    async fn an_editor_save_with_probe_and_swap_files_triggers_at_most_twice() {
        let dir = tempfile::tempdir().expect("tempdir");
        let web = dir.path().join("web.yaml");
        write(&web, "name: web\n");
        let (_watcher, mut rx) = start(dir.path(), WatchMode::Inotify);

        // vim: swap file, the `4913` writability probe, backup rename, write.
        write(&dir.path().join(".web.yaml.swp"), "swap");
        write(&dir.path().join("4913"), "");
        fs::remove_file(dir.path().join("4913")).expect("rm probe");
        fs::rename(&web, dir.path().join("web.yaml~")).expect("backup");
        write(&web, "name: web\nimage: nginx\n");
        fs::remove_file(dir.path().join("web.yaml~")).expect("rm backup");
        fs::remove_file(dir.path().join(".web.yaml.swp")).expect("rm swap");

        expect_trigger(&mut rx, "editor save").await;
        assert!(
            count_triggers(&mut rx, SETTLE).await <= 1,
            "one save, at most one more trigger for its cleanup"
        );
    }

    #[tokio::test]
    async fn a_full_channel_coalesces_triggers() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (tx, mut rx) = mpsc::channel(1);
        let _watcher = FolderWatcher::start(dir.path(), options(WatchMode::Inotify), tx)
            .expect("watch starts");

        // Two bursts far enough apart to be two triggers, nobody receiving.
        write(&dir.path().join("a.yaml"), "name: a\n");
        tokio::time::sleep(SETTLE).await;
        write(&dir.path().join("b.yaml"), "name: b\n");
        tokio::time::sleep(SETTLE).await;

        assert_eq!(count_triggers(&mut rx, SETTLE).await, 1);
    }

    #[tokio::test]
    async fn dropping_the_watcher_stops_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (watcher, mut rx) = start(dir.path(), WatchMode::Inotify);

        drop(watcher);
        write(&dir.path().join("web.yaml"), "name: web\n");

        // The task's sender is gone: the channel closes instead of triggering.
        assert_eq!(timeout(WITHIN, rx.recv()).await, Ok(None));
    }

    #[test]
    fn watching_outside_a_runtime_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (tx, _rx) = mpsc::channel(1);
        let result = watch_folder(dir.path(), WatchMode::Auto, DEFAULT_DEBOUNCE, tx);
        assert!(matches!(result, Err(WatchError::NoRuntime)));
    }

    mod debounce {
        use super::*;

        const QUIET: Duration = Duration::from_millis(250);
        const MAX_WAIT: Duration = Duration::from_secs(1);
        const MS: Duration = Duration::from_millis(1);

        #[test]
        fn nothing_is_due_without_events() {
            let mut debounce = Debounce::new(QUIET, MAX_WAIT);
            assert_eq!(debounce.due_at(), None);
            assert!(!debounce.take_if_due(Instant::now()));
        }

        #[test]
        fn fires_a_quiet_period_after_the_last_event() {
            let t0 = Instant::now();
            let mut debounce = Debounce::new(QUIET, MAX_WAIT);
            debounce.record(t0);
            debounce.record(t0 + 100 * MS);

            assert!(!debounce.take_if_due(t0 + 349 * MS));
            assert!(debounce.take_if_due(t0 + 350 * MS));
            assert_eq!(debounce.due_at(), None, "one burst, one trigger");
        }

        #[test]
        fn a_continuous_stream_still_fires_after_the_max_wait() {
            let t0 = Instant::now();
            let mut debounce = Debounce::new(QUIET, MAX_WAIT);
            for i in 0..=10 {
                debounce.record(t0 + i * 100 * MS); // never quiet for 250 ms
            }
            assert_eq!(debounce.due_at(), Some(t0 + MAX_WAIT));
            assert!(debounce.take_if_due(t0 + MAX_WAIT));
        }

        #[test]
        fn a_complete_file_fires_at_once_but_a_burst_of_them_coalesces() {
            let t0 = Instant::now();
            let mut debounce = Debounce::new(QUIET, MAX_WAIT);
            debounce.record(t0);
            assert!(debounce.complete(t0), "the first complete file fires now");
            assert_eq!(debounce.due_at(), None, "its own write events are answered");
            for i in 1..10 {
                assert!(
                    !debounce.complete(t0 + i * 10 * MS),
                    "the rest join a burst"
                );
            }
            assert!(!debounce.take_if_due(t0 + 90 * MS + QUIET - MS));
            assert!(
                debounce.take_if_due(t0 + 90 * MS + QUIET),
                "one trailing trigger"
            );
            assert!(
                debounce.complete(t0 + 90 * MS + 2 * QUIET),
                "after a quiet period the next complete file fires now again"
            );
        }

        #[test]
        fn the_next_burst_starts_a_new_max_wait() {
            let t0 = Instant::now();
            let mut debounce = Debounce::new(QUIET, MAX_WAIT);
            debounce.record(t0);
            assert!(debounce.take_if_due(t0 + QUIET));

            debounce.record(t0 + 2000 * MS);
            assert_eq!(debounce.due_at(), Some(t0 + 2000 * MS + QUIET));
        }
    }
}
