//! `berth retry TASK`: ask the running berth to try a held update again.

use std::process::ExitCode;
use std::time::Duration;

use super::AgentFlags;

pub async fn retry(flags: AgentFlags, task: String) -> anyhow::Result<ExitCode> {
    let config = flags.load_host()?;
    let addr = config.listen;
    let path = format!("/v1/retry/{task}");
    let token = match &config.http.token_file {
        Some(path) => Some(berth::faces::http::read_token_file(path)?),
        None => None,
    };
    match berth::faces::status_client::post(addr, &path, Duration::from_secs(5), token.as_deref())
        .await
    {
        Ok((202, body)) => {
            println!("{body}");
            Ok(ExitCode::SUCCESS)
        }
        Ok((code, body)) => {
            eprintln!("berth on {addr} answered {code}: {body}");
            Ok(ExitCode::from(1))
        }
        Err(e) => {
            eprintln!(
                "no berth answering on {addr} ({e}); a held update is only held by a running berth"
            );
            Ok(ExitCode::from(1))
        }
    }
}
