//! The only place with SQL. One narrow [`Store`] over a sqlx pool: jobs, their layers,
//! per-step records with the pre-aggregated blocks that thin them ([`rollup`]),
//! experiments, measurements besides the per-layer statistics ([`probes`]) and corpora.
//! SQLite by default (WAL mode), or PostgreSQL, which several nodes can share: the SQL is
//! written once ([`db`]) and where the dialects differ (a list passed as one JSON array,
//! the length of a text in bytes, how a writer locks) [`Backend`] gives each its form.

mod blocks;
mod corpora;
mod db;
pub mod downsample;
mod events;
mod experiments;
mod jobs;
mod layer_stats;
mod nodes;
mod probes;
mod rollup;
pub mod scratch;
mod steps;
mod uploads;

use std::str::FromStr;
use std::time::Duration;

use anyhow::Context;
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};

use db::Pool;

pub use corpora::{Corpus, CorpusDeletion, CorpusUsage};
pub use db::Backend;
pub use events::StoredEvent;
pub use experiments::{JobHistory, StatusCount, StoredExperiment};
pub use jobs::{Job, JobFilter, JobSort, JobSortKey, JobStatus};
pub use layer_stats::{LayerSeries, StatSelection};
pub use nodes::{DEFAULT_LEASE, LiveNode, MAX_NODE_ID, TakenOver, check_node_id, default_node_id};
pub use probes::{ProbeKind, ProbeRange, ProbeRows};
pub use steps::{DEFAULT_MAX_POINTS, MAX_MAX_POINTS, Progress, StepColumns};
pub use uploads::{Dataset, DatasetDetail, ModelDetail, TensorInfo, UploadKind, UserModel};

/// Each database's migrations: the same schema in each one's types (PostgreSQL's from the
/// start in one file; SQLite's as it grew, kept as applied).
static SQLITE_MIGRATOR: Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES_MIGRATOR: Migrator = sqlx::migrate!("./migrations/postgres");

#[derive(Debug, Clone)]
pub struct Store {
    pool: Pool,
    /// The node its claims are made for (by default a made-up id: see [`Self::for_node`]).
    node: std::sync::Arc<nodes::NodeIdentity>,
}

impl Store {
    /// Opens the database at `url`: a SQLite file (`sqlite://./data/gradscope.db` or a
    /// plain path, created when missing) or a PostgreSQL database
    /// (`postgres://user:password@host:5432/name`, which must exist).
    pub async fn connect(url: &str) -> anyhow::Result<Self> {
        match check_scheme(url)? {
            Backend::Sqlite => Self::connect_sqlite(url).await,
            Backend::Postgres => Self::connect_postgres(url).await,
        }
    }

