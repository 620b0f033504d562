//! One function per figure of the first set. Each returns table rows and target
//! verdicts; [`all`] runs them in an order that reuses converged state
//! (cold → no-op → update → footprint and reaction → planner).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use bollard::query_parameters::EventsOptions;
use futures_util::StreamExt;
use tokio::sync::mpsc;

use berth::config::{AgentConfig, DockerConfig};
use berth::engine::controller::Controller;
use berth::engine::trigger::Trigger;
use berth::runtime::docker::DockerRuntime;
use berth::runtime::ContainerRuntime;

use crate::counting::CountingRuntime;
use crate::host::{task_name, write_manifest, Host};
use crate::plan_scale::{self, World};
use crate::report::{Row, Target};
use crate::stats::{fmt_ms, ms, Summary};
use crate::{procfs, Options};

/// Everything the report needs.
#[derive(Default)]
pub struct Results {
    pub rows: Vec<Row>,
    pub targets: Vec<Target>,
    pub notes: Vec<String>,
}

/// Figures one scenario hands to a later one.
#[derive(Default)]
struct Shared {
    /// Per-container create and start times of the raw baseline (ms).
    raw_create: Vec<f64>,
    raw_start: Vec<f64>,
}

pub(crate) fn ratio(a: Option<Summary>, b: Option<Summary>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b.median > 0.0 => Some(a.median / b.median),
        _ => None,
    }
}

pub(crate) fn settle() -> tokio::time::Sleep {
    // Let the daemon finish asynchronous clean-up (mounts, network) so it
    // does not bill the next subject.
    tokio::time::sleep(Duration::from_millis(1000))
}

pub async fn all(host: &Host, o: &Options) -> Result<Results> {
    let mut res = Results::default();
    let mut shared = Shared::default();
    host.remove_all().await?;

    if o.runs("cold") {
        eprintln!("[cold] cold convergence of {} tasks ...", o.tasks);
        cold(host, o, &mut res, &mut shared).await?;
    }

    if o.runs("noop") || o.runs("update") {
        // From here on berth's tasks (and compose's project) stay up.
        host.write_manifests(o.tasks, &|_| "0".into())?;
        host.write_compose(o.tasks, &|_| "0".into())?;
        tokio::task::block_in_place(|| host.berth_once())?;
        if host.compose {
            tokio::task::block_in_place(|| host.compose_up())?;
        }
        if o.runs("noop") {
            eprintln!("[noop] no-op pass ...");
            noop(host, o, &mut res).await?;
        }
        if o.runs("update") {
            eprintln!("[update] update of {} of {} tasks ...", o.updates, o.tasks);
            update(host, o, &mut res).await?;
        }
        if host.compose {
            tokio::task::block_in_place(|| host.compose_down())?;
        }
    }

    if o.runs("agent") {
        eprintln!(
            "[agent] footprint ({} s idle), reaction, busy reaction ...",
            o.idle.as_secs()
        );
        agent(host, o, &mut res, &shared).await?;
        tokio::task::block_in_place(|| host.berth_down())?;
    }
    if o.runs("down") {
        eprintln!("[down] down of {} slow stoppers ...", o.tasks);
        crate::engine::down_slow(host, o, &mut res).await?;
    }
    if o.runs("rollback") {
        eprintln!("[rollback] rollback of a failed update ...");
        crate::engine::rollback(host, o, &mut res).await?;
    }
    if o.runs("scale") {
        eprintln!("[scale] {} tasks ...", o.scale_tasks);
        crate::engine::scale(host, o, &mut res).await?;
    }
    if o.runs("planner") {
        eprintln!("[planner] planner scale ...");
        planner(&mut res);
    }

    tokio::task::block_in_place(|| host.berth_down())?;
    Ok(res)
}

#[derive(Clone, Copy, Debug)]
enum Subject {
    Raw,
    Berth,
    Compose,
}

