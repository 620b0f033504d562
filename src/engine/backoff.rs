//! Per-instance restart state: how many consecutive failures, and when the
//! next attempt is due. Pure: every function takes `now`, nothing sleeps.
//!
//! The curve lives in [`crate::engine::retry`]: the first restart is
//! immediate, then `delay`, `2×delay`, `4×delay`, ... capped at `max_delay`.
//! A container that ran for
//! at least `reset_after` before it stopped resets the count, so a service
//! that crashes once a week restarts at once every time.
//!
//! Warning: the state lives in memory only. A restarted berth starts every
//! instance with a clean count; the worst case is one immediate restart.

use std::collections::BTreeMap;
use std::time::SystemTime;

use crate::engine::retry::{restart_delay, FailureKind, Requeue};
use crate::manifest::RestartSpec;
use crate::names::InstanceKey;

/// Restart state of one instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backoff {
    /// Consecutive failures (exits, failed creates or starts, unhealthy verdicts).
    pub failures: u32,
    /// When the latest failure happened.
    pub last_failure: SystemTime,
    /// The finish time of the last container exit already counted, so that
    /// seeing the same exited container in several passes counts it once.
    last_exit_counted: Option<SystemTime>,
    /// The unhealthy verdict already counted: (container id, restarts then).
    /// A container keeps its id across a restart, so the restart count tells
    /// a new verdict from one seen before.
    unhealthy_counted: Option<(String, u64)>,
    /// Restarts berth performed (for status and metrics; never reset).
    pub restarts: u64,
    /// The latest failure's message, for status.
    pub last_error: Option<String>,
    /// Not before this moment, whatever the curve says: set by failures
    /// that do not count on the curve (Docker away, a failed removal).
    hold_until: Option<SystemTime>,
    /// The latest failure could not be fixed by waiting (see
    /// [`FailureKind::Permanent`]); cleared by the next success.
    pub permanent: bool,
}

impl Backoff {
    fn fresh(at: SystemTime) -> Backoff {
        Backoff {
            failures: 0,
            last_failure: at,
            last_exit_counted: None,
            unhealthy_counted: None,
            restarts: 0,
            last_error: None,
            hold_until: None,
            permanent: false,
        }
    }
}

/// Backoff state for every instance that has failed at least once.
#[derive(Debug, Default, Clone)]
pub struct BackoffTable {
    entries: BTreeMap<InstanceKey, Backoff>,
}

impl BackoffTable {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn get(&self, key: &InstanceKey) -> Option<&Backoff> {
        self.entries.get(key)
    }

