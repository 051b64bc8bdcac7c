use super::*;
use parking_lot::Mutex;

fn cfg() -> WriterConfig {
    WriterConfig {
        batch_size: 10,
        flush_interval: Duration::from_millis(20),
        queue_capacity: 1000,
        shutdown_deadline: Duration::from_secs(5),
    }
}

fn sink(store: Arc<Mutex<Vec<u32>>>, fail_first: Arc<AtomicU64>) -> Sink<u32> {
    Arc::new(move |rows: Vec<u32>| {
        let store = Arc::clone(&store);
        let fail_first = Arc::clone(&fail_first);
        Box::pin(async move {
            if fail_first.load(Ordering::SeqCst) > 0 {
                fail_first.fetch_sub(1, Ordering::SeqCst);
                return Err((rows, "down".to_owned()));
            }
            store.lock().extend(rows);
            Ok(())
        })
    })
}

#[tokio::test]
async fn rows_survive_store_failures_and_shutdown_flushes_everything() {
    let out = Arc::new(Mutex::new(Vec::new()));
    let cancel = CancellationToken::new();
    let (w, h) = Writer::spawn(
        "t",
        cfg(),
        sink(Arc::clone(&out), Arc::new(AtomicU64::new(3))),
        None,
        cancel.clone(),
    );
    for i in 0..95 {
        assert!(w.record(i));
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    cancel.cancel();
    h.await.unwrap();
    let mut got = out.lock().clone();
    got.sort_unstable();
    assert_eq!(
        got,
        (0..95).collect::<Vec<_>>(),
        "nothing lost, nothing doubled"
    );
}

#[tokio::test]
async fn rows_are_written_within_the_flush_interval() {
    let out = Arc::new(Mutex::new(Vec::new()));
    let cancel = CancellationToken::new();
    let (w, _h) = Writer::spawn(
        "t",
        cfg(),
        sink(Arc::clone(&out), Arc::new(AtomicU64::new(0))),
        None,
        cancel.clone(),
    );
    w.record(7);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(*out.lock(), vec![7]);
    cancel.cancel();
}

/// A store that is down while `down` is set and records what it took, in order.
fn switchable(store: Arc<Mutex<Vec<u32>>>, down: Arc<std::sync::atomic::AtomicBool>) -> Sink<u32> {
    Arc::new(move |rows: Vec<u32>| {
        let store = Arc::clone(&store);
        let down = Arc::clone(&down);
        Box::pin(async move {
            if down.load(Ordering::SeqCst) {
                return Err((rows, "down".to_owned()));
            }
            store.lock().extend(rows);
            Ok(())
        })
    })
}

async fn until(what: &str, mut ok: impl FnMut() -> bool) {
    let end = std::time::Instant::now() + Duration::from_secs(10);
    while !ok() {
        assert!(
            std::time::Instant::now() < end,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A writer over a store that is down while `down` is set, spooling to `dir`.
struct Spooled {
    w: Writer<u32>,
    h: JoinHandle<()>,
    cancel: CancellationToken,
}

fn spooled(
    dir: &std::path::Path,
    max: u64,
    on_full: OnFull,
    out: &Arc<Mutex<Vec<u32>>>,
    down: &Arc<std::sync::atomic::AtomicBool>,
) -> Spooled {
    let cancel = CancellationToken::new();
    let (w, h) = Writer::spawn(
        "t",
        cfg(),
        switchable(Arc::clone(out), Arc::clone(down)),
        Some(Overflow {
            spool: Spool::open(dir, max).unwrap(),
            on_full,
        }),
        cancel.clone(),
    );
    Spooled { w, h, cancel }
}

#[tokio::test]
async fn an_outage_spools_rows_to_disk_and_they_reach_the_store_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let out = Arc::new(Mutex::new(Vec::new()));
    let down = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let Spooled { w, h, cancel } = spooled(dir.path(), 1 << 20, OnFull::Refuse, &out, &down);
    for i in 0..50 {
        assert!(w.record(i));
        if i % 10 == 0 {
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
    until("rows on disk", || {
        w.status().spool_batches > 0 && w.queued() == 0
    })
    .await;
    assert_eq!(w.status().state, WriterState::Spooling);
    assert!(w.accepting(), "spooling still accepts work");
    assert!(out.lock().is_empty());
    down.store(false, Ordering::SeqCst);
    for i in 50..60 {
        w.record(i);
    }
    until("backlog replayed", || out.lock().len() == 60).await;
    assert_eq!(
        *out.lock(),
        (0..60).collect::<Vec<_>>(),
        "in order, once each"
    );
    until("direct again", || w.status().state == WriterState::Direct).await;
    assert_eq!(w.status().spool_bytes, 0);
    cancel.cancel();
    h.await.unwrap();
}

#[tokio::test]
async fn rows_spooled_at_shutdown_are_replayed_by_the_next_start() {
    let dir = tempfile::tempdir().unwrap();
    let out = Arc::new(Mutex::new(Vec::new()));
    let down = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let Spooled { w, h, cancel } = spooled(dir.path(), 1 << 20, OnFull::Refuse, &out, &down);
    for i in 0..25 {
        w.record(i);
    }
    cancel.cancel();
    h.await.unwrap();
    assert!(out.lock().is_empty());

    down.store(false, Ordering::SeqCst);
    let Spooled { w, h, cancel } = spooled(dir.path(), 1 << 20, OnFull::Refuse, &out, &down);
    w.record(25);
    until("the previous run's rows", || out.lock().len() == 26).await;
    assert_eq!(*out.lock(), (0..26).collect::<Vec<_>>());
    cancel.cancel();
    h.await.unwrap();
}

#[tokio::test]
async fn a_full_spool_holds_rows_in_memory_and_refuses_new_work_until_the_store_returns() {
    for on_full in [OnFull::Refuse, OnFull::Serve] {
        let dir = tempfile::tempdir().unwrap();
        let out = Arc::new(Mutex::new(Vec::new()));
        let down = Arc::new(std::sync::atomic::AtomicBool::new(true));
        // Room for about one batch of ten small numbers.
        let Spooled { w, h, cancel } = spooled(dir.path(), 30, on_full, &out, &down);
        for i in 0..40 {
            w.record(i);
        }
        until("holding", || w.status().state == WriterState::Holding).await;
        assert!(w.status().held > 0);
        assert_eq!(w.accepting(), on_full == OnFull::Serve, "{on_full:?}");
        down.store(false, Ordering::SeqCst);
        until("everything written", || out.lock().len() == 40).await;
        assert_eq!(*out.lock(), (0..40).collect::<Vec<_>>());
        until("direct again", || w.status().state == WriterState::Direct).await;
        assert!(w.accepting());
        assert_eq!(w.dropped(), 0);
        cancel.cancel();
        h.await.unwrap();
    }
}
