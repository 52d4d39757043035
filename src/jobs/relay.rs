//! Live feeds across nodes, through NATS JetStream (`--nats-url`).
//!
//! The node that runs a job hands every message of the job's feed (steps, events, the
//! final status) to [`Relay::offer`], which never waits: a bounded queue, drained by one
//! task that publishes to the subject `<prefix>.live.<job>.<run>` of the stream
//! `<prefix>-live`. The stream keeps the last `--stream-backlog` messages of each subject
//! (older ones are discarded, and all of them after [`MAX_AGE`]), so a node whose client
//! asks for a job that runs elsewhere follows the subject with an ordered consumer from
//! the oldest message kept: the late-join backlog, then the live messages, in order.
//!
//! Messages travel in postcard (the worker protocol's encoding, every `f64` bit kept) with
//! their publication time, so the following node rebuilds the very message the running
//! node has and serializes it with the same code: the WebSocket text is identical. A
//! header numbers the job's messages, so messages dropped on the way (the queue was full)
//! reach a following client as `lagged`.
//!
//! `<run>` is the job's start time (milliseconds since the epoch, as the store has it):
//! a resumed job starts a new subject, and a follower never reads an earlier run's end.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_nats::jetstream::{self, consumer, stream};
use async_nats::{ConnectOptions, HeaderMap, ServerAddr};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::live::{LiveMessage, Shared, unix_now};
use crate::config::check_nats_prefix;
use crate::metrics::{Metrics, RelayOutcome};
use crate::store::{Job, JobStatus, Store};
use crate::train::{Event, StepReport};

/// Messages that may wait for the publishing task. Past this (NATS down or slower than
/// the jobs), messages are dropped and counted; the jobs and local clients never wait.
pub const QUEUE_CAPACITY: usize = 8192;
/// Publications whose acknowledgement may be outstanding at once.
const ACKS_IN_FLIGHT: usize = 1024;
/// How long the stream keeps a message at most.
pub const MAX_AGE: Duration = Duration::from_secs(24 * 3600);
/// Most bytes the stream keeps, all jobs together (the oldest go first).
pub const MAX_BYTES: i64 = 1 << 30;
/// The header that numbers a job's messages from 1.
const SEQ_HEADER: &str = "Gradscope-Seq";
/// How long a follower tolerates a lost connection to NATS before it gives up.
const DISCONNECTED_GRACE: Duration = Duration::from_secs(3);
/// How often a follower checks the connection and the job's status in the store.
const CHECK_EVERY: Duration = Duration::from_secs(1);
/// How long a follower waits for the final status through NATS after the store says
/// the job ended, before it takes the status from the store (the message was dropped).
const STATUS_GRACE: Duration = Duration::from_secs(3);
/// Most messages a follower holds for its client.
const FOLLOW_QUEUE: usize = 1024;
/// Drops are logged at most this often.
const DROP_LOG_EVERY: Duration = Duration::from_secs(10);
/// How to reach NATS.
#[derive(Debug, Clone)]
pub struct RelaySettings {
    /// `nats://host:port` (or `host:port`).
    pub url: String,
    /// First token of the subjects; the stream is `<prefix>-live`.
    pub prefix: String,
    /// Messages of each job the stream keeps for late joiners.
    pub backlog: usize,
}

/// A message as it travels through NATS (the same shape as [`Wire`], borrowed).
#[derive(Serialize)]
struct WireRef<'a> {
    time: f64,
    message: MessageRef<'a>,
}

