//! `berth down`: remove every container of the namespace.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::SystemTime;

use berth::runtime::ContainerRuntime;

use super::{connect, AgentFlags};

/// `down` is a plan over an empty desired set, applied: every instance's
/// removal at once, each with the grace recorded on its container.
pub async fn down(flags: AgentFlags, dry_run: bool, yes: bool) -> anyhow::Result<ExitCode> {
    use std::io::IsTerminal;
    let config = flags.load_host()?;
    let runtime = connect(&config).await?;
    let observed = runtime.list(&config.namespace).await?;
    let plan = berth::engine::plan::plan(
        &berth::desired::state::DesiredState::default(),
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
