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
        let build_info = Family::<Labels, Gauge>::default();
        registry.register(
            "berth_build_info",
            "The running berth's version and target (value is always 1)",
            build_info.clone(),
        );
        build_info
            .get_or_create(&vec![
                ("version".to_string(), env!("CARGO_PKG_VERSION").to_string()),
                (
                    "target".to_string(),
                    format!("{}-{}", std::env::consts::ARCH, std::env::consts::OS),
                ),
            ])
            .set(1);
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

    /// The OpenMetrics text exposition (ends with `# EOF`).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }

    /// The exposition in the format `format`.
    pub fn encode_as(&self, format: Format) -> String {
        match format {
            Format::OpenMetrics => self.encode(),
            Format::Prometheus => openmetrics_to_prometheus(&self.encode()),
        }
    }
}

/// The two text formats a scraper may ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Prometheus text format 0.0.4: what a scraper gets unless it asks.
    Prometheus,
    /// OpenMetrics 1.0.0, for a scraper whose `Accept` prefers it.
    OpenMetrics,
}

impl Format {
    /// Content negotiation on `Accept`: OpenMetrics when it is listed with a
    /// weight no lower than plain text's (Prometheus itself lists it first);
    /// the 0.0.4 text format otherwise, and without an `Accept`.
    pub fn negotiate(accept: Option<&str>) -> Format {
        let Some(accept) = accept else {
            return Format::Prometheus;
        };
        let (mut open, mut text) = (0.0f32, 0.0f32);
        for range in accept.split(',') {
            let mut parts = range.split(';').map(str::trim);
            let media = parts.next().unwrap_or_default().to_ascii_lowercase();
            let q = parts
                .filter_map(|p| p.strip_prefix("q="))
                .find_map(|q| q.parse::<f32>().ok())
                .unwrap_or(1.0);
            match media.as_str() {
                "application/openmetrics-text" => open = open.max(q),
                "text/plain" | "text/*" | "*/*" => text = text.max(q),
                _ => {}
            }
        }
        if open > 0.0 && open >= text {
            Format::OpenMetrics
        } else {
            Format::Prometheus
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::Prometheus => "text/plain; version=0.0.4; charset=utf-8",
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        }
    }
}

/// OpenMetrics text → Prometheus text format 0.0.4. The differences that
/// matter here: a counter's HELP and TYPE name its `_total` sample, there is
/// no `# UNIT` and no `# EOF`, and HELP escapes only `\` and newlines.
pub fn openmetrics_to_prometheus(text: &str) -> String {
    let counters: std::collections::HashSet<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let total = |name: &str| -> String {
        if counters.contains(name) {
            format!("{name}_total")
        } else {
            name.to_string()
        }
    };
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
            out.push_str(&format!(
                "# HELP {} {}\n",
                total(name),
                help.replace("\\\"", "\"")
            ));
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, "untyped"));
            let kind = match kind {
                "info" | "stateset" => "gauge",
                "unknown" => "untyped",
                other => other,
            };
            out.push_str(&format!("# TYPE {} {kind}\n", total(name)));
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
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

    /// Every family with a sample, as a busy agent's scrape would have.
    fn busy() -> Metrics {
        let m = Metrics::new();
        m.pass(
            Duration::from_millis(20),
            &Err(PassError::Docker(
                crate::runtime::RuntimeError::Unavailable("no socket".into()),
            )),
        );
        m.job_run("backup", "succeeded");
        let status = Status {
            docker_version: Some("20.10.24".into()),
            instances: vec![instance("web", "running", Some(2000))],
            manifest_errors: vec!["a.yaml:1:1: \"quoted\" bad".into()],
            source: Some(crate::source::SourceStatus {
                commit: Some("b".repeat(40)),
                last_success: Some(990),
                fetch_failures: 1,
                ..Default::default()
            }),
            ..Status::default()
        };
        m.refresh_from(&status, SystemTime::UNIX_EPOCH + Duration::from_secs(1000));
        m
    }

    #[test]
    fn the_text_format_names_each_counter_sample_in_help_and_type() {
        let text = busy().encode_as(Format::Prometheus);
        assert!(
            text.contains("# HELP berth_passes_total Reconcile passes"),
            "{text}"
        );
        assert!(text.contains("# TYPE berth_passes_total counter"), "{text}");
        assert!(
            text.contains("berth_passes_total{result=\"error\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE berth_pass_duration_seconds histogram"),
            "{text}"
        );
        assert!(
            !text.contains("# EOF") && !text.contains("# UNIT"),
            "{text}"
        );
        // Every sample's family has HELP and TYPE.
        for sample in text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
        {
            let name = sample.split(['{', ' ']).next().unwrap();
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .filter(|f| text.contains(&format!("# TYPE {f} histogram")))
                .unwrap_or(name);
            assert!(
                text.contains(&format!("# HELP {family} ")),
                "no HELP for {name}"
            );
            assert!(
                text.contains(&format!("# TYPE {family} ")),
                "no TYPE for {name}"
            );
        }
    }

    #[test]
    fn openmetrics_ends_with_eof_and_build_info_is_always_there() {
        let m = Metrics::new();
        let open = m.encode_as(Format::OpenMetrics);
        assert!(open.ends_with("# EOF\n"), "{open}");
        for text in [open, m.encode_as(Format::Prometheus)] {
            let info = format!(
                "berth_build_info{{version=\"{}\",target=\"{}-{}\"}} 1",
                env!("CARGO_PKG_VERSION"),
                std::env::consts::ARCH,
                std::env::consts::OS
            );
            assert!(text.contains(&info), "{text}");
        }
    }

    #[test]
    fn the_scraper_gets_openmetrics_only_when_it_asks() {
        use Format::*;
        let prometheus_2 = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        for (accept, expected) in [
            (None, Prometheus),
            (Some("*/*"), Prometheus),
            (Some("text/plain"), Prometheus),
            (Some("text/plain;version=0.0.4"), Prometheus),
            (Some(prometheus_2), OpenMetrics),
            (Some("application/openmetrics-text"), OpenMetrics),
            (
                Some("text/plain;q=0.9, application/openmetrics-text;q=0.5"),
                Prometheus,
            ),
            (Some("application/openmetrics-text;q=0"), Prometheus),
        ] {
            assert_eq!(Format::negotiate(accept), expected, "{accept:?}");
        }
        assert_eq!(
            Prometheus.content_type(),
            "text/plain; version=0.0.4; charset=utf-8"
        );
    }

    /// `promtool check metrics` (Debian package `prometheus`) on the text
    /// format; skipped, saying so, where promtool is not installed.
    #[test]
    fn promtool_accepts_the_text_format() {
        use std::io::Write;
        let Ok(mut child) = std::process::Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
        else {
            println!("SKIPPED: promtool is not installed (apt-get install prometheus)");
            return;
        };
        let text = busy().encode_as(Format::Prometheus);
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success() && said.trim().is_empty(),
            "promtool: {said}\n{text}"
        );
    }
}