async fn cold(host: &Host, o: &Options, res: &mut Results, shared: &mut Shared) -> Result<()> {
    host.write_manifests(o.tasks, &|_| "0".into())?;
    host.write_compose(o.tasks, &|_| "0".into())?;
    let (mut raw, mut berth, mut compose) = (Vec::new(), Vec::new(), Vec::new());
    // berth: spawn → the last container's `start` event (Docker's clock);
    // comparable with raw's first create → last start returned.
    let mut berth_started = Vec::new();
    let mut compose_started = Vec::new();
    // What Docker's events say of each subject's cold start, and berth over
    // raw in each round (the two ran back to back, on the same daemon load).
    let mut seen: [ColdEvents; 3] = Default::default();
    let mut paired = Vec::new();
    let subjects = [Subject::Raw, Subject::Berth, Subject::Compose];
    for round in 0..o.rounds {
        let (mut raw_now, mut berth_now) = (None, None);
        // Rotate who goes first so drift in the machine's load is shared.
        for k in 0..subjects.len() {
            let subject = subjects[(round + k) % subjects.len()];
            match subject {
                Subject::Raw => {
                    let mut events = tap_cold(host, host.raw_label());
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    let t0 = now_ns();
                    let t = host.raw_up(o.tasks).await?;
                    host.wait_running(&host.raw_label(), o.tasks, Duration::from_secs(10))
                        .await?;
                    raw.push(ms(t.total));
                    raw_now = Some(ms(t.total));
                    seen[0].add(&mut events, t0, o.tasks).await;
                    shared.raw_create.extend(t.create_ms);
                    shared.raw_start.extend(t.start_ms);
                    host.remove_labelled(&host.raw_label()).await?;
                    host.wait_gone(&host.raw_label(), Duration::from_secs(60))
                        .await?;
                }
                Subject::Berth => {
                    let mut events = tap_cold(host, host.berth_label());
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    let t0 = now_ns();
                    let t = tokio::task::block_in_place(|| host.berth_once())?;
                    host.wait_running(&host.berth_label(), o.tasks, Duration::from_secs(10))
                        .await?;
                    berth.push(ms(t));
                    if let Some(last) = seen[1].add(&mut events, t0, o.tasks).await {
                        berth_started.push(last);
                        berth_now = Some(last);
                    }
                    tokio::task::block_in_place(|| host.berth_down())?;
                    host.wait_gone(&host.berth_label(), Duration::from_secs(60))
                        .await?;
                }
                Subject::Compose if host.compose => {
                    let mut events = tap_cold(host, host.compose_label());
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    let t0 = now_ns();
                    let t = tokio::task::block_in_place(|| host.compose_up())?;
                    host.wait_running(&host.compose_label(), o.tasks, Duration::from_secs(10))
                        .await?;
                    compose.push(ms(t));
                    if let Some(last) = seen[2].add(&mut events, t0, o.tasks).await {
                        compose_started.push(last);
                    }
                    tokio::task::block_in_place(|| host.compose_down())?;
                    host.wait_gone(&host.compose_label(), Duration::from_secs(60))
                        .await?;
                }
                Subject::Compose => continue,
            }
            eprintln!("  round {} {subject:?}: done", round + 1);
            settle().await;
        }
        if let (Some(r), Some(b)) = (raw_now, berth_now) {
            paired.push(b / r);
        }
    }
    let (raw, berth, compose, started, compose_last) = (
        Summary::of(&raw),
        Summary::of(&berth),
        Summary::of(&compose),
        Summary::of(&berth_started),
        Summary::of(&compose_started),
    );
    let measure = format!("cold convergence, {} tasks", o.tasks);
    res.rows.push(Row::timed(
        &measure,
        &format!("raw daemon API, {} at a time", o.parallelism),
        raw,
    ));
    res.rows.push(
        Row::timed(
            &measure,
            "berth run --once: last container started",
            started,
        )
        .with_ratio(ratio(started, raw), "raw"),
    );
    res.rows.push(
        Row::timed(
            &measure,
            "berth run --once: process exit (after the settle check)",
            berth,
        )
        .with_ratio(ratio(berth, raw), "raw"),
    );
    res.rows.push(
        Row::timed(
            &measure,
            "docker-compose up -d: last container started",
            compose_last,
        )
        .with_ratio(ratio(compose_last, raw), "raw"),
    );
    res.rows.push(
        Row::timed(&measure, "docker-compose up -d: process exit", compose)
            .with_ratio(ratio(compose, raw), "raw"),
    );
    res.rows.push(Row::figure(
        &measure,
        "berth / raw, paired by round: median (95 % interval of the median)",
        crate::stats::paired_figure(&paired),
    ));
    let each = |f: fn(&ColdEvents) -> &[f64]| {
        seen.iter()
            .map(|s| Summary::of(f(s)).map_or("n/a".into(), |s| fmt_ms(s.median)))
            .collect::<Vec<_>>()
            .join(" / ")
    };
    res.rows.push(Row::figure(
        &measure,
        "first create event after t0, median: raw (client connected) / berth (from spawn) / compose",
        each(|s| &s.first_create),
    ));
    res.rows.push(Row::figure(
        &measure,
        "per container, create event → start event, median: raw / berth / compose",
        each(|s| &s.create_to_start),
    ));
    let r = ratio(started, raw);
    res.targets.push(Target::new(
        &format!(
            "cold convergence, {} tasks: berth (last start) ≤ 1.0 × raw daemon",
            o.tasks
        ),
        r.map_or("n/a".into(), |r| format!("{r:.2}×")),
        r.map(|r| r <= 1.0),
    ));
    // Like with like: both to their last container's start. berth's exit
    // comes 2 s later by design (it checks that every container stayed up);
    // compose checks nothing after its last start.
    let rc = ratio(started, compose_last);
    res.targets.push(Target::new(
        "cold convergence: berth faster than docker-compose (last start)",
        rc.map_or("compose skipped".into(), |r| {
            format!(
                "berth {} vs compose {} ({r:.2}×)",
                fmt_ms(started.map_or(0.0, |s| s.median)),
                fmt_ms(compose_last.map_or(0.0, |s| s.median))
            )
        }),
        rc.map(|r| r < 1.0),
    ));
    res.notes.push(format!(
        "Cold convergence: wall time from spawning the command to its exit (raw: from the first \
         create to the last start returning), {} containers of the fixture image running \
         `sleep forever`, from none. Per round the three subjects run one after another, the \
         first rotating, each followed by its own clean-up (raw removal, `berth down`, \
         `docker-compose down -t 1`) and a 1 s settle. berth's \"last container started\" runs \
         from spawning `berth run --once` to the last `start` event (Docker's timestamp): process \
         start, manifest load, list, creates and starts; its \"process exit\" adds the honest \
         convergence check (every container stayed up for the 2 s settle time) and the exit. \
         Compose's \"last container started\" is taken the same way from its own events; the \
         berth-vs-compose target compares these two, since compose checks nothing after its last \
         start. The compose file is the equivalent of \
         the manifests (same image, command, env, `network_mode: bridge`). Paired by round: \
         berth's last start over raw's total in the same round (the two ran back to back), \
         their median and its 95 % interval from the order statistics (the sign test's, no \
         assumption about the spread); an interval holding 1.0 means this run cannot tell the \
         two apart. From Docker's `create` and `start` events of every subject: the first \
         create after t0 (raw's client is already connected; berth's and compose's include \
         their process start), and each container's create → start, the daemon's start plus \
         the subject's handoff between the two calls.",
        o.tasks
    ));
    Ok(())
}

