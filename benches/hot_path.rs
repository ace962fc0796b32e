//! Hot-path micro-benchmarks: what keygate adds to every request, stage by stage.
//!
//! Question answered: how much CPU does each per-request stage cost, and does the
//! SSE usage tap cost less than 5 % of a plain copy of the same bytes? Two
//! copies are measured: an in-memory `memcpy`, and the copy a proxy really
//! does (the same chunks written into and read out of a socket).
//!
//! Run: `cargo bench --bench hot_path`
//! (`cargo bench --bench hot_path -- sse` for the tap only,
//! `-- "access log"` for the per-request log line, `-- sse-gzip` for the tap
//! decoding a gzip stream against the same stream plain.)

// A benchmark panics loudly on a broken setup; that is its error handling.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::sync::Arc;

use bytes::Bytes;
use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use http::{HeaderMap, HeaderValue, Method};
use keygate::config::Config;
use keygate::control::snapshot::Snapshot;
use keygate::net::content_coding::{Coding, Decoder};
use keygate::proxy::body::OutboundBody;
use keygate::usage::meter::TokenMetrics;
use keygate::usage::meter::{Outcome, UsageCounters};
use keygate::usage::tap::MeterTap;
use keygate::vault::document::{ClientRecord, Document, KeyState, UpstreamKey};
use keygate::vault::secret::Secret;

fn fixture() -> (Config, Snapshot, Secret) {
    let config = Config::from_toml("").expect("defaults load");
    let mut document = Document::default();
    let mut client_key = None;
    for n in 0..1000 {
        let (key, digest) = keygate::vault::client_key::generate().expect("rng");
        document.clients.push(ClientRecord {
            name: format!("client-{n}"),
            key_sha256: digest.to_hex(),
            limits: Default::default(),
            created: 0,
            revoked: None,
            old_key: None,
            decoy: false,
        });
        client_key = Some(key);
    }
    for (id, state) in [("key_a", KeyState::Current), ("key_b", KeyState::Previous)] {
        let secret = Secret::new(format!(
            "sk-bench-{id}-0123456789abcdefghijklmnopqrstuvwxyz"
        ));
        document.keys.push(UpstreamKey::new(
            id.into(),
            "openai",
            &secret,
            None,
            state,
            0,
        ));
    }
    let snapshot = Snapshot::build(&config, &document, 1, 0, None);
    (config, snapshot, client_key.expect("a client"))
}

/// A realistic stream: 2,000 chat-completion chunk events, then usage and [DONE].
fn sse_stream() -> Vec<u8> {
    let mut out = Vec::new();
    for n in 0..2000 {
        out.extend_from_slice(
            format!(
                "data: {{\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-4o-mini\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"token {n} \"}},\"finish_reason\":null}}],\"usage\":null}}\n\n"
            )
            .as_bytes(),
        );
    }
    out.extend_from_slice(b"data: {\"id\":\"chatcmpl-1\",\"choices\":[],\"usage\":{\"prompt_tokens\":20,\"completion_tokens\":2000,\"total_tokens\":2020}}\n\ndata: [DONE]\n\n");
    out
}

