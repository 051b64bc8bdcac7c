//! Rotations of provider keys and their event history. Every transition is one conditional
//! update (on the state it leaves and on the leader holding the lease) plus its event, in one
//! transaction: a step taken twice, or by a replica that lost its lease, changes nothing.

use super::{Db, Store, StoreError, on_db};

/// Where a rotation stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RotationState {
    /// A pending version exists; nothing serves it yet.
    Staged,
    /// A live call with the pending version succeeded.
    Tested,
    /// A share of the key's traffic goes to the pending version.
    Canary,
    /// The pending version is current in the secret store and serves everything.
    Promoted,
    /// The old version is kept for in-flight and retried requests until the drain ends.
    Draining,
    /// Done: the old version is retired.
    Retired,
    /// Ended without promotion (or undone after it): the old version serves.
    RolledBack,
}

impl RotationState {
    /// Every state, in order.
    pub const ALL: [RotationState; 7] = [
        RotationState::Staged,
        RotationState::Tested,
        RotationState::Canary,
        RotationState::Promoted,
        RotationState::Draining,
        RotationState::Retired,
        RotationState::RolledBack,
    ];

    /// Stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            RotationState::Staged => "staged",
            RotationState::Tested => "tested",
            RotationState::Canary => "canary",
            RotationState::Promoted => "promoted",
            RotationState::Draining => "draining",
            RotationState::Retired => "retired",
            RotationState::RolledBack => "rolled_back",
        }
    }

    /// The inverse of [`RotationState::as_str`].
    pub fn parse(s: &str) -> Option<RotationState> {
        RotationState::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// Retired or rolled back: nothing more happens.
    pub fn is_final(self) -> bool {
        matches!(self, RotationState::Retired | RotationState::RolledBack)
    }

    /// Has the pending version become the one served?
    pub fn is_promoted(self) -> bool {
        matches!(self, RotationState::Promoted | RotationState::Draining)
    }
}

/// What started a rotation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RotationTrigger {
    /// An operator (API or CLI).
    Manual,
    /// A policy schedule.
    Schedule,
    /// An incident: canary skipped, short drain.
    Emergency,
}

impl RotationTrigger {
    /// Stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            RotationTrigger::Manual => "manual",
            RotationTrigger::Schedule => "schedule",
            RotationTrigger::Emergency => "emergency",
        }
    }

    fn parse(s: &str) -> Option<RotationTrigger> {
        [
            RotationTrigger::Manual,
            RotationTrigger::Schedule,
            RotationTrigger::Emergency,
        ]
        .into_iter()
        .find(|t| t.as_str() == s)
    }
}

/// A rotation to record.
#[derive(Clone, Debug)]
pub struct NewRotation {
    /// Key id.
    pub key_id: String,
    /// Version served when it started.
    pub from_version: String,
    /// The pending version it moves to.
    pub to_version: String,
    /// Why.
    pub trigger: RotationTrigger,
    /// Skip the canary, drain briefly.
    pub emergency: bool,
    /// Who asked (admin name, `schedule:<name>`, …).
    pub requested_by: String,
    /// The provider's id of the new key, when a key issuer created it.
    pub issued_ref: Option<String>,
    /// Unix ms.
    pub now: i64,
}

/// A stored rotation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RotationRecord {
    /// Id.
    pub id: i64,
    /// Key id.
    pub key_id: String,
    /// Version served before.
    pub from_version: String,
    /// Version served after.
    pub to_version: String,
    /// State.
    pub state: RotationState,
    /// What started it.
    pub trigger: RotationTrigger,
    /// Emergency mode.
    pub emergency: bool,
    /// Who asked.
    pub requested_by: String,
    /// Unix ms.
    pub created_at: i64,
    /// When the current state was entered (unix ms).
    pub updated_at: i64,
    /// Replica holding the lease.
    pub leader: Option<String>,
    /// Until when (store clock, unix ms).
    pub lease_until: Option<i64>,
    /// The last step's result, or why it was rolled back.
    pub outcome: Option<String>,
    /// An abort asked for, and by whom.
    pub abort_requested_by: Option<String>,
    /// The provider's id of the new key, when a key issuer created it.
    pub issued_ref: Option<String>,
}