/// What the in-process no-op passes measured.
pub(crate) struct NoopFigures {
    pub pass: Option<Summary>,
    pub calls: Vec<crate::counting::Calls>,
    pub list_alone: Option<Summary>,
}

/// `passes` in-process passes over a call-counting runtime on a converged
/// host (after one warm-up pass), and the list call alone as many times.
pub(crate) async fn noop_passes(host: &Host, passes: usize) -> Result<NoopFigures> {
    let docker = DockerRuntime::connect(&DockerConfig::default()).await?;
    let counting = Arc::new(CountingRuntime::new(docker));
    let config = AgentConfig {
        manifests: host.manifests(),
        namespace: host.namespace.clone(),
        ..AgentConfig::default()
    };
    let mut controller = Controller::new(Arc::clone(&counting), config);
    let first = controller.pass(&Trigger::Startup).await?;
    if !first.converged() || !first.errors.is_empty() {
        bail!(
            "the host is not converged before the no-op pass: {} actions, errors {:?}",
            first.plan.actions.len(),
            first.errors
        );
    }
    let mut times = Vec::new();
    let mut calls = Vec::new();
    for _ in 0..passes {
        let before = counting.calls();
        let t = Instant::now();
        let report = controller.pass(&Trigger::Resync).await?;
        times.push(ms(t.elapsed()));
        if !report.plan.actions.is_empty() {
            bail!("a no-op pass planned {} actions", report.plan.actions.len());
        }
        calls.push(counting.calls().since(&before));
    }
    let mut list_times = Vec::new();
    for _ in 0..passes {
        let t = Instant::now();
        counting.list(&host.namespace).await?;
        list_times.push(ms(t.elapsed()));
    }
    Ok(NoopFigures {
        pass: Summary::of(&times),
        calls,
        list_alone: Summary::of(&list_times),
    })
}

