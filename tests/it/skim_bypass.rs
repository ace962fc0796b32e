//! Bodies the skim cannot judge, and what the upstream would read differently
//! (issue 14 items 3 and 7; docs/design.md §4, §7, §8; README "Security model"):
//! leading whitespace, escaped keys and repeated keys are read as the
//! upstream's JSON parser reads them — for routing, the stream usage option
//! and the budget alike; one client's made-up model names stay in its own
//! `(other)`; and paths that servers normalise to another path are refused
//! with 400 `invalid_path` before they reach an upstream with its key.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::client::{open_h1, read_body, read_whole, send_raw};
use crate::support::metrics::{metric_value, samples};
use crate::support::usage::{mock_stream_usage, row};
use crate::support::world::{Opts, World};
use crate::support::{Env, Req};

/// The bodies of the issue, each a streaming chat request for gpt-4o that
/// does not ask for usage: leading whitespace, and an escaped `stream` key.
fn evasive_streams() -> [&'static str; 4] {
    [
        // A byte order mark first: keygate drops it, so it and the upstream
        // read the same body.
        "\u{feff}{\"model\":\"gpt-4o\",\"stream\":true,\"max_tokens\":10,\"messages\":[]}",
        r#" {"model":"gpt-4o","stream":true,"max_tokens":10,"messages":[{"role":"user","content":"hi"}]}"#,
        r#"{"model":"gpt-4o","str\u0065am":true,"max_tokens":10,"messages":[{"role":"user","content":"hi"}]}"#,
        "\r\n\t{\"model\":\"gpt-4o\",\"stream\":true,\"max_tokens\":10,\"messages\":[]}\n",
    ]
}

