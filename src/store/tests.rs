//! Unit tests on SQLite; `tests/store.rs` runs the suite against both backends.
use super::*;

async fn store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("t.db").display());
    let s = Store::connect(&url, 2).await.unwrap();
    s.migrate().await.unwrap();
    (dir, s)
}

#[tokio::test]
async fn unknown_url_scheme_is_refused_without_echoing_it() {
    let err = Store::connect("mysql://user:hunter2@db/x", 1)
        .await
        .unwrap_err()
        .to_string();
    assert!(!err.contains("hunter2"), "{err}");
}

#[tokio::test]
async fn migrate_twice_is_a_no_op() {
    let (_d, s) = store().await;
    s.migrate().await.unwrap();
    s.ping().await.unwrap();
    assert_eq!(s.backend(), Backend::Sqlite);
}
