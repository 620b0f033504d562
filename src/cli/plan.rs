//! `berth plan`: what a pass would do, without doing it. With `--ref`, what
//! a commit of the git source would do before it is merged: the commit is
//! fetched, verified as the agent would and checked out apart (the agent's
//! clone is shared, its applied commit untouched), then planned against the
//! containers that run.

use std::process::ExitCode;
use std::time::SystemTime;

use anyhow::Context;
use berth::engine::controller::Controller;
use berth::faces::render::{plan_text, PlanView};

use super::{connect, AgentFlags};

pub async fn plan(
    flags: AgentFlags,
    json: bool,
    git_ref: Option<String>,
) -> anyhow::Result<ExitCode> {
    let mut config = flags.load_host()?;
    // Kept until the plan is printed: the checkout is removed when dropped.
    let _checkout = match &git_ref {
        Some(git_ref) => {
            let source = config.source.as_ref().context(
                "--ref plans a commit of the git source, and none is configured: set source.git.url and source.git.ref (or --source-git-url and --source-git-ref)",
            )?;
            let checkout =
                berth::source::checkout_ref(&config.state_dir, &source.git, git_ref).await?;
            eprintln!("berth: planning {git_ref} at commit {}", checkout.commit());
            config.manifests = checkout.manifests().to_path_buf();
            Some(checkout)
        }
        None => None,
    };
    let runtime = connect(&config).await?;
    let mut controller = Controller::new(runtime, config);
    let prepared = controller.prepare().await?;
    let plan = controller.plan(&prepared, SystemTime::now());
    for note in &prepared.notes {
        eprintln!("berth: note: {note}");
    }
    if json {
        let view = PlanView::with_changes(&plan, &prepared.errors, &prepared.observed);
        println!("{}", serde_json::to_string_pretty(&view)?);
    } else {
        print!("{}", plan_text(&plan, &prepared.errors, &prepared.observed));
    }
    Ok(if !prepared.errors.is_empty() {
        ExitCode::from(1)
    } else if !berth::faces::render::has_changes(&plan) {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    })
}
