//! Which upstream key is in use: the key a recorded upstream request carried,
//! `keygate key list --json` rows and ids, and polling until the upstream sees
//! a given key (a CLI change reaching a running server).

use std::time::{Duration, Instant};

use super::mock::Seen;
use super::{eventually, Env, Keygate};

/// How long a CLI change may take to reach the upstream through a running
/// server: docs/design.md §2 promises one second; the extra half second covers the
/// polling request itself and a busy 2-core test runner.
pub const LIVE_WITHIN: Duration = Duration::from_millis(1500);

/// Unix seconds now, on the clock keygate reads for a key's `created` and
/// `grace_until` (whole seconds, as `key list --json` shows them).
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

/// Waits until the wall clock reaches Unix second `at`, a moment keygate
/// itself recorded (a key's `created` + an age, its `grace_until`): the
/// window a test needs is over by keygate's own reckoning, not by a guessed
/// sleep. Panics naming `what` when `at` is more than `within` away (a wrong
/// timestamp must fail, not stall the suite), or if the clock never gets there.
pub async fn wait_for_unix_second(at: u64, within: Duration, what: &str) {
    let now = unix_now();
    assert!(
        at <= now + within.as_secs(),
        "{what}: Unix second {at} is {}s away, more than the {within:?} expected",
        at - now
    );
    let reached = eventually(within + Duration::from_secs(1), || async {
        (unix_now() >= at).then_some(())
    })
    .await;
    assert!(
        reached.is_some(),
        "{what}: the clock did not reach Unix second {at} (now {})",
        unix_now()
    );
}

/// `Bearer <key>`, as the upstream sees an openai key.
pub fn bearer(key: &str) -> Option<String> {
    Some(format!("Bearer {key}"))
}

/// The upstream key a recorded request carried (`Authorization: Bearer …`,
/// else `x-api-key`, else `api-key`).
pub fn key_of(seen: &Seen) -> String {
    seen.header("authorization")
        .and_then(|v| v.strip_prefix("Bearer ").map(str::to_string))
        .or_else(|| seen.header("x-api-key"))
        .or_else(|| seen.header("api-key"))
        .unwrap_or_default()
}

/// `keygate key list --json`, parsed.
pub fn key_list(kg: &Keygate) -> Vec<serde_json::Value> {
    let out = kg.run(&["key", "list", "--json"]);
    out.assert_ok("key list --json");
    let v: serde_json::Value = serde_json::from_str(out.stdout.trim())
        .unwrap_or_else(|e| panic!("`key list --json` is not JSON ({e}): {}", out.stdout));
    v.as_array()
        .unwrap_or_else(|| panic!("`key list --json` is not an array: {v}"))
        .clone()
}

/// The `key list --json` row of the one key of `provider` whose fingerprint
/// ends like `secret` (fingerprints are `sk-…wxyz`).
pub fn key_row(list: &[serde_json::Value], provider: &str, secret: &str) -> serde_json::Value {
    let tail = &secret[secret.len() - 4..];
    let rows: Vec<&serde_json::Value> = list
        .iter()
        .filter(|k| {
            k["provider"] == provider
                && k["fingerprint"].as_str().is_some_and(|f| f.ends_with(tail))
        })
        .collect();
    assert_eq!(
        rows.len(),
        1,
        "expected exactly one {provider} key ending …{tail} in `key list --json`: {list:#?}"
    );
    rows[0].clone()
}

/// The id of the key of `provider` stored with `secret`.
pub fn key_id(kg: &Keygate, provider: &str, secret: &str) -> String {
    key_row(&key_list(kg), provider, secret)["id"]
        .as_str()
        .expect("key id")
        .to_string()
}

/// The state `key list` shows for the key of `provider` stored with `secret`.
pub fn state_of(list: &[serde_json::Value], provider: &str, secret: &str) -> String {
    key_row(list, provider, secret)["state"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// Sends one chat completion through keygate, asserts 200, returns the
/// upstream key of the last request the openai mock saw (the one answered).
pub async fn upstream_key_now(env: &Env) -> String {
    let resp = env.server.send(env.chat("gpt-4o")).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    key_of(&env.openai.last())
}

/// Polls with chat requests until the upstream sees `key`; returns how long
/// that took, or panics naming `what` after [`LIVE_WITHIN`].
pub async fn assert_upstream_switches_to(env: &Env, key: &str, what: &str) -> Duration {
    let start = Instant::now();
    let seen = eventually(LIVE_WITHIN, || async {
        let resp = env.server.send(env.chat("gpt-4o")).await;
        (resp.status == 200 && key_of(&env.openai.last()) == key).then(|| start.elapsed())
    })
    .await;
    seen.unwrap_or_else(|| {
        panic!(
            "after {what}, the upstream still did not see the expected key (…{}) within {LIVE_WITHIN:?}; last key seen: …{}",
            &key[key.len() - 4..],
            key_of(&env.openai.last()).chars().rev().take(4).collect::<String>().chars().rev().collect::<String>()
        )
    })
}
