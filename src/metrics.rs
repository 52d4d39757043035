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
    Encoder, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};
use uuid::Uuid;

use crate::jobs::live::unix_now;
use crate::store::JobStatus;
use crate::train::diagnose::Diagnosis;
use crate::train::{Event, LayerInfo, StepReport};
use crate::vocab::EventKind;

const PREFIX: &str = "gradscope";

/// Every series the service exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Jobs by status and live nodes: from the database, so exported by one node only.
    jobs: IntGaugeVec,
    nodes: IntGaugeVec,
    job_info: IntGaugeVec,
    job_status: IntGaugeVec,
    job_progress_time: GaugeVec,
    job_ended_time: GaugeVec,
    job_diagnosis: IntGaugeVec,
    job_nonfinite: IntCounterVec,
    job_dropped: IntCounterVec,
    job_steps: IntCounterVec,
    job_loss: GaugeVec,
    /// An fp16 job's loss scale at its latest step.
    job_loss_scale: GaugeVec,
    /// The largest spectral radius among a job's measured matrices, at its last measurement.
    job_spectral_radius: GaugeVec,
    /// A job's first/last input position gradient ratio, at its last temporal profile.
    job_time_ratio: GaugeVec,
    job_grad_norm: GaugeVec,
    job_clipped: IntCounterVec,
    job_skipped: IntCounterVec,
    job_step_seconds: HistogramVec,
    layer_grad_norm: GaugeVec,
    events: IntCounterVec,
    http_requests: IntCounterVec,
    http_duration: HistogramVec,
    ws_clients: IntGauge,
    /// How long a live message waited between its publication and its write to a
    /// stream client's socket (the oldest message of each write).
    stream_delay: Histogram,
    notifications: IntCounterVec,
    /// Live messages handed to NATS (`--nats-url`), by outcome.
    relay: IntCounterVec,
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
    /// The status the job's `job_status` series names, once it ran.
    status: Option<JobStatus>,
}

/// The diagnosis kinds `gradscope_job_diagnosis_issues` counts, one series each per job.
pub const DIAGNOSIS_KINDS: [EventKind; 4] =
    [EventKind::Nonfinite, EventKind::Exploding, EventKind::Vanishing, EventKind::Dead];

fn opts(name: &str, help: &str) -> Opts {
    Opts::new(name, help).namespace(PREFIX)
}

