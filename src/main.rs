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
        Command::Schema => {
            let schema = berth::manifest::manifest_schema();
            println!("{}", serde_json::to_string_pretty(&schema)?);
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn connect(config: &AgentConfig) -> anyhow::Result<Arc<DockerRuntime>> {
    let runtime = DockerRuntime::connect(&config.docker)
        .await
        .context("cannot set up the Docker client")?;
    Ok(Arc::new(runtime))
}

struct Hooks {
    flags: AgentFlags,
}

impl LoopHooks for Hooks {
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
    let mut controller = Controller::new(runtime, config);
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
    let mut hooks = Hooks { flags };
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
    let runtime = connect(&config).await?;
    let mut controller = Controller::new(runtime, config);
    let prepared = controller.prepare().await?;
    let plan = controller.plan(&prepared, SystemTime::now());
    if json {
        let view = berth::plan::PlanView::new(&plan, &prepared.errors);
        println!("{}", serde_json::to_string_pretty(&view)?);
    } else {
        for e in &prepared.errors {
            println!("error: {e}");
        }
        if plan.is_empty() {
            println!("nothing to do");
        } else {
            print!("{plan}");
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
    let runtime = connect(&config).await?;
    let containers = runtime.list(&config.namespace).await?;
    if json {
        let rows: Vec<_> = containers
            .iter()
            .map(|c| {
                serde_json::json!({
                    "name": c.name,
                    "id": c.id.chars().take(12).collect::<String>(),
                    "task": c.key().map(|k| k.task),
                    "index": c.key().map(|k| k.index),
                    "state": c.state,
                    "health": c.health,
                    "spec_hash": c.spec_hash(),
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        println!(
            "{:<24} {:<6} {:<10} {:<14} CONTAINER",
            "TASK", "INDEX", "STATE", "ID"
        );
        for c in &containers {
            let key = c.key();
            println!(
                "{:<24} {:<6} {:<10} {:<14} {}",
                key.as_ref().map_or("?", |k| k.task.as_str()),
                key.as_ref().map_or("?".into(), |k| k.index.to_string()),
                format!("{:?}", c.state).to_lowercase(),
                c.id.chars().take(12).collect::<String>(),
                c.name
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn down(flags: AgentFlags) -> anyhow::Result<ExitCode> {
    let config = flags.load()?;
    let runtime = connect(&config).await?;
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
