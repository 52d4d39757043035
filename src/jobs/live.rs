//! Live fan-out of what running jobs report, for WebSocket subscribers and the CLI.
//!
//! One broadcast channel per running job plus a ring of its recent steps. Publishing and
//! subscribing take the same lock, so a late subscriber gets the ring and then exactly
//! the messages after it: no gap, no duplicate. The training side never waits: a
//! subscriber that falls behind the channel's capacity is told how many it missed.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::ws::Utf8Bytes;
use bytes::Bytes;
use tokio::sync::futures::Notified;
use tokio::sync::{Notify, broadcast};
use uuid::Uuid;

use super::relay::{Publisher, Relay};
use crate::config::FEED_CAPACITY as CHANNEL_CAPACITY;
use crate::store::JobStatus;
use crate::train::{Event, StepReport};

/// Batches a compressed subscriber may fall behind by before it is told what it missed
/// (a batch holds one message or many).
const BATCH_CAPACITY: usize = CHANNEL_CAPACITY / 4;

/// One message of a job's live feed.
// Steps are nearly every message: boxing them would cost an allocation per step to save
// bytes on the rare others.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum LiveMessage {
    Step(StepReport),
    Event(Event),
    /// The job ended; the last message of the feed.
    Status {
        status: JobStatus,
        error: Option<String>,
    },
}

/// A message as it travels: shared by every subscriber, its full JSON form built once.
#[derive(Debug)]
pub struct Shared {
    pub message: LiveMessage,
    /// When it was published, in seconds since the Unix epoch.
    pub time: f64,
    /// Its place in the feed, from 1 (0 for a message followed from another node).
    pub seq: u64,
    /// The WebSocket text every subscriber without a filter sends: built once, and shared
    /// by reference count rather than copied per client.
    json: OnceLock<Utf8Bytes>,
}

impl Shared {
    /// A message published at `time` (seconds since the Unix epoch).
    pub fn new(message: LiveMessage, time: f64) -> Self {
        Self { message, time, seq: 0, json: OnceLock::new() }
    }

    /// The message serialized with every layer, computed once for all subscribers.
    pub fn json(&self, render: impl FnOnce(&LiveMessage) -> String) -> Utf8Bytes {
        self.json.get_or_init(|| render(&self.message).into()).clone()
    }
}

/// A running job's feed.
#[derive(Debug)]
pub struct LiveJob {
    tx: broadcast::Sender<Arc<Shared>>,
    state: Mutex<RingState>,
    /// Where the feed is also published for other nodes (`--nats-url`).
    relay: Option<Publisher>,
    /// The feed cut into batches for compressed subscribers, while any listen.
    batches: Mutex<Option<broadcast::Sender<Arc<Batch>>>>,
}

/// What a batch holds, in feed order.
#[derive(Debug)]
pub enum Item {
    Message(Arc<Shared>),
    /// The batcher fell this many messages behind the feed, which it skipped.
    Lagged(u64),
}

/// Feed messages that came out together, with their compressed form built once for
/// every subscriber that wants all of them ([`LiveJob::batches`]).
#[derive(Debug)]
pub struct Batch {
    /// The sequence numbers it covers, skipped ones included: `from` is one past the
    /// previous batch's `to`.
    pub from: u64,
    pub to: u64,
    pub items: Vec<Item>,
    /// What an unfiltered subscriber sends: every message rendered in full, each followed
    /// by a newline, in one gzip member.
    pub gzip: Bytes,
}

impl Batch {
    /// Whether it holds the job's final status.
    pub fn ends(&self) -> bool {
        self.items
            .iter()
            .any(|item| matches!(item, Item::Message(m) if matches!(m.message, LiveMessage::Status { .. })))
    }
}

/// What a batch subscriber starts from: the recent steps, and batches holding every
/// message from sequence number `next` on (a batch may also hold earlier ones).
pub struct BatchSubscription {
    pub backlog: Vec<Arc<Shared>>,
    pub finished: Option<Arc<Shared>>,
    pub next: u64,
    pub rx: broadcast::Receiver<Arc<Batch>>,
}

