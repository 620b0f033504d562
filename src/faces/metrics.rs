//! Prometheus metrics for `/metrics`.
//!
//! Counters and the pass-duration histogram move as the engine reports
//! passes and finished work (see [`EngineObserver`]); gauges are re-read
//! from the published [`Status`] at scrape time. No label ever carries a secret: only task names, states,
//! results and the Docker version.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::engine::apply::Outcome;
use crate::engine::controller::{EngineObserver, PassError, PassReport};
use crate::engine::error::ApplyError;
use crate::engine::status::Status;

type Labels = Vec<(String, String)>;

fn label(key: &str, value: &str) -> Labels {
    vec![(key.to_string(), value.to_string())]
}

/// Every metric berth exports, and the registry that encodes them.
pub struct Metrics {
    registry: Registry,
    passes: Family<Labels, Counter>,
    pass_duration: Histogram,
    tasks: Family<Labels, Gauge>,
    restarts: Family<Labels, Counter>,
    updates: Family<Labels, Counter>,
    rollbacks: Family<Labels, Counter>,
    job_runs: Family<Labels, Counter>,
    backoff: Family<Labels, Gauge<f64, AtomicU64>>,
    manifest_errors: Gauge,
    docker_up: Gauge,
    removals_held: Gauge,
    docker_info: Family<Labels, Gauge>,
    source_info: Family<Labels, Gauge>,
    source_fetch_failures: Counter,
    source_last_fetch: Gauge,
    /// Serialises gauge refreshes (clear + set) between concurrent scrapes.
    refresh: Mutex<()>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let passes = Family::<Labels, Counter>::default();
        registry.register(
            "berth_passes",
            "Reconcile passes by result (ok: planned and dispatched; error: Docker could not be listed)",
            passes.clone(),
        );
        // 5 ms .. ~82 s: an idle pass is milliseconds, one with pulls is minutes.
        let pass_duration = Histogram::new(exponential_buckets(0.005, 2.0, 15));
        registry.register(
            "berth_pass_duration_seconds",
            "Duration of reconcile passes",
            pass_duration.clone(),
        );
        let tasks = Family::<Labels, Gauge>::default();
        registry.register(
            "berth_tasks",
            "Task instances by container state (missing: no container yet)",
            tasks.clone(),
        );
        let restarts = Family::<Labels, Counter>::default();
        registry.register(
            "berth_restarts",
            "Container restarts berth performed, by task",
            restarts.clone(),
        );
        let updates = Family::<Labels, Counter>::default();
        registry.register(
            "berth_updates",
            "Replacements of a container by a new spec, by task and result (done, rolled-back, failed)",
            updates.clone(),
        );
        let rollbacks = Family::<Labels, Counter>::default();
        registry.register(
            "berth_rollbacks",
            "Updates rolled back to the previous container because the new one failed, by task",
            rollbacks.clone(),
        );
        let job_runs = Family::<Labels, Counter>::default();
        registry.register(
            "berth_job_runs",
            "Job runs by task and result (succeeded, failed: a run that exited non-zero; skipped: a scheduled slot that came while the previous run still went on)",
            job_runs.clone(),
        );
        let backoff = Family::<Labels, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "berth_backoff_seconds",
            "Seconds until the next retry of a task that is backing off (0: not backing off)",
            backoff.clone(),
        );
        let manifest_errors = Gauge::default();
        registry.register(
            "berth_manifest_errors",
            "Manifest, folder and resolution errors in the last pass",
            manifest_errors.clone(),
        );
        let docker_up = Gauge::default();
        registry.register(
            "berth_docker_up",
            "1 when the last pass reached Docker, else 0",
            docker_up.clone(),
        );
        let removals_held = Gauge::default();
        registry.register(
            "berth_removals_held",
            "1 while every removal is held because the manifest folder has no manifest or moved to another file system",
            removals_held.clone(),
        );
        let docker_info = Family::<Labels, Gauge>::default();
        registry.register(
            "berth_docker_info",
            "The Docker engine version (value is always 1)",
            docker_info.clone(),
        );
        let source_info = Family::<Labels, Gauge>::default();
        registry.register(
            "berth_source_info",
            "The git commit whose manifests are applied (value is always 1; absent without a git source or before a first good fetch)",
            source_info.clone(),
        );
        let source_fetch_failures = Counter::default();
        registry.register(
            "berth_source_fetch_failures",
            "Fetches of the git source that failed (remote unreachable, ref gone, timeout); the applied commit is kept",
            source_fetch_failures.clone(),
        );
        let source_last_fetch = Gauge::default();
        registry.register(
            "berth_source_last_fetch_timestamp_seconds",
            "Unix time of the last fetch of the git source that reached the remote",
            source_last_fetch.clone(),
        );
        Metrics {
            registry,
            source_info,
            source_fetch_failures,
            source_last_fetch,
            passes,
            pass_duration,
            tasks,
            restarts,
            updates,
            rollbacks,
            job_runs,
            backoff,
            manifest_errors,
            docker_up,
            removals_held,
            docker_info,
            refresh: Mutex::new(()),
        }
    }
}