#[derive(Serialize)]
enum MessageRef<'a> {
    Step(&'a StepReport),
    Event(&'a Event),
    Status { status: JobStatus, error: Option<&'a str> },
}

#[derive(Deserialize)]
struct Wire {
    time: f64,
    message: MessageOwned,
}

// Steps are nearly every message, as in `LiveMessage`.
#[allow(clippy::large_enum_variant)]
#[derive(Deserialize)]
enum MessageOwned {
    Step(StepReport),
    Event(Event),
    Status { status: JobStatus, error: Option<String> },
}

fn encode(shared: &Shared) -> Result<Vec<u8>, postcard::Error> {
    let message = match &shared.message {
        LiveMessage::Step(step) => MessageRef::Step(step),
        LiveMessage::Event(event) => MessageRef::Event(event),
        LiveMessage::Status { status, error } => MessageRef::Status { status: *status, error: error.as_deref() },
    };
    postcard::to_allocvec(&WireRef { time: shared.time, message })
}

fn decode(bytes: &[u8]) -> Result<Shared, postcard::Error> {
    let wire: Wire = postcard::from_bytes(bytes)?;
    let message = match wire.message {
        MessageOwned::Step(step) => LiveMessage::Step(step),
        MessageOwned::Event(event) => LiveMessage::Event(event),
        MessageOwned::Status { status, error } => LiveMessage::Status { status, error },
    };
    Ok(Shared::new(message, wire.time))
}

/// The subject of a job's run.
fn subject(prefix: &str, job: Uuid, run: i64) -> String {
    format!("{prefix}.live.{job}.{run}")
}

/// Which run of a job a subject belongs to: its start time in milliseconds.
pub fn run_of(job: &Job) -> i64 {
    job.started_at.map_or(0, |t| t.timestamp_millis())
}

/// One message for the publishing task.
struct Outgoing {
    subject: Arc<str>,
    seq: u64,
    shared: Arc<Shared>,
}

/// The connection to NATS, shared by the node's feeds and followers.
#[derive(Debug, Clone)]
pub struct Relay {
    inner: Arc<RelayInner>,
}

#[derive(Debug)]
struct RelayInner {
    settings: RelaySettings,
    stream: String,
    client: async_nats::Client,
    js: jetstream::Context,
    queue: mpsc::Sender<Outgoing>,
    metrics: Arc<Metrics>,
    /// Messages dropped since the last log line about it, and when that was.
    dropped: AtomicU64,
    dropped_logged: Mutex<Option<Instant>>,
}

/// What a feed publishes with: the relay, the run's subject and its message count.
#[derive(Debug)]
pub struct Publisher {
    relay: Relay,
    subject: Arc<str>,
}

impl Publisher {
    /// Hands `shared` (the `seq`-th message of the run, from 1) to the relay; never waits.
    pub fn offer(&self, seq: u64, shared: &Arc<Shared>) {
        self.relay.offer(Outgoing { subject: self.subject.clone(), seq, shared: shared.clone() });
    }
}

impl Relay {
    /// Connects to NATS (in the background: the service starts while NATS is down, and
    /// the connection is retried), then creates or updates the stream and publishes
    /// what the feeds offer until `shutdown`.
    pub async fn start(
        settings: RelaySettings,
        metrics: Arc<Metrics>,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Self> {
        settings.url.parse::<ServerAddr>().map_err(|err| anyhow::anyhow!("--nats-url {}: {err}", settings.url))?;
        check_nats_prefix(&settings.prefix).map_err(|message| anyhow::anyhow!("--nats-prefix: {message}"))?;
        let url = settings.url.clone();
        let client = ConnectOptions::new()
            .name("gradscope")
            .retry_on_initial_connect()
            .connection_timeout(Duration::from_secs(2))
            .event_callback(move |event| {
                let url = url.clone();
                async move {
                    match event {
                        async_nats::Event::Connected => tracing::info!("live relay: connected to NATS at {url}"),
                        async_nats::Event::Disconnected => {
                            tracing::warn!("live relay: disconnected from NATS at {url}; retrying");
                        }
                        other => tracing::warn!("live relay: NATS at {url}: {other}"),
                    }
                }
            })
            .connect(settings.url.as_str())
            .await
            .with_context(|| format!("--nats-url {}", settings.url))?;
        let js = jetstream::new(client.clone());
        metrics.relay_started();
        let (queue, rx) = mpsc::channel(QUEUE_CAPACITY);
        let stream = format!("{}-live", settings.prefix);
        let relay = Self {
            inner: Arc::new(RelayInner {
                settings,
                stream,
                client,
                js,
                queue,
                metrics,
                dropped: AtomicU64::new(0),
                dropped_logged: Mutex::new(None),
            }),
        };
        tokio::spawn(relay.clone().publish(rx, shutdown));
        Ok(relay)
    }

    /// The publisher of a job's run.
    pub fn publisher(&self, job: Uuid, run: i64) -> Publisher {
        Publisher { relay: self.clone(), subject: subject(&self.inner.settings.prefix, job, run).into() }
    }

    fn offer(&self, outgoing: Outgoing) {
        match self.inner.queue.try_send(outgoing) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_) | mpsc::error::TrySendError::Closed(_)) => {
                self.dropped("the queue to NATS is full (NATS unreachable or too slow)");
            }
        }
    }

    /// Counts a dropped message and logs the drops at most every [`DROP_LOG_EVERY`].
    fn dropped(&self, why: &str) {
        self.inner.metrics.relay(RelayOutcome::Dropped);
        let count = self.inner.dropped.fetch_add(1, Ordering::Relaxed) + 1;
        let mut logged = self.inner.dropped_logged.lock().unwrap_or_else(PoisonError::into_inner);
        if logged.is_none_or(|at| at.elapsed() >= DROP_LOG_EVERY) {
            *logged = Some(Instant::now());
            self.inner.dropped.store(0, Ordering::Relaxed);
            tracing::warn!(
                dropped = count,
                "live relay: {count} message(s) not published: {why}; local clients are unaffected, \
                 clients on other nodes see them as lagged"
            );
        }
    }

    fn stream_config(&self) -> stream::Config {
        let settings = &self.inner.settings;
        stream::Config {
            name: self.inner.stream.clone(),
            subjects: vec![format!("{}.live.>", settings.prefix)],
            max_messages_per_subject: i64::try_from(settings.backlog.max(1)).unwrap_or(i64::MAX),
            max_age: MAX_AGE,
            max_bytes: MAX_BYTES,
            discard: stream::DiscardPolicy::Old,
            storage: stream::StorageType::File,
            num_replicas: 1,
            ..Default::default()
        }
    }

    /// Creates the stream, or updates its limits to this node's settings.
    async fn ensure_stream(&self) -> anyhow::Result<()> {
        let config = self.stream_config();
        match self.inner.js.update_stream(&config).await {
            Ok(_) => Ok(()),
            Err(_) => {
                self.inner.js.create_stream(config).await.context("failed to create the stream")?;
                Ok(())
            }
        }
    }

    /// The publishing task: the stream first (retried while NATS is unreachable; what is
    /// offered meanwhile fills the queue and then is dropped), then every queued message in
    /// order, acknowledgements checked by a second task.
    async fn publish(self, mut rx: mpsc::Receiver<Outgoing>, shutdown: CancellationToken) {
        let mut wait = Duration::from_millis(250);
        loop {
            match self.ensure_stream().await {
                Ok(()) => {
                    tracing::info!(stream = %self.inner.stream, "live relay: publishing live feeds to NATS");
                    break;
                }
                Err(err) => tracing::warn!("live relay: {err:#}; retrying in {wait:?}"),
            }
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = shutdown.cancelled() => return,
            }
            wait = (wait * 2).min(Duration::from_secs(30));
        }
        let (acks, mut pending) = mpsc::channel::<jetstream::context::PublishAckFuture>(ACKS_IN_FLIGHT);
        let checker = self.clone();
        tokio::spawn(async move {
            while let Some(ack) = pending.recv().await {
                match ack.await {
                    Ok(_) => checker.inner.metrics.relay(RelayOutcome::Published),
                    Err(err) => checker.dropped(&format!("NATS did not store it: {err}")),
                }
            }
        });
        // Not stopped by the shutdown: the interrupted jobs' final statuses come after it
        // ([`Self::flush`] waits for them).
        while let Some(outgoing) = rx.recv().await {
            let payload = match encode(&outgoing.shared) {
                Ok(bytes) => bytes,
                Err(err) => {
                    self.dropped(&format!("it could not be encoded: {err}"));
                    continue;
                }
            };
            let mut headers = HeaderMap::new();
            headers.insert(SEQ_HEADER, outgoing.seq.to_string().as_str());
            match self.inner.js.publish_with_headers(outgoing.subject.to_string(), headers, payload.into()).await {
                Ok(ack) => {
                    if acks.send(ack).await.is_err() {
                        break;
                    }
                }
                Err(err) => self.dropped(&format!("NATS refused it: {err}")),
            }
        }
    }

    /// Waits (at most `limit`) until what the feeds offered so far has been sent to NATS.
    pub async fn flush(&self, limit: Duration) {
        let _ = tokio::time::timeout(limit, async {
            while self.inner.queue.capacity() < QUEUE_CAPACITY {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let _ = self.inner.client.flush().await;
        })
        .await;
    }

    /// Follows job `job`'s run `run` from the oldest message the stream keeps: the
    /// returned receiver gets the messages in order, `Lagged` for numbers missing between
    /// two of them, and ends after the final status or with `Failed`. The store is read
    /// every second: if the job ended and its status never came through NATS, the status
    /// is taken from the store. Runs on `runtime` (the one the store and the NATS client
    /// live on) until the receiver is dropped.
    pub fn follow(
        &self,
        runtime: &tokio::runtime::Handle,
        store: Store,
        job: Uuid,
        run: i64,
    ) -> mpsc::Receiver<Followed> {
        let (tx, rx) = mpsc::channel(FOLLOW_QUEUE);
        let relay = self.clone();
        runtime.spawn(async move {
            let result = tokio::select! {
                result = relay.follow_into(&store, job, run, &tx) => result,
                () = tx.closed() => Ok(()),
            };
            if let Err(message) = result {
                tracing::info!(job = %job, "live relay: a follower gave up: {message}");
                let _ = tx.send(Followed::Failed(message)).await;
            }
        });
        rx
    }

    async fn follow_into(&self, store: &Store, job: Uuid, run: i64, tx: &mpsc::Sender<Followed>) -> Result<(), String> {
        let url = &self.inner.settings.url;
        let unreachable = |what: String| format!("live relay unavailable: {what} (NATS at {url})");
        if self.inner.client.connection_state() != async_nats::connection::State::Connected {
            return Err(unreachable("not connected".to_owned()));
        }
        let config = consumer::pull::OrderedConfig {
            filter_subject: subject(&self.inner.settings.prefix, job, run),
            deliver_policy: if self.inner.settings.backlog == 0 {
                consumer::DeliverPolicy::New
            } else {
                consumer::DeliverPolicy::All
            },
            ..Default::default()
        };
        let consumer = self
            .inner
            .js
            .create_consumer_on_stream(config, self.inner.stream.as_str())
            .await
            .map_err(|err| unreachable(format!("could not follow the job: {err}")))?;
        let mut messages =
            Box::pin(consumer.messages().await.map_err(|err| unreachable(format!("could not follow: {err}")))?);
        let mut last_seq: Option<u64> = None;
        let mut check = tokio::time::interval(CHECK_EVERY);
        let mut disconnected_since: Option<Instant> = None;
        let mut ended_since: Option<Instant> = None;
        loop {
            tokio::select! {
                next = messages.next() => {
                    let message = match next {
                        Some(Ok(message)) => message,
                        Some(Err(err)) => return Err(unreachable(err.to_string())),
                        None => return Err(unreachable("the subscription ended".to_owned())),
                    };
                    let seq = message
                        .headers
                        .as_ref()
                        .and_then(|h| h.get(SEQ_HEADER))
                        .and_then(|v| v.as_str().parse::<u64>().ok());
                    if let (Some(seq), Some(last)) = (seq, last_seq)
                        && seq > last + 1
                        && tx.send(Followed::Lagged(seq - last - 1)).await.is_err()
                    {
                        return Ok(());
                    }
                    if seq.is_some() {
                        last_seq = seq;
                    }
                    let shared = match decode(&message.payload) {
                        Ok(shared) => Arc::new(shared),
                        Err(err) => {
                            tracing::warn!(job = %job, "live relay: an unreadable message: {err}");
                            continue;
                        }
                    };
                    let status = matches!(shared.message, LiveMessage::Status { .. });
                    if tx.send(Followed::Message(shared)).await.is_err() || status {
                        return Ok(());
                    }
                }
                _ = check.tick() => {
                    if self.inner.client.connection_state() == async_nats::connection::State::Connected {
                        disconnected_since = None;
                    } else if disconnected_since.get_or_insert_with(Instant::now).elapsed() >= DISCONNECTED_GRACE {
                        return Err(unreachable("the connection was lost".to_owned()));
                    }
                    let now = store.job(job).await.map_err(|err| format!("the store: {err:#}"))?;
                    let ended = match &now {
                        None => Some((JobStatus::Cancelled, Some("the job was deleted".to_owned()))),
                        Some(now) if now.status.is_finished() => Some((now.status, now.error.clone())),
                        Some(now) if run_of(now) != run => Some((now.status, None)),
                        Some(_) => None,
                    };
                    if let Some((status, error)) = ended
                        && ended_since.get_or_insert_with(Instant::now).elapsed() >= STATUS_GRACE
                    {
                        if status.is_finished() {
                            let shared = Shared::new(LiveMessage::Status { status, error }, unix_now());
                            let _ = tx.send(Followed::Message(Arc::new(shared))).await;
                            return Ok(());
                        }
                        return Err("the job started again elsewhere: reconnect to follow it".to_owned());
                    }
                }
            }
        }
    }
}

