//! The `berth` command line: the flags, and one module per subcommand. It
//! only parses, wires and prints; every behaviour lives in the library.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};

use berth::config::AgentConfig;
use berth::faces::progress::PullBars;
use berth::logging::{LogFormat, LogLevel};
use berth::runtime::docker::DockerRuntime;

mod config;
mod down;
mod flags;
mod plan;
mod retry;
mod run;
mod status;
mod validate;

pub use flags::AgentFlags;

#[derive(Parser)]
#[command(
    name = "berth",
    version,
    about = "A reconciling controller for Docker: a folder of task manifests becomes exactly the containers it describes."
)]
pub struct Cli {
    /// Log format: human-readable text or JSON lines.
    #[arg(long, value_enum, default_value_t = LogFormat::Human, global = true, env = "BERTH_LOG_FORMAT")]
    pub log_format: LogFormat,
    /// Log level; RUST_LOG, when set, adds finer directives and wins where it says something (e.g. RUST_LOG=berth::engine=debug).
    #[arg(long, value_enum, default_value_t = LogLevel::Info, global = true, env = "BERTH_LOG_LEVEL")]
    pub log_level: LogLevel,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
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
        /// With a git source: plan a branch, tag or commit instead of the
        /// applied one (fetched, verified and checked out apart; e.g. a
        /// pull request's branch in CI).
        #[arg(long = "ref", value_name = "REF")]
        git_ref: Option<String>,
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
    /// Try a task's held updates again (an update that failed to replace its running container is held until the manifest changes or this).
    Retry {
        #[command(flatten)]
        agent: AgentFlags,
        /// The task whose updates to retry.
        task: String,
    },
    /// Print the effective agent config: every key, its value and where it came from (flag, BERTH_* variable, file or default).
    Config {
        #[command(flatten)]
        agent: AgentFlags,
    },
    /// Print the JSON Schema of a manifest.
    Schema,
    /// Print berth's man page (roff; e.g. `berth manpage > /usr/share/man/man1/berth.1`), or write every page with --dir.
    Manpage {
        /// Write berth.1 and one page per subcommand (berth-run.1, ...) into this folder.
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
    /// Print a shell completion script (e.g. `berth completions bash > /etc/bash_completion.d/berth`).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

/// The exit status of a command line clap refused: 64 (EX_USAGE) for a
/// usage error, so it is never taken for `plan`'s 2 ("changes pending");
/// 0 for `--help` and `--version`.
pub fn usage_error(e: clap::Error) -> ExitCode {
    let _ = e.print();
    if e.use_stderr() {
        ExitCode::from(USAGE)
    } else {
        ExitCode::SUCCESS
    }
}

/// EX_USAGE from sysexits.h.
pub const USAGE: u8 = 64;

/// Start logging. With human logs on a terminal, pulls are drawn as bars
/// and log lines go above them; the bars are returned for `run` to feed.
pub fn start_logging(args: &Cli) -> Option<PullBars> {
    let bars = match args.log_format {
        LogFormat::Human => PullBars::for_stderr(),
        LogFormat::Json => None,
    };
    match &bars {
        Some(bars) => berth::logging::init_with_writer(
            args.log_format,
            args.log_level,
            tracing_subscriber::fmt::writer::BoxMakeWriter::new(bars.log_writer()),
        ),
        None => berth::logging::init(args.log_format, args.log_level),
    }
    bars
}

pub async fn dispatch(command: Command, bars: Option<PullBars>) -> anyhow::Result<ExitCode> {
    match command {
        Command::Run {
            agent,
            once,
            once_timeout,
        } => run::run(agent, once, once_timeout.map(|d| d.get()), bars).await,
        Command::Validate { agent, paths } => validate::validate(agent, paths),
        Command::Plan {
            agent,
            json,
            git_ref,
        } => plan::plan(agent, json, git_ref).await,
        Command::Status { agent, json } => status::status(agent, json).await,
        Command::Down {
            agent,
            dry_run,
            yes,
        } => down::down(agent, dry_run, yes).await,
        Command::Retry { agent, task } => retry::retry(agent, task).await,
        Command::Config { agent } => config::config(agent),
        Command::Completions { shell } => {
            use clap::CommandFactory;
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "berth", &mut script);
            print_all(&script)
        }
        Command::Manpage { dir: Some(dir) } => {
            use clap::CommandFactory;
            clap_mangen::generate_to(Cli::command(), &dir)
                .with_context(|| format!("cannot write the man pages into {}", dir.display()))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Manpage { dir: None } => {
            use clap::CommandFactory;
            let mut page = Vec::new();
            clap_mangen::Man::new(Cli::command()).render(&mut page)?;
            print_all(&page)
        }
        Command::Schema => {
            let schema = berth::manifest::manifest_schema();
            let mut text = serde_json::to_string_pretty(&schema)?;
            text.push('\n');
            print_all(text.as_bytes())
        }
    }
}

/// Write `bytes` to stdout. A reader that stopped reading (`berth manpage
/// | head -1`) is not an error: it has what it wanted.
fn print_all(bytes: &[u8]) -> anyhow::Result<ExitCode> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(anyhow::Error::new(e).context("cannot write to stdout"))
        }
        _ => Ok(ExitCode::SUCCESS),
    }
}

/// Connect to Docker.
pub async fn connect(config: &AgentConfig) -> anyhow::Result<Arc<DockerRuntime>> {
    let runtime = DockerRuntime::connect(&config.docker)
        .await
        .context("cannot set up the Docker client")?;
    Ok(Arc::new(runtime))
}
