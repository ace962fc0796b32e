//! A pool scheduled by headroom (docs/design.md §17), against a mock
//! provider that rate-limits each key and says what is left in its own
//! headers: with `pool = "headroom"` no request is sent to come back 429 —
//! a key the provider says is at 0 waits for its reset, the next request
//! goes to the key with room, and when every key is at 0 keygate answers
//! 429 `upstream_keys_at_capacity` without calling the provider; with
//! `pool = "sticky"` the same load costs a 429 round trip (what a stream's
//! first byte waits for). `max_in_flight` caps the requests open on a key;
//! `weight` shares new clients; the headroom shows in `key list`, the
//! admin API and `keygate_key_headroom`. Both header dialects: OpenAI's and
//! Anthropic's.

use std::time::{Duration, Instant};

use crate::support::client::open_h1;
use crate::support::mock::{AuthStyle, Mock};
use crate::support::provider_answers::Flavor;
use crate::support::{keys, Env, Keygate, KeygateBuilder, Req, OPENAI_KEY, OPENAI_KEY_2};

/// The admin API's token in these tests.
const ADMIN: &str = "kgadm-test-Hd7Rm2Qx9Wv4Lc8Tb3Np6Zs1Gj5";

/// A two-key pool whose provider allows `per_window` requests per key per
/// 20 s and answers a 429 after `reject_delay` (a real round trip).
async fn pool(mode: &str, per_window: u64, reject_delay: Duration) -> Env {
    let mode = format!("\"{mode}\"");
    let env = Env::setup()
        .key("openai", OPENAI_KEY_2, &[])
        .config(move |b| b.provider_set("openai", "pool", &mode))
        .serve_env("KEYGATE_ADMIN_TOKEN", ADMIN)
        .start()
        .await;
    env.kg.register_secret(ADMIN);
    env.openai.set_keys(&[OPENAI_KEY, OPENAI_KEY_2]);
    env.openai
        .set_request_limit(per_window, Duration::from_secs(20));
    env.openai.set_reject_delay(reject_delay);
    env
}

