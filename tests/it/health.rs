//! Runtime key health and the fallback (docs/design.md §5, README "The 401 fallback"):
//! a rejected key is suspect, skipped, probed (single-flight) after
//! `suspect_cooldown` and restored; each key is tried at most once per request;
//! a body over `retry_buffer` gets one attempt; a 429 moves to the next key for
//! `Retry-After`. And the metrics that follow these transitions.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

use crate::support::keys::{bearer, key_id, key_of};
use crate::support::metrics::metric_value;
use crate::support::mock::{chat_completion_body, sse_events};
use crate::support::outcome::{one_request, Outcome};
use crate::support::{eventually, Env, Req, OPENAI_KEY, OPENAI_KEY_2};

/// A third openai key for pools (obviously fake).
const OPENAI_KEY_3: &str = "sk-test-oa3-Lm6Tb1Vq8Zr3Wx5Ke7Pn2Dj4Ha0Cu";

async fn metrics(env: &Env) -> String {
    let resp = env.server.admin_get("/metrics").await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    resp.text()
}

/// Upstream chat requests carrying `key`.
fn attempts_with(env: &Env, key: &str) -> usize {
    env.openai
        .requests()
        .iter()
        .filter(|s| s.uri == "/v1/chat/completions" && key_of(s) == key)
        .count()
}

/// Runs `total` chat requests (every other one streaming), at most `width` in
/// flight at once; returns what each client saw.
async fn burst(env: &Arc<Env>, total: usize, width: usize) -> Vec<Outcome> {
    let slots = Arc::new(Semaphore::new(width));
    let mut tasks = Vec::new();
    for i in 0..total {
        let (env, slots) = (env.clone(), slots.clone());
        tasks.push(tokio::spawn(async move {
            let _slot = slots.acquire_owned().await.expect("semaphore");
            one_request(&env, i % 2 == 1).await
        }));
    }
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.expect("a client task panicked"));
    }
    out
}

