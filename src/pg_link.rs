//! One PostgreSQL connection for a control-plane room (the usage ledger, the
//! events outbox): opened on first use with its schema, bounded in time, and
//! opened again after any failure (a restarted server is simply reconnected
//! to on the next call).
//!
//! The sync client of the maintained `postgres` crate runs a runtime of its
//! own, which may neither start nor be dropped on a thread that drives tokio
//! tasks: every call runs on a thread of its own ([`off_runtime`]). The URL
//! may carry a password: errors name the endpoint (`postgres://host`) only.

use std::time::Duration;

use crate::vault::secret::Secret;

/// How long connecting may take, and how long sent data may go unacknowledged.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long one call may take before its connection is given up.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a call did not run, or what the database answered, in words without
/// the URL's credential.
#[derive(Debug, thiserror::Error)]
#[error("{detail}")]
pub struct PgError {
    /// The server's message and SQLSTATE, or what went wrong on the way.
    pub detail: String,
    /// The SQLSTATE, when the server answered one.
    pub code: Option<String>,
}

impl PgError {
    /// True for an error the database raised about a value (SQLSTATE class
    /// 22: an invalid byte sequence, a number out of range), not about itself.
    pub fn is_data_exception(&self) -> bool {
        self.code.as_deref().is_some_and(|c| c.starts_with("22"))
    }

    fn from_postgres(error: &postgres::Error) -> PgError {
        match error.as_db_error() {
            Some(db) => PgError {
                detail: format!("{} ({})", db.message(), db.code().code()),
                code: Some(db.code().code().to_owned()),
            },
            None => PgError {
                detail: error.to_string(),
                code: None,
            },
        }
    }
}

/// Runs `work` on a thread of its own: the sync client runs a runtime of
/// its own, which may not start on a thread that drives tokio tasks.
pub fn off_runtime<T: Send>(work: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|scope| match scope.spawn(work).join() {
        Ok(value) => value,
        Err(panic) => std::panic::resume_unwind(panic),
    })
}

/// A connection, opened when first needed.
pub struct PgLink {
    url: Secret,
    /// `postgres://host`, as errors name it.
    pub endpoint: String,
    /// Run on every new connection (`CREATE TABLE IF NOT EXISTS …`).
    schema: &'static str,
    client: Option<postgres::Client>,
}

/// Dropped on a thread of its own too (on SIGTERM the runtime is still
/// running), and not waited for: closing sends PostgreSQL a goodbye and
/// waits for the server to hang up, which a frozen server never does — the
/// process must be able to exit anyway.
impl Drop for PgLink {
    fn drop(&mut self) {
        if let Some(client) = self.client.take() {
            std::thread::spawn(move || drop(client));
        }
    }
}

impl PgLink {
    /// Connects now (so a wrong URL is an error at start) and creates the schema.
    pub fn open(url: &Secret, endpoint: &str, schema: &'static str) -> Result<PgLink, PgError> {
        let mut link = PgLink {
            url: url.clone(),
            endpoint: endpoint.to_owned(),
            schema,
            client: None,
        };
        off_runtime(|| link.connected().map(|_| ()))?;
        Ok(link)
    }

    fn connected(&mut self) -> Result<&mut postgres::Client, PgError> {
        if self.client.as_ref().is_none_or(|c| c.is_closed()) {
            let mut config: postgres::Config = self
                .url
                .expose()
                .parse()
                .map_err(|e| PgError::from_postgres(&e))?;
            // A database that does not answer is an error in seconds, not a
            // call that waits for ever.
            config
                .connect_timeout(CONNECT_TIMEOUT)
                .keepalives_idle(Duration::from_secs(30))
                .tcp_user_timeout(CONNECT_TIMEOUT);
            let mut client = config
                .connect(postgres::NoTls)
                .map_err(|e| PgError::from_postgres(&e))?;
            // Replicas starting together may race to create a table: once more.
            if client.batch_execute(self.schema).is_err() {
                client
                    .batch_execute(self.schema)
                    .map_err(|e| PgError::from_postgres(&e))?;
            }
            self.client = Some(client);
        }
        self.client.as_mut().ok_or_else(|| PgError {
            detail: "not connected".to_owned(),
            code: None,
        })
    }

    /// Runs `work` with the connection on a thread of its own and waits at
    /// most ten seconds: a database that accepted the connection and then
    /// went silent (a frozen host) costs one abandoned thread and
    /// connection, not the caller. After any error the next call connects
    /// again. Call from a blocking context (this waits).
    pub fn call<T: Send + 'static>(
        &mut self,
        work: impl FnOnce(&mut postgres::Client) -> Result<T, postgres::Error> + Send + 'static,
    ) -> Result<T, PgError> {
        off_runtime(|| self.call_here(work))
    }

    fn call_here<T: Send + 'static>(
        &mut self,
        work: impl FnOnce(&mut postgres::Client) -> Result<T, postgres::Error> + Send + 'static,
    ) -> Result<T, PgError> {
        self.connected()?;
        let Some(mut client) = self.client.take() else {
            return Err(PgError {
                detail: "not connected".to_owned(),
                code: None,
            });
        };
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let result = work(&mut client);
            // The client goes back with the answer; when nobody waits any
            // more, it is dropped here, off every runtime.
            let _ = tx.send((result, client));
        });
        match rx.recv_timeout(CALL_TIMEOUT) {
            Ok((Ok(value), client)) => {
                self.client = Some(client);
                Ok(value)
            }
            Ok((Err(error), client)) => {
                // A refused value leaves the connection usable; anything
                // else may not have: the next call connects again.
                let error = PgError::from_postgres(&error);
                if error.is_data_exception() {
                    self.client = Some(client);
                }
                Err(error)
            }
            Err(_) => Err(PgError {
                detail: format!(
                    "no answer within {CALL_TIMEOUT:?}; the connection is given up and the next call opens a new one"
                ),
                code: None,
            }),
        }
    }
}
