//! A throwaway PostgreSQL database per test, on the local server.

use sqlx::Connection;

/// The server tests use: `$TEST_POSTGRES_URL`, or the local one (trust auth, database `test`).
pub fn server_url() -> String {
    std::env::var("TEST_POSTGRES_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// A fresh, empty database, dropped (with its connections) when this is dropped.
#[derive(Debug)]
pub struct TestDatabase {
    name: String,
    url: String,
}

impl TestDatabase {
    /// Creates `broadcaster_test_<random>` on [`server_url`].
    ///
    /// Panics with a clear message when PostgreSQL is not reachable.
    pub async fn create() -> Self {
        let server = server_url();
        let name = format!("broadcaster_test_{}", uuid_like());
        let mut conn = sqlx::PgConnection::connect(&server).await.unwrap_or_else(|err| {
            panic!("cannot reach PostgreSQL at {server} ({err}); start it or set TEST_POSTGRES_URL")
        });
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
            .execute(&mut conn)
            .await
            .expect("CREATE DATABASE");
        let url = match server.rfind('/') {
            Some(slash) => format!("{}/{name}", &server[..slash]),
            None => panic!("TEST_POSTGRES_URL {server} has no database part"),
        };
        Self { name, url }
    }

    /// `postgres://…/<this database>`.
    pub fn url(&self) -> &str {
        &self.url
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop runs outside any runtime: use a small one of our own.
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().ok()?;
            runtime.block_on(async {
                let mut conn = sqlx::PgConnection::connect(&server_url()).await.ok()?;
                sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)")))
                    .execute(&mut conn)
                    .await
                    .ok()
            })
        })
        .join();
    }
}

fn uuid_like() -> String {
    use std::time::{SystemTime, UNIX_EPOCH};
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    format!("{:x}_{:x}", nanos, std::process::id())
}
