//! One pull per image at a time, shared by every instance that needs it, and
//! running in the background (after Nomad's `coordinator.go`).
//!
//! A pull runs in a task of its own: the instances that wait for it can be
//! cancelled (their manifest changed again) without cutting the pull short,
//! and a later instance that needs the same image joins the pull in flight.
//! Progress is published for status and handed to a [`PullObserver`], so the
//! CLI can draw it and the daemon can log it; the runtime only reports.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{watch, Semaphore};
use tracing::info;

use crate::desired::registry::RegistryCredentials;
use crate::runtime::{ContainerRuntime, PullProgress, RuntimeError};

/// Where one image's pull is.
#[derive(Debug, Clone, PartialEq)]
pub enum PullState {
    /// Waiting for a pull slot (`parallelism` pulls run at once).
    Queued,
    Running(PullProgress),
    Done(Result<(), RuntimeError>),
}

/// Sees every pull's progress; the CLI draws, the daemon logs.
pub trait PullObserver: Send + Sync {
    fn progress(&self, image: &str, progress: &PullProgress);
    fn done(&self, image: &str, result: &Result<(), RuntimeError>, elapsed: Duration);
}

/// Logs a line every few seconds of a long pull, and its end.
pub struct LogPulls;

/// How often [`LogPulls`] reports a pull that is still going.
const LOG_EVERY: Duration = Duration::from_secs(5);

impl PullObserver for LogPulls {
    fn progress(&self, _image: &str, _progress: &PullProgress) {}

    fn done(&self, image: &str, result: &Result<(), RuntimeError>, elapsed: Duration) {
        match result {
            Ok(()) => info!(
                image,
                elapsed_ms = elapsed.as_millis() as u64,
                "pulled image"
            ),
            Err(e) => info!(image, error = %e, "pull failed"),
        }
    }
}

/// A presence check's answer, `None` while Docker has not answered.
type Presence = Option<Result<bool, RuntimeError>>;

/// The coordinator. Cheap to share.
pub struct Pulls {
    in_flight: Mutex<HashMap<String, watch::Receiver<PullState>>>,
    /// Checks in flight of whether an image is present, by image: the
    /// chains one pass dispatches together (200 tasks of one image at a
    /// cold start) ask Docker once, not once each.
    checks: Mutex<HashMap<String, watch::Receiver<Presence>>>,
    slots: Arc<Semaphore>,
    observer: Arc<dyn PullObserver>,
}

impl Pulls {
    /// At most `parallelism` pulls run at once; more wait in [`PullState::Queued`].
    pub fn new(parallelism: usize, observer: Arc<dyn PullObserver>) -> Arc<Pulls> {
        Arc::new(Pulls {
            in_flight: Mutex::new(HashMap::new()),
            checks: Mutex::new(HashMap::new()),
            slots: Arc::new(Semaphore::new(parallelism.max(1))),
            observer,
        })
    }

    /// Join `image`'s pull, starting it when none is in flight, and wait for
    /// its end. Dropping the future leaves the pull running.
    pub async fn pull<R: ContainerRuntime>(
        self: &Arc<Self>,
        runtime: &Arc<R>,
        image: &str,
        credentials: Option<&RegistryCredentials>,
    ) -> Result<(), RuntimeError> {
        let mut rx = self.join(runtime, image, credentials);
        loop {
            if let PullState::Done(result) = &*rx.borrow_and_update() {
                return result.clone();
            }
            if rx.changed().await.is_err() {
                return Err(RuntimeError::Other(format!(
                    "the pull of {image} ended without a result"
                )));
            }
        }
    }

    /// Whether `image` is present, joining a check in flight for it or
    /// starting one. Nothing is cached: a caller arriving after the answer
    /// asks again. Dropping the future leaves the check to the others.
    pub async fn present<R: ContainerRuntime>(
        self: &Arc<Self>,
        runtime: &Arc<R>,
        image: &str,
    ) -> Result<bool, RuntimeError> {
        let mut rx = {
            let Ok(mut map) = self.checks.lock() else {
                // A poisoned map (a panic elsewhere) costs sharing only.
                return runtime.image_present(image).await;
            };
            match map.get(image) {
                Some(rx) => rx.clone(),
                None => {
                    let (tx, rx) = watch::channel(None);
                    map.insert(image.to_string(), rx.clone());
                    let (this, runtime) = (Arc::clone(self), Arc::clone(runtime));
                    let image = image.to_string();
                    tokio::spawn(async move {
                        let forget = Forget::new(&this.checks, &image);
                        let answer = runtime.image_present(&image).await;
                        drop(forget);
                        tx.send_replace(Some(answer));
                    });
                    rx
                }
            }
        };
        loop {
            if let Some(answer) = &*rx.borrow_and_update() {
                return answer.clone();
            }
            if rx.changed().await.is_err() {
                return Err(RuntimeError::Other(format!(
                    "the check whether {image} is present ended without an answer"
                )));
            }
        }
    }

