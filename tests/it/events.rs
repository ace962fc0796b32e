//! Events that reach people (docs/events.md, docs/design.md §16): a rotation
//! arrives at a `[[notify]]` receiver signed and verifiable; a receiver that
//! is down is retried with the same event id until it takes it, across a
//! restart; one that never takes it is given up after `give_up_after`; Slack
//! receivers get text; two replicas on one PostgreSQL outbox deliver each
//! event once; a receiver that never answers does not slow requests; broken
//! `[[notify]]` tables stop the start with a clear error.

use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};

use crate::support::config::toml_string;
use crate::support::keygate::Out;
use crate::support::keys::{key_list, key_row};
use crate::support::metrics::metric_value;
use crate::support::mock::{AuthStyle, Mock};
use crate::support::postgres::{Postgres, PG_PASSWORD};
use crate::support::webhook::{Attempt, Webhook, WEBHOOK_TOKEN};
use crate::support::{eventually, Env, Keygate, KeygateBuilder, OPENAI_KEY, OPENAI_KEY_2};

/// The receiver's signing key (obviously fake).
const SIGNING_KEY: &str = "whsec-test-Qm4Tz8Kd2Vr6Nx0Lp3";

/// `printf SECRET | keygate key rotate openai` (the secret registered for the leak check).
fn rotate(kg: &Keygate, secret: &str, env: &[(&str, &str)]) -> Out {
    kg.register_secret(secret);
    kg.run_with(&["key", "rotate", "openai"], Some(secret), env)
}

/// A key the mock never accepts, different each call (its rotation fails).
fn bad_key(n: usize) -> String {
    format!("sk-test-bad{n:02}-Rj3Kp8Wq2Lx5Nv7Bt0Ym4Hc6Gd9X")
}

