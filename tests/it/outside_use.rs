//! Outside use (docs/keys.md "Outside use", docs/design.md §16): against a
//! management mock whose per-key usage report attributes to each key what
//! the inference mock served with it — keygate's traffic and anyone
//! else's — traffic through keygate alone (with a rate-limited key falling
//! back to another) raises no alarm over many intervals; requests sent
//! straight to the provider with a key raise `key_outside_use` naming it
//! within two intervals; with `on_outside_use = "burn"` the key is replaced
//! and deleted at the provider with no client error; a key keygate cannot
//! map is `not reconcilable`; a usage API that fails raises nothing.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::support::client::Req;
use crate::support::management::{minting_keygate, Api, Calls, Management, OPENAI_ADMIN};
use crate::support::metrics::metric_value;
use crate::support::{chat_body, eventually, Keygate, Mock, Server, OPENAI_KEY};

/// The admin token of these tests (obviously fake).
const ADMIN_TOKEN: &str = "adm-test-Qx4Rw9Zt2Hv6Nk3Lp";

const MINT: &[&str] = &[
    "key",
    "rotate",
    "openai",
    "--mint",
    "--grace",
    "1h",
    "--propagation-wait",
    "5s",
];

/// A keygate with a minted current key and the hand-added [`OPENAI_KEY`]
/// as the fallback; the management mock reports usage per key.
async fn world() -> (Keygate, Management, Mock, String, String) {
    world_with(true).await
}

/// [`world`]; `seed_hand`: the provider lists the hand-added key (else
/// keygate cannot map it to the provider's id).
async fn world_with(seed_hand: bool) -> (Keygate, Management, Mock, String, String) {
    let management = Management::start(Api::OpenAi, OPENAI_ADMIN).await;
    let (kg, inference) = minting_keygate(&management).await;
    if seed_hand {
        management.seed("made by hand", "key_hand_1", OPENAI_KEY);
    }
    kg.register_secret(ADMIN_TOKEN);
    kg.run(MINT).assert_ok("key rotate --mint");
    let minted = management.created()[0].secret.clone();
    kg.register_secret(&minted);
    let client = kg.add_client("app");
    (kg, management, inference, client, minted)
}

fn serve(kg: &Keygate, extra: &[(&str, &str)]) -> Server {
    let mut env = vec![
        ("KEYGATE_KEYS__RECONCILE_INTERVAL", "300ms"),
        ("KEYGATE_KEYS__RECONCILE_LAG", "0s"),
        ("KEYGATE_KEYS__RECONCILE_WINDOW", "2h"),
        ("KEYGATE_METERING__FLUSH_INTERVAL", "50ms"),
        ("KEYGATE_ADMIN_TOKEN", ADMIN_TOKEN),
    ];
    env.extend_from_slice(extra);
    kg.serve_with(&env)
}

fn chat(client: &str) -> Req {
    Req::post("/v1/chat/completions")
        .bearer(client)
        .json(&chat_body("gpt-4o"))
}

/// Sends `n` chats straight to the provider with `key`, as someone holding it would.
async fn straight_to_the_provider(inference: &Mock, key: &str, n: usize) {
    for _ in 0..n {
        let resp = crate::support::client::send_h1(
            inference
                .url()
                .trim_start_matches("http://")
                .parse()
                .unwrap(),
            Req::post("/v1/chat/completions")
                .bearer(key)
                .json(&chat_body("gpt-4o")),
        )
        .await;
        assert_eq!(resp.status, 200, "{}", resp.text());
    }
}

/// The CLI with the same lag as the server (the mock reports at once).
const NO_LAG: &[(&str, &str)] = &[("KEYGATE_KEYS__RECONCILE_LAG", "0s")];