async fn noop(host: &Host, o: &Options, res: &mut Results) -> Result<()> {
    let NoopFigures {
        pass,
        calls: lists,
        list_alone: list,
    } = noop_passes(host, o.noop_passes).await?;
    let worst = lists
        .iter()
        .max_by_key(|c| c.total())
        .cloned()
        .unwrap_or_default();
    let measure = format!("no-op pass, {} converged tasks", o.tasks);
    res.rows
        .push(Row::timed(&measure, "berth pass (in-process)", pass));
    res.rows.push(Row::timed(
        &measure,
        "of which: Docker list call alone",
        list,
    ));
    let all_one_list = lists.iter().all(|c| c.list == 1);
    let mutations: u64 = lists.iter().map(|c| c.mutating()).sum();
    let other: u64 = lists
        .iter()
        .map(|c| c.inspect + c.image_present + c.version)
        .sum();
    res.rows.push(Row::figure(
        &measure,
        "Docker API calls per pass (max)",
        format!(
            "{} list, {} inspect, {} mutating, {} other",
            worst.list,
            worst.inspect,
            worst.mutating(),
            worst.image_present + worst.version
        ),
    ));

    // The same thing as a user sees it: a process that finds nothing to do.
    let (mut berth, mut compose) = (Vec::new(), Vec::new());
    for _ in 0..o.rounds {
        berth.push(ms(tokio::task::block_in_place(|| host.berth_once())?));
        if host.compose {
            compose.push(ms(tokio::task::block_in_place(|| host.compose_up())?));
        }
    }
    let (b, c) = (Summary::of(&berth), Summary::of(&compose));
    res.rows.push(
        Row::timed(&measure, "berth run --once (process)", b).with_ratio(ratio(b, c), "compose"),
    );
    res.rows
        .push(Row::timed(&measure, "docker-compose up -d (process)", c));

    res.targets.push(Target::new(
        "no-op pass: one list call, no mutation",
        format!(
            "every pass: list {}; {mutations} mutating and {other} other calls in {} passes",
            if all_one_list { "= 1" } else { "≠ 1" },
            o.noop_passes
        ),
        Some(all_one_list && mutations == 0 && other == 0),
    ));
    res.targets.push(Target::new(
        "no-op pass: ≤ 20 ms",
        pass.map_or("n/a".into(), |s| {
            format!("median {}, max {}", fmt_ms(s.median), fmt_ms(s.max))
        }),
        pass.map(|s| s.median <= 20.0),
    ));
    res.notes.push(format!(
        "No-op pass: `Controller::pass` in-process over a call-counting wrapper of berth's \
         `DockerRuntime`, {} passes after one warm-up pass, on {} running tasks berth created; \
         it loads the folder, lists, resolves, plans and applies nothing. The process rows run \
         `berth run --once` and `docker-compose up -d` on the same converged host.",
        o.noop_passes, o.tasks
    ));
    Ok(())
}

async fn update(host: &Host, o: &Options, res: &mut Results) -> Result<()> {
    let (mut berth, mut compose) = (Vec::new(), Vec::new());
    for round in 1..=o.rounds {
        let updates = o.updates;
        let version = move |i: usize| {
            if i < updates {
                round.to_string()
            } else {
                "0".into()
            }
        };
        host.write_manifests(o.tasks, &version)?;
        host.write_compose(o.tasks, &version)?;
        let run_berth = |berth: &mut Vec<f64>| -> Result<()> {
            berth.push(ms(tokio::task::block_in_place(|| host.berth_once())?));
            Ok(())
        };
        let run_compose = |compose: &mut Vec<f64>| -> Result<()> {
            if host.compose {
                compose.push(ms(tokio::task::block_in_place(|| host.compose_up())?));
            }
            Ok(())
        };
        if round % 2 == 1 {
            run_berth(&mut berth)?;
            settle().await;
            run_compose(&mut compose)?;
        } else {
            run_compose(&mut compose)?;
            settle().await;
            run_berth(&mut berth)?;
        }
        host.wait_running(&host.berth_label(), o.tasks, Duration::from_secs(10))
            .await?;
        settle().await;
    }
    let (b, c) = (Summary::of(&berth), Summary::of(&compose));
    let measure = format!("update {} of {} tasks (env change)", o.updates, o.tasks);
    res.rows
        .push(Row::timed(&measure, "berth run --once", b).with_ratio(ratio(b, c), "compose"));
    res.rows
        .push(Row::timed(&measure, "docker-compose up -d", c));
    res.notes.push(format!(
        "Update: {} tasks get a new `VERSION` env value each round, in the manifests and the \
         compose file alike; each tool replaces those containers (berth: stop, rename aside, \
         create, start, remove; compose: its recreate). The two alternate who goes first.",
        o.updates
    ));
    Ok(())
}

/// A Docker event of our namespace, as the reaction scenario needs it.
#[derive(Debug)]
pub(crate) struct Event {
    pub action: String,
    pub task: Option<String>,
    /// The container's id.
    pub id: String,
    pub time_ns: i64,
}

pub(crate) fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

/// Follow `start` and `die` events of berth's namespace from now on.
pub(crate) fn tap_events(host: &Host) -> mpsc::UnboundedReceiver<Event> {
    tap_actions(host, host.berth_label(), &["start", "die"])
}

/// `actions` events of the containers carrying `label`.
fn tap_actions(host: &Host, label: String, actions: &[&str]) -> mpsc::UnboundedReceiver<Event> {
    let (tx, rx) = mpsc::unbounded_channel();
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| format!("{}.{:09}", d.as_secs(), d.subsec_nanos()))
        .ok();
    let filters = HashMap::from([
        ("type".to_string(), vec!["container".to_string()]),
        (
            "event".to_string(),
            actions.iter().map(|a| a.to_string()).collect(),
        ),
        ("label".to_string(), vec![label]),
    ]);
    let mut stream = host.docker.events(Some(EventsOptions {
        since,
        filters: Some(filters),
        ..Default::default()
    }));
    tokio::spawn(async move {
        while let Some(Ok(msg)) = stream.next().await {
            let task = msg
                .actor
                .as_ref()
                .and_then(|a| a.attributes.as_ref())
                .and_then(|a| a.get("io.berth.task").cloned());
            let event = Event {
                action: msg.action.unwrap_or_default(),
                task,
                id: msg.actor.and_then(|a| a.id).unwrap_or_default(),
                time_ns: msg.time_nano.unwrap_or(0),
            };
            if tx.send(event).is_err() {
                return;
            }
        }
    });
    rx
}

