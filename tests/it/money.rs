//! Money (docs/clients-and-usage.md "Cost and dollar budgets", docs/design.md
//! §14): what each answer costs by the price table — JSON, streamed,
//! compressed and cached-input answers alike — to the micro-dollar, in the
//! ledger, `keygate usage`, `/admin/usage` and `/metrics`; unpriced models
//! counted apart; the config's rows shown by `keygate prices`.

use std::time::Duration;

use crate::support::metrics::metric_value;
use crate::support::{eventually, Env, Keygate};

/// The test model's row, as the config writes it: $2.50 in, $1.25 cached, $10 out.
const PRICE_ROW: &str =
    "[prices.\"openai/gpt-test\"]\ninput = 2.5\ncached_input = 1.25\noutput = 10\n";

/// `keygate usage --json` rows of client `app`.
fn usage_rows(kg: &Keygate) -> Vec<serde_json::Value> {
    let out = kg.run(&["usage", "--json", "--client", "app"]);
    out.assert_ok("usage --json");
    serde_json::from_str::<serde_json::Value>(out.stdout.trim())
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

fn row<'a>(rows: &'a [serde_json::Value], model: &str) -> Option<&'a serde_json::Value> {
    rows.iter().find(|r| r["model"] == model)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_answer_costs_its_usage_times_its_price_to_the_micro_dollar() {
    let env = Env::setup()
        .config(|b| b.extra(PRICE_ROW))
        .serve_env("KEYGATE_METERING__FLUSH_INTERVAL", "200ms")
        .start()
        .await;
    // JSON (11 in, 7 out): 11 × 2.5 + 7 × 10 = 97.5 → 98 µ$.
    assert_eq!(env.server.send(env.chat("gpt-test")).await.status, 200);
    // A stream (11 in, 4 out): 27.5 + 40 = 67.5 → 68 µ$.
    let resp = env.server.send(env.chat_stream("gpt-test")).await;
    assert!(resp.text().contains("[DONE]"));
    // The same JSON answer gzipped by the upstream: 98 µ$ again.
    env.openai.set_compression(Some("gzip"));
    assert_eq!(
        env.server
            .send(env.chat("gpt-test-2026-01-01"))
            .await
            .status,
        200
    );
    env.openai.set_compression(None);
    // Cached input (2006 in, 1920 of them cached, 300 out), with a dated
    // model name the row covers by prefix:
    // 86 × 2.5 + 1920 × 1.25 + 300 × 10 = 215 + 2400 + 3000 = 5615 µ$.
    env.openai.push_response(
        200,
        &[("content-type", "application/json")],
        r#"{"id":"chatcmpl-c","object":"chat.completion","model":"gpt-test","choices":[{"index":0,"message":{"role":"assistant","content":"ok"},"finish_reason":"stop"}],"usage":{"prompt_tokens":2006,"completion_tokens":300,"total_tokens":2306,"prompt_tokens_details":{"cached_tokens":1920}}}"#,
    );
    assert_eq!(env.server.send(env.chat("gpt-test")).await.status, 200);
    // A model no row covers.
    assert_eq!(env.server.send(env.chat("mystery-model")).await.status, 200);

    let rows = eventually(Duration::from_secs(5), || async {
        let rows = usage_rows(&env.kg);
        let requests = |m| {
            row(&rows, m)
                .and_then(|r| r["requests"].as_u64())
                .unwrap_or(0)
        };
        (requests("gpt-test") == 3
            && requests("gpt-test-2026-01-01") == 1
            && requests("mystery-model") == 1)
            .then_some(rows)
    })
    .await
    .expect("the ledger never held the five answers");
    let priced = row(&rows, "gpt-test").unwrap();
    assert_eq!(priced["cost_micros"], 98 + 68 + 5615, "{priced}");
    assert_eq!(priced["cost_usd"], 0.005781);
    assert_eq!(
        row(&rows, "gpt-test-2026-01-01").unwrap()["cost_micros"],
        98
    );
    let unpriced = row(&rows, "mystery-model").unwrap();
    assert_eq!(
        (
            unpriced["cost_micros"].as_u64(),
            unpriced["unpriced_requests"].as_u64()
        ),
        (Some(0), Some(1))
    );

    let text = env.kg.run(&["usage", "--client", "app"]);
    text.assert_ok("usage");
    assert!(text.stdout.contains("$0.005781"), "{}", text.stdout);
    assert!(text.stdout.contains("total $0.005879"), "{}", text.stdout);
    assert!(text.stdout.contains("unpriced"), "{}", text.stdout);

    let page = env.server.admin_get("/metrics").await.text();
    let cost = metric_value(
        &page,
        "keygate_cost_dollars_total",
        &[
            ("client", "app"),
            ("provider", "openai"),
            ("model", "gpt-test"),
        ],
    )
    .unwrap();
    assert!((cost - 0.005781).abs() < 1e-9, "{cost}");
    assert_eq!(
        metric_value(
            &page,
            "keygate_unpriced_requests_total",
            &[("provider", "openai"), ("model", "mystery-model")]
        ),
        Some(1.0)
    );
}

