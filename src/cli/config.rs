//! `berth config`: the effective agent config, key by key, with where each
//! value came from. Values are settings and paths only: no file a key names
//! (a token, a key) is ever read for this.

use std::process::ExitCode;

use super::AgentFlags;

pub fn config(flags: AgentFlags) -> anyhow::Result<ExitCode> {
    let effective = flags.resolve(Some(std::path::Path::new(super::flags::HOST_CONFIG)))?;
    eprintln!("{}", effective.describe_source());
    let rows = effective.table();
    let width = |f: fn(&(String, String, String)) -> usize| rows.iter().map(f).max().unwrap_or(0);
    let (kw, vw) = (width(|r| r.0.len()), width(|r| r.1.len()));
    for (key, value, origin) in rows {
        println!("{key:kw$}  {value:vw$}  {origin}");
    }
    Ok(ExitCode::SUCCESS)
}
