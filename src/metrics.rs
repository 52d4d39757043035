//! The Prometheus registry, the job and layer series the runner feeds, and the HTTP
//! middleware. Per-layer series are bounded by `monitor.prometheus_layers` and every
//! series of a job is removed when the job is deleted.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::Response;
use prometheus::{
    Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};
use uuid::Uuid;

use crate::store::JobStatus;
use crate::train::{Event, LayerInfo, StepReport};
use crate::vocab::EventKind;

const PREFIX: &str = "gradscope";

/// Every series the service exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    jobs: IntGaugeVec,
    job_info: IntGaugeVec,
    job_steps: IntCounterVec,
    job_loss: GaugeVec,
    job_grad_norm: GaugeVec,
    job_clipped: IntCounterVec,
    job_skipped: IntCounterVec,
    job_step_seconds: HistogramVec,
    layer_grad_norm: GaugeVec,
    events: IntCounterVec,
    http_requests: IntCounterVec,
    http_duration: HistogramVec,
    ws_clients: IntGauge,
    notifications: IntCounterVec,
    /// Per job: the layer labels it exports and the event kinds it counted, so its series
    /// can be removed with the job.
    exported: Mutex<HashMap<Uuid, Exported>>,
}

#[derive(Debug, Default)]
struct Exported {
    /// (layer index, label) of the layers with a series.
    layers: Vec<(usize, String)>,
    kinds: Vec<EventKind>,
    name: String,
}

fn opts(name: &str, help: &str) -> Opts {
    Opts::new(name, help).namespace(PREFIX)
}

impl Metrics {
    pub fn new() -> anyhow::Result<Self> {
        let registry = Registry::new();
        let job = &["job"];
        let m = Self {
            jobs: IntGaugeVec::new(opts("jobs", "Jobs in the store, by status."), &["status"])?,
            job_info: IntGaugeVec::new(
                opts("job_info", "Always 1: the name, model and task of a job, to join on `job`."),
                &["job", "name", "model", "task"],
            )?,
            job_steps: IntCounterVec::new(opts("job_steps_total", "Optimizer steps a job has recorded."), job)?,
            job_loss: GaugeVec::new(opts("job_loss", "A job's latest training loss (NaN when not finite)."), job)?,
            job_grad_norm: GaugeVec::new(
                opts(
                    "job_grad_norm",
                    "A job's latest global gradient L2 norm, before (stage=pre) and after (stage=post) its grad policies.",
                ),
                &["job", "stage"],
            )?,
            job_clipped: IntCounterVec::new(
                opts("job_clipped_steps_total", "Steps whose gradient the grad policies scaled down."),
                job,
            )?,
            job_skipped: IntCounterVec::new(
                opts("job_skipped_steps_total", "Steps whose update was dropped (non-finite loss or gradient)."),
                job,
            )?,
            job_step_seconds: HistogramVec::new(
                HistogramOpts::new("job_step_seconds", "Wall time of one training step, statistics included.")
                    .namespace(PREFIX)
                    .buckets(prometheus::exponential_buckets(0.0005, 2.0, 16)?),
                job,
            )?,
            layer_grad_norm: GaugeVec::new(
                opts(
                    "layer_grad_norm",
                    "A layer's latest gradient L2 norm before the grad policies; at most monitor.prometheus_layers layers per job, spread over the depth.",
                ),
                &["job", "layer"],
            )?,
            events: IntCounterVec::new(
                opts("events_total", "Diagnosis events (nonfinite, exploding, vanishing, dead) and policy summaries."),
                &["job", "kind"],
            )?,
            http_requests: IntCounterVec::new(
                opts("http_requests_total", "HTTP requests, by matched route."),
                &["method", "route", "status"],
            )?,
            http_duration: HistogramVec::new(
                HistogramOpts::new("http_request_duration_seconds", "HTTP request latency, by matched route.")
                    .namespace(PREFIX),
                &["method", "route"],
            )?,
            ws_clients: IntGauge::with_opts(opts("ws_clients", "Open WebSocket stream clients."))?,
            notifications: IntCounterVec::new(
                opts(
                    "notifications_total",
                    "Webhook notifications by outcome: delivered, failed (every try refused or timed out) or dropped (the queue was full).",
                ),
                &["outcome"],
            )?,
            exported: Mutex::new(HashMap::new()),
            registry,
        };
        m.registry.register(Box::new(m.jobs.clone()))?;
        m.registry.register(Box::new(m.job_info.clone()))?;
        m.registry.register(Box::new(m.job_steps.clone()))?;
        m.registry.register(Box::new(m.job_loss.clone()))?;
        m.registry.register(Box::new(m.job_grad_norm.clone()))?;
        m.registry.register(Box::new(m.job_clipped.clone()))?;
        m.registry.register(Box::new(m.job_skipped.clone()))?;
        m.registry.register(Box::new(m.job_step_seconds.clone()))?;
        m.registry.register(Box::new(m.layer_grad_norm.clone()))?;
        m.registry.register(Box::new(m.events.clone()))?;
        m.registry.register(Box::new(m.http_requests.clone()))?;
        m.registry.register(Box::new(m.http_duration.clone()))?;
        m.registry.register(Box::new(m.ws_clients.clone()))?;
        m.registry.register(Box::new(m.notifications.clone()))?;
        // Every outcome from the start, so a rate over it is defined before the first.
        for outcome in NotificationOutcome::ALL {
            m.notifications.with_label_values(&[outcome.as_str()]);
        }
        #[cfg(target_os = "linux")]
        m.registry.register(Box::new(prometheus::process_collector::ProcessCollector::for_self()))?;
        Ok(m)
    }

