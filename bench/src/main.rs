//! `berth-bench`: berth against the raw Docker daemon and docker-compose,
//! measured side by side in one run.
//!
//! ```text
//! cargo run --release -p berth-bench -- [--quick] [--rounds N] [--tasks N] [--out FILE]
//! ```
//!
//! It builds the release `berth`, imports the fixture image, then measures:
//! cold convergence, the no-op pass, an update, reaction times, the idle
//! footprint and the planner at scale, prints a table and writes
//! `BENCHMARKS.md`. Everything it creates on the daemon is removed at the end.
//!
//! # Layout
//!
//! - [`host`]: the three subjects (berth, compose, raw daemon) and clean-up.
//! - [`scenarios`]: one function per figure of the first set (cold, no-op, update, footprint, reaction, planner).
//! - [`engine`]: the engine's figures: kills while slow work is in flight,
//!   `down` of slow stoppers, rollback of a failed update, scale.
//! - [`counting`]: a call-counting [`berth::runtime::ContainerRuntime`].
//! - [`plan_scale`]: hand-built planner inputs (shared with `benches/plan.rs`).
//! - [`gitops`]: push → container started from a git source, and a poll's
//!   idle cost (`--only gitops` alone).
//! - [`fixture_image`]: the workload image, made without a registry.
//! - [`procfs`], [`stats`], [`report`]: measuring, summarising, writing.

mod counting;
mod engine;
mod fixture_image;
mod gitops;
mod host;
mod plan_scale;
mod procfs;
mod report;
mod scenarios;
mod stats;

use std::path::PathBuf;
use std::process::{Command, ExitCode};
use std::time::Duration;

use anyhow::{bail, Context, Result};

/// What to run, from the flags.
#[derive(Debug, Clone)]
pub struct Options {
    pub quick: bool,
    pub rounds: usize,
    pub tasks: usize,
    pub out: PathBuf,
    /// Tasks changed by the update scenario.
    pub updates: usize,
    /// Manifest drops and kills in the reaction scenario (each).
    pub reactions: usize,
    /// Idle time of the footprint scenario.
    pub idle: Duration,
    /// In-process no-op passes.
    pub noop_passes: usize,
    /// Container operations at once (berth's default, and the raw baseline's).
    pub parallelism: usize,
    /// Only the planner (no Docker, no builds): for profiling `plan()`.
    pub planner_only: bool,
    /// Tasks of the scale scenario.
    pub scale_tasks: usize,
    /// Cold starts of the scale scenario, each a berth run and a raw run
    /// back to back (`--scale-rounds N`).
    pub scale_rounds: usize,
    /// Run only these scenarios (`--only a,b`); all when `None`.
    pub only: Option<Vec<String>>,
    /// Leave docker-compose out even when it is installed (`--no-compose`):
    /// many rounds of berth against raw take a third less time.
    pub no_compose: bool,
}

/// The scenarios, in the order they run.
pub const SCENARIOS: &[&str] = &[
    "cold", "noop", "update", "agent", "down", "rollback", "scale", "planner", "gitops",
];

impl Options {
    /// Whether scenario `name` is part of this run.
    pub fn runs(&self, name: &str) -> bool {
        self.only
            .as_ref()
            .is_none_or(|only| only.iter().any(|o| o == name))
    }
}

const USAGE: &str = "usage: berth-bench [--quick] [--rounds N] [--tasks N] [--scale-tasks N] [--scale-rounds N] \
     [--only cold,noop,update,agent,down,rollback,scale,planner,gitops] [--out FILE] [--no-compose] [--planner-only]";

fn parse_args(workspace: &std::path::Path) -> Result<Options> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let quick = args.iter().any(|a| a == "--quick");
    let mut o = Options {
        quick,
        rounds: if quick { 1 } else { 5 },
        tasks: if quick { 10 } else { 30 },
        out: workspace.join("BENCHMARKS.md"),
        updates: 0,
        reactions: if quick { 5 } else { 20 },
        idle: Duration::from_secs(if quick { 10 } else { 60 }),
        noop_passes: 20,
        parallelism: berth::config::AgentConfig::default().parallelism,
        planner_only: false,
        scale_tasks: if quick { 50 } else { 200 },
        scale_rounds: if quick { 1 } else { 2 },
        only: None,
        no_compose: false,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = |name: &str| {
            it.next()
                .with_context(|| format!("{name} needs a value\n{USAGE}"))
                .cloned()
        };
        match a.as_str() {
            "--quick" => {}
            "--planner-only" => o.planner_only = true,
            "--no-compose" => o.no_compose = true,
            "--rounds" => o.rounds = value("--rounds")?.parse()?,
            "--tasks" => o.tasks = value("--tasks")?.parse()?,
            "--out" => o.out = PathBuf::from(value("--out")?),
            "--scale-tasks" => o.scale_tasks = value("--scale-tasks")?.parse()?,
            "--scale-rounds" => o.scale_rounds = value("--scale-rounds")?.parse()?,
            "--only" => {
                let names: Vec<String> = value("--only")?
                    .split(',')
                    .map(|s| s.trim().to_string())
                    .collect();
                if let Some(bad) = names.iter().find(|n| !SCENARIOS.contains(&n.as_str())) {
                    bail!("unknown scenario {bad:?}; known: {}", SCENARIOS.join(","));
                }
                o.only = Some(names);
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?}\n{USAGE}"),
        }
    }
    if o.tasks == 0 || o.rounds == 0 || o.scale_rounds == 0 || o.tasks > 999 || o.scale_tasks > 999
    {
        bail!("--tasks and --scale-tasks must be 1..=999, --rounds and --scale-rounds at least 1");
    }
    // Update a third of the tasks (10 of 30), whatever the size.
    o.updates = (o.tasks / 3).max(1);
    Ok(o)
}

fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."))
}

fn build_berth(workspace: &std::path::Path) -> Result<PathBuf> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    eprintln!("building the release berth binary ...");
    let status = Command::new(cargo)
        .current_dir(workspace)
        .args(["build", "--release", "--quiet", "--bin", "berth"])
        .status()
        .context("running cargo build")?;
    if !status.success() {
        bail!("cargo build --release --bin berth failed");
    }
    // CARGO_TARGET_DIR may move the target dir; honour it like cargo does.
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace.join("target"));
    let target = if target.is_relative() {
        workspace.join(target)
    } else {
        target
    };
    Ok(target.join("release").join("berth"))
}

/// A loopback address with a port nobody listens on right now.
fn free_listen_addr() -> Result<String> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.to_string())
}

fn compose_present() -> bool {
    Command::new("docker-compose")
        .arg("version")
        .output()
        .is_ok_and(|o| o.status.success())
}

fn main() -> ExitCode {
    let workspace = workspace_root();
    let options = match parse_args(&workspace) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("berth-bench: {e:#}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("berth-bench: cannot start tokio: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run(workspace, options)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("berth-bench: {e:#}");
            ExitCode::from(1)
        }
    }
}

async fn run(workspace: PathBuf, options: Options) -> Result<()> {
    if options.planner_only {
        let mut results = scenarios::Results::default();
        scenarios::planner(&mut results);
        println!("{}", report::text_table(&results.rows, &results.targets));
        return Ok(());
    }
    let berth_bin = build_berth(&workspace)?;
    eprintln!("building and importing the fixture image ...");
    let image = fixture_image::ensure(&workspace)?;
    let compose = !options.no_compose && compose_present();
    if options.no_compose {
        eprintln!("--no-compose: the compose column is skipped");
    } else if !compose {
        eprintln!(
            "docker-compose not found: the compose column is skipped \
             (apt-get install -y docker-compose gives compose 1.29)"
        );
    }
    let docker = bollard::Docker::connect_with_local_defaults()
        .context("connecting to Docker")?
        .negotiate_version()
        .await
        .context("Docker does not answer")?;
    let tag = format!("{:x}", std::process::id());
    let host = host::Host {
        docker,
        image,
        berth_bin,
        namespace: format!("bench-{tag}"),
        compose_project: format!("bench{tag}c"),
        tag,
        parallelism: options.parallelism,
        listen: free_listen_addr()?,
        work: tempfile::Builder::new().prefix("berth-bench-").tempdir()?,
        compose,
    };
    eprintln!(
        "berth-bench: {} tasks, {} rounds{}; work dir {} (logs there)",
        options.tasks,
        options.rounds,
        if options.quick { ", quick" } else { "" },
        host.work.path().display()
    );
    let machine = report::Machine::detect(&workspace);
    let load_before = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();

    let result = match scenarios::all(&host, &options).await {
        Ok(mut results) if options.runs("gitops") => {
            eprintln!("[gitops] push → started from a 20-task repository, idle poll cost ...");
            gitops::gitops(&host, &options, &mut results)
                .await
                .map(|()| results)
        }
        other => other,
    };
    // Whatever happened, leave the daemon as we found it.
    if let Err(e) = host.remove_all().await {
        eprintln!("berth-bench: clean-up failed: {e:#}");
    }
    if result.is_err() {
        // Keep the logs for a post-mortem.
        let kept = host.work.keep();
        eprintln!("logs kept in {}", kept.display());
    }
    let results = result?;

    let load_after = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let settings = format!(
        "{} tasks, {} rounds, {} updated, {} drops and {} kills, {} s idle{}; load average \
         before {} / after {}",
        options.tasks,
        options.rounds,
        options.updates,
        options.reactions,
        options.reactions,
        options.idle.as_secs(),
        if options.quick { " (--quick)" } else { "" },
        load_before
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" "),
        load_after
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" "),
    );
    println!("\n{}", report::text_table(&results.rows, &results.targets));
    let md = report::markdown(
        &results.rows,
        &results.targets,
        &machine,
        &settings,
        &results.notes,
    );
    std::fs::write(&options.out, md)
        .with_context(|| format!("writing {}", options.out.display()))?;
    eprintln!("wrote {}", options.out.display());
    Ok(())
}
