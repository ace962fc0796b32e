//! Telemetry teams already collect (docs/operations.md "Logs", "Traces"):
//! `[server] log_format = "json"` writes every log line as one JSON object,
//! and `[telemetry] otlp_endpoint` sends OpenTelemetry traces over OTLP/HTTP
//! to a real receiver here, decoded with the official protobuf definitions —
//! a span per request with the GenAI attributes and keygate's own, spans for
//! rotations and management API calls, never a secret (the receiver's bytes join the leak check), and
//! a collector that is down or hangs never slows a request.

use std::time::{Duration, Instant};

use crate::support::client::Req;
use crate::support::keys::key_id;
use crate::support::management::{admin_table, set_admin, Api, Management, OPENAI_ADMIN};
use crate::support::mock::closed_port_url;
use crate::support::otlp::{Collector, ReceivedSpan};
use crate::support::{Env, KeygateBuilder, OPENAI_KEY, OPENAI_KEY_2};

/// Exports every 50 ms instead of every 5 s (the SDK's standard variable).
const QUICK_EXPORT: (&str, &str) = ("OTEL_BSP_SCHEDULE_DELAY", "50");

/// An admin token for the rotation test (not a word).
const TOKEN: &str = "kgadm-otel-Wq3Zx7Lv1Np5Rt9Yb2";

/// OTLP span kinds.
const SERVER: i32 = 2;
const INTERNAL: i32 = 1;
const CLIENT: i32 = 3;

fn traced(collector: &Collector, extra: &str) -> impl FnOnce(KeygateBuilder) -> KeygateBuilder {
    let table = collector.table(extra);
    move |b| b.extra(&table)
}