fn reconcile(kg: &Keygate) -> Vec<serde_json::Value> {
    let out = kg.run_with(&["key", "reconcile", "openai", "--json"], None, NO_LAG);
    out.assert_ok("key reconcile --json");
    serde_json::from_str::<serde_json::Value>(out.stdout.trim())
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

fn outside_events(kg: &Keygate) -> Vec<serde_json::Value> {
    let out = kg.run(&["events", "--type", "key_outside_use", "--json"]);
    serde_json::from_str::<serde_json::Value>(out.stdout.trim())
        .ok()
        .and_then(|v| v.as_array().cloned())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keygates_own_traffic_with_fallbacks_raises_no_alarm() {
    let (kg, _management, inference, client, minted) = world().await;
    let server = serve(&kg, &[]);
    for _ in 0..8 {
        assert_eq!(server.send(chat(&client)).await.status, 200);
    }
    // The minted key is rate limited: each request falls back to the other.
    inference.set_rate_limited_keys(&[minted.as_str()]);
    for _ in 0..8 {
        assert_eq!(server.send(chat(&client)).await.status, 200);
    }
    // Many intervals.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rows = reconcile(&kg);
    assert_eq!(rows.len(), 2, "{rows:?}");
    for row in &rows {
        assert_eq!(row["finding"], "clean", "{rows:?}");
        assert_eq!(
            row["keygate_requests"], row["provider_requests"],
            "{rows:?}"
        );
    }
    assert!(outside_events(&kg).is_empty());
    // The series exist (every checkable key starts at 0) and stay at 0.
    let page = server.admin_get("/metrics").await.text();
    let series: Vec<&str> = page
        .lines()
        .filter(|l| l.starts_with("keygate_key_outside_use_total{"))
        .collect();
    assert_eq!(series.len(), 2, "{page}");
    assert!(series.iter().all(|l| l.ends_with(" 0")), "{series:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_straight_to_the_provider_raise_the_alarm_naming_the_key() {
    let (kg, _management, inference, client, minted) = world().await;
    let server = serve(&kg, &[]);
    for _ in 0..6 {
        assert_eq!(server.send(chat(&client)).await.status, 200);
    }
    straight_to_the_provider(&inference, &minted, 10).await;
    let event = eventually(Duration::from_secs(5), || async {
        outside_events(&kg).into_iter().next()
    })
    .await
    .expect("no key_outside_use within two intervals");
    let list = crate::support::keys::key_list(&kg);
    let minted_id = crate::support::keys::key_row(&list, "openai", &minted)["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(event["key_id"], minted_id.as_str(), "{event}");
    assert_eq!(event["detail"]["extra_requests"], 10, "{event}");
    assert_eq!(
        (
            event["keygate_requests"].as_u64(),
            event["provider_requests"].as_u64()
        ),
        (Some(6), Some(16))
    );
    let page = server.admin_get("/metrics").await.text();
    let labels = [("provider", "openai"), ("key_id", minted_id.as_str())];
    assert_eq!(
        metric_value(&page, "keygate_key_outside_use_total", &labels),
        Some(1.0),
        "{page}"
    );
    assert_eq!(
        metric_value(&page, "keygate_key_outside_requests", &labels),
        Some(10.0)
    );
    let providers = server
        .send_admin(Req::get("/admin/providers").bearer(ADMIN_TOKEN))
        .await
        .json();
    assert!(providers.to_string().contains(&minted_id), "{providers}");
    let text = kg.run_with(&["key", "reconcile"], None, NO_LAG);
    assert!(
        text.stdout.contains("OUTSIDE USE: 10 more requests"),
        "{}",
        text.stdout
    );
    // Told once, though it is found again at every interval.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(outside_events(&kg).len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_burn_the_key_is_replaced_and_deleted_with_no_client_error() {
    let (kg, management, inference, client, minted) = world().await;
    let server = Arc::new(serve(&kg, &[("KEYGATE_KEYS__ON_OUTSIDE_USE", "burn")]));
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let (server, client, stop) = (server.clone(), client.clone(), stop.clone());
        tokio::spawn(async move {
            let mut errors = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let resp = server.send(chat(&client)).await;
                if resp.status != 200 {
                    errors.push(format!("{} {}", resp.status, resp.text()));
                }
                tokio::time::sleep(Duration::from_millis(30)).await;
            }
            errors
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    straight_to_the_provider(&inference, &minted, 10).await;
    let minted_row = management.created()[0].provider_id.clone();
    let burnt = eventually(Duration::from_secs(15), || async {
        management.is_deleted(&minted_row).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let errors = load.await.unwrap();
    assert!(
        burnt.is_some(),
        "the key used from outside was not deleted at the provider"
    );
    assert!(
        errors.is_empty(),
        "client errors during the burn: {errors:?}"
    );
    for key in management.created() {
        kg.register_secret(&key.secret);
    }
    let list = crate::support::keys::key_list(&kg);
    assert_eq!(
        crate::support::keys::key_row(&list, "openai", &minted)["state"],
        "revoked"
    );
    let replacement = &management.created()[1].secret;
    assert_eq!(
        crate::support::keys::key_row(&list, "openai", replacement)["state"],
        "current"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unmappable_key_is_not_reconcilable_and_a_failing_usage_api_raises_nothing() {
    // The hand-added key is not among the keys the provider lists.
    let (kg, management, inference, client, minted) = world_with(false).await;
    management.fail(Calls::Usage, 500);
    let server = serve(&kg, &[("KEYGATE_KEYS__ON_OUTSIDE_USE", "burn")]);
    assert_eq!(server.send(chat(&client)).await.status, 200);
    straight_to_the_provider(&inference, &minted, 10).await;
    server.wait_for_log("cannot be checked").await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(outside_events(&kg).is_empty());
    assert!(
        management.removals().is_empty(),
        "a failing usage API burnt a key"
    );
    let failed = kg.run_with(&["key", "reconcile", "openai"], None, NO_LAG);
    failed.assert_code(1, "reconcile with a failing usage API");
    assert!(failed.stderr.contains("500"), "{}", failed.stderr);
    management.heal();
    let rows = reconcile(&kg);
    let elsewhere = rows
        .iter()
        .find(|r| r["finding"] == "not_reconcilable")
        .unwrap_or_else(|| panic!("{rows:?}"));
    assert!(
        elsewhere["detail"]
            .as_str()
            .unwrap()
            .contains("cannot match it"),
        "{elsewhere}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_on_postgresql_compare_the_fleets_counts_and_alarm_once() {
    use crate::support::postgres::{Postgres, PG_PASSWORD};
    let pg = Postgres::start();
    let (kg, _management, inference, client, minted) = world().await;
    kg.register_secret(PG_PASSWORD);
    let url = pg.url();
    let db = [("KEYGATE_METERING__DB", url.as_str())];
    let replicas = [serve(&kg, &db), serve(&kg, &db)];
    // Each replica alone sent fewer than the provider counts for the fleet.
    for n in 0..12 {
        assert_eq!(replicas[n % 2].send(chat(&client)).await.status, 200);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let env: Vec<(&str, &str)> = [NO_LAG, &db[..]].concat();
    let out = kg.run_with(&["key", "reconcile", "openai", "--json"], None, &env);
    out.assert_ok("key reconcile against the fleet's ledger");
    let rows: serde_json::Value = serde_json::from_str(out.stdout.trim()).unwrap();
    let fleet = rows
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["keygate_requests"] == 12)
        .unwrap_or_else(|| panic!("no key with the fleet's 12 requests: {rows}"));
    assert_eq!(fleet["finding"], "clean", "{rows}");
    straight_to_the_provider(&inference, &minted, 10).await;
    let events = || {
        let out = kg.run_with(
            &["events", "--type", "key_outside_use", "--json"],
            None,
            &db,
        );
        serde_json::from_str::<serde_json::Value>(out.stdout.trim())
            .ok()
            .and_then(|v| v.as_array().cloned())
            .unwrap_or_default()
    };
    eventually(Duration::from_secs(5), || async {
        (!events().is_empty()).then_some(())
    })
    .await
    .expect("no key_outside_use from either replica");
    // Both replicas found it; the fleet's outbox holds it once.
    for replica in &replicas {
        replica.wait_for_log("OUTSIDE USE of key").await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let told = events();
    assert_eq!(told.len(), 1, "{told:?}");
    assert_eq!(told[0]["keygate_requests"], 12, "{told:?}");
    assert_eq!(told[0]["provider_requests"], 22);
}
