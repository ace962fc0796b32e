//! The listeners: bind (port 0 allowed; the real address is reported), accept,
//! HTTP/1.1 + HTTP/2 (h2c, or h2 by ALPN over rustls), connection limit, header
//! timeout, and the graceful drain on shutdown.
//!
//! Connections hand each request to the service the caller gives each
//! listener (`serve` gives the proxy's conductor to the client listener and
//! the probes to the admin listener); nothing here looks inside one.

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use tokio_rustls::TlsAcceptor;

use crate::config::ServerConfig;
use crate::net::head_guard::HeadGuard;
use crate::shutdown::Shutdown;

/// Why the listeners could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// Bind failed.
    #[error(
        "cannot listen on {addr}: {source} (is another process using it? change [server] {key})"
    )]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Which config key.
        key: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
    /// Certificate or key unreadable or invalid.
    #[error("cannot load TLS {what} from {path}: {detail}")]
    Tls {
        /// "certificate" or "private key".
        what: &'static str,
        /// The file.
        path: String,
        /// What went wrong.
        detail: String,
    },
}

/// Both listeners, bound.
pub struct Bound {
    client: TcpListener,
    admin: TcpListener,
    /// Real client listener address.
    pub client_addr: SocketAddr,
    /// Real admin listener address.
    pub admin_addr: SocketAddr,
}

/// Binds both listeners.
pub async fn bind(config: &ServerConfig) -> Result<Bound, ServerError> {
    let bind = |addr: SocketAddr, key: &'static str| async move {
        TcpListener::bind(addr)
            .await
            .map_err(|source| ServerError::Bind { addr, key, source })
    };
    let client = bind(config.listen, "listen").await?;
    let admin = bind(config.admin_listen, "admin_listen").await?;
    let local = |l: &TcpListener, addr: SocketAddr, key| {
        l.local_addr()
            .map_err(|source| ServerError::Bind { addr, key, source })
    };
    Ok(Bound {
        client_addr: local(&client, config.listen, "listen")?,
        admin_addr: local(&admin, config.admin_listen, "admin_listen")?,
        client,
        admin,
    })
}

/// The address of the peer a request came from, put in each request's
/// extensions by its connection (what the decoy bookkeeping reports). The
/// TCP peer: keygate behind a load balancer sees the balancer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerAddr(pub SocketAddr);

/// What a listener hands each request to: a function from the request to
/// the future of its response (hyper's service, as a plain closure).
pub trait Service<B>:
    Fn(Request<Incoming>) -> <Self as Service<B>>::Future + Clone + Send + Sync + 'static
{
    /// The response's future.
    type Future: Future<Output = Result<Response<B>, std::convert::Infallible>> + Send + 'static;
}

impl<S, F, B> Service<B> for S
where
    S: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Result<Response<B>, std::convert::Infallible>> + Send + 'static,
{
    type Future = F;
}

/// Serves `client` on the client listener and `admin` on the admin listener
/// until `shutdown` turns true, then drains for up to `shutdown_grace`.
pub async fn run<B, C, A>(
    bound: Bound,
    server: &ServerConfig,
    client: C,
    admin: A,
    shutdown: Shutdown,
) -> Result<(), ServerError>
where
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    C: Service<B>,
    A: Service<B>,
{
    let tls = tls_acceptor(server)?;
    let connections = Arc::new(Semaphore::new(server.max_connections));

    let client_loop = accept_loop(
        bound.client,
        tls,
        connections.clone(),
        server.clone(),
        shutdown.clone(),
        client,
    );
    let admin_loop = accept_loop(
        bound.admin,
        None,
        Arc::new(Semaphore::new(256)),
        server.clone(),
        shutdown.clone(),
        admin,
    );
    tokio::join!(client_loop, admin_loop);

    // Accepting stopped; connections were told to finish. Wait for them.
    let all = u32::try_from(server.max_connections).unwrap_or(u32::MAX);
    let drained = tokio::time::timeout(server.shutdown_grace, connections.acquire_many(all)).await;
    if drained.is_err() {
        tracing::warn!(
            grace = ?server.shutdown_grace,
            "shutdown grace elapsed with requests still in flight; cutting them"
        );
    }
    Ok(())
}

async fn accept_loop<S, B>(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    connections: Arc<Semaphore>,
    server: ServerConfig,
    mut shutdown: Shutdown,
    service: S,
) where
    S: Service<B>,
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(error) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.requested() => break,
        };
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            tracing::warn!(%peer, "connection refused: max_connections reached");
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let tls = tls.clone();
        let server = server.clone();
        let shutdown = shutdown.clone();
        let service = service.clone();
        tokio::spawn(async move {
            match tls {
                None => serve_connection(stream, peer, &server, shutdown, service).await,
                // Boxed: the TLS state would otherwise make every plain
                // connection's task as large as a TLS one's.
                Some(acceptor) => {
                    Box::pin(async move {
                        let handshake =
                            tokio::time::timeout(server.header_timeout, acceptor.accept(stream))
                                .await;
                        match handshake {
                            Ok(Ok(tls_stream)) => {
                                serve_connection(tls_stream, peer, &server, shutdown, service).await
                            }
                            Ok(Err(error)) => {
                                tracing::debug!(%peer, %error, "TLS handshake failed")
                            }
                            Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                        }
                    })
                    .await
                }
            }
            drop(permit);
        });
    }
}

