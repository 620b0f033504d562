//! `berth plan`: what a pass would do, without doing it.

use std::process::ExitCode;
use std::time::SystemTime;

use berth::engine::controller::Controller;
use berth::faces::render::{plan_text, PlanView};

use super::{connect, AgentFlags};

pub async fn plan(flags: AgentFlags, json: bool) -> anyhow::Result<ExitCode> {
    let config = flags.load_host()?;
    let runtime = connect(&config).await?;
    let mut controller = Controller::new(runtime, config);
    let prepared = controller.prepare().await?;
    let plan = controller.plan(&prepared, SystemTime::now());
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
