//! Persistence: the only module with SQL. One API over two backends — PostgreSQL for a fleet
//! of replicas, SQLite for one node and `tollgate dev` — with the same logical schema in
//! `migrations/postgres` and `migrations/sqlite`. Times are unix milliseconds, money integer
//! micro-dollars. Statements use `$n` placeholders, which both backends accept, so each query
//! is written once; [`on_db!`] runs it on whichever pool is configured.

mod audit;
mod budget;
mod increases;
mod keys;
mod notify;
mod pauses;
mod rates;
mod records;
mod rotations;
mod spend;
mod workers;

pub use audit::{AuditHead, AuditRecord};
pub use budget::{DAY_MS, LeaseRecord, LeaseReport};
pub use increases::{IncreaseRecord, IncreaseState, NewIncrease};
pub use keys::{ProviderKeyInventory, ProviderKeyRecord};
pub use notify::{Change, ChangeFeed};
pub use pauses::{PauseKind, PauseRecord, Velocity};
pub use rates::{RATE_BATCH, RateAsk};
pub use records::*;
pub use rotations::{
    NewRotation, RotationEvent, RotationRecord, RotationState, RotationTrigger, Transition,
    VersionOutcome,
};
pub use spend::{SpendGroup, SpendGroupBy};

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{PgPool, SqlitePool};
use std::str::FromStr;
use std::time::Duration;

static PG_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");
static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// Which database is behind the store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// PostgreSQL.
    Postgres,
    /// SQLite.
    Sqlite,
}

/// A store failure. Messages never contain the connection URL (it may hold a password).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The URL is not one we can use.
    #[error("database_url: {0}")]
    Url(String),
    /// The database could not be reached or refused a statement.
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    /// Migrations failed.
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A stored value does not decode.
    #[error("corrupt row in {table}: {reason}")]
    Corrupt {
        /// Table.
        table: &'static str,
        /// What is wrong.
        reason: String,
    },
}

#[derive(Clone, Debug)]
enum Db {
    Pg(PgPool),
    Lite(SqlitePool),
}

/// The store handle; cheap to clone.
#[derive(Clone, Debug)]
pub struct Store {
    db: Db,
}

/// Run the same expression against whichever pool is configured.
macro_rules! on_db {
    ($store:expr, $pool:ident => $body:expr) => {
        match &$store.db {
            Db::Pg($pool) => $body,
            Db::Lite($pool) => $body,
        }
    };
}
pub(crate) use on_db;