/// The request span with this status.
fn request_span(spans: &[ReceivedSpan], status: i64) -> &ReceivedSpan {
    spans
        .iter()
        .find(|s| s.kind == SERVER && s.attr("http.response.status_code") == status)
        .unwrap_or_else(|| panic!("no request span with status {status}: {spans:#?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn each_request_is_a_span_with_the_genai_and_keygate_attributes() {
    let collector = Collector::start().await;
    let env = Env::setup()
        .key("openai", OPENAI_KEY_2, &["--fallback"])
        .config(traced(&collector, "service_name = \"keygate-edge\""))
        .serve_env(QUICK_EXPORT.0, QUICK_EXPORT.1)
        .start()
        .await;
    // The current key is rejected: the answer comes with the fallback.
    env.openai.set_keys(&[OPENAI_KEY_2]);
    let before = std::time::SystemTime::now();
    let resp = env.server.send(env.chat("gpt-4o")).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    let stream = env.server.send(env.chat_stream("gpt-4o-mini")).await;
    assert_eq!(stream.status, 200, "{}", stream.text());
    let refused = env
        .server
        .send(Req::post("/v1/chat/completions").json(&crate::support::chat_body("gpt-4o")))
        .await;
    assert_eq!(refused.status, 401);

    let fallback_id = key_id(&env.kg, "openai", OPENAI_KEY_2);
    let spans = collector.wait_for("chat gpt-4o", 1).await;
    let span = &spans[0];
    assert_eq!(span.kind, SERVER, "{span:#?}");
    for (key, value) in [
        ("gen_ai.system", serde_json::json!("openai")),
        ("gen_ai.operation.name", serde_json::json!("chat")),
        ("gen_ai.request.model", serde_json::json!("gpt-4o")),
        // The mock's usage: 11 prompt, 7 completion tokens.
        ("gen_ai.usage.input_tokens", serde_json::json!(11)),
        ("gen_ai.usage.output_tokens", serde_json::json!(7)),
        ("http.response.status_code", serde_json::json!(200)),
        ("keygate.client", serde_json::json!("app")),
        ("keygate.provider", serde_json::json!("openai")),
        ("keygate.key_id", serde_json::json!(fallback_id)),
        ("keygate.attempts", serde_json::json!(2)),
        ("keygate.fallback_reason", serde_json::json!("rejected")),
        ("keygate.outcome", serde_json::json!("complete")),
    ] {
        assert_eq!(span.attr(key), value, "{key} in {span:#?}");
    }
    assert_eq!(span.resource["service.name"], "keygate-edge");
    assert_eq!(span.status_code, 0, "a 200 is no error: {span:#?}");
    let since_epoch = |t: std::time::SystemTime| {
        t.duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos() as u64
    };
    assert!(
        since_epoch(before) <= span.start_unix_nano + 5_000_000
            && span.start_unix_nano <= span.end_unix_nano,
        "the span runs from the request's start to its end: {span:#?}"
    );

    // A stream's span has the tokens its last chunk reported.
    let streamed = collector.wait_for("chat gpt-4o-mini", 1).await;
    let streamed = &streamed[0];
    assert!(
        streamed.attr("gen_ai.usage.output_tokens").as_i64() > Some(0),
        "{streamed:#?}"
    );
    assert_eq!(streamed.attr("keygate.attempts"), 1);
    assert_eq!(
        streamed.attr("keygate.fallback_reason"),
        serde_json::Value::Null
    );

    // A refused client key: a span with the reason, and no key.
    let spans = eventually_spans(&collector, |spans| {
        spans
            .iter()
            .any(|s| s.attr("http.response.status_code") == 401)
    })
    .await;
    let refused = request_span(&spans, 401);
    assert_eq!(refused.attr("keygate.auth_failure"), "missing");
    assert_eq!(refused.attr("error.type"), "invalid_client_key");
    assert_eq!(refused.attr("keygate.key_id"), serde_json::Value::Null);

    assert!(
        collector
            .content_types()
            .iter()
            .all(|t| t == "application/x-protobuf"),
        "{:?}",
        collector.content_types()
    );
    // Every byte the collector received is searched for every secret.
    env.kg.record("otlp export", collector.raw_text());
}

async fn eventually_spans(
    collector: &Collector,
    done: impl Fn(&[ReceivedSpan]) -> bool,
) -> Vec<ReceivedSpan> {
    crate::support::eventually(Duration::from_secs(15), || async {
        let spans = collector.spans();
        done(&spans).then_some(spans)
    })
    .await
    .unwrap_or_else(|| panic!("the spans did not arrive: {:#?}", collector.spans()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rotations_and_management_calls_are_spans_even_when_no_request_is_sampled() {
    let collector = Collector::start().await;
    let management = Management::start(Api::OpenAi, OPENAI_ADMIN).await;
    let tables = format!(
        "{}\n{}",
        admin_table("openai", Api::OpenAi, &management.url()),
        collector.table("sample_ratio = 0.0")
    );
    let env = Env::setup()
        .config(move |b| b.extra(&tables))
        .serve_env(QUICK_EXPORT.0, QUICK_EXPORT.1)
        .serve_env("KEYGATE_ADMIN_TOKEN", TOKEN)
        .start()
        .await;
    env.kg.register_secret(TOKEN);
    env.kg.register_secret(OPENAI_KEY_2);
    management.connect(env.openai.key_adder());
    set_admin(&env.kg, "openai", OPENAI_ADMIN);
    assert_eq!(env.server.send(env.chat("gpt-4o")).await.status, 200);
    let rotate = |body: serde_json::Value| {
        Req::post("/admin/keys/openai/rotate")
            .bearer(TOKEN)
            .json(&body)
    };

    // A rotation with a key given.
    let old = key_id(&env.kg, "openai", OPENAI_KEY);
    let resp = env
        .server
        .send_admin(rotate(
            serde_json::json!({"secret": OPENAI_KEY_2, "verify": false}),
        ))
        .await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    let given = key_id(&env.kg, "openai", OPENAI_KEY_2);
    let spans = collector.wait_for("keygate.rotation", 1).await;
    let rotation = &spans[0];
    assert_eq!(rotation.kind, INTERNAL);
    assert_eq!(rotation.attr("keygate.provider"), "openai");
    assert_eq!(rotation.attr("keygate.minted"), false);
    assert_eq!(rotation.attr("keygate.key_id"), serde_json::json!(given));
    assert_eq!(
        rotation.attr("keygate.previous_key_id"),
        serde_json::json!(old)
    );

    // A minted rotation: its calls to the management API are its children.
    let resp = env
        .server
        .send_admin(rotate(serde_json::json!({"mint": true, "grace": "1h"})))
        .await;
    for key in management.created() {
        env.kg.register_secret(&key.secret);
    }
    assert_eq!(resp.status, 200, "{}", resp.text());
    let promoted = resp.json()["promoted"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let spans = collector.wait_for("keygate.rotation", 2).await;
    let minted = spans
        .iter()
        .find(|s| s.attr("keygate.minted") == true)
        .unwrap_or_else(|| panic!("no minted rotation: {spans:#?}"));
    assert_eq!(minted.attr("keygate.key_id"), serde_json::json!(promoted));
    assert_eq!(
        minted.attr("keygate.previous_key_id"),
        serde_json::json!(given)
    );
    let calls = collector.wait_for("keygate.management_call", 2).await;
    for call in &calls {
        assert_eq!(call.kind, CLIENT, "{call:#?}");
        assert_eq!(call.attr("keygate.provider"), "openai");
        assert_eq!(
            (&call.trace_id, &call.parent_span_id),
            (&minted.trace_id, &minted.span_id),
            "a management call of the rotation is its child: {call:#?}"
        );
    }
    let create = calls
        .iter()
        .find(|c| c.attr("http.request.method") == "POST")
        .unwrap_or_else(|| panic!("no create call: {calls:#?}"));
    let status = create.attr("http.response.status_code").as_i64();
    assert!(
        status.is_some_and(|s| (200..300).contains(&s)),
        "{create:#?}"
    );
    assert!(
        create
            .attr("keygate.action")
            .as_str()
            .is_some_and(|a| a.starts_with("create the key keygate-openai-")),
        "{create:#?}"
    );
    // sample_ratio 0: the request (which ended before the rotations began)
    // was not exported.
    assert!(
        collector.spans().iter().all(|s| s.kind != SERVER),
        "{:#?}",
        collector.spans()
    );
    env.kg.record("otlp export", collector.raw_text());
}

/// p50 and p99 of `samples`.
fn percentiles(samples: &mut [Duration]) -> (Duration, Duration) {
    samples.sort();
    let at = |q: f64| samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)];
    (at(0.50), at(0.99))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_collector_that_is_down_or_hangs_never_slows_a_request() {
    const N: usize = 300;
    let plain = Env::start().await;
    let down = Env::setup()
        .config(move |b| {
            b.extra(&format!(
                "\n[telemetry]\notlp_endpoint = \"{}\"\n",
                closed_port_url()
            ))
        })
        .serve_env(QUICK_EXPORT.0, QUICK_EXPORT.1)
        .start()
        .await;
    let hanging = Collector::start().await;
    hanging.hang();
    let held = Env::setup()
        .config(traced(&hanging, ""))
        .serve_env(QUICK_EXPORT.0, QUICK_EXPORT.1)
        .start()
        .await;
    let envs = [&plain, &down, &held];
    // Warm each (connections, first series) before measuring.
    for env in envs {
        assert_eq!(env.server.send(env.chat("gpt-4o")).await.status, 200);
    }
    let mut latencies: [Vec<Duration>; 3] = Default::default();
    // Interleaved, so the three see the same machine.
    for _ in 0..N {
        for (env, samples) in envs.iter().zip(latencies.iter_mut()) {
            let sent = Instant::now();
            let resp = env.server.send(env.chat("gpt-4o")).await;
            samples.push(sent.elapsed());
            assert_eq!(resp.status, 200, "{}", resp.text());
        }
    }
    let [mut off, mut refused, mut hangs] = latencies;
    let (off50, off99) = percentiles(&mut off);
    let (refused50, refused99) = percentiles(&mut refused);
    let (hang50, hang99) = percentiles(&mut hangs);
    eprintln!(
        "{N} requests each: no telemetry p50 {off50:?} p99 {off99:?}; collector down p50 {refused50:?} p99 {refused99:?}; collector hanging p50 {hang50:?} p99 {hang99:?}"
    );
    // Export was really attempted, and failing, all along.
    down.server
        .wait_for_log("OpenTelemetry trace export failed")
        .await;
    assert!(
        hanging.held() >= 1,
        "the hanging collector was never called"
    );
    let bound = off99 * 3 + Duration::from_millis(25);
    assert!(
        refused99 <= bound && hang99 <= bound,
        "p99 with the collector down {refused99:?} / hanging {hang99:?} against {off99:?} without telemetry"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn json_logs_are_one_object_per_line_with_the_request_fields() {
    let mut env = Env::setup()
        .config(|b| b.server("log_format", "\"json\""))
        .start()
        .await;
    assert_eq!(env.server.send(env.chat("gpt-4o")).await.status, 200);
    env.server.wait_for_log("\"message\":\"request\"").await;
    env.server.stop_and_read_everything();
    let stderr = env.server.stderr();
    let lines: Vec<serde_json::Value> = stderr
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    // Every line at RUST_LOG=trace, keygate's and its libraries', is an object.
    assert!(
        lines.iter().any(|l| l["target"]
            .as_str()
            .is_some_and(|t| !t.starts_with("keygate"))),
        "no library's line: {stderr}"
    );
    for line in &lines {
        for field in ["timestamp", "level", "target"] {
            assert!(line[field].is_string(), "{field} missing: {line}");
        }
    }
    let request = lines
        .iter()
        .find(|l| l["message"] == "request")
        .unwrap_or_else(|| panic!("no request line: {stderr}"));
    let key = key_id(&env.kg, "openai", OPENAI_KEY);
    assert_eq!(request["level"], "INFO");
    assert_eq!(request["target"], "keygate::proxy");
    assert_eq!(request["client"], "app");
    assert_eq!(request["provider"], "openai");
    assert_eq!(request["status"], 200);
    assert_eq!(request["key_id"], key.as_str());
    assert_eq!(request["attempts"], 1);
    assert_eq!(request["error"], "-");
    assert!(request["latency_us"].as_u64().is_some(), "{request}");
    assert!(
        lines.iter().any(|l| l["message"] == "keygate stopped"),
        "{stderr}"
    );
}

#[test]
fn bad_telemetry_settings_stop_the_start() {
    let base = || {
        KeygateBuilder::new()
            .provider("openai", "http://127.0.0.1:9", "bearer")
            .provider("xai", "http://127.0.0.1:9", "bearer")
    };
    for (builder, expected) in [
        (
            base().extra("[telemetry]\notlp_endpoint = \"grpc://collector:4317\""),
            "telemetry.otlp_endpoint `grpc://collector:4317` must be http:// or https://",
        ),
        (
            base().extra(
                "[telemetry]\notlp_endpoint = \"http://127.0.0.1:4318\"\nsample_ratio = 1.5",
            ),
            "telemetry.sample_ratio must be between 0 and 1",
        ),
        (base().server("log_format", "\"yaml\""), "log_format"),
    ] {
        let kg = crate::support::Keygate::new(&builder);
        let out = kg.run_with(&["serve"], None, &[]);
        out.assert_code(2, "serve with bad telemetry settings");
        assert!(out.stderr.contains(expected), "{expected}: {}", out.stderr);
        assert!(!out.stdout.contains("listener on"), "{}", out.stdout);
    }
}