fn request_stages(c: &mut Criterion) {
    let (config, snapshot, client_key) = fixture();
    let mut headers = HeaderMap::new();
    headers.insert(
        "authorization",
        HeaderValue::try_from(format!("Bearer {}", client_key.expose())).expect("header"),
    );
    headers.insert("content-type", HeaderValue::from_static("application/json"));
    headers.insert(
        "user-agent",
        HeaderValue::from_static("OpenAI/Python 1.50.0"),
    );
    headers.insert("accept", HeaderValue::from_static("application/json"));
    headers.insert("x-stainless-lang", HeaderValue::from_static("python"));

    c.bench_function(
        "auth: parse + digest + lookup of a kg_ key (1,000 clients)",
        |b| {
            b.iter(|| {
                keygate::proxy::auth::authenticate(black_box(&headers), &snapshot, false).is_ok()
            })
        },
    );
    let ring = snapshot.rings.get("openai").expect("ring").clone();
    c.bench_function("keys: pick a healthy key", |b| {
        let want = keygate::keys::Want {
            sticky: black_box(7),
            tokens: 100,
        };
        b.iter(|| ring.pick(black_box(&want), 0, 1).map(|p| p.index))
    });
    let provider = &config.providers["openai"];
    let key = &ring.keys()[0];
    c.bench_function("forward: upstream URI + outbound header rewrite", |b| {
        b.iter(|| {
            let uri = provider.url("/v1/chat/completions", None).expect("uri");
            let headers =
                keygate::proxy::forward::outbound_headers(provider, black_box(&headers).clone());
            keygate::proxy::forward::outbound_request(
                &Method::POST,
                uri,
                headers,
                key,
                OutboundBody::Full(None),
            )
        })
    });
    let request = {
        let body = vec![b'x'; 1000];
        let mut bytes = format!(
            "POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nUser-Agent: OpenAI/Python 1.50.0\r\nAccept: application/json\r\nX-Stainless-Lang: python\r\nContent-Length: {}\r\n\r\n",
            client_key.expose(),
            body.len()
        )
        .into_bytes();
        bytes.extend_from_slice(&body);
        bytes
    };
    c.bench_function("head guard: one HTTP/1 request (head + 1 KB body)", |b| {
        b.iter(|| {
            let mut guard = keygate::net::head_guard::HeadGuard::default();
            guard.observe(black_box(&request)).is_ok()
        })
    });
    // The shape SDKs send: the model after a long `messages` array.
    let chat = format!(
        "{{\"messages\":[{{\"role\":\"system\",\"content\":\"You are terse.\"}},{{\"role\":\"user\",\"content\":\"{}\"}}],\"model\":\"gpt-4o-mini\",\"temperature\":0.2,\"stream\":false}}",
        "Summarise the following text in one sentence. ".repeat(18)
    )
    .into_bytes();
    c.bench_function(
        "request body: skim for model + stream fields (1 KB chat body)",
        |b| {
            b.iter(|| {
                let fields = keygate::json_skim::chat_fields(black_box(&chat));
                keygate::proxy::route::model_of(fields.as_ref()).is_some()
            })
        },
    );
    // What a body the skim cannot judge costs (an escaped key): serde
    // checks the whole body, then the members are found.
    c.bench_function(
        "request body: serde's slow path for the same fields (same body)",
        |b| {
            b.iter(|| {
                let fields = keygate::json_skim::parsed_fields(black_box(&chat));
                keygate::proxy::route::model_of(fields.as_ref()).is_some()
            })
        },
    );
    let echo = br#"{"error":{"message":"Incorrect API key provided: sk-bench-key_a-0123456789abcdefghijklmnopqrstuvwxyz. You can find your API key at https://platform.openai.com/account/api-keys.","type":"invalid_request_error","param":null,"code":"invalid_api_key"}}"#;
    c.bench_function("scrub: mask key echoes in a 250-byte error body", |b| {
        b.iter(|| {
            let mut body = echo.to_vec();
            ring.mask_echoes(black_box(&mut body))
        })
    });
}

