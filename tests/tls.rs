//! Inbound TLS: with `tls_cert`/`tls_key` set, the client listener speaks TLS
//! (rustls) and offers HTTP/2 by ALPN; requests are proxied as over h2c.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};

const UPSTREAM_KEY: &str = "sk-tls-test-upstream-00000000000000000";

fn keygate(config: &std::path::Path, args: &[&str], stdin: Option<&str>) -> String {
    let mut child = Command::new(env!("CARGO_BIN_EXE_keygate"))
        .arg("--config")
        .arg(config)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if let Some(text) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
    }
    drop(child.stdin.take());
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

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
    let dir = tempfile::tempdir().unwrap();
    let cert_path = dir.path().join("cert.pem");
    let key_path = dir.path().join("key.pem");
    std::fs::write(&cert_path, certified.cert.pem()).unwrap();
    std::fs::write(&key_path, certified.key_pair.serialize_pem()).unwrap();
    let config = dir.path().join("keygate.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n\
             tls_cert = \"{c}\"\ntls_key = \"{k}\"\n\
             [vault]\npath = \"{d}/keygate.vault\"\nmaster_key_file = \"{d}/master.key\"\n\
             [metering]\ndb = \"{d}/usage.sqlite\"\n\
             [providers.openai]\nbase_url = \"http://{upstream}\"\n",
            c = cert_path.display(),
            k = key_path.display(),
            d = dir.path().display()
        ),
    )
    .unwrap();
    keygate(&config, &["vault", "init"], None);
    keygate(&config, &["key", "add", "openai"], Some(UPSTREAM_KEY));
    let out = keygate(&config, &["client", "add", "tls-app"], None);
    let client_key = out
        .split_whitespace()
        .find(|w| w.starts_with("kg_"))
        .unwrap()
        .to_owned();
    let mut serve = Command::new(env!("CARGO_BIN_EXE_keygate"))
        .arg("--config")
        .arg(&config)
        .arg("serve")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(serve.stdout.take().unwrap()).lines();
    let addr = loop {
        let line = lines.next().expect("serve prints its address").unwrap();
        if let Some(addr) = line.strip_prefix("keygate: client listener on ") {
            break addr.to_owned();
        }
    };

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
    let _ = serve.kill();
    let _ = serve.wait();
    assert_eq!(alpn.as_deref(), Some(&b"h2"[..]), "h2 negotiated by ALPN");
    assert_eq!(status, 200);
    assert_eq!(&body[..], br#"{"key_ok":true,"path":"/v1/models"}"#);
}