/// Panics unless every outcome is a complete 200 from the mock.
fn assert_all_complete(outcomes: &[Outcome]) {
    let plain = chat_completion_body("gpt-4o");
    let stream = sse_events("gpt-4o", true).concat();
    let bad: Vec<String> = outcomes
        .iter()
        .filter(|o| {
            let expected = if o.streaming { &stream } else { &plain };
            o.status != 200 || o.error.is_some() || o.text != *expected
        })
        .map(|o| format!("status {} {:?}: {}", o.status, o.error, o.text))
        .collect();
    assert!(
        bad.is_empty(),
        "{} of {} requests did not get the upstream's complete answer:\n{}",
        bad.len(),
        outcomes.len(),
        bad.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_requests_fall_back_and_the_rejected_key_is_tried_a_bounded_number_of_times() {
    const TOTAL: usize = 50;
    const WIDTH: usize = 10;
    const COOLDOWN: Duration = Duration::from_secs(2);
    let env = Env::setup()
        .key("openai", OPENAI_KEY_2, &["--fallback"])
        .config(|b| b.extra("[keys]\nsuspect_cooldown = \"2s\"\n"))
        .start()
        .await;
    let old = key_id(&env.kg, "openai", OPENAI_KEY);
    // The provider revoked the current key; the fallback still works. Its
    // 401s come back slowly, so the first requests all pick the current key
    // before keygate learns it is bad: the worst case of the race.
    env.openai.set_keys(&[OPENAI_KEY_2]);
    env.openai.set_reject_delay(Duration::from_millis(200));
    env.openai.set_stream_delay(Duration::from_millis(20));
    let env = Arc::new(env);

    let started = Instant::now();
    let outcomes = burst(&env, TOTAL, WIDTH).await;
    let took = started.elapsed();
    assert_all_complete(&outcomes);

    // The bound: a request tries the bad key only while it is healthy (before
    // the first 401 is recorded) or as the single-flight probe once a cooldown
    // has passed. Every request that picked it while healthy was still in
    // flight when that first 401 was recorded, and at most WIDTH requests are
    // in flight at once; each cooldown that passes allows one probe.
    let bad_attempts = attempts_with(&env, OPENAI_KEY);
    let probes = (took.as_millis() / COOLDOWN.as_millis()) as usize;
    let bound = WIDTH + probes;
    eprintln!("{TOTAL} requests in {took:?}: the rejected key was tried {bad_attempts} times (bound {bound})");
    assert!(
        (1..=bound).contains(&bad_attempts),
        "the rejected key was tried {bad_attempts} times for {TOTAL} requests (bound {bound})"
    );
    let page = metrics(&env).await;
    assert_eq!(
        metric_value(
            &page,
            "keygate_upstream_key_rejections_total",
            &[("provider", "openai"), ("key_id", &old)]
        ),
        Some(bad_attempts as f64),
        "every 401 counts in keygate_upstream_key_rejections_total:\n{page}"
    );
    assert_eq!(
        metric_value(
            &page,
            "keygate_fallback_retries_total",
            &[("provider", "openai"), ("reason", "401")]
        ),
        Some(bad_attempts as f64),
        "every 401 was retried with the fallback:\n{page}"
    );
    assert_eq!(
        metric_value(
            &page,
            "keygate_key_healthy",
            &[("provider", "openai"), ("key_id", &old)]
        ),
        Some(0.0),
        "{page}"
    );

    // The key works again (a passing glitch). One burst of concurrent
    // rejections is one failure: after suspect_cooldown it is probed and,
    // accepted, used again.
    env.openai.set_reject_delay(Duration::ZERO);
    env.openai.set_keys(&[OPENAI_KEY, OPENAI_KEY_2]);
    let limit = COOLDOWN + Duration::from_millis(1500);
    let restored = eventually(limit, || async {
        let resp = env.server.send(env.chat("gpt-4o")).await;
        assert_eq!(resp.status, 200, "{}", resp.text());
        (key_of(&env.openai.last()) == OPENAI_KEY).then_some(())
    })
    .await;
    if restored.is_none() {
        let log = env.server.stderr();
        let rejections: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("UPSTREAM REJECTED KEY"))
            .collect();
        panic!(
            "the current key was not probed and restored within suspect_cooldown ({COOLDOWN:?}) + 1.5 s \
             after {bad_attempts} concurrent rejections (one burst of in-flight 401s is one failure and \
             must not multiply the cooldown); keygate logged:\n{}",
            rejections.join("\n")
        );
    }
    for _ in 0..3 {
        let resp = env.server.send(env.chat("gpt-4o")).await;
        assert_eq!(resp.status, 200);
        assert_eq!(
            env.openai.last().header("authorization"),
            bearer(OPENAI_KEY)
        );
    }
    let page = metrics(&env).await;
    assert_eq!(
        metric_value(
            &page,
            "keygate_key_healthy",
            &[("provider", "openai"), ("key_id", &old)]
        ),
        Some(1.0),
        "a restored key is healthy again in /metrics:\n{page}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_suspect_key_gets_one_probe_per_cooldown_which_doubles_and_is_restored_once_accepted() {
    let env = Env::setup()
        .key("openai", OPENAI_KEY_2, &["--fallback"])
        .config(|b| b.extra("[keys]\nsuspect_cooldown = \"1s\"\n"))
        .start()
        .await;
    let old = key_id(&env.kg, "openai", OPENAI_KEY);
    env.openai.set_keys(&[OPENAI_KEY_2]);

    // One rejection: suspect for 1 s (from before this response arrived).
    let resp = env.server.send(env.chat("gpt-4o")).await;
    let rejected_by = Instant::now();
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(attempts_with(&env, OPENAI_KEY), 1);
    let resp = env.server.send(env.chat("gpt-4o")).await;
    assert_eq!(resp.status, 200);
    assert_eq!(
        attempts_with(&env, OPENAI_KEY),
        1,
        "a suspect key is skipped while the fallback is healthy"
    );

    // Cooldown over, still rejected: of 10 concurrent requests exactly one
    // probes it (its 401 comes back slowly, so all 10 overlap the probe).
    let wait = Duration::from_millis(1100).saturating_sub(rejected_by.elapsed());
    tokio::time::sleep(wait).await;
    env.openai.set_reject_delay(Duration::from_millis(300));
    let env = Arc::new(env);
    let wave = Instant::now();
    let outcomes = burst(&env, 10, 10).await;
    assert_all_complete(&outcomes);
    assert_eq!(
        attempts_with(&env, OPENAI_KEY),
        2,
        "the probe is single-flight: one of 10 concurrent requests tries the suspect key"
    );

    // Accepted again. The failed probe doubled the cooldown to 2 s.
    env.openai.set_reject_delay(Duration::ZERO);
    env.openai.set_keys(&[OPENAI_KEY, OPENAI_KEY_2]);
    let restored_after = eventually(Duration::from_millis(3500), || async {
        let resp = env.server.send(env.chat("gpt-4o")).await;
        assert_eq!(resp.status, 200, "{}", resp.text());
        (key_of(&env.openai.last()) == OPENAI_KEY).then(|| wave.elapsed())
    })
    .await
    .expect("the key was not probed and restored within 3.5 s of the failed probe");
    // The failed probe's 401 was recorded ≥ 300 ms into the wave; a doubled
    // cooldown (2 s) cannot end before 2.3 s, a non-doubled one (1 s) would
    // end by ~1.3 s.
    assert!(
        restored_after >= Duration::from_secs(2),
        "restored {restored_after:?} after the failed probe: the cooldown did not double"
    );
    let resp = env.server.send(env.chat("gpt-4o")).await;
    assert_eq!(resp.status, 200);
    assert_eq!(key_of(&env.openai.last()), OPENAI_KEY);
    let page = metrics(&env).await;
    assert_eq!(
        metric_value(
            &page,
            "keygate_key_healthy",
            &[("provider", "openai"), ("key_id", &old)]
        ),
        Some(1.0),
        "{page}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_rejected_keys_mean_three_attempts_then_502() {
    let env = Env::setup()
        .key("openai", OPENAI_KEY_2, &[])
        .key("openai", OPENAI_KEY_3, &["--fallback"])
        .start()
        .await;
    let ids: Vec<String> = [OPENAI_KEY, OPENAI_KEY_2, OPENAI_KEY_3]
        .iter()
        .map(|k| key_id(&env.kg, "openai", k))
        .collect();
    env.openai.set_keys(&[]);
    let resp = env.server.send(env.chat("gpt-4o")).await;
    resp.assert_keygate_error(502, "upstream_key_rejected");
    let seen = env.openai.requests();
    let mut keys: Vec<String> = seen.iter().map(key_of).collect();
    assert_eq!(seen.len(), 3, "one attempt per key, no more: {keys:?}");
    keys.sort();
    let mut all = vec![
        OPENAI_KEY.to_string(),
        OPENAI_KEY_2.to_string(),
        OPENAI_KEY_3.to_string(),
    ];
    all.sort();
    assert_eq!(keys, all, "each of the three keys is tried exactly once");
    assert_eq!(
        key_of(&seen[2]),
        OPENAI_KEY_3,
        "the fallback comes after the pool"
    );
    assert!(
        seen.iter().all(|s| s.body == seen[0].body),
        "every attempt resends the same body"
    );
    let page = metrics(&env).await;
    for id in &ids {
        assert_eq!(
            metric_value(
                &page,
                "keygate_upstream_key_rejections_total",
                &[("provider", "openai"), ("key_id", id)]
            ),
            Some(1.0),
            "one rejection counted for {id}:\n{page}"
        );
    }
    assert_eq!(
        metric_value(
            &page,
            "keygate_fallback_retries_total",
            &[("provider", "openai"), ("reason", "401")]
        ),
        Some(2.0),
        "two retries after the first attempt:\n{page}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_body_larger_than_retry_buffer_gets_exactly_one_attempt() {
    let env = Env::setup()
        .key("openai", OPENAI_KEY_2, &["--fallback"])
        .config(|b| b.server("retry_buffer", "\"1KiB\""))
        .start()
        .await;
    env.openai.set_keys(&[OPENAI_KEY_2]);
    let body = serde_json::json!({
        "model": "gpt-4o",
        "messages": [{"role": "user", "content": "x".repeat(4096)}],
    });
    let sent = body.to_string().len();
    let big = || {
        Req::post("/v1/chat/completions")
            .bearer(&env.client_key)
            .json(&body)
    };
    let resp = env.server.send(big()).await;
    let seen = env.openai.requests();
    assert_eq!(
        seen.len(),
        1,
        "a body over retry_buffer cannot be resent: exactly one attempt"
    );
    assert_eq!(key_of(&seen[0]), OPENAI_KEY);
    assert_eq!(
        seen[0].body.len(),
        sent,
        "the one attempt carried the whole body"
    );
    assert_eq!(
        resp.status,
        502,
        "the rejected single attempt is a keygate 502, not the upstream's 401: {}",
        resp.text()
    );
    assert!(
        !resp.text().contains("invalid_api_key"),
        "the upstream's 401 body must not reach the client: {}",
        resp.text()
    );
    // The rejected key is now suspect: the next big body goes to the fallback.
    let resp = env.server.send(big()).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(env.openai.hits(), 2);
    assert_eq!(key_of(&env.openai.last()), OPENAI_KEY_2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_429_moves_to_the_next_key_for_retry_after() {
    let env = Env::setup()
        .key("openai", OPENAI_KEY_2, &["--fallback"])
        .start()
        .await;
    env.openai.set_keys(&[OPENAI_KEY, OPENAI_KEY_2]);
    env.openai.push_response(
        429,
        &[("retry-after", "2")],
        r#"{"error":{"message":"Rate limit reached for gpt-4o","type":"requests","code":"rate_limit_exceeded"}}"#,
    );
    let t0 = Instant::now();
    let resp = env.server.send(env.chat("gpt-4o")).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.text(), chat_completion_body("gpt-4o"));
    let seen = env.openai.requests();
    assert_eq!(seen.len(), 2, "429 on the first key, then the second key");
    assert_eq!(key_of(&seen[0]), OPENAI_KEY);
    assert_eq!(key_of(&seen[1]), OPENAI_KEY_2);
    let page = metrics(&env).await;
    assert_eq!(
        metric_value(
            &page,
            "keygate_fallback_retries_total",
            &[("provider", "openai"), ("reason", "429")]
        ),
        Some(1.0),
        "{page}"
    );
    assert_eq!(
        metric_value(
            &page,
            "keygate_upstream_key_rejections_total",
            &[("provider", "openai"), ("reason", "rejected")]
        )
        .unwrap_or(0.0),
        0.0,
        "a 429 is not a key rejection:\n{page}"
    );
    assert_eq!(
        metric_value(
            &page,
            "keygate_upstream_key_rejections_total",
            &[("provider", "openai"), ("reason", "rate_limited")]
        ),
        Some(1.0),
        "a 429 is counted as rate_limited:\n{page}"
    );

    // While the first key cools, requests go straight to the second.
    let resp = env.server.send(env.chat("gpt-4o")).await;
    assert_eq!(resp.status, 200);
    assert_eq!(env.openai.hits(), 3);
    assert_eq!(key_of(&env.openai.last()), OPENAI_KEY_2);

    // After Retry-After (2 s) the first key is used again.
    let back_after = eventually(Duration::from_millis(3500), || async {
        let resp = env.server.send(env.chat("gpt-4o")).await;
        assert_eq!(resp.status, 200, "{}", resp.text());
        (key_of(&env.openai.last()) == OPENAI_KEY).then(|| t0.elapsed())
    })
    .await
    .expect("the rate-limited key was not used again within 3.5 s of a Retry-After: 2");
    assert!(
        back_after >= Duration::from_secs(2),
        "the key was used again {back_after:?} after a 429 with Retry-After: 2"
    );
}