fn id_of(kg: &Keygate, secret: &str) -> String {
    key_row(&key_list(kg), "openai", secret)["id"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// `keygate events --json` as a list.
fn listed(kg: &Keygate, env: &[(&str, &str)]) -> Vec<serde_json::Value> {
    let out = kg.run_with(&["events", "--json"], None, env);
    out.assert_ok("keygate events --json");
    serde_json::from_str::<serde_json::Value>(out.stdout.trim())
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

/// What a receiver does to check a delivery: HMAC-SHA256 over
/// `timestamp + "." + body` with the shared key, compared with the header.
fn verifies(attempt: &Attempt, key: &str) -> bool {
    let (Some(timestamp), Some(signature)) = (
        attempt.header("x-keygate-timestamp"),
        attempt.header("x-keygate-signature"),
    ) else {
        return false;
    };
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(key.as_bytes()).unwrap();
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(&attempt.seen.body);
    signature == format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

async fn env_with(hook: &Webhook, notify_extra: &str, events: &str) -> Env {
    let table = hook.table("ops", notify_extra);
    let events = format!("[events]\n{events}\n");
    Env::setup()
        .config(move |b| b.extra(&events).extra(&table))
        .serve_env("KEYGATE_NOTIFY_SECRET", SIGNING_KEY)
        .start()
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_arrives_signed_and_verifiable() {
    let hook = Webhook::start().await;
    let env = env_with(&hook, "secret_env = \"KEYGATE_NOTIFY_SECRET\"", "").await;
    env.kg.register_secret(SIGNING_KEY);
    env.kg.register_secret(WEBHOOK_TOKEN);
    let old = id_of(&env.kg, OPENAI_KEY);
    env.openai.set_keys(&[OPENAI_KEY, OPENAI_KEY_2]);
    rotate(&env.kg, OPENAI_KEY_2, &[]).assert_ok("key rotate");
    let new = id_of(&env.kg, OPENAI_KEY_2);

    let delivery = eventually(Duration::from_secs(10), || async {
        hook.delivered_of("key_rotated")
    })
    .await
    .expect("the rotation never reached the receiver");
    assert!(
        verifies(&delivery, SIGNING_KEY),
        "the signature does not verify"
    );
    assert!(!verifies(&delivery, "another key"), "any key verifies");
    let mut tampered = delivery.clone();
    tampered.seen.body = String::from_utf8_lossy(&delivery.seen.body)
        .replace(&new, "key_forged")
        .into();
    assert!(
        !verifies(&tampered, SIGNING_KEY),
        "a changed body still verifies"
    );

    let event = delivery.json();
    assert_eq!(event["provider"], "openai");
    assert_eq!(event["key_id"], new.as_str());
    assert_eq!(event["previous_key_id"], old.as_str());
    assert!(event["id"].as_str().unwrap().starts_with("evt_"));
    assert!(event["time"].as_str().unwrap().ends_with('Z'));
    assert_eq!(
        delivery.header("x-keygate-event-id").as_deref(),
        event["id"].as_str()
    );
    assert_eq!(delivery.seen.method, http::Method::POST);
    for secret in [OPENAI_KEY, OPENAI_KEY_2, SIGNING_KEY] {
        assert!(!String::from_utf8_lossy(&delivery.seen.body).contains(secret));
    }

    // `keygate events` and the admin API list it as delivered.
    let listed = eventually(Duration::from_secs(5), || async {
        listed(&env.kg, &[])
            .into_iter()
            .find(|e| e["id"] == event["id"] && e["deliveries"][0]["state"] == "delivered")
    })
    .await
    .expect("keygate events does not show the delivery");
    assert_eq!(listed["deliveries"][0]["receiver"], "ops");
    let text = env.kg.run(&["events", "--type", "key_rotated"]);
    text.assert_ok("keygate events --type key_rotated");
    assert!(text.stdout.contains("ops: delivered"), "{}", text.stdout);
    let page = env.server.admin_get("/metrics").await.text();
    assert_eq!(
        metric_value(
            &page,
            "keygate_notify_deliveries_total",
            &[("result", "delivered")]
        ),
        Some(1.0),
        "{page}"
    );
    let unknown = env.kg.run(&["events", "--type", "key_rotate"]);
    unknown.assert_code(2, "events --type with a made-up type");
    assert!(unknown.stderr.contains("key_rotated"), "{}", unknown.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_down_for_its_first_attempts_gets_the_event_with_the_same_id() {
    let hook = Webhook::start().await;
    hook.fail_first(2);
    let env = env_with(&hook, "", "first_retry = \"200ms\"").await;
    env.openai.set_keys(&[OPENAI_KEY, OPENAI_KEY_2]);
    rotate(&env.kg, OPENAI_KEY_2, &[]).assert_ok("key rotate");
    eventually(Duration::from_secs(10), || async {
        hook.delivered_of("key_rotated").map(|_| ())
    })
    .await
    .expect("the event never got through");
    let attempts: Vec<Attempt> = hook
        .attempts()
        .into_iter()
        .filter(|a| a.json()["type"] == "key_rotated")
        .collect();
    let statuses: Vec<u16> = attempts.iter().map(|a| a.status).collect();
    assert_eq!(statuses, [503, 503, 200]);
    assert!(
        attempts
            .iter()
            .all(|a| a.seen.body == attempts[0].seen.body),
        "every attempt must carry the same event, id included"
    );
    let page = env.server.admin_get("/metrics").await.text();
    let count = |result| {
        metric_value(
            &page,
            "keygate_notify_deliveries_total",
            &[("result", result)],
        )
    };
    assert_eq!(count("failed"), Some(2.0), "{page}");
    assert_eq!(count("delivered"), Some(1.0), "{page}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_waiting_when_keygate_stops_is_delivered_after_the_restart() {
    let hook = Webhook::start().await;
    hook.set_down(true);
    let mut env = env_with(&hook, "", "first_retry = \"200ms\"").await;
    env.openai.set_keys(&[OPENAI_KEY, OPENAI_KEY_2]);
    rotate(&env.kg, OPENAI_KEY_2, &[]).assert_ok("key rotate");
    eventually(Duration::from_secs(10), || async {
        (!hook.attempts().is_empty()).then_some(())
    })
    .await
    .expect("no attempt while the receiver was down");
    env.server.terminate();
    let tried = hook.attempts().len();
    hook.set_down(false);
    let server = env.kg.serve_with(&[("KEYGATE_NOTIFY_SECRET", SIGNING_KEY)]);
    let delivery = eventually(Duration::from_secs(10), || async {
        hook.delivered_of("key_rotated")
    })
    .await
    .expect("the waiting event was not delivered after the restart");
    assert!(hook.attempts().len() > tried);
    assert!(hook
        .attempts()
        .iter()
        .all(|a| a.json()["id"] == delivery.json()["id"]));
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_that_never_takes_it_is_given_up_after_give_up_after() {
    let hook = Webhook::start().await;
    hook.set_down(true);
    let env = env_with(&hook, "", "first_retry = \"100ms\"\ngive_up_after = \"1s\"").await;
    rotate(&env.kg, &bad_key(1), &[]).assert_code(1, "rotation to a refused key");
    let given_up = eventually(Duration::from_secs(10), || async {
        listed(&env.kg, &[]).into_iter().find(|e| {
            e["type"] == "key_rotation_failed" && e["deliveries"][0]["state"] == "given_up"
        })
    })
    .await
    .expect("the delivery was never given up");
    assert!(given_up["deliveries"][0]["last_error"]
        .as_str()
        .unwrap()
        .contains("503"));
    let tries = hook.attempts().len();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        hook.attempts().len(),
        tries,
        "a given-up delivery was tried again"
    );
    let page = env.server.admin_get("/metrics").await.text();
    assert_eq!(
        metric_value(
            &page,
            "keygate_notify_deliveries_total",
            &[("result", "given_up")]
        ),
        Some(1.0)
    );
    assert_eq!(
        metric_value(&page, "keygate_notify_outbox_depth", &[]),
        Some(0.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slack_receivers_get_text_and_only_the_types_they_asked_for() {
    let slack = Webhook::start().await;
    let burns_only = Webhook::start().await;
    let tables = format!(
        "{}{}",
        slack.table(
            "chat",
            "format = \"slack\"\nsecret_env = \"KEYGATE_NOTIFY_SECRET\""
        ),
        burns_only.table("burns", "events = [\"key_burned\"]")
    );
    let env = Env::setup()
        .config(move |b| b.extra(&tables))
        .serve_env("KEYGATE_NOTIFY_SECRET", SIGNING_KEY)
        .start()
        .await;
    env.openai.set_keys(&[OPENAI_KEY, OPENAI_KEY_2]);
    let new_key_out = rotate(&env.kg, OPENAI_KEY_2, &[]);
    new_key_out.assert_ok("key rotate");
    let new = id_of(&env.kg, OPENAI_KEY_2);
    let delivery = eventually(Duration::from_secs(10), || async {
        slack.delivered().into_iter().next()
    })
    .await
    .expect("nothing reached the Slack receiver");
    let text = delivery.json()["text"].as_str().unwrap().to_owned();
    assert!(text.starts_with("keygate key_rotated:"), "{text}");
    assert!(text.contains(&new), "{text}");
    assert_eq!(
        delivery.json().as_object().unwrap().len(),
        1,
        "Slack takes {{\"text\": …}}"
    );
    // Events of other types never reach a receiver that did not ask.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(burns_only.attempts().is_empty());
    let rows = listed(&env.kg, &[]);
    let rotated = rows.iter().find(|e| e["type"] == "key_rotated").unwrap();
    assert_eq!(rotated["deliveries"].as_array().unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_on_one_postgres_outbox_deliver_each_event_once() {
    const EVENTS: usize = 8;
    let pg = Postgres::start();
    let hook = Webhook::start().await;
    let mock = Mock::start(&[OPENAI_KEY], AuthStyle::Bearer).await;
    let kg = Keygate::new(
        &KeygateBuilder::new()
            .provider("openai", &mock.url(), "bearer")
            .extra(&hook.table("ops", "")),
    );
    kg.register_secret(PG_PASSWORD);
    kg.vault_init();
    kg.add_key("openai", OPENAI_KEY);
    let db = [("KEYGATE_METERING__DB", pg.url())];
    let db: Vec<(&str, &str)> = db.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let one = kg.serve_with(&db);
    let two = kg.serve_with(&db);
    for n in 0..EVENTS {
        rotate(&kg, &bad_key(n), &db).assert_code(1, "rotation to a refused key");
    }
    let delivered = eventually(Duration::from_secs(15), || async {
        let seen = hook.delivered();
        (seen.len() >= EVENTS).then_some(seen)
    })
    .await
    .unwrap_or_else(|| panic!("only {} of {EVENTS} delivered", hook.delivered().len()));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut ids: Vec<String> = hook
        .attempts()
        .iter()
        .map(|a| a.json()["id"].as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), EVENTS);
    assert_eq!(
        hook.attempts().len(),
        EVENTS,
        "an event was sent twice: {:?}",
        delivered
            .iter()
            .map(|a| a.json()["id"].clone())
            .collect::<Vec<_>>()
    );
    for server in [&one, &two] {
        let page = server.admin_get("/metrics").await.text();
        assert!(!page.contains(PG_PASSWORD));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_that_never_answers_does_not_slow_requests() {
    const REQUESTS: usize = 200;
    let hook = Webhook::start().await;
    hook.hang();
    let env = env_with(&hook, "", "delivery_timeout = \"30s\"").await;
    let p99 = |mut took: Vec<Duration>| {
        took.sort();
        took[took.len() * 99 / 100]
    };
    let run = || async {
        let mut took = Vec::with_capacity(REQUESTS);
        for _ in 0..REQUESTS {
            let started = Instant::now();
            let resp = env.server.send(env.chat("gpt-4o")).await;
            assert_eq!(resp.status, 200);
            took.push(started.elapsed());
        }
        took
    };
    let quiet = p99(run().await);
    // Events that will never be delivered, then the same load.
    for n in 0..20 {
        rotate(&env.kg, &bad_key(n), &[]).assert_code(1, "rotation to a refused key");
    }
    eventually(Duration::from_secs(10), || async {
        (!hook.attempts().is_empty()).then_some(())
    })
    .await
    .expect("the hung receiver was never tried");
    let stuck = p99(run().await);
    assert!(
        stuck < quiet * 3 + Duration::from_millis(20),
        "requests slowed while a receiver hangs: p99 {stuck:?} against {quiet:?} before"
    );
    let page = env.server.admin_get("/metrics").await.text();
    let depth = metric_value(&page, "keygate_notify_outbox_depth", &[]).unwrap_or(0.0);
    assert!(
        depth <= 20.0,
        "the outbox holds more than was raised: {depth}"
    );
    assert!(
        hook.attempts().len() <= 16,
        "one batch at a time is in flight to a hung receiver: {}",
        hook.attempts().len()
    );
}

fn assert_refused(notify: &str, needle: &str, code: i32) {
    let kg = Keygate::new(
        &KeygateBuilder::new()
            .provider("openai", "http://127.0.0.1:9", "bearer")
            .extra(notify),
    );
    let out = kg.run_with(&["serve"], None, &[]);
    out.assert_code(code, "serve with a broken [[notify]]");
    assert!(out.stderr.contains(needle), "{needle}: {}", out.stderr);
}

#[test]
fn broken_notify_tables_stop_the_start_with_a_clear_error() {
    let url = toml_string("https://hooks.example.com/k");
    assert_refused(
        &format!("[[notify]]\nurl = {url}\nevents = [\"key_rotate\"]\n"),
        "notify[0].events: `key_rotate` is not an event type",
        2,
    );
    assert_refused(
        "[[notify]]\nurl = \"ftp://hooks.example.com/k\"\n",
        "notify[0].url must be an http:// or https:// URL",
        2,
    );
    assert_refused(
        &format!("[[notify]]\nurl = {url}\nformat = \"teams\"\n"),
        "notify[0].format `teams` is not one of: json, slack",
        2,
    );
    assert_refused(
        &format!("[[notify]]\nurl = {url}\n[[notify]]\nurl = {url}\n"),
        "two [[notify]] receivers are named",
        2,
    );
    assert_refused(
        &format!("[[notify]]\nname = \"ops\"\nurl = {url}\nsecret_env = \"KEYGATE_TEST_UNSET_SIGNING_KEY\"\n"),
        "secret_env names KEYGATE_TEST_UNSET_SIGNING_KEY, which is not set",
        1,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_due_for_rotation_is_told_once_a_day_whatever_the_restarts() {
    let mock = Mock::start(&[OPENAI_KEY], AuthStyle::Bearer).await;
    let kg = Keygate::new(
        &KeygateBuilder::new()
            .provider("openai", &mock.url(), "bearer")
            .extra("[keys]\nrotate_after = \"1s\"\n"),
    );
    kg.vault_init();
    kg.add_key("openai", OPENAI_KEY);
    let id = id_of(&kg, OPENAI_KEY);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let due = || {
        listed(&kg, &[])
            .into_iter()
            .filter(|e| e["type"] == "key_due_for_rotation")
            .collect::<Vec<_>>()
    };
    for _ in 0..2 {
        let mut server = kg.serve();
        server.wait_for_log("is due for rotation").await;
        // The event reaches the outbox before the server stops.
        server.terminate();
    }
    let events = due();
    assert_eq!(
        events.len(),
        1,
        "two starts on one day raise it once: {events:?}"
    );
    assert_eq!(events[0]["key_id"], id.as_str());
    assert_eq!(events[0]["provider"], "openai");
    assert_eq!(events[0]["rotate_after_days"], 0);
}