#[derive(sqlx::FromRow)]
struct RotationRow {
    id: i64,
    key_id: String,
    from_version: String,
    to_version: String,
    state: String,
    trigger: String,
    emergency: bool,
    requested_by: String,
    created_at: i64,
    updated_at: i64,
    leader: Option<String>,
    lease_until: Option<i64>,
    outcome: Option<String>,
    abort_requested_by: Option<String>,
    issued_ref: Option<String>,
}

impl RotationRow {
    fn into_record(self) -> Result<RotationRecord, StoreError> {
        let corrupt = |what: &str, v: &str| StoreError::Corrupt {
            table: "rotations",
            reason: format!("unknown {what} {v:?}"),
        };
        Ok(RotationRecord {
            state: RotationState::parse(&self.state)
                .ok_or_else(|| corrupt("state", &self.state))?,
            trigger: RotationTrigger::parse(&self.trigger)
                .ok_or_else(|| corrupt("trigger", &self.trigger))?,
            id: self.id,
            key_id: self.key_id,
            from_version: self.from_version,
            to_version: self.to_version,
            emergency: self.emergency,
            requested_by: self.requested_by,
            created_at: self.created_at,
            updated_at: self.updated_at,
            leader: self.leader,
            lease_until: self.lease_until,
            outcome: self.outcome,
            abort_requested_by: self.abort_requested_by,
            issued_ref: self.issued_ref,
        })
    }
}

/// One step of a rotation's history.
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct RotationEvent {
    /// 1, 2, … per rotation.
    pub seq: i32,
    /// Unix ms.
    pub at: i64,
    /// State left (none for the first event).
    pub from_state: Option<String>,
    /// State entered.
    pub to_state: String,
    /// Replica or admin that took the step.
    pub actor: String,
    /// The step's inputs and result (JSON object).
    pub detail: String,
}

/// A transition to apply.
#[derive(Clone, Debug)]
pub struct Transition<'a> {
    /// State it leaves (the update applies only if the rotation is still there).
    pub from: RotationState,
    /// State it enters.
    pub to: RotationState,
    /// Replica taking it (must hold the lease).
    pub leader: &'a str,
    /// Result to show.
    pub outcome: &'a str,
    /// Inputs and result (JSON object).
    pub detail: serde_json::Value,
    /// Unix ms.
    pub now: i64,
}

/// Requests served by one version of a key, and how many the provider failed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VersionOutcome {
    /// Requests.
    pub requests: i64,
    /// Answered 401, 403 or 5xx (or no answer: 502/504).
    pub errors: i64,
    /// Of those, 401/403: the provider refused the key itself.
    pub refused: i64,
}

const COLUMNS: &str = "id, key_id, from_version, to_version, state, trigger, emergency, requested_by, \
     created_at, updated_at, leader, lease_until, outcome, abort_requested_by, issued_ref";
const OPEN: &str = "state NOT IN ('retired', 'rolled_back')";

impl Store {
    /// Record a rotation in `staged`, unless the key has one that is not finished. Returns
    /// the rotation in force and whether this call created it.
    pub async fn start_rotation(
        &self,
        r: &NewRotation,
    ) -> Result<(RotationRecord, bool), StoreError> {
        let insert = format!(
            "INSERT INTO rotations (key_id, from_version, to_version, state, trigger, emergency, \
             requested_by, created_at, updated_at, issued_ref) \
             VALUES ($1, $2, $3, 'staged', $4, $5, $6, $7, $7, $8) \
             ON CONFLICT DO NOTHING RETURNING {COLUMNS}"
        );
        let event = "INSERT INTO rotation_events (rotation_id, seq, at, from_state, to_state, actor, detail) \
                     VALUES ($1, 1, $2, NULL, 'staged', $3, $4)";
        let detail = serde_json::json!({
            "from_version": r.from_version, "to_version": r.to_version,
            "trigger": r.trigger.as_str(), "emergency": r.emergency,
            "issued": r.issued_ref.is_some(),
        })
        .to_string();
        let created = on_db!(self, p => {
            let mut tx = p.begin().await?;
            let row = sqlx::query_as::<_, RotationRow>(&insert)
                .bind(&r.key_id).bind(&r.from_version).bind(&r.to_version)
                .bind(r.trigger.as_str()).bind(r.emergency).bind(&r.requested_by).bind(r.now)
                .bind(&r.issued_ref)
                .fetch_optional(&mut *tx).await?;
            if let Some(row) = &row {
                sqlx::query(event).bind(row.id).bind(r.now).bind(&r.requested_by).bind(&detail)
                    .execute(&mut *tx).await?;
            }
            tx.commit().await?;
            row
        });
        if let Some(row) = created {
            return Ok((row.into_record()?, true));
        }
        let open = self.open_rotation_of(&r.key_id).await?;
        // Finished between the insert and the read: a new one may start now.
        match open {
            Some(o) => Ok((o, false)),
            None => Box::pin(self.start_rotation(r)).await,
        }
    }

