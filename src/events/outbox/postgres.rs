//! The outbox in the ledger's PostgreSQL database, shared by the fleet: a
//! delivery is claimed for a while with `FOR UPDATE SKIP LOCKED`, so two
//! replicas never take the same row at once; one that dies mid-send leaves a
//! claim that runs out and another replica takes it up.

use super::sql::{self, delivery, SCHEMA};
use super::{Claimed, Listed, OutboxError, PutRow, RecordRow};
use crate::pg_link::{PgError, PgLink};
use crate::vault::secret::Secret;

/// `?N` → `$N`: the shared statements in PostgreSQL's placeholders.
fn pg(statement: &str) -> String {
    statement.replace('?', "$")
}

pub(super) struct Postgres {
    link: PgLink,
}

impl Postgres {
    pub(super) fn open(url: &Secret, endpoint: &str) -> Result<Postgres, OutboxError> {
        PgLink::open(url, endpoint, SCHEMA)
            .map(|link| Postgres { link })
            .map_err(|e| OutboxError::Postgres {
                endpoint: endpoint.to_owned(),
                detail: e.detail,
            })
    }

    fn error(&self, error: PgError) -> OutboxError {
        OutboxError::Postgres {
            endpoint: self.link.endpoint.clone(),
            detail: error.detail,
        }
    }

    pub(super) fn put(&mut self, rows: Vec<PutRow>) -> Result<(), OutboxError> {
        let result = self.link.call(move |db| {
            let mut tx = db.transaction()?;
            let (event, delivery) = (
                tx.prepare(&pg(sql::INSERT_EVENT))?,
                tx.prepare(&pg(sql::INSERT_DELIVERY))?,
            );
            for (id, kind, time, body, targets) in &rows {
                if tx.execute(&event, &[id, kind, time, body])? == 1 {
                    for target in targets {
                        tx.execute(&delivery, &[id, target, time])?;
                    }
                }
            }
            tx.commit()
        });
        result.map_err(|e| self.error(e))
    }

    pub(super) fn claim(
        &mut self,
        target: &str,
        now: i64,
        until: i64,
        limit: u32,
    ) -> Result<Vec<Claimed>, OutboxError> {
        let (target, limit) = (target.to_owned(), i64::from(limit));
        let result = self.link.call(move |db| {
            let rows = db.query(
                "UPDATE event_deliveries d SET claimed_until_ms = $3
                 FROM events e
                 WHERE e.id = d.event_id AND (d.event_id, d.target) IN (
                     SELECT event_id, target FROM event_deliveries
                     WHERE target = $1 AND state = 'pending' AND next_at_ms <= $2
                       AND claimed_until_ms <= $2
                     ORDER BY next_at_ms LIMIT $4 FOR UPDATE SKIP LOCKED)
                 RETURNING d.event_id, e.body, e.time_ms, d.attempts",
                &[&target, &now, &until, &limit],
            )?;
            Ok(rows
                .iter()
                .map(|row| Claimed {
                    event_id: row.get(0),
                    body: row.get(1),
                    time_ms: super::u(row.get(2)),
                    attempts: u32::try_from(row.get::<_, i64>(3)).unwrap_or(u32::MAX),
                })
                .collect())
        });
        result.map_err(|e| self.error(e))
    }

    pub(super) fn record(&mut self, row: RecordRow) -> Result<(), OutboxError> {
        let result = self.link.call(move |db| {
            let (id, target, state, next_at, done, error) = &row;
            db.execute(&pg(sql::RECORD), &[id, target, state, next_at, done, error])
                .map(|_| ())
        });
        result.map_err(|e| self.error(e))
    }

    pub(super) fn list(
        &mut self,
        since: i64,
        kind: Option<String>,
        limit: i64,
    ) -> Result<Listed, OutboxError> {
        let result = self.link.call(move |db| {
            let events = db
                .query(&pg(sql::LIST_EVENTS), &[&since, &kind, &limit])?
                .iter()
                .map(|row| (row.get(0), row.get(1), row.get(2)))
                .collect();
            let deliveries = db
                .query(&pg(sql::LIST_DELIVERIES), &[&since, &kind, &limit])?
                .iter()
                .map(|row| {
                    let state: String = row.get(2);
                    (
                        row.get(0),
                        delivery(
                            row.get(1),
                            &state,
                            row.get(3),
                            row.get(4),
                            row.get(5),
                            row.get(6),
                        ),
                    )
                })
                .collect();
            Ok((events, deliveries))
        });
        result.map_err(|e| self.error(e))
    }

    pub(super) fn depth(&mut self) -> Result<i64, OutboxError> {
        let result = self
            .link
            .call(|db| db.query_one(sql::DEPTH, &[]).map(|row| row.get(0)));
        result.map_err(|e| self.error(e))
    }

    pub(super) fn prune(
        &mut self,
        targets: Vec<String>,
        before: i64,
        max: i64,
        now: i64,
    ) -> Result<i64, OutboxError> {
        let result = self.link.call(move |db| {
            let mut tx = db.transaction()?;
            let pending: Vec<String> = tx
                .query(sql::PENDING_TARGETS, &[])?
                .iter()
                .map(|row| row.get(0))
                .collect();
            for gone in pending.iter().filter(|t| !targets.contains(t)) {
                tx.execute(&pg(sql::ABANDON), &[gone, &now])?;
            }
            let mut deleted = tx.execute(&pg(sql::PRUNE_OLD), &[&before])?;
            deleted += tx.execute(
                "DELETE FROM events WHERE id IN
                     (SELECT id FROM events ORDER BY time_ms DESC, id OFFSET $1)",
                &[&max],
            )?;
            tx.execute(sql::PRUNE_ORPHAN_DELIVERIES, &[])?;
            tx.commit()?;
            Ok(i64::try_from(deleted).unwrap_or(i64::MAX))
        });
        result.map_err(|e| self.error(e))
    }
}
