//! The leak response (docs/design.md §2 `key burn`, §12; docs/keys.md
//! "Burning a leaked key"): under load a replacement goes live first, the
//! burnt key is never used once `keygate key burn` returns, no client sees an
//! error, and the key is dead at the provider — deleted (OpenAI, found by its
//! hint), or disabled (Anthropic, `{"status":"inactive"}`, replacement read
//! from stdin). `--force` burns without a replacement while another key
//! remains; `key revoke --at-provider` does the provider half of an ordinary
//! revocation and is refused, changing nothing, without management access.
//! The admin API's `{"mint": true}` rotation and `/burn` do the same.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::support::client::Req;
use crate::support::keys::{key_list, key_of, key_row};
use crate::support::management::{
    admin_table, minting_keygate, set_admin, Api, Management, OPENAI_ADMIN,
};
use crate::support::metrics::metric_value;
use crate::support::mock::closed_port_url;
use crate::support::{Env, Keygate, KeygateBuilder, OPENAI_KEY, OPENAI_KEY_2};

/// An Anthropic Admin API key and two inference keys (obviously fake), in
/// Anthropic's shapes so their hints look like the console's.
const ANTHROPIC_ADMIN: &str = "sk-ant-admin01-test-Nw5Rt8Yp2Kx6Mz9Qc3Lv7Bj";
const ANTHROPIC_OLD: &str = "sk-ant-api03-test-Hq4Ds8Fz2Wn6Pv0Xk3Tb7Lm-FAKEigAA";
const ANTHROPIC_NEW: &str = "sk-ant-api03-test-Jr6Gy1Uk5Oc9Sa3Ve7Mi2Qw-FAKEnwBB";

/// The admin token of the admin API tests (obviously fake).
const ADMIN_TOKEN: &str = "adm-test-Burn7Xq2Lp5Vn8Rc4Wd1Kz";