/// How long a reaction may take before it counts as missed.
pub(crate) const REACTION_LIMIT: Duration = Duration::from_secs(20);

/// Wait for `task`'s next `start` after `after_ns`; returns (die, start)
/// times, or `None` when no start came within `deadline`.
pub(crate) async fn wait_start(
    events: &mut mpsc::UnboundedReceiver<Event>,
    task: &str,
    after_ns: i64,
    deadline: Duration,
) -> Result<Option<(Option<i64>, i64)>> {
    let end = Instant::now() + deadline;
    let mut die = None;
    loop {
        let left = end.saturating_duration_since(Instant::now());
        let Ok(event) = tokio::time::timeout(left, events.recv()).await else {
            eprintln!("  no start of {task} within {deadline:?}: counted as missed");
            return Ok(None);
        };
        let event = event.context("the Docker event stream ended")?;
        if event.task.as_deref() != Some(task) || event.time_ns < after_ns {
            continue;
        }
        match event.action.as_str() {
            "die" => die = Some(event.time_ns),
            "start" => return Ok(Some((die, event.time_ns))),
            _ => {}
        }
    }
}

/// The time (ms after `t0_ns`) of the last of `n` `start` events, or
/// `None` when fewer than `n` arrive within 5 s.
pub(crate) async fn last_start(
    events: &mut mpsc::UnboundedReceiver<Event>,
    t0_ns: i64,
    n: usize,
) -> Option<f64> {
    let end = Instant::now() + Duration::from_secs(5);
    let (mut seen, mut last) = (0usize, t0_ns);
    while seen < n {
        let left = end.saturating_duration_since(Instant::now());
        let event = tokio::time::timeout(left, events.recv()).await.ok()??;
        if event.action == "start" && event.time_ns >= t0_ns {
            seen += 1;
            last = last.max(event.time_ns);
        }
    }
    Some((last - t0_ns) as f64 / 1e6)
}

/// `create` and `start` events of the containers carrying `label`.
fn tap_cold(host: &Host, label: String) -> mpsc::UnboundedReceiver<Event> {
    tap_actions(host, label, &["create", "start"])
}

/// One subject's cold starts as Docker's events tell them (ms): when its
/// first container was created, and each container's create → start (the
/// daemon's start, plus the subject's own handoff between the two calls).
#[derive(Default)]
struct ColdEvents {
    first_create: Vec<f64>,
    create_to_start: Vec<f64>,
}

impl ColdEvents {
    /// Take one cold start's events, after `t0_ns`, until `n` starts; returns
    /// the last start (ms after `t0_ns`), or `None` when fewer than `n`
    /// arrive within 5 s.
    async fn add(
        &mut self,
        events: &mut mpsc::UnboundedReceiver<Event>,
        t0_ns: i64,
        n: usize,
    ) -> Option<f64> {
        let end = Instant::now() + Duration::from_secs(5);
        let mut created = HashMap::new();
        let (mut first, mut starts, mut last) = (None::<i64>, 0usize, t0_ns);
        while starts < n {
            let left = end.saturating_duration_since(Instant::now());
            let event = tokio::time::timeout(left, events.recv()).await.ok()??;
            if event.time_ns < t0_ns {
                continue;
            }
            match event.action.as_str() {
                "create" => {
                    first = Some(first.map_or(event.time_ns, |f| f.min(event.time_ns)));
                    created.insert(event.id, event.time_ns);
                }
                "start" => {
                    starts += 1;
                    last = last.max(event.time_ns);
                    if let Some(c) = created.get(&event.id) {
                        self.create_to_start.push((event.time_ns - c) as f64 / 1e6);
                    }
                }
                _ => {}
            }
        }
        if let Some(f) = first {
            self.first_create.push((f - t0_ns) as f64 / 1e6);
        }
        Some((last - t0_ns) as f64 / 1e6)
    }
}

/// What a series of `docker kill`s measured (ms).
pub(crate) struct Kills {
    /// kill → `start` event.
    pub total: Vec<f64>,
    /// `die` event → `start` event.
    pub after_die: Vec<f64>,
    /// Kills with no start within [`REACTION_LIMIT`].
    pub missed: usize,
}

