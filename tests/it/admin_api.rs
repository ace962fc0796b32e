//! The admin API (docs/design.md §9, README "Admin API"): off (404 `admin_api_off`)
//! without a token, 401 without the right one; keys listed by id and
//! fingerprint only; rotate, revoke and reload with the CLI's semantics, live
//! when the call returns. Every admin response is kept for the leak check.

use crate::support::client::Resp;
use crate::support::env::EnvSetup;
use crate::support::keys::{key_id, key_list, key_of, upstream_key_now};
use crate::support::metrics::metric_value;
use crate::support::{Env, Req, OPENAI_KEY, OPENAI_KEY_2, XAI_KEY};

/// The admin token the tests configure (obviously fake; registered as a secret).
const TOKEN: &str = "kgadm-test-Tq4Wz8Lp2Xc6Vb0Nm3Hs7Jd5Rf9Ke1";

/// A key the mock never accepts (obviously fake).
const BAD_KEY: &str = "sk-test-bad-Fa7Gy2Nu5Ck9Ql3Wd8Zx1Bm6Vh4Tt";

/// Sends to the admin listener; the response goes into the leak check.
async fn admin(env: &Env, req: Req) -> Resp {
    env.server.send_admin(req).await
}

fn authed(req: Req) -> Req {
    req.bearer(TOKEN)
}

async fn start_with_token(setup: EnvSetup) -> Env {
    let env = setup.serve_env("KEYGATE_ADMIN_TOKEN", TOKEN).start().await;
    env.kg.register_secret(TOKEN);
    env
}