    /// The unfinished rotation of one key.
    pub async fn open_rotation_of(
        &self,
        key_id: &str,
    ) -> Result<Option<RotationRecord>, StoreError> {
        let sql = format!("SELECT {COLUMNS} FROM rotations WHERE key_id = $1 AND {OPEN}");
        let row = on_db!(self, p => sqlx::query_as::<_, RotationRow>(&sql).bind(key_id).fetch_optional(p).await?);
        row.map(RotationRow::into_record).transpose()
    }

    /// Every unfinished rotation, oldest first (replicas route by them).
    pub async fn open_rotations(&self) -> Result<Vec<RotationRecord>, StoreError> {
        let sql = format!("SELECT {COLUMNS} FROM rotations WHERE {OPEN} ORDER BY id");
        let rows = on_db!(self, p => sqlx::query_as::<_, RotationRow>(&sql).fetch_all(p).await?);
        rows.into_iter().map(RotationRow::into_record).collect()
    }

    /// What replicas route by: every unfinished rotation, and those finished at or after
    /// `finished_since` (a replica keeps routing a retired key's new version until its own
    /// listing shows it), oldest first.
    pub async fn rotations_for_routing(
        &self,
        finished_since: i64,
    ) -> Result<Vec<RotationRecord>, StoreError> {
        let sql =
            format!("SELECT {COLUMNS} FROM rotations WHERE {OPEN} OR updated_at >= $1 ORDER BY id");
        let rows = on_db!(self, p => sqlx::query_as::<_, RotationRow>(&sql).bind(finished_since).fetch_all(p).await?);
        rows.into_iter().map(RotationRow::into_record).collect()
    }

    /// Rotations newest first, of one key or all, at most `limit`.
    pub async fn rotations(
        &self,
        key_id: Option<&str>,
        limit: u32,
    ) -> Result<Vec<RotationRecord>, StoreError> {
        let sql = format!(
            "SELECT {COLUMNS} FROM rotations WHERE (CAST($1 AS TEXT) IS NULL OR key_id = $1) \
             ORDER BY id DESC LIMIT $2"
        );
        let rows = on_db!(self, p => sqlx::query_as::<_, RotationRow>(&sql)
            .bind(key_id).bind(i64::from(limit)).fetch_all(p).await?);
        rows.into_iter().map(RotationRow::into_record).collect()
    }

    /// One rotation.
    pub async fn rotation(&self, id: i64) -> Result<Option<RotationRecord>, StoreError> {
        let sql = format!("SELECT {COLUMNS} FROM rotations WHERE id = $1");
        let row = on_db!(self, p => sqlx::query_as::<_, RotationRow>(&sql).bind(id).fetch_optional(p).await?);
        row.map(RotationRow::into_record).transpose()
    }

    /// A rotation's history, in order.
    pub async fn rotation_events(&self, id: i64) -> Result<Vec<RotationEvent>, StoreError> {
        let sql = "SELECT seq, at, from_state, to_state, actor, detail FROM rotation_events \
                   WHERE rotation_id = $1 ORDER BY seq";
        Ok(on_db!(self, p => sqlx::query_as::<_, RotationEvent>(sql).bind(id).fetch_all(p).await?))
    }

