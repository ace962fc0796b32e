//! Zero-downtime rotation (docs/design.md §2, §5; README "Rotating a key without
//! downtime"): `keygate key rotate` under load, a rotation the upstream refuses
//! or cannot confirm, the manual state changes (`promote`, `rollback`,
//! `revoke`) on a running server, and the "due for rotation" flag.
//!
//! The key helpers (which key the upstream saw, `key list --json`) live in
//! `support::keys`, the per-request outcomes in `support::outcome`.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::client::REQUEST_TIMEOUT;
use crate::support::keygate::Out;
use crate::support::keys::{
    assert_upstream_switches_to, key_id, key_list, key_of, key_row, state_of, upstream_key_now,
    wait_for_unix_second, LIVE_WITHIN,
};
use crate::support::metrics::metric_value;
use crate::support::mock::{chat_completion_body, sse_events, tagged_id, Seen};
use crate::support::outcome::one_request;
use crate::support::{eventually, Env, Keygate, OPENAI_KEY, OPENAI_KEY_2};

/// A key the mock never accepts (obviously fake).
const BAD_KEY: &str = "sk-test-bad-Rj3Kp8Wq2Lx5Nv7Bt0Ym4Hc6Gd9Xw";

/// The `Out` of `printf SECRET | keygate key rotate ARGS…` (secret registered).
fn rotate(kg: &Keygate, secret: &str, args: &[&str]) -> Out {
    kg.register_secret(secret);
    let mut all = vec!["key", "rotate"];
    all.extend_from_slice(args);
    kg.run_with(&all, Some(secret), &[])
}

