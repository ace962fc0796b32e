//! Opening a connection to an upstream origin: TCP (keep-alive, connect
//! timeout, TCP_NODELAY), TLS by rustls with the webpki roots and
//! `upstream_ca_file`, ALPN, and the handshake of whichever HTTP version the
//! origin's `http` mode and the server agreed to.

use std::sync::Arc;
use std::time::Duration;

use hyper::client::conn::http1;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioIo;
use tower_service::Service;

use super::error::{SendError, UpstreamError};
use super::pool::{Connection, OriginPool};
use crate::config::{ServerConfig, UpstreamHttp};
use crate::net::upstream_h2::H2Conn;

type Connector = hyper_rustls::HttpsConnector<HttpConnector>;

/// A new connection, in the version the origin agreed to.
pub(super) enum Connected {
    H1(Box<Connection>),
    H2(Arc<H2Conn>),
}

/// Everything a new connection is opened with; built once per process.
pub(super) struct Connectors {
    /// ALPN `http/1.1`; `h2`, `http/1.1` (for `auto`, and for `h2`, which
    /// then refuses a server that picks HTTP/1.1 with a clear error rather
    /// than a TLS alert).
    by_alpn: [Connector; 2],
    http1: http1::Builder,
}

impl Connectors {
    /// rustls with the webpki roots (and `upstream_ca_file`), TCP
    /// keep-alive, connect timeout, TCP_NODELAY.
    pub(super) fn new(server: &ServerConfig) -> Result<Connectors, UpstreamError> {
        let mut tcp = HttpConnector::new();
        tcp.enforce_http(false);
        tcp.set_nodelay(true);
        tcp.set_connect_timeout(Some(server.upstream_connect_timeout));
        tcp.set_keepalive(Some(Duration::from_secs(60)));
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        if let Some(path) = &server.upstream_ca_file {
            add_ca_file(&mut roots, path)?;
        }
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let builder = || {
            hyper_rustls::HttpsConnectorBuilder::new()
                .with_tls_config(tls.clone())
                .https_or_http()
        };
        Ok(Connectors {
            by_alpn: [
                builder().enable_http1().wrap_connector(tcp.clone()),
                builder().enable_all_versions().wrap_connector(tcp),
            ],
            http1: http1::Builder::new(),
        })
    }

    /// Opens a connection to `pool`'s origin, in the version its mode and
    /// the server's ALPN answer settle on.
    pub(super) async fn connect(&self, pool: &OriginPool) -> Result<Connected, SendError> {
        use hyper_util::client::legacy::connect::Connection as _;
        let index = match pool.mode {
            UpstreamHttp::H1 => 0,
            UpstreamHttp::Auto | UpstreamHttp::H2 => 1,
        };
        let mut connector = self.by_alpn[index].clone();
        std::future::poll_fn(|cx| connector.poll_ready(cx))
            .await
            .map_err(SendError::Connect)?;
        let io = connector
            .call(pool.connect_uri.clone())
            .await
            .map_err(SendError::Connect)?;
        let tls = matches!(io, hyper_rustls::MaybeHttpsStream::Https(_));
        let negotiated_h2 = io.connected().is_negotiated_h2();
        let h2 = match pool.mode {
            UpstreamHttp::H1 => false,
            UpstreamHttp::Auto => negotiated_h2,
            UpstreamHttp::H2 if tls && !negotiated_h2 => {
                return Err(SendError::Connect(
                    "the upstream did not agree to HTTP/2 by ALPN (http = \"h2\"; \"auto\" falls back to HTTP/1.1)".into(),
                ))
            }
            UpstreamHttp::H2 => true,
        };
        if h2 {
            let conn = H2Conn::handshake(TokioIo::new(io))
                .await
                .map_err(|e| SendError::Connect(Box::new(e)))?;
            return Ok(Connected::H2(conn));
        }
        let (sender, driver) = self.http1.handshake(io).await?;
        Ok(Connected::H1(Box::new(Connection { sender, driver })))
    }
}

/// Adds the PEM certificates of `path` to `roots`.
fn add_ca_file(
    roots: &mut rustls::RootCertStore,
    path: &std::path::Path,
) -> Result<(), UpstreamError> {
    use rustls::pki_types::pem::PemObject;
    let failed = |detail: String| UpstreamError::CaFile {
        path: path.to_owned(),
        detail,
    };
    let certs = rustls::pki_types::CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| failed(e.to_string()))?;
    if certs.is_empty() {
        return Err(failed("no PEM certificate in it".into()));
    }
    let (added, _) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err(failed("no usable CA certificate in it".into()));
    }
    Ok(())
}
