//! A fresh database per test: a SQLite file in a temp dir, or a new database on the
//! PostgreSQL cluster `scripts/test` started (`TOLLGATE_TEST_DATABASE_URL`). Without that
//! variable the PostgreSQL tests fail — they never skip.

use sqlx::Connection;
use tempfile::TempDir;

/// Which backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TestDbKind {
    Sqlite,
    Postgres,
}

/// Both, SQLite first.
pub fn kinds() -> [TestDbKind; 2] {
    [TestDbKind::Sqlite, TestDbKind::Postgres]
}

/// A database that lives as long as this value (PostgreSQL databases are dropped with the
/// throwaway cluster).
pub struct TestDb {
    pub url: String,
    _dir: Option<TempDir>,
}

impl TestDb {
    /// A database another test value created (replicas sharing one store).
    pub fn existing(url: &str) -> TestDb {
        TestDb {
            url: url.to_owned(),
            _dir: None,
        }
    }

    pub async fn new(kind: TestDbKind) -> TestDb {
        match kind {
            TestDbKind::Sqlite => {
                let dir = tempfile::tempdir().unwrap();
                let url = format!("sqlite://{}", dir.path().join("tollgate.db").display());
                TestDb {
                    url,
                    _dir: Some(dir),
                }
            }
            TestDbKind::Postgres => {
                let server = std::env::var("TOLLGATE_TEST_DATABASE_URL").unwrap_or_else(|_| {
                    panic!("PostgreSQL tests need TOLLGATE_TEST_DATABASE_URL: run scripts/test")
                });
                let name = format!("tollgate_test_{}", uuid::Uuid::new_v4().simple());
                let mut conn = sqlx::PgConnection::connect(&server)
                    .await
                    .unwrap_or_else(|e| {
                        panic!(
                            "cannot reach the test PostgreSQL at TOLLGATE_TEST_DATABASE_URL: {e}"
                        )
                    });
                sqlx::query(&format!("CREATE DATABASE {name}"))
                    .execute(&mut conn)
                    .await
                    .unwrap();
                conn.close().await.unwrap();
                let base = server.rsplit_once('/').map_or(server.as_str(), |(b, _)| b);
                TestDb {
                    url: format!("{base}/{name}"),
                    _dir: None,
                }
            }
        }
    }
}