    fn exported(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, Exported>> {
        self.exported.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A job started: choose which of its layers get a series.
    pub fn job_started(&self, id: Uuid, name: &str, model: &str, task: &str, layers: &[LayerInfo], max_layers: u32) {
        let chosen = spread(layers.len(), max_layers as usize);
        let job = id.to_string();
        self.job_info.with_label_values(&[job.as_str(), name, model, task]).set(1);
        let mut exported = self.exported();
        let entry = exported.entry(id).or_default();
        entry.name = name.to_owned();
        entry.layers = chosen.into_iter().map(|i| (i, layers[i].name.clone())).collect();
        // Steps and clip counters exist from the start, at 0, so rates work from step 1.
        self.job_steps.with_label_values(&[&job]);
        self.job_clipped.with_label_values(&[&job]);
        self.job_skipped.with_label_values(&[&job]);
    }

    pub fn record_step(&self, id: Uuid, report: &StepReport) {
        let job = id.to_string();
        self.job_steps.with_label_values(&[&job]).inc();
        self.job_loss.with_label_values(&[&job]).set(report.loss);
        self.job_grad_norm.with_label_values(&[job.as_str(), "pre"]).set(report.grad_norm);
        self.job_grad_norm.with_label_values(&[job.as_str(), "post"]).set(report.grad_norm_clipped);
        if report.clip_coef < 1.0 - 1e-6 {
            self.job_clipped.with_label_values(&[&job]).inc();
        }
        if report.skipped {
            self.job_skipped.with_label_values(&[&job]).inc();
        }
        self.job_step_seconds.with_label_values(&[&job]).observe(report.seconds);
        if let Some(stats) = &report.layers {
            let exported = self.exported();
            for (index, label) in exported.get(&id).map(|e| e.layers.as_slice()).unwrap_or_default() {
                if let Some(norm) = stats.grad_norm.get(*index) {
                    self.layer_grad_norm.with_label_values(&[job.as_str(), label.as_str()]).set(*norm);
                }
            }
        }
    }

    pub fn record_event(&self, id: Uuid, event: &Event) {
        self.events.with_label_values(&[id.to_string().as_str(), event.kind.as_str()]).inc();
        let mut exported = self.exported();
        let kinds = &mut exported.entry(id).or_default().kinds;
        if !kinds.contains(&event.kind) {
            kinds.push(event.kind);
        }
    }

    /// Removes every series of a deleted job.
    pub fn remove_job(&self, id: Uuid, model: &str, task: &str) {
        let job = id.to_string();
        let Some(exported) = self.exported().remove(&id) else {
            return;
        };
        let _ = self.job_info.remove_label_values(&[job.as_str(), exported.name.as_str(), model, task]);
        for vec in [&self.job_steps, &self.job_clipped, &self.job_skipped] {
            let _ = vec.remove_label_values(&[&job]);
        }
        let _ = self.job_loss.remove_label_values(&[&job]);
        let _ = self.job_step_seconds.remove_label_values(&[&job]);
        for stage in ["pre", "post"] {
            let _ = self.job_grad_norm.remove_label_values(&[job.as_str(), stage]);
        }
        for (_, label) in &exported.layers {
            let _ = self.layer_grad_norm.remove_label_values(&[job.as_str(), label.as_str()]);
        }
        for kind in exported.kinds {
            let _ = self.events.remove_label_values(&[job.as_str(), kind.as_str()]);
        }
    }

    /// Counts one webhook notification's outcome.
    pub fn notification(&self, outcome: NotificationOutcome) {
        self.notifications.with_label_values(&[outcome.as_str()]).inc();
    }

    /// The exposition text, with the job counts and client count as of now.
    pub fn render(&self, jobs_by_status: &[(JobStatus, i64)], ws_clients: usize) -> String {
        for &status in JobStatus::ALL {
            let count = jobs_by_status.iter().find(|(s, _)| *s == status).map_or(0, |(_, n)| *n);
            self.jobs.with_label_values(&[status.as_str()]).set(count);
        }
        self.ws_clients.set(ws_clients as i64);
        let mut buffer = Vec::new();
        if let Err(err) = TextEncoder::new().encode(&self.registry.gather(), &mut buffer) {
            tracing::error!("failed to encode metrics: {err}");
        }
        String::from_utf8(buffer).unwrap_or_default()
    }
}

/// How a webhook notification ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotificationOutcome {
    /// The receiver answered 2xx.
    Delivered,
    /// Every try failed: refused, timed out or answered with an error.
    Failed,
    /// Not sent: the notification queue was full.
    Dropped,
}

impl NotificationOutcome {
    pub const ALL: [Self; 3] = [Self::Delivered, Self::Failed, Self::Dropped];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Delivered => "delivered",
            Self::Failed => "failed",
            Self::Dropped => "dropped",
        }
    }
}

