//! The two databases behind one set of statements: SQLite (a file, the default) and
//! PostgreSQL (shared by several nodes). Statements are written once, with `?` for their
//! parameters, and bound with values both drivers encode; PostgreSQL gets them numbered
//! (`$1`, `$2`, …). The few places where the dialects differ ask [`Backend`] for their
//! form.

use std::borrow::Cow;

use futures::TryStreamExt;
use sqlx::error::BoxDynError;
use sqlx::postgres::{PgArguments, PgConnection, PgPool, PgRow, Postgres};
use sqlx::sqlite::{Sqlite, SqliteArguments, SqliteConnection, SqlitePool, SqliteRow};
use sqlx::{Arguments, ColumnIndex, Decode, Encode, Type};

/// Which database a store keeps its data in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    /// `column IN` the integers of a JSON array bound as text (SQLite's `json_each`,
    /// PostgreSQL's `json_array_elements_text`).
    pub(super) fn in_json_integers(self) -> &'static str {
        match self {
            Self::Sqlite => "IN (SELECT value FROM json_each(?))",
            Self::Postgres => "IN (SELECT CAST(value AS BIGINT) FROM json_array_elements_text(CAST(? AS JSON)))",
        }
    }

    /// `column IN` the strings of a JSON array bound as text.
    pub(super) fn in_json_strings(self) -> &'static str {
        match self {
            Self::Sqlite => "IN (SELECT value FROM json_each(?))",
            Self::Postgres => "IN (SELECT value FROM json_array_elements_text(CAST(? AS JSON)))",
        }
    }

    /// What ends a subquery that picks a queued job to claim: on PostgreSQL it locks the
    /// row it picks and passes over rows that other claimers hold, so claimers on several
    /// nodes each take a different job without waiting for each other.
    pub(super) fn skip_locked(self) -> &'static str {
        match self {
            Self::Sqlite => "",
            Self::Postgres => " FOR UPDATE SKIP LOCKED",
        }
    }

    /// The database's clock, in milliseconds since 1970, as an integer expression: lease
    /// and heartbeat times are all read off the one clock the nodes share, so a node whose
    /// own clock is off neither loses its jobs early nor keeps them too long.
    pub(super) fn now_ms(self) -> &'static str {
        match self {
            Self::Sqlite => "CAST((julianday('now') - 2440587.5) * 86400000.0 AS BIGINT)",
            Self::Postgres => "CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT)",
        }
    }

    /// The text at `path` (object keys, fixed by the caller) in the JSON text `column`.
    pub(super) fn json_text(self, column: &str, path: &[&str]) -> String {
        match self {
            Self::Sqlite => format!("json_extract({column}, '$.{}')", path.join(".")),
            Self::Postgres => {
                let (last, keys) = path.split_last().map_or((&"", &[][..]), |(last, keys)| (last, keys));
                let inner: String = keys.iter().map(|k| format!(" -> '{k}'")).collect();
                format!("(CAST({column} AS JSON){inner} ->> '{last}')")
            }
        }
    }

    /// The length in bytes of a text column (SQLite's `length` counts characters).
    pub(super) fn text_bytes(self, column: &str) -> String {
        match self {
            Self::Sqlite => format!("length(CAST({column} AS BLOB))"),
            Self::Postgres => format!("octet_length({column})"),
        }
    }
}

