//! One usage ledger for the fleet (docs/design.md §10 `[metering] db =
//! "postgres://…"`; README "Running several replicas"): against a real
//! PostgreSQL with a password, three replicas' usage sums to the mock's token
//! totals in `keygate usage --json`; a replica killed with SIGKILL loses at
//! most what came after its last flush; PostgreSQL crashing and coming back
//! mid-run loses nothing that was drained; the URL's password appears in no
//! log, answer or metrics page.

use std::time::Duration;

use crate::support::client::Req;
use crate::support::mock::{AuthStyle, Mock};
use crate::support::postgres::{Postgres, PG_PASSWORD};
use crate::support::{chat_body, eventually, Keygate, KeygateBuilder, Server, OPENAI_KEY};

/// Tokens the mock reports per chat completion.
const TOKENS: u64 = 18;

async fn fleet_keygate() -> (Keygate, Mock, String) {
    let mock = Mock::start(&[OPENAI_KEY], AuthStyle::Bearer).await;
    let kg = Keygate::new(&KeygateBuilder::new().provider("openai", &mock.url(), "bearer"));
    kg.register_secret(PG_PASSWORD);
    kg.vault_init();
    kg.add_key("openai", OPENAI_KEY);
    let client = kg.add_client("app");
    (kg, mock, client)
}

/// A chat completion as the client `client` (its `kg_` key).
fn chat(client: &str) -> Req {
    Req::post("/v1/chat/completions")
        .bearer(client)
        .json(&chat_body("gpt-4o"))
}

fn serve(kg: &Keygate, pg: &Postgres) -> Server {
    kg.serve_with(&[
        ("KEYGATE_METERING__DB", pg.url().as_str()),
        ("KEYGATE_METERING__FLUSH_INTERVAL", "200ms"),
    ])
}

/// `(requests, total_tokens)` of client `app` in `keygate usage --json`.
fn usage(kg: &Keygate, pg: &Postgres) -> (u64, u64) {
    let out = kg.run_with(
        &["usage", "--json"],
        None,
        &[("KEYGATE_METERING__DB", pg.url().as_str())],
    );
    out.assert_ok("usage --json against PostgreSQL");
    let rows: serde_json::Value = serde_json::from_str(out.stdout.trim()).unwrap();
    rows.as_array().unwrap().iter().fold((0, 0), |(r, t), row| {
        (
            r + row["requests"].as_u64().unwrap_or(0),
            t + row["total_tokens"].as_u64().unwrap_or(0),
        )
    })
}

async fn send(server: &Server, client: &str, n: usize) {
    for _ in 0..n {
        let resp = server.send(chat(client)).await;
        assert_eq!(resp.status, 200, "{}", resp.text());
    }
}

