//! Webhook notifications: a JSON POST, Slack-compatible (`text`) with the structured event
//! beside it, when a job ends and when its diagnosis changes.
//!
//! The runner hands a notification over with [`Notifier::job_ended`] or
//! [`Notifier::diagnosis_changed`], which never wait: each goes into a bounded queue, or is
//! dropped and counted when the queue is full. One task takes them from the queue and
//! delivers each on a task of its own (at most [`MAX_IN_FLIGHT`] at once), with a timeout
//! per try and retries with exponential backoff. Delivery never touches the job: a
//! receiver that is down costs the job nothing, and its failure is counted in
//! `gradscope_notifications_total{outcome="failed"}`.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::{Semaphore, mpsc};

use crate::metrics::{Metrics, NotificationOutcome};
use crate::spec::{NotifyOn, NotifySpec};
use crate::store::{Job, JobStatus};
use crate::train::diagnose::Diagnosis;
use crate::vocab::DiagnosisStatus;

/// Notifications waiting for delivery; past this they are dropped and counted.
pub const QUEUE_CAPACITY: usize = 256;
/// Deliveries under way at once.
pub const MAX_IN_FLIGHT: usize = 16;
/// Default time one try may take, connecting included.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
/// Default wait before the first retry; each further retry waits twice as long.
pub const DEFAULT_RETRY_BASE: Duration = Duration::from_secs(1);
/// Tries per notification: the first and three retries (after 1 s, 2 s and 4 s by default).
pub const TRIES: u32 = 4;
/// Most characters of a job's error a notification quotes.
const ERROR_CHARS: usize = 500;

/// How notifications are delivered.
#[derive(Debug, Clone)]
pub struct NotifySettings {
    /// Receives every job's notifications (`--notify-url`).
    pub url: Option<reqwest::Url>,
    /// The dashboard's address as people reach it (`--public-url`), for links.
    pub public_url: Option<String>,
    /// Time one try may take.
    pub timeout: Duration,
    /// Wait before the first retry; doubled for each further one.
    pub retry_base: Duration,
}

impl Default for NotifySettings {
    fn default() -> Self {
        Self { url: None, public_url: None, timeout: DEFAULT_TIMEOUT, retry_base: DEFAULT_RETRY_BASE }
    }
}

/// One POST to make.
#[derive(Debug)]
struct Delivery {
    url: reqwest::Url,
    body: Vec<u8>,
}

/// Hands notifications to the delivery task. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Notifier {
    tx: mpsc::Sender<Delivery>,
    settings: Arc<NotifySettings>,
    metrics: Arc<Metrics>,
}

impl Notifier {
    /// Starts the delivery task (on the current Tokio runtime).
    pub fn start(settings: NotifySettings, metrics: Arc<Metrics>) -> anyhow::Result<Self> {
        let client = reqwest::Client::builder()
            .timeout(settings.timeout)
            .connect_timeout(settings.timeout)
            // A webhook answers where it was asked; a redirect is no delivery.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("gradscope/", env!("CARGO_PKG_VERSION")))
            .build()?;
        let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
        let settings = Arc::new(settings);
        tokio::spawn(deliver_all(rx, client, settings.retry_base, metrics.clone()));
        Ok(Self { tx, settings, metrics })
    }

    /// A job reached its final status. Jobs interrupted by a shutdown are not reported:
    /// they have not ended, and resume.
    pub fn job_ended(&self, job: &Job) {
        if !job.status.is_finished() || job.status == JobStatus::Interrupted {
            return;
        }
        let failed = matches!(job.status, JobStatus::Failed | JobStatus::Diverged);
        let wants = |spec: &NotifySpec| spec.wants(NotifyOn::Finished) || (failed && spec.wants(NotifyOn::Failed));
        let what = match (job.status, job.error.as_deref()) {
            (status, Some(error)) => format!("{}: {}", status.as_str(), clip(error, ERROR_CHARS / 2)),
            (status, None) => status.as_str().to_owned(),
        };
        let text = format!("{} after {} of {} steps", what, job.step, job.total_steps);
        let body = self.payload(job, "finished", &text, job.diagnosis.as_ref(), None);
        self.send(job, &wants, &body);
    }

    /// A running job's diagnosis status changed from `previous` to `diagnosis.status`.
    pub fn diagnosis_changed(&self, job: &Job, step: u64, previous: DiagnosisStatus, diagnosis: &Diagnosis) {
        let wants = |spec: &NotifySpec| spec.wants(NotifyOn::Diagnosis);
        let issues: Vec<String> = diagnosis
            .issues
            .iter()
            .take(5)
            .map(|issue| match issue.layer {
                Some(layer) => format!("{} (layer {layer})", issue.kind.as_str()),
                None => issue.kind.as_str().to_owned(),
            })
            .collect();
        let mut text = format!("diagnosis {} → {} at step {step}", previous.as_str(), diagnosis.status.as_str());
        if !issues.is_empty() {
            text.push_str(": ");
            text.push_str(&issues.join(", "));
        }
        let mut job = job.clone();
        job.step = i64::try_from(step).unwrap_or(i64::MAX);
        let body = self.payload(&job, "diagnosis", &text, Some(diagnosis), Some(previous));
        self.send(&job, &wants, &body);
    }