/// A pool of connections to either database.
#[derive(Debug, Clone)]
pub(super) enum Pool {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// An open transaction on either database.
pub(super) enum Tx {
    Sqlite(sqlx::Transaction<'static, Sqlite>),
    Postgres(sqlx::Transaction<'static, Postgres>),
}

/// A row read from either database.
pub(super) enum Row {
    Sqlite(SqliteRow),
    Postgres(PgRow),
}

/// Locks that serialise the writers that check a bound before they insert (PostgreSQL's
/// transaction-level advisory locks; SQLite has one writer at a time anyway).
#[derive(Debug, Clone, Copy)]
pub(super) enum WriteLock {
    /// The queue: its length is bounded.
    Queue = 1,
    /// Uploaded corpora, models and data sets: their count and bytes are bounded.
    Uploads = 2,
}

/// Where a statement runs, with its parameters so far.
enum Target<'e, 'q> {
    SqlitePool(&'e SqlitePool, SqliteArguments<'q>),
    Sqlite(&'e mut SqliteConnection, SqliteArguments<'q>),
    PgPool(&'e PgPool, PgArguments),
    Postgres(&'e mut PgConnection, PgArguments),
}

/// A statement being bound, run by one of its `fetch`/`execute` methods.
pub(super) struct Query<'e, 'q> {
    target: Target<'e, 'q>,
    sql: Cow<'q, str>,
    /// The first value that could not be encoded: reported when the statement runs.
    error: Option<BoxDynError>,
}

/// `sql` with its `?` parameters numbered `$1`, `$2`, … as PostgreSQL wants them (a `?`
/// inside a quoted string or name stays).
fn numbered(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len() + 16);
    let mut quote: Option<char> = None;
    let mut n = 0;
    for c in sql.chars() {
        match (quote, c) {
            (None, '\'' | '"') => {
                quote = Some(c);
                out.push(c);
            }
            (Some(q), c) if c == q => {
                quote = None;
                out.push(c);
            }
            (None, '?') => {
                n += 1;
                out.push('$');
                out.push_str(&n.to_string());
            }
            _ => out.push(c),
        }
    }
    out
}

impl Pool {
    pub(super) fn backend(&self) -> Backend {
        match self {
            Self::Sqlite(_) => Backend::Sqlite,
            Self::Postgres(_) => Backend::Postgres,
        }
    }

    /// A statement run on a connection of the pool.
    pub(super) fn query<'q>(&self, sql: &'q str) -> Query<'_, 'q> {
        match self {
            Self::Sqlite(pool) => Query::new(Target::SqlitePool(pool, SqliteArguments::default()), sql),
            Self::Postgres(pool) => Query::new(Target::PgPool(pool, PgArguments::default()), sql),
        }
    }

    /// A transaction that reads (and may write) one snapshot.
    pub(super) async fn begin(&self) -> sqlx::Result<Tx> {
        Ok(match self {
            Self::Sqlite(pool) => Tx::Sqlite(pool.begin().await?),
            Self::Postgres(pool) => Tx::Postgres(pool.begin().await?),
        })
    }

    /// A transaction that reads, then writes what it read depends on: SQLite takes its
    /// write lock at once (a read transaction that another writer overtook could not become
    /// a write one); PostgreSQL locks the rows or [`WriteLock`]s such a transaction names.
    pub(super) async fn begin_write(&self) -> sqlx::Result<Tx> {
        Ok(match self {
            Self::Sqlite(pool) => Tx::Sqlite(pool.begin_with("BEGIN IMMEDIATE").await?),
            Self::Postgres(pool) => Tx::Postgres(pool.begin().await?),
        })
    }

    pub(super) async fn close(&self) {
        match self {
            Self::Sqlite(pool) => pool.close().await,
            Self::Postgres(pool) => pool.close().await,
        }
    }
}

impl Tx {
    pub(super) fn backend(&self) -> Backend {
        match self {
            Self::Sqlite(_) => Backend::Sqlite,
            Self::Postgres(_) => Backend::Postgres,
        }
    }

    /// A statement run within the transaction.
    pub(super) fn query<'q>(&mut self, sql: &'q str) -> Query<'_, 'q> {
        match self {
            Self::Sqlite(tx) => Query::new(Target::Sqlite(tx, SqliteArguments::default()), sql),
            Self::Postgres(tx) => Query::new(Target::Postgres(tx, PgArguments::default()), sql),
        }
    }

    /// Waits for `lock` until the transaction ends (PostgreSQL; SQLite's write transaction
    /// holds the only write lock already).
    pub(super) async fn lock(&mut self, lock: WriteLock) -> anyhow::Result<()> {
        if self.backend() == Backend::Postgres {
            self.query("SELECT pg_advisory_xact_lock(?)").bind(lock as i64).execute().await?;
        }
        Ok(())
    }

    /// Locks job `job_id`'s row until the transaction ends, so that writers of one job's
    /// history take turns (PostgreSQL; SQLite's write transaction holds the only write lock
    /// already).
    pub(super) async fn lock_job(&mut self, job_id: &str) -> anyhow::Result<()> {
        if self.backend() == Backend::Postgres {
            self.query("SELECT id FROM jobs WHERE id = ? FOR UPDATE").bind(job_id).fetch_optional().await?;
        }
        Ok(())
    }

    pub(super) async fn commit(self) -> sqlx::Result<()> {
        match self {
            Self::Sqlite(tx) => tx.commit().await,
            Self::Postgres(tx) => tx.commit().await,
        }
    }

    pub(super) async fn rollback(self) -> sqlx::Result<()> {
        match self {
            Self::Sqlite(tx) => tx.rollback().await,
            Self::Postgres(tx) => tx.rollback().await,
        }
    }
}

impl Row {
    /// Column `index` (a name or a position) as `T`.
    pub(super) fn try_get<'r, T, I>(&'r self, index: I) -> sqlx::Result<T>
    where
        T: Decode<'r, Sqlite> + Type<Sqlite> + Decode<'r, Postgres> + Type<Postgres>,
        I: ColumnIndex<SqliteRow> + ColumnIndex<PgRow>,
    {
        match self {
            Self::Sqlite(row) => sqlx::Row::try_get(row, index),
            Self::Postgres(row) => sqlx::Row::try_get(row, index),
        }
    }
}

impl<'e, 'q> Query<'e, 'q> {
    fn new(target: Target<'e, 'q>, sql: &'q str) -> Self {
        let sql = match target {
            Target::SqlitePool(..) | Target::Sqlite(..) => Cow::Borrowed(sql),
            Target::PgPool(..) | Target::Postgres(..) => Cow::Owned(numbered(sql)),
        };
        Self { target, sql, error: None }
    }