impl EngineObserver for Metrics {
    /// Count one pass: its result and duration.
    fn pass(&self, elapsed: Duration, result: &Result<PassReport, PassError>) {
        self.pass_duration.observe(elapsed.as_secs_f64());
        let outcome = match result {
            Ok(_) => "ok",
            Err(_) => "error",
        };
        self.passes.get_or_create(&label("result", outcome)).inc();
        if let Ok(report) = result {
            // Make every current task visible with 0 restarts.
            for key in &report.desired_instances {
                let _ = self.restarts.get_or_create(&label("task", &key.task));
            }
        }
    }

    fn job_run(&self, task: &str, result: &str) {
        let labels = vec![
            ("task".to_string(), task.to_string()),
            ("result".to_string(), result.to_string()),
        ];
        self.job_runs.get_or_create(&labels).inc();
    }

    /// Count the restarts, updates and rollbacks a finished chain made.
    fn outcomes(&self, outcomes: &[Outcome]) {
        for o in outcomes {
            if o.result.is_ok() && matches!(o.verb, "restart" | "restart-unhealthy") {
                self.restarts
                    .get_or_create(&label("task", &o.key.task))
                    .inc();
            }
            if matches!(o.verb, "replace" | "resume") {
                let result = match &o.result {
                    Ok(()) => "done",
                    Err(ApplyError::RolledBack { .. }) => "rolled-back",
                    Err(ApplyError::Cancelled) => continue,
                    Err(_) => "failed",
                };
                if result == "rolled-back" {
                    self.rollbacks
                        .get_or_create(&label("task", &o.key.task))
                        .inc();
                }
                let labels = vec![
                    ("task".to_string(), o.key.task.clone()),
                    ("result".to_string(), result.to_string()),
                ];
                self.updates.get_or_create(&labels).inc();
            }
        }
    }
}

