//! `GET /api/v1/jobs/{id}/stream`: a job's steps, events and status over a WebSocket.
//!
//! The client gets `hello` (the job and its layers), then the recent steps of a running
//! job, then live messages; `every` and `layers` (query, or a `subscribe` message) thin
//! them. A client that falls behind gets `lagged` and continues from the newest message.
//!
//! Each message is serialized once for every client that wants all layers (see
//! [`Shared::json`]); a client writes whatever has queued up for it in one go, and after a
//! write it leaves the feed alone for [`FLUSH_EVERY`], so a fast job's steps reach it in a
//! few writes a second rather than one wake-up and one system call per step and client.
//! A client that asks for `compress=gzip` gets the feed in batches instead: one task per
//! job ([`batcher`]) cuts the feed the same way, renders and compresses each batch once,
//! and every such client that takes all layers writes that one buffer.
//! The socket closes normally after the final `status`, with 1001 when the service shuts
//! down or the client stays silent, and with 1013 when there are too many clients.
//!
//! A job that runs on another node is followed through the relay (`--nats-url`,
//! [`crate::jobs::relay`]): the same messages, rendered by the same code; if NATS cannot
//! be reached the client gets an `error` naming the cause and the socket closes with 1011.
//!
//! Sockets are served on a runtime of their own ([`StreamRuntime`]), whose threads an
//! operator may run at a lower CPU priority (`--stream-nice`) than the API and the
//! training, so that on a machine whose cores the training keeps busy hundreds of
//! dashboards take what the training leaves, not a share of it (and wait for it).

use std::future::Future;
use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use anyhow::Context;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade, close_code};
use axum::extract::{Path, State};
use axum::response::Response;
use bytes::Bytes;
use flate2::Compression;
use flate2::write::GzEncoder;
use futures::SinkExt;
use serde::Deserialize;
use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tokio::sync::{broadcast, mpsc};
use tokio::time::{Instant, interval};
use utoipa::IntoParams;

use super::extract::{ApiQuery, distinct, query_list};
use super::jobs::{Layer, find_job};
use super::protocol::{ClientMessage, ServerMessage};
use super::{ApiError, AppState};
use crate::jobs::live::{Batch, Item, LiveJob, LiveMessage, Shared, Subscription};
use crate::jobs::relay::{Followed, run_of};
use crate::metrics::Metrics;
use crate::store::{Job, JobStatus};

/// How often the server pings an idle client.
const PING_EVERY: Duration = Duration::from_secs(15);
/// How often a client of a queued job checks the store (it is also woken when any job
/// starts), to notice a job cancelled or deleted while queued.
const QUEUED_POLL: Duration = Duration::from_millis(250);

/// After writing feed messages to a client, how long it leaves the feed alone: whatever the
/// job publishes meanwhile goes out in the next write. This bounds the wake-ups and writes
/// per client to about 20 a second however fast the job steps, and adds at most this much
/// to a message's delivery time (a step that comes more than this after the previous write
/// goes out at once). With 500 clients of a job at 300 steps/s: 10,000 writes a second
/// instead of 150,000, and the server's CPU time for them about a quarter of what it was.
const FLUSH_EVERY: Duration = Duration::from_millis(50);
/// Most feed messages in one write (a client far behind catches up in several).
const BATCH_MAX: usize = 256;

/// How long a closing socket waits for the client's answering close frame.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// Largest message a client may send: a `subscribe` with a layer list fits easily; a
/// bigger one is not parsed and closes the socket with 1009.
pub const MAX_CLIENT_MESSAGE: usize = 4 * 1024;
/// Largest frame the protocol layer buffers. Messages between this and
/// [`MAX_CLIENT_MESSAGE`] are read whole and refused with a clean close; past this the
/// protocol layer stops reading at the frame header and the connection is dropped.
const MAX_CLIENT_FRAME: usize = 64 * 1024;

/// WebSocket limits and the client count, shared by every socket.
#[derive(Debug)]
pub struct WsLimits {
    pub max_total: usize,
    pub max_per_job: usize,
    pub idle_timeout: Duration,
    /// Open sockets, for the limit and the `gradscope_ws_clients` gauge.
    pub clients: AtomicUsize,
    /// Where sockets are served ([`StreamRuntime`]).
    pub runtime: tokio::runtime::Handle,
}

