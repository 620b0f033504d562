//! `berth validate`: every error in the given manifests.

use std::path::PathBuf;
use std::process::ExitCode;

use super::AgentFlags;

pub fn validate(flags: AgentFlags, paths: Vec<PathBuf>) -> anyhow::Result<ExitCode> {
    let config = flags.load()?;
    let ctx = config.validation_context();
    let paths = if paths.is_empty() {
        vec![config.manifests.clone()]
    } else {
        paths
    };
    let mut errors = berth::desired::folder::validate_paths(&paths, &ctx);
    // By file, then by position: the order an editor walks them in.
    errors.sort_by(|a, b| (&a.file, a.line, a.column).cmp(&(&b.file, b.line, b.column)));
    for e in &errors {
        println!("{e}");
    }
    Ok(if errors.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