#[derive(Debug)]
struct RingState {
    recent: VecDeque<Arc<Shared>>,
    capacity: usize,
    /// Set once the job has ended.
    finished: Option<Arc<Shared>>,
    /// Messages published so far (the relay numbers them).
    published: u64,
}

/// What a new subscriber starts from.
pub struct Subscription {
    /// Recent steps, oldest first.
    pub backlog: Vec<Arc<Shared>>,
    /// The final status, when the job already ended.
    pub finished: Option<Arc<Shared>>,
    pub rx: broadcast::Receiver<Arc<Shared>>,
}

impl LiveJob {
    fn new(ring: usize, relay: Option<Publisher>) -> Self {
        let (tx, _) = broadcast::channel(CHANNEL_CAPACITY);
        let state = RingState { recent: VecDeque::with_capacity(ring), capacity: ring, finished: None, published: 0 };
        Self { tx, state: Mutex::new(state), relay, batches: Mutex::new(None) }
    }

    fn lock(&self) -> MutexGuard<'_, RingState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Sends `message` to every subscriber; never waits.
    pub fn publish(&self, message: LiveMessage) {
        let time = unix_now();
        let mut state = self.lock();
        state.published += 1;
        let shared = Arc::new(Shared { seq: state.published, ..Shared::new(message, time) });
        if let Some(relay) = &self.relay {
            // Under the lock: the relay gets the messages in the order subscribers do.
            relay.offer(state.published, &shared);
        }
        match shared.message {
            LiveMessage::Step(_) => {
                if state.recent.len() == state.capacity {
                    state.recent.pop_front();
                }
                if state.capacity > 0 {
                    state.recent.push_back(shared.clone());
                }
            }
            LiveMessage::Status { .. } => state.finished = Some(shared.clone()),
            LiveMessage::Event(_) => {}
        }
        // No subscribers is fine.
        let _ = self.tx.send(shared);
    }

    pub fn subscribe(&self) -> Subscription {
        let state = self.lock();
        Subscription {
            backlog: state.recent.iter().cloned().collect(),
            finished: state.finished.clone(),
            rx: self.tx.subscribe(),
        }
    }

    /// Subscribes to the feed in batches. The first such subscriber starts the batcher:
    /// `start` gets the feed from the next message on, that message's sequence number,
    /// and the channel to send batches on; it runs until [`Self::batcher_done`] says that
    /// nobody listens any more.
    pub fn batches(
        &self,
        start: impl FnOnce(broadcast::Receiver<Arc<Shared>>, u64, broadcast::Sender<Arc<Batch>>),
    ) -> BatchSubscription {
        let state = self.lock();
        let mut batches = self.batches.lock().unwrap_or_else(PoisonError::into_inner);
        let rx = match &*batches {
            Some(tx) => tx.subscribe(),
            None if state.finished.is_some() => broadcast::channel(1).1,
            None => {
                let (tx, rx) = broadcast::channel(BATCH_CAPACITY);
                start(self.tx.subscribe(), state.published + 1, tx.clone());
                *batches = Some(tx);
                rx
            }
        };
        BatchSubscription {
            backlog: state.recent.iter().cloned().collect(),
            finished: state.finished.clone(),
            next: state.published + 1,
            rx,
        }
    }

    /// Called by the batcher after each batch and when the feed ends: true when it is
    /// to stop, because the feed ended or nobody listens; a later subscriber starts
    /// another.
    pub fn batcher_done(&self, ended: bool) -> bool {
        let mut batches = self.batches.lock().unwrap_or_else(PoisonError::into_inner);
        let done = ended || batches.as_ref().is_none_or(|tx| tx.receiver_count() == 0);
        if done {
            *batches = None;
        }
        done
    }

    /// How many subscribers are listening.
    pub fn subscribers(&self) -> usize {
        let feed = self.tx.receiver_count();
        match &*self.batches.lock().unwrap_or_else(PoisonError::into_inner) {
            // The batcher is one of the feed's receivers.
            Some(batches) => feed.saturating_sub(1) + batches.receiver_count(),
            None => feed,
        }
    }
}

