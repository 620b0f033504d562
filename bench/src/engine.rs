//! The engine's figures: nothing one instance does delays another (kills
//! while a slow replacement and a hanging pull are in flight), `down` of
//! containers that ignore SIGTERM, rollback of a failed update, and scale.
//! Each is measured beside the daemon doing the same work in the same run.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tokio::sync::mpsc;

use berth::faces::status_client::fetch_status;

use crate::host::{task_name, write_manifest, write_manifest_with, Host};
use crate::procfs;
use crate::report::{Row, Target};
use crate::scenarios::{
    footprint, last_start, now_ns, ratio, settle, stop_child, tap_events, timed_kills, Event,
    Results,
};
use crate::stats::{fmt_ms, ms, Summary};
use crate::Options;

/// A registry that accepts connections and never answers: a pull from it
/// hangs until the daemon gives up.
pub struct HangingRegistry {
    pub port: u16,
    stop: Arc<AtomicBool>,
}

impl HangingRegistry {
    pub fn start() -> Result<HangingRegistry> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let port = listener.local_addr()?.port();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        std::thread::spawn(move || {
            let mut held = Vec::new();
            while !flag.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => held.push(stream),
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        Ok(HangingRegistry { port, stop })
    }
}

impl Drop for HangingRegistry {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Wait until berth's `/v1/status` satisfies `ok`, polling every 100 ms.
async fn wait_status(
    host: &Host,
    what: &str,
    deadline: Duration,
    ok: impl Fn(&berth::engine::status::Status) -> bool,
) -> Result<()> {
    let addr: SocketAddr = host.listen.parse()?;
    let end = Instant::now() + deadline;
    loop {
        if let Ok(status) = fetch_status(addr, Duration::from_secs(2), None).await {
            if ok(&status) {
                return Ok(());
            }
        }
        if Instant::now() > end {
            bail!("berth's status never showed {what} within {deadline:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn step_of<'a>(status: &'a berth::engine::status::Status, task: &str) -> Option<&'a str> {
    status
        .instances
        .iter()
        .find(|i| i.task == task)?
        .work
        .as_ref()?
        .step
        .as_deref()
}

/// `slow` ignores SIGTERM with a 60 s grace; `hang` is a plain task.
const SLOW_GRACE: &str = "stop_timeout: 60s\n";

fn write_slow(host: &Host, version: &str) -> Result<()> {
    write_manifest_with(
        &host.manifests(),
        "slow",
        &host.image,
        &["sleep", "forever"],
        version,
        &format!("  FIXTURE_ON_TERM: ignore\n{SLOW_GRACE}"),
    )
}

/// Kills of plain tasks while `slow`'s replacement waits out its 60 s grace
/// and `hang`'s new image is pulled from a registry that never answers.
/// Runs inside the reaction scenario's `berth run` (over `o.tasks` tasks).
pub async fn busy_kills(
    host: &Host,
    o: &Options,
    res: &mut Results,
    start_solo: Option<f64>,
) -> Result<()> {
    let registry = HangingRegistry::start()?;
    write_slow(host, "1")?;
    write_manifest_with(
        &host.manifests(),
        "hang",
        &host.image,
        &["sleep", "forever"],
        "1",
        "stop_timeout: 1s\n",
    )?;
    // Tasks of their own for the kills: the reaction's victims were killed
    // moments ago, and a second crash within `restart.reset_after` (10 min)
    // is backed off by design, which is not what this measures.
    let victims: Vec<String> = (0..o.reactions).map(|k| format!("b{k:02}")).collect();
    for task in &victims {
        write_manifest(&host.manifests(), task, &host.image, "0")?;
    }
    host.wait_running(
        &host.berth_label(),
        o.tasks + 2 + victims.len(),
        Duration::from_secs(60),
    )
    .await?;
    // The slow replacement and the hanging pull start now.
    write_slow(host, "2")?;
    write_manifest_with(
        &host.manifests(),
        "hang",
        &format!("127.0.0.1:{}/hang:1", registry.port),
        &["sleep", "forever"],
        "2",
        "stop_timeout: 1s\n",
    )?;
    wait_status(
        host,
        "slow stopping and hang pulling",
        Duration::from_secs(20),
        |s| step_of(s, "slow").is_some() && step_of(s, "hang") == Some("pulling"),
    )
    .await?;

    let mut events = tap_events(host);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let kills = timed_kills(host, &victims, &mut events, Duration::from_millis(300)).await?;
    let (total, after_die, missed) = (kills.total, kills.after_die, kills.missed);
    // Both were still in flight at the end: the kills really ran beside them.
    let addr: SocketAddr = host.listen.parse()?;
    let status = fetch_status(addr, Duration::from_secs(2), None).await?;
    let still = format!(
        "slow: {}, hang: {}",
        step_of(&status, "slow").unwrap_or("done"),
        step_of(&status, "hang").unwrap_or("done")
    );
    drop(registry);

    let (t, d) = (Summary::of(&total), Summary::of(&after_die));
    let m = "busy reaction (slow 60 s stop + hanging pull in flight)";
    res.rows
        .push(Row::timed(m, "docker kill → container started again", t));
    res.rows
        .push(Row::timed(m, "  of which: die event → started again", d));
    res.rows.push(Row::figure(
        m,
        "in flight after the last kill; missed",
        format!("{still}; {missed} of {} kills", o.reactions),
    ));
    if let (Some(d), Some(start)) = (d, start_solo) {
        res.rows.push(Row::figure(
            m,
            "berth's own share (die → start minus the daemon's start)",
            format!(
                "median {}, worst {}",
                fmt_ms(d.median - start),
                fmt_ms(d.max - start)
            ),
        ));
    }
    res.targets.push(Target::new(
        "busy kill → running: median ≤ 600 ms, worst ≤ 1 s, 0 missed",
        t.map_or(format!("no reaction ({missed} missed)"), |t| {
            format!(
                "median {}, worst {}, {missed} missed of {}",
                fmt_ms(t.median),
                fmt_ms(t.max),
                o.reactions
            )
        }),
        t.map(|t| t.median <= 600.0 && t.max <= 1000.0 && missed == 0),
    ));
    res.notes.push(format!(
        "Busy reaction: in the same `berth run`, task `slow` (ignores SIGTERM, `stop_timeout: \
         60s`) gets an env change, so its replacement waits out the grace, and task `hang` gets \
         an image from a registry on 127.0.0.1 that accepts connections and never answers; once \
         `/v1/status` shows both in flight, {} kills of plain tasks are timed like the reaction \
         kills, each of a task of its own that was never killed before (a second crash within \
         `restart.reset_after`, 10 min, is backed off by design). The row \"in flight after the last kill\" is read from `/v1/status` after them.",
        o.reactions
    ));
    Ok(())
}

/// The slow and hanging tasks of [`busy_kills`], gone: files and containers
/// (forced; their graces would make `berth down` wait a minute).
pub async fn remove_busy(host: &Host, o: &Options) -> Result<()> {
    let victims = (0..o.reactions).map(|k| format!("b{k:02}"));
    for task in ["slow".to_string(), "hang".to_string()]
        .into_iter()
        .chain(victims)
    {
        let _ = std::fs::remove_file(host.manifests().join(format!("{task}.yaml")));
        let ids = ids_of_task(host, &task).await?;
        for id in ids {
            let _ = host
                .docker
                .remove_container(
                    &id,
                    Some(bollard::query_parameters::RemoveContainerOptions {
                        force: true,
                        v: true,
                        ..Default::default()
                    }),
                )
                .await;
        }
    }
    Ok(())
}

async fn ids_of_task(host: &Host, task: &str) -> Result<Vec<String>> {
    let filters = HashMap::from([(
        "label".to_string(),
        vec![host.berth_label(), format!("io.berth.task={task}")],
    )]);
    let list = host
        .docker
        .list_containers(Some(bollard::query_parameters::ListContainersOptions {
            all: true,
            filters: Some(filters),
            ..Default::default()
        }))
        .await?;
    Ok(list.into_iter().filter_map(|c| c.id).collect())
}

/// Start from an empty manifest folder.
fn clear_manifests(host: &Host) -> Result<()> {
    let dir = host.manifests();
    std::fs::create_dir_all(&dir)?;
    for entry in std::fs::read_dir(&dir)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "yaml") {
            std::fs::remove_file(path)?;
        }
    }
    Ok(())
}

const DOWN_GRACE_S: u64 = 2;

/// `berth down` of `o.tasks` containers that ignore SIGTERM with
/// `stop_timeout: 2s`, beside the daemon's forced removal of as many and
/// `docker-compose down -t 2`.
pub async fn down_slow(host: &Host, o: &Options, res: &mut Results) -> Result<()> {
    let rounds = o.rounds.min(3);
    let (mut berth, mut raw, mut compose) = (Vec::new(), Vec::new(), Vec::new());
    let extra = format!("  FIXTURE_ON_TERM: ignore\nstop_timeout: {DOWN_GRACE_S}s\n");
    for round in 0..rounds {
        clear_manifests(host)?;
        for i in 0..o.tasks {
            write_manifest_with(
                &host.manifests(),
                &task_name(i),
                &host.image,
                &["sleep", "forever"],
                "0",
                &extra,
            )?;
        }
        tokio::task::block_in_place(|| host.berth_once())?;
        host.wait_running(&host.berth_label(), o.tasks, Duration::from_secs(30))
            .await?;
        let t = Instant::now();
        tokio::task::block_in_place(|| host.berth_down())?;
        berth.push(ms(t.elapsed()));
        host.wait_gone(&host.berth_label(), Duration::from_secs(60))
            .await?;
        settle().await;

        host.raw_up_env(o.tasks, &["FIXTURE_ON_TERM=ignore".into()])
            .await?;
        let t = Instant::now();
        host.remove_labelled(&host.raw_label()).await?;
        raw.push(ms(t.elapsed()));
        host.wait_gone(&host.raw_label(), Duration::from_secs(60))
            .await?;
        settle().await;

        if host.compose {
            write_slow_compose(host, o.tasks)?;
            tokio::task::block_in_place(|| host.compose_up())?;
            host.wait_running(&host.compose_label(), o.tasks, Duration::from_secs(30))
                .await?;
            let t = Instant::now();
            tokio::task::block_in_place(|| host.compose_down_grace(DOWN_GRACE_S))?;
            compose.push(ms(t.elapsed()));
            host.wait_gone(&host.compose_label(), Duration::from_secs(60))
                .await?;
            settle().await;
        }
        eprintln!("  down round {}: done", round + 1);
    }
    clear_manifests(host)?;
    let (b, r, c) = (
        Summary::of(&berth),
        Summary::of(&raw),
        Summary::of(&compose),
    );
    let m = format!(
        "down of {} containers that ignore SIGTERM, stop_timeout {DOWN_GRACE_S} s",
        o.tasks
    );
    res.rows
        .push(Row::timed(&m, "raw daemon: forced removal, 4 at a time", r));
    res.rows
        .push(Row::timed(&m, "berth down", b).with_ratio(ratio(b, c), "compose"));
    res.rows.push(Row::timed(&m, "docker-compose down -t 2", c));
    let limit = r.map(|r| 3.0 * DOWN_GRACE_S as f64 * 1000.0 + r.median);
    res.targets.push(Target::new(
        "down: ≤ 3 × the grace + the raw removal time",
        match (b, limit) {
            (Some(b), Some(l)) => format!("{} (limit {})", fmt_ms(b.median), fmt_ms(l)),
            _ => "n/a".into(),
        },
        b.zip(limit).map(|(b, l)| b.median <= l),
    ));
    res.notes.push(format!(
        "Down: {n} tasks of the fixture with `FIXTURE_ON_TERM=ignore` (SIGTERM ignored, so each \
         stop waits out the grace and ends in SIGKILL) and `stop_timeout: {DOWN_GRACE_S}s`; \
         `berth down` is timed from spawn to exit. The raw row force-removes {n} such containers \
         (no grace at all), the compose row runs `docker-compose down -t {DOWN_GRACE_S}` on the \
         equivalent project. {rounds} rounds.",
        n = o.tasks
    ));
    Ok(())
}

fn write_slow_compose(host: &Host, n: usize) -> Result<()> {
    let mut out = String::from("version: \"2.4\"\nservices:\n");
    for i in 0..n {
        out.push_str(&format!(
            "  {}:\n    image: {}\n    command: [\"sleep\", \"forever\"]\n    network_mode: bridge\n    environment:\n      VERSION: \"0\"\n      FIXTURE_ON_TERM: ignore\n",
            task_name(i),
            host.image,
        ));
    }
    std::fs::write(host.compose_file(), out)?;
    Ok(())
}

/// Follow events until `id`'s next `start` after `after_ns`.
async fn wait_start_of(
    events: &mut mpsc::UnboundedReceiver<Event>,
    id: &str,
    after_ns: i64,
    deadline: Duration,
) -> Result<Option<i64>> {
    let end = Instant::now() + deadline;
    loop {
        let left = end.saturating_duration_since(Instant::now());
        let Ok(event) = tokio::time::timeout(left, events.recv()).await else {
            return Ok(None);
        };
        let event = event.context("the Docker event stream ended")?;
        if event.id == id && event.action == "start" && event.time_ns >= after_ns {
            return Ok(Some(event.time_ns));
        }
    }
}

/// A failed update rolled back: the new container (`exit 1` after 1 s)
/// dies, and berth runs the old one again under the canonical name. Timed
/// from the new container's `die` to the old one's `start`, beside the
/// daemon's start of a stopped container.
pub async fn rollback(host: &Host, o: &Options, res: &mut Results) -> Result<()> {
    clear_manifests(host)?;
    let update = "update:\n  min_healthy: 3s\n  deadline: 30s\n";
    write_manifest_with(
        &host.manifests(),
        "rb",
        &host.image,
        &["sleep", "forever"],
        "good",
        update,
    )?;
    let mut child = host.berth_agent()?;
    let outcome = rollback_inner(host, o, res, update).await;
    let stopped = tokio::task::block_in_place(|| stop_child(&mut child));
    clear_manifests(host)?;
    tokio::task::block_in_place(|| host.berth_down())?;
    outcome?;
    stopped
}

async fn rollback_inner(host: &Host, o: &Options, res: &mut Results, update: &str) -> Result<()> {
    host.wait_running(&host.berth_label(), 1, Duration::from_secs(30))
        .await?;
    let rounds = o.rounds.max(3);
    let (mut back, mut solo, mut missed) = (Vec::new(), Vec::new(), 0usize);
    let mut events = tap_events(host);
    for round in 0..rounds {
        let old = host.ids_with_label(&host.berth_label(), true).await?;
        let [old] = old.as_slice() else {
            bail!("expected one running container before round {round}, found {old:?}");
        };
        // The old spec must have passed its gate (it is the last healthy one).
        wait_status(host, "rb settled", Duration::from_secs(30), |s| {
            s.instances
                .iter()
                .any(|i| i.task == "rb" && i.work.is_none() && i.state == "running")
        })
        .await?;
        let t0 = now_ns();
        write_manifest_with(
            &host.manifests(),
            "rb",
            &host.image,
            &["exit", "1", "--after", "1000"],
            &format!("bad{round}"),
            update,
        )?;
        // The new container's death, then the old one's start.
        let end = Instant::now() + Duration::from_secs(40);
        let mut died = None;
        while died.is_none() && Instant::now() < end {
            let left = end.saturating_duration_since(Instant::now());
            let Ok(Some(event)) = tokio::time::timeout(left, events.recv()).await else {
                break;
            };
            if event.action == "die" && event.id != *old && event.time_ns >= t0 {
                died = Some(event.time_ns);
            }
        }
        let Some(died) = died else {
            missed += 1;
            continue;
        };
        match wait_start_of(&mut events, old, died, Duration::from_secs(30)).await? {
            Some(start) => back.push((start - died) as f64 / 1e6),
            None => missed += 1,
        }
        host.wait_running(&host.berth_label(), 1, Duration::from_secs(30))
            .await?;
        // The daemon alone: start of a stopped container, like the rollback's.
        let raw = host.raw_up(1).await?;
        solo.extend(raw.start_ms);
        host.remove_labelled(&host.raw_label()).await?;
        // Back to the good spec for the next round (a changed manifest re-arms).
        write_manifest_with(
            &host.manifests(),
            "rb",
            &host.image,
            &["sleep", "forever"],
            &format!("good{round}"),
            update,
        )?;
        let before = host.ids_with_label(&host.berth_label(), true).await?;
        let end = Instant::now() + Duration::from_secs(30);
        loop {
            let now = host.ids_with_label(&host.berth_label(), true).await?;
            if now.len() == 1 && now != before {
                break;
            }
            if Instant::now() > end {
                bail!("the good spec good{round} did not replace the rolled-back container");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        eprintln!("  rollback round {}: done", round + 1);
    }
    let (b, s) = (Summary::of(&back), Summary::of(&solo));
    let m = "rollback of a failed update (new container exits 1 after 1 s)";
    res.rows.push(
        Row::timed(m, "berth: new container's die → old one started", b)
            .with_ratio(ratio(b, s), "plain start"),
    );
    res.rows.push(Row::timed(
        m,
        "daemon alone: start of a created container",
        s,
    ));
    res.rows.push(Row::figure(
        m,
        "missed (no rollback within 30 s)",
        format!("{missed} of {rounds}"),
    ));
    res.targets.push(Target::new(
        "rollback: die → old running ≤ 1 s + the daemon's start",
        match (b, s) {
            (Some(b), Some(s)) => format!(
                "{} median, {} worst (daemon start {})",
                fmt_ms(b.median),
                fmt_ms(b.max),
                fmt_ms(s.median)
            ),
            _ => format!("n/a ({missed} missed)"),
        },
        b.zip(s)
            .map(|(b, s)| b.median <= 1000.0 + s.median && missed == 0),
    ));
    res.notes.push(format!(
        "Rollback: one task with `update: {{min_healthy: 3s, deadline: 30s}}` under `berth run`; \
         each of {rounds} rounds writes a spec whose process exits 1 after 1 s, and times the \
         new container's `die` event to the old container's `start` event (Docker's \
         timestamps); then a good spec is written again so the next round starts from a \
         healthy one. The daemon row starts a freshly created container in the same round."
    ));
    Ok(())
}

/// 200 tasks: cold convergence beside the raw daemon, the in-process no-op
/// pass, and the idle footprint of `berth run`.
pub async fn scale(host: &Host, o: &Options, res: &mut Results) -> Result<()> {
    let n = o.scale_tasks;
    clear_manifests(host)?;
    host.write_manifests(n, &|_| "0".into())?;

    // The daemon's own pace drifts by several percent from one minute to
    // the next (background clean-up of the containers just removed, page
    // cache): each round runs berth and raw back to back, the first
    // alternating (berth–raw–raw–berth for the default two), so drift is
    // shared; the figures are the means, and each round's ratio is kept for
    // the paired median. The last run is berth's, whose containers stay up
    // for the no-op pass and idle run.
    let rounds = o.scale_rounds;
    let order: Vec<bool> = (0..rounds)
        .flat_map(|i| {
            if (rounds - 1 - i) % 2 == 0 {
                [false, true]
            } else {
                [true, false]
            }
        })
        .collect();
    let (mut raws, mut starts, mut exits) = (Vec::new(), Vec::new(), Vec::new());
    let (mut raw_cpu, mut berth_cpu) = (Vec::new(), Vec::new());
    let tick_s = 1.0 / procfs::clock_ticks() as f64;
    for (k, &is_berth) in order.iter().enumerate() {
        if is_berth {
            let mut events = tap_events(host);
            tokio::time::sleep(Duration::from_millis(200)).await;
            let t0 = now_ns();
            let busy0 = procfs::machine_busy_ticks()?;
            exits.push(ms(tokio::task::block_in_place(|| host.berth_once())?));
            berth_cpu.push((procfs::machine_busy_ticks()? - busy0) as f64 * tick_s);
            host.wait_running(&host.berth_label(), n, Duration::from_secs(60))
                .await?;
            starts.push(last_start(&mut events, t0, n).await);
            if k + 1 < order.len() {
                tokio::task::block_in_place(|| host.berth_down())?;
                host.wait_gone(&host.berth_label(), Duration::from_secs(120))
                    .await?;
                settle().await;
            }
        } else {
            let busy0 = procfs::machine_busy_ticks()?;
            raws.push(ms(host.raw_up(n).await?.total));
            raw_cpu.push((procfs::machine_busy_ticks()? - busy0) as f64 * tick_s);
            host.wait_running(&host.raw_label(), n, Duration::from_secs(60))
                .await?;
            host.remove_labelled(&host.raw_label()).await?;
            host.wait_gone(&host.raw_label(), Duration::from_secs(120))
                .await?;
            settle().await;
        }
    }
    let paired: Vec<f64> = starts
        .iter()
        .zip(&raws)
        .filter_map(|(s, r)| s.map(|s| s / r))
        .collect();
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    let each = |v: &[f64]| v.iter().map(|x| fmt_ms(*x)).collect::<Vec<_>>().join(", ");
    let started: Option<Vec<f64>> = starts.into_iter().collect();

    let m = format!("scale: {n} tasks");
    let raw_ms = mean(&raws);
    res.rows.push(Row::figure(
        &m,
        &format!(
            "cold, raw daemon API, {} at a time (mean of: each)",
            o.parallelism
        ),
        format!("{} ({})", fmt_ms(raw_ms), each(&raws)),
    ));
    let started = started.map(|v| (mean(&v), v));
    let cold_ratio = started.as_ref().map(|(s, _)| s / raw_ms);
    res.rows.push(Row::figure(
        &m,
        "cold, berth run --once: last container started (mean of: each)",
        started.as_ref().map_or("n/a".into(), |(s, v)| {
            format!("{} ({:.2}× raw; {})", fmt_ms(*s), s / raw_ms, each(v))
        }),
    ));
    res.rows.push(Row::figure(
        &m,
        "cold, berth / raw, paired by round: median (95 % interval of the median)",
        crate::stats::paired_figure(&paired),
    ));
    res.rows.push(Row::figure(
        &m,
        "cold, berth run --once: process exit (mean)",
        fmt_ms(mean(&exits)),
    ));
    let each_s = |v: &[f64]| {
        v.iter()
            .map(|x| format!("{x:.1} s"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    res.rows.push(Row::figure(
        &m,
        "cold, machine CPU busy: raw daemon API (mean of: each)",
        format!("{:.1} s ({})", mean(&raw_cpu), each_s(&raw_cpu)),
    ));
    res.rows.push(Row::figure(
        &m,
        "cold, machine CPU busy: berth run --once to exit (mean of: each)",
        format!(
            "{:.1} s ({:.2}× raw; {})",
            mean(&berth_cpu),
            mean(&berth_cpu) / mean(&raw_cpu).max(f64::MIN_POSITIVE),
            each_s(&berth_cpu)
        ),
    ));
    res.targets.push(Target::new(
        &format!("scale: {n} tasks cold (last start) ≤ 1.0 × raw"),
        cold_ratio.map_or("n/a".into(), |r| format!("{r:.2}×")),
        cold_ratio.map(|r| r <= 1.0),
    ));

    let noop = crate::scenarios::noop_passes(host, 10).await?;
    let (pass, lists) = (noop.pass, noop.calls);
    res.rows
        .push(Row::timed(&m, "no-op pass (in-process)", pass));
    res.rows.push(Row::figure(
        &m,
        "no-op pass: list calls per pass",
        format!("{:?}", lists.iter().map(|c| c.list).collect::<Vec<_>>()),
    ));
    res.targets.push(Target::new(
        &format!("scale: {n} tasks no-op pass ≤ 50 ms, one list call"),
        pass.map_or("n/a".into(), |p| fmt_ms(p.median)),
        pass.map(|p| p.median <= 50.0 && lists.iter().all(|c| c.list == 1 && c.total() == 1)),
    ));

    let mut child = host.berth_agent()?;
    let idle_for = o.idle.min(Duration::from_secs(20));
    let measured = async {
        tokio::time::sleep(Duration::from_secs(3)).await;
        footprint(child.id(), idle_for).await
    }
    .await;
    let stopped = tokio::task::block_in_place(|| stop_child(&mut child));
    let idle = measured?;
    stopped?;
    let rss = idle.rss_mb;
    res.rows.push(Row::figure(
        &m,
        &format!("idle berth run, {:.0} s: RSS / CPU", idle.wall),
        format!("{rss:.1} MiB / {:.2} %", idle.cpu_pct),
    ));
    res.targets.push(Target::new(
        &format!("scale: {n} tasks idle RSS ≤ 25 MiB"),
        format!("{rss:.1} MiB"),
        Some(rss <= 25.0),
    ));

    let t = Instant::now();
    tokio::task::block_in_place(|| host.berth_down())?;
    res.rows.push(Row::figure(
        &m,
        "berth down (plain tasks, exit on SIGTERM)",
        fmt_ms(ms(t.elapsed())),
    ));
    host.wait_gone(&host.berth_label(), Duration::from_secs(120))
        .await?;
    clear_manifests(host)?;
    res.notes.push(format!(
        "Scale: {n} one-container tasks. Cold: the raw daemon's create+start {} at a time, \
         and `berth run --once` (last `start` event and process exit), each removed again \
         before the next; {} rounds of the two back to back, the first alternating and the \
         last run berth's (two: berth, raw, raw, berth; one, raw then berth, with --quick), \
         each round's berth / raw paired as in the cold scenario. Machine CPU busy: every core's non-idle time from \
         /proc/stat over each subject's window (raw: first create to last start returned; \
         berth: spawn to exit); then 10 \
         in-process no-op passes over a call-counting runtime, then `berth run` idle for {} s \
         after a 3 s settle, then `berth down`.",
        o.parallelism,
        o.scale_rounds,
        idle_for.as_secs()
    ));
    Ok(())
}