fn raw_chat(key: &str, body: &str) -> Req {
    Req::post("/v1/chat/completions")
        .bearer(key)
        .header("content-type", "application/json")
        .body(body.to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn spaced_and_escaped_streams_get_the_usage_option_and_are_metered() {
    let w = World::start(Opts::default()).await;
    let bodies = evasive_streams();
    for body in bodies {
        let resp = open_h1(w.server.client, raw_chat(w.key("app"), body)).await;
        assert_eq!(resp.status(), 200, "{body}");
        let (streamed, clean) = read_body(resp).await;
        assert!(clean, "{body}: the stream ended early");
        let sent = w.openai.last().json();
        assert_eq!(
            sent["stream_options"]["include_usage"],
            Value::Bool(true),
            "keygate must ask for usage on {body:?}; the upstream got {sent}"
        );
        // The client did not ask, so it does not see the usage chunk.
        let streamed = String::from_utf8_lossy(&streamed);
        assert!(
            !streamed.contains("\"choices\":[]"),
            "{body}: the usage-only chunk reached a client that did not ask:\n{streamed}"
        );
    }
    let (_, _, total) = mock_stream_usage();
    let want = bodies.len() as u64 * total;
    let rows = w
        .ledger_until("the streams' tokens", |r| {
            r.get(&row("app", "openai", "gpt-4o"))
                .is_some_and(|t| t.total >= want)
        })
        .await;
    assert_eq!(rows[&row("app", "openai", "gpt-4o")].total, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn spaced_and_escaped_streams_cannot_outrun_a_small_budget() {
    const BUDGET: u64 = 300;
    let w = World::start(Opts {
        limits: &[("app", &["--budget-tokens", "300"])],
        ..Opts::default()
    })
    .await;
    let (_, _, per_stream) = mock_stream_usage();
    assert!(per_stream > 0);
    // Each stream reserves ~40 tokens and really uses `per_stream`; the
    // budget must run out within BUDGET / per_stream + a few streams.
    let most = BUDGET / per_stream + 3;
    assert!(most < 40, "the test must be able to fail");
    let bodies = evasive_streams();
    let mut refusal = None;
    for n in 0..40 {
        let body = bodies[n % bodies.len()];
        let resp = open_h1(w.server.client, raw_chat(w.key("app"), body)).await;
        if resp.status() == 200 {
            let (_, clean) = read_body(resp).await;
            assert!(clean);
            continue;
        }
        refusal = Some((n, read_whole(resp).await));
        break;
    }
    let (admitted, resp) = refusal.unwrap_or_else(|| {
        panic!(
            "40 spaced or escaped streams were all admitted under --budget-tokens {BUDGET}; ledger: {:#?}",
            w.ledger()
        )
    });
    w.server.record("budget 429", resp.everything());
    resp.assert_keygate_error(429, "client_budget_exceeded");
    assert!(
        admitted as u64 <= most,
        "{admitted} streams of {per_stream} tokens admitted under a budget of {BUDGET}"
    );
    assert_eq!(w.openai.hits(), admitted, "the refused stream stays here");
    let rows = w
        .ledger_until("the admitted streams' tokens", |r| {
            r.get(&row("app", "openai", "gpt-4o"))
                .is_some_and(|t| t.total >= admitted as u64 * per_stream)
        })
        .await;
    assert_eq!(
        rows[&row("app", "openai", "gpt-4o")].total,
        admitted as u64 * per_stream
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_model_the_upstream_reads_is_the_one_routed_on() {
    let env = Env::start().await;
    for body in [
        r#" {"model":"grok-3"}"#,
        "\n{\"model\":\"grok-3\",\"messages\":[]}\r\n",
        r#"{"model":"gpt-4o","model":"grok-3"}"#,
        r#"{"model":"gpt-4o","m\u006fdel":"grok-3"}"#,
        r#"{"model":"gr\u006fk-3"}"#,
    ] {
        let before = (env.xai.hits(), env.openai.hits());
        let resp = env.server.send(raw_chat(&env.client_key, body)).await;
        assert_eq!(resp.status, 200, "{body}: {}", resp.text());
        assert_eq!(
            (env.xai.hits(), env.openai.hits()),
            (before.0 + 1, before.1),
            "{body:?} names grok-3 for the upstream's parser: it must go to xai"
        );
    }
    // And the other way round: the last model is gpt-4o.
    let resp = env
        .server
        .send(raw_chat(
            &env.client_key,
            r#"{"model":"grok-3","model":"gpt-4o"}"#,
        ))
        .await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(env.openai.hits(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_clients_made_up_models_do_not_push_anothers_into_other() {
    let w = World::start(Opts {
        clients: &["junk", "app"],
        env: &[
            ("KEYGATE_METERING__MAX_SERIES", "20"),
            ("KEYGATE_METERING__MAX_SERIES_PER_CLIENT", "5"),
        ],
        ..Opts::default()
    })
    .await;
    // Far more made-up models than the whole cap.
    for n in 0..30 {
        let resp = w.server.send(w.chat("junk", &format!("made-up-{n}"))).await;
        assert_eq!(resp.status, 200, "{}", resp.text());
    }
    let resp = w.server.send(w.chat("app", "gpt-4o")).await;
    assert_eq!(resp.status, 200, "{}", resp.text());

    let metrics = w.metrics().await;
    let tokens = |client: &str, model: &str| {
        metric_value(
            &metrics,
            "keygate_tokens_total",
            &[("client", client), ("model", model)],
        )
        .unwrap_or(0.0)
    };
    assert!(
        tokens("app", "gpt-4o") > 0.0,
        "app's gpt-4o must keep its name in /metrics:\n{metrics}"
    );
    assert_eq!(tokens("app", "(other)"), 0.0, "{metrics}");
    assert!(tokens("junk", "(other)") > 0.0, "{metrics}");
    let junk_models = samples(&metrics)
        .iter()
        .filter(|s| s.name == "keygate_tokens_total")
        .filter(|s| s.has(&[("client", "junk"), ("kind", "prompt")]))
        .count();
    assert_eq!(
        junk_models, 6,
        "junk: its first 5 models and its (other):\n{metrics}"
    );

    let rows = w
        .ledger_until("both clients' requests", |r| {
            r.contains_key(&row("app", "openai", "gpt-4o"))
                && r.get(&row("junk", "openai", "(other)"))
                    .is_some_and(|t| t.requests == 25)
        })
        .await;
    assert_eq!(rows[&row("app", "openai", "gpt-4o")].requests, 1);
    assert!(!rows.contains_key(&row("app", "openai", "(other)")));
}

/// Paths that some server on the way would read as another path.
const ABNORMAL_PATHS: &[&str] = &[
    r"/v1/chat\completions",
    r"/v1\..\admin",
    "/v1/%5c../models",
    "/v1/%5Cmodels",
    "/v1/%252e%252e/models",
    "/v1/models%25",
    "/v1/%2e%2e/models",
    "/v1/%2E/models",
    "/v1/chat%2fcompletions",
    "/v1/chat%2Fcompletions",
    "/v1/models%",
    "/v1/models%2",
    "/v1/mo%zzdels",
    "/v1/models%00.json",
    "/v1/../v1/models",
    "/openai/v1/%2e%2e/%2e%2e/admin",
    // Servlet containers drop a segment's `;parameters` before resolving it.
    "/openai/v1/..;/x",
    "/v1/.;jsessionid=1/models",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn paths_that_normalise_differently_are_refused_with_invalid_path() {
    let env = Env::start().await;
    for path in ABNORMAL_PATHS {
        let raw = format!(
            "GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nConnection: close\r\n\r\n",
            env.client_key
        );
        let (status, text) = send_raw(env.server.client, raw.as_bytes()).await;
        env.server.record(&format!("GET {path}"), text.clone());
        assert_eq!(status, 400, "{path}: {text}");
        let body = text.split("\r\n\r\n").nth(1).unwrap_or_default();
        let json: Value =
            serde_json::from_str(body).unwrap_or_else(|e| panic!("{path}: not JSON ({e}): {text}"));
        assert_eq!(json["error"]["code"], "invalid_path", "{path}: {text}");
        assert_eq!(json["error"]["type"], "invalid_request_error", "{path}");
    }
    assert_eq!(
        env.openai.hits() + env.xai.hits(),
        0,
        "no abnormal path may reach an upstream"
    );

    // Legitimate escapes in the path, and anything in the query, still go up.
    let started = Instant::now();
    for (path, seen) in [
        (
            "/v1/models?after=%252e%2e%5c&q=a%25b",
            "/v1/models?after=%252e%2e%5c&q=a%25b",
        ),
        ("/v1/files/file%20a%41", "/v1/files/file%20a%41"),
        ("/v1/models", "/v1/models"),
    ] {
        let raw = format!(
            "GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nConnection: close\r\n\r\n",
            env.client_key
        );
        let (status, text) = send_raw(env.server.client, raw.as_bytes()).await;
        assert_ne!(status, 400, "{path}: {text}");
        assert_eq!(env.openai.last().uri, seen, "{path}");
    }
    assert_eq!(env.openai.hits(), 3);
    assert!(started.elapsed() < Duration::from_secs(10));
}
