//! Nodes sharing one database: who each is, its heartbeat, its running jobs' leases, and
//! the takeover of the jobs of a node that stopped renewing them. Every time here is on
//! the database's clock ([`super::Backend::now_ms`]), in milliseconds since 1970.

use std::sync::Arc;
use std::time::Duration;

use uuid::Uuid;

use super::Store;

/// How long a node holds a running job without renewing its lease, by default.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(15);

/// Node rows whose heartbeat stopped this many leases ago are removed by the sweep.
const FORGET_AFTER_LEASES: i64 = 100;

/// Who this store's claims are made for, and how long they hold.
#[derive(Debug)]
pub(super) struct NodeIdentity {
    pub(super) id: String,
    pub(super) lease_ms: i64,
}

impl NodeIdentity {
    pub(super) fn new(id: String, lease: Duration) -> Arc<Self> {
        Arc::new(Self { id, lease_ms: i64::try_from(lease.as_millis()).unwrap_or(i64::MAX).max(1) })
    }
}

/// A node id for a process that was given none: the host's name and a random suffix, so
/// that two processes on one host, or one process and its restart, never share one.
pub fn default_node_id() -> String {
    use rand::Rng;
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().chars().filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_')).collect())
        .filter(|h: &String| !h.is_empty())
        .unwrap_or_else(|| "node".to_owned());
    let suffix: u32 = rand::rng().random();
    format!("{host}-{:06x}", suffix & 0x00ff_ffff)
}

/// Longest node id, in bytes.
pub const MAX_NODE_ID: usize = 128;

/// Whether `id` may name a node: 1 to [`MAX_NODE_ID`] letters, digits, `-`, `.` or `_`.
pub fn check_node_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > MAX_NODE_ID {
        return Err(format!("a node id has 1 to {MAX_NODE_ID} characters"));
    }
    if !id.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_')) {
        return Err("a node id holds only letters, digits, '-', '.' and '_'".to_owned());
    }
    Ok(())
}

/// A running job whose node was lost, as the sweep that took it over found it: it is
/// `interrupted` now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TakenOver {
    pub id: Uuid,
    /// The node that ran it (`None`: a job claimed before nodes were recorded).
    pub node_id: Option<String>,
    /// How many times it started, the lost run included.
    pub attempts: i64,
    /// The last step its node recorded.
    pub step: i64,
}

/// A live node: its heartbeat is younger than a lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveNode {
    pub id: String,
    pub addr: Option<String>,
}

impl Store {
    /// This store claiming jobs for node `id`, whose leases last `lease`.
    #[must_use]
    pub fn for_node(mut self, id: &str, lease: Duration) -> Self {
        self.node = NodeIdentity::new(id.to_owned(), lease);
        self
    }

    /// The node this store claims jobs for.
    pub fn node_id(&self) -> &str {
        &self.node.id
    }

    /// How long a claimed job's lease lasts unless renewed.
    pub fn lease(&self) -> Duration {
        Duration::from_millis(u64::try_from(self.node.lease_ms).unwrap_or(0))
    }

    /// Records this node (at start-up) or its heartbeat, with the address its API listens on.
    pub async fn heartbeat(&self, addr: Option<&str>) -> anyhow::Result<()> {
        let now = self.pool.backend().now_ms();
        self.pool
            .query(&format!(
                "INSERT INTO nodes (id, started_at, heartbeat_at, addr) VALUES (?, {now}, {now}, ?)
                 ON CONFLICT (id) DO UPDATE SET heartbeat_at = excluded.heartbeat_at, addr = excluded.addr"
            ))
            .bind(&self.node.id)
            .bind(addr)
            .execute()
            .await?;
        Ok(())
    }

    /// Removes this node's row (a clean shutdown): it no longer counts as live.
    pub async fn leave(&self) -> anyhow::Result<()> {
        self.pool.query("DELETE FROM nodes WHERE id = ?").bind(&self.node.id).execute().await?;
        Ok(())
    }

    /// The live nodes, by id.
    pub async fn live_nodes(&self) -> anyhow::Result<Vec<LiveNode>> {
        let now = self.pool.backend().now_ms();
        let rows = self
            .pool
            .query(&format!("SELECT id, addr FROM nodes WHERE heartbeat_at > {now} - ? ORDER BY id LIMIT 10000"))
            .bind(self.node.lease_ms)
            .fetch_all()
            .await?;
        rows.iter().map(|row| Ok(LiveNode { id: row.try_get("id")?, addr: row.try_get("addr")? })).collect()
    }

    /// Renews the leases of the jobs this node runs; returns the ids of the running jobs
    /// this node holds. A job it runs that is missing was taken over by another node (its
    /// lease had expired): it must stop without recording anything more.
    pub async fn renew_leases(&self) -> anyhow::Result<Vec<Uuid>> {
        let now = self.pool.backend().now_ms();
        let rows = self
            .pool
            .query(&format!(
                "UPDATE jobs SET lease_until = {now} + ? WHERE node_id = ? AND status = 'running' RETURNING id"
            ))
            .bind(self.node.lease_ms)
            .bind(&self.node.id)
            .fetch_all()
            .await?;
        rows.iter().map(|row| Ok(Uuid::parse_str(&row.try_get::<String, _>("id")?)?)).collect()
    }