fn sse_tap(c: &mut Criterion) {
    let stream = sse_stream();
    // Chunked as a server writes them: one read per ~4 KiB.
    let chunks: Vec<Bytes> = stream.chunks(4096).map(Bytes::copy_from_slice).collect();
    let mut group = c.benchmark_group("sse");
    group.throughput(Throughput::Bytes(stream.len() as u64));
    group.bench_function("plain copy of the stream", |b| {
        b.iter(|| {
            let mut out = Vec::with_capacity(stream.len());
            for chunk in &chunks {
                out.extend_from_slice(black_box(chunk));
            }
            out
        })
    });
    group.bench_function("usage tap (pass-through) + copy", |b| {
        b.iter(|| {
            let mut tap = new_tap(false);
            let mut out = Vec::with_capacity(stream.len());
            for chunk in &chunks {
                if let Some(bytes) = tap.on_data(chunk.clone()) {
                    out.extend_from_slice(black_box(&bytes));
                }
            }
            tap.finish(true);
            out
        })
    });
    group.bench_function("usage tap (stripping the usage chunk) + copy", |b| {
        b.iter(|| {
            let mut tap = new_tap(true);
            let mut out = Vec::with_capacity(stream.len());
            for chunk in &chunks {
                if let Some(bytes) = tap.on_data(chunk.clone()) {
                    out.extend_from_slice(black_box(&bytes));
                }
            }
            tap.finish(true);
            out
        })
    });
    group.finish();

    // A gzip-encoded stream (as Anthropic's arrive): the client gets the
    // compressed bytes, the tap decodes a copy. Throughput is the decoded size.
    let gzipped = {
        use std::io::Write;
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        // Flushed per ~4 KiB of events, as a compressing server streams SSE.
        for piece in stream.chunks(4096) {
            e.write_all(piece).expect("gzip");
            e.flush().expect("gzip");
        }
        e.finish().expect("gzip")
    };
    let gz_chunks: Vec<Bytes> = gzipped.chunks(1024).map(Bytes::copy_from_slice).collect();
    let mut group = c.benchmark_group("sse-gzip");
    group.throughput(Throughput::Bytes(stream.len() as u64));
    group.bench_function("usage tap (plain stream) + copy", |b| {
        b.iter(|| {
            let mut tap = new_tap(false);
            let mut out = Vec::with_capacity(stream.len());
            for chunk in &chunks {
                if let Some(bytes) = tap.on_data(chunk.clone()) {
                    out.extend_from_slice(black_box(&bytes));
                }
            }
            tap.finish(true);
            out
        })
    });
    group.bench_function("usage tap decoding a gzip copy + copy", |b| {
        b.iter(|| {
            let mut tap = new_tap(false);
            tap.decode(Decoder::new(&[Coding::Gzip], 1 << 30));
            let mut out = Vec::with_capacity(gzipped.len());
            for chunk in &gz_chunks {
                if let Some(bytes) = tap.on_data(chunk.clone()) {
                    out.extend_from_slice(black_box(&bytes));
                }
            }
            tap.finish(true);
            out
        })
    });
    group.finish();

    // The copy the proxy really does: the same chunks through a socket (write,
    // then read into a buffer), without and with the tap on the read side.
    let mut group = c.benchmark_group("sse-through-a-socket");
    group.throughput(Throughput::Bytes(stream.len() as u64));
    group.bench_function("socket copy", |b| b.iter(|| socket_copy(&chunks, None)));
    group.bench_function("socket copy + usage tap", |b| {
        b.iter(|| socket_copy(&chunks, Some(new_tap(false))))
    });
    group.finish();
}

