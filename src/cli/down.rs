//! `berth down`: remove every container of the namespace.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::SystemTime;

use berth::runtime::ContainerRuntime;

use super::{connect, AgentFlags};

/// `down` is a plan over an empty desired set, applied: every instance's
/// removal at once, each with the grace recorded on its container, except
/// that a container whose running dependents (its `io.berth.depends-on`
/// label says who) are also going waits for them: dependents stop first,
/// round after round.
pub async fn down(flags: AgentFlags, dry_run: bool, yes: bool) -> anyhow::Result<ExitCode> {
    use std::io::IsTerminal;
    flags.refuse_inherited_namespace()?;
    let config = flags.load_host()?;
    let runtime = connect(&config).await?;
    let plan_now = |observed: &[berth::runtime::ObservedContainer]| {
        berth::engine::plan::plan(
            &berth::desired::state::DesiredState::default(),
            observed,
            berth::engine::plan::Memory::of(&berth::engine::backoff::BackoffTable::new()),
            SystemTime::now(),
            &berth::engine::plan::PlanOptions::new(config.namespace.clone()),
        )
    };
    let observed = runtime.list(&config.namespace).await?;
    let mut plan = plan_now(&observed);
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
    for b in &plan.blocked {
        println!("then {b}");
    }
    if dry_run {
        return Ok(ExitCode::SUCCESS);
    }
    if !yes && std::io::stdin().is_terminal() {
        eprint!(
            "remove these {} containers of namespace {}? [y/N] ",
            plan.actions.len() + plan.blocked.len(),
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
        runtime.clone(),
        config.namespace.clone(),
        config.parallelism,
        pulls,
        berth::clock::Clock::System,
    );
    let mut failed = 0;
    // Each round removes what nothing running depends on any more; a
    // round that fails stops here rather than take a dependency from
    // under a dependent that is still running.
    loop {
        let outcomes = executor.apply(plan.actions).await;
        for o in &outcomes {
            match &o.result {
                Ok(()) => println!("removed {}", o.key.container_name(&config.namespace)),
                Err(e) => {
                    failed += 1;
                    eprintln!("cannot remove {}: {e}", o.key);
                }
            }
        }
        if failed > 0 || plan.blocked.is_empty() {
            break;
        }
        plan = plan_now(&runtime.list(&config.namespace).await?);
        if plan.actions.is_empty() {
            for b in &plan.blocked {
                eprintln!("cannot remove {b}");
                failed += 1;
            }
            break;
        }
    }
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
