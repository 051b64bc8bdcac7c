//! Periodic background work. Every long-lived loop of the server is one of these: the caller
//! (the application's supervisor) keeps the `JoinHandle`, and cancelling the token stops the
//! loop between two runs, never in the middle of one.

use std::future::Future;
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

/// Run `work` every `period` until `cancel`. The first run is one period after the call:
/// start-up has already done the work once.
pub fn every<F, Fut>(period: Duration, cancel: CancellationToken, mut work: F) -> JoinHandle<()>
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            // Biased: when a slow run (a store timing out) leaves the next tick already due,
            // a fair choice would go on running after cancellation half of the time.
            tokio::select! {
                biased;
                _ = cancel.cancelled() => break,
                _ = tick.tick() => work().await,
            }
        }
    })
}
