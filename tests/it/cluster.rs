//! Replicas sharing one Redis (docs/design.md §3 `[cluster]`, §10; README
//! "Running several replicas"): against a real `redis-server` with a
//! password, three `keygate serve` processes on one vault admit together
//! exactly what one would (rpm; a token budget spent by concurrent requests
//! overshoots by at most one reservation), a key one replica finds rejected
//! is not sent by another, and Redis killed mid-load fails no request —
//! limits go on per replica, `keygate_cluster_errors_total` counts it,
//! `/readyz` says so — and sharing resumes when it is back. While Redis is
//! down a limited request does not wait for it (the breaker): its p99 stays
//! within a few ms of the p99 with Redis up. The Redis password never
//! appears in any log, answer or metrics page.

use std::time::Duration;

use crate::support::client::Req;
use crate::support::keys::key_of;
use crate::support::metrics::metric_value;
use crate::support::mock::{AuthStyle, Mock};
use crate::support::redis::{Redis, REDIS_PASSWORD};
use crate::support::{
    chat_body, eventually, Keygate, KeygateBuilder, Server, OPENAI_KEY, OPENAI_KEY_2,
};

/// A keygate with the openai mock and client `app` limited by `limits`.
async fn limited(limits: &[&str], keys: &[&str]) -> (Keygate, Mock, String) {
    let mock = Mock::start(keys, AuthStyle::Bearer).await;
    let kg = Keygate::new(&KeygateBuilder::new().provider("openai", &mock.url(), "bearer"));
    kg.register_secret(REDIS_PASSWORD);
    kg.vault_init();
    kg.add_key("openai", OPENAI_KEY);
    let client = kg.add_client("app");
    if !limits.is_empty() {
        let mut args = vec!["client", "limits", "app"];
        args.extend_from_slice(limits);
        kg.run(&args).assert_ok("client limits");
    }
    (kg, mock, client)
}

/// The replicas' admin token (obviously fake).
const ADMIN_TOKEN: &str = "adm-test-Cluster7Rq2Vx9Lm4";

/// `n` replicas of `kg` on `redis`, each with its own ledger, all sharing.
async fn replicas(kg: &Keygate, redis: &Redis, n: usize) -> Vec<Server> {
    let url = redis.url();
    kg.register_secret(ADMIN_TOKEN);
    let servers: Vec<Server> = (0..n)
        .map(|i| {
            let db = kg.dir().join(format!("usage-{i}.sqlite"));
            kg.serve_with(&[
                ("KEYGATE_CLUSTER__REDIS_URL", url.as_str()),
                ("KEYGATE_METERING__DB", db.to_str().unwrap()),
                ("KEYGATE_ADMIN_TOKEN", ADMIN_TOKEN),
            ])
        })
        .collect();
    for server in &servers {
        wait_shared(server, true).await;
    }
    servers
}

/// Waits until `/readyz` says the replica shares through Redis (or not).
async fn wait_shared(server: &Server, shared: bool) {
    let seen = eventually(Duration::from_secs(10), || async {
        let ready = server.admin_get("/readyz").await.json();
        let listening = ready["cluster"]["key_health_subscribed"] == shared;
        (ready["cluster"]["shared"] == shared && (listening || !shared)).then_some(())
    })
    .await;
    assert!(seen.is_some(), "replica never reported shared = {shared}");
}

fn chat(client: &str, max_tokens: u64) -> Req {
    let mut body = chat_body("gpt-4o");
    body["max_tokens"] = serde_json::json!(max_tokens);
    Req::post("/v1/chat/completions").bearer(client).json(&body)
}

