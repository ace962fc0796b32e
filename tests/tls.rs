//! Inbound TLS: with `tls_cert`/`tls_key` set, the client listener speaks TLS
//! (rustls) and offers HTTP/2 by ALPN; requests are proxied as over h2c.

#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};

const UPSTREAM_KEY: &str = "sk-tls-test-upstream-00000000000000000";

/// An upstream that answers every request with which key it was given.
async fn echo_upstream(listener: tokio::net::TcpListener) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(async move {
            let service = hyper::service::service_fn(
                |request: http::Request<hyper::body::Incoming>| async move {
                    let auth = request
                        .headers()
                        .get("authorization")
                        .map(|v| v.to_str().unwrap_or("").to_owned())
                        .unwrap_or_default();
                    let ok = auth == format!("Bearer {UPSTREAM_KEY}");
                    let body = format!("{{\"key_ok\":{ok},\"path\":\"{}\"}}", request.uri().path());
                    Ok::<_, std::convert::Infallible>(
                        http::Response::builder()
                            .header("content-type", "application/json")
                            .body(Full::new(Bytes::from(body)))
                            .unwrap(),
                    )
                },
            );
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

#[test]
fn tls_listener_negotiates_h2_by_alpn_and_proxies() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let upstream = listener.local_addr().unwrap();
    runtime.spawn(echo_upstream(listener));

    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let certs = tempfile::tempdir().unwrap();
    let cert_path = certs.path().join("cert.pem");
    let key_path = certs.path().join("key.pem");
    std::fs::write(&cert_path, certified.cert.pem()).unwrap();
    std::fs::write(&key_path, certified.key_pair.serialize_pem()).unwrap();
    let workspace = common::Workspace::new(
        &upstream.to_string(),
        UPSTREAM_KEY,
        &format!(
            "tls_cert = \"{}\"\ntls_key = \"{}\"",
            cert_path.display(),
            key_path.display()
        ),
        "",
    );
    let (serve, addr) = workspace.serve();
    let client_key = workspace.client_key.clone();

    let (alpn, status, body) = runtime.block_on(async {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(certified.cert.der().clone()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let stream = tokio_rustls::TlsConnector::from(Arc::new(tls))
            .connect(name, tcp)
            .await
            .unwrap();
        let alpn = stream.get_ref().1.alpn_protocol().map(|p| p.to_vec());
        let (mut sender, connection) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                .await
                .unwrap();
        tokio::spawn(connection);
        let request = http::Request::get("https://localhost/v1/models")
            .header("authorization", format!("Bearer {client_key}"))
            .body(Full::new(Bytes::new()))
            .unwrap();
        let response = sender.send_request(request).await.unwrap();
        let status = response.status();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (alpn, status, body)
    });
    drop(serve);
    assert_eq!(alpn.as_deref(), Some(&b"h2"[..]), "h2 negotiated by ALPN");
    assert_eq!(status, 200);
    assert_eq!(&body[..], br#"{"key_ok":true,"path":"/v1/models"}"#);
}