    /// Binds the next parameter.
    #[must_use]
    pub(super) fn bind<T>(mut self, value: T) -> Self
    where
        T: 'q + Send + Encode<'q, Sqlite> + Type<Sqlite> + Encode<'q, Postgres> + Type<Postgres>,
    {
        let added = match &mut self.target {
            Target::SqlitePool(_, args) | Target::Sqlite(_, args) => args.add(value),
            Target::PgPool(_, args) | Target::Postgres(_, args) => args.add(value),
        };
        if let Err(error) = added {
            self.error.get_or_insert(error);
        }
        self
    }

    fn check(&mut self) -> anyhow::Result<()> {
        match self.error.take() {
            Some(error) => Err(anyhow::anyhow!("a parameter could not be encoded: {error}")),
            None => Ok(()),
        }
    }

    /// Runs the statement; returns how many rows it changed.
    pub(super) async fn execute(mut self) -> anyhow::Result<u64> {
        self.check()?;
        let sql = self.sql.as_ref();
        Ok(match self.target {
            Target::SqlitePool(pool, args) => sqlx::query_with(sql, args).execute(pool).await?.rows_affected(),
            Target::Sqlite(conn, args) => sqlx::query_with(sql, args).execute(conn).await?.rows_affected(),
            Target::PgPool(pool, args) => sqlx::query_with(sql, args).execute(pool).await?.rows_affected(),
            Target::Postgres(conn, args) => sqlx::query_with(sql, args).execute(conn).await?.rows_affected(),
        })
    }