/// Not within the last seconds of a minute: rpm windows are whole minutes.
async fn away_from_a_minute_boundary() {
    let second = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        % 60;
    if second > 50 {
        tokio::time::sleep(Duration::from_secs(61 - second)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_admit_together_what_one_would() {
    let redis = Redis::start();
    let (kg, _mock, client) = limited(&["--rpm", "10"], &[OPENAI_KEY]).await;
    let servers = replicas(&kg, &redis, 3).await;
    away_from_a_minute_boundary().await;
    let mut ok = 0;
    let mut refused = 0;
    for n in 0..30 {
        let resp = servers[n % 3].send(chat(&client, 10)).await;
        match resp.status.as_u16() {
            200 => ok += 1,
            429 => {
                assert!(
                    resp.text().contains("client_rate_limited"),
                    "{}",
                    resp.text()
                );
                refused += 1
            }
            other => panic!("unexpected {other}: {}", resp.text()),
        }
    }
    assert_eq!((ok, refused), (10, 20), "rpm 10 over three replicas");
    for server in &servers {
        let page = server.admin_get("/metrics").await.text();
        assert!(!page.contains(REDIS_PASSWORD));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_budget_spent_concurrently_over_three_replicas_overshoots_at_most_one_reservation() {
    let redis = Redis::start();
    let (kg, mock, client) = limited(&["--budget-tokens", "300"], &[OPENAI_KEY]).await;
    let servers = std::sync::Arc::new(replicas(&kg, &redis, 3).await);
    let mut tasks = Vec::new();
    for n in 0..50 {
        let (servers, client) = (servers.clone(), client.clone());
        tasks.push(tokio::spawn(async move {
            servers[n % 3].send(chat(&client, 10)).await
        }));
    }
    let (mut spent, mut ok, mut refused, mut estimate) = (0, 0, 0, 0);
    for task in tasks {
        let resp = task.await.unwrap();
        match resp.status.as_u16() {
            200 => {
                ok += 1;
                spent += resp.json()["usage"]["total_tokens"].as_u64().unwrap();
            }
            402 | 429 => refused += 1,
            other => panic!("unexpected {other}: {}", resp.text()),
        }
    }
    // What one request reserves: a quarter of its body's bytes plus max_tokens.
    if let Some(seen) = mock.requests().first() {
        estimate = seen.body.len() as u64 / 4 + 10;
    }
    assert!(refused > 0 && ok > 5, "ok {ok}, refused {refused}");
    assert!(
        spent <= 300 + estimate,
        "{ok} requests spent {spent} tokens of a 300-token budget (one reservation is {estimate})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_rejected_on_one_replica_is_not_sent_by_another() {
    let redis = Redis::start();
    // The current key OPENAI_KEY was revoked at the provider; the fallback works.
    let (kg, mock, client) = limited(&[], &[OPENAI_KEY_2]).await;
    kg.add_key_with("openai", OPENAI_KEY_2, &["--fallback"]);
    let servers = replicas(&kg, &redis, 2).await;
    // Replica A meets the dead key, retries with the fallback, and says so.
    let mut found = None;
    for _ in 0..20 {
        let resp = servers[0].send(chat(&client, 10)).await;
        assert_eq!(resp.status, 200, "{}", resp.text());
        found = mock.requests().iter().position(|r| key_of(r) == OPENAI_KEY);
        if found.is_some() {
            break;
        }
    }
    let found = found.expect("replica A never tried the dead key");
    tokio::time::sleep(Duration::from_millis(1000)).await;
    // A replica started after the news reads what was kept of it.
    let late = replicas(&kg, &redis, 1).await;
    let before = mock.requests().len();
    for server in [&servers[1], &late[0]] {
        for _ in 0..3 {
            let resp = server.send(chat(&client, 10)).await;
            assert_eq!(resp.status, 200, "{}", resp.text());
        }
    }
    let sent_by_b: Vec<String> = mock.requests()[before..].iter().map(key_of).collect();
    assert!(
        sent_by_b.iter().all(|k| k != OPENAI_KEY),
        "another replica sent the key replica A found rejected (at request {found})"
    );
    assert!(
        servers[1].stderr().contains("at another replica"),
        "replica B did not log the news"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_mid_load_fails_no_request_and_sharing_resumes() {
    let mut redis = Redis::start();
    let (kg, _mock, client) = limited(&["--rpm", "100000"], &[OPENAI_KEY]).await;
    let servers = replicas(&kg, &redis, 2).await;
    let mut statuses = Vec::new();
    for n in 0..10 {
        statuses.push(servers[n % 2].send(chat(&client, 10)).await.status.as_u16());
    }
    assert!(
        !redis
            .cli(&["KEYS", "keygate:{app}:rpm:*"])
            .trim()
            .is_empty(),
        "no shared counter"
    );
    redis.kill();
    for n in 0..30 {
        statuses.push(servers[n % 2].send(chat(&client, 10)).await.status.as_u16());
    }
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    for server in &servers {
        wait_shared(server, false).await;
        let ready = server.admin_get("/readyz").await;
        assert_eq!(ready.status, 200, "a replica without Redis still serves");
        assert!(
            ready.text().contains("limits and key health per replica"),
            "{}",
            ready.text()
        );
        // The status page's line for it.
        let status = server
            .send_admin(Req::get("/admin/status").bearer(ADMIN_TOKEN))
            .await
            .json();
        assert_eq!(status["cluster"]["shared"], false, "{status}");
        assert!(status["cluster"]["redis"]
            .as_str()
            .unwrap()
            .starts_with("redis://127.0.0.1:"));
        let page = server.admin_get("/metrics").await.text();
        let errors = metric_value(&page, "keygate_cluster_errors_total", &[("op", "reserve")]);
        assert!(errors.unwrap_or(0.0) >= 1.0, "{page}");
        assert!(!page.contains(REDIS_PASSWORD));
    }
    redis.restart();
    let resumed = eventually(Duration::from_secs(15), || async {
        let resp = servers[0].send(chat(&client, 10)).await;
        assert_eq!(resp.status, 200);
        (!redis
            .cli(&["KEYS", "keygate:{app}:rpm:*"])
            .trim()
            .is_empty())
        .then_some(())
    })
    .await;
    assert!(
        resumed.is_some(),
        "shared limits did not resume after Redis came back"
    );
    wait_shared(&servers[1], true).await;
}

/// The p99 latency of `n` sequential requests of `client` (all must be 200).
async fn p99(server: &Server, client: &str, n: usize) -> Duration {
    let mut took = Vec::with_capacity(n);
    for _ in 0..n {
        let started = std::time::Instant::now();
        let resp = server.send(chat(client, 10)).await;
        took.push(started.elapsed());
        assert_eq!(resp.status, 200, "{}", resp.text());
    }
    took.sort();
    took[(n * 99).div_ceil(100) - 1]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_down_a_limited_request_does_not_wait_for_it_and_rejoins_when_back() {
    let mut redis = Redis::start();
    let (kg, _mock, client) = limited(&["--rpm", "100000"], &[OPENAI_KEY]).await;
    let servers = replicas(&kg, &redis, 1).await;
    let server = &servers[0];
    away_from_a_minute_boundary().await;
    p99(server, &client, 20).await; // warm: connections, caches
    let up = p99(server, &client, 200).await;
    redis.kill();
    // The first call after the kill may wait for `[cluster] timeout` once.
    p99(server, &client, 5).await;
    wait_shared(server, false).await;
    let down = p99(server, &client, 200).await;
    eprintln!("p99 of a limited request: Redis up {up:?}, Redis down {down:?}");
    assert!(
        down <= up + Duration::from_millis(5),
        "with Redis down a limited request waits for it: p99 {down:?}, against {up:?} with Redis up"
    );
    // Still told as unreachable, and counted.
    let ready = server.admin_get("/readyz").await;
    assert_eq!(ready.status, 200);
    assert!(
        ready.text().contains("limits and key health per replica"),
        "{}",
        ready.text()
    );
    let page = server.admin_get("/metrics").await.text();
    let errors = metric_value(&page, "keygate_cluster_errors_total", &[("op", "reserve")]);
    assert!(
        errors.unwrap_or(0.0) >= 200.0,
        "every skipped call counts: {errors:?}"
    );

    // Back: the probe finds it and requests go through Redis again.
    redis.restart();
    wait_shared(server, true).await;
    assert_eq!(server.send(chat(&client, 10)).await.status, 200);
    assert!(
        !redis
            .cli(&["KEYS", "keygate:{app}:rpm:*"])
            .trim()
            .is_empty(),
        "the replica did not rejoin: no shared counter after Redis came back"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_at_its_rate_limit_on_one_replica_is_not_sent_by_another() {
    let redis = Redis::start();
    let (kg, mock, client) = limited(&[], &[OPENAI_KEY, OPENAI_KEY_2]).await;
    kg.add_key("openai", OPENAI_KEY_2);
    // Two requests per key per window, said in OpenAI's headers.
    mock.set_request_limit(2, Duration::from_secs(30));
    let servers = replicas(&kg, &redis, 2).await;
    for _ in 0..2 {
        let resp = servers[0].send(chat(&client, 10)).await;
        assert_eq!(resp.status, 200, "{}", resp.text());
    }
    let own = key_of(&mock.requests()[0]);
    assert_eq!(key_of(&mock.requests()[1]), own, "the client's own key");
    // Replica A was told 0 left; replica B never saw that answer, only the
    // news over Redis.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let before = mock.requests().len();
    let resp = servers[1].send(chat(&client, 10)).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(mock.limit_refusals(), 0, "replica B sent the key at 0");
    assert_ne!(
        key_of(&mock.requests()[before]),
        own,
        "replica B sent the client's own key although it is at its limit"
    );
}