fn assert_admin_error(resp: &Resp, status: u16, code: &str) {
    assert_eq!(
        resp.status.as_u16(),
        status,
        "expected {status} {code}: {}",
        resp.text()
    );
    assert_eq!(resp.json()["error"]["code"], code, "{}", resp.text());
    assert!(
        resp.json()["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{}",
        resp.text()
    );
}

fn assert_no_secret(resp: &Resp, secrets: &[&str]) {
    let text = resp.everything();
    for s in secrets {
        assert!(
            !text.contains(s) && !text.contains(&s[s.len() - 12..]),
            "an admin response contains a secret: {text}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn admin_api_is_off_without_a_token() {
    let env = Env::start().await;
    for req in [
        Req::get("/admin/keys"),
        Req::get("/admin/keys").bearer(TOKEN),
        Req::post("/admin/reload").bearer(TOKEN),
        Req::post("/admin/keys/openai/rotate")
            .bearer(TOKEN)
            .json(&serde_json::json!({"secret": OPENAI_KEY_2})),
    ] {
        let resp = admin(&env, req).await;
        assert_admin_error(&resp, 404, "admin_api_off");
    }
    assert_eq!(env.openai.hits(), 0, "nothing reached the upstream");
    assert_eq!(upstream_key_now(&env).await, OPENAI_KEY);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn admin_api_refuses_a_missing_or_wrong_token() {
    let env = start_with_token(Env::setup()).await;
    let id = key_id(&env.kg, "openai", OPENAI_KEY);
    let wrong = [
        None,
        Some("Bearer kgadm-test-wrong-token-0000000000".to_string()),
        Some(format!("Bearer {TOKEN}x")),
        Some(format!("Bearer {}", &TOKEN[..TOKEN.len() - 1])),
        Some(TOKEN.to_string()),
    ];
    for auth in &wrong {
        for req in [
            Req::get("/admin/keys"),
            Req::post(&format!("/admin/keys/{id}/revoke"))
                .json(&serde_json::json!({"force": true})),
        ] {
            let req = match auth {
                Some(v) => req.header("authorization", v),
                None => req,
            };
            let resp = admin(&env, req).await;
            assert_admin_error(&resp, 401, "invalid_admin_token");
        }
    }
    let list = key_list(&env.kg);
    assert!(
        list.iter()
            .any(|k| k["id"] == id.as_str() && k["state"] == "current"),
        "a refused call changed nothing: {list:#?}"
    );
    let resp = admin(&env, authed(Req::get("/admin/keys"))).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn admin_keys_lists_ids_and_fingerprints_never_a_secret() {
    let env = start_with_token(Env::setup().key("openai", OPENAI_KEY_2, &["--fallback"])).await;
    let resp = admin(&env, authed(Req::get("/admin/keys"))).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_no_secret(&resp, &[OPENAI_KEY, OPENAI_KEY_2, XAI_KEY, TOKEN]);
    let listed = resp.json();
    let listed = listed.as_array().expect("an array of keys");
    let cli = key_list(&env.kg);
    let ids = |v: &[serde_json::Value]| {
        let mut ids: Vec<String> = v
            .iter()
            .map(|k| k["id"].as_str().unwrap_or_default().to_string())
            .collect();
        ids.sort();
        ids
    };
    assert_eq!(ids(listed), ids(&cli), "the same keys as `key list`");
    for (secret, provider, state) in [
        (OPENAI_KEY, "openai", "current"),
        (OPENAI_KEY_2, "openai", "previous"),
        (XAI_KEY, "xai", "current"),
    ] {
        let tail = &secret[secret.len() - 4..];
        let row = listed
            .iter()
            .find(|k| k["fingerprint"].as_str().is_some_and(|f| f.ends_with(tail)))
            .unwrap_or_else(|| panic!("no key with fingerprint …{tail}: {listed:#?}"));
        assert_eq!(row["provider"], provider);
        assert_eq!(row["state"], state);
        assert!(
            row["id"].as_str().is_some_and(|i| i.starts_with("key_")),
            "{row}"
        );
        assert_eq!(row["healthy"], true, "{row}");
    }
    let resp = admin(&env, authed(Req::get("/admin/clients"))).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_no_secret(&resp, &[&env.client_key, TOKEN]);
    assert!(resp.text().contains("\"app\""), "{}", resp.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn admin_rotate_verifies_promotes_and_is_live_when_the_call_returns() {
    let env = start_with_token(Env::setup()).await;
    env.openai.set_keys(&[OPENAI_KEY, OPENAI_KEY_2]);
    env.kg.register_secret(OPENAI_KEY_2);
    let old = key_id(&env.kg, "openai", OPENAI_KEY);
    assert_eq!(upstream_key_now(&env).await, OPENAI_KEY);

    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let resp = admin(
        &env,
        authed(Req::post("/admin/keys/openai/rotate")).json(&serde_json::json!({
            "secret": OPENAI_KEY_2, "label": "prod-2", "verify": true, "grace": "1h"
        })),
    )
    .await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_no_secret(&resp, &[OPENAI_KEY, OPENAI_KEY_2, TOKEN]);
    let verify = env.openai.last();
    assert_eq!(
        (verify.uri.as_str(), key_of(&verify).as_str()),
        ("/v1/models", OPENAI_KEY_2),
        "\"verify\": true checks the new key with the upstream first"
    );
    // Live when the call returned: no waiting.
    assert_eq!(upstream_key_now(&env).await, OPENAI_KEY_2);

    let new = key_id(&env.kg, "openai", OPENAI_KEY_2);
    let body = resp.json();
    assert_eq!(body["promoted"], new.as_str(), "{body}");
    assert_eq!(body["previous"], old.as_str(), "{body}");
    let grace_until = body["grace_until"].as_u64().expect("grace_until");
    assert!(
        (now + 3600 - 5..=now + 3600 + 60).contains(&grace_until),
        "grace 1h: {grace_until} vs now {now}"
    );
    let list = key_list(&env.kg);
    let row = |id: &str| {
        list.iter()
            .find(|k| k["id"] == id)
            .cloned()
            .unwrap_or_default()
    };
    assert_eq!(row(&new)["state"], "current");
    assert_eq!(row(&new)["label"], "prod-2");
    assert_eq!(row(&old)["state"], "previous");
    let page = env.server.admin_get("/metrics").await.text();
    assert_eq!(
        metric_value(
            &page,
            "keygate_key_rotations_total",
            &[("provider", "openai")]
        ),
        Some(1.0),
        "{page}"
    );

    // A key the upstream refuses: 422 `key_rejected` (409 `conflict` means
    // another rotation holds the lease: worth retrying, this is not), and
    // nothing changes.
    env.kg.register_secret(BAD_KEY);
    let resp = admin(
        &env,
        authed(Req::post("/admin/keys/openai/rotate"))
            .json(&serde_json::json!({"secret": BAD_KEY, "verify": true})),
    )
    .await;
    assert_admin_error(&resp, 422, "key_rejected");
    assert!(resp.text().contains("401"), "{}", resp.text());
    assert_no_secret(&resp, &[BAD_KEY, OPENAI_KEY_2, TOKEN]);
    assert_eq!(upstream_key_now(&env).await, OPENAI_KEY_2);
    let page = env.server.admin_get("/metrics").await.text();
    assert_eq!(
        metric_value(
            &page,
            "keygate_key_rotations_total",
            &[("provider", "openai")]
        ),
        Some(1.0),
        "a refused rotation is not counted:\n{page}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn admin_reload_and_revoke_are_live_when_the_call_returns() {
    let env = start_with_token(Env::setup().key("openai", OPENAI_KEY_2, &["--fallback"])).await;
    env.openai.set_keys(&[OPENAI_KEY, OPENAI_KEY_2]);
    let old = key_id(&env.kg, "openai", OPENAI_KEY);
    let new = key_id(&env.kg, "openai", OPENAI_KEY_2);

    // Reload: a client added by the CLI works as soon as the call returns.
    let key = env.kg.add_client("app2");
    let resp = admin(&env, authed(Req::post("/admin/reload"))).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    let generation = resp.json()["generation"].as_u64().expect("generation");
    let ready = env.server.admin_get("/readyz").await.json();
    assert_eq!(ready["vault_generation"].as_u64(), Some(generation));
    let resp = env
        .server
        .send(
            Req::post("/v1/chat/completions")
                .bearer(&key)
                .json(&crate::support::chat_body("gpt-4o")),
        )
        .await;
    assert_eq!(resp.status, 200, "{}", resp.text());

    // Revoke the current key: the fallback serves at once.
    let resp = admin(
        &env,
        authed(Req::post(&format!("/admin/keys/{old}/revoke"))),
    )
    .await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.json()["revoked"], old.as_str());
    assert_eq!(upstream_key_now(&env).await, OPENAI_KEY_2);

    // The last usable key: refused without force.
    let resp = admin(
        &env,
        authed(Req::post(&format!("/admin/keys/{new}/revoke")))
            .json(&serde_json::json!({"force": false})),
    )
    .await;
    assert_admin_error(&resp, 409, "conflict");
    assert!(resp.text().contains("force"), "{}", resp.text());
    assert_eq!(upstream_key_now(&env).await, OPENAI_KEY_2);

    let resp = admin(
        &env,
        authed(Req::post(&format!("/admin/keys/{new}/revoke")))
            .json(&serde_json::json!({"force": true})),
    )
    .await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    let hits = env.openai.hits();
    let resp = env.server.send(env.chat("gpt-4o")).await;
    resp.assert_keygate_error(503, "no_upstream_key");
    assert_eq!(env.openai.hits(), hits);
    let list = key_list(&env.kg);
    assert!(
        list.iter()
            .filter(|k| k["provider"] == "openai")
            .all(|k| k["state"] == "revoked"),
        "{list:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_body_names_the_field_and_never_echoes_a_string() {
    let env = start_with_token(Env::setup()).await;
    let resp = admin(
        &env,
        authed(Req::post("/admin/keys/openai").json(&serde_json::json!({"secrt": "x"}))),
    )
    .await;
    assert_admin_error(&resp, 400, "bad_request");
    assert!(
        resp.text().contains("unknown field `secrt`"),
        "{}",
        resp.text()
    );
    // A key pasted into a boolean field is not quoted back.
    let pasted = "sk-test-pasted-Qa8Ws2Ed4Rf6Tg";
    env.kg.register_secret(pasted);
    let resp = admin(
        &env,
        authed(Req::post("/admin/keys/key_x/revoke").json(&serde_json::json!({"force": pasted}))),
    )
    .await;
    assert_admin_error(&resp, 400, "bad_request");
    assert!(
        resp.text().contains("expected a boolean"),
        "{}",
        resp.text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn providers_and_client_counts_for_the_status_page() {
    let env = start_with_token(Env::setup()).await;
    let resp = admin(&env, authed(Req::get("/admin/providers"))).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    let providers = resp.json();
    let openai = providers
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "openai")
        .cloned()
        .unwrap();
    assert_eq!(openai["usable_keys"], 1);
    assert_eq!(openai["default"], true);
    assert_eq!(openai["management_credential"], false);
    let chat = env.server.send(env.chat("gpt-4o")).await;
    assert_eq!(chat.status, 200);
    let clients = admin(&env, authed(Req::get("/admin/clients"))).await.json();
    assert!(
        clients[0]["counted"]["tokens_spent"].as_u64().unwrap() > 0,
        "{clients}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_wrong_token_costs_a_quarter_second_and_a_short_token_is_refused_at_start() {
    let env = start_with_token(Env::setup()).await;
    let started = std::time::Instant::now();
    let resp = admin(
        &env,
        Req::get("/admin/keys").header("authorization", "Bearer not-the-token-000000"),
    )
    .await;
    assert_admin_error(&resp, 401, "invalid_admin_token");
    assert!(
        started.elapsed() >= std::time::Duration::from_millis(250),
        "a wrong guess was answered in {:?}",
        started.elapsed()
    );
    drop(env);
    let kg = crate::support::Keygate::new(&crate::support::KeygateBuilder::new());
    kg.vault_init();
    let out = kg.run_with(&["serve"], None, &[("KEYGATE_ADMIN_TOKEN", "short-tok")]);
    assert_eq!(out.code, Some(2), "{}{}", out.stdout, out.stderr);
    assert!(
        out.stderr.contains("KEYGATE_ADMIN_TOKEN is 9 characters") && out.stderr.contains("16"),
        "{}",
        out.stderr
    );
    assert!(
        !out.stderr.contains("short-tok"),
        "the token itself is never shown"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_admin_listener_answers_only_to_addresses_localhost_and_listed_names() {
    let env = start_with_token(
        Env::setup().config(|b| b.extra("[admin]\nallowed_hosts = [\"keygate.internal\"]\n")),
    )
    .await;
    let get =
        |host: &str| format!("GET /metrics HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    let port = env.server.admin.port();
    for host in [
        format!("127.0.0.1:{port}"),
        format!("localhost:{port}"),
        "keygate.internal".to_owned(),
    ] {
        let (status, text) =
            crate::support::client::send_raw(env.server.admin, get(&host).as_bytes()).await;
        assert_eq!(status, 200, "{host}: {text}");
    }
    // A DNS-rebinding page reaches keygate under its own name.
    for path in ["/metrics", "/readyz", "/admin/keys"] {
        let raw = format!(
            "GET {path} HTTP/1.1\r\nHost: attacker.example:{port}\r\nConnection: close\r\n\r\n"
        );
        let (status, text) =
            crate::support::client::send_raw(env.server.admin, raw.as_bytes()).await;
        assert_eq!(status, 421, "{path}: {text}");
        assert!(text.contains("host_not_allowed"), "{text}");
        assert!(!text.contains("keygate_"), "no metric leaked: {text}");
    }
}

/// The names on one `GET /admin/clients` page.
async fn client_page(env: &Env, query: &str) -> Vec<String> {
    let resp = admin(env, authed(Req::get(&format!("/admin/clients{query}")))).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    resp.json()
        .as_array()
        .unwrap_or_else(|| panic!("not an array: {}", resp.text()))
        .iter()
        .map(|c| c["name"].as_str().unwrap_or_default().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn admin_clients_are_paged_by_name_and_a_name_is_never_split() {
    let env = start_with_token(Env::setup()).await;
    for args in [
        &["client", "add", "zed"][..],
        &["client", "add", "dup"],
        &["client", "revoke", "dup"],
        &["client", "add", "dup"],
        &["client", "add", "c-2"],
        &["client", "add", "c-1"],
    ] {
        env.kg.run(args).assert_ok("client change");
    }
    // Listed at once (the listing catches up with the vault on its own).
    assert_eq!(
        client_page(&env, "").await,
        ["app", "c-1", "c-2", "dup", "dup", "zed"]
    );
    assert_eq!(client_page(&env, "?limit=2").await, ["app", "c-1"]);
    // The revoked `dup` and its successor stay on one page.
    assert_eq!(
        client_page(&env, "?limit=2&after=c-1").await,
        ["c-2", "dup", "dup"]
    );
    assert_eq!(client_page(&env, "?limit=2&after=dup").await, ["zed"]);
    assert!(client_page(&env, "?limit=2&after=zed").await.is_empty());
    for bad in ["?limit=0", "?limit=many", "?limit=10001", "?page=2"] {
        let resp = admin(&env, authed(Req::get(&format!("/admin/clients{bad}")))).await;
        assert_admin_error(&resp, 400, "bad_request");
    }
}
