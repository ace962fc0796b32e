//! Scheduled rotation (docs/design.md §3 `[keys] auto_rotate`, §12;
//! docs/keys.md "Scheduled rotation"): with `auto_rotate = true` and
//! `rotate_after = "2s"`, `serve` finds the stale key at start and rotates it
//! by minting, without a person, once — and two `serve` processes on one
//! vault rotate it once between them (the vault's rotation lease). The
//! servers log at TRACE and the management credential appears nowhere.

use std::time::Duration;

use crate::support::keys::{key_list, key_of, key_row};
use crate::support::management::{minting_keygate, Api, Management, OPENAI_ADMIN};
use crate::support::metrics::metric_value;
use crate::support::{chat_body, client::Req, eventually, OPENAI_KEY};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_rotate_a_stale_key_once_without_a_person() {
    let management = Management::start(Api::OpenAi, OPENAI_ADMIN).await;
    let (kg, inference) = minting_keygate(&management).await;
    let client = kg.add_client("app");
    // The new key takes a while to work, so the first server's rotation is
    // still under way when the second one starts and looks.
    management.set_propagation(Duration::from_millis(2000));
    // Older than rotate_after (whole seconds) by the time the servers start.
    std::thread::sleep(Duration::from_millis(3500));
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
    // Give the other server every chance to rotate a second time.
    tokio::time::sleep(Duration::from_secs(3)).await;
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