    fn join<R: ContainerRuntime>(
        self: &Arc<Self>,
        runtime: &Arc<R>,
        image: &str,
        credentials: Option<&RegistryCredentials>,
    ) -> watch::Receiver<PullState> {
        let Ok(mut map) = self.in_flight.lock() else {
            // A poisoned map (a panic elsewhere) costs sharing, not the pull.
            let (tx, rx) = watch::channel(PullState::Queued);
            self.spawn(runtime, image, credentials, tx);
            return rx;
        };
        if let Some(rx) = map.get(image) {
            return rx.clone();
        }
        let (tx, rx) = watch::channel(PullState::Queued);
        map.insert(image.to_string(), rx.clone());
        drop(map);
        self.spawn(runtime, image, credentials, tx);
        rx
    }

    fn spawn<R: ContainerRuntime>(
        self: &Arc<Self>,
        runtime: &Arc<R>,
        image: &str,
        credentials: Option<&RegistryCredentials>,
        tx: watch::Sender<PullState>,
    ) {
        let (this, runtime) = (Arc::clone(self), Arc::clone(runtime));
        let (image, credentials) = (image.to_string(), credentials.cloned());
        tokio::spawn(async move {
            let forget = Forget::new(&this.in_flight, &image);
            let result = match this.slots.clone().acquire_owned().await {
                Ok(_permit) => {
                    tx.send_replace(PullState::Running(PullProgress::default()));
                    let started = Instant::now();
                    let last_log = Mutex::new(started);
                    let report = |p: &PullProgress| {
                        tx.send_replace(PullState::Running(*p));
                        this.observer.progress(&image, p);
                        log_now_and_then(&image, p, &last_log);
                    };
                    info!(image = %image, "pulling image");
                    let result = runtime.pull(&image, credentials.as_ref(), &report).await;
                    this.observer.done(&image, &result, started.elapsed());
                    result
                }
                Err(_) => Err(RuntimeError::Other("pull slots closed".into())),
            };
            // Forget the pull before announcing its end: a caller arriving
            // later starts a fresh one (what `pull: always` means).
            drop(forget);
            tx.send_replace(PullState::Done(result));
        });
    }

    /// The progress of `image`'s pull, when one is in flight.
    pub fn state(&self, image: &str) -> Option<PullState> {
        let map = self.in_flight.lock().ok()?;
        map.get(image).map(|rx| rx.borrow().clone())
    }

    /// Every pull in flight, by image.
    pub fn all(&self) -> Vec<(String, PullState)> {
        let Ok(map) = self.in_flight.lock() else {
            return Vec::new();
        };
        let mut all: Vec<_> = map
            .iter()
            .map(|(image, rx)| (image.clone(), rx.borrow().clone()))
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }
}

/// Removes an image's entry from a map of work in flight when dropped: at
/// the work's end, and also when it panics, so that the next caller starts
/// afresh instead of joining work that will never answer.
struct Forget<'a, T> {
    map: &'a Mutex<HashMap<String, T>>,
    image: &'a str,
}

impl<'a, T> Forget<'a, T> {
    fn new(map: &'a Mutex<HashMap<String, T>>, image: &'a str) -> Self {
        Forget { map, image }
    }
}

impl<T> Drop for Forget<'_, T> {
    fn drop(&mut self) {
        // A poisoned map still gives up its entry.
        let mut map = self
            .map
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        map.remove(self.image);
    }
}