impl Store {
    /// Connect. `postgres://`/`postgresql://` → PostgreSQL; `sqlite:` → SQLite (created if
    /// missing, WAL, 5 s busy timeout, foreign keys on).
    pub async fn connect(url: &str, max_connections: u32) -> Result<Store, StoreError> {
        let db = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let opts = PgConnectOptions::from_str(url)
                .map_err(|_| StoreError::Url("not a valid PostgreSQL URL".into()))?;
            Db::Pg(
                PgPoolOptions::new()
                    .max_connections(max_connections)
                    .acquire_timeout(Duration::from_secs(5))
                    .connect_with(opts)
                    .await?,
            )
        } else if url.starts_with("sqlite:") {
            let opts = SqliteConnectOptions::from_str(url)
                .map_err(|_| StoreError::Url("not a valid SQLite URL".into()))?
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Normal)
                .busy_timeout(Duration::from_secs(5))
                .foreign_keys(true)
                .thread_name(workers::thread_name);
            Db::Lite(
                SqlitePoolOptions::new()
                    .max_connections(max_connections)
                    .acquire_timeout(Duration::from_secs(5))
                    .after_connect(|_, _| {
                        Box::pin(async {
                            workers::lower_priority();
                            Ok(())
                        })
                    })
                    .connect_with(opts)
                    .await?,
            )
        } else {
            return Err(StoreError::Url(
                "must start with postgres://, postgresql:// or sqlite:".into(),
            ));
        };
        Ok(Store { db })
    }

    /// Apply pending migrations (idempotent).
    pub async fn migrate(&self) -> Result<(), StoreError> {
        match &self.db {
            Db::Pg(p) => PG_MIGRATIONS.run(p).await?,
            Db::Lite(p) => SQLITE_MIGRATIONS.run(p).await?,
        }
        Ok(())
    }

    /// Is the database answering?
    pub async fn ping(&self) -> Result<(), StoreError> {
        on_db!(self, p => sqlx::query("SELECT 1").execute(p).await.map(|_| ())?);
        Ok(())
    }

    /// The backend in use.
    pub fn backend(&self) -> Backend {
        match self.db {
            Db::Pg(_) => Backend::Postgres,
            Db::Lite(_) => Backend::Sqlite,
        }
    }

    /// Close every connection.
    pub async fn close(&self) {
        on_db!(self, p => p.close().await);
    }

    // ---- signing keys -------------------------------------------------------------------

    /// Insert a signing key; `false` (not an error) when its generation or kid exists already.
    pub async fn insert_signing_key(&self, r: &SigningKeyRecord) -> Result<bool, StoreError> {
        let sql = "INSERT INTO signing_keys (kid, generation, algorithm, public_jwk, sealed_private_key, \
                   created_at, sign_from, sign_until, publish_until) \
                   VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT DO NOTHING";
        let n = on_db!(self, p => sqlx::query(sql)
            .bind(&r.kid).bind(r.generation).bind(&r.algorithm).bind(&r.public_jwk)
            .bind(&r.sealed_private_key).bind(r.created_at).bind(r.sign_from)
            .bind(r.sign_until).bind(r.publish_until)
            .execute(p).await?.rows_affected());
        Ok(n == 1)
    }

    /// Keys still published at `at` (publish_until > at), oldest generation first.
    pub async fn signing_keys(&self, at: i64) -> Result<Vec<SigningKeyRecord>, StoreError> {
        let sql = "SELECT kid, generation, algorithm, public_jwk, sealed_private_key, created_at, \
                   sign_from, sign_until, publish_until FROM signing_keys \
                   WHERE publish_until > $1 ORDER BY generation";
        Ok(
            on_db!(self, p => sqlx::query_as::<_, SigningKeyRecord>(sql).bind(at).fetch_all(p).await?),
        )
    }

    // ---- issued tokens ------------------------------------------------------------------

    /// Record minted tokens (idempotent on jti).
    pub async fn insert_issued_tokens(
        &self,
        rows: &[IssuedTokenRecord],
    ) -> Result<u64, StoreError> {
        let mut n = 0;
        for chunk in rows.chunks(1000) {
            n += on_db!(self, p => {
                let mut qb = sqlx::QueryBuilder::new(
                    "INSERT INTO tokens_issued (jti, subject, issuer, team, pool, binding, models, issued_at, expires_at, pod_uid) ",
                );
                qb.push_values(chunk, |mut b, r| {
                    b.push_bind(&r.jti).push_bind(&r.subject).push_bind(&r.issuer).push_bind(&r.team)
                        .push_bind(&r.pool).push_bind(&r.binding)
                        .push_bind(serde_json::to_string(&r.models).unwrap_or_else(|_| "[]".into()))
                        .push_bind(r.issued_at).push_bind(r.expires_at).push_bind(&r.pod_uid);
                });
                qb.push(" ON CONFLICT (jti) DO NOTHING");
                qb.build().execute(p).await?.rows_affected()
            });
        }
        Ok(n)
    }

    /// Tokens of `subject` still valid at `valid_at`.
    pub async fn issued_tokens_for_subject(
        &self,
        subject: &str,
        valid_at: i64,
    ) -> Result<Vec<IssuedTokenRecord>, StoreError> {
        let sql = "SELECT jti, subject, issuer, team, pool, binding, models, issued_at, expires_at, pod_uid \
                   FROM tokens_issued WHERE subject = $1 AND expires_at > $2 ORDER BY issued_at";
        let rows = on_db!(self, p => sqlx::query_as::<_, IssuedTokenRow>(sql).bind(subject).bind(valid_at).fetch_all(p).await?);
        rows.into_iter().map(IssuedTokenRow::into_record).collect()
    }

    /// Issued tokens, newest first: of one subject or all, still valid at `valid_at` or
    /// (`None`) expired ones too, at most `limit`.
    pub async fn issued_tokens(
        &self,
        subject: Option<&str>,
        valid_at: Option<i64>,
        limit: u32,
    ) -> Result<Vec<IssuedTokenRecord>, StoreError> {
        let sql = "SELECT jti, subject, issuer, team, pool, binding, models, issued_at, expires_at, pod_uid \
                   FROM tokens_issued WHERE (CAST($1 AS TEXT) IS NULL OR subject = $1) AND expires_at > $2 \
                   ORDER BY issued_at DESC, jti LIMIT $3";
        let rows = on_db!(self, p => sqlx::query_as::<_, IssuedTokenRow>(sql)
            .bind(subject).bind(valid_at.unwrap_or(i64::MIN)).bind(i64::from(limit))
            .fetch_all(p).await?);
        rows.into_iter().map(IssuedTokenRow::into_record).collect()
    }

    // ---- revocations --------------------------------------------------------------------

    /// Record a revocation.
    pub async fn insert_revocation(
        &self,
        r: &NewRevocation,
    ) -> Result<RevocationRecord, StoreError> {
        let sql = "INSERT INTO revocations (kind, value, reason, created_at, expires_at, created_by) \
                   VALUES ($1, $2, $3, $4, $5, $6) RETURNING id";
        let id: i64 = on_db!(self, p => sqlx::query_scalar(sql)
            .bind(r.kind.as_str()).bind(&r.value).bind(&r.reason).bind(r.created_at)
            .bind(r.expires_at).bind(&r.created_by)
            .fetch_one(p).await?);
        Ok(RevocationRecord {
            id,
            kind: r.kind,
            value: r.value.clone(),
            reason: r.reason.clone(),
            created_at: r.created_at,
            expires_at: r.expires_at,
            created_by: r.created_by.clone(),
        })
    }

    /// Revocations not expired at `at`.
    pub async fn active_revocations(&self, at: i64) -> Result<Vec<RevocationRecord>, StoreError> {
        let sql = "SELECT id, kind, value, reason, created_at, expires_at, created_by FROM revocations \
                   WHERE expires_at IS NULL OR expires_at > $1 ORDER BY id";
        let rows =
            on_db!(self, p => sqlx::query_as::<_, RevocationRow>(sql).bind(at).fetch_all(p).await?);
        rows.into_iter().map(RevocationRow::into_record).collect()
    }

    /// Delete revocations that can no longer refuse anything: those past their expiry at
    /// `now`, and `jti` revocations made before `jti_before` (every token they could match
    /// has expired by then). Returns how many were deleted.
    pub async fn purge_revocations(&self, now: i64, jti_before: i64) -> Result<u64, StoreError> {
        let sql = "DELETE FROM revocations WHERE (expires_at IS NOT NULL AND expires_at <= $1) \
                   OR (kind = 'jti' AND created_at < $2)";
        let n = on_db!(self, p => sqlx::query(sql).bind(now).bind(jti_before).execute(p).await?.rows_affected());
        Ok(n)
    }

    /// One revocation by id, active or lapsed (until purged).
    pub async fn revocation(&self, id: i64) -> Result<Option<RevocationRecord>, StoreError> {
        let sql = "SELECT id, kind, value, reason, created_at, expires_at, created_by FROM revocations WHERE id = $1";
        let row = on_db!(self, p => sqlx::query_as::<_, RevocationRow>(sql).bind(id).fetch_optional(p).await?);
        row.map(RevocationRow::into_record).transpose()
    }

    /// Delete every revocation of `kind` and `value` (re-enabling a provider key); returns how
    /// many there were.
    pub async fn delete_revocations_of(
        &self,
        kind: RevocationKind,
        value: &str,
    ) -> Result<u64, StoreError> {
        let sql = "DELETE FROM revocations WHERE kind = $1 AND value = $2";
        let n = on_db!(self, p => sqlx::query(sql).bind(kind.as_str()).bind(value).execute(p).await?.rows_affected());
        Ok(n)
    }

    /// Lift a revocation; `false` when it did not exist.
    pub async fn delete_revocation(&self, id: i64) -> Result<bool, StoreError> {
        let n = on_db!(self, p => sqlx::query("DELETE FROM revocations WHERE id = $1").bind(id).execute(p).await?.rows_affected());
        Ok(n == 1)
    }
}

#[cfg(test)]
mod tests;
