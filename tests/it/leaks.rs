//! Leak reports (docs/design.md §16): `POST /admin/leaks` with what a secret
//! scanner hands over — the key, or a client key's SHA-256. A key keygate
//! holds and still uses is burnt (an upstream key: replacement live first,
//! no client error) or revoked (a client); a key out of use needs nothing; a
//! key keygate never held is 404 `not_a_held_key`, and with
//! `on_leak_report = "alert"` nothing changes. The answer names the key by
//! id, never the key (the leak check searches every answer and log line).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::support::client::Resp;
use crate::support::keys::{key_list, key_of, key_row};
use crate::support::management::{admin_table, set_admin, Api, Management, OPENAI_ADMIN};
use crate::support::{eventually, Env, Req, OPENAI_KEY, OPENAI_KEY_2, RELOAD_WAIT};

/// The admin token of these tests (obviously fake).
const ADMIN_TOKEN: &str = "adm-test-Leaks5Jq9Mp3Wn7Sc2Xd8Lz";

async fn report(env: &Env, body: serde_json::Value) -> Resp {
    env.server
        .send_admin(Req::post("/admin/leaks").bearer(ADMIN_TOKEN).json(&body))
        .await
}

async fn admin_env() -> Env {
    let env = Env::setup()
        .serve_env("KEYGATE_ADMIN_TOKEN", ADMIN_TOKEN)
        .start()
        .await;
    env.kg.register_secret(ADMIN_TOKEN);
    env
}