    /// The JSON body: Slack's `text`, then the structured event.
    fn payload(
        &self,
        job: &Job,
        event: &str,
        what: &str,
        diagnosis: Option<&Diagnosis>,
        previous: Option<DiagnosisStatus>,
    ) -> Value {
        let link =
            format!("{}/#/jobs/{}", self.settings.public_url.as_deref().unwrap_or("").trim_end_matches('/'), job.id);
        let text = format!("gradscope job {} ({}): {} — {}", slack_escape(&job.name), job.id, slack_escape(what), link);
        let mut body = json!({
            "text": text,
            "event": event,
            "job": {
                "id": job.id,
                "name": job.name,
                "status": job.status,
                "step": job.step,
                "total_steps": job.total_steps,
                "loss": job.loss,
                "error": job.error.as_deref().map(|e| clip(e, ERROR_CHARS)),
                "url": link,
            },
        });
        if let Some(diagnosis) = diagnosis {
            body["diagnosis"] = json!(diagnosis);
        }
        if let Some(previous) = previous {
            body["previous_status"] = json!(previous);
        }
        body
    }

    /// Queues `body` for the service's receiver and the job's own, each if it wants it.
    fn send(&self, job: &Job, wants: &dyn Fn(&NotifySpec) -> bool, body: &Value) {
        let server = NotifySpec::default();
        let mut urls: Vec<reqwest::Url> = Vec::with_capacity(2);
        if let Some(url) = &self.settings.url
            && wants(&server)
        {
            urls.push(url.clone());
        }
        let own = &job.spec.notify;
        if let Some(url) = own.url.as_deref().and_then(|u| crate::spec::notify::check_url(u).ok())
            && wants(own)
            && !urls.contains(&url)
        {
            urls.push(url);
        }
        if urls.is_empty() {
            return;
        }
        let body = match serde_json::to_vec(body) {
            Ok(body) => body,
            Err(err) => {
                tracing::error!(job = %job.id, "failed to encode a notification: {err}");
                return;
            }
        };
        for url in urls {
            if self.tx.try_send(Delivery { url, body: body.clone() }).is_err() {
                tracing::warn!(job = %job.id, "notification queue full: a notification was dropped");
                self.metrics.notification(NotificationOutcome::Dropped);
            }
        }
    }
}

/// Takes deliveries off the queue and makes each on a task of its own, at most
/// [`MAX_IN_FLIGHT`] at once. Ends when every [`Notifier`] is gone.
async fn deliver_all(
    mut rx: mpsc::Receiver<Delivery>,
    client: reqwest::Client,
    retry_base: Duration,
    metrics: Arc<Metrics>,
) {
    let slots = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    while let Some(delivery) = rx.recv().await {
        let Ok(slot) = slots.clone().acquire_owned().await else { return };
        let (client, metrics) = (client.clone(), metrics.clone());
        tokio::spawn(async move {
            let outcome = deliver(&client, &delivery, retry_base).await;
            metrics.notification(outcome);
            drop(slot);
        });
    }
}

/// Up to [`TRIES`] POSTs, waiting `retry_base`, then twice as long, between them. A
/// client error other than 408 and 429 is final: the request will not get better.
async fn deliver(client: &reqwest::Client, delivery: &Delivery, retry_base: Duration) -> NotificationOutcome {
    let host = delivery.url.host_str().unwrap_or("");
    for attempt in 0..TRIES {
        if attempt > 0 {
            tokio::time::sleep(retry_base * 2_u32.pow(attempt - 1)).await;
        }
        let sent = client
            .post(delivery.url.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(delivery.body.clone())
            .send()
            .await;
        match sent {
            Ok(response) if response.status().is_success() => return NotificationOutcome::Delivered,
            Ok(response) => {
                let status = response.status();
                tracing::warn!(host, attempt = attempt + 1, %status, "a webhook refused a notification");
                let retryable = status.is_server_error()
                    || status == reqwest::StatusCode::REQUEST_TIMEOUT
                    || status == reqwest::StatusCode::TOO_MANY_REQUESTS;
                if !retryable {
                    break;
                }
            }
            // The URL is left out: it may carry a secret (Slack's do, in the path).
            Err(err) => {
                tracing::warn!(host, attempt = attempt + 1, "a notification was not delivered: {}", err.without_url());
            }
        }
    }
    NotificationOutcome::Failed
}

/// Slack reads `&`, `<` and `>` as markup.
fn slack_escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// At most `max` characters of `text`, marked when cut.
fn clip(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        text.to_owned()
    } else {
        format!("{}…", text.chars().take(max).collect::<String>())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_escaped_for_slack_and_clipped() {
        assert_eq!(slack_escape("a<b>&c"), "a&lt;b&gt;&amp;c");
        assert_eq!(clip("abcdef", 3), "abc…");
        assert_eq!(clip("abc", 3), "abc");
    }
}