/// At most `max` of `n` indices, spread evenly from the first to the last.
pub fn spread(n: usize, max: usize) -> Vec<usize> {
    if n <= max {
        return (0..n).collect();
    }
    if max == 0 {
        return Vec::new();
    }
    if max == 1 {
        return vec![0];
    }
    let mut chosen: Vec<usize> = (0..max).map(|k| k * (n - 1) / (max - 1)).collect();
    chosen.dedup();
    chosen
}

/// The `route` label of a request no route matched.
pub const UNMATCHED_ROUTE: &str = "unmatched";

/// The `method` label: the methods the service knows, else `OTHER`. Anyone can send any
/// token as a method, and each new label value would be a series kept forever.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        _ => "OTHER",
    }
}

/// Counts and times every request by its matched route, never the raw path (which would
/// make one series per job id, or per path anyone cares to send). Installed with
/// `route_layer`, so it sees only requests that matched a route: static files and
/// unknown paths make no series at all.
pub async fn track_http(State(metrics): State<std::sync::Arc<Metrics>>, req: Request, next: Next) -> Response {
    let route = req.extensions().get::<MatchedPath>().map_or(UNMATCHED_ROUTE, MatchedPath::as_str).to_owned();
    let method = method_label(req.method());
    let start = Instant::now();
    let response = next.run(req).await;
    let status = response.status().as_u16().to_string();
    metrics.http_requests.with_label_values(&[method, route.as_str(), status.as_str()]).inc();
    metrics.http_duration.with_label_values(&[method, route.as_str()]).observe(start.elapsed().as_secs_f64());
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layers_are_spread_over_the_depth() {
        assert_eq!(spread(5, 32), vec![0, 1, 2, 3, 4]);
        assert_eq!(spread(100, 4), vec![0, 33, 66, 99]);
        assert_eq!(spread(10, 1), vec![0]);
        assert!(spread(10, 0).is_empty());
    }

    #[test]
    fn unknown_methods_share_one_label() {
        assert_eq!(method_label(&Method::GET), "GET");
        assert_eq!(method_label(&Method::from_bytes(b"ZZZ2").expect("method")), "OTHER");
        assert_eq!(method_label(&Method::CONNECT), "OTHER");
    }
}