impl Metrics {
    /// Re-read the gauges from the published status.
    pub fn refresh_from(&self, status: &Status, now: SystemTime) {
        let _guard = self.refresh.lock();
        self.tasks.clear();
        let mut by_state: BTreeMap<&str, i64> = BTreeMap::new();
        let mut backoff: BTreeMap<&str, f64> = BTreeMap::new();
        let now_secs = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        for i in &status.instances {
            *by_state.entry(i.state.as_str()).or_default() += 1;
            let wait = i
                .backoff_until
                .map_or(0, |until| until.saturating_sub(now_secs)) as f64;
            let slot = backoff.entry(i.task.as_str()).or_default();
            *slot = slot.max(wait);
        }
        for (state, n) in by_state {
            self.tasks.get_or_create(&label("state", state)).set(n);
        }
        self.backoff.clear();
        for (task, secs) in backoff {
            self.backoff.get_or_create(&label("task", task)).set(secs);
        }
        self.manifest_errors
            .set(i64::try_from(status.manifest_errors.len()).unwrap_or(i64::MAX));
        let up = status.docker_error.is_none() && status.docker_version.is_some();
        self.docker_up.set(i64::from(up));
        self.removals_held
            .set(i64::from(status.removals_held.is_some()));
        self.docker_info.clear();
        if let Some(v) = &status.docker_version {
            self.docker_info.get_or_create(&label("version", v)).set(1);
        }
        self.source_info.clear();
        if let Some(source) = &status.source {
            if let Some(commit) = &source.commit {
                self.source_info
                    .get_or_create(&label("commit", commit))
                    .set(1);
            }
            // The source counts; the counter catches up (never goes back).
            let seen = self.source_fetch_failures.get();
            if source.fetch_failures > seen {
                self.source_fetch_failures
                    .inc_by(source.fetch_failures - seen);
            }
            if let Some(t) = source.last_success {
                self.source_last_fetch
                    .set(i64::try_from(t).unwrap_or(i64::MAX));
            }
        }
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::status::InstanceStatus;

    fn instance(task: &str, state: &str, backoff_until: Option<u64>) -> InstanceStatus {
        InstanceStatus {
            task: task.into(),
            index: 0,
            desired_hash: None,
            container: None,
            container_id: None,
            state: state.into(),
            started_at: None,
            uptime_secs: None,
            restarts: 0,
            backoff_until,
            last_error: None,
            work: None,
            held: None,
            removal_due: None,
            job: None,
            next_run: None,
            waiting: None,
        }
    }

    #[test]
    fn gauges_follow_the_status_and_forget_states_that_are_gone() {
        let m = Metrics::new();
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
        let mut status = Status {
            docker_version: Some("27.1.0".into()),
            instances: vec![
                instance("web", "running", None),
                instance("job", "exited", Some(1030)),
            ],
            manifest_errors: vec!["a.yaml:1:1: bad".into()],
            ..Status::default()
        };
        m.refresh_from(&status, now);
        let text = m.encode();
        assert!(text.contains("berth_tasks{state=\"running\"} 1"), "{text}");
        assert!(
            text.contains("berth_backoff_seconds{task=\"job\"} 30"),
            "{text}"
        );
        assert!(text.contains("berth_manifest_errors 1"), "{text}");
        assert!(text.contains("berth_docker_up 1"), "{text}");
        assert!(
            text.contains("berth_docker_info{version=\"27.1.0\"} 1"),
            "{text}"
        );

        status.instances.pop();
        status.docker_error = Some("gone".into());
        m.refresh_from(&status, now);
        let text = m.encode();
        assert!(!text.contains("state=\"exited\""), "{text}");
        assert!(text.contains("berth_docker_up 0"), "{text}");
    }

    #[test]
    fn the_source_metrics_follow_the_source_status() {
        let m = Metrics::new();
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
        let mut status = Status::default();
        m.refresh_from(&status, now);
        assert!(!m.encode().contains("berth_source_info{"));
        status.source = Some(crate::source::SourceStatus {
            commit: Some("a".repeat(40)),
            last_success: Some(990),
            fetch_failures: 2,
            ..Default::default()
        });
        m.refresh_from(&status, now);
        m.refresh_from(&status, now);
        let text = m.encode();
        let info = format!("berth_source_info{{commit=\"{}\"}} 1", "a".repeat(40));
        assert!(text.contains(&info), "{text}");
        assert!(
            text.contains("berth_source_fetch_failures_total 2"),
            "{text}"
        );
        assert!(
            text.contains("berth_source_last_fetch_timestamp_seconds 990"),
            "{text}"
        );
    }

    #[test]
    fn a_pass_is_counted_by_result_with_its_duration() {
        let m = Metrics::new();
        m.pass(
            Duration::from_millis(20),
            &Err(PassError::Docker(
                crate::runtime::RuntimeError::Unavailable("no socket".into()),
            )),
        );
        let text = m.encode();
        assert!(
            text.contains("berth_passes_total{result=\"error\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("berth_pass_duration_seconds_count 1"),
            "{text}"
        );
    }
}
