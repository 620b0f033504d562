//! `berth status`: from the running berth, else from Docker's labels.

use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use berth::config::AgentConfig;
use berth::runtime::ContainerRuntime;

use super::{connect, AgentFlags};

pub async fn status(flags: AgentFlags, json: bool) -> anyhow::Result<ExitCode> {
    let config = flags.load_host()?;
    let addr = config.listen;
    let token = match &config.http.token_file {
        Some(path) => Some(berth::faces::http::read_token_file(path)?),
        None => None,
    };
    let status = match berth::faces::status_client::fetch_status(
        addr,
        Duration::from_secs(5),
        token.as_deref(),
    )
    .await
    {
        Ok(status) => status,
        Err(e) => {
            eprintln!("no berth answering on {addr} ({e}); showing what Docker's labels tell");
            label_status(&config).await?
        }
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        print!(
            "{}",
            berth::faces::render::status_table(&status, SystemTime::now())
        );
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
                held: None,
                removal_due: None,
                job: None,
                next_run: None,
                waiting: None,
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