async fn wait_for_usage(kg: &Keygate, pg: &Postgres, requests: u64) -> (u64, u64) {
    eventually(Duration::from_secs(10), || async {
        let seen = usage(kg, pg);
        (seen.0 >= requests).then_some(seen)
    })
    .await
    .unwrap_or_else(|| {
        panic!(
            "the ledger never reached {requests} requests: {:?}",
            usage(kg, pg)
        )
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_write_one_ledger_that_sums_to_the_upstream() {
    let pg = Postgres::start();
    let (kg, mock, client) = fleet_keygate().await;
    let servers: Vec<Server> = (0..3).map(|_| serve(&kg, &pg)).collect();
    for (n, server) in servers.iter().enumerate() {
        send(server, &client, 4 + n).await;
    }
    let (requests, tokens) = wait_for_usage(&kg, &pg, 15).await;
    assert_eq!(requests, 15);
    assert_eq!(mock.requests().len(), 15);
    assert_eq!(
        tokens,
        15 * TOKENS,
        "the fleet's ledger sums to what the upstream reported"
    );
    // And to what it cost: gpt-4o at $2.50 in and $10 out, 11 + 7 tokens
    // each: 97.5 µ$, 98 rounded, per answer.
    let out = kg.run_with(
        &["usage", "--json"],
        None,
        &[("KEYGATE_METERING__DB", pg.url().as_str())],
    );
    let rows: serde_json::Value = serde_json::from_str(out.stdout.trim()).unwrap();
    let cost: u64 = rows
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["cost_micros"].as_u64().unwrap())
        .sum();
    assert_eq!(cost, 15 * 98, "{rows}");
    // Per key too: the fleet's one key carried all fifteen.
    let out = kg.run_with(
        &["usage", "--by-key", "--json"],
        None,
        &[("KEYGATE_METERING__DB", pg.url().as_str())],
    );
    let by_key: serde_json::Value = serde_json::from_str(out.stdout.trim()).unwrap();
    assert_eq!(by_key.as_array().map(Vec::len), Some(1), "{by_key}");
    assert_eq!(by_key[0]["requests"], 15, "{by_key}");
    for server in &servers {
        let page = server.admin_get("/metrics").await.text();
        assert!(!page.contains(PG_PASSWORD));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_replica_loses_at_most_its_last_flush_and_a_crashed_database_nothing() {
    let mut pg = Postgres::start();
    let (kg, _mock, client) = fleet_keygate().await;
    let mut one = serve(&kg, &pg);
    let two = serve(&kg, &pg);
    send(&one, &client, 6).await;
    // All six are flushed and acknowledged by PostgreSQL before the next three.
    let (flushed, _) = wait_for_usage(&kg, &pg, 6).await;
    assert_eq!(flushed, 6, "six requests were sent");
    send(&one, &client, 3).await;
    one.kill();
    let (after_kill, _) = usage(&kg, &pg);
    assert!(
        (6..=9).contains(&after_kill),
        "a replica killed with SIGKILL lost flushed usage: {after_kill}"
    );

    // PostgreSQL crashes mid-run; replica two keeps serving and keeps its counts.
    send(&two, &client, 4).await;
    // Replica two's four are in the ledger before the crash.
    let before_crash = wait_for_usage(&kg, &pg, after_kill + 4).await.0;
    assert_eq!(before_crash, after_kill + 4, "four more requests were sent");
    pg.kill();
    send(&two, &client, 5).await;
    // Replica two drained the five and failed to write them (the ledger
    // writes only when it holds usage): they wait in memory for the restart.
    two.wait_for_log("usage ledger write failed, will retry")
        .await;
    pg.restart();
    let (requests, _) = wait_for_usage(&kg, &pg, before_crash + 5).await;
    assert_eq!(
        requests,
        before_crash + 5,
        "usage drained during the outage was lost"
    );
    assert!(
        two.stderr()
            .contains("usage ledger write failed, will retry"),
        "the outage was not logged"
    );
}

#[test]
fn a_row_the_database_refuses_never_keeps_the_others_out() {
    use keygate::usage::meter::{UsageDelta, UsageKey};
    use std::sync::Arc;
    let pg = Postgres::start();
    let db = keygate::config::LedgerDb::Postgres {
        url: keygate::vault::secret::Secret::new(pg.url()),
        endpoint: "postgres://127.0.0.1/keygate".to_owned(),
    };
    let mut ledger = keygate::usage::ledger::Ledger::open(&db).expect("open the ledger");
    let key = |client: &str, model: &str| UsageKey {
        client: Arc::from(client),
        provider: Arc::from("openai"),
        model: Arc::from(model),
    };
    let delta = || UsageDelta {
        requests: 1,
        total_tokens: 10,
        ..UsageDelta::default()
    };
    // PostgreSQL refuses NUL in text (22021): before, the whole batch was
    // refused and retried for ever, so no client's usage was recorded.
    let rows = vec![
        (key("good", "gpt-4o"), delta()),
        (key("poison", "gpt\u{0}x"), delta()),
        (key("also-good", "gpt-4o-mini"), delta()),
    ];
    ledger
        .add(1, 3_600_000, &rows)
        .expect("the rows it accepts are written");
    let mut totals: Vec<(String, u64)> = ledger
        .client_totals()
        .expect("totals")
        .into_iter()
        .map(|spend| (spend.client, spend.tokens))
        .collect();
    totals.sort();
    assert_eq!(
        totals,
        vec![("also-good".to_owned(), 10), ("good".to_owned(), 10)],
        "the refused row alone is dropped"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_a_postgresql_ledger_exits_cleanly_without_a_panic() {
    let pg = Postgres::start();
    let (kg, _mock, client) = fleet_keygate().await;
    let mut server = serve(&kg, &pg);
    let resp = server.send(chat(&client)).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    let status = server.stop_and_read_everything();
    assert!(status.success(), "exit {status:?}:\n{}", server.stderr());
    assert!(
        !server.stderr().contains("panicked"),
        "the PostgreSQL client panicked on the way out:\n{}",
        server.stderr()
    );
    // The last flush reached the ledger.
    assert_eq!(usage(&kg, &pg).0, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_postgresql_cannot_keep_sigterm_from_ending_serve_within_its_grace() {
    let pg = Postgres::start();
    let (kg, _mock, client) = fleet_keygate().await;
    let mut server = kg.serve_with(&[
        ("KEYGATE_METERING__DB", pg.url().as_str()),
        ("KEYGATE_METERING__FLUSH_INTERVAL", "200ms"),
        ("KEYGATE_SERVER__SHUTDOWN_GRACE", "2s"),
    ]);
    assert_eq!(server.send(chat(&client)).await.status, 200);
    let flushed = eventually(Duration::from_secs(5), || async {
        (usage(&kg, &pg).0 == 1).then_some(())
    })
    .await;
    assert!(
        flushed.is_some(),
        "the first request never reached the ledger"
    );
    // The database host freezes: its connections stay open and silent.
    pg.freeze();
    assert_eq!(
        server.send(chat(&client)).await.status,
        200,
        "requests go on"
    );
    tokio::time::sleep(Duration::from_millis(600)).await; // a flush is now stuck
    let started = std::time::Instant::now();
    let status = server.stop_and_read_everything();
    let took = started.elapsed();
    pg.thaw();
    assert!(status.success(), "exit {status:?}:\n{}", server.stderr());
    assert!(
        took < Duration::from_secs(8),
        "SIGTERM took {took:?} with a silent database (shutdown_grace 2s):\n{}",
        server.stderr()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_gone_silent_is_given_up_and_the_ledger_writes_on_a_new_one() {
    let pg = Postgres::start();
    let (kg, _mock, client) = fleet_keygate().await;
    let server = serve(&kg, &pg);
    assert_eq!(server.send(chat(&client)).await.status, 200);
    let first = eventually(Duration::from_secs(5), || async {
        (usage(&kg, &pg).0 == 1).then_some(())
    })
    .await;
    assert!(
        first.is_some(),
        "the first request never reached the ledger"
    );
    // keygate's connection goes silent; the database still takes new ones.
    pg.freeze_backends();
    assert_eq!(server.send(chat(&client)).await.status, 200);
    let second = eventually(Duration::from_secs(30), || async {
        (usage(&kg, &pg).0 == 2).then_some(())
    })
    .await;
    pg.thaw();
    assert!(
        second.is_some(),
        "the ledger writer stayed on the silent connection:\n{}",
        server.stderr()
    );
    assert!(
        server.stderr().contains("no answer within"),
        "{}",
        server.stderr()
    );
}