#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct StreamQuery {
    /// Send every N-th step (default 1: all), and every step that carries a measurement
    /// on its own schedule (`spectral`, `time_profile`).
    #[param(minimum = 1)]
    every: Option<u64>,
    /// Comma-separated layer indices whose statistics to send (default all; repeats count
    /// once; at most 4096 items).
    layers: Option<String>,
    /// `gzip`: after `hello`, the server sends the feed's messages in binary frames, each a
    /// gzip member holding one or more messages, each a JSON object followed by a newline
    /// (text frames still carry one message each). The messages are the same, in about a
    /// third of the bytes, compressed once for every client that takes all layers.
    #[param(value_type = Option<String>, pattern = "^gzip$")]
    compress: Option<String>,
    /// The API token, for clients that cannot send an `Authorization` header (a browser's
    /// WebSocket); the header is better where it can be sent, since URLs reach logs.
    #[serde(rename = "token")]
    #[param(value_type = Option<String>)]
    _token: Option<serde::de::IgnoredAny>,
}

/// What a client asked for: which steps and which layers.
#[derive(Debug, Clone, Default)]
struct Filter {
    every: u64,
    layers: Option<Vec<usize>>,
}

impl Filter {
    fn wants(&self, step: u64) -> bool {
        step.is_multiple_of(self.every.max(1))
    }

    /// Whether every message goes out whole.
    fn is_everything(&self) -> bool {
        self.every <= 1 && self.layers.is_none()
    }
}

/// Stream a job's steps, events and final status (WebSocket upgrade).
#[utoipa::path(get, operation_id = "stream_job", path = "/api/v1/jobs/{id}/stream", tag = "jobs", params(("id" = uuid::Uuid, Path), StreamQuery),
    responses(
        (status = 101, description = "Switching to the WebSocket protocol: hello, step, event, lagged and status messages. \
            Their JSON Schema (the ServerMessage and ClientMessage types) is at /api/v1/stream-schema.json. \
            Messages come in order and none is dropped except as `lagged` says; after each write the server \
            waits 50 ms before writing what was published meanwhile, so a step arrives up to 50 ms after its `time`. \
            With compress=gzip, what each write carries after the hello comes in one binary frame: a gzip member of \
            the same messages, each followed by a newline. \
            A job running on another node (with --nats-url) streams the same messages through NATS; if NATS cannot be \
            reached, the client gets an `error` message naming the cause and the socket closes with 1011"),
        (status = 400, description = "Not a WebSocket upgrade, a malformed query string, or a parameter the route does not take", body = super::ErrorBody),
        (status = 404, body = super::ErrorBody),
        (status = 422, body = super::ErrorBody),
    ))]
pub async fn subscribe(
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<StreamQuery>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let job = find_job(&state, &id).await?;
    let ws = ws.map_err(|rejection| ApiError::BadRequest {
        code: "websocket_required",
        message: format!("connect with a WebSocket client: {}", rejection.body_text()),
        field: None,
    })?;
    let layers = state.store.layers(job.id).await?;
    let filter = Filter { every: q.every.unwrap_or(1), layers: q.layers.as_deref().map(parse_layers).transpose()? };
    let compress = match q.compress.as_deref() {
        None => false,
        Some("gzip") => true,
        Some(other) => return Err(ApiError::invalid("compress", format!("{other:?} is not a compression; use gzip"))),
    };
    let ws = ws.max_message_size(MAX_CLIENT_FRAME).max_frame_size(MAX_CLIENT_FRAME);
    if filter.every == 0 {
        return Err(ApiError::invalid("every", "must be at least 1"));
    }
    let hello = ServerMessage::hello(job.clone(), layers.into_iter().map(Layer::from).collect()).to_json();
    let main = tokio::runtime::Handle::current();
    Ok(ws.on_upgrade(move |socket| async move {
        // Awaited here so that the connection lives as long as its task.
        let streams = state.ws.runtime.clone();
        let _ = streams.spawn(serve(state, job, hello, filter, compress, socket, main)).await;
    }))
}