    /// Take or renew the lease of an unfinished rotation for `lease_ms` (by the store's
    /// clock). `false`: another replica holds a lease that has not lapsed, or it is finished.
    pub async fn claim_rotation(
        &self,
        id: i64,
        replica: &str,
        lease_ms: i64,
    ) -> Result<bool, StoreError> {
        let now = self.db_now_ms();
        let sql = format!(
            "UPDATE rotations SET leader = $2, lease_until = {now} + $3 \
             WHERE id = $1 AND {OPEN} AND (leader IS NULL OR leader = $2 OR lease_until < {now})"
        );
        let n = on_db!(self, p => sqlx::query(&sql).bind(id).bind(replica).bind(lease_ms)
            .execute(p).await?.rows_affected());
        Ok(n == 1)
    }

    /// Give up a lease (a clean shutdown: another replica takes over at once).
    pub async fn release_rotation(&self, id: i64, replica: &str) -> Result<(), StoreError> {
        let sql =
            "UPDATE rotations SET leader = NULL, lease_until = NULL WHERE id = $1 AND leader = $2";
        on_db!(self, p => sqlx::query(sql).bind(id).bind(replica).execute(p).await.map(|_| ())?);
        Ok(())
    }

    /// Apply a transition with its event. `false` (nothing written) when the rotation is no
    /// longer in `t.from` or `t.leader` no longer leads it.
    pub async fn advance_rotation(&self, id: i64, t: &Transition<'_>) -> Result<bool, StoreError> {
        let update = "UPDATE rotations SET state = $2, updated_at = $3, outcome = $4 \
                      WHERE id = $1 AND state = $5 AND leader = $6";
        let event = "INSERT INTO rotation_events (rotation_id, seq, at, from_state, to_state, actor, detail) \
                     SELECT $1, COALESCE(MAX(seq), 0) + 1, $2, $3, $4, $5, $6 FROM rotation_events WHERE rotation_id = $1";
        let detail = t.detail.to_string();
        let done = on_db!(self, p => {
            let mut tx = p.begin().await?;
            let n = sqlx::query(update)
                .bind(id).bind(t.to.as_str()).bind(t.now).bind(t.outcome)
                .bind(t.from.as_str()).bind(t.leader)
                .execute(&mut *tx).await?.rows_affected();
            if n == 1 {
                sqlx::query(event).bind(id).bind(t.now).bind(t.from.as_str()).bind(t.to.as_str())
                    .bind(t.leader).bind(&detail).execute(&mut *tx).await?;
            }
            tx.commit().await?;
            n == 1
        });
        Ok(done)
    }

    /// Ask the leader to roll back an unfinished rotation. Returns it, or `None` when it is
    /// unknown or finished. Asking twice keeps the first asker.
    pub async fn request_rotation_abort(
        &self,
        id: i64,
        by: &str,
    ) -> Result<Option<RotationRecord>, StoreError> {
        let sql = format!(
            "UPDATE rotations SET abort_requested_by = COALESCE(abort_requested_by, $2) \
             WHERE id = $1 AND {OPEN} RETURNING {COLUMNS}"
        );
        let row = on_db!(self, p => sqlx::query_as::<_, RotationRow>(&sql).bind(id).bind(by).fetch_optional(p).await?);
        row.map(RotationRow::into_record).transpose()
    }

    /// Outcomes of the requests key `key_id` served with `version` at or after `since`
    /// (the spend rows of every replica).
    pub async fn version_outcome(
        &self,
        key_id: &str,
        version: &str,
        since: i64,
    ) -> Result<VersionOutcome, StoreError> {
        let sql = "SELECT COUNT(*), \
                   CAST(COALESCE(SUM(CASE WHEN status IN (401, 403) OR status >= 500 THEN 1 ELSE 0 END), 0) AS BIGINT), \
                   CAST(COALESCE(SUM(CASE WHEN status IN (401, 403) THEN 1 ELSE 0 END), 0) AS BIGINT) \
                   FROM spend WHERE provider_key_id = $1 AND at >= $2 AND provider_key_version = $3";
        let (requests, errors, refused): (i64, i64, i64) = on_db!(self, p => sqlx::query_as(sql)
            .bind(key_id).bind(since).bind(version).fetch_one(p).await?);
        Ok(VersionOutcome {
            requests,
            errors,
            refused,
        })
    }