    /// Takes over at most `limit` running jobs of other nodes whose lease expired: marks
    /// them `interrupted`, saying which node was lost. Concurrent sweepers (on PostgreSQL,
    /// one per node) each take a different job, never one twice.
    pub async fn take_over_expired(&self, limit: i64) -> anyhow::Result<Vec<TakenOver>> {
        let now = self.pool.backend().now_ms();
        let sql = format!(
            "SELECT id, node_id, attempts, step FROM jobs
             WHERE status = 'running' AND (node_id IS NULL OR node_id <> ?) AND (lease_until IS NULL OR lease_until < {now})
             ORDER BY id LIMIT ?{}",
            self.pool.backend().skip_locked()
        );
        let taken = self.take_over(&sql, &[&self.node.id], limit, "stopped renewing its lease (lost)").await?;
        // Rows of nodes long gone.
        self.pool
            .query(&format!("DELETE FROM nodes WHERE heartbeat_at < {now} - ?"))
            .bind(self.node.lease_ms.saturating_mul(FORGET_AFTER_LEASES))
            .execute()
            .await?;
        Ok(taken)
    }

    /// At start-up: the jobs this node (by its id) left running when it stopped, and on
    /// SQLite (one node) every running job, become `interrupted`; another live node's
    /// jobs are left alone.
    pub async fn take_over_own(&self) -> anyhow::Result<Vec<TakenOver>> {
        match self.pool.backend() {
            super::Backend::Sqlite => {
                let sql = "SELECT id, node_id, attempts, step FROM jobs WHERE status = 'running' ORDER BY id LIMIT ?";
                self.take_over(sql, &[], i64::MAX, "stopped").await
            }
            super::Backend::Postgres => {
                let sql = "SELECT id, node_id, attempts, step FROM jobs WHERE status = 'running' AND node_id = ?
                           ORDER BY id LIMIT ? FOR UPDATE SKIP LOCKED";
                self.take_over(sql, &[&self.node.id], i64::MAX, "stopped").await
            }
        }
    }

    /// Marks the running jobs `select` picks (binding `values`, then `limit`)
    /// `interrupted`, in one transaction.
    async fn take_over(
        &self,
        select: &str,
        values: &[&str],
        limit: i64,
        what_happened: &str,
    ) -> anyhow::Result<Vec<TakenOver>> {
        let mut tx = self.pool.begin_write().await?;
        let mut query = tx.query(select);
        for value in values {
            query = query.bind(*value);
        }
        let rows = query.bind(limit).fetch_all().await?;
        let mut taken = Vec::with_capacity(rows.len());
        for row in &rows {
            let id: String = row.try_get("id")?;
            let node_id: Option<String> = row.try_get("node_id")?;
            let error = match &node_id {
                Some(node) if what_happened != "stopped" => {
                    format!("node {node} {what_happened} while the job was running")
                }
                _ => "the service stopped while the job was running".to_owned(),
            };
            tx.query(
                "UPDATE jobs SET status = 'interrupted', finished_at = ?, error = ?, lease_until = NULL
                 WHERE id = ? AND status = 'running'",
            )
            .bind(chrono::Utc::now())
            .bind(error)
            .bind(&id)
            .execute()
            .await?;
            taken.push(TakenOver {
                id: Uuid::parse_str(&id)?,
                node_id,
                attempts: row.try_get("attempts")?,
                step: row.try_get("step")?,
            });
        }
        tx.commit().await?;
        Ok(taken)
    }

