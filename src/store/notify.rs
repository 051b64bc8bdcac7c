//! Change notifications: PostgreSQL `LISTEN` on the channel the migrations' triggers
//! `NOTIFY` (see `0008_change_notify.sql`). SQLite has none: one node applies its own writes.

use super::{Db, Store, StoreError};

/// The channel revocation and pause changes are announced on.
const REVOCATIONS_CHANNEL: &str = "tollgate_revocations";

/// What a wait on the feed saw.
#[derive(Debug, PartialEq, Eq)]
pub enum Change {
    /// One or more notifications (coalesced: everything already buffered was consumed).
    Notified,
    /// The connection dropped and was re-established: notifications in between were missed.
    Reconnected,
}

/// A dedicated connection listening for changes.
pub struct ChangeFeed {
    listener: sqlx::postgres::PgListener,
}

impl Store {
    /// Listen for revocation and pause changes; `None` on SQLite.
    pub async fn revocation_feed(&self) -> Result<Option<ChangeFeed>, StoreError> {
        let Db::Pg(pool) = &self.db else {
            return Ok(None);
        };
        let mut listener = sqlx::postgres::PgListener::connect_with(pool).await?;
        listener.listen(REVOCATIONS_CHANNEL).await?;
        Ok(Some(ChangeFeed { listener }))
    }
}

impl ChangeFeed {
    /// Wait for the next change. A connection that cannot be re-established is an error;
    /// the next call tries again.
    pub async fn wait(&mut self) -> Result<Change, StoreError> {
        match self.listener.try_recv().await? {
            Some(_) => {
                while self.listener.next_buffered().is_some() {}
                Ok(Change::Notified)
            }
            None => Ok(Change::Reconnected),
        }
    }
}