fn id_of(env: &Env, secret: &str) -> String {
    key_row(&key_list(&env.kg), "openai", secret)["id"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leak_report_of_the_current_key_under_load_burns_it_with_no_client_errors() {
    let management = Management::start(Api::OpenAi, OPENAI_ADMIN).await;
    let table = admin_table("openai", Api::OpenAi, &management.url());
    let env = Arc::new(
        Env::setup()
            .config(move |b| b.extra(&table))
            .serve_env("KEYGATE_ADMIN_TOKEN", ADMIN_TOKEN)
            .start()
            .await,
    );
    env.kg.register_secret(ADMIN_TOKEN);
    management.seed("made by hand", "key_hand_1", OPENAI_KEY);
    management.connect(env.openai.key_adder());
    set_admin(&env.kg, "openai", OPENAI_ADMIN);
    let leaked = id_of(&env, OPENAI_KEY);
    env.wait_until_live("admin-key set").await;

    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for _ in 0..4 {
        let (env, stop) = (env.clone(), stop.clone());
        clients.push(tokio::spawn(async move {
            let (mut ok, mut errors) = (0, Vec::new());
            while !stop.load(Ordering::Relaxed) {
                let resp = env.server.send(env.chat("gpt-4o")).await;
                if resp.status == 200 {
                    ok += 1;
                } else {
                    errors.push(format!("{} {}", resp.status, resp.text()));
                }
            }
            (ok, errors)
        }));
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    let resp = report(&env, serde_json::json!({ "key": OPENAI_KEY })).await;
    for key in management.created() {
        env.kg.register_secret(&key.secret);
    }
    let returned_at = env.openai.requests().len();
    tokio::time::sleep(Duration::from_millis(600)).await;
    stop.store(true, Ordering::Relaxed);
    let (mut ok, mut errors) = (0, Vec::new());
    for client in clients {
        let (o, e) = client.await.unwrap();
        ok += o;
        errors.extend(e);
    }
    assert_eq!(resp.status, 200, "{}", resp.text());
    let answer = resp.json();
    assert_eq!(answer["key_id"], leaked.as_str(), "{answer}");
    assert_eq!(answer["provider"], "openai");
    assert_eq!(answer["state"], "current");
    assert_eq!(answer["action"], "burned");
    assert_eq!(answer["matched_by"], "fingerprint_mac");
    assert!(
        errors.is_empty(),
        "client errors during the burn: {errors:#?}"
    );
    assert!(ok > 10, "{ok} requests answered");
    let minted = management.created();
    assert_eq!(minted.len(), 1, "{minted:?}");
    let after: Vec<_> = env.openai.requests()[returned_at..]
        .iter()
        .map(key_of)
        .collect();
    assert!(!after.is_empty());
    assert!(
        after.iter().all(|k| *k == minted[0].secret),
        "the reported key was used after the answer"
    );
    let list = key_list(&env.kg);
    assert_eq!(key_row(&list, "openai", OPENAI_KEY)["state"], "revoked");
    assert_eq!(
        key_row(&list, "openai", &minted[0].secret)["state"],
        "current"
    );
    assert!(management.is_deleted("key_hand_1"));
    // Told as a leak report and as the burn it caused.
    let events = crate::support::eventually(Duration::from_secs(5), || async {
        let out = env.kg.run(&["events", "--json"]);
        let events: Vec<serde_json::Value> = serde_json::from_str(out.stdout.trim()).ok()?;
        let of = |kind: &str| events.iter().find(|e| e["type"] == kind).cloned();
        of("key_leak_reported").zip(of("key_burned"))
    })
    .await
    .expect("no key_leak_reported and key_burned events");
    assert_eq!(events.0["key_id"], leaked.as_str());
    assert_eq!(events.0["action"], "burned");
    assert_eq!(events.0["matched_by"], "fingerprint_mac");
    assert_eq!(events.1["key_id"], leaked.as_str());
    assert_eq!(events.1["replacement"], "minted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_report_of_a_retired_key_says_nothing_to_do() {
    let env = admin_env().await;
    let retired = id_of(&env, OPENAI_KEY);
    // Two rotations: the first key goes previous, then retired (secret wiped).
    let third = format!("sk-test-oa3-{}", "Rk7Tm2Wq9Lx4Pv6Jd8Hs3Nb5Cz0Fy");
    env.kg.register_secret(&third);
    for next in [OPENAI_KEY_2, third.as_str()] {
        env.kg
            .run_with(&["key", "rotate", "openai", "--no-verify"], Some(next), &[])
            .assert_ok("key rotate");
    }
    assert_eq!(
        key_row(&key_list(&env.kg), "openai", OPENAI_KEY)["state"],
        "retired"
    );
    env.wait_until_live("two rotations").await;
    let generation = env.kg.vault_file_generation();
    let resp = report(&env, serde_json::json!({ "key": OPENAI_KEY })).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    let answer = resp.json();
    assert_eq!(answer["key_id"], retired.as_str(), "{answer}");
    assert_eq!(answer["state"], "retired");
    assert_eq!(answer["action"], "none");
    assert!(
        answer["message"]
            .as_str()
            .unwrap()
            .contains("nothing to do"),
        "{answer}"
    );
    assert_eq!(
        env.kg.vault_file_generation(),
        generation,
        "nothing written"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_keygate_never_held_is_404_and_changes_nothing() {
    let env = admin_env().await;
    let stranger = format!("sk-test-zz9-{}", "Qm4Wr8Tn2Yk6Lp0Xc3Vb7Hd1Js5Ga");
    env.kg.register_secret(&stranger);
    let generation = env.kg.vault_file_generation();
    let before = key_list(&env.kg);
    for body in [
        serde_json::json!({ "key": stranger }),
        serde_json::json!({ "sha256": "ab".repeat(32) }),
    ] {
        report(&env, body)
            .await
            .assert_keygate_error(404, "not_a_held_key");
    }
    assert_eq!(env.kg.vault_file_generation(), generation);
    // The keys as the vault holds them (the running server's health report
    // and the ages may move between the two reads).
    let held = |list: Vec<serde_json::Value>| -> Vec<serde_json::Value> {
        list.into_iter()
            .map(|mut k| {
                for moving in ["health", "headroom", "age_seconds"] {
                    k.as_object_mut().unwrap().remove(moving);
                }
                k
            })
            .collect()
    };
    assert_eq!(held(key_list(&env.kg)), held(before));
    // Malformed reports are 400; no token is 401.
    for body in [
        serde_json::json!({}),
        serde_json::json!({ "sha256": "not hex" }),
        serde_json::json!({ "key": OPENAI_KEY, "sha256": "ab".repeat(32) }),
        serde_json::json!({ "secret": OPENAI_KEY }),
    ] {
        report(&env, body)
            .await
            .assert_keygate_error(400, "bad_request");
    }
    let anonymous = env
        .server
        .send_admin(Req::post("/admin/leaks").json(&serde_json::json!({ "key": OPENAI_KEY })))
        .await;
    anonymous.assert_keygate_error(401, "invalid_admin_token");
    assert_eq!(env.kg.vault_file_generation(), generation);
    let ok = env.server.send(env.chat("gpt-4o")).await;
    assert_eq!(ok.status, 200, "{}", ok.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_key_report_revokes_the_client() {
    let env = admin_env().await;
    let digest = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(
        env.client_key.as_bytes(),
    ));
    let resp = report(&env, serde_json::json!({ "sha256": digest })).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    let answer = resp.json();
    assert_eq!(answer["client"], "app", "{answer}");
    assert_eq!(answer["state"], "active");
    assert_eq!(answer["action"], "revoked");
    assert_eq!(answer["matched_by"], "sha256");
    // Live when the call returns.
    let refused = env.server.send(env.chat("gpt-4o")).await;
    refused.assert_keygate_error(401, "invalid_client_key");
    assert!(refused.text().contains("was revoked"), "{}", refused.text());
    // The key itself names the client too; it is out of use now.
    let again = report(&env, serde_json::json!({ "key": env.client_key })).await;
    assert_eq!(again.json()["action"], "none", "{}", again.text());
    assert_eq!(again.json()["state"], "revoked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_on_leak_report_alert_nothing_changes() {
    let env = Env::setup()
        .config(|b| b.extra("[keys]\non_leak_report = \"alert\""))
        .serve_env("KEYGATE_ADMIN_TOKEN", ADMIN_TOKEN)
        .start()
        .await;
    env.kg.register_secret(ADMIN_TOKEN);
    let generation = env.kg.vault_file_generation();
    for (body, id) in [
        (serde_json::json!({ "key": OPENAI_KEY }), "key_id"),
        (serde_json::json!({ "key": env.client_key }), "client"),
    ] {
        let resp = report(&env, body).await;
        assert_eq!(resp.status, 200, "{}", resp.text());
        let answer = resp.json();
        assert_eq!(answer["action"], "alerted", "{answer}");
        assert!(answer[id].is_string(), "{answer}");
    }
    assert_eq!(env.kg.vault_file_generation(), generation);
    assert_eq!(
        key_row(&key_list(&env.kg), "openai", OPENAI_KEY)["state"],
        "current"
    );
    let ok = eventually(RELOAD_WAIT, || async {
        let resp = env.server.send(env.chat("gpt-4o")).await;
        (resp.status == 200).then_some(resp)
    })
    .await;
    assert!(ok.is_some(), "the client still works");
    assert_eq!(key_of(&env.openai.last()), OPENAI_KEY);
}