    /// When the next attempt for `key` may happen; `None` means now.
    pub fn due(&self, key: &InstanceKey, timings: &RestartSpec) -> Option<SystemTime> {
        let entry = self.entries.get(key)?;
        let delay = restart_delay(entry.failures, timings);
        let curve = (!delay.is_zero()).then(|| entry.last_failure + delay);
        match (curve, entry.hold_until) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        }
    }

    /// Count a container exit once, however many passes see it. `started_at`
    /// and `finished_at` come from the engine; a run of at least
    /// `reset_after` starts the count afresh.
    pub fn observe_exit(
        &mut self,
        key: &InstanceKey,
        started_at: Option<SystemTime>,
        finished_at: SystemTime,
        timings: &RestartSpec,
        message: String,
    ) {
        let ran_long = started_at
            .and_then(|s| finished_at.duration_since(s).ok())
            .is_some_and(|ran| ran >= timings.reset_after.get());
        let entry = self
            .entries
            .entry(key.clone())
            .or_insert(Backoff::fresh(finished_at));
        if entry.last_exit_counted == Some(finished_at) {
            return;
        }
        entry.last_exit_counted = Some(finished_at);
        entry.failures = if ran_long { 1 } else { entry.failures + 1 };
        entry.last_failure = finished_at;
        entry.last_error = Some(message);
    }

    /// Count Docker's "unhealthy" verdict on a running container once per
    /// verdict, however many passes see it.
    pub fn observe_unhealthy(&mut self, key: &InstanceKey, container_id: &str, now: SystemTime) {
        let restarts = self.entries.get(key).map_or(0, |e| e.restarts);
        let seen = (container_id.to_string(), restarts);
        if self
            .entries
            .get(key)
            .is_some_and(|e| e.unhealthy_counted.as_ref() == Some(&seen))
        {
            return;
        }
        self.record_failure(key, now, "healthcheck reports unhealthy".into());
        if let Some(entry) = self.entries.get_mut(key) {
            entry.unhealthy_counted = Some(seen);
        }
    }

    /// Count a failure that happened now: a failed create, start or pull, or
    /// an unhealthy verdict acted upon.
    pub fn record_failure(&mut self, key: &InstanceKey, now: SystemTime, message: String) {
        let entry = self
            .entries
            .entry(key.clone())
            .or_insert(Backoff::fresh(now));
        entry.failures += 1;
        entry.last_failure = now;
        entry.last_error = Some(message);
    }

    /// Record a failed action as the retry policy decided it: on the curve
    /// when it counts, else held for `requeue.after`.
    pub fn record_requeue(
        &mut self,
        key: &InstanceKey,
        now: SystemTime,
        message: String,
        requeue: &Requeue,
    ) {
        let entry = self
            .entries
            .entry(key.clone())
            .or_insert(Backoff::fresh(now));
        if requeue.counted {
            entry.failures += 1;
            entry.last_failure = now;
        }
        entry.last_error = Some(message);
        entry.hold_until = (!requeue.counted).then(|| now + requeue.after);
        entry.permanent = requeue.kind == FailureKind::Permanent;
    }

    /// An action succeeded: lift holds. The failure count stays; only a long
    /// enough run resets it, so a crash loop keeps backing off.
    pub fn record_success(&mut self, key: &InstanceKey) {
        if let Some(entry) = self.entries.get_mut(key) {
            entry.hold_until = None;
            entry.permanent = false;
        }
    }

    /// The instance's spec changed: start its curve afresh (no failures, no
    /// hold, not permanent), so the new spec is tried at once. What was
    /// already counted stays counted (an exit seen again is not a new
    /// failure), and the restarts shown in status stay.
    pub fn new_spec(&mut self, key: &InstanceKey) {
        if let Some(entry) = self.entries.get_mut(key) {
            entry.failures = 0;
            entry.hold_until = None;
            entry.permanent = false;
        }
    }

    /// Note that berth restarted the instance (status and metrics only).
    pub fn record_restart(&mut self, key: &InstanceKey, now: SystemTime) {
        self.entries
            .entry(key.clone())
            .or_insert(Backoff::fresh(now))
            .restarts += 1;
    }

    /// Forget an instance that no longer exists in the desired set.
    pub fn forget(&mut self, key: &InstanceKey) {
        self.entries.remove(key);
    }

    /// Keep only instances for which `keep` holds.
    pub fn retain(&mut self, mut keep: impl FnMut(&InstanceKey) -> bool) {
        self.entries.retain(|k, _| keep(k));
    }

    pub fn iter(&self) -> impl Iterator<Item = (&InstanceKey, &Backoff)> {
        self.entries.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::duration::Duration as D;
    use std::time::Duration;

    fn timings() -> RestartSpec {
        RestartSpec {
            delay: D::from_millis(200),
            max_delay: D::from_secs(2),
            reset_after: D::from_secs(10),
            ..RestartSpec::default()
        }
    }

    fn t(ms: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_millis(1_000_000 + ms)
    }

    #[test]
    fn each_exit_is_counted_once_however_many_passes_see_it() {
        let key = InstanceKey::new("web", 0);
        let mut table = BackoffTable::new();
        for _ in 0..3 {
            table.observe_exit(&key, Some(t(0)), t(100), &timings(), "exit 1".into());
        }
        assert_eq!(table.get(&key).unwrap().failures, 1);
        assert_eq!(
            table.due(&key, &timings()),
            None,
            "first restart is immediate"
        );
        table.observe_exit(&key, Some(t(150)), t(300), &timings(), "exit 1".into());
        assert_eq!(table.get(&key).unwrap().failures, 2);
        assert_eq!(table.due(&key, &timings()), Some(t(500)));
    }

    #[test]
    fn a_long_run_resets_the_count_so_the_next_restart_is_immediate() {
        let key = InstanceKey::new("web", 0);
        let mut table = BackoffTable::new();
        for i in 0..5 {
            table.observe_exit(
                &key,
                Some(t(i * 100)),
                t(i * 100 + 50),
                &timings(),
                "x".into(),
            );
        }
        assert!(table.due(&key, &timings()).is_some());
        table.observe_exit(&key, Some(t(1_000)), t(20_000), &timings(), "x".into());
        assert_eq!(table.get(&key).unwrap().failures, 1);
        assert_eq!(table.due(&key, &timings()), None);
    }

    #[test]
    fn an_unhealthy_verdict_counts_once_until_berth_restarts_the_container() {
        let key = InstanceKey::new("web", 0);
        let mut table = BackoffTable::new();
        table.observe_unhealthy(&key, "c1", t(0));
        table.observe_unhealthy(&key, "c1", t(50));
        assert_eq!(table.get(&key).unwrap().failures, 1);
        table.record_restart(&key, t(60));
        table.observe_unhealthy(&key, "c1", t(500));
        assert_eq!(table.get(&key).unwrap().failures, 2);
        assert_eq!(table.due(&key, &timings()), Some(t(700)));
    }

    #[test]
    fn failed_creates_back_off_on_the_same_curve() {
        let key = InstanceKey::new("web", 0);
        let mut table = BackoffTable::new();
        table.record_failure(&key, t(0), "no such image".into());
        assert_eq!(table.due(&key, &timings()), None);
        table.record_failure(&key, t(10), "no such image".into());
        assert_eq!(table.due(&key, &timings()), Some(t(210)));
        table.record_failure(&key, t(300), "no such image".into());
        assert_eq!(table.due(&key, &timings()), Some(t(700)));
    }

    #[test]
    fn an_uncounted_failure_holds_the_instance_without_moving_the_curve() {
        let key = InstanceKey::new("web", 0);
        let mut table = BackoffTable::new();
        let away = Requeue {
            after: Duration::from_secs(1),
            counted: false,
            kind: FailureKind::Unavailable,
        };
        table.record_requeue(&key, t(0), "docker away".into(), &away);
        assert_eq!(table.get(&key).unwrap().failures, 0);
        assert_eq!(table.due(&key, &timings()), Some(t(1_000)));
        table.record_success(&key);
        assert_eq!(table.due(&key, &timings()), None);
    }

    #[test]
    fn a_permanent_failure_is_remembered_until_a_success() {
        let key = InstanceKey::new("web", 0);
        let mut table = BackoffTable::new();
        let refused = Requeue {
            after: Duration::ZERO,
            counted: true,
            kind: FailureKind::Permanent,
        };
        table.record_requeue(&key, t(0), "refused".into(), &refused);
        assert!(table.get(&key).unwrap().permanent);
        assert_eq!(table.get(&key).unwrap().failures, 1);
        table.record_success(&key);
        assert!(!table.get(&key).unwrap().permanent);
    }
}
