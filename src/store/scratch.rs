//! A fresh PostgreSQL database for tests and benchmarks, dropped when it goes out of scope.
//! The server is `GRADSCOPE_TEST_POSTGRES` (a URL of an existing database the new one is
//! created from), by default the development server `postgres://postgres@127.0.0.1:5432/test`.

use std::str::FromStr;

use anyhow::Context;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sqlx::Connection;
use sqlx::postgres::{PgConnectOptions, PgConnection};

/// The server tests use when `GRADSCOPE_TEST_POSTGRES` does not name one.
pub const DEFAULT_TEST_POSTGRES: &str = "postgres://postgres@127.0.0.1:5432/test";

/// A database `gradscope_test_<random>` on the test server; dropped (with any connections
/// still open to it) when this is dropped, a failed test's included.
#[derive(Debug)]
pub struct ScratchDatabase {
    admin: PgConnectOptions,
    name: String,
    url: String,
}

impl ScratchDatabase {
    pub async fn create() -> anyhow::Result<Self> {
        let server = std::env::var("GRADSCOPE_TEST_POSTGRES").unwrap_or_else(|_| DEFAULT_TEST_POSTGRES.to_owned());
        let admin = PgConnectOptions::from_str(&server).context("GRADSCOPE_TEST_POSTGRES is not a PostgreSQL URL")?;
        let name = format!("gradscope_test_{:016x}", StdRng::from_os_rng().random::<u64>());
        let mut conn = PgConnection::connect_with(&admin).await.with_context(|| {
            format!("no PostgreSQL server for the tests at {}:{}", admin.get_host(), admin.get_port())
        })?;
        sqlx::raw_sql(&format!("CREATE DATABASE {name}")).execute(&mut conn).await?;
        conn.close().await?;
        // The same server and credentials, the new database.
        let mut url = url_without_database(&server);
        url.push('/');
        url.push_str(&name);
        Ok(Self { admin, name, url })
    }

    /// The URL of the new database.
    pub fn url(&self) -> &str {
        &self.url
    }
}

/// `postgres://user@host:port` of `postgres://user@host:port/db?options`.
fn url_without_database(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("postgres", url));
    let authority = rest.split(['/', '?']).next().unwrap_or(rest);
    format!("{scheme}://{authority}")
}

impl Drop for ScratchDatabase {
    fn drop(&mut self) {
        let (admin, name) = (self.admin.clone(), self.name.clone());
        // Its own runtime on its own thread: a drop may run inside an async test.
        let dropped = std::thread::spawn(move || -> anyhow::Result<()> {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            runtime.block_on(async {
                let mut conn = PgConnection::connect_with(&admin).await?;
                sqlx::raw_sql(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).execute(&mut conn).await?;
                conn.close().await?;
                Ok(())
            })
        })
        .join();
        if !matches!(dropped, Ok(Ok(()))) {
            eprintln!("could not drop the test database {}", self.name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::url_without_database;

    #[test]
    fn the_database_is_cut_from_the_url() {
        assert_eq!(
            url_without_database("postgres://postgres@127.0.0.1:5432/test"),
            "postgres://postgres@127.0.0.1:5432"
        );
        assert_eq!(url_without_database("postgresql://u:p@h/db?sslmode=disable"), "postgresql://u:p@h");
        assert_eq!(url_without_database("postgres://h:5432"), "postgres://h:5432");
    }
}
