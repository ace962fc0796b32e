//! Inbound TLS: with `tls_cert`/`tls_key` set, the client listener speaks TLS
//! (rustls) and offers HTTP/2 by ALPN; requests are proxied as over h2c, and
//! response trailers are filtered as over h2c.

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};

use crate::support::config::toml_string;
use crate::support::raw_upstream::{RawUpstream, Script};
use crate::support::{Keygate, KeygateBuilder, OPENAI_KEY};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_listener_negotiates_h2_by_alpn_proxies_and_filters_trailers() {
    // Answers with which key it was given, and a trailer echoing that key.
    let upstream = RawUpstream::start(|request| {
        let ok = request.header("authorization") == Some(&format!("Bearer {OPENAI_KEY}"));
        let body = format!("{{\"key_ok\":{ok}}}");
        Script::new()
            .write(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\
                 transfer-encoding: chunked\r\ntrailer: x-api-key, x-checksum\r\n\r\n",
            )
            .chunk(body)
            .write(format!(
                "0\r\nx-api-key: {OPENAI_KEY}\r\nx-checksum: abc123\r\n\r\n"
            ))
    })
    .await;

    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let certs = tempfile::tempdir().unwrap();
    let cert_path = certs.path().join("cert.pem");
    let key_path = certs.path().join("key.pem");
    std::fs::write(&cert_path, certified.cert.pem()).unwrap();
    std::fs::write(&key_path, certified.key_pair.serialize_pem()).unwrap();
    let kg = Keygate::new(
        &KeygateBuilder::new()
            .provider("openai", &upstream.url(), "bearer")
            .server("tls_cert", &toml_string(&cert_path.display().to_string()))
            .server("tls_key", &toml_string(&key_path.display().to_string())),
    );
    kg.vault_init();
    kg.add_key("openai", OPENAI_KEY);
    let client_key = kg.add_client("app");
    let server = kg.serve();

    let mut roots = rustls::RootCertStore::empty();
    roots.add(certified.cert.der().clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let tcp = tokio::net::TcpStream::connect(server.client).await.unwrap();
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
    let request = http::Request::post("https://localhost/v1/chat/completions")
        .header("authorization", format!("Bearer {client_key}"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(
            br#"{"model":"gpt-4o","messages":[]}"#,
        )))
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    let status = response.status();
    let collected = response.into_body().collect().await.unwrap();
    let trailers = collected.trailers().cloned().unwrap_or_default();
    let body = collected.to_bytes();
    kg.record("tls response", format!("{trailers:?} {body:?}"));

    assert_eq!(alpn.as_deref(), Some(&b"h2"[..]), "h2 negotiated by ALPN");
    assert_eq!(status, 200);
    assert_eq!(&body[..], br#"{"key_ok":true}"#);
    assert_eq!(
        trailers.get("x-checksum").and_then(|v| v.to_str().ok()),
        Some("abc123"),
        "{trailers:?}"
    );
    assert!(!trailers.contains_key("x-api-key"), "{trailers:?}");
    drop(server);
}