/// The runtime that serves the sockets: `(cores / 2).clamp(1, 4)` threads, each made
/// `nice` steps nicer as it starts (Linux keeps a niceness per thread). Nothing on it opens
/// a database connection: a connection's thread would inherit the low priority, so store
/// reads go to the API's runtime ([`on_main`]). Dropped, it stops without waiting for its
/// sockets, which close with the service.
#[derive(Debug)]
pub struct StreamRuntime(Option<tokio::runtime::Runtime>);

impl StreamRuntime {
    pub fn start(nice: i32) -> anyhow::Result<Self> {
        let threads = std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).clamp(1, 4));
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name("gradscope-stream")
            .on_thread_start(move || {
                if nice > 0
                    && let Err(err) = rustix::process::nice(nice)
                {
                    tracing::debug!("could not lower the stream threads' priority: {err}");
                }
            })
            .enable_all()
            .build()
            .context("failed to start the threads that serve streams")?;
        Ok(Self(Some(runtime)))
    }

    pub fn handle(&self) -> tokio::runtime::Handle {
        // Present until dropped.
        self.0.as_ref().map(|runtime| runtime.handle().clone()).expect("a running stream runtime")
    }
}

impl Drop for StreamRuntime {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

/// Runs `future` on the API's runtime and waits for it (from the stream runtime).
async fn on_main<T: Send + 'static>(
    main: &tokio::runtime::Handle,
    future: impl Future<Output = T> + Send + 'static,
) -> anyhow::Result<T> {
    Ok(main.spawn(future).await?)
}

fn parse_layers(list: &str) -> Result<Vec<usize>, ApiError> {
    query_list(list, "layers")?
        .into_iter()
        .map(|s| s.parse().map_err(|_| ApiError::invalid("layers", format!("{s:?} is not a layer index"))))
        .collect()
}

/// Counts a socket while it lives.
struct ClientSlot(Arc<WsLimits>);

impl Drop for ClientSlot {
    fn drop(&mut self) {
        self.0.clients.fetch_sub(1, Ordering::Relaxed);
    }
}

async fn serve(
    state: AppState,
    job: Job,
    hello: String,
    filter: Filter,
    compress: bool,
    mut socket: WebSocket,
    main: tokio::runtime::Handle,
) {
    let limits = state.ws.clone();
    let slot = ClientSlot(limits.clone());
    if limits.clients.fetch_add(1, Ordering::Relaxed) >= limits.max_total {
        drop(slot);
        close(&mut socket, close_code::AGAIN, "too many stream clients").await;
        return;
    }
    if socket.send(Message::Text(hello.into())).await.is_err() {
        return;
    }
    let mut out = Out { gzip: compress.then(Vec::new), socket };
    let reason = match run(&state, &job, filter, &mut out, &main).await {
        Ok(reason) => reason,
        Err(err) => {
            tracing::debug!(job = %job.id, "stream ended: {err}");
            return;
        }
    };
    // A closing socket no longer counts as a client, while it waits for the answering close.
    drop(slot);
    close(&mut out.socket, reason.0, reason.1).await;
}

async fn close(socket: &mut WebSocket, code: u16, reason: &'static str) {
    let frame = CloseFrame { code, reason: reason.into() };
    if socket.send(Message::Close(Some(frame))).await.is_err() {
        return;
    }
    // Wait briefly for the client's answering close, reading past whatever it still sends:
    // closing with unread data resets the connection, and the client could lose our frame.
    let _ = tokio::time::timeout(CLOSE_GRACE, async {
        while let Some(Ok(message)) = socket.recv().await {
            if matches!(message, Message::Close(_)) {
                break;
            }
        }
    })
    .await;
}