/// The feeds of the running jobs.
#[derive(Debug)]
pub struct LiveHub {
    jobs: Mutex<HashMap<Uuid, Arc<LiveJob>>>,
    ring: usize,
    /// Wakes clients waiting for a queued job to start.
    opened: Notify,
    /// Publishes every feed to other nodes too, once set (`--nats-url`).
    relay: OnceLock<Relay>,
}

impl LiveHub {
    pub fn new(ring: usize) -> Self {
        Self { jobs: Mutex::new(HashMap::new()), ring, opened: Notify::new(), relay: OnceLock::new() }
    }

    /// Publishes the feeds opened from now on through `relay` too (once; a second call is
    /// ignored).
    pub fn relay_to(&self, relay: Relay) {
        let _ = self.relay.set(relay);
    }

    /// The relay, when feeds are published to other nodes.
    pub fn relay(&self) -> Option<&Relay> {
        self.relay.get()
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<Uuid, Arc<LiveJob>>> {
        self.jobs.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The feed of a running job (opened as run 0 if it is not open yet).
    pub fn open(&self, id: Uuid) -> Arc<LiveJob> {
        self.open_run(id, 0)
    }

    /// Opens the feed of a job that starts running; `run` tells this run of the job from
    /// earlier ones to other nodes ([`super::relay::run_of`]).
    pub fn open_run(&self, id: Uuid, run: i64) -> Arc<LiveJob> {
        let job = self
            .lock()
            .entry(id)
            .or_insert_with(|| {
                let relay = self.relay.get().map(|relay| relay.publisher(id, run));
                Arc::new(LiveJob::new(self.ring, relay))
            })
            .clone();
        self.opened.notify_waiters();
        job
    }

    /// Resolves when a feed opens after the call (enable it before checking [`Self::job`]).
    pub fn opened(&self) -> Notified<'_> {
        self.opened.notified()
    }

    /// Removes an ended job's feed; its subscribers keep what they hold.
    pub fn close(&self, id: Uuid) {
        self.lock().remove(&id);
    }

    pub fn job(&self, id: Uuid) -> Option<Arc<LiveJob>> {
        self.lock().get(&id).cloned()
    }
}

/// Seconds since the Unix epoch, now: the clock of a live message's publication time.
pub fn unix_now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(n: u64) -> LiveMessage {
        LiveMessage::Step(StepReport {
            step: n,
            loss: 1.0,
            grad_norm: 1.0,
            grad_norm_clipped: 1.0,
            clip_coef: 1.0,
            lr: 0.1,
            skipped: false,
            loss_scale: None,
            overflow: false,
            layers: None,
            probes: Default::default(),
            seconds: 0.01,
        })
    }

    fn step_of(shared: &Shared) -> u64 {
        match &shared.message {
            LiveMessage::Step(s) => s.step,
            other => panic!("not a step: {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_late_subscriber_gets_the_ring_then_live_steps_without_gap() {
        let hub = LiveHub::new(3);
        let id = Uuid::now_v7();
        let job = hub.open(id);
        for n in 1..=5 {
            job.publish(step(n));
        }
        let mut sub = job.subscribe();
        assert_eq!(sub.backlog.iter().map(|s| step_of(s)).collect::<Vec<_>>(), vec![3, 4, 5]);
        job.publish(step(6));
        job.publish(LiveMessage::Status { status: JobStatus::Succeeded, error: None });
        assert_eq!(step_of(&sub.rx.recv().await.expect("step")), 6);
        assert!(matches!(sub.rx.recv().await.expect("status").message, LiveMessage::Status { .. }));
        hub.close(id);
        assert!(hub.job(id).is_none());
        assert!(job.subscribe().finished.is_some());
    }

    #[tokio::test]
    async fn a_slow_subscriber_lags_and_publishing_never_blocks() {
        let job = LiveJob::new(0, None);
        let mut sub = job.subscribe();
        for n in 1..=(CHANNEL_CAPACITY as u64 + 10) {
            job.publish(step(n));
        }
        match sub.rx.recv().await {
            Err(broadcast::error::RecvError::Lagged(missed)) => assert_eq!(missed, 10),
            other => panic!("expected a lag, got {other:?}"),
        }
        assert_eq!(step_of(&sub.rx.recv().await.expect("next")), 11);
    }
}