/// `o.reactions` kills, of a different task each (so no backoff applies),
/// each timed to the container's next `start`, `pause` between them.
pub(crate) async fn timed_kills(
    host: &Host,
    tasks: &[String],
    events: &mut mpsc::UnboundedReceiver<Event>,
    pause: Duration,
) -> Result<Kills> {
    let mut kills = Kills {
        total: Vec::new(),
        after_die: Vec::new(),
        missed: 0,
    };
    for task in tasks {
        let name = format!("{}-{task}-0", host.namespace);
        let t0 = now_ns();
        host.docker.kill_container(&name, None).await?;
        match wait_start(events, task, t0, REACTION_LIMIT).await? {
            Some((die, start)) => {
                kills.total.push((start - t0) as f64 / 1e6);
                kills
                    .after_die
                    .push((start - die.unwrap_or(t0)) as f64 / 1e6);
            }
            None => kills.missed += 1,
        }
        tokio::time::sleep(pause).await;
    }
    Ok(kills)
}

/// Stop a child with SIGTERM (as a service manager would), SIGKILL after 10 s.
pub(crate) fn stop_child(child: &mut std::process::Child) -> Result<()> {
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let end = Instant::now() + Duration::from_secs(10);
    while Instant::now() < end {
        if child.try_wait()?.is_some() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.kill()?;
    child.wait()?;
    bail!("berth run did not stop within 10 s of SIGTERM")
}

/// What [`footprint`] measured.
pub(crate) struct Footprint {
    /// Max RSS of the 1 s samples, MiB.
    pub rss_mb: f64,
    /// CPU over the window, % of one core.
    pub cpu_pct: f64,
    pub wall: f64,
    /// The most CPU used within one 1 s sample, ms, and when (s into the
    /// window): says whether the figure is a steady cost or one burst.
    pub peak_ms: f64,
    pub peak_at: f64,
}

/// Idle footprint of the process `pid` over `idle`; RSS and CPU are sampled
/// each second.
pub(crate) async fn footprint(pid: u32, idle: Duration) -> Result<Footprint> {
    let ticks = procfs::clock_ticks();
    let cpu0 = procfs::cpu_ticks(pid)?;
    let t0 = Instant::now();
    let mut rss_max = procfs::rss_kib(pid)?;
    let (mut last, mut peak, mut peak_at) = (cpu0, 0, 0.0);
    while t0.elapsed() < idle {
        tokio::time::sleep(Duration::from_secs(1)).await;
        if !procfs::alive(pid) {
            bail!("berth run died while idle");
        }
        rss_max = rss_max.max(procfs::rss_kib(pid)?);
        let now = procfs::cpu_ticks(pid)?;
        if now - last > peak {
            (peak, peak_at) = (now - last, t0.elapsed().as_secs_f64());
        }
        last = now;
    }
    let cpu1 = procfs::cpu_ticks(pid)?;
    let wall = t0.elapsed().as_secs_f64();
    let tick_ms = 1000.0 / ticks as f64;
    Ok(Footprint {
        rss_mb: rss_max as f64 / 1024.0,
        cpu_pct: (cpu1 - cpu0) as f64 * tick_ms / 1000.0 / wall * 100.0,
        wall,
        peak_ms: peak as f64 * tick_ms,
        peak_at,
    })
}

/// `berth_passes_total` (every result) from the agent's /metrics.
fn passes_so_far(host: &Host) -> Option<u64> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(host.listen.as_str()).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        stream,
        "GET /metrics HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        host.listen
    )
    .ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).ok()?;
    Some(
        text.lines()
            .filter(|l| l.starts_with("berth_passes_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum(),
    )
}

/// Footprint and reaction share one `berth run` child process.
async fn agent(host: &Host, o: &Options, res: &mut Results, shared: &Shared) -> Result<()> {
    // Reset to the plain tasks, converged, before the agent starts.
    host.write_manifests(o.tasks, &|_| "0".into())?;
    tokio::task::block_in_place(|| host.berth_once())?;
    let mut ids_before = host.ids_with_label(&host.berth_label(), true).await?;
    ids_before.sort();

    let mut child = host.berth_agent()?;
    let outcome = agent_inner(host, o, res, shared, &mut child, &ids_before).await;
    let stopped = tokio::task::block_in_place(|| stop_child(&mut child));
    crate::engine::remove_busy(host, o).await?;
    outcome?;
    stopped
}

async fn agent_inner(
    host: &Host,
    o: &Options,
    res: &mut Results,
    shared: &Shared,
    child: &mut std::process::Child,
    ids_before: &[String],
) -> Result<()> {
    let pid = child.id();
    tokio::time::sleep(Duration::from_secs(3)).await;
    if let Some(status) = child.try_wait()? {
        bail!("berth run exited early ({status})");
    }
    let mut ids_after = host.ids_with_label(&host.berth_label(), true).await?;
    ids_after.sort();
    if ids_after != ids_before {
        bail!("starting berth run changed the converged containers (berth stopping stops nothing)");
    }

    // Footprint: idle, converged. The passes berth made meanwhile (from
    // its /metrics) say what the CPU figure paid for.
    let passes0 = passes_so_far(host);
    let Footprint {
        rss_mb,
        cpu_pct,
        wall,
        peak_ms,
        peak_at,
    } = footprint(pid, o.idle).await?;
    let passes = passes_so_far(host).zip(passes0).map(|(b, a)| b - a);
    let measure = format!("idle berth run, {} tasks, {:.0} s", o.tasks, wall);
    res.rows.push(Row::figure(
        &measure,
        "reconcile passes meanwhile (berth_passes_total)",
        passes.map_or("n/a".into(), |n| n.to_string()),
    ));
    res.rows.push(Row::figure(
        &measure,
        "RSS (VmRSS, max of 1 s samples)",
        format!("{rss_mb:.1} MiB"),
    ));
    res.rows.push(Row::figure(
        &measure,
        "CPU, % of one core",
        format!("{cpu_pct:.2} %"),
    ));
    res.rows.push(Row::figure(
        &measure,
        "CPU: most in one 1 s sample (when, s into the window)",
        format!("{peak_ms:.0} ms (at {peak_at:.0} s)"),
    ));
    res.targets.push(Target::new(
        &format!("footprint, {} tasks: RSS ≤ 15 MiB", o.tasks),
        format!("{rss_mb:.1} MiB"),
        Some(rss_mb <= 15.0),
    ));
    res.targets.push(Target::new(
        &format!("footprint, {} tasks: CPU ≤ 0.1 % of one core", o.tasks),
        format!("{cpu_pct:.2} %"),
        Some(cpu_pct <= 0.1),
    ));

    // Reaction. The daemon's own time is measured here too, one container
    // at a time like the reactions, beside the raw baseline's figures.
    let mut events = tap_events(host);
    tokio::time::sleep(Duration::from_millis(300)).await;
    // A different task each (a task killed again within 10 min of its last
    // crash is backed off, by design), as far as the tasks go.
    let victims: Vec<String> = (0..o.reactions).map(|k| task_name(k % o.tasks)).collect();
    let kills = timed_kills(host, &victims, &mut events, Duration::from_millis(500)).await?;
    let (kill_total, kill_after_die, kill_missed) = (kills.total, kills.after_die, kills.missed);
    let mut drop_missed = 0usize;
    let mut drops = Vec::new();
    let mut solo_create = Vec::new();
    let mut solo_start = Vec::new();
    for k in 0..o.reactions {
        let task = format!("r{k:02}");
        let t0 = now_ns();
        write_manifest(&host.manifests(), &task, &host.image, "0")?;
        match wait_start(&mut events, &task, t0, REACTION_LIMIT).await? {
            Some((_, start)) => drops.push((start - t0) as f64 / 1e6),
            None => drop_missed += 1,
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        // The daemon alone: one create+start, like the one berth just did.
        let raw = host.raw_up(1).await?;
        solo_create.extend(raw.create_ms);
        solo_start.extend(raw.start_ms);
        host.remove_labelled(&host.raw_label()).await?;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    for k in 0..o.reactions {
        let _ = std::fs::remove_file(host.manifests().join(format!("r{k:02}.yaml")));
    }
    // A missed kill is only caught by the 60 s resync.
    host.wait_running(&host.berth_label(), o.tasks, Duration::from_secs(90))
        .await?;

    let plus = |a: &[f64], b: &[f64]| -> Option<f64> {
        Some(Summary::of(a)?.median + Summary::of(b)?.median)
    };
    let daemon_solo = plus(&solo_create, &solo_start);
    let daemon_baseline = plus(&shared.raw_create, &shared.raw_start);
    let start_solo = Summary::of(&solo_start).map(|s| s.median);

    let (drop_s, kill_s, kill_die_s) = (
        Summary::of(&drops),
        Summary::of(&kill_total),
        Summary::of(&kill_after_die),
    );
    let m = "reaction";
    res.rows
        .push(Row::timed(m, "manifest write → container started", drop_s));
    res.rows.push(Row::timed(
        m,
        "docker kill → container started again",
        kill_s,
    ));
    res.rows.push(Row::timed(
        m,
        "  of which: die event → started again",
        kill_die_s,
    ));
    res.rows.push(Row::timed(
        m,
        "daemon alone: create+start, one at a time",
        Summary::of(
            &solo_create
                .iter()
                .zip(&solo_start)
                .map(|(c, s)| c + s)
                .collect::<Vec<_>>(),
        ),
    ));
    res.rows.push(Row::figure(
        m,
        "daemon alone: create / start medians; raw baseline (4 at a time)",
        format!(
            "{} / {}; {} / {}",
            Summary::of(&solo_create).map_or("n/a".into(), |s| fmt_ms(s.median)),
            Summary::of(&solo_start).map_or("n/a".into(), |s| fmt_ms(s.median)),
            Summary::of(&shared.raw_create).map_or("n/a".into(), |s| fmt_ms(s.median)),
            Summary::of(&shared.raw_start).map_or("n/a".into(), |s| fmt_ms(s.median)),
        ),
    ));
    let share = |total: Option<Summary>, daemon: Option<f64>| -> Option<(f64, f64)> {
        let t = total?;
        let d = daemon?;
        Some((t.median - d, t.max - d))
    };
    res.rows.push(Row::figure(
        m,
        &format!("missed: no start within {} s", REACTION_LIMIT.as_secs()),
        format!(
            "{drop_missed} of {n} drops, {kill_missed} of {n} kills",
            n = o.reactions
        ),
    ));
    let drop_share = share(drop_s, daemon_solo);
    let kill_share = share(kill_die_s, start_solo);
    for (what, s) in [
        ("berth's own share: manifest write", drop_share),
        ("berth's own share: kill (die → start)", kill_share),
    ] {
        res.rows.push(Row::figure(
            m,
            what,
            s.map_or("n/a".into(), |(med, worst)| {
                format!("median {}, worst {}", fmt_ms(med), fmt_ms(worst))
            }),
        ));
    }
    res.targets.push(Target::new(
        "reaction, manifest write: berth's own share ≤ 100 ms median",
        drop_share.map_or(format!("no reaction ({drop_missed} missed)"), |(m, w)| {
            format!(
                "{} median ({} worst), {drop_missed} missed",
                fmt_ms(m),
                fmt_ms(w)
            )
        }),
        drop_share.map(|(m, _)| m <= 100.0 && drop_missed == 0),
    ));
    res.targets.push(Target::new(
        "reaction, docker kill: berth's own share ≤ 300 ms median",
        kill_share.map_or(format!("no reaction ({kill_missed} missed)"), |(m, w)| {
            format!(
                "{} median ({} worst), {kill_missed} missed",
                fmt_ms(m),
                fmt_ms(w)
            )
        }),
        kill_share.map(|(m, _)| m <= 300.0 && kill_missed == 0),
    ));
    crate::engine::busy_kills(host, o, res, start_solo).await?;
    res.notes.push(format!(
        "Footprint: one `berth run` (release build, default flags, inotify) over {} converged \
         tasks, sampled after a 3 s settle; RSS is the max of VmRSS sampled each second; CPU is \
         (utime+stime) over the wall time from /proc/<pid>/stat.",
        o.tasks
    ));
    res.notes.push(format!(
        "Reaction: the same `berth run`. {n} kills (`docker kill` of a different task each, \
         so no backoff applies), then {n} drops of a new one-task manifest; each is timed from \
         just before the action to the container's `start` event (Docker's own timestamp) on \
         the event stream. berth's own share = reaction median − the daemon's time for the same \
         work, measured in the same run one container at a time between the drops: create+start \
         for a drop, start for a kill (timed from berth's trigger, the `die` event). The worst \
         case subtracts the same median. The raw baseline's per-container figures (taken 4 at a \
         time, so inflated by contention: {}) are shown for comparison, not subtracted. A \
         drop is seen when the file is closed after writing (inotify CLOSE_WRITE), without waiting out the 250 ms folder debounce.",
        daemon_baseline.map_or("n/a".into(), fmt_ms),
        n = o.reactions
    ));
    Ok(())
}

pub fn planner(res: &mut Results) {
    let mut per_task = HashMap::new();
    for world in [World::Converged, World::Diverged] {
        for n in [100usize, 1_000, 10_000] {
            let input = plan_scale::build(n, world);
            let mut times = Vec::new();
            for _ in 0..10 {
                let t = Instant::now();
                std::hint::black_box(input.plan());
                times.push(ms(t.elapsed()));
            }
            let s = Summary::of(&times);
            per_task.insert((world.name(), n), s.map(|s| s.median / n as f64));
            res.rows.push(Row::timed(
                &format!("plan(), {n} tasks"),
                &format!("{} observed state", world.name()),
                s,
            ));
            if n == 10_000 {
                res.targets.push(Target::new(
                    &format!("planner: 10,000 tasks ≤ 50 ms ({})", world.name()),
                    s.map_or("n/a".into(), |s| fmt_ms(s.median)),
                    s.map(|s| s.median <= 50.0),
                ));
            }
        }
        let growth = match (
            per_task.get(&(world.name(), 100)).copied().flatten(),
            per_task.get(&(world.name(), 10_000)).copied().flatten(),
        ) {
            (Some(a), Some(b)) if a > 0.0 => Some(b / a),
            _ => None,
        };
        res.targets.push(Target::new(
            &format!(
                "planner: growth linear ({}; per-task time at 10,000 ≤ 2 × at 100)",
                world.name()
            ),
            growth.map_or("n/a".into(), |g| format!("{g:.2}×")),
            growth.map(|g| g <= 2.0),
        ));
    }
    res.notes.push(
        "Planner: `plan()` alone on hand-built inputs (`bench/src/plan_scale.rs`), median of 10 \
         runs; converged = every task running with its spec hash (empty plan), diverged = every \
         task running with a stale hash (a replacement each). `cargo bench --bench plan` runs \
         the same inputs under criterion."
            .into(),
    );
}
