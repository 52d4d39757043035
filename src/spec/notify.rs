//! Where a job's notifications go: a webhook that receives a JSON POST when the job ends
//! and when its diagnosis changes.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::error::{SpecError, check};

/// Longest webhook URL accepted, in bytes.
pub const MAX_URL_LEN: usize = 2048;
/// Most entries of `on`: each kind once.
pub const MAX_ON: usize = 3;

/// What a webhook is told of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum NotifyOn {
    /// The job ended, however: succeeded, failed, diverged or cancelled.
    Finished,
    /// The job ended failed or diverged.
    Failed,
    /// The diagnosis status changed (healthy, warning, critical).
    Diagnosis,
}

/// A webhook for this job. The service's `--notify-url`, when set, receives every job's
/// notifications besides.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct NotifySpec {
    /// An `http` or `https` URL without credentials; none: only the service's
    /// `--notify-url`, if set, is told.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(max_length = 2048)]
    pub url: Option<String>,
    /// What this job's webhook is told of: `finished`, `failed`, `diagnosis`.
    #[schema(max_items = 3)]
    pub on: Vec<NotifyOn>,
}

impl Default for NotifySpec {
    fn default() -> Self {
        Self { url: None, on: vec![NotifyOn::Finished, NotifyOn::Diagnosis] }
    }
}

impl NotifySpec {
    /// Whether the webhook wants to hear of `kind`.
    pub fn wants(&self, kind: NotifyOn) -> bool {
        self.on.contains(&kind)
    }

    pub(crate) fn validate(&self) -> Result<(), SpecError> {
        check(self.on.len() <= MAX_ON, "notify.on", format!("at most {MAX_ON} entries"))?;
        for (i, kind) in self.on.iter().enumerate() {
            check(!self.on[..i].contains(kind), "notify.on", "each entry at most once")?;
        }
        if let Some(url) = &self.url {
            check_url(url).map_err(|message| SpecError::field("notify.url", message))?;
        }
        Ok(())
    }
}

/// Checks a webhook URL: `http` or `https`, a host, no credentials, at most
/// [`MAX_URL_LEN`] bytes. Returns the parsed URL, or what is wrong with it.
pub fn check_url(url: &str) -> Result<reqwest::Url, String> {
    if url.len() > MAX_URL_LEN {
        return Err(format!("at most {MAX_URL_LEN} bytes"));
    }
    let parsed = reqwest::Url::parse(url).map_err(|err| format!("not a URL: {err}"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err("must be an http or https URL".to_owned());
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err("must name a host".to_owned());
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err("must not hold credentials (put a secret in the path or query instead)".to_owned());
    }
    Ok(parsed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_http_and_https_urls_pass() {
        assert!(check_url("http://127.0.0.1:9/hook").is_ok());
        assert!(check_url("https://hooks.slack.com/services/T0/B0/x").is_ok());
        assert!(check_url("ftp://example.com/").is_err());
        assert!(check_url("file:///etc/passwd").is_err());
        assert!(check_url("https://user:pw@example.com/").is_err());
        assert!(check_url("not a url").is_err());
        assert!(check_url(&format!("https://example.com/{}", "a".repeat(MAX_URL_LEN))).is_err());
    }

    #[test]
    fn on_is_bounded_and_without_repeats() {
        let spec = NotifySpec { url: None, on: vec![NotifyOn::Failed, NotifyOn::Failed] };
        assert_eq!(spec.validate().unwrap_err(), SpecError::field("notify.on", "each entry at most once"));
        assert!(NotifySpec::default().validate().is_ok());
    }
}