/// The upstream request index in a tagged answer (`chatcmpl-mock-req-N`).
fn tag_of(text: &str) -> Option<usize> {
    let at = text.find("chatcmpl-mock-req-")? + "chatcmpl-mock-req-".len();
    text[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rotation_under_load_loses_no_request_and_every_stream_keeps_its_key() {
    const CLIENTS: usize = 8;
    const TOTAL: usize = 1000;
    let env = Env::setup()
        .config(|b| b.extra("[keys]\nsuspect_cooldown = \"1s\"\n"))
        .start()
        .await;
    // Every chat answer names the upstream request it answers, so each byte a
    // client reads can be traced to one upstream request and its key.
    env.openai.tag_responses();
    // 6 pauses of 15 ms per stream: the streaming clients always have streams
    // in flight, so some are mid-stream when the key switches.
    env.openai.set_stream_delay(Duration::from_millis(15));
    let env = Arc::new(env);
    let stop = Arc::new(AtomicBool::new(false));
    // Requests and streams completed so far.
    let done = Arc::new([AtomicUsize::new(0), AtomicUsize::new(0)]);
    let mut workers = Vec::new();
    for i in 0..CLIENTS {
        let (env, stop, done) = (env.clone(), stop.clone(), done.clone());
        workers.push(tokio::spawn(async move {
            let streaming = i % 2 == 1;
            let mut outcomes = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                outcomes.push(one_request(&env, streaming).await);
                done[0].fetch_add(1, Ordering::SeqCst);
                if streaming {
                    done[1].fetch_add(1, Ordering::SeqCst);
                }
            }
            outcomes
        }));
    }
    let counts = {
        let done = done.clone();
        move || {
            (
                done[0].load(Ordering::SeqCst),
                done[1].load(Ordering::SeqCst),
            )
        }
    };
    let wait_for = |requests: usize, streams: usize| {
        let counts = counts.clone();
        async move {
            let reached = eventually(Duration::from_secs(40), || async {
                let (r, s) = counts();
                (r >= requests && s >= streams).then_some(())
            })
            .await;
            assert!(
                reached.is_some(),
                "load stalled: {:?} of {requests} requests / {streams} streams done",
                counts()
            );
        }
    };

    wait_for(TOTAL / 4, 12).await;
    // The provider issues the new key: both work until the old one is revoked.
    env.openai.set_keys(&[OPENAI_KEY, OPENAI_KEY_2]);
    let out = rotate(&env.kg, OPENAI_KEY_2, &["openai", "--grace", "1h"]);
    out.assert_ok("key rotate openai");
    let rotated_at = counts();
    let is_chat_with = |s: &Seen, key: &str| s.uri == "/v1/chat/completions" && key_of(s) == key;
    let switched = eventually(LIVE_WITHIN, || async {
        env.openai
            .requests()
            .iter()
            .any(|s| is_chat_with(s, OPENAI_KEY_2))
            .then(Instant::now)
    })
    .await
    .expect("the upstream never saw the new key after `key rotate`");
    // Let requests that loaded the pre-rotation snapshot reach the upstream,
    // then the provider revokes the old key.
    tokio::time::sleep(Duration::from_millis(300)).await;
    env.openai.set_keys(&[OPENAI_KEY_2]);
    let revoked_at = counts();
    wait_for(
        TOTAL.max(revoked_at.0 + TOTAL / 5),
        (revoked_at.1 + 8).max(40),
    )
    .await;
    stop.store(true, Ordering::SeqCst);
    let mut outcomes = Vec::new();
    for w in workers {
        outcomes.extend(w.await.expect("a client task panicked"));
    }

    let seen = env.openai.requests();
    let model = "gpt-4o";
    let plain_template = chat_completion_body(model);
    let stream_template = sse_events(model, true).concat();
    let mut errors = Vec::new();
    let mut by_key = [0usize; 2];
    let mut streams_across_switch = 0;
    for o in &outcomes {
        if o.status != 200 || o.error.is_some() {
            errors.push(format!(
                "{} request: status {} {:?}: {}",
                if o.streaming { "streaming" } else { "plain" },
                o.status,
                o.error,
                o.text.chars().take(300).collect::<String>()
            ));
            continue;
        }
        let Some(n) = tag_of(&o.text) else {
            errors.push(format!("answer without a tagged id: {}", o.text));
            continue;
        };
        let template = if o.streaming {
            &stream_template
        } else {
            &plain_template
        };
        // Exactly the mock's answer to upstream request n: every event of a
        // stream carries n, so all its bytes came from that one request.
        let expected = template.replace("chatcmpl-mock-0001", &tagged_id(n));
        if o.text != expected {
            errors.push(format!(
                "answer is not upstream request {n}'s complete answer:\n{}\n--- expected\n{expected}",
                o.text
            ));
            continue;
        }
        let key = key_of(&seen[n]);
        match key.as_str() {
            OPENAI_KEY => by_key[0] += 1,
            OPENAI_KEY_2 => by_key[1] += 1,
            _ => errors.push(format!("upstream request {n} carried an unknown key")),
        }
        if o.streaming && key == OPENAI_KEY && o.ended > switched {
            streams_across_switch += 1;
        }
    }
    let streams = outcomes.iter().filter(|o| o.streaming).count();
    eprintln!(
        "rotation under load: {} requests ({streams} streams), {} on the old key, {} on the new; \
         {streams_across_switch} old-key streams finished after the switch; (requests, streams) done at the rotation {rotated_at:?}, at the revocation {revoked_at:?}",
        outcomes.len(),
        by_key[0],
        by_key[1]
    );
    assert!(
        errors.is_empty(),
        "{} of {} requests failed or were mangled across the rotation:\n{}",
        errors.len(),
        outcomes.len(),
        errors
            .iter()
            .take(10)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(outcomes.len() >= TOTAL, "only {} requests", outcomes.len());
    assert!(streams >= 40, "too few streams to mean anything: {streams}");
    assert!(
        by_key[0] >= TOTAL / 5 && by_key[1] >= TOTAL / 5,
        "traffic must straddle the rotation: {by_key:?}"
    );
    assert!(
        streams_across_switch >= 1,
        "no old-key stream was still running when the new key went live: the test did not overlap streams with the rotation"
    );
    let page = env.server.admin_get("/metrics").await.text();
    assert_eq!(
        metric_value(&page, "keygate_key_rotations_total", &[("provider", "openai")]),
        Some(1.0),
        "one rotation must count once in keygate_key_rotations_total{{provider=\"openai\"}}:\n{page}"
    );
    let list = key_list(&env.kg);
    assert_eq!(state_of(&list, "openai", OPENAI_KEY_2), "current");
    assert_eq!(state_of(&list, "openai", OPENAI_KEY), "previous");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rotate_to_a_key_the_upstream_rejects_fails_and_keeps_the_current_key() {
    let env = Env::start().await;
    let out = rotate(&env.kg, BAD_KEY, &["openai"]);
    assert!(
        out.code.is_some_and(|c| c != 0),
        "a rejected rotation must exit non-zero: {out:?}"
    );
    let said = format!("{}{}", out.stdout, out.stderr);
    assert!(
        said.contains("401"),
        "the output must say the upstream answered 401:\n{said}"
    );
    let verify = env.openai.last();
    assert_eq!(
        (verify.uri.as_str(), key_of(&verify).as_str()),
        ("/v1/models", BAD_KEY),
        "the new key must have been verified with GET /v1/models"
    );
    let list = key_list(&env.kg);
    assert_eq!(state_of(&list, "openai", OPENAI_KEY), "current");
    let rejected = key_row(&list, "openai", BAD_KEY);
    assert_eq!(rejected["state"], "rejected", "{list:#?}");
    assert!(
        rejected["reason"]
            .as_str()
            .is_some_and(|r| r.contains("401")),
        "the rejected key keeps the reason: {rejected}"
    );
    assert!(
        !list.iter().any(|k| k["state"] == "pending"),
        "nothing may stay pending: {list:#?}"
    );
    // A running server goes on with the old key.
    env.wait_until_live("the rejected rotation").await;
    assert_eq!(upstream_key_now(&env).await, OPENAI_KEY);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn inconclusive_verification_leaves_the_key_pending_and_a_rerun_completes_it() {
    let env = Env::start().await;
    let rate_limited = r#"{"error":{"message":"Rate limit reached","type":"requests","code":"rate_limit_exceeded"}}"#;

    // The provider answers the check with 429: nothing certain about the key.
    env.openai
        .push_response(429, &[("retry-after", "1")], rate_limited);
    let out = rotate(&env.kg, OPENAI_KEY_2, &["openai"]);
    assert!(
        out.code.is_some_and(|c| c != 0),
        "an inconclusive rotation must exit non-zero: {out:?}"
    );
    let said = format!("{}{}", out.stdout, out.stderr);
    assert!(
        said.contains("429") && said.contains("pending"),
        "the output must name the 429 and say the key stays pending:\n{said}"
    );
    assert_eq!(env.openai.last().uri, "/v1/models");
    let list = key_list(&env.kg);
    assert_eq!(state_of(&list, "openai", OPENAI_KEY_2), "pending");
    assert_eq!(state_of(&list, "openai", OPENAI_KEY), "current");
    let pending_id = key_row(&list, "openai", OPENAI_KEY_2)["id"].clone();

    // Again, the provider has a server error: still pending, same key.
    env.openai.push_response(
        500,
        &[],
        r#"{"error":{"message":"The server had an error","type":"server_error"}}"#,
    );
    let out = rotate(&env.kg, OPENAI_KEY_2, &["openai"]);
    assert!(out.code.is_some_and(|c| c != 0), "{out:?}");
    assert!(
        format!("{}{}", out.stdout, out.stderr).contains("500"),
        "{out:?}"
    );
    let list = key_list(&env.kg);
    assert_eq!(state_of(&list, "openai", OPENAI_KEY_2), "pending");
    assert_eq!(key_row(&list, "openai", OPENAI_KEY_2)["id"], pending_id);
    assert_eq!(upstream_key_now(&env).await, OPENAI_KEY);

    // The provider recovers: the same command completes the same rotation.
    env.openai.set_keys(&[OPENAI_KEY, OPENAI_KEY_2]);
    let out = rotate(&env.kg, OPENAI_KEY_2, &["openai"]);
    out.assert_ok("key rotate openai (after the upstream recovered)");
    let list = key_list(&env.kg);
    let promoted = key_row(&list, "openai", OPENAI_KEY_2);
    assert_eq!(promoted["state"], "current", "{list:#?}");
    assert_eq!(
        promoted["id"], pending_id,
        "the pending key is resumed, not re-added"
    );
    assert_eq!(state_of(&list, "openai", OPENAI_KEY), "previous");
    assert_upstream_switches_to(&env, OPENAI_KEY_2, "the resumed rotation").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn promote_rollback_and_revoke_reach_a_running_server_within_a_second() {
    let env = Env::setup()
        .key("openai", OPENAI_KEY_2, &["--fallback"])
        .start()
        .await;
    env.openai.set_keys(&[OPENAI_KEY, OPENAI_KEY_2]);
    let old = key_id(&env.kg, "openai", OPENAI_KEY);
    let new = key_id(&env.kg, "openai", OPENAI_KEY_2);
    assert_eq!(upstream_key_now(&env).await, OPENAI_KEY);

    env.kg
        .run(&["key", "promote", &new])
        .assert_ok("key promote");
    assert_upstream_switches_to(&env, OPENAI_KEY_2, "`key promote`").await;
    let page = env.server.admin_get("/metrics").await.text();
    assert_eq!(
        metric_value(
            &page,
            "keygate_key_rotations_total",
            &[("provider", "openai")]
        ),
        Some(1.0),
        "a promotion counts as a rotation:\n{page}"
    );

    env.kg
        .run(&["key", "rollback", "openai"])
        .assert_ok("key rollback");
    assert_upstream_switches_to(&env, OPENAI_KEY, "`key rollback openai`").await;
    let list = key_list(&env.kg);
    assert_eq!(state_of(&list, "openai", OPENAI_KEY), "current");
    assert_eq!(state_of(&list, "openai", OPENAI_KEY_2), "previous");

    // Revoking the current key leaves the fallback serving.
    env.kg
        .run(&["key", "revoke", &old])
        .assert_ok("key revoke (current, a fallback remains)");
    assert_upstream_switches_to(&env, OPENAI_KEY_2, "`key revoke` of the current key").await;

    // The last usable key: refused without --force, and nothing changes.
    let out = env.kg.run(&["key", "revoke", &new]);
    assert!(
        out.code.is_some_and(|c| c != 0),
        "revoking the last usable key without --force must fail: {out:?}"
    );
    assert!(
        out.stderr.contains("--force"),
        "the refusal must name --force: {}",
        out.stderr
    );
    assert_eq!(
        state_of(&key_list(&env.kg), "openai", OPENAI_KEY_2),
        "previous"
    );
    env.wait_until_live("the refused revoke").await;
    assert_eq!(upstream_key_now(&env).await, OPENAI_KEY_2);

    env.kg
        .run(&["key", "revoke", &new, "--force"])
        .assert_ok("key revoke --force");
    let start = Instant::now();
    let refused = eventually(LIVE_WITHIN, || async {
        let resp = env.server.send(env.chat("gpt-4o")).await;
        (resp.status == 503).then_some(resp)
    })
    .await
    .unwrap_or_else(|| {
        panic!("requests still served {LIVE_WITHIN:?} after the last key was revoked")
    });
    refused.assert_keygate_error(503, "no_upstream_key");
    let hits = env.openai.hits();
    let resp = env.server.send(env.chat("gpt-4o")).await;
    resp.assert_keygate_error(503, "no_upstream_key");
    assert_eq!(env.openai.hits(), hits, "no upstream call without a key");
    assert!(start.elapsed() < REQUEST_TIMEOUT);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn key_list_marks_keys_older_than_rotate_after() {
    let env = Env::setup()
        .config(|b| b.extra("[keys]\nrotate_after = \"1s\"\n"))
        .start()
        .await;
    // keygate's rule: due once `now - created > rotate_after` (whole seconds).
    let row = key_row(&key_list(&env.kg), "openai", OPENAI_KEY);
    let age = row["age_seconds"].as_u64().expect("age_seconds");
    assert_eq!(
        row["due_for_rotation"],
        age > 1,
        "due exactly when older than rotate_after (1s): {row}"
    );
    let created = row["created"].as_u64().expect("created");
    wait_for_unix_second(
        created + 2,
        Duration::from_secs(3),
        "the key's 1s rotate_after",
    )
    .await;
    let old = key_id(&env.kg, "openai", OPENAI_KEY);
    let out = env.kg.run(&["key", "list"]);
    out.assert_ok("key list");
    let line = out
        .stdout
        .lines()
        .find(|l| l.contains(&old))
        .unwrap_or_else(|| panic!("`key list` has no line for {old}:\n{}", out.stdout));
    assert!(
        line.contains("due for rotation"),
        "a key older than rotate_after must be marked:\n{}",
        out.stdout
    );
    let row = key_row(&key_list(&env.kg), "openai", OPENAI_KEY);
    assert_eq!(row["due_for_rotation"], true, "{row}");

    // The same keys with the default 90 days: nothing is due.
    let out = env.kg.run_with(
        &["key", "list"],
        None,
        &[("KEYGATE_KEYS__ROTATE_AFTER", "90d")],
    );
    out.assert_ok("key list (rotate_after 90d)");
    assert!(
        !out.stdout.contains("due for rotation"),
        "nothing is due with rotate_after = 90d:\n{}",
        out.stdout
    );
}
