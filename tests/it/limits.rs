//! Per-client limits (docs/design.md §2 `--rpm --tpm --budget-tokens`, §4; README
//! "Clients"): over rpm/tpm → 429 `client_rate_limited`, over the budget →
//! 429 `client_budget_exceeded`, both with `Retry-After` and nothing sent
//! upstream; budgets reserve an estimate first, settle with real usage, and
//! count the whole ledger (a restart does not reset them).

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use tokio::sync::mpsc;

use crate::support::client::{open_h1, read_body, Resp};
use crate::support::metrics::metric_value;
use crate::support::usage::{mock_json_usage, mock_stream_usage, row};
use crate::support::world::{Opts, World};
use crate::support::{Req, RELOAD_WAIT};

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

/// Per-minute windows follow the wall clock: when fewer than 6 s are left in
/// this minute, wait for the next one, so a test's burst stays in one minute.
async fn avoid_minute_boundary() {
    let into = unix_now() % 60;
    if into >= 54 {
        tokio::time::sleep(Duration::from_secs(60 - into) + Duration::from_millis(200)).await;
    }
}

/// The `Retry-After` of a 429, in seconds; panics when missing or not an integer.
fn retry_after(resp: &Resp) -> u64 {
    let v = resp
        .headers
        .get("retry-after")
        .unwrap_or_else(|| panic!("429 without Retry-After: {:?}", resp.headers));
    v.to_str()
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or_else(|| panic!("Retry-After is not whole seconds: {v:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rpm_3_refuses_the_fourth_request_of_the_minute_without_calling_upstream() {
    let w = World::start(Opts {
        clients: &["app", "other"],
        limits: &[("app", &["--rpm", "3"])],
        ..Opts::default()
    })
    .await;
    avoid_minute_boundary().await;
    for i in 1..=3 {
        let resp = w.server.send(w.chat("app", "gpt-4o")).await;
        assert_eq!(resp.status, 200, "request {i} of 3: {}", resp.text());
    }
    for i in 4..=5 {
        let resp = w.server.send(w.chat("app", "gpt-4o")).await;
        resp.assert_keygate_error(429, "client_rate_limited");
        let secs = retry_after(&resp);
        let to_next_minute = 60 - unix_now() % 60;
        assert!(
            (1..=60).contains(&secs) && secs.abs_diff(to_next_minute) <= 2,
            "request {i}: Retry-After {secs} s should be the time to the next minute (~{to_next_minute} s)"
        );
    }
    assert_eq!(
        w.openai.hits(),
        3,
        "the upstream must see only the 3 admitted requests"
    );
    // Limits are per client.
    let resp = w.server.send(w.chat("other", "gpt-4o")).await;
    assert_eq!(resp.status, 200, "an unlimited client: {}", resp.text());
    assert_eq!(w.openai.hits(), 4);

    let page = w.metrics().await;
    assert_eq!(
        metric_value(
            &page,
            "keygate_requests_total",
            &[("client", "app"), ("status", "429")]
        )
        .unwrap_or(0.0),
        2.0,
        "{page}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tpm_refuses_once_the_minutes_tokens_are_used() {
    const TPM: u64 = 100;
    let w = World::start(Opts {
        limits: &[("app", &["--tpm", "100"])],
        ..Opts::default()
    })
    .await;
    avoid_minute_boundary().await;
    let (_, _, used_each) = mock_json_usage();
    let body = json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 10});
    let req = || {
        Req::post("/v1/chat/completions")
            .bearer(w.key("app"))
            .json(&body)
    };
    let mut admitted = 0u64;
    let mut refused = None;
    for _ in 0..20 {
        let resp = w.server.send(req()).await;
        if resp.status == 200 {
            admitted += 1;
            continue;
        }
        resp.assert_keygate_error(429, "client_rate_limited");
        refused = Some(retry_after(&resp));
        break;
    }
    let secs = refused.unwrap_or_else(|| {
        panic!("20 requests of {used_each} real tokens each all passed --tpm {TPM}")
    });
    assert!((1..=60).contains(&secs), "Retry-After {secs}");
    // Sequential requests settle before the next starts: every admitted one
    // began with at most TPM tokens used this minute.
    assert!(admitted >= 1, "the first request of a minute always runs");
    assert!(
        used_each * (admitted - 1) <= TPM,
        "{admitted} requests of {used_each} tokens admitted under --tpm {TPM}"
    );
    assert_eq!(
        w.openai.hits() as u64,
        admitted,
        "refused requests stay here"
    );
}

/// Launch `n` streaming requests at once; report each one's status as soon as
/// its head arrives (a held stream keeps its body open), then read the bodies.
fn launch(w: &World, n: usize, body: &Value) -> mpsc::UnboundedReceiver<(u16, String)> {
    let (tx, rx) = mpsc::unbounded_channel();
    for _ in 0..n {
        let req = Req::post("/v1/chat/completions")
            .bearer(w.key("app"))
            .json(body);
        let addr = w.server.client;
        let tx = tx.clone();
        tokio::spawn(async move {
            let resp = open_h1(addr, req).await;
            let status = resp.status().as_u16();
            if status == 200 {
                // Report the head now; the body is held open until release.
                let _ = tx.send((status, String::new()));
                read_body(resp).await;
                return;
            }
            let (bytes, _) = read_body(resp).await;
            let v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            let code = v["error"]["code"].as_str().unwrap_or("?").to_string();
            let _ = tx.send((status, code));
        });
    }
    rx
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn budget_holds_under_50_concurrent_requests_then_refuses_until_removed() {
    const BUDGET: u64 = 400;
    const CONCURRENT: usize = 50;
    const MAX_TOKENS: u64 = 40;
    let w = World::start(Opts {
        limits: &[("app", &["--budget-tokens", "400"])],
        ..Opts::default()
    })
    .await;
    let body = json!({
        "model": "gpt-4o",
        "messages": [{"role": "user", "content": "Say hello."}],
        "stream": true,
        "stream_options": {"include_usage": true},
        "max_tokens": MAX_TOKENS,
    });
    // What keygate reserves per request (README: body bytes / 4 + max_tokens)
    // and what each really uses (the mock's usage chunk).
    let estimate = body.to_string().len() as u64 / 4 + MAX_TOKENS;
    let (_, _, actual) = mock_stream_usage();
    // The bound. A request is admitted only when settled spend + the estimates
    // of everything in flight + its own estimate fit the budget, and each
    // estimate is later replaced by the real usage. So the spend can exceed
    // the budget only by what the in-flight requests used beyond their
    // estimates: at most CONCURRENT × max(0, actual − estimate). Here the
    // estimate is larger than the real usage, so the bound is the budget
    // itself — while a limiter that only checked the spend so far would let
    // all 50 held streams through (50 × actual > BUDGET).
    let bound = BUDGET + CONCURRENT as u64 * actual.saturating_sub(estimate);
    assert!(
        CONCURRENT as u64 * actual > BUDGET,
        "the test must be able to fail"
    );

    // Phase 1: 50 at once, the upstream holding every admitted stream open
    // after its first event, so they are all in flight together.
    let release = w.openai.hold_streams();
    let mut heads = launch(&w, CONCURRENT, &body);
    let mut statuses = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(15);
    while statuses.len() < CONCURRENT {
        let left = deadline.saturating_duration_since(Instant::now());
        let got = tokio::time::timeout(left, heads.recv())
            .await
            .expect("not every concurrent request got its response head in 15 s")
            .expect("a request task panicked");
        statuses.push(got);
    }
    let admitted = statuses.iter().filter(|(s, _)| *s == 200).count();
    assert!(
        statuses
            .iter()
            .all(|(s, c)| *s == 200 || (*s == 429 && c == "client_budget_exceeded")),
        "every refusal must be 429 client_budget_exceeded: {statuses:?}"
    );
    assert!(
        admitted >= 1,
        "nothing was admitted under a budget of {BUDGET}"
    );
    assert!(
        admitted as u64 * estimate <= BUDGET,
        "{admitted} requests in flight at once, each reserving ~{estimate} tokens, under a budget of {BUDGET}"
    );
    assert_eq!(w.openai.hits(), admitted, "refused requests stay here");
    release.release();
    // The admitted streams now finish; their usage reaches the ledger.
    let ledger = w
        .ledger_until("the concurrent streams' tokens", |r| {
            r.get(&row("app", "openai", "gpt-4o"))
                .is_some_and(|t| t.total >= admitted as u64 * actual)
        })
        .await;
    assert_eq!(
        ledger[&row("app", "openai", "gpt-4o")].total,
        admitted as u64 * actual
    );

    // Phase 2: one at a time until the budget refuses.
    let mut first_refusal = None;
    for _ in 0..(BUDGET / actual.max(1) + 5) {
        let resp = open_h1(
            w.server.client,
            Req::post("/v1/chat/completions")
                .bearer(w.key("app"))
                .json(&body),
        )
        .await;
        if resp.status() == 200 {
            let (_, clean) = read_body(resp).await;
            assert!(clean);
            continue;
        }
        let resp = crate::support::client::read_whole(resp).await;
        first_refusal = Some(resp);
        break;
    }
    let resp = first_refusal.expect("the budget never ran out");
    w.server.record("budget 429", resp.everything());
    resp.assert_keygate_error(429, "client_budget_exceeded");
    assert!(retry_after(&resp) >= 1);
    let hits = w.openai.hits();
    for _ in 0..3 {
        let resp = w.server.send(w.chat("app", "gpt-4o")).await;
        resp.assert_keygate_error(429, "client_budget_exceeded");
        assert!(retry_after(&resp) >= 1);
    }
    assert_eq!(
        w.openai.hits(),
        hits,
        "once over budget, nothing goes upstream"
    );

    // Everything is settled now: the ledger's spend is within the bound, and
    // the refusal means the next estimate no longer fit.
    let spent_rows = w
        .ledger_until("every admitted request's tokens", |r| {
            r.get(&row("app", "openai", "gpt-4o"))
                .is_some_and(|t| t.total == hits as u64 * actual)
        })
        .await;
    let spent = spent_rows[&row("app", "openai", "gpt-4o")].total;
    assert!(
        spent <= bound,
        "spent {spent} tokens with --budget-tokens {BUDGET} (bound {bound})"
    );
    assert!(
        spent + estimate > BUDGET,
        "refused while {spent} + an estimate of {estimate} still fit the budget of {BUDGET}"
    );

    // `client limits app --budget-tokens 0` removes the budget, live.
    let changed = Instant::now();
    w.kg.run(&["client", "limits", "app", "--budget-tokens", "0"])
        .assert_ok("client limits --budget-tokens 0");
    let admitted_again = crate::support::eventually(RELOAD_WAIT, || async {
        let resp = w.server.send(w.chat("app", "gpt-4o")).await;
        (resp.status == 200).then_some(changed.elapsed())
    })
    .await
    .unwrap_or_else(|| panic!("the budget still applied {RELOAD_WAIT:?} after it was removed"));
    assert!(
        admitted_again <= RELOAD_WAIT,
        "removing the budget took {admitted_again:?}"
    );
    assert_eq!(w.openai.hits(), hits + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn budget_counts_the_ledger_so_a_restart_does_not_reset_it() {
    const BUDGET: u64 = 100;
    let mut w = World::start(Opts {
        limits: &[("app", &["--budget-tokens", "100"])],
        ..Opts::default()
    })
    .await;
    let body = json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 10});
    let req = |w: &World| {
        Req::post("/v1/chat/completions")
            .bearer(w.key("app"))
            .json(&body)
    };
    let mut admitted = 0;
    loop {
        let resp = w.server.send(req(&w)).await;
        if resp.status != 200 {
            resp.assert_keygate_error(429, "client_budget_exceeded");
            break;
        }
        admitted += 1;
        assert!(admitted < 20, "20 requests fit a budget of {BUDGET}");
    }
    assert!(admitted >= 1);
    assert_eq!(w.openai.hits(), admitted);
    w.server.terminate();

    w.restart();
    let resp = w.server.send(req(&w)).await;
    resp.assert_keygate_error(429, "client_budget_exceeded");
    assert_eq!(
        w.openai.hits(),
        admitted,
        "after a restart the spent budget must still be spent"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_budget_set_on_a_running_server_counts_what_the_client_already_spent() {
    // README: "Budgets count everything in the usage ledger". A client spends
    // without limits, the ledger records it, then the operator sets a budget
    // below what is already spent: the next request must be refused.
    let w = World::start(Opts {
        clients: &["app", "probe"],
        ..Opts::default()
    })
    .await;
    let (_, _, used_each) = mock_json_usage();
    // A small estimate (body / 4 + max_tokens), so that the estimate alone
    // fits the budget set below and only the spend can refuse.
    let body = json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 5});
    let estimate = body.to_string().len() as u64 / 4 + 5;
    let req = || {
        Req::post("/v1/chat/completions")
            .bearer(w.key("app"))
            .json(&body)
    };
    let n = 8;
    for _ in 0..n {
        let resp = w.server.send(req()).await;
        assert_eq!(resp.status, 200, "{}", resp.text());
    }
    let spent = n * used_each;
    w.ledger_until("the unlimited spend", |r| {
        r.get(&row("app", "openai", "gpt-4o"))
            .is_some_and(|t| t.total == spent)
    })
    .await;
    let budget = spent / 2;
    assert!(
        estimate < budget && budget < spent,
        "estimate {estimate}, budget {budget}, spent {spent}"
    );
    w.kg.run(&[
        "client",
        "limits",
        "app",
        "--budget-tokens",
        &budget.to_string(),
    ])
    .assert_ok("client limits --budget-tokens");
    // A later vault write gives client `probe` a budget its first request's
    // estimate alone exceeds; once `probe` is refused, the server runs a
    // vault generation that has `app`'s budget too.
    w.kg.run(&["client", "limits", "probe", "--budget-tokens", "1"])
        .assert_ok("client limits probe");
    let live = crate::support::eventually(RELOAD_WAIT, || async {
        let resp = w.server.send(w.chat("probe", "gpt-4o")).await;
        (resp.status == 429).then_some(())
    })
    .await;
    assert!(
        live.is_some(),
        "the new limits were not live within {RELOAD_WAIT:?}"
    );
    let hits = w.openai.hits();
    let resp = w.server.send(req()).await;
    assert!(
        resp.status == 429,
        "the ledger says `app` spent {spent} tokens; with --budget-tokens {budget} live, the request must be refused, got {}: {}",
        resp.status,
        resp.text()
    );
    resp.assert_keygate_error(429, "client_budget_exceeded");
    assert_eq!(w.openai.hits(), hits);
}

/// An upstream whose streams never report usage (it ignores
/// `stream_options`): each answer is charged its admission estimate, so the
/// budget still runs out, the ledger records the tokens as estimated, apart
/// from the reported ones, and a restart does not give the budget back
/// (issue 14 item 4).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn streams_that_never_report_usage_are_charged_their_estimate_across_a_restart() {
    use crate::support::raw_upstream::{RawUpstream, Script, SSE_CHUNKED_HEAD};

    let raw = RawUpstream::start(|_| {
        Script::new()
            .write(SSE_CHUNKED_HEAD)
            .chunk("data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}]}\n\n")
            .chunk("data: [DONE]\n\n")
            .end_chunks()
    })
    .await;
    let mut w = World::start(Opts {
        limits: &[("app", &["--budget-tokens", "300"])],
        openai_url: Some(raw.url()),
        ..Opts::default()
    })
    .await;
    let body =
        json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "Hi"}], "stream": true});
    // body / 4 + the 256 assumed without max_tokens: one fits 300, two do not.
    let estimate = body.to_string().len() as u64 / 4 + 256;
    let req = |w: &World| {
        Req::post("/v1/chat/completions")
            .bearer(w.key("app"))
            .json(&body)
    };
    let resp = w.server.send(req(&w)).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert!(resp.text().contains("[DONE]"), "{}", resp.text());
    let resp = w.server.send(req(&w)).await;
    resp.assert_keygate_error(429, "client_budget_exceeded");
    assert_eq!(raw.hits(), 1, "the refused request must not go upstream");

    // The ledger: no reported tokens, one answer charged by estimate.
    let deadline = Instant::now() + Duration::from_secs(10);
    let row = loop {
        let usage = w.usage_cli(&[]);
        let row = usage
            .as_array()
            .and_then(|rows| rows.iter().find(|r| r["client"] == "app").cloned());
        if let Some(row) = row.filter(|r| r["estimated_requests"] == 1) {
            break row;
        }
        assert!(Instant::now() < deadline, "no estimated row in {usage}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(row["total_tokens"], 0, "{row}");
    assert_eq!(row["estimated_tokens"], estimate, "{row}");
    let table = w.kg.run(&["usage"]);
    table.assert_ok("usage");
    assert!(
        table.stdout.contains("ESTIMATED") && table.stdout.contains(&format!("{estimate}/1")),
        "{}",
        table.stdout
    );

    w.server.terminate();
    w.restart();
    let resp = w.server.send(req(&w)).await;
    resp.assert_keygate_error(429, "client_budget_exceeded");
    assert_eq!(
        raw.hits(),
        1,
        "after a restart the estimated spend must still count"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_upstream_reporting_u64_max_tokens_cannot_wrap_a_budget_or_break_the_ledger() {
    let mut w = World::start(Opts {
        clients: &["app"],
        limits: &[("app", &["--budget-tokens", "1000"])],
        ..Opts::default()
    })
    .await;
    let absurd = json!({
        "id": "chatcmpl-absurd", "object": "chat.completion", "created": 1, "model": "gpt-4o",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": u64::MAX, "completion_tokens": u64::MAX, "total_tokens": u64::MAX}
    });
    w.openai.push_response(200, &[], &absurd.to_string());
    let resp = w.server.send(w.chat("app", "gpt-4o")).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    // The budget is spent (counted at the cap), not wrapped to zero.
    let resp = w.server.send(w.chat("app", "gpt-4o")).await;
    resp.assert_keygate_error(429, "client_budget_exceeded");
    assert!(
        w.server.stderr().contains("counted at the cap"),
        "the anomaly is logged"
    );
    w.ledger_until("the capped answer", |rows| !rows.is_empty())
        .await;
    // A restart reads the ledger back (SQLite once stored such sums as REAL
    // and serve then exited 1), and the budget is still spent.
    w.server.terminate();
    w.restart();
    let resp = w.server.send(w.chat("app", "gpt-4o")).await;
    resp.assert_keygate_error(429, "client_budget_exceeded");
    let printed = w.kg.run(&["usage"]);
    printed.assert_ok("usage after the absurd answer");
}