impl Metrics {
    pub fn new() -> anyhow::Result<Self> {
        let registry = Registry::new();
        let job = &["job"];
        let m = Self {
            jobs: IntGaugeVec::new(opts("jobs", "Jobs in the store, by status."), &["status"])?,
            nodes: IntGaugeVec::new(
                opts("nodes", "Live nodes sharing the database (their heartbeat younger than a lease)."),
                &[],
            )?,
            job_info: IntGaugeVec::new(
                opts("job_info", "Always 1: the name, model and task of a job, to join on `job`."),
                &["job", "name", "model", "task"],
            )?,
            job_status: IntGaugeVec::new(
                opts(
                    "job_status",
                    "Always 1: the status of a job this service ran since it started (one series per job).",
                ),
                &["job", "status"],
            )?,
            job_progress_time: GaugeVec::new(
                opts(
                    "job_last_progress_timestamp_seconds",
                    "Unix time of a job's latest recorded step, or of its start before its first step.",
                ),
                job,
            )?,
            job_ended_time: GaugeVec::new(opts("job_ended_timestamp_seconds", "Unix time a job ended."), job)?,
            job_diagnosis: IntGaugeVec::new(
                opts(
                    "job_diagnosis_issues",
                    "Issues of a kind (nonfinite, exploding, vanishing, dead) in force in a running job's diagnosis; 0 once it ends.",
                ),
                &["job", "kind"],
            )?,
            job_nonfinite: IntCounterVec::new(
                opts("job_nonfinite_steps_total", "Steps whose loss or global gradient norm was NaN or infinite."),
                job,
            )?,
            job_dropped: IntCounterVec::new(
                opts(
                    "job_dropped_reports_total",
                    "Step reports dropped because the store could not keep up (0 in a healthy service).",
                ),
                job,
            )?,
            job_steps: IntCounterVec::new(opts("job_steps_total", "Optimizer steps a job has recorded."), job)?,
            job_loss: GaugeVec::new(opts("job_loss", "A job's latest training loss (NaN when not finite)."), job)?,
            job_loss_scale: GaugeVec::new(
                opts(
                    "job_loss_scale",
                    "The loss scale of an fp16 job with dynamic loss scaling, at its latest step (before that \
                     step's backoff or growth).",
                ),
                job,
            )?,
            job_spectral_radius: GaugeVec::new(
                opts(
                    "job_spectral_radius_max",
                    "The largest singular value among a job's recurrent (per gate) and square hidden weight \
                     matrices, at its latest measurement (monitor.spectral_every); above 1 gradients through \
                     time can explode.",
                ),
                job,
            )?,
            job_time_ratio: GaugeVec::new(
                opts(
                    "job_time_first_last_ratio",
                    "A sequence model's gradient norm at the first input position over the last one's, at \
                     its latest temporal profile (monitor.time_every); far below 1 the gradient vanishes \
                     through time.",
                ),
                job,
            )?,
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
            stream_delay: Histogram::with_opts(
                HistogramOpts::new(
                    "stream_delay_seconds",
                    "Time from a live message's publication to its write to a stream client's socket, for the oldest message of each write.",
                )
                .namespace(PREFIX)
                .buckets(vec![0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0]),
            )?,
            notifications: IntCounterVec::new(
                opts(
                    "notifications_total",
                    "Webhook notifications by outcome: delivered, failed (every try refused or timed out) or dropped (the queue was full).",
                ),
                &["outcome"],
            )?,
            relay: IntCounterVec::new(
                opts(
                    "live_relay_messages_total",
                    "Live feed messages (steps, events, statuses) of the jobs this node runs, handed to NATS \
                     (--nats-url) by outcome: published (NATS stored it) or dropped (the queue to NATS was full, \
                     or NATS refused it). Absent without --nats-url.",
                ),
                &["outcome"],
            )?,
            exported: Mutex::new(HashMap::new()),
            registry,
        };
        m.registry.register(Box::new(m.jobs.clone()))?;
        m.registry.register(Box::new(m.nodes.clone()))?;
        m.registry.register(Box::new(m.job_info.clone()))?;
        m.registry.register(Box::new(m.job_status.clone()))?;
        m.registry.register(Box::new(m.job_progress_time.clone()))?;
        m.registry.register(Box::new(m.job_ended_time.clone()))?;
        m.registry.register(Box::new(m.job_diagnosis.clone()))?;
        m.registry.register(Box::new(m.job_nonfinite.clone()))?;
        m.registry.register(Box::new(m.job_dropped.clone()))?;
        m.registry.register(Box::new(m.job_steps.clone()))?;
        m.registry.register(Box::new(m.job_loss.clone()))?;
        m.registry.register(Box::new(m.job_loss_scale.clone()))?;
        m.registry.register(Box::new(m.job_spectral_radius.clone()))?;
        m.registry.register(Box::new(m.job_time_ratio.clone()))?;
        m.registry.register(Box::new(m.job_grad_norm.clone()))?;
        m.registry.register(Box::new(m.job_clipped.clone()))?;
        m.registry.register(Box::new(m.job_skipped.clone()))?;
        m.registry.register(Box::new(m.job_step_seconds.clone()))?;
        m.registry.register(Box::new(m.layer_grad_norm.clone()))?;
        m.registry.register(Box::new(m.events.clone()))?;
        m.registry.register(Box::new(m.http_requests.clone()))?;
        m.registry.register(Box::new(m.http_duration.clone()))?;
        m.registry.register(Box::new(m.ws_clients.clone()))?;
        m.registry.register(Box::new(m.stream_delay.clone()))?;
        m.registry.register(Box::new(m.notifications.clone()))?;
        m.registry.register(Box::new(m.relay.clone()))?;
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

    /// Moves the job's status series to `status`.
    fn set_status(&self, id: Uuid, status: JobStatus) {
        let job = id.to_string();
        let mut exported = self.exported();
        let entry = exported.entry(id).or_default();
        if let Some(old) = entry.status.replace(status) {
            let _ = self.job_status.remove_label_values(&[job.as_str(), old.as_str()]);
        }
        self.job_status.with_label_values(&[job.as_str(), status.as_str()]).set(1);
    }

    /// A job began to run (or resumed): its status is `running`, its progress clock starts
    /// now, and no issue is in force yet. Its info series exists from here, so that a job
    /// that fails before its first step still has a name to alert with.
    pub fn job_running(&self, id: Uuid, name: &str, model: &str, task: &str) {
        let job = id.to_string();
        self.job_info.with_label_values(&[job.as_str(), name, model, task]).set(1);
        self.exported().entry(id).or_default().name = name.to_owned();
        self.set_status(id, JobStatus::Running);
        self.job_progress_time.with_label_values(&[&job]).set(unix_now());
        let _ = self.job_ended_time.remove_label_values(&[&job]);
        for kind in DIAGNOSIS_KINDS {
            self.job_diagnosis.with_label_values(&[job.as_str(), kind.as_str()]).set(0);
        }
        self.job_nonfinite.with_label_values(&[&job]);
        self.job_dropped.with_label_values(&[&job]);
    }

    /// A job ended with `status`: no issue is in force any more.
    pub fn job_ended(&self, id: Uuid, status: JobStatus) {
        self.set_status(id, status);
        let job = id.to_string();
        self.job_ended_time.with_label_values(&[&job]).set(unix_now());
        for kind in DIAGNOSIS_KINDS {
            self.job_diagnosis.with_label_values(&[job.as_str(), kind.as_str()]).set(0);
        }
    }

    /// The job's diagnosis changed: how many issues of each kind are in force.
    pub fn record_diagnosis(&self, id: Uuid, diagnosis: &Diagnosis) {
        let job = id.to_string();
        for kind in DIAGNOSIS_KINDS {
            let count = diagnosis.issues.iter().filter(|issue| issue.kind == kind).count();
            self.job_diagnosis.with_label_values(&[job.as_str(), kind.as_str()]).set(count as i64);
        }
    }

    /// Step reports dropped on the way to the store.
    pub fn record_dropped(&self, id: Uuid, dropped: u64) {
        if dropped > 0 {
            self.job_dropped.with_label_values(&[id.to_string().as_str()]).inc_by(dropped);
        }
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
        self.job_progress_time.with_label_values(&[&job]).set(unix_now());
        // An overflow of fp16's scaled gradients is the loss scaler's business, not a
        // non-finite step.
        if !report.overflow && (!report.loss.is_finite() || !report.grad_norm.is_finite()) {
            self.job_nonfinite.with_label_values(&[&job]).inc();
        }
        self.job_loss.with_label_values(&[&job]).set(report.loss);
        if let Some(scale) = report.loss_scale {
            self.job_loss_scale.with_label_values(&[&job]).set(scale);
        }
        self.job_grad_norm.with_label_values(&[job.as_str(), "pre"]).set(report.grad_norm);
        self.job_grad_norm.with_label_values(&[job.as_str(), "post"]).set(report.grad_norm_clipped);
        if report.clip_coef < 1.0 - 1e-6 {
            self.job_clipped.with_label_values(&[&job]).inc();
        }
        if report.skipped {
            self.job_skipped.with_label_values(&[&job]).inc();
        }
        self.job_step_seconds.with_label_values(&[&job]).observe(report.seconds);
        if let Some(radius) = &report.probes.spectral
            && let Some(largest) = radius.iter().copied().filter(|r| r.is_finite()).reduce(f64::max)
        {
            self.job_spectral_radius.with_label_values(&[&job]).set(largest);
        }
        if let Some(profile) = &report.probes.time
            && let (Some(&first), Some(&last)) = (profile.first(), profile.last())
        {
            self.job_time_ratio.with_label_values(&[&job]).set(first / last);
        }
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
        for vec in [&self.job_steps, &self.job_clipped, &self.job_skipped, &self.job_nonfinite, &self.job_dropped] {
            let _ = vec.remove_label_values(&[&job]);
        }
        if let Some(status) = exported.status {
            let _ = self.job_status.remove_label_values(&[job.as_str(), status.as_str()]);
        }
        let _ = self.job_progress_time.remove_label_values(&[&job]);
        let _ = self.job_ended_time.remove_label_values(&[&job]);
        for kind in DIAGNOSIS_KINDS {
            let _ = self.job_diagnosis.remove_label_values(&[job.as_str(), kind.as_str()]);
        }
        for vec in [&self.job_loss, &self.job_loss_scale, &self.job_spectral_radius, &self.job_time_ratio] {
            let _ = vec.remove_label_values(&[&job]);
        }
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

    /// A write to a stream client whose oldest message was published `published` seconds
    /// after the Unix epoch.
    pub fn stream_written(&self, published: f64) {
        self.stream_delay.observe((unix_now() - published).max(0.0));
    }

    /// Counts one webhook notification's outcome.
    pub fn notification(&self, outcome: NotificationOutcome) {
        self.notifications.with_label_values(&[outcome.as_str()]).inc();
    }

    /// Counts a live message handed to NATS.
    pub fn relay(&self, outcome: RelayOutcome) {
        self.relay.with_label_values(&[outcome.as_str()]).inc();
    }

    /// Exports every relay outcome at 0, so that a rate over them is defined before the
    /// first (called when the relay starts).
    pub fn relay_started(&self) {
        for outcome in [RelayOutcome::Published, RelayOutcome::Dropped] {
            self.relay.with_label_values(&[outcome.as_str()]);
        }
    }

    /// The exposition text of the only node, with the job counts and client count as of now.
    pub fn render(&self, jobs_by_status: &[(JobStatus, i64)], ws_clients: usize) -> String {
        self.render_node(Some((jobs_by_status, 1)), ws_clients)
    }

    /// The exposition text of one node among several: `cluster` (the job counts and the
    /// live nodes) on the one node that exports what the database holds, `None` on the
    /// others, so that a sum over the nodes counts each job once.
    pub fn render_node(&self, cluster: Option<(&[(JobStatus, i64)], i64)>, ws_clients: usize) -> String {
        match cluster {
            Some((jobs_by_status, nodes)) => {
                for &status in JobStatus::ALL {
                    let count = jobs_by_status.iter().find(|(s, _)| *s == status).map_or(0, |(_, n)| *n);
                    self.jobs.with_label_values(&[status.as_str()]).set(count);
                }
                self.nodes.with_label_values(&[] as &[&str]).set(nodes);
            }
            None => {
                self.jobs.reset();
                self.nodes.reset();
            }
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

/// What became of a live message handed to NATS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayOutcome {
    /// NATS stored it.
    Published,
    /// Not stored: the queue to NATS was full, or NATS refused it.
    Dropped,
}

impl RelayOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Published => "published",
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

    /// The value of the one exposition line that starts with `series` (name and labels).
    fn value(text: &str, series: &str) -> Option<f64> {
        text.lines().find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
    }

    #[test]
    fn a_job_exports_its_status_progress_diagnosis_and_drops_until_deleted() {
        use crate::train::diagnose::Issue;
        let metrics = Metrics::new().expect("metrics");
        let id = Uuid::new_v4();
        let job = format!("job=\"{id}\"");
        let before = unix_now();
        metrics.job_running(id, "lm", "mlp", "classification");
        let report = |step, loss: f64| StepReport {
            step,
            loss,
            grad_norm: 1.0,
            grad_norm_clipped: 1.0,
            clip_coef: 1.0,
            lr: 0.1,
            skipped: !loss.is_finite(),
            loss_scale: None,
            overflow: false,
            layers: None,
            probes: Default::default(),
            seconds: 0.001,
        };
        metrics.record_step(id, &report(1, 2.0));
        metrics.record_step(id, &report(2, f64::NAN));
        metrics.record_step(id, &report(3, f64::INFINITY));
        let issue = |kind, layer| Issue { kind, layer, since: 2, message: String::new() };
        let diagnosis = Diagnosis {
            status: crate::vocab::DiagnosisStatus::Warning,
            issues: vec![
                issue(EventKind::Exploding, None),
                issue(EventKind::Vanishing, Some(0)),
                issue(EventKind::Vanishing, Some(1)),
            ],
        };
        metrics.record_diagnosis(id, &diagnosis);
        metrics.record_dropped(id, 0);
        metrics.record_dropped(id, 7);
        metrics.record_dropped(id, 5);

        let text = metrics.render(&[], 0);
        let info = format!("gradscope_job_info{{{job},model=\"mlp\",name=\"lm\",task=\"classification\"}}");
        assert_eq!(value(&text, &info), Some(1.0), "{text}");
        assert_eq!(value(&text, &format!("gradscope_job_status{{{job},status=\"running\"}}")), Some(1.0));
        let progress =
            value(&text, &format!("gradscope_job_last_progress_timestamp_seconds{{{job}}}")).expect("progress");
        assert!(progress >= before && progress <= unix_now(), "{progress}");
        assert_eq!(value(&text, &format!("gradscope_job_nonfinite_steps_total{{{job}}}")), Some(2.0));
        assert_eq!(value(&text, &format!("gradscope_job_dropped_reports_total{{{job}}}")), Some(12.0));
        let issues =
            |text: &str, kind: &str| value(text, &format!("gradscope_job_diagnosis_issues{{{job},kind=\"{kind}\"}}"));
        assert_eq!(issues(&text, "exploding"), Some(1.0));
        assert_eq!(issues(&text, "vanishing"), Some(2.0));
        assert_eq!(issues(&text, "nonfinite"), Some(0.0));
        assert_eq!(issues(&text, "dead"), Some(0.0));
        assert_eq!(value(&text, &format!("gradscope_job_ended_timestamp_seconds{{{job}}}")), None);

        // It ends: one status series, the new one; no issue in force.
        metrics.job_ended(id, JobStatus::Diverged);
        let text = metrics.render(&[], 0);
        assert_eq!(value(&text, &format!("gradscope_job_status{{{job},status=\"diverged\"}}")), Some(1.0));
        assert_eq!(text.matches(&format!("gradscope_job_status{{{job}")).count(), 1, "{text}");
        assert_eq!(issues(&text, "exploding"), Some(0.0));
        assert!(value(&text, &format!("gradscope_job_ended_timestamp_seconds{{{job}}}")).is_some_and(|t| t >= before));

        // Deleted: none of its series is left.
        metrics.remove_job(id, "mlp", "classification");
        let text = metrics.render(&[], 0);
        assert!(!text.contains(&id.to_string()), "{text}");
    }

    #[test]
    fn unknown_methods_share_one_label() {
        assert_eq!(method_label(&Method::GET), "GET");
        assert_eq!(method_label(&Method::from_bytes(b"ZZZ2").expect("method")), "OTHER");
        assert_eq!(method_label(&Method::CONNECT), "OTHER");
    }
}
