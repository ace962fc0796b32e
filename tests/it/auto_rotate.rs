//! Scheduled rotation (docs/design.md §3 `[keys] auto_rotate`, §12;
//! docs/keys.md "Scheduled rotation"): with `auto_rotate = true` and
//! `rotate_after = "2s"`, `serve` finds the stale key at start and rotates it
//! by minting, without a person, once — and two `serve` processes on one
//! vault rotate it once between them (the vault's rotation lease). The
//! servers log at TRACE and the management credential appears nowhere.

use std::time::Duration;

use crate::support::keys::{key_list, key_of, key_row, wait_for_unix_second};
use crate::support::management::{minting_keygate, Api, Management, OPENAI_ADMIN};
use crate::support::metrics::metric_value;
use crate::support::{chat_body, client::Req, eventually, OPENAI_KEY};

/// What `serve` logs as its auto_rotate round ends (src/control/key_upkeep.rs):
/// a rotation done or failed, skipped for the other process's lease, nothing due.
const ROUND_ENDS: [&str; 5] = [
    "is the fallback until its grace ends",
    "it stays current",
    "auto_rotate: cannot take the rotation lease",
    "another process is rotating keys of this vault; skipped this round",
    "no key of a provider keygate can mint for is older than [keys] rotate_after",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_rotate_a_stale_key_once_without_a_person() {
    let management = Management::start(Api::OpenAi, OPENAI_ADMIN).await;
    let (kg, inference) = minting_keygate(&management).await;
    let client = kg.add_client("app");
    // The new key takes a while to work, so the first server's rotation is
    // still under way when the second one starts and looks.
    management.set_propagation(Duration::from_millis(2000));
    // Older than rotate_after (2s; due once `now - created > 2`, whole
    // seconds) by the time the servers start: wait until keygate's own
    // `created` says so, and check that keygate agrees it is due.
    let added = key_row(&key_list(&kg), "openai", OPENAI_KEY)["created"]
        .as_u64()
        .expect("created");
    wait_for_unix_second(added + 3, Duration::from_secs(4), "rotate_after (2s)").await;
    let due = kg.run_with(
        &["key", "list", "--json"],
        None,
        &[("KEYGATE_KEYS__ROTATE_AFTER", "2s")],
    );
    due.assert_ok("key list --json (rotate_after 2s)");
    let due: serde_json::Value = serde_json::from_str(due.stdout.trim()).unwrap();
    assert_eq!(
        key_row(due.as_array().unwrap(), "openai", OPENAI_KEY)["due_for_rotation"],
        true,
        "the hand-added key is not due for rotation yet: {due}"
    );
    let second_db = kg.dir().join("second-usage.sqlite");
    let second_db = second_db.to_str().unwrap().to_owned();
    let common = [
        ("KEYGATE_KEYS__AUTO_ROTATE", "true"),
        ("KEYGATE_KEYS__ROTATE_AFTER", "2s"),
        ("RUST_LOG", "trace"),
    ];
    let one = kg.serve_with(&common);
    let mut env_two = common.to_vec();
    env_two.push(("KEYGATE_METERING__DB", second_db.as_str()));
    let two = kg.serve_with(&env_two);

    let rotated = eventually(Duration::from_secs(15), || async {
        let list = key_list(&kg);
        list.iter()
            .find(|k| k["state"] == "current" && !k["minted"].is_null())
            .cloned()
    })
    .await
    .unwrap_or_else(|| {
        panic!(
            "no server rotated the stale key:\n{}\n{}",
            crate::support::keygate::tail(&one.stderr()),
            crate::support::keygate::tail(&two.stderr())
        )
    });
    for key in management.created() {
        kg.register_secret(&key.secret);
    }
    // Each server runs its start-time auto_rotate round once (then hourly):
    // wait until both rounds are over — the rotation, a round skipped
    // because the other held the lease, or one that found nothing due
    // under the lease — so a second rotation would have happened by now.
    for (name, server) in [("one", &one), ("two", &two)] {
        let ended = eventually(Duration::from_secs(15), || async {
            let logs = server.stderr();
            ROUND_ENDS
                .iter()
                .find(|end| logs.contains(*end))
                .map(|end| end.to_string())
        })
        .await;
        assert!(
            ended.is_some(),
            "server {name} did not finish its start-time auto_rotate round (none of {ROUND_ENDS:?} logged):\n{}",
            crate::support::keygate::tail(&server.stderr())
        );
    }
    let created = management.created();
    for key in &created {
        kg.register_secret(&key.secret);
    }
    assert_eq!(created.len(), 1, "rotated more than once: {created:#?}");
    assert_eq!(
        rotated["minted"]["provider_id"],
        created[0].provider_id.as_str()
    );
    assert_eq!(rotated["label"], "auto-rotated");
    let old = key_row(&key_list(&kg), "openai", OPENAI_KEY);
    assert_eq!(
        old["state"], "previous",
        "the old key is the fallback during its grace: {old}"
    );
    assert!(!management.is_deleted("key_hand_1"));

    let (mut mints, mut failed) = (0.0, 0.0);
    for server in [&one, &two] {
        let page = server.admin_get("/metrics").await.text();
        let count = |result: &str| {
            metric_value(
                &page,
                "keygate_key_mints_total",
                &[("provider", "openai"), ("result", result)],
            )
            .unwrap_or(0.0)
        };
        mints += count("ok");
        failed += count("failed");
    }
    assert_eq!(
        (mints, failed),
        (1.0, 0.0),
        "exactly one rotation between the two servers, and no second attempt"
    );
    let logs = one.stderr() + &two.stderr();
    assert!(
        logs.contains("older than [keys] rotate_after"),
        "no log line for the rotation"
    );

    // The new key carries traffic on both.
    for server in [&one, &two] {
        let served = eventually(Duration::from_secs(3), || async {
            let resp = server
                .send(
                    Req::post("/v1/chat/completions")
                        .bearer(&client)
                        .json(&chat_body("gpt-4o")),
                )
                .await;
            (resp.status == 200 && key_of(&inference.last()) == created[0].secret).then_some(())
        })
        .await;
        assert!(served.is_some(), "a server does not use the rotated key");
    }
    drop(one);
    drop(two);
}