#[test]
fn keygate_prices_shows_the_configs_rows_and_where_each_came_from() {
    let kg = Keygate::new(
        &crate::support::KeygateBuilder::new()
            .provider("openai", "http://127.0.0.1:9", "bearer")
            .extra(PRICE_ROW)
            .extra("[prices.\"openai/gpt-4o-mini\"]\ninput = 0.1\noutput = 0.4\n"),
    );
    let out = kg.run(&["prices", "openai", "--json"]);
    out.assert_ok("prices openai --json");
    let rows: Vec<serde_json::Value> = serde_json::from_str(out.stdout.trim()).unwrap();
    let config = kg.config_path().display().to_string();
    let find = |key: &str| {
        rows.iter()
            .find(|r| r["key"] == key)
            .unwrap_or_else(|| panic!("{key}: {}", out.stdout))
    };
    let test = find("openai/gpt-test");
    assert_eq!(
        (test["input"].as_f64(), test["cached_input"].as_f64()),
        (Some(2.5), Some(1.25))
    );
    assert_eq!(test["origin"], config.as_str());
    // An override replaces the embedded row, and says so.
    let mini = find("openai/gpt-4o-mini");
    assert_eq!(
        (mini["input"].as_f64(), mini["origin"].as_str()),
        (Some(0.1), Some(config.as_str()))
    );
    assert!(rows.iter().any(
        |r| r["origin"] == "embedded" && r["source"].as_str().unwrap().starts_with("https://")
    ));
    assert!(rows
        .iter()
        .all(|r| r["key"].as_str().unwrap().starts_with("openai/")));
    let text = kg.run(&["prices"]);
    text.assert_ok("prices");
    assert!(text.stdout.contains("anthropic/"), "{}", text.stdout);
    let bad = kg.run(&["prices", "nope"]);
    bad.assert_code(2, "prices for an unknown provider");
}

#[test]
fn a_malformed_price_row_is_a_config_error_naming_it() {
    let kg = Keygate::new(
        &crate::support::KeygateBuilder::new()
            .provider("openai", "http://127.0.0.1:9", "bearer")
            .extra("[prices.\"gpt-4o\"]\ninput = 1\noutput = 2\n"),
    );
    let out = kg.run(&["serve"]);
    out.assert_code(2, "serve with a price row without a kind");
    assert!(out.stderr.contains("prices.\"gpt-4o\""), "{}", out.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_per_key_counts_what_each_key_carried_and_never_a_refused_attempt() {
    use crate::support::{OPENAI_KEY, OPENAI_KEY_2};
    let env = Env::setup()
        .config(|b| b.extra(PRICE_ROW))
        .key("openai", OPENAI_KEY_2, &["--fallback"])
        .serve_env("KEYGATE_METERING__FLUSH_INTERVAL", "200ms")
        .start()
        .await;
    env.kg.register_secret(OPENAI_KEY_2);
    // The current key is refused: each request is sent again with the fallback.
    env.openai.set_keys(&[OPENAI_KEY_2]);
    for _ in 0..3 {
        assert_eq!(env.server.send(env.chat("gpt-test")).await.status, 200);
    }
    assert!(env
        .server
        .send(env.chat_stream("gpt-test"))
        .await
        .text()
        .contains("[DONE]"));
    let list = crate::support::keys::key_list(&env.kg);
    let id = |secret| {
        crate::support::keys::key_row(&list, "openai", secret)["id"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let (refused, carried) = (id(OPENAI_KEY), id(OPENAI_KEY_2));
    let rows = eventually(Duration::from_secs(5), || async {
        let out = env.kg.run(&["usage", "--by-key", "--json"]);
        let rows: Vec<serde_json::Value> = serde_json::from_str(out.stdout.trim()).ok()?;
        rows.iter()
            .any(|r| r["key_id"] == carried.as_str() && r["requests"] == 4)
            .then_some(rows)
    })
    .await
    .unwrap_or_else(|| {
        panic!(
            "the ledger never held the four answers per key: {}\n{}",
            env.kg.run(&["usage", "--by-key", "--json"]).stdout,
            env.server
                .stderr()
                .lines()
                .filter(|l| l.contains("ledger") || l.contains("request "))
                .collect::<Vec<_>>()
                .join("\n")
        )
    });
    let row = rows
        .iter()
        .find(|r| r["key_id"] == carried.as_str())
        .unwrap();
    assert_eq!(row["provider"], "openai");
    assert_eq!(
        (row["input_tokens"].as_u64(), row["output_tokens"].as_u64()),
        (Some(44), Some(25)),
        "{row}"
    );
    // 3 × 98 + 68 µ$ (JSON 11 + 7, the stream 11 + 4, at $2.50 / $10).
    assert_eq!(row["cost_micros"], 3 * 98 + 68, "{row}");
    assert!(
        rows.iter().all(|r| r["key_id"] != refused.as_str()),
        "the refused attempts were counted against their key: {rows:?}"
    );
    let text = env.kg.run(&["usage", "--by-key"]);
    text.assert_ok("usage --by-key");
    assert!(text.stdout.contains(&carried), "{}", text.stdout);
}
