//! `berth run`: the agent, or with `--once` a single convergence.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use berth::agent::{forward_sighup, run_loop, run_once, shutdown_signal, LoopHooks, ONCE_DEADLINE};
use berth::config::AgentConfig;
use berth::engine::controller::Controller;
use berth::engine::trigger::Trigger;

use super::{connect, AgentFlags};

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
        match berth::agent::notify::sd_notify(&message) {
            Ok(sent) => self.ready_sent |= sent,
            Err(e) => tracing::warn!("cannot notify systemd: {e}"),
        }
    }

    /// The watchdog follows the loop's heartbeat, not pass completion: a
    /// long stop or pull in flight never gets berth killed by systemd.
    fn heartbeat(&mut self) {
        if let Err(e) = berth::agent::notify::sd_notify("WATCHDOG=1\n") {
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

pub async fn run(
    flags: AgentFlags,
    once: bool,
    once_timeout: Option<Duration>,
    bars: Option<berth::faces::progress::PullBars>,
) -> anyhow::Result<ExitCode> {
    flags.refuse_inherited_namespace()?;
    let config = flags.load()?;
    // One agent per namespace on this host: a second one would fight the
    // first over the containers.
    let _lock = berth::agent::lock::AgentLock::acquire(
        &config.run_dir,
        &config.namespace,
        &config.manifests,
    )?;
    let runtime = connect(&config).await?;
    tracing::info!(
        manifests = %config.manifests.display(),
        namespace = %config.namespace,
        "berth {} starting",
        env!("CARGO_PKG_VERSION")
    );
    // Connections and Docker calls must not compete for the default 1,024
    // file descriptors.
    match berth::faces::http::raise_open_files_limit() {
        Ok(Some(n)) => tracing::debug!(open_files = n, "open files limit"),
        Ok(None) => tracing::debug!("open files limit: unlimited"),
        Err(e) => tracing::debug!("cannot raise the open files limit: {e}"),
    }
    // Bind before anything else so a taken port fails the start, clearly.
    let (listener, token) = if once {
        (None, None)
    } else {
        let token = match &config.http.token_file {
            Some(path) => Some(berth::faces::http::BearerToken::read(path)?),
            None => {
                if !config.listen.ip().is_loopback() {
                    tracing::warn!(
                        listen = %config.listen,
                        "listening beyond loopback without http.token_file: anyone who reaches the port can read /v1/status and retry updates"
                    );
                }
                None
            }
        };
        (Some(berth::faces::http::bind(config.listen).await?), token)
    };
    // The git source's state folder is locked for this process: opened
    // before anything runs, so a second agent on it fails now, clearly.
    let source = match &config.source {
        Some(s) => Some((
            berth::source::GitSource::open(&config.state_dir, &s.git).await?,
            s.git.interval.get(),
        )),
        None => None,
    };
    // On a terminal each pull is a bar; otherwise long pulls are logged.
    let observer: Arc<dyn berth::engine::pulls::PullObserver> = match bars {
        Some(bars) => Arc::new(bars),
        None => Arc::new(berth::engine::pulls::LogPulls),
    };
    // Every digest of a secret value in a label is keyed with it: made once,
    // kept in state_dir.
    let digest_key = berth::desired::digest_key::DigestKey::load_or_create(&config.state_dir)?;
    let mut controller =
        Controller::with_parts(runtime, config, berth::clock::Clock::System, observer);
    controller.set_digest_key(Arc::new(digest_key));
    // A small queue: a pending trigger already means "look again".
    let (tx, rx) = tokio::sync::mpsc::channel::<Trigger>(4);
    let metrics = Arc::new(berth::faces::metrics::Metrics::new());
    controller.set_observer(metrics.clone());
    let source = match source {
        // `run --once` fetches once, then converges to what it has.
        Some((mut source, _)) if once => {
            let _ = source.sync().await;
            let (_keep, applied) = tokio::sync::watch::channel(source.current().cloned());
            controller.set_source(applied);
            controller
                .status()
                .update(|s| s.source = Some(source.status().clone()));
            None
        }
        Some((source, interval)) => {
            let handle =
                berth::agent::source::spawn(source, interval, controller.status(), tx.clone());
            controller.set_source(handle.applied());
            Some(handle)
        }
        None => None,
    };
    if let Some(listener) = listener {
        if let Ok(addr) = listener.local_addr() {
            tracing::info!(%addr, "serving /healthz, /metrics and /v1/status");
        }
        berth::faces::http::spawn(
            listener,
            berth::faces::http::HttpState {
                status: controller.status(),
                metrics,
                docker_down_limit: controller.config().docker_down_limit.get(),
                triggers: Some(tx.clone()),
                token,
                sync: source.as_ref().map(|s| s.requests()),
            },
            berth::faces::http::HttpLimits::new(controller.config().http.max_connections),
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

    forward_sighup(tx.clone());
    let config = controller.config().clone();
    // A git source's checkouts never change in place: its task triggers a
    // pass when it switches commits, so only a plain folder is watched.
    let _watcher = if source.is_some() {
        None
    } else {
        match berth::agent::watch::FolderWatcher::start(
            &config.manifests,
            berth::agent::watch::WatchOptions::new(
                config.watch,
                berth::agent::watch::DEFAULT_DEBOUNCE,
            ),
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
        }
    };
    let _events = berth::agent::events::follow(
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