type CloseReason = (u16, &'static str);

/// Sends the feed until it ends; returns how to close.
async fn run(
    state: &AppState,
    job: &Job,
    mut filter: Filter,
    out: &mut Out,
    main: &tokio::runtime::Handle,
) -> anyhow::Result<CloseReason> {
    let shutdown = state.scheduler.shutdown_token().clone();
    let idle_timeout = state.ws.idle_timeout;
    let mut last_heard = Instant::now();
    let mut ping = interval(PING_EVERY);

    // A queued job has no feed yet, nor one claimed here a moment ago: wait for it to
    // start (or end). A job running on another node is followed through the relay, where
    // there is one.
    let mut feed = loop {
        // Armed before the check, so a start between the two still wakes us.
        let opened = state.scheduler.feed_opened();
        tokio::pin!(opened);
        opened.as_mut().enable();
        if let Some(feed) = state.scheduler.live(job.id) {
            if feed.subscribers() >= state.ws.max_per_job {
                return Ok((close_code::AGAIN, "too many stream clients for this job"));
            }
            let (backlog, finished, next) = if out.compressing() {
                let live = Arc::downgrade(&feed);
                let sub = feed.batches(|rx, next, tx| {
                    tokio::spawn(batcher(live, rx, next, tx));
                });
                (sub.backlog, sub.finished, Feed::Batched { rx: sub.rx, next: sub.next })
            } else {
                let Subscription { backlog, finished, rx } = feed.subscribe();
                (backlog, finished, Feed::Local(rx))
            };
            drop(feed);
            let mut ended = false;
            for shared in backlog.iter().chain(finished.iter()) {
                ended |= out.message(shared, &filter).await?;
            }
            out.flush().await?;
            if ended {
                return Ok((close_code::NORMAL, "job finished"));
            }
            break next;
        }
        let store = state.store.clone();
        let id = job.id;
        let now = on_main(main, async move { store.job(id).await }).await??;
        match now {
            None => return Ok((close_code::NORMAL, "job deleted")),
            Some(now) if now.status.is_finished() => {
                let status = ServerMessage::Status { status: now.status, error: now.error.as_deref() }.to_json();
                out.text(status.into()).await?;
                out.flush().await?;
                return Ok((close_code::NORMAL, "job finished"));
            }
            // Running on another node; a job claimed here opens its feed a moment after the
            // claim, and is waited for below.
            Some(now) if now.status == JobStatus::Running && now.node_id.as_deref() != Some(state.store.node_id()) => {
                if let Some(relay) = state.scheduler.relay() {
                    break Feed::Remote(relay.follow(main, state.store.clone(), job.id, run_of(&now)));
                }
            }
            Some(_) => {}
        }
        tokio::select! {
            () = opened => {}
            () = tokio::time::sleep(QUEUED_POLL) => {}
            () = shutdown.cancelled() => return Ok((close_code::AWAY, "server shutting down")),
        }
    };
    // Set after each write: the feed is not read again before the pause ends.
    let pause = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(pause);
    let mut paused = false;
    // Made once: a fresh one per turn of the loop would register with the token each time.
    let shutting_down = shutdown.cancelled();
    tokio::pin!(shutting_down);
    loop {
        tokio::select! {
            () = &mut pause, if paused => paused = false,
            received = feed.recv(), if !paused => {
                match forward(out, &mut feed, received, &filter, &state.metrics).await? {
                    Flow::Continue => {}
                    Flow::Ended => return Ok((close_code::NORMAL, "job finished")),
                    Flow::Failed => return Ok((close_code::ERROR, "live relay unavailable")),
                }
                // Batches come paced already.
                if !matches!(feed, Feed::Batched { .. }) {
                    pause.as_mut().reset(Instant::now() + FLUSH_EVERY);
                    paused = true;
                }
            }
            incoming = out.socket.recv() => match incoming {
                Some(Ok(message)) if message_len(&message) > MAX_CLIENT_MESSAGE => {
                    return Ok((close_code::SIZE, "message too big"));
                }
                Some(Ok(Message::Text(text))) => {
                    last_heard = Instant::now();
                    match serde_json::from_str::<ClientMessage>(&text) {
                        Ok(ClientMessage::Subscribe { every, layers }) => {
                            filter.every = every.unwrap_or(filter.every).max(1);
                            // Each layer once (the message size already bounds how many).
                            filter.layers = layers.map(distinct).or(filter.layers);
                        }
                        Err(err) => {
                            let error = ServerMessage::Error { message: format!("unknown message: {err}") };
                            out.socket.send(Message::Text(error.to_json().into())).await?;
                        }
                    }
                }
                Some(Ok(Message::Close(_))) | None => anyhow::bail!("the client went away"),
                Some(Ok(_)) => last_heard = Instant::now(),
                // The protocol layer refuses a message over the size limit before it is
                // buffered; say why before closing.
                Some(Err(err)) if is_too_big(&err) => return Ok((close_code::SIZE, "message too big")),
                Some(Err(err)) => return Err(err.into()),
            },
            _ = ping.tick() => {
                if last_heard.elapsed() > idle_timeout {
                    return Ok((close_code::AWAY, "idle"));
                }
                out.socket.send(Message::Ping(Default::default())).await?;
            }
            () = &mut shutting_down => return Ok((close_code::AWAY, "server shutting down")),
        }
    }
}

fn message_len(message: &Message) -> usize {
    match message {
        Message::Text(text) => text.len(),
        Message::Binary(bytes) => bytes.len(),
        Message::Ping(_) | Message::Pong(_) | Message::Close(_) => 0,
    }
}

fn is_too_big(err: &axum::Error) -> bool {
    let text = err.to_string();
    text.contains("Space limit exceeded") || text.contains("too long")
}

/// Where a client's messages come from: the job's feed on this node, or the relay
/// following a job that runs on another node.
enum Feed {
    Local(broadcast::Receiver<Arc<Shared>>),
    /// The local feed in batches ([`batcher`]); `next` is the sequence number of the
    /// first message not yet sent.
    Batched {
        rx: broadcast::Receiver<Arc<Batch>>,
        next: u64,
    },
    Remote(mpsc::Receiver<Followed>),
}

/// One thing read from a [`Feed`].
enum Received {
    Message(Arc<Shared>),
    Batch(Arc<Batch>),
    Lagged(u64),
    /// The feed is over (after its final status).
    Closed,
    /// The relay gave up; why.
    Failed(String),
}

impl From<Option<Followed>> for Received {
    fn from(followed: Option<Followed>) -> Self {
        match followed {
            Some(Followed::Message(shared)) => Self::Message(shared),
            Some(Followed::Lagged(missed)) => Self::Lagged(missed),
            Some(Followed::Failed(why)) => Self::Failed(why),
            None => Self::Closed,
        }
    }
}

impl Feed {
    async fn recv(&mut self) -> Received {
        match self {
            Self::Local(rx) => match rx.recv().await {
                Ok(shared) => Received::Message(shared),
                Err(RecvError::Lagged(missed)) => Received::Lagged(missed),
                Err(RecvError::Closed) => Received::Closed,
            },
            Self::Batched { rx, .. } => loop {
                match rx.recv().await {
                    Ok(batch) => break Received::Batch(batch),
                    // The next batch's sequence numbers tell how many messages were missed.
                    Err(RecvError::Lagged(_)) => {}
                    Err(RecvError::Closed) => break Received::Closed,
                }
            },
            Self::Remote(rx) => rx.recv().await.into(),
        }
    }

    /// What has already arrived, if anything.
    fn try_recv(&mut self) -> Option<Received> {
        match self {
            Self::Local(rx) => match rx.try_recv() {
                Ok(shared) => Some(Received::Message(shared)),
                Err(TryRecvError::Lagged(missed)) => Some(Received::Lagged(missed)),
                Err(TryRecvError::Closed) => Some(Received::Closed),
                Err(TryRecvError::Empty) => None,
            },
            // Each batch is written on its own.
            Self::Batched { .. } => None,
            Self::Remote(rx) => match rx.try_recv() {
                Ok(followed) => Some(Some(followed).into()),
                Err(mpsc::error::TryRecvError::Empty) => None,
                Err(mpsc::error::TryRecvError::Disconnected) => Some(Received::Closed),
            },
        }
    }
}

/// How the feed goes on after a write.
enum Flow {
    Continue,
    Ended,
    /// The relay failed: the client was told why.
    Failed,
}

/// Writes `first` and whatever else has queued up in the feed (at most [`BATCH_MAX`]
/// messages) in one flush, and records how long its oldest message waited.
async fn forward(
    out: &mut Out,
    feed: &mut Feed,
    first: Received,
    filter: &Filter,
    metrics: &Metrics,
) -> anyhow::Result<Flow> {
    let oldest = match &first {
        Received::Message(shared) => Some(shared.time),
        Received::Batch(batch) => batch.items.iter().find_map(|item| match item {
            Item::Message(shared) => Some(shared.time),
            Item::Lagged(_) => None,
        }),
        _ => None,
    };
    let mut next = Some(first);
    let mut flow = Flow::Continue;
    let mut queued = 0;
    while let Some(received) = next.take() {
        match received {
            Received::Message(shared) => {
                if out.message(&shared, filter).await? {
                    flow = Flow::Ended;
                }
            }
            Received::Batch(batch) => {
                // Batches come from a batched feed alone.
                if let Feed::Batched { next, .. } = feed
                    && out.batch(&batch, next, filter).await?
                {
                    flow = Flow::Ended;
                }
            }
            Received::Lagged(missed) => out.text(lagged(missed)).await?,
            Received::Closed => flow = Flow::Ended,
            Received::Failed(message) => {
                out.text(ServerMessage::Error { message }.to_json().into()).await?;
                flow = Flow::Failed;
            }
        }
        queued += 1;
        if !matches!(flow, Flow::Continue) || queued == BATCH_MAX {
            break;
        }
        next = feed.try_recv();
    }
    out.flush().await?;
    if let Some(published) = oldest {
        metrics.stream_written(published);
    }
    Ok(flow)
}

/// A client's socket, and how feed messages are written to it: each in a text frame of its
/// own, or (`compress=gzip`) gathered until the flush into one gzip'd binary frame.
struct Out {
    socket: WebSocket,
    /// The messages gathered for the next binary frame, when compressing.
    gzip: Option<Vec<u8>>,
}

impl Out {
    fn compressing(&self) -> bool {
        self.gzip.is_some()
    }

    /// Queues one feed message for the next write.
    async fn text(&mut self, text: Utf8Bytes) -> anyhow::Result<()> {
        match &mut self.gzip {
            Some(gathered) => {
                gathered.extend_from_slice(text.as_bytes());
                gathered.push(b'\n');
            }
            None => self.socket.feed(Message::Text(text)).await?,
        }
        Ok(())
    }

    /// Queues one feed message if the filter wants it; true when it was the final status.
    async fn message(&mut self, shared: &Shared, filter: &Filter) -> anyhow::Result<bool> {
        if let Some(text) = render(shared, filter) {
            self.text(text).await?;
        }
        Ok(matches!(shared.message, LiveMessage::Status { .. }))
    }

    /// Queues a batch's messages from sequence number `next` on, and moves `next` past
    /// it: the batch's own compressed form when the client takes it whole, else the
    /// messages it wants, after a `lagged` for any it fell behind by. True when the batch
    /// held the final status.
    async fn batch(&mut self, batch: &Batch, next: &mut u64, filter: &Filter) -> anyhow::Result<bool> {
        if batch.to < *next {
            return Ok(false);
        }
        if batch.from == *next && filter.is_everything() {
            // Written after what was gathered before it.
            self.flush_gathered().await?;
            self.socket.feed(Message::Binary(batch.gzip.clone())).await?;
        } else {
            if batch.from > *next {
                self.text(lagged(batch.from - *next)).await?;
            }
            for item in &batch.items {
                match item {
                    Item::Message(shared) if shared.seq >= *next => {
                        self.message(shared, filter).await?;
                    }
                    Item::Message(_) => {}
                    Item::Lagged(missed) => {
                        self.text(lagged(*missed)).await?;
                    }
                }
            }
        }
        *next = batch.to + 1;
        Ok(batch.ends())
    }

    /// Queues what was gathered as one binary frame.
    async fn flush_gathered(&mut self) -> anyhow::Result<()> {
        if let Some(gathered) = &mut self.gzip
            && !gathered.is_empty()
        {
            let frame = gzip(gathered)?;
            gathered.clear();
            self.socket.feed(Message::Binary(frame)).await?;
        }
        Ok(())
    }

    /// Writes everything queued.
    async fn flush(&mut self) -> anyhow::Result<()> {
        self.flush_gathered().await?;
        self.socket.flush().await?;
        Ok(())
    }
}

/// A feed message as text, if the filter wants it.
fn render(shared: &Shared, filter: &Filter) -> Option<Utf8Bytes> {
    Some(match &shared.message {
        LiveMessage::Step(report) => {
            // A measurement on its own schedule is sparse and not repeated: never thinned.
            if !filter.wants(report.step) && report.probes.spectral.is_none() && report.probes.time.is_none() {
                return None;
            }
            match &filter.layers {
                None => full(shared),
                Some(layers) => ServerMessage::step(report, shared.time, Some(layers)).to_json().into(),
            }
        }
        _ => full(shared),
    })
}

/// A feed message with every layer, rendered once for every client.
fn full(shared: &Shared) -> Utf8Bytes {
    shared.json(|message| match message {
        LiveMessage::Step(report) => ServerMessage::step(report, shared.time, None).to_json(),
        LiveMessage::Event(event) => ServerMessage::event(event).to_json(),
        LiveMessage::Status { status, error } => {
            ServerMessage::Status { status: *status, error: error.as_deref() }.to_json()
        }
    })
}

/// The `lagged` message for `missed` messages.
fn lagged(missed: u64) -> Utf8Bytes {
    ServerMessage::Lagged { missed }.to_json().into()
}

/// One gzip member of `text`.
fn gzip(text: &[u8]) -> std::io::Result<Bytes> {
    let mut encoder = GzEncoder::new(Vec::with_capacity(text.len() / 3 + 64), Compression::default());
    encoder.write_all(text)?;
    Ok(encoder.finish()?.into())
}

/// Cuts a job's feed into batches for its compressed clients, the way each client cuts
/// its own otherwise: a message that comes after a quiet spell goes out at once, and what
/// comes in the [`FLUSH_EVERY`] after a batch goes in the next. Each batch is rendered and
/// compressed once. Stops when the feed ends or when nobody listens.
async fn batcher(
    live: Weak<LiveJob>,
    mut rx: broadcast::Receiver<Arc<Shared>>,
    mut next: u64,
    tx: broadcast::Sender<Arc<Batch>>,
) {
    loop {
        let mut received = Some(rx.recv().await);
        let mut items = Vec::new();
        let mut ended = false;
        let mut covered = 0;
        let mut text = Vec::new();
        while let Some(r) = received.take() {
            match r {
                Ok(shared) => {
                    ended |= matches!(shared.message, LiveMessage::Status { .. });
                    text.extend_from_slice(full(&shared).as_bytes());
                    items.push(Item::Message(shared));
                    covered += 1;
                }
                Err(RecvError::Lagged(missed)) => {
                    text.extend_from_slice(lagged(missed).as_bytes());
                    items.push(Item::Lagged(missed));
                    covered += missed;
                }
                Err(RecvError::Closed) => {
                    ended = true;
                    break;
                }
            }
            text.push(b'\n');
            if ended || items.len() == BATCH_MAX {
                break;
            }
            received = match rx.try_recv() {
                Ok(shared) => Some(Ok(shared)),
                Err(TryRecvError::Lagged(missed)) => Some(Err(RecvError::Lagged(missed))),
                Err(TryRecvError::Closed) => Some(Err(RecvError::Closed)),
                Err(TryRecvError::Empty) => None,
            };
        }
        // More waiting: no pause before the next batch.
        let cut = items.len() == BATCH_MAX;
        if !items.is_empty() {
            match gzip(&text) {
                Ok(gzip) => {
                    let batch = Batch { from: next, to: next + covered - 1, items, gzip };
                    next += covered;
                    let _ = tx.send(Arc::new(batch));
                }
                Err(err) => {
                    // Writing to memory does not fail; were it to, the batches end here, and
                    // with them the compressed clients' streams.
                    tracing::warn!("could not compress a stream batch: {err}");
                    ended = true;
                }
            }
        }
        let done = match live.upgrade() {
            Some(live) => live.batcher_done(ended),
            // The job is over and its feed closed: what it sent last is still to batch.
            None => ended || tx.receiver_count() == 0,
        };
        if done {
            return;
        }
        if !cut {
            tokio::time::sleep(FLUSH_EVERY).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn sockets_are_served_below_the_priority_of_the_rest() {
        let ours = rustix::process::getpriority_process(None).expect("niceness");
        let streams = StreamRuntime::start(7).expect("runtime");
        let theirs = streams
            .handle()
            .spawn(async { rustix::process::getpriority_process(None).expect("niceness") })
            .await
            .expect("task");
        assert_eq!(theirs, (ours + 7).min(19));
        // A store read from there runs back on the caller's runtime, at its priority.
        let main = tokio::runtime::Handle::current();
        let back = streams
            .handle()
            .spawn(async move {
                on_main(&main, async { rustix::process::getpriority_process(None).expect("niceness") }).await
            })
            .await
            .expect("task")
            .expect("ran");
        assert_eq!(back, ours);
        // Dropped inside a runtime, it stops without blocking it.
        drop(streams);
    }
}
