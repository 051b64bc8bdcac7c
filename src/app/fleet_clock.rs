//! The fleet's clock: this replica follows the store's clock (see `crate::clock`). Measured
//! once before the replica mints or verifies anything, then every [`EVERY`]; a store that
//! cannot be reached leaves the last measurement in force.

use crate::store::Store;
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How often the store's clock is read again (an NTP step on this host or the store's is
/// followed within this).
pub const EVERY: Duration = Duration::from_secs(10);

/// Read the store's clock and follow it. Logged when the correction changes.
pub async fn sync(store: &Store) {
    let sent = crate::clock::host_ms();
    let read = store.clock_ms().await;
    let received = crate::clock::host_ms();
    match read {
        Ok(store_ms) => {
            let offset = crate::clock::offset_of(sent, store_ms, received);
            if crate::clock::follow_store(offset) {
                tracing::warn!(
                    offset_ms = offset,
                    round_trip_ms = received - sent,
                    "this host's clock differs from the store's: the replica follows the store's"
                );
            }
        }
        Err(e) => {
            tracing::debug!(error = %e, "cannot read the store's clock; the last reading stays")
        }
    }
}

/// Keep following the store's clock until `cancel`.
pub fn spawn(store: Store, cancel: CancellationToken) -> JoinHandle<()> {
    crate::tasks::every(EVERY, cancel, move || {
        let store = store.clone();
        async move { sync(&store).await }
    })
}