    /// Adds `note` to an interrupted job's error (why it was not resumed).
    pub async fn explain_interruption(&self, id: Uuid, note: &str) -> anyhow::Result<()> {
        self.pool
            .query("UPDATE jobs SET error = COALESCE(error, '') || ? WHERE id = ? AND status = 'interrupted'")
            .bind(note)
            .bind(id.to_string())
            .execute()
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::time::Duration;

    use super::*;
    use crate::spec::ValidSpec;
    use crate::store::scratch::ScratchDatabase;
    use crate::store::{Backend, JobStatus, test_store};

    fn spec() -> ValidSpec {
        serde_json::from_str(r#"{"task":{"kind":"classification"},"model":{"kind":"mlp"}}"#).expect("spec")
    }

    /// Node `a` claims 20 jobs on a lease of a millisecond and is never heard of again;
    /// nodes `b` and `c` sweep at once, on pools of their own: each job is taken over
    /// once, by one of them, and marked interrupted naming node `a`.
    #[tokio::test]
    async fn expired_leases_are_taken_over_once_by_concurrent_sweepers() {
        let db = ScratchDatabase::create().await.expect("a scratch PostgreSQL database");
        let node = |id: &str, lease_ms| {
            let url = db.url().to_owned();
            let id = id.to_owned();
            async move { Store::connect(&url).await.expect("connect").for_node(&id, Duration::from_millis(lease_ms)) }
        };
        let a = node("a", 1).await;
        a.migrate().await.expect("migrate");
        let mut claimed = HashSet::new();
        for _ in 0..20 {
            a.insert_job(&spec()).await.expect("job");
            let job = a.claim_next_job().await.expect("claim").expect("a queued job");
            assert_eq!((job.node_id.as_deref(), job.attempts), (Some("a"), 1));
            claimed.insert(job.id);
        }
        // A live node's jobs are left alone: `b` renews its own lease.
        let (b, c) = (node("b", 60_000).await, node("c", 60_000).await);
        b.insert_job(&spec()).await.expect("job");
        let own = b.claim_next_job().await.expect("claim").expect("b's job");
        tokio::time::sleep(Duration::from_millis(20)).await;
        let sweepers: Vec<_> = [b.clone(), c.clone()]
            .into_iter()
            .map(|store| {
                tokio::spawn(async move {
                    let mut taken = Vec::new();
                    loop {
                        let batch = store.take_over_expired(3).await.expect("sweep");
                        if batch.is_empty() {
                            return taken;
                        }
                        taken.extend(batch);
                    }
                })
            })
            .collect();
        let mut taken = Vec::new();
        for sweeper in sweepers {
            taken.extend(sweeper.await.expect("sweeper"));
        }
        let ids: Vec<Uuid> = taken.iter().map(|t| t.id).collect();
        assert_eq!(ids.len(), 20, "taken over {} times for 20 jobs", ids.len());
        assert_eq!(ids.into_iter().collect::<HashSet<_>>(), claimed);
        assert!(taken.iter().all(|t| t.node_id.as_deref() == Some("a") && t.attempts == 1));
        for id in &claimed {
            let job = c.job(*id).await.expect("read").expect("job");
            assert_eq!(job.status, JobStatus::Interrupted);
            assert_eq!(
                job.error.as_deref(),
                Some("node a stopped renewing its lease (lost) while the job was running")
            );
        }
        assert_eq!(c.job(own.id).await.expect("read").expect("job").status, JobStatus::Running);
        assert_eq!(b.renew_leases().await.expect("renew"), vec![own.id]);
        // What `a` would record as its jobs' end is refused: they are no longer its own.
        let first = *claimed.iter().next().expect("a job");
        assert!(c.requeue_from_start(first, i64::MAX).await.expect("requeue"));
        assert_eq!(c.claim_next_job().await.expect("claim").map(|j| (j.id, j.attempts)), Some((first, 2)));
        assert!(!a.finish_job(first, JobStatus::Interrupted, Some("stale")).await.expect("finish"));
        assert!(a.renew_leases().await.expect("renew").is_empty());
        assert!(c.finish_job(first, JobStatus::Succeeded, None).await.expect("finish"));
    }

    /// A node's heartbeat makes it live for a lease; a node that leaves is not.
    async fn nodes_are_live_while_their_heartbeat_is_recent(store: &Store) {
        let other = store.clone().for_node("zz-other", Duration::from_millis(1));
        other.heartbeat(Some("127.0.0.1:1")).await.expect("heartbeat");
        let me = store.clone().for_node("aa-me", Duration::from_secs(60));
        me.heartbeat(Some("127.0.0.1:2")).await.expect("heartbeat");
        me.heartbeat(Some("127.0.0.1:3")).await.expect("heartbeat again");
        tokio::time::sleep(Duration::from_millis(20)).await;
        // Seen from a node with a long lease, both heartbeats are recent.
        let live = me.live_nodes().await.expect("live");
        let ids: Vec<&str> = live.iter().map(|n| n.id.as_str()).collect();
        assert_eq!(ids, ["aa-me", "zz-other"]);
        assert_eq!(live[0].addr.as_deref(), Some("127.0.0.1:3"));
        // With a lease of a millisecond, neither is.
        assert!(other.live_nodes().await.expect("live").is_empty());
        me.leave().await.expect("leave");
        let ids: Vec<String> = me.live_nodes().await.expect("live").into_iter().map(|n| n.id).collect();
        assert_eq!(ids, ["zz-other"]);
    }

    #[tokio::test]
    async fn nodes_are_live_while_their_heartbeat_is_recent_on_sqlite() {
        let (store, _dir) = test_store(Backend::Sqlite).await;
        nodes_are_live_while_their_heartbeat_is_recent(&store).await;
    }

    #[tokio::test]
    async fn nodes_are_live_while_their_heartbeat_is_recent_on_postgres() {
        let (store, _db) = test_store(Backend::Postgres).await;
        nodes_are_live_while_their_heartbeat_is_recent(&store).await;
    }

    #[test]
    fn node_ids_are_checked_and_made_up_within_bounds() {
        assert!(check_node_id("gpu-3.example_1").is_ok());
        for bad in ["", "a b", "a/b", "ü", &"x".repeat(MAX_NODE_ID + 1)] {
            assert!(check_node_id(bad).is_err(), "{bad:?}");
        }
        let (one, two) = (default_node_id(), default_node_id());
        assert_ne!(one, two, "a random suffix each");
        assert!(check_node_id(&one).is_ok(), "{one}");
    }
}
