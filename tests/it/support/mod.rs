//! The harness, the only place behaviour files import from. A map:
//!
//! - Processes: [`keygate`] runs the real binary in a private tempdir
//!   ([`config`] writes its TOML), [`server`] wraps a running `keygate serve`,
//!   [`jail`] runs it as a deploy file would (its uid, groups, read-only root).
//! - Worlds: [`env`] builds the usual one (recording mocks for openai and xai,
//!   keys in the vault, client `app`); [`world`] the metering one (several
//!   named clients, the admin token, a short flush interval).
//! - Upstreams: [`mock`] is the recording, scriptable OpenAI-style upstream;
//!   [`anthropic`] and [`responses`] mock Anthropic's Messages and OpenAI's
//!   Responses API on [`recording`]'s small server; [`provider_answers`] holds
//!   what real providers answer; [`raw_upstream`] plays byte-exact scripts;
//!   [`bad_upstream`] misbehaves at the TCP and HTTP level; [`management`]
//!   mocks the providers' key-creating management APIs; [`otlp`] is an
//!   OpenTelemetry collector (OTLP/HTTP traces, decoded with the official
//!   protobuf definitions).
//! - Clients: [`client`] talks HTTP/1.1 and h2c to keygate (and raw bytes);
//!   [`raw_h2`] writes HTTP/2 frames and HPACK by hand; [`outcome`] reports
//!   what a client saw for one request without panicking.
//! - Reading results: [`metrics`] is the one `/metrics` parser; [`keys`] tells
//!   which upstream key is in use (`key list --json`, the key a request
//!   carried); [`usage`] turns ledger output into rows.
//! - Skips: [`skips`] is how a test says loudly that a tool it needs (an
//!   SDK, a browser, promtool) is missing, or fails under `KEYGATE_REQUIRE_*`.
//!
//! This file holds the small shared pieces: the fake keys, the leak finder,
//! bounded polling ([`eventually`]).

#![allow(dead_code)]

pub mod anthropic;
pub mod bad_upstream;
pub mod client;
pub mod config;
pub mod env;
pub mod jail;
pub mod keygate;
pub mod keys;
pub mod management;
pub mod metrics;
pub mod mock;
pub mod otlp;
pub mod outcome;
pub mod postgres;
pub mod provider_answers;
pub mod raw_h2;
pub mod raw_upstream;
pub mod recording;
pub mod redis;
pub mod responses;
pub mod server;
pub mod skips;
pub mod usage;
pub mod webhook;
pub mod world;

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::body::Frame;
use tokio::sync::mpsc;

pub use client::Req;
pub use config::KeygateBuilder;
pub use env::Env;
pub use keygate::Keygate;
pub use mock::Mock;
pub use server::Server;

/// The openai upstream key the standard [`Env`] puts in the vault (obviously fake).
pub const OPENAI_KEY: &str = "sk-test-oa1-Zq7Wm2Xv9Lr4Tp6Kd8Hs3Nj5Bc0Fg";
/// The xai upstream key the standard [`Env`] puts in the vault (obviously fake).
pub const XAI_KEY: &str = "xai-test-Yh4Qe8Rw1Ut6Io3Pa9Sd2Gf7Jk5Lz0Mx";
/// A second openai key, for fallback and rotation cases.
pub const OPENAI_KEY_2: &str = "sk-test-oa2-Cv5Bn8Mq1We4Rt7Yu0Ia3So6Dp9Fh";

/// How long a change made by the CLI may take to reach a running server
/// (docs/design.md §2 says within one second).
pub const RELOAD_WAIT: Duration = Duration::from_secs(3);

/// A request body fed from a channel: one data frame per message, ends when the
/// sender is dropped. No size hint, so HTTP/1.1 sends it chunked.
pub struct ChannelBody(pub mpsc::Receiver<Bytes>);

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|m| m.map(|b| Ok(Frame::data(b))))
    }
}

/// Run blocking work (waiting on a child process) without starving the test's
/// tokio runtime.
pub fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

/// The first `prefix`+alphanumerics token in `text` that starts at a word boundary.
pub fn find_token(text: &str, prefix: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut from = 0;
    while let Some(i) = text[from..].find(prefix) {
        let start = from + i;
        let boundary = start == 0 || {
            let c = bytes[start - 1];
            !(c.is_ascii_alphanumeric() || c == b'_')
        };
        let rest = &text[start + prefix.len()..];
        let len = rest
            .bytes()
            .take_while(|c| c.is_ascii_alphanumeric())
            .count();
        if boundary && len > 0 {
            return Some(format!("{prefix}{}", &rest[..len]));
        }
        from = start + prefix.len();
    }
    None
}

