//! What the upstream client tells its callers went wrong: it could not be
//! built ([`UpstreamError`]), or a request got no response ([`SendError`]).
//! A leaf, so that connection setup and the client itself can both name them.

use crate::net::upstream_h2::H2SendError;

pub(super) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why the upstream client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// TLS setup failed.
    #[error("cannot set up TLS for upstream connections: {0}")]
    Tls(#[from] rustls::Error),
    /// `[server] upstream_ca_file` could not be read.
    #[error("server.upstream_ca_file {path}: {detail}")]
    CaFile {
        /// The file.
        path: std::path::PathBuf,
        /// What was wrong with it.
        detail: String,
    },
}

/// Why an upstream request got no response.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// No connection could be opened (DNS, TCP, TLS).
    #[error("cannot connect")]
    Connect(#[source] BoxError),
    /// The connection failed before the response head arrived.
    #[error(transparent)]
    Exchange(#[from] hyper::Error),
    /// The HTTP/2 stream failed before the response head arrived.
    #[error("HTTP/2: {0}")]
    H2(#[from] H2SendError),
}

impl SendError {
    /// The error and every cause, `: `-separated (no secrets: hosts and
    /// socket errors only).
    pub fn detail(&self) -> String {
        let mut detail = self.to_string();
        let mut source = std::error::Error::source(self);
        while let Some(cause) = source {
            detail.push_str(": ");
            detail.push_str(&cause.to_string());
            source = cause.source();
        }
        detail
    }
}