fn id_of(kg: &Keygate, provider: &str, secret: &str) -> String {
    key_row(&key_list(kg), provider, secret)["id"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn burn_under_load_no_client_error_and_the_key_is_dead_at_the_provider() {
    let management = Management::start(Api::OpenAi, OPENAI_ADMIN).await;
    let table = admin_table("openai", Api::OpenAi, &management.url());
    let env = Arc::new(Env::setup().config(move |b| b.extra(&table)).start().await);
    // The leaked key was made by hand in OpenAI's console.
    management.seed("made by hand", "key_hand_1", OPENAI_KEY);
    management.connect(env.openai.key_adder());
    set_admin(&env.kg, "openai", OPENAI_ADMIN);
    let leaked = id_of(&env.kg, "openai", OPENAI_KEY);

    // 6 clients, half streaming, until told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for n in 0..6 {
        let (env, stop) = (env.clone(), stop.clone());
        clients.push(tokio::spawn(async move {
            let (mut ok, mut errors) = (0, Vec::new());
            while !stop.load(Ordering::Relaxed) {
                let req = if n % 2 == 0 {
                    env.chat_stream("gpt-4o")
                } else {
                    env.chat("gpt-4o")
                };
                let resp = env.server.send(req).await;
                let complete = n % 2 == 1 || resp.text().contains("[DONE]");
                if resp.status == 200 && complete {
                    ok += 1;
                } else {
                    errors.push(format!("{} {}", resp.status, resp.text()));
                }
            }
            (ok, errors)
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let kg_env = env.clone();
    let leaked_id = leaked.clone();
    let out = tokio::task::spawn_blocking(move || {
        kg_env
            .kg
            .run(&["key", "burn", &leaked_id, "--propagation-wait", "10s"])
    })
    .await
    .unwrap();
    // Everything the upstream receives from here on must not carry the burnt key.
    let returned_at = env.openai.requests().len();
    tokio::time::sleep(Duration::from_millis(800)).await;
    stop.store(true, Ordering::Relaxed);
    let (mut ok, mut errors) = (0, Vec::new());
    for client in clients {
        let (o, e) = client.await.unwrap();
        ok += o;
        errors.extend(e);
    }
    for key in management.created() {
        env.kg.register_secret(&key.secret);
    }
    out.assert_ok("key burn");
    assert!(
        errors.is_empty(),
        "client errors during the burn: {errors:#?}"
    );
    let requests = env.openai.requests();
    let after: Vec<_> = requests[returned_at..].iter().map(key_of).collect();
    assert!(
        after.len() >= 6,
        "too little load after the burn: {}",
        after.len()
    );
    assert!(
        after.iter().all(|k| k != OPENAI_KEY),
        "the burnt key was used after `key burn` returned"
    );
    assert!(ok > 20, "{ok} requests answered");
    // Replaced by a minted key, and deleted at the provider (found by its hint).
    let minted = management.created();
    assert_eq!(minted.len(), 1, "{minted:?}");
    assert!(after.iter().all(|k| *k == minted[0].secret));
    assert!(management.is_deleted("key_hand_1"), "{}", out.stdout);
    let removal = &management.removals()[0];
    assert_eq!(
        removal.uri,
        "/v1/organization/projects/proj_test/api_keys/key_hand_1"
    );
    for step in [
        "revoked",
        "serves the new keys",
        "deleted at openai",
        "burn done in",
    ] {
        assert!(out.stdout.contains(step), "no `{step}` in: {}", out.stdout);
    }
    assert!(out.stdout.contains(" ms"), "no timings: {}", out.stdout);
    let list = key_list(&env.kg);
    let burnt = key_row(&list, "openai", OPENAI_KEY);
    assert_eq!(burnt["state"], "revoked", "{burnt}");
    assert_eq!(burnt["at_provider"]["pending"], false, "{burnt}");
    assert_eq!(burnt["at_provider"]["provider_id"], "key_hand_1");
    assert_eq!(
        key_row(&list, "openai", &minted[0].secret)["state"],
        "current"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anthropic_burn_takes_its_replacement_on_stdin_and_disables_the_key_by_its_hint() {
    let management = Management::start(Api::Anthropic, ANTHROPIC_ADMIN).await;
    let builder = KeygateBuilder::new()
        .provider("anthropic", &closed_port_url(), "x-api-key")
        .extra(&admin_table("anthropic", Api::Anthropic, &management.url()));
    let kg = Keygate::new(&builder);
    kg.register_secret(ANTHROPIC_OLD);
    kg.register_secret(ANTHROPIC_NEW);
    kg.vault_init();
    kg.add_key("anthropic", ANTHROPIC_OLD);
    management.seed("made by hand", "apikey_01Hand", ANTHROPIC_OLD);
    management.seed("another", "apikey_01Other", OPENAI_KEY_2);
    set_admin(&kg, "anthropic", ANTHROPIC_ADMIN);
    let old = id_of(&kg, "anthropic", ANTHROPIC_OLD);

    // Anthropic cannot create keys: rotation stays stdin-fed…
    let out = kg.run(&["key", "rotate", "anthropic", "--mint"]);
    out.assert_code(2, "rotate --mint for anthropic");
    assert!(
        out.stderr.contains("cannot create keys through an API"),
        "{}",
        out.stderr
    );
    // …and a current key needs its replacement on stdin.
    let out = kg.run(&["key", "burn", &old]);
    out.assert_code(2, "burn without a replacement");
    assert!(
        out.stderr.contains("give its replacement on stdin"),
        "{}",
        out.stderr
    );
    assert!(management.removals().is_empty());

    let out = kg.run_with(
        &["key", "burn", &old, "--no-verify"],
        Some(ANTHROPIC_NEW),
        &[],
    );
    out.assert_ok("key burn with a replacement on stdin");
    assert!(
        out.stdout.contains("disabled at anthropic"),
        "{}",
        out.stdout
    );
    assert!(management.is_deleted("apikey_01Hand"));
    assert!(!management.is_deleted("apikey_01Other"));
    let call = &management.removals()[0];
    assert_eq!(call.uri, "/v1/organizations/api_keys/apikey_01Hand");
    assert_eq!(call.json(), serde_json::json!({"status": "inactive"}));
    assert_eq!(call.header("x-api-key").as_deref(), Some(ANTHROPIC_ADMIN));
    assert_eq!(
        call.header("anthropic-version").as_deref(),
        Some("2023-06-01")
    );
    let list = key_list(&kg);
    assert_eq!(
        key_row(&list, "anthropic", ANTHROPIC_NEW)["state"],
        "current"
    );
    let burnt = key_row(&list, "anthropic", ANTHROPIC_OLD);
    assert_eq!(burnt["state"], "revoked");
    assert_eq!(burnt["at_provider"]["provider_id"], "apikey_01Hand");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn burn_force_and_revoke_at_provider_remove_hand_made_keys_and_need_access() {
    let management = Management::start(Api::OpenAi, OPENAI_ADMIN).await;
    let (kg, _inference) = minting_keygate(&management).await;
    kg.add_key_with("openai", OPENAI_KEY_2, &["--fallback"]);
    management.seed("made by hand", "key_hand_1", OPENAI_KEY);
    management.seed("second", "key_hand_2", OPENAI_KEY_2);
    let current = id_of(&kg, "openai", OPENAI_KEY);
    let fallback = id_of(&kg, "openai", OPENAI_KEY_2);

    let out = kg.run(&["key", "burn", &current, "--force"]);
    out.assert_ok("key burn --force");
    assert!(
        out.stdout.contains("no replacement needed"),
        "{}",
        out.stdout
    );
    assert!(management.created().is_empty(), "--force mints nothing");
    assert!(management.is_deleted("key_hand_1"));

    // Burning the last usable key without a replacement is refused.
    let out = kg.run(&["key", "burn", &fallback, "--force"]);
    out.assert_code(1, "burn --force of the last usable key");
    assert!(out.stderr.contains("last usable key"), "{}", out.stderr);

    let out = kg.run(&["key", "revoke", &fallback, "--at-provider", "--force"]);
    out.assert_ok("key revoke --at-provider");
    assert!(out.stdout.contains("deleted at openai"), "{}", out.stdout);
    assert!(management.is_deleted("key_hand_2"));
    let list = key_list(&kg);
    assert!(list.iter().all(|k| k["state"] == "revoked"), "{list:#?}");

    // Without management access nothing changes.
    let plain =
        Keygate::new(&KeygateBuilder::new().provider("openai", &closed_port_url(), "bearer"));
    plain.vault_init();
    plain.add_key("openai", OPENAI_KEY);
    plain.add_key_with("openai", OPENAI_KEY_2, &["--fallback"]);
    let id = id_of(&plain, "openai", OPENAI_KEY_2);
    let out = plain.run(&["key", "revoke", &id, "--at-provider"]);
    out.assert_code(2, "revoke --at-provider without management access");
    assert!(
        out.stderr.contains("cannot reach openai's management API")
            && out.stderr.contains("nothing was changed"),
        "{}",
        out.stderr
    );
    assert_eq!(
        key_row(&key_list(&plain), "openai", OPENAI_KEY_2)["state"],
        "previous"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_api_mints_rotates_and_burns() {
    let management = Management::start(Api::OpenAi, OPENAI_ADMIN).await;
    let table = admin_table("openai", Api::OpenAi, &management.url());
    let env = Env::setup()
        .config(move |b| b.extra(&table))
        .serve_env("KEYGATE_ADMIN_TOKEN", ADMIN_TOKEN)
        .start()
        .await;
    env.kg.register_secret(ADMIN_TOKEN);
    management.connect(env.openai.key_adder());
    set_admin(&env.kg, "openai", OPENAI_ADMIN);
    let admin_post =
        |path: &str, body: serde_json::Value| Req::post(path).bearer(ADMIN_TOKEN).json(&body);

    let resp = env
        .server
        .send_admin(admin_post(
            "/admin/keys/openai/rotate",
            serde_json::json!({"mint": true, "grace": "1h"}),
        ))
        .await;
    for key in management.created() {
        env.kg.register_secret(&key.secret);
    }
    assert_eq!(resp.status, 200, "{}", resp.text());
    let answer = resp.json();
    let first = management.created()[0].clone();
    assert_eq!(answer["minted"]["provider_id"], first.provider_id.as_str());
    let promoted = answer["promoted"].as_str().unwrap().to_owned();
    // Live when the call returns.
    let chat = env.server.send(env.chat("gpt-4o")).await;
    assert_eq!(chat.status, 200);
    assert_eq!(key_of(&env.openai.last()), first.secret);

    // A secret and mint together is a mistake.
    let resp = env
        .server
        .send_admin(admin_post(
            "/admin/keys/openai/rotate",
            serde_json::json!({"mint": true, "secret": "sk-x"}),
        ))
        .await;
    assert_eq!(resp.status, 400, "{}", resp.text());

    let resp = env
        .server
        .send_admin(admin_post(
            &format!("/admin/keys/{promoted}/burn"),
            serde_json::json!({}),
        ))
        .await;
    for key in management.created() {
        env.kg.register_secret(&key.secret);
    }
    assert_eq!(resp.status, 200, "{}", resp.text());
    let answer = resp.json();
    assert_eq!(answer["burnt"], promoted.as_str());
    assert_eq!(answer["replacement_kind"], "minted");
    assert_eq!(answer["at_provider"]["result"], "deleted", "{answer}");
    assert!(answer["took_ms"]["total"].as_u64().is_some(), "{answer}");
    assert!(management.is_deleted(&first.provider_id));
    let second = management.created()[1].clone();
    let chat = env.server.send(env.chat("gpt-4o")).await;
    assert_eq!(chat.status, 200);
    assert_eq!(
        key_of(&env.openai.last()),
        second.secret,
        "burnt key out of use at once"
    );

    let page = env.server.admin_get("/metrics").await.text();
    let count = |name: &str| metric_value(&page, name, &[("provider", "openai"), ("result", "ok")]);
    assert_eq!(count("keygate_key_mints_total"), Some(2.0), "{page}");
    assert_eq!(count("keygate_provider_deletes_total"), Some(1.0), "{page}");
    let keys = env
        .server
        .send_admin(Req::get("/admin/keys").bearer(ADMIN_TOKEN))
        .await;
    assert!(
        !keys.text().contains(OPENAI_ADMIN),
        "admin answer carries the credential"
    );
}