/// Every 8-character window of `secret`.
pub fn windows(secret: &str) -> Vec<&str> {
    let idx: Vec<usize> = secret
        .char_indices()
        .map(|(i, _)| i)
        .chain([secret.len()])
        .collect();
    if idx.len() <= 9 {
        return vec![secret];
    }
    (0..idx.len() - 8)
        .map(|i| &secret[idx[i]..idx[i + 8]])
        .collect()
}

/// A secret and its base64 forms (standard and URL-safe, padded or not), so
/// a secret that was encoded on its way into a log is found too.
fn with_base64_forms(secret: &str) -> Vec<String> {
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
    use base64::Engine;
    let mut forms = vec![secret.to_string()];
    for engine in [STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD] {
        let encoded = engine.encode(secret);
        if !forms.contains(&encoded) {
            forms.push(encoded);
        }
    }
    forms
}

/// For each (label, text), every secret window found in it (of the secret or
/// of its base64 form), as messages.
pub fn find_leaks(secrets: &[String], captures: &[(String, String)]) -> Vec<String> {
    let secrets: Vec<String> = secrets.iter().flat_map(|s| with_base64_forms(s)).collect();
    // Each text is walked once against a table of every window: the captures
    // of a long run (hundreds of streams) would otherwise cost windows × bytes.
    let mut by_window: std::collections::HashMap<&str, Vec<usize>> = Default::default();
    for (n, secret) in secrets.iter().enumerate() {
        for w in windows(secret) {
            by_window.entry(w).or_default().push(n);
        }
    }
    let mut leaks = Vec::new();
    for (label, text) in captures {
        let mut first: Vec<Option<(usize, &str)>> = vec![None; secrets.len()];
        for (n, secret) in secrets.iter().enumerate() {
            if secret.chars().count() <= 8 {
                first[n] = text.find(secret.as_str()).map(|at| (at, secret.as_str()));
            }
        }
        let idx: Vec<usize> = text
            .char_indices()
            .map(|(i, _)| i)
            .chain([text.len()])
            .collect();
        for i in 0..idx.len().saturating_sub(8) {
            let w = &text[idx[i]..idx[i + 8]];
            for &n in by_window.get(w).into_iter().flatten() {
                first[n].get_or_insert((idx[i], w));
            }
        }
        for (n, hit) in first.into_iter().enumerate() {
            let Some((at, w)) = hit else { continue };
            let secret = &secrets[n];
            let lo = text[..at]
                .char_indices()
                .rev()
                .nth(80)
                .map_or(0, |(i, _)| i);
            let line_end = text[at..].find('\n').map_or(text.len(), |e| at + e);
            leaks.push(format!(
                "- `{w}` (from a secret ending …{}) in [{label}]: …{}",
                &secret[secret.len().saturating_sub(4)..],
                &text[lo..line_end.min(at + 200)]
            ));
        }
    }
    leaks
}

/// A minimal chat completion request body.
pub fn chat_body(model: &str) -> serde_json::Value {
    serde_json::json!({
        "model": model,
        "messages": [{"role": "user", "content": "Say hello."}]
    })
}

/// Poll `f` every 50 ms until it returns `Some`, for at most `limit`.
pub async fn eventually<T, F, Fut>(limit: Duration, mut f: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f().await {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[test]
fn harness_finds_secret_windows() {
    let secrets = vec![OPENAI_KEY.to_string()];
    let clean = vec![(
        "log".to_string(),
        "fingerprint sk-…0Fg, id key_1".to_string(),
    )];
    assert!(find_leaks(&secrets, &clean).is_empty());
    let leaked = vec![("log".to_string(), "header=Bearer Xv9Lr4Tp".to_string())];
    assert_eq!(find_leaks(&secrets, &leaked).len(), 1);
    use base64::Engine;
    let encoded = base64::engine::general_purpose::STANDARD.encode(OPENAI_KEY);
    let leaked = vec![("log".to_string(), format!("basic auth {encoded}"))];
    assert!(!find_leaks(&secrets, &leaked).is_empty(), "base64 form");
    assert_eq!(
        find_token("id key_3f9a1c20, fp sk-…wxyz", "key_").as_deref(),
        Some("key_3f9a1c20")
    );
    assert_eq!(
        find_token("your key: kg_abc123XYZ\n", "kg_").as_deref(),
        Some("kg_abc123XYZ")
    );
}