    pub(super) async fn fetch_all(mut self) -> anyhow::Result<Vec<Row>> {
        self.check()?;
        let sql = self.sql.as_ref();
        Ok(match self.target {
            Target::SqlitePool(pool, args) => wrap(sqlx::query_with(sql, args).fetch_all(pool).await?, Row::Sqlite),
            Target::Sqlite(conn, args) => wrap(sqlx::query_with(sql, args).fetch_all(conn).await?, Row::Sqlite),
            Target::PgPool(pool, args) => wrap(sqlx::query_with(sql, args).fetch_all(pool).await?, Row::Postgres),
            Target::Postgres(conn, args) => wrap(sqlx::query_with(sql, args).fetch_all(conn).await?, Row::Postgres),
        })
    }

    pub(super) async fn fetch_optional(mut self) -> anyhow::Result<Option<Row>> {
        self.check()?;
        let sql = self.sql.as_ref();
        Ok(match self.target {
            Target::SqlitePool(pool, args) => sqlx::query_with(sql, args).fetch_optional(pool).await?.map(Row::Sqlite),
            Target::Sqlite(conn, args) => sqlx::query_with(sql, args).fetch_optional(conn).await?.map(Row::Sqlite),
            Target::PgPool(pool, args) => sqlx::query_with(sql, args).fetch_optional(pool).await?.map(Row::Postgres),
            Target::Postgres(conn, args) => sqlx::query_with(sql, args).fetch_optional(conn).await?.map(Row::Postgres),
        })
    }

    pub(super) async fn fetch_one(self) -> anyhow::Result<Row> {
        self.fetch_optional().await?.ok_or_else(|| anyhow::anyhow!("the statement returned no row"))
    }

    /// The first column of the one row the statement returns.
    pub(super) async fn fetch_scalar<T>(self) -> anyhow::Result<T>
    where
        T: for<'r> Decode<'r, Sqlite> + Type<Sqlite> + for<'r> Decode<'r, Postgres> + Type<Postgres>,
    {
        Ok(self.fetch_one().await?.try_get(0)?)
    }

    /// The first column of the first row the statement returns, if any.
    pub(super) async fn fetch_optional_scalar<T>(self) -> anyhow::Result<Option<T>>
    where
        T: for<'r> Decode<'r, Sqlite> + Type<Sqlite> + for<'r> Decode<'r, Postgres> + Type<Postgres>,
    {
        Ok(match self.fetch_optional().await? {
            Some(row) => Some(row.try_get(0)?),
            None => None,
        })
    }

    /// Hands each row to `each` as it arrives, without holding them all.
    pub(super) async fn for_each(mut self, mut each: impl FnMut(&Row) -> anyhow::Result<()>) -> anyhow::Result<()> {
        self.check()?;
        let sql = self.sql.as_ref();
        match self.target {
            Target::SqlitePool(pool, args) => {
                let mut rows = sqlx::query_with(sql, args).fetch(pool);
                while let Some(row) = rows.try_next().await? {
                    each(&Row::Sqlite(row))?;
                }
            }
            Target::Sqlite(conn, args) => {
                let mut rows = sqlx::query_with(sql, args).fetch(conn);
                while let Some(row) = rows.try_next().await? {
                    each(&Row::Sqlite(row))?;
                }
            }
            Target::PgPool(pool, args) => {
                let mut rows = sqlx::query_with(sql, args).fetch(pool);
                while let Some(row) = rows.try_next().await? {
                    each(&Row::Postgres(row))?;
                }
            }
            Target::Postgres(conn, args) => {
                let mut rows = sqlx::query_with(sql, args).fetch(conn);
                while let Some(row) = rows.try_next().await? {
                    each(&Row::Postgres(row))?;
                }
            }
        }
        Ok(())
    }
}

fn wrap<R>(rows: Vec<R>, into: fn(R) -> Row) -> Vec<Row> {
    rows.into_iter().map(into).collect()
}

#[cfg(test)]
mod tests {
    use super::numbered;

    #[test]
    fn parameters_are_numbered_outside_quotes() {
        assert_eq!(numbered("SELECT ? + ?, '?', \"a?\" WHERE x = ?"), "SELECT $1 + $2, '?', \"a?\" WHERE x = $3");
        assert_eq!(numbered("no parameters"), "no parameters");
    }
}
