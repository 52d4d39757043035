//! The only place with SQL. One narrow [`Store`] over a sqlx pool: jobs, their layers,
//! per-step records with the pre-aggregated blocks that thin them ([`rollup`]),
//! experiments, measurements besides the per-layer statistics ([`probes`]) and corpora.
//! SQLite by default (WAL mode); the SQL stays portable so a PostgreSQL backend can sit
//! behind the same interface, except that lists of rows are passed as one JSON array
//! read with SQLite's `json_each` (PostgreSQL: `json_array_elements`).

mod blocks;
mod corpora;
pub mod downsample;
mod events;
mod experiments;
mod jobs;
mod layer_stats;
mod probes;
mod rollup;
mod steps;
mod uploads;

use std::str::FromStr;
use std::time::Duration;

use anyhow::Context;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{SqlitePool, migrate::Migrator};

pub use corpora::{Corpus, CorpusDeletion, CorpusUsage};
pub use events::StoredEvent;
pub use experiments::{JobHistory, StatusCount, StoredExperiment};
pub use jobs::{Job, JobFilter, JobSort, JobSortKey, JobStatus};
pub use layer_stats::{LayerSeries, StatSelection};
pub use probes::{ProbeKind, ProbeRange, ProbeRows};
pub use steps::{DEFAULT_MAX_POINTS, MAX_MAX_POINTS, Progress, StepColumns};
pub use uploads::{Dataset, DatasetDetail, ModelDetail, TensorInfo, UploadKind, UserModel};

static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

#[derive(Debug, Clone)]
pub struct Store {
    pool: SqlitePool,
}

impl Store {
    /// Opens (creating when missing) the database at `url`, e.g. `sqlite://./data/gradscope.db`.
    pub async fn connect(url: &str) -> anyhow::Result<Self> {
        check_scheme(url)?;
        let options = SqliteConnectOptions::from_str(url)
            .with_context(|| format!("invalid database URL {url}"))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10));
        if let Some(dir) = options.get_filename().parent()
            && !dir.as_os_str().is_empty()
        {
            std::fs::create_dir_all(dir).with_context(|| format!("failed to create {}", dir.display()))?;
        }
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            .connect_with(options)
            .await
            .with_context(|| format!("failed to open database {url}"))?;
        Ok(Self { pool })
    }

    /// Applies the migrations in `migrations/` that this database lacks.
    pub async fn migrate(&self) -> anyhow::Result<()> {
        MIGRATOR.run(&self.pool).await.context("failed to apply database migrations")?;
        self.build_missing_blocks().await.context("failed to build the history's blocks")
    }

    /// Whether the database answers and every migration this binary knows is applied.
    pub async fn is_ready(&self) -> bool {
        let applied: Result<i64, _> =
            sqlx::query_scalar("SELECT COUNT(*) FROM _sqlx_migrations WHERE success").fetch_one(&self.pool).await;
        matches!(applied, Ok(n) if n as usize >= MIGRATOR.iter().count())
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// Refuses a URL that names another kind of database: SQLite takes whatever follows an
/// optional `sqlite:` for a file path, and would turn `postgres://host/db` into a local
/// file under a new folder `postgres:`. A plain path (no scheme) is a SQLite file. The
/// error names the scheme only: the rest of such a URL may hold a password.
fn check_scheme(url: &str) -> anyhow::Result<()> {
    let scheme = url.split_once(':').map(|(scheme, _)| scheme).filter(|scheme| {
        scheme.starts_with(|c: char| c.is_ascii_alphabetic())
            && scheme.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
    });
    match scheme {
        None => Ok(()),
        Some("sqlite") => Ok(()),
        Some(scheme) => anyhow::bail!(
            "unsupported database URL scheme {scheme:?}: gradscope stores its data in SQLite; \
             give sqlite://PATH (the file is created when missing) or a plain file path"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::check_scheme;

    #[test]
    fn only_sqlite_urls_and_plain_paths_are_taken() {
        for url in ["sqlite://./data/gradscope.db", "sqlite:data.db", "./data/x.db", "/tmp/a:b.db"] {
            assert!(check_scheme(url).is_ok(), "{url}");
        }
        for (url, scheme) in [
            ("postgres://user:secret@127.0.0.1:5432/test", "postgres"),
            ("postgresql://localhost/db", "postgresql"),
            ("mysql://root@localhost/test", "mysql"),
            ("file:data.db", "file"),
        ] {
            let message = check_scheme(url).expect_err(url).to_string();
            assert!(message.contains(&format!("{scheme:?}")) && message.contains("sqlite://"), "{message}");
            assert!(!message.contains("secret"), "the password stays out of the message: {message}");
        }
    }
}
