//! The `berth` command: parses flags, loads the agent config, wires parts.
//! Everything with behaviour lives in the library.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};

use berth::agent::{forward_sighup, run_loop, LoopHooks};
use berth::config::{AgentConfig, WatchMode};
use berth::controller::{run_once, Controller, ONCE_DEADLINE};
use berth::runtime::docker::DockerRuntime;
use berth::runtime::ContainerRuntime;
use berth::watch::Trigger;

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
    /// Stop and remove every container the namespace owns.
    Down {
        #[command(flatten)]
        agent: AgentFlags,
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
        Command::Down { agent } => down(agent).await,
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

/// Connect to Docker. `progress_bar`: draw pulls as bars on stderr when it
/// is a terminal (`run --once`); the daemon loop only logs them.
async fn connect(config: &AgentConfig, progress_bar: bool) -> anyhow::Result<Arc<DockerRuntime>> {
    use std::io::IsTerminal;
    let runtime = DockerRuntime::connect(&config.docker)
        .await
        .context("cannot set up the Docker client")?;
    Ok(Arc::new(runtime.with_progress_bar(
        progress_bar && std::io::stderr().is_terminal(),
    )))
}

struct Hooks {
    flags: AgentFlags,
    status: berth::controller::SharedStatus,
    /// READY=1 goes to systemd once, after the first completed pass.
    ready_sent: bool,
}

impl LoopHooks for Hooks {
    fn after_pass(&mut self, ok: bool) {
        use berth::notify::sd_notify;
        let mut message = String::new();
        if !self.ready_sent {
            message.push_str("READY=1\n");
        }
        // The watchdog is pinged from the loop itself, so a stuck pass is
        // noticed by systemd (WatchdogSec in berth.service).
        message.push_str("WATCHDOG=1\n");
        let status_line = if ok {
            self.status.lock().map_or_else(
                |_| "converging".to_string(),
                |s| {
                    format!(
                        "{} instances, {} manifest errors",
                        s.instances.len(),
                        s.manifest_errors.len()
                    )
                },
            )
        } else {
            "Docker is not reachable; retrying".to_string()
        };
        message.push_str(&format!("STATUS={status_line}\n"));
        match sd_notify(&message) {
            Ok(sent) => self.ready_sent |= sent,
            Err(e) => tracing::warn!("cannot notify systemd: {e}"),
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
    let runtime = connect(&config, once).await?;
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
    let resync = config.resync.get();
    let mut controller = Controller::new(runtime, config);
    let metrics = Arc::new(berth::metrics::Metrics::new());
    {
        let metrics = metrics.clone();
        controller.set_pass_observer(Box::new(move |elapsed, result| {
            metrics.observe_pass(elapsed, result)
        }));
    }
    if let Some(listener) = listener {
        if let Ok(addr) = listener.local_addr() {
            tracing::info!(%addr, "serving /healthz, /metrics and /v1/status");
        }
        berth::http::spawn(
            listener,
            berth::http::HttpState {
                status: controller.status(),
                metrics,
                resync,
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
        let converged = report.converged() && report.errors.is_empty();
        if !converged {
            for o in report.outcomes.iter().filter(|o| o.result.is_err()) {
                if let Err(e) = &o.result {
                    eprintln!("{} {}: {e}", o.verb, o.key);
                }
            }
            for w in &report.plan.waiting {
                eprintln!("{} is backing off", w.key);
            }
        }
        return Ok(if converged {
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
    run_loop(&mut controller, rx, &mut hooks).await;
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
    let runtime = connect(&config, false).await?;
    let mut controller = Controller::new(runtime, config);
    let prepared = controller.prepare().await?;
    let plan = controller.plan(&prepared, SystemTime::now());
    let changes = berth::applied::replace_changes(&plan, &prepared.observed);
    if json {
        let mut view = berth::plan::PlanView::new(&plan, &prepared.errors);
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
                    None if matches!(action, berth::plan::Action::Replace { .. }) => {
                        println!("    (the old container has no record of its applied spec; fields unknown)")
                    }
                    None => {}
                }
            }
            for w in &plan.waiting {
                println!("wait {} (backing off)", w.key);
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
async fn label_status(config: &AgentConfig) -> anyhow::Result<berth::controller::Status> {
    let runtime = connect(config, false).await?;
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
            berth::controller::InstanceStatus {
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
            }
        })
        .collect();
    instances.sort_by(|a, b| (&a.task, a.index).cmp(&(&b.task, b.index)));
    Ok(berth::controller::Status {
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

fn print_status(status: &berth::controller::Status) {
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
            i.state,
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

async fn down(flags: AgentFlags) -> anyhow::Result<ExitCode> {
    let config = flags.load()?;
    let runtime = connect(&config, false).await?;
    let containers = runtime.list(&config.namespace).await?;
    let mut failed = 0;
    for c in containers
        .iter()
        .filter(|c| c.namespace() == Some(config.namespace.as_str()))
    {
        let _ = runtime.stop(&c.id, Duration::from_secs(10)).await;
        match runtime.remove(&c.id).await {
            Ok(()) | Err(berth::runtime::RuntimeError::NotFound(_)) => {
                println!("removed {}", c.name)
            }
            Err(e) => {
                failed += 1;
                eprintln!("cannot remove {}: {e}", c.name);
            }
        }
    }
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