async fn serve_connection<I, S, B>(
    mut io: I,
    peer: SocketAddr,
    server: &ServerConfig,
    shutdown: Shutdown,
    service: S,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: Service<B>,
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    // hyper's header timeout starts only once an HTTP/1 head is being read;
    // a socket that sends nothing (or half an HTTP/2 preface) would hold a
    // connection slot forever. Read the opening bytes under the same deadline.
    let opening = match tokio::time::timeout(server.header_timeout, read_opening(&mut io)).await {
        Ok(Ok(opening)) if !opening.is_empty() => opening,
        _ => return,
    };
    // The opening bytes already say which protocol this is, so the matching
    // hyper server is built directly: hyper-util's auto server would read
    // them a second time, and hand hyper's HTTP/1 reader a first read of only
    // 24 bytes — after which it keeps a 16 KiB read buffer per connection
    // instead of 8 KiB (what 10,000 held streams cost).
    let http2 = opening == H2_PREFACE;
    let service = move |mut request: Request<Incoming>| {
        request.extensions_mut().insert(PeerAddr(peer));
        service(request)
    };
    let io = TokioIo::new(Replay {
        head: Some(opening),
        inner: io,
        guard: (!http2).then(HeadGuard::default),
    });
    if http2 {
        let connection = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .max_concurrent_streams(256)
            .max_header_list_size(64 * 1024)
            .keep_alive_interval(Some(Duration::from_secs(30)))
            .serve_connection(io, service_fn(service));
        until_drained(connection, shutdown, |c| c.graceful_shutdown()).await;
    } else {
        let connection = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(server.header_timeout)
            // Both: max_buf_size bounds the buffer only loosely (a read may
            // fill all its spare capacity, past the bound), max_header_size
            // checks the parsed head exactly.
            .max_buf_size(64 * 1024)
            .max_header_size(64 * 1024)
            .serve_connection(io, service_fn(service));
        until_drained(connection, shutdown, |c| c.graceful_shutdown()).await;
    }
}

/// Serves `connection` to its end; on shutdown, asks it to finish what is in
/// flight (`graceful`) and waits for that.
async fn until_drained<C>(
    connection: C,
    shutdown: Shutdown,
    graceful: impl FnOnce(std::pin::Pin<&mut C>),
) where
    C: Future<Output = Result<(), hyper::Error>>,
{
    tokio::pin!(connection);
    tokio::select! {
        biased;
        result = connection.as_mut() => log_end(result),
        _ = shutdown.watch() => {
            graceful(connection.as_mut());
            log_end(connection.await);
        }
    }
}

fn log_end(result: Result<(), hyper::Error>) {
    if let Err(error) = result {
        tracing::debug!(%error, "connection ended with an error");
    }
}

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Reads until the bytes are the whole HTTP/2 preface, or stop being a prefix
/// of it (an HTTP/1 request, which hyper's own header timeout then covers).
async fn read_opening<I: AsyncRead + Unpin>(io: &mut I) -> std::io::Result<bytes::Bytes> {
    use tokio::io::AsyncReadExt;
    let mut opening = bytes::BytesMut::with_capacity(H2_PREFACE.len());
    while opening.len() < H2_PREFACE.len() && H2_PREFACE.starts_with(&opening) {
        if io.read_buf(&mut opening).await? == 0 {
            break;
        }
    }
    Ok(opening.freeze())
}

/// An IO that first replays the bytes [`read_opening`] took, and shows every
/// byte of an HTTP/1 connection to the [`HeadGuard`] before hyper sees it.
struct Replay<I> {
    head: Option<bytes::Bytes>,
    inner: I,
    guard: Option<HeadGuard>,
}

impl<I: AsyncRead + Unpin> AsyncRead for Replay<I> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        if let Some(mut head) = self.head.take() {
            let n = head.len().min(buf.remaining());
            buf.put_slice(&head.split_to(n));
            if !head.is_empty() {
                self.head = Some(head);
            } else if buf.remaining() > 0 {
                // The rest of the request joins the opening bytes in this
                // read: hyper's HTTP/1 reader, handed only the opening bytes,
                // would reserve another full read on top of them and keep a
                // 16 KiB buffer for the connection's life instead of 8 KiB.
                // An error here is let go: the next read finds the connection
                // closed, as hyper would have found it.
                let _ = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
            }
        } else {
            std::task::ready!(std::pin::Pin::new(&mut self.inner).poll_read(cx, buf))?;
        }
        if let Some(guard) = self.guard.as_mut() {
            if let Err(refused) = guard.observe(&buf.filled()[before..]) {
                return std::task::Poll::Ready(Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    refused,
                )));
            }
        }
        std::task::Poll::Ready(Ok(()))
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Replay<I> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        data: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, data)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Whether the inbound TLS certificate and key load (when configured), as
/// [`run`] will load them: for a check before the start (`serve`, `doctor`).
pub fn check_tls(server: &ServerConfig) -> Result<(), ServerError> {
    tls_acceptor(server).map(|_| ())
}

fn tls_acceptor(server: &ServerConfig) -> Result<Option<TlsAcceptor>, ServerError> {
    let (Some(cert_path), Some(key_path)) = (&server.tls_cert, &server.tls_key) else {
        return Ok(None);
    };
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let tls_error = |what, path: &Path, detail: String| ServerError::Tls {
        what,
        path: path.display().to_string(),
        detail,
    };
    let certs = CertificateDer::pem_file_iter(cert_path)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|e| tls_error("certificate", cert_path, e.to_string()))?;
    let key = PrivateKeyDer::from_pem_file(key_path)
        .map_err(|e| tls_error("private key", key_path, e.to_string()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .and_then(|b| b.with_no_client_auth().with_single_cert(certs, key))
        .map_err(|e| tls_error("certificate", cert_path, e.to_string()))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Some(TlsAcceptor::from(Arc::new(config))))
}