    /// Requests per version of `key_id` per second from `since` (the timeline of a
    /// rotation): `(second, version, requests, errors)`.
    pub async fn version_timeline(
        &self,
        key_id: &str,
        since: i64,
    ) -> Result<Vec<(i64, Option<String>, i64, i64)>, StoreError> {
        let sql = "SELECT CAST((at - $2) / 1000 AS BIGINT) AS s, provider_key_version, COUNT(*), \
                   CAST(SUM(CASE WHEN status IN (401, 403) OR status >= 500 THEN 1 ELSE 0 END) AS BIGINT) \
                   FROM spend WHERE provider_key_id = $1 AND at >= $2 \
                   GROUP BY CAST((at - $2) / 1000 AS BIGINT), provider_key_version ORDER BY 1, 2";
        Ok(on_db!(self, p => sqlx::query_as(sql).bind(key_id).bind(since).fetch_all(p).await?))
    }
}

impl Store {
    /// When a rotation schedule first covered `key_id` (recorded as `now` on the first call;
    /// later calls return the recorded time): a never-rotated key's schedule counts from it.
    pub async fn schedule_first_seen(&self, key_id: &str, now: i64) -> Result<i64, StoreError> {
        let insert = "INSERT INTO rotation_schedule_keys (key_id, first_seen) VALUES ($1, $2) \
                      ON CONFLICT (key_id) DO NOTHING";
        let select = "SELECT first_seen FROM rotation_schedule_keys WHERE key_id = $1";
        Ok(on_db!(self, p => {
            sqlx::query(insert).bind(key_id).bind(now).execute(p).await?;
            sqlx::query_scalar::<_, i64>(select).bind(key_id).fetch_one(p).await?
        }))
    }

    /// Take the lease of creating a new key for `key_id` through its issuer, for `lease_ms`
    /// (by the store's clock). `false`: another replica holds it.
    pub async fn claim_issue(
        &self,
        key_id: &str,
        replica: &str,
        lease_ms: i64,
    ) -> Result<bool, StoreError> {
        let now = self.db_now_ms();
        let sql = format!(
            "UPDATE rotation_schedule_keys SET issuing_by = $2, issuing_until = {now} + $3 \
             WHERE key_id = $1 AND (issuing_by IS NULL OR issuing_by = $2 OR issuing_until < {now})"
        );
        let n = on_db!(self, p => sqlx::query(&sql).bind(key_id).bind(replica).bind(lease_ms)
            .execute(p).await?.rows_affected());
        Ok(n == 1)
    }

    /// Give up the issue lease of `key_id`.
    pub async fn release_issue(&self, key_id: &str, replica: &str) -> Result<(), StoreError> {
        let sql = "UPDATE rotation_schedule_keys SET issuing_by = NULL, issuing_until = NULL \
                   WHERE key_id = $1 AND issuing_by = $2";
        on_db!(self, p => sqlx::query(sql).bind(key_id).bind(replica).execute(p).await.map(|_| ())?);
        Ok(())
    }

    /// The provider's id of the key that version `version` of `key_id` holds, when a key
    /// issuer created it (the rotation that promoted it recorded it).
    pub async fn issued_ref_of(
        &self,
        key_id: &str,
        version: &str,
    ) -> Result<Option<String>, StoreError> {
        let sql = "SELECT issued_ref FROM rotations WHERE key_id = $1 AND to_version = $2 \
                   AND issued_ref IS NOT NULL AND state <> 'rolled_back' ORDER BY id DESC LIMIT 1";
        Ok(on_db!(self, p => sqlx::query_scalar::<_, Option<String>>(sql).bind(key_id).bind(version)
            .fetch_optional(p).await?).flatten())
    }
}
