//! The outbox in the ledger's SQLite file: its own connection, WAL mode
//! (the ledger writer, the delivery loops and the CLI take turns), one
//! transaction per batch.

use std::path::Path;
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension as _};

use super::sql::{self, delivery, SCHEMA};
use super::{Claimed, Listed, OutboxError, PutRow, RecordRow};

pub(super) struct Sqlite {
    conn: Connection,
    path: String,
}

impl Sqlite {
    pub(super) fn open(path: &Path) -> Result<Sqlite, OutboxError> {
        let name = path.display().to_string();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            crate::file_owner::create_dirs(dir, 0o777).map_err(|source| OutboxError::Io {
                path: name.clone(),
                source,
            })?;
        }
        let error = |source| OutboxError::Sqlite {
            path: name.clone(),
            source,
        };
        let created = !path.exists();
        let conn = Connection::open(path).map_err(error)?;
        // Before the first write: SQLite gives its -wal and -shm files the
        // main file's owner when run as root, so a root CLI command leaves
        // files the service can open.
        if created {
            crate::file_owner::adopt_new(path).map_err(|source| OutboxError::Io {
                path: name.clone(),
                source,
            })?;
        }
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(error)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(error)?;
        conn.busy_timeout(Duration::from_secs(5)).map_err(error)?;
        conn.execute_batch(SCHEMA).map_err(error)?;
        Ok(Sqlite { conn, path: name })
    }

    fn error(&self, source: rusqlite::Error) -> OutboxError {
        OutboxError::Sqlite {
            path: self.path.clone(),
            source,
        }
    }

    pub(super) fn put(&mut self, rows: &[PutRow]) -> Result<(), OutboxError> {
        let result = (|| {
            let tx = self.conn.transaction()?;
            for (id, kind, time, body, targets) in rows {
                if tx.execute(sql::INSERT_EVENT, params![id, kind, time, body])? == 1 {
                    for target in targets {
                        tx.execute(sql::INSERT_DELIVERY, params![id, target, time])?;
                    }
                }
            }
            tx.commit()
        })();
        result.map_err(|e| self.error(e))
    }

    pub(super) fn claim(
        &mut self,
        target: &str,
        now: i64,
        until: i64,
        limit: u32,
    ) -> Result<Vec<Claimed>, OutboxError> {
        let result = (|| {
            // IMMEDIATE: the write lock first, so two processes on one file
            // cannot claim the same rows.
            let tx = self
                .conn
                .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let claimed = {
                let mut select = tx.prepare(
                    "SELECT d.event_id, e.body, e.time_ms, d.attempts
                     FROM event_deliveries d JOIN events e ON e.id = d.event_id
                     WHERE d.target = ?1 AND d.state = 'pending' AND d.next_at_ms <= ?2
                       AND d.claimed_until_ms <= ?2
                     ORDER BY d.next_at_ms, e.time_ms LIMIT ?3",
                )?;
                let rows = select.query_map(params![target, now, limit], |row| {
                    Ok(Claimed {
                        event_id: row.get(0)?,
                        body: row.get(1)?,
                        time_ms: super::u(row.get(2)?),
                        attempts: u32::try_from(row.get::<_, i64>(3)?).unwrap_or(u32::MAX),
                    })
                })?;
                rows.collect::<Result<Vec<_>, _>>()?
            };
            for claim in &claimed {
                tx.execute(
                    "UPDATE event_deliveries SET claimed_until_ms = ?3 WHERE event_id = ?1 AND target = ?2",
                    params![claim.event_id, target, until],
                )?;
            }
            tx.commit()?;
            Ok(claimed)
        })();
        result.map_err(|e| self.error(e))
    }

    pub(super) fn record(&mut self, row: RecordRow) -> Result<(), OutboxError> {
        let (id, target, state, next_at, done, error) = row;
        self.conn
            .execute(
                sql::RECORD,
                params![id, target, state, next_at, done, error],
            )
            .map(|_| ())
            .map_err(|e| self.error(e))
    }

    pub(super) fn list(
        &mut self,
        since: i64,
        kind: Option<String>,
        limit: i64,
    ) -> Result<Listed, OutboxError> {
        let result = (|| {
            let mut events = self.conn.prepare(sql::LIST_EVENTS)?;
            let events = events
                .query_map(params![since, kind, limit], |row| {
                    Ok((row.get(0)?, row.get(1)?, row.get(2)?))
                })?
                .collect::<Result<Vec<_>, _>>()?;
            let mut deliveries = self.conn.prepare(sql::LIST_DELIVERIES)?;
            let deliveries = deliveries
                .query_map(params![since, kind, limit], |row| {
                    let state: String = row.get(2)?;
                    Ok((
                        row.get(0)?,
                        delivery(
                            row.get(1)?,
                            &state,
                            row.get(3)?,
                            row.get(4)?,
                            row.get(5)?,
                            row.get(6)?,
                        ),
                    ))
                })?
                .collect::<Result<Vec<_>, _>>()?;
            Ok((events, deliveries))
        })();
        result.map_err(|e| self.error(e))
    }

    pub(super) fn depth(&mut self) -> Result<i64, OutboxError> {
        self.conn
            .query_row(sql::DEPTH, [], |row| row.get(0))
            .optional()
            .map(Option::unwrap_or_default)
            .map_err(|e| self.error(e))
    }

    pub(super) fn prune(
        &mut self,
        targets: Vec<String>,
        before: i64,
        max: i64,
        now: i64,
    ) -> Result<i64, OutboxError> {
        let result = (|| {
            let tx = self.conn.transaction()?;
            let pending: Vec<String> = {
                let mut stmt = tx.prepare(sql::PENDING_TARGETS)?;
                let rows = stmt.query_map([], |row| row.get(0))?;
                rows.collect::<Result<_, _>>()?
            };
            for gone in pending.iter().filter(|t| !targets.contains(t)) {
                tx.execute(sql::ABANDON, params![gone, now])?;
            }
            let mut deleted = tx.execute(sql::PRUNE_OLD, params![before])?;
            deleted += tx.execute(
                "DELETE FROM events WHERE id IN
                     (SELECT id FROM events ORDER BY time_ms DESC, id LIMIT -1 OFFSET ?1)",
                params![max],
            )?;
            tx.execute(sql::PRUNE_ORPHAN_DELIVERIES, [])?;
            tx.commit()?;
            Ok(i64::try_from(deleted).unwrap_or(i64::MAX))
        })();
        result.map_err(|e| self.error(e))
    }
}