fn log_now_and_then(image: &str, p: &PullProgress, last: &Mutex<Instant>) {
    let Ok(mut last) = last.lock() else { return };
    if last.elapsed() < LOG_EVERY {
        return;
    }
    *last = Instant::now();
    info!(
        image,
        layers_done = p.layers_done,
        layers = p.layers,
        bytes = p.bytes_done,
        bytes_total = p.bytes_total,
        "pulling: {}%, {}/{} layers, {} of {} MB",
        p.percent(),
        p.layers_done,
        p.layers,
        p.bytes_done / 1_000_000,
        p.bytes_total / 1_000_000
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::fake::FakeRuntime;

    #[tokio::test(start_paused = true)]
    async fn instances_that_need_one_image_share_one_pull() {
        let runtime = Arc::new(FakeRuntime::new());
        runtime.set_latency(Duration::from_secs(3));
        let pulls = Pulls::new(4, Arc::new(LogPulls));
        let (a, b, c) = tokio::join!(
            pulls.pull(&runtime, "img:1", None),
            pulls.pull(&runtime, "img:1", None),
            pulls.pull(&runtime, "img:1", None),
        );
        assert!(a.is_ok() && b.is_ok() && c.is_ok());
        assert_eq!(runtime.calls("pull"), 1);
        assert!(pulls.all().is_empty(), "a finished pull is forgotten");
        pulls.pull(&runtime, "img:1", None).await.unwrap();
        assert_eq!(runtime.calls("pull"), 2, "a later caller pulls afresh");
    }

    #[tokio::test(start_paused = true)]
    async fn instances_that_need_one_image_share_one_presence_check() {
        let runtime = Arc::new(FakeRuntime::new());
        runtime.add_image("img:1");
        runtime.set_latency(Duration::from_millis(50));
        let pulls = Pulls::new(4, Arc::new(LogPulls));
        let checks = (0..200).map(|_| pulls.present(&runtime, "img:1"));
        let answers = futures_util::future::join_all(checks).await;
        assert!(answers.iter().all(|a| matches!(a, Ok(true))));
        assert_eq!(runtime.reads("image_present"), 1);
        // Another image is another check; a later caller asks afresh.
        assert!(!pulls.present(&runtime, "other:1").await.unwrap());
        assert!(pulls.present(&runtime, "img:1").await.unwrap());
        assert_eq!(runtime.reads("image_present"), 3);
    }

    /// Panics when the first pull ends, as a bug in an observer would.
    struct PanicsOnce(std::sync::atomic::AtomicBool);

    impl PullObserver for PanicsOnce {
        fn progress(&self, _image: &str, _progress: &PullProgress) {}
        fn done(&self, _image: &str, _result: &Result<(), RuntimeError>, _elapsed: Duration) {
            if !self.0.swap(true, std::sync::atomic::Ordering::SeqCst) {
                panic!("an observer's bug");
            }
        }
    }

    /// A pull whose task panics is forgotten all the same: its waiters get
    /// an error, and the next caller pulls afresh instead of joining a pull
    /// that will never answer.
    #[tokio::test(start_paused = true)]
    async fn a_pull_that_panics_is_forgotten() {
        let runtime = Arc::new(FakeRuntime::new());
        let pulls = Pulls::new(1, Arc::new(PanicsOnce(false.into())));
        let first = pulls.pull(&runtime, "img:1", None).await;
        assert!(first.is_err(), "{first:?}");
        assert!(pulls.all().is_empty(), "{:?}", pulls.all());
        pulls.pull(&runtime, "img:1", None).await.unwrap();
        assert_eq!(runtime.calls("pull"), 2);
    }

    /// The same for a presence check, and for a map poisoned meanwhile.
    #[test]
    fn forgetting_survives_a_panic_and_a_poisoned_map() {
        let map: Mutex<HashMap<String, u8>> = Mutex::new(HashMap::from([("img:1".into(), 1)]));
        let panicked = std::panic::catch_unwind(|| {
            let _forget = Forget::new(&map, "img:1");
            let _poison = map.lock().unwrap();
            panic!("a bug while the map is held");
        });
        assert!(panicked.is_err());
        assert!(map.is_poisoned());
        let left = map
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        assert!(left.is_empty(), "{left:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiter_that_gives_up_leaves_the_pull_running() {
        let runtime = Arc::new(FakeRuntime::new());
        runtime.set_latency(Duration::from_secs(10));
        let pulls = Pulls::new(1, Arc::new(LogPulls));
        let waited =
            tokio::time::timeout(Duration::from_secs(1), pulls.pull(&runtime, "big:1", None)).await;
        assert!(waited.is_err());
        assert!(matches!(pulls.state("big:1"), Some(PullState::Running(_))));
        // Joining again waits for the same pull, not a new one.
        pulls.pull(&runtime, "big:1", None).await.unwrap();
        assert_eq!(runtime.calls("pull"), 1);
        assert!(runtime.image_present("big:1").await.unwrap());
    }

    #[tokio::test(start_paused = true)]
    async fn pulls_beyond_the_limit_queue() {
        let runtime = Arc::new(FakeRuntime::new());
        runtime.set_latency(Duration::from_secs(5));
        let pulls = Pulls::new(1, Arc::new(LogPulls));
        let first = {
            let (p, r) = (pulls.clone(), runtime.clone());
            tokio::spawn(async move { p.pull(&r, "a:1", None).await })
        };
        let second = {
            let (p, r) = (pulls.clone(), runtime.clone());
            tokio::spawn(async move { p.pull(&r, "b:1", None).await })
        };
        tokio::time::sleep(Duration::from_secs(1)).await;
        let states: Vec<_> = pulls.all().into_iter().map(|(_, s)| s).collect();
        assert!(states.contains(&PullState::Queued), "{states:?}");
        first.await.unwrap().unwrap();
        second.await.unwrap().unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_pull_reports_to_every_waiter() {
        let runtime = Arc::new(FakeRuntime::new());
        runtime.make_unpullable("nope:1");
        let pulls = Pulls::new(2, Arc::new(LogPulls));
        let (a, b) = tokio::join!(
            pulls.pull(&runtime, "nope:1", None),
            pulls.pull(&runtime, "nope:1", None)
        );
        assert!(a.is_err() && b.is_err());
        assert_eq!(runtime.calls("pull"), 1);
    }
}
