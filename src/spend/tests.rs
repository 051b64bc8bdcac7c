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
        cancel.clone(),
    );
    w.record(7);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(*out.lock(), vec![7]);
    cancel.cancel();
}