/// The time to the first byte of a streamed answer, and its status.
async fn first_byte(env: &Env) -> (Duration, u16) {
    let started = Instant::now();
    let response = open_h1(env.server.client, env.chat_stream("gpt-4o")).await;
    let status = response.status().as_u16();
    let mut body = response.into_body();
    crate::support::client::next_data(&mut body, Duration::from_secs(10)).await;
    (started.elapsed(), status)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_headroom_no_request_comes_back_429_and_a_full_pool_is_not_called() {
    let delay = Duration::from_millis(300);
    let env = pool("headroom", 3, delay).await;
    let mut slowest = Duration::ZERO;
    for n in 0..6 {
        let (took, status) = first_byte(&env).await;
        assert_eq!(status, 200, "request {n}");
        slowest = slowest.max(took);
    }
    assert_eq!(env.openai.limit_refusals(), 0, "no request came back 429");
    assert!(
        slowest < delay,
        "no first byte waited for a 429 round trip: slowest {slowest:?}"
    );
    let used: Vec<String> = env
        .openai
        .requests()
        .iter()
        .map(|r| r.header("authorization").unwrap_or_default())
        .collect();
    assert_eq!(
        used[..3],
        [used[0].clone(), used[0].clone(), used[0].clone()],
        "the client's own key while it has room"
    );
    assert!(
        used[3..].iter().all(|k| *k != used[0]),
        "then the other: {used:?}"
    );

    // Every key at 0: keygate answers, the provider is not called.
    let hits = env.openai.hits();
    let resp = env.server.send(env.chat("gpt-4o")).await;
    resp.assert_keygate_error(429, "upstream_keys_at_capacity");
    let retry_after: u64 = resp.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=20).contains(&retry_after), "{retry_after}");
    assert_eq!(env.openai.hits(), hits, "nothing sent to the provider");

    // What is left, where operators look.
    let metrics = env.server.admin_get("/metrics").await.text();
    let zero = metrics
        .lines()
        .filter(|l| l.starts_with("keygate_key_headroom{") && l.contains("what=\"requests\""))
        .filter(|l| l.ends_with(" 0"))
        .count();
    assert_eq!(zero, 2, "{metrics}");
    let admin = env
        .server
        .send_admin(Req::get("/admin/keys").bearer(ADMIN))
        .await
        .json();
    assert!(
        admin
            .as_array()
            .unwrap()
            .iter()
            .any(|k| k["headroom"]["requests"] == 0),
        "{admin}"
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let listed = keys::key_list(&env.kg);
    let row = keys::key_row(&listed, "openai", OPENAI_KEY);
    assert_eq!(row["headroom"]["requests"], 0, "{row}");
    let text = env.kg.run(&["key", "list"]);
    assert!(
        text.stdout.contains("headroom: 0 req, 399k tok left"),
        "{}",
        text.stdout
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sticky_learns_of_the_limit_from_a_429_and_the_first_byte_waits_for_it() {
    let delay = Duration::from_millis(300);
    let env = pool("sticky", 3, delay).await;
    let mut slowest = Duration::ZERO;
    for n in 0..6 {
        let (took, status) = first_byte(&env).await;
        assert_eq!(status, 200, "request {n}: retried with the other key");
        slowest = slowest.max(took);
    }
    assert!(
        env.openai.limit_refusals() >= 1,
        "the fourth request met a 429"
    );
    assert!(
        slowest >= delay,
        "that request's first byte waited for the 429: slowest {slowest:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn max_in_flight_caps_the_requests_open_on_a_key() {
    let env = pool("headroom", 100, Duration::ZERO).await;
    let list = keys::key_list(&env.kg);
    for secret in [OPENAI_KEY, OPENAI_KEY_2] {
        let id = keys::key_row(&list, "openai", secret)["id"]
            .as_str()
            .unwrap()
            .to_owned();
        env.kg
            .run(&["key", "set", &id, "--max-in-flight", "1"])
            .assert_ok("key set --max-in-flight");
    }
    env.wait_until_live("max_in_flight").await;
    let release = env.openai.hold_streams();
    let first = open_h1(env.server.client, env.chat_stream("gpt-4o")).await;
    let second = open_h1(env.server.client, env.chat_stream("gpt-4o")).await;
    assert_eq!(
        (first.status().as_u16(), second.status().as_u16()),
        (200, 200)
    );
    let hits = env.openai.hits();
    let third = env.server.send(env.chat("gpt-4o")).await;
    third.assert_keygate_error(429, "upstream_keys_at_capacity");
    assert_eq!(env.openai.hits(), hits, "not sent");
    drop(release);
    drop((first, second));
    // Closed streams free their slots.
    let mut freed = false;
    for _ in 0..50 {
        if env.server.send(env.chat("gpt-4o")).await.status == 200 {
            freed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(freed, "a slot is free again once a stream ends");
    env.kg
        .run(&["key", "set", "key_nosuch", "--weight", "2"])
        .assert_code(2, "key set on an unknown key");
    env.kg
        .run(&["key", "set", "key_nosuch"])
        .assert_code(2, "key set with nothing to set");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn weight_shares_new_clients_among_the_keys() {
    let env = pool("headroom", 1000, Duration::ZERO).await;
    let id = keys::key_row(&keys::key_list(&env.kg), "openai", OPENAI_KEY)["id"]
        .as_str()
        .unwrap()
        .to_owned();
    env.kg
        .run(&["key", "set", &id, "--weight", "4"])
        .assert_ok("key set --weight");
    let clients: Vec<String> = (0..30)
        .map(|n| env.kg.add_client(&format!("team{n}")))
        .collect();
    env.wait_until_live("weights and clients").await;
    for key in &clients {
        let resp = env
            .server
            .send(
                Req::post("/v1/chat/completions")
                    .bearer(key)
                    .json(&crate::support::chat_body("gpt-4o")),
            )
            .await;
        assert_eq!(resp.status, 200);
    }
    let heavy = env
        .openai
        .requests()
        .iter()
        .filter(|r| r.header("authorization") == Some(format!("Bearer {OPENAI_KEY}")))
        .count();
    assert!(
        (18..=30).contains(&heavy),
        "weight 4 against 1 takes about four fifths of 30 new clients: {heavy}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn anthropic_headers_are_read_too() {
    let (first, second) = (
        format!("sk-ant-api03-{}AA", "Hr4_Mk2-".repeat(12)),
        format!("sk-ant-api03-{}AA", "Ws7-Qp1_".repeat(12)),
    );
    let mock = Mock::start(&[first.as_str(), second.as_str()], AuthStyle::XApiKey).await;
    mock.set_flavor(Flavor::Anthropic);
    mock.set_request_limit(2, Duration::from_secs(20));
    let kg = Keygate::new(&KeygateBuilder::new().provider("anthropic", &mock.url(), "x-api-key"));
    kg.vault_init();
    kg.add_key("anthropic", &first);
    kg.add_key("anthropic", &second);
    let client = kg.add_client("app");
    let server = kg.serve();
    // Anthropic's OpenAI-compatible endpoint answers with the same headers.
    let ask = || {
        Req::post("/anthropic/v1/chat/completions")
            .bearer(&client)
            .header("anthropic-version", "2023-06-01")
            .json(&crate::support::chat_body("claude-sonnet-4-5"))
    };
    for n in 0..4 {
        let resp = server.send(ask()).await;
        assert_eq!(resp.status, 200, "request {n}: {}", resp.text());
    }
    assert_eq!(mock.limit_refusals(), 0);
    server
        .send(ask())
        .await
        .assert_keygate_error(429, "upstream_keys_at_capacity");
}