/// What a follower receives.
#[derive(Debug)]
pub enum Followed {
    Message(Arc<Shared>),
    /// Messages of the job that never reached NATS.
    Lagged(u64),
    /// The follower gave up; why (NATS unreachable, …).
    Failed(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_decodes_to_what_was_encoded() {
        let step = StepReport {
            step: 9,
            loss: f64::NAN,
            grad_norm: 1.5,
            grad_norm_clipped: 1.0,
            clip_coef: 0.5,
            lr: 0.1,
            skipped: false,
            loss_scale: Some(1024.0),
            overflow: false,
            layers: None,
            probes: Default::default(),
            seconds: 0.01,
        };
        let shared = Shared::new(LiveMessage::Step(step), 1234.5);
        let back = decode(&encode(&shared).expect("encodes")).expect("decodes");
        assert_eq!(back.time.to_bits(), 1234.5f64.to_bits());
        match back.message {
            LiveMessage::Step(s) => {
                assert_eq!(s.step, 9);
                assert!(s.loss.is_nan());
                assert_eq!(s.loss_scale, Some(1024.0));
            }
            other => panic!("not a step: {other:?}"),
        }
        let status = Shared::new(LiveMessage::Status { status: JobStatus::Failed, error: Some("x".into()) }, 1.0);
        match decode(&encode(&status).expect("encodes")).expect("decodes").message {
            LiveMessage::Status { status, error } => {
                assert_eq!(status, JobStatus::Failed);
                assert_eq!(error.as_deref(), Some("x"));
            }
            other => panic!("not a status: {other:?}"),
        }
    }

    #[test]
    fn prefixes_are_checked() {
        assert!(check_nats_prefix("gradscope").is_ok());
        assert!(check_nats_prefix("test-1_a").is_ok());
        assert!(check_nats_prefix("").is_err());
        assert!(check_nats_prefix("a.b").is_err());
        assert!(check_nats_prefix("a>").is_err());
    }
}
