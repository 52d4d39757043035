//! `gradscope healthcheck`: asks a running service's `/readyz`, for container health checks.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;

/// Asks `/readyz` of the service at `base_url`; success when it answers 2xx.
pub async fn check(base_url: &str) -> anyhow::Result<ExitCode> {
    let url = format!("{}/readyz", base_url.trim_end_matches('/'));
    let client = reqwest::Client::builder().timeout(Duration::from_secs(5)).build()?;
    let response = client.get(&url).send().await.with_context(|| format!("failed to reach {url}"))?;
    let status = response.status();
    let body = response.text().await.unwrap_or_default();
    println!("{status} {body}");
    Ok(if status.is_success() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}
