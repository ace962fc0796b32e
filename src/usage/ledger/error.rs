//! Why the ledger could not be used ([`LedgerError`]), in words both
//! backends share. A PostgreSQL URL may carry a password: errors name the
//! host only.

/// Why the ledger could not be used.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    /// SQLite failed.
    #[error("usage ledger {path}: {source}; check the path ([metering] db) and that keygate may write there")]
    Sqlite {
        /// The database file.
        path: String,
        /// What SQLite said.
        source: rusqlite::Error,
    },
    /// PostgreSQL failed.
    #[error("usage ledger {endpoint}: {detail}; check [metering] db and that the database accepts this user")]
    Postgres {
        /// `postgres://HOST:PORT/DB`, never the password.
        endpoint: String,
        /// What the server or the connection said.
        detail: String,
    },
    /// The directory could not be created.
    #[error("usage ledger {path}: cannot create its directory: {source}")]
    Io {
        /// The database file.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
}