    async fn connect_postgres(url: &str) -> anyhow::Result<Self> {
        // The message names the server, never the password the URL may hold.
        let options = PgConnectOptions::from_str(url).context("invalid PostgreSQL URL")?;
        let server = postgres_server(&options);
        let pool = PgPoolOptions::new()
            .max_connections(8)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options)
            .await
            .with_context(|| format!("failed to open database {server}"))?;
        Ok(Self::with_pool(Pool::Postgres(pool)))
    }

    async fn connect_sqlite(url: &str) -> anyhow::Result<Self> {
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
        Ok(Self::with_pool(Pool::Sqlite(pool)))
    }

    fn with_pool(pool: Pool) -> Self {
        Self { pool, node: nodes::NodeIdentity::new(default_node_id(), DEFAULT_LEASE) }
    }

    /// Which database this store keeps its data in.
    pub fn backend(&self) -> Backend {
        self.pool.backend()
    }

    fn migrator(&self) -> &'static Migrator {
        match self.backend() {
            Backend::Sqlite => &SQLITE_MIGRATOR,
            Backend::Postgres => &POSTGRES_MIGRATOR,
        }
    }

    /// Applies the migrations in `migrations/<backend>/` that this database lacks (on
    /// PostgreSQL under a lock, so nodes starting together apply them once).
    pub async fn migrate(&self) -> anyhow::Result<()> {
        let applied = match &self.pool {
            Pool::Sqlite(pool) => SQLITE_MIGRATOR.run(pool).await,
            Pool::Postgres(pool) => POSTGRES_MIGRATOR.run(pool).await,
        };
        applied.context("failed to apply database migrations")?;
        self.build_missing_blocks().await.context("failed to build the history's blocks")
    }

    /// Whether the database answers and every migration this binary knows is applied.
    pub async fn is_ready(&self) -> bool {
        let applied =
            self.pool.query("SELECT COUNT(*) FROM _sqlx_migrations WHERE success").fetch_scalar::<i64>().await;
        matches!(applied, Ok(n) if n as usize >= self.migrator().iter().count())
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// A PostgreSQL server and database as messages name them: never the user's password.
fn postgres_server(options: &PgConnectOptions) -> String {
    format!("postgres://{}:{}/{}", options.get_host(), options.get_port(), options.get_database().unwrap_or(""))
}

/// The database a URL names, for logs: a PostgreSQL URL as `postgres://HOST:PORT/DATABASE`
/// (without the password it may hold), any other as given.
pub fn describe_url(url: &str) -> String {
    match check_scheme(url) {
        Ok(Backend::Postgres) => PgConnectOptions::from_str(url)
            .map_or_else(|_| "postgres://(an invalid URL)".to_owned(), |options| postgres_server(&options)),
        _ => url.to_owned(),
    }
}

/// The database a URL names, refusing any other kind: SQLite takes whatever follows an
/// optional `sqlite:` for a file path, and would turn `mysql://host/db` into a local file
/// under a new folder `mysql:`. A plain path (no scheme) is a SQLite file. The error names
/// the scheme only: the rest of such a URL may hold a password.
fn check_scheme(url: &str) -> anyhow::Result<Backend> {
    let scheme = url.split_once(':').map(|(scheme, _)| scheme).filter(|scheme| {
        scheme.starts_with(|c: char| c.is_ascii_alphabetic())
            && scheme.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
    });
    match scheme {
        None | Some("sqlite") => Ok(Backend::Sqlite),
        Some("postgres" | "postgresql") => Ok(Backend::Postgres),
        Some(scheme) => anyhow::bail!(
            "unsupported database URL scheme {scheme:?}: gradscope stores its data in SQLite or PostgreSQL; \
             give sqlite://PATH (the file is created when missing), a plain file path, or \
             postgres://USER:PASSWORD@HOST:PORT/DATABASE"
        ),
    }
}

/// A migrated store on `backend` for tests, with what holds its data (a folder or a
/// scratch database) until the test ends.
#[cfg(test)]
pub(crate) async fn test_store(backend: Backend) -> (Store, Box<dyn std::any::Any>) {
    let (url, guard): (String, Box<dyn std::any::Any>) = match backend {
        Backend::Sqlite => {
            let dir = tempfile::TempDir::new().expect("temp dir");
            (format!("sqlite://{}", dir.path().join("db.sqlite").display()), Box::new(dir))
        }
        Backend::Postgres => {
            let db = scratch::ScratchDatabase::create().await.expect("a scratch PostgreSQL database");
            (db.url().to_owned(), Box::new(db))
        }
    };
    let store = Store::connect(&url).await.expect("database");
    store.migrate().await.expect("migrate");
    (store, guard)
}

#[cfg(test)]
mod tests {
    use super::{Backend, check_scheme, describe_url};

    #[test]
    fn sqlite_and_postgres_urls_and_plain_paths_are_taken() {
        for url in ["sqlite://./data/gradscope.db", "sqlite:data.db", "./data/x.db", "/tmp/a:b.db"] {
            assert_eq!(check_scheme(url).expect(url), Backend::Sqlite, "{url}");
        }
        for url in ["postgres://user:secret@127.0.0.1:5432/test", "postgresql://localhost/db"] {
            assert_eq!(check_scheme(url).expect(url), Backend::Postgres, "{url}");
        }
        for (url, scheme) in [
            ("mysql://root:secret@localhost/test", "mysql"),
            ("mariadb://root:secret@localhost/test", "mariadb"),
            ("file:data.db", "file"),
        ] {
            let message = check_scheme(url).expect_err(url).to_string();
            assert!(message.contains(&format!("{scheme:?}")) && message.contains("sqlite://"), "{message}");
            assert!(!message.contains("secret"), "the password stays out of the message: {message}");
        }
    }

    #[test]
    fn logs_name_a_postgres_database_without_its_password() {
        assert_eq!(
            describe_url("postgres://user:secret@db.example:5433/gradscope"),
            "postgres://db.example:5433/gradscope"
        );
        assert_eq!(describe_url("postgresql://user:secret@localhost/db"), "postgres://localhost:5432/db");
        assert_eq!(describe_url("sqlite://./data/gradscope.db"), "sqlite://./data/gradscope.db");
    }
}
