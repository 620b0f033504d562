//! The `berth` command: parses flags, loads the agent config, wires parts.
//! Everything with behaviour lives in the library.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};

use berth::agent::{forward_sighup, run_loop, run_once, shutdown_signal, LoopHooks, ONCE_DEADLINE};
use berth::config::{AgentConfig, WatchMode};
use berth::engine::controller::Controller;
use berth::runtime::docker::DockerRuntime;
use berth::runtime::ContainerRuntime;
use berth::trigger::Trigger;

#[derive(Parser)]
#[command(
    name = "berth",
    version,
    about = "A reconciling controller for Docker: a folder of task manifests becomes exactly the containers it describes."
)]
struct Cli {
    /// Log format: human-readable text or JSON lines. Level from RUST_LOG.
    #[arg(long, value_enum, default_value_t = LogFormat::Human, global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Human,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Converge the host to the manifest folder, and keep it converged.
    Run {
        #[command(flatten)]
        agent: AgentFlags,
        /// One full pass (pull, create, wait for starts), then exit: 0 when converged.
        #[arg(long)]
        once: bool,
        /// With --once: give up after this long (e.g. 60s).
        #[arg(long, value_name = "DURATION")]
        once_timeout: Option<berth::manifest::duration::Duration>,
    },
    /// Check manifests: exit 0 when valid, 1 when not (errors as file:line:column: message).
    Validate {
        #[command(flatten)]
        agent: AgentFlags,
        /// Files or folders; default: the manifest folder.
        paths: Vec<PathBuf>,
    },
    /// Show what a pass would do: exit 0 nothing to do, 2 changes pending, 1 error.
    Plan {
        #[command(flatten)]
        agent: AgentFlags,
        #[arg(long)]
        json: bool,
    },
    /// Show tasks, containers, restarts and errors.
    Status {
        #[command(flatten)]
        agent: AgentFlags,
        #[arg(long)]
        json: bool,
    },
    /// Stop and remove every container the namespace owns, each with its task's stop grace, all at once.
    Down {
        #[command(flatten)]
        agent: AgentFlags,
        /// Show what would be removed, and change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Do not ask for confirmation (it is asked only when stdin is a terminal).
        #[arg(long, short = 'y')]
        yes: bool,
    },
    /// Print the JSON Schema of a manifest.
    Schema,
    /// Print a shell completion script (e.g. `berth completions bash > /etc/bash_completion.d/berth`).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

/// Agent keys as flags; each overrides the config file.
#[derive(Args, Clone, Default)]
struct AgentFlags {
    /// Agent config file (YAML).
    #[arg(long, value_name = "FILE", env = "BERTH_CONFIG")]
    config: Option<PathBuf>,
    #[arg(long, value_name = "DIR")]
    manifests: Option<PathBuf>,
    #[arg(long, value_name = "NS")]
    namespace: Option<String>,
    #[arg(long, value_name = "ADDR")]
    listen: Option<SocketAddr>,
    #[arg(long, value_name = "DURATION")]
    resync: Option<berth::manifest::duration::Duration>,
    #[arg(long, value_name = "N")]
    parallelism: Option<usize>,
    #[arg(long, value_enum)]
    watch: Option<WatchMode>,
    /// Docker endpoint (unix://, tcp://); default DOCKER_HOST, else the local socket.
    #[arg(long, value_name = "URL")]
    docker_endpoint: Option<String>,
    /// /healthz turns 503 once Docker has been unreachable this long [default: 60s].
    #[arg(long, value_name = "DURATION")]
    docker_down_limit: Option<berth::manifest::duration::Duration>,
}

impl AgentFlags {
    fn load(&self) -> anyhow::Result<AgentConfig> {
        let mut config = match &self.config {
            Some(path) => AgentConfig::load(path)?,
            None => AgentConfig::default(),
        };
        if self.config.is_none() && self.manifests.is_none() {
            // Without a config file, the folder berth is run from is the
            // friendliest default for trying it out.
            config.manifests = PathBuf::from("manifests");
        }
        if let Some(v) = &self.manifests {
            config.manifests = v.clone();
        }
        if let Some(v) = &self.namespace {
            config.namespace = v.clone();
        }
        if let Some(v) = self.listen {
            config.listen = v;
        }
        if let Some(v) = self.resync {
            config.resync = v;
        }
        if let Some(v) = self.parallelism {
            config.parallelism = v;
        }
        if let Some(v) = self.watch {
            config.watch = v;
        }
        if let Some(v) = &self.docker_endpoint {
            config.docker.endpoint = Some(v.clone());
        }
        if let Some(v) = self.docker_down_limit {
            config.docker_down_limit = v;
        }
        config.check()?;
        Ok(config)
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // bollard logs whole request bodies at debug (a create body holds secret
    // env values): never below info, whatever RUST_LOG says.
    let filter = ["bollard=info", "bollard::docker=info"]
        .iter()
        .filter_map(|d| d.parse().ok())
        .fold(filter, |f, d| f.add_directive(d));
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("berth: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(dispatch(cli.command)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("berth: {e:#}");
            ExitCode::from(1)
        }
    }
}

async fn dispatch(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Run {
            agent,
            once,
            once_timeout,
        } => run(agent, once, once_timeout.map(|d| d.get())).await,
        Command::Validate { agent, paths } => validate(agent, paths),
        Command::Plan { agent, json } => plan(agent, json).await,
        Command::Status { agent, json } => status(agent, json).await,
        Command::Down {
            agent,
            dry_run,
            yes,
        } => down(agent, dry_run, yes).await,
        Command::Completions { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(shell, &mut Cli::command(), "berth", &mut std::io::stdout());
            Ok(ExitCode::SUCCESS)
        }
        Command::Schema => {
            let schema = berth::manifest::manifest_schema();
            println!("{}", serde_json::to_string_pretty(&schema)?);
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Connect to Docker.
async fn connect(config: &AgentConfig) -> anyhow::Result<Arc<DockerRuntime>> {
    let runtime = DockerRuntime::connect(&config.docker)
        .await
        .context("cannot set up the Docker client")?;
    Ok(Arc::new(runtime))
}

struct Hooks {
    flags: AgentFlags,
    status: berth::engine::status::SharedStatus,
    /// READY=1 goes to systemd once, after the first completed pass.
    ready_sent: bool,
}

impl LoopHooks for Hooks {
    fn after_pass(&mut self, ok: bool) {
        let mut message = String::new();
        if !self.ready_sent {
            message.push_str("READY=1\n");
        }
        let status_line = if ok {
            let s = self.status.view(SystemTime::now());
            format!(
                "{} instances, {} manifest errors",
                s.instances.len(),
                s.manifest_errors.len()
            )
        } else {
            "Docker is not reachable; retrying".to_string()
        };
        message.push_str(&format!("STATUS={status_line}\n"));
        match berth::notify::sd_notify(&message) {
            Ok(sent) => self.ready_sent |= sent,
            Err(e) => tracing::warn!("cannot notify systemd: {e}"),
        }
    }

    /// The watchdog follows the loop's heartbeat, not pass completion: a
    /// long stop or pull in flight never gets berth killed by systemd.
    fn heartbeat(&mut self) {
        if let Err(e) = berth::notify::sd_notify("WATCHDOG=1\n") {
            tracing::warn!("cannot notify systemd: {e}");
        }
    }

    fn reload_config(&mut self) -> Option<AgentConfig> {
        match self.flags.load() {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::error!("reload failed, keeping the current config: {e:#}");
                None
            }
        }
    }
}

async fn run(
    flags: AgentFlags,
    once: bool,
    once_timeout: Option<Duration>,
) -> anyhow::Result<ExitCode> {
    let config = flags.load()?;
    let runtime = connect(&config).await?;
    tracing::info!(
        manifests = %config.manifests.display(),
        namespace = %config.namespace,
        "berth {} starting",
        env!("CARGO_PKG_VERSION")
    );
    // Bind before anything else so a taken port fails the start, clearly.
    let listener = if once {
        None
    } else {
        Some(berth::http::bind(config.listen).await?)
    };
    let mut controller = Controller::new(runtime, config);
    let metrics = Arc::new(berth::metrics::Metrics::new());
    controller.set_observer(metrics.clone());
    if let Some(listener) = listener {
        if let Ok(addr) = listener.local_addr() {
            tracing::info!(%addr, "serving /healthz, /metrics and /v1/status");
        }
        berth::http::spawn(
            listener,
            berth::http::HttpState {
                status: controller.status(),
                metrics,
                docker_down_limit: controller.config().docker_down_limit.get(),
            },
        );
    }
    match controller.refresh_docker_version().await {
        Ok(v) => tracing::info!(driver.docker.version = %v, "connected to Docker"),
        Err(e) => tracing::warn!("Docker is not reachable yet ({e}); will keep trying"),
    }

    if once {
        let report = run_once(&mut controller, once_timeout.unwrap_or(ONCE_DEADLINE)).await?;
        for e in &report.errors {
            eprintln!("{e}");
        }
        for p in &report.problems {
            eprintln!("{p}");
        }
        return Ok(if report.converged {
            eprintln!("converged");
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        });
    }

    // A small queue: a pending trigger already means "look again".
    let (tx, rx) = tokio::sync::mpsc::channel::<Trigger>(4);
    forward_sighup(tx.clone());
    let config = controller.config().clone();
    let _watcher = match berth::watch::FolderWatcher::start(
        &config.manifests,
        berth::watch::WatchOptions::new(config.watch, berth::watch::DEFAULT_DEBOUNCE),
        tx.clone(),
    ) {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::warn!(
                "cannot watch {}: {e}; relying on the {} resync",
                config.manifests.display(),
                config.resync
            );
            None
        }
    };
    let _events = berth::events::follow(
        controller.runtime().as_ref().clone(),
        config.namespace.clone(),
        tx.clone(),
    );
    let mut hooks = Hooks {
        flags,
        status: controller.status(),
        ready_sent: false,
    };
    run_loop(&mut controller, rx, &mut hooks, shutdown_signal()).await;
    drop(tx);
    Ok(ExitCode::SUCCESS)
}

fn validate(flags: AgentFlags, paths: Vec<PathBuf>) -> anyhow::Result<ExitCode> {
    let config = flags.load()?;
    let ctx = berth::manifest::validate::ValidationContext {
        allow_privileged: config.docker.privileged.enabled,
        allow_host_volumes: config.docker.volumes.enabled,
        meta: config.meta.clone(),
    };
    let paths = if paths.is_empty() {
        vec![config.manifests.clone()]
    } else {
        paths
    };
    let errors = berth::desired::validate_paths(&paths, &ctx);
    for e in &errors {
        println!("{e}");
    }
    Ok(if errors.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

async fn plan(flags: AgentFlags, json: bool) -> anyhow::Result<ExitCode> {
    let config = flags.load()?;
    let runtime = connect(&config).await?;
    let mut controller = Controller::new(runtime, config);
    let prepared = controller.prepare().await?;
    let plan = controller.plan(&prepared, SystemTime::now());
    let changes = berth::applied::replace_changes(&plan, &prepared.observed);
    if json {
        let mut view = berth::engine::plan::PlanView::new(&plan, &prepared.errors);
        for (action, changes) in view.actions.iter_mut().zip(changes) {
            action.changes = changes;
        }
        println!("{}", serde_json::to_string_pretty(&view)?);
    } else {
        for e in &prepared.errors {
            println!("error: {e}");
        }
        if plan.is_empty() {
            println!("nothing to do");
        } else {
            for (action, changes) in plan.actions.iter().zip(&changes) {
                println!("{action}");
                match changes {
                    Some(fields) => {
                        for field in fields {
                            println!("    {field}");
                        }
                    }
                    None if matches!(action, berth::engine::plan::Action::Replace { .. }) => {
                        println!("    (the old container has no record of its applied spec; fields unknown)")
                    }
                    None => {}
                }
            }
            for w in &plan.waiting {
                println!("wait {} (backing off)", w.key);
            }
            for w in &plan.settling {
                println!("settle {} (started, not yet settled)", w.key);
            }
        }
    }
    Ok(if !prepared.errors.is_empty() {
        ExitCode::from(1)
    } else if plan.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    })
}

async fn status(flags: AgentFlags, json: bool) -> anyhow::Result<ExitCode> {
    let config = flags.load()?;
    let addr = config.listen;
    let status = match berth::status_client::fetch_status(addr, Duration::from_secs(5)).await {
        Ok(status) => status,
        Err(e) => {
            tracing::debug!("{e}");
            eprintln!("no berth answering on {addr}; showing what Docker's labels tell");
            label_status(&config).await?
        }
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        print_status(&status);
    }
    Ok(ExitCode::SUCCESS)
}

/// The status Docker's labels alone give: no restarts, backoff or errors.
async fn label_status(config: &AgentConfig) -> anyhow::Result<berth::engine::status::Status> {
    let runtime = connect(config).await?;
    let containers = runtime.list(&config.namespace).await?;
    let now = SystemTime::now();
    let secs = |t: SystemTime| {
        t.duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    };
    let mut instances: Vec<_> = containers
        .iter()
        .map(|c| {
            let key = c.key();
            let started = c.started_at.filter(|_| c.is_running());
            berth::engine::status::InstanceStatus {
                task: key.as_ref().map_or_else(|| "?".into(), |k| k.task.clone()),
                index: key.as_ref().map_or(0, |k| k.index),
                desired_hash: None,
                container: Some(c.name.clone()),
                container_id: Some(c.id.chars().take(12).collect()),
                state: format!("{:?}", c.state).to_lowercase(),
                started_at: started.map(secs),
                uptime_secs: started
                    .and_then(|t| now.duration_since(t).ok())
                    .map(|d| d.as_secs()),
                restarts: 0,
                backoff_until: None,
                last_error: None,
                work: None,
            }
        })
        .collect();
    instances.sort_by(|a, b| (&a.task, a.index).cmp(&(&b.task, b.index)));
    Ok(berth::engine::status::Status {
        berth_version: env!("CARGO_PKG_VERSION").into(),
        namespace: config.namespace.clone(),
        docker_version: runtime.version().await.ok(),
        instances,
        ..Default::default()
    })
}

fn human_duration(secs: u64) -> String {
    match secs {
        s if s >= 86400 => format!("{}d{}h", s / 86400, (s % 86400) / 3600),
        s if s >= 3600 => format!("{}h{}m", s / 3600, (s % 3600) / 60),
        s if s >= 60 => format!("{}m{}s", s / 60, s % 60),
        s => format!("{s}s"),
    }
}

fn print_status(status: &berth::engine::status::Status) {
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    println!(
        "{:<20} {:<5} {:<9} {:<12} {:<8} {:<8} {:<10} LAST ERROR",
        "TASK", "INDEX", "STATE", "CONTAINER", "UPTIME", "RESTARTS", "NEXT RETRY"
    );
    for i in &status.instances {
        println!(
            "{:<20} {:<5} {:<9} {:<12} {:<8} {:<8} {:<10} {}",
            i.task,
            i.index,
            i.work
                .as_ref()
                .map_or_else(|| i.state.clone(), |w| w.describe()),
            i.container_id.as_deref().unwrap_or("-"),
            i.uptime_secs.map_or_else(|| "-".into(), human_duration),
            i.restarts,
            i.backoff_until.map_or_else(
                || "-".into(),
                |t| format!("in {}", human_duration(t.saturating_sub(now)))
            ),
            i.last_error.as_deref().unwrap_or("-"),
        );
    }
    if !status.manifest_errors.is_empty() {
        println!();
        println!("MANIFEST ERRORS");
        for e in &status.manifest_errors {
            println!("{e}");
        }
    }
    if let Some(e) = &status.docker_error {
        println!();
        println!("docker: {e}");
    }
}

/// `down` is a plan over an empty desired set, applied: every instance's
/// removal at once, each with the grace recorded on its container.
async fn down(flags: AgentFlags, dry_run: bool, yes: bool) -> anyhow::Result<ExitCode> {
    use std::io::IsTerminal;
    let config = flags.load()?;
    let runtime = connect(&config).await?;
    let observed = runtime.list(&config.namespace).await?;
    let plan = berth::engine::plan::plan(
        &berth::engine::plan::DesiredState::default(),
        &observed,
        berth::engine::plan::Memory::of(&berth::engine::backoff::BackoffTable::new()),
        SystemTime::now(),
        &berth::engine::plan::PlanOptions::new(config.namespace.clone()),
    );
    for name in &plan.unrecognised {
        eprintln!("leaving {name} alone: it carries the namespace label but no task/index labels");
    }
    if plan.actions.is_empty() {
        println!("nothing to remove in namespace {}", config.namespace);
        return Ok(ExitCode::SUCCESS);
    }
    for action in &plan.actions {
        println!("{action}");
    }
    if dry_run {
        return Ok(ExitCode::SUCCESS);
    }
    if !yes && std::io::stdin().is_terminal() {
        eprint!(
            "remove these {} containers of namespace {}? [y/N] ",
            plan.actions.len(),
            config.namespace
        );
        let mut answer = String::new();
        std::io::stdin().read_line(&mut answer)?;
        if !matches!(answer.trim(), "y" | "Y" | "yes") {
            eprintln!("nothing removed");
            return Ok(ExitCode::from(1));
        }
    }
    let pulls = berth::engine::pulls::Pulls::new(1, Arc::new(berth::engine::pulls::LogPulls));
    let executor = berth::engine::apply::Executor::new(
        runtime,
        config.namespace.clone(),
        config.parallelism,
        pulls,
        berth::clock::Clock::System,
    );
    let outcomes = executor.apply(plan.actions).await;
    let mut failed = 0;
    for o in &outcomes {
        match &o.result {
            Ok(()) => println!("removed {}", o.key.container_name(&config.namespace)),
            Err(e) => {
                failed += 1;
                eprintln!("cannot remove {}: {e}", o.key);
            }
        }
    }
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