/// A non-streaming chat completion (~1.1 KB, usage with details at the end),
/// metered as one frame: what every JSON response costs the meter.
fn json_tap(c: &mut Criterion) {
    let body = Bytes::from(format!(
        "{{\"id\":\"chatcmpl-1\",\"object\":\"chat.completion\",\"created\":1,\"model\":\"gpt-4o-mini\",\"choices\":[{{\"index\":0,\"message\":{{\"role\":\"assistant\",\"content\":\"{}\"}},\"finish_reason\":\"stop\"}}],\"usage\":{{\"prompt_tokens\":230,\"completion_tokens\":103,\"total_tokens\":333,\"prompt_tokens_details\":{{\"cached_tokens\":0,\"audio_tokens\":0}},\"completion_tokens_details\":{{\"reasoning_tokens\":0,\"audio_tokens\":0}}}}}}",
        "The quick brown fox jumps over the lazy dog. ".repeat(18)
    ));
    let mut group = c.benchmark_group("json");
    group.throughput(Throughput::Bytes(body.len() as u64));
    let counters = Arc::new(UsageCounters::default());
    // Unpriced (no row for the model) against priced: what pricing an
    // answer adds to the tap (docs/performance.md "Pricing: what costing every answer adds").
    let unpriced = TokenMetrics::detached(None);
    let priced = TokenMetrics::detached(Some(keygate::usage::prices::Price {
        input: 150_000,
        cached_input: 75_000,
        output: 600_000,
        cache_write: 150_000,
    }));
    for (name, metrics) in [
        ("usage tap, 1.1 KB chat completion", &unpriced),
        ("usage tap, 1.1 KB chat completion, priced", &priced),
    ] {
        group.bench_function(name, |b| {
            b.iter(|| {
                let mut tap = MeterTap::new(
                    counters.clone(),
                    metrics.clone(),
                    Some("application/json"),
                    false,
                    Outcome::default(),
                    None,
                );
                black_box(tap.on_data(body.clone()));
                tap.finish(true);
            })
        });
    }
    group.finish();
}

/// Writes `chunks` into one end of a Unix socket pair from a thread and reads
/// them back on the other, feeding each read to `tap` when given.
fn socket_copy(chunks: &[Bytes], mut tap: Option<MeterTap>) -> usize {
    use std::io::{Read, Write};
    let (mut tx, mut rx) = std::os::unix::net::UnixStream::pair().expect("socket pair");
    let total: usize = chunks.iter().map(|c| c.len()).sum();
    let chunks = chunks.to_vec();
    let writer = std::thread::spawn(move || {
        for chunk in &chunks {
            tx.write_all(chunk).expect("write");
        }
    });
    let mut buf = vec![0u8; 4096];
    let mut seen = 0;
    while seen < total {
        let n = rx.read(&mut buf).expect("read");
        // As in the proxy, each read becomes a `Bytes` frame, tapped or not.
        let frame = Bytes::copy_from_slice(&buf[..n]);
        match tap.as_mut() {
            Some(tap) => black_box(tap.on_data(frame)),
            None => black_box(Some(frame)),
        };
        seen += n;
    }
    writer.join().expect("writer");
    if let Some(tap) = tap.as_mut() {
        tap.finish(true);
    }
    seen
}

fn new_tap(strip: bool) -> MeterTap {
    let metrics = TokenMetrics::detached(None);
    MeterTap::new(
        Arc::new(UsageCounters::default()),
        metrics,
        Some("text/event-stream"),
        strip,
        Outcome::default(),
        None,
    )
}

/// The per-request log line at the default `info`, into a sink: the stock
/// formatter against keygate's (the same text, see `log_format`), and
/// keygate's JSON line (`log_format = "json"`).
fn access_log(c: &mut Criterion) {
    fn line() {
        tracing::info!(
            client = "app-one",
            provider = "openai",
            status = 200u16,
            latency_us = 1234u64,
            key_id = "key_0d59ba4a",
            attempts = 1u32,
            error = "-",
            "request"
        );
    }
    let mut group = c.benchmark_group("access log line");
    let stock = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_writer(std::io::sink)
        .finish();
    tracing::subscriber::with_default(stock, || {
        group.bench_function("stock formatter", |b| b.iter(line));
    });
    let fast = keygate::control::log_format::builder()
        .with_writer(std::io::sink)
        .finish();
    tracing::subscriber::with_default(fast, || {
        group.bench_function("keygate's formatter", |b| b.iter(line));
    });
    let json = keygate::control::log_format::json_builder()
        .with_writer(std::io::sink)
        .finish();
    tracing::subscriber::with_default(json, || {
        group.bench_function("keygate's JSON formatter", |b| b.iter(line));
    });
    group.finish();
}

criterion_group!(benches, request_stages, sse_tap, json_tap, access_log);
criterion_main!(benches);
