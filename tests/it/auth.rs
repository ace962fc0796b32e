//! Client authentication (DESIGN §4): only a live `kg_` key issued by this
//! keygate gets through; every refusal is a 401 `invalid_client_key` and the
//! upstream sees nothing.

use crate::support::{chat_body, eventually, Env, Keygate, KeygateBuilder, Req, RELOAD_WAIT};

fn chat_with(headers: &[(&str, &str)]) -> Req {
    headers
        .iter()
        .fold(Req::post("/v1/chat/completions"), |r, (k, v)| {
            r.header(k, v)
        })
        .json(&chat_body("gpt-4o"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn request_without_client_key_is_401_and_upstream_sees_nothing() {
    let env = Env::start().await;
    let resp = env.server.send(chat_with(&[])).await;
    resp.assert_keygate_error(401, "invalid_client_key");
    let message = resp.json()["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_ascii_lowercase();
    assert!(
        message.contains("keygate") && message.contains("client"),
        "the message must say it is the keygate client key that is missing: {message}"
    );
    assert_eq!(env.openai.hits() + env.xai.hits(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn client_key_from_another_keygate_is_401() {
    let env = Env::start().await;
    // A well-formed key (valid checksum) that this keygate never issued.
    let other = Keygate::new(&KeygateBuilder::new());
    other.vault_init();
    let foreign = other.add_client("elsewhere");
    env.kg.register_secret(&foreign);

    for req in [
        chat_with(&[("authorization", &format!("Bearer {foreign}"))]),
        chat_with(&[("x-api-key", &foreign)]),
    ] {
        let resp = env.server.send(req).await;
        resp.assert_keygate_error(401, "invalid_client_key");
    }
    assert_eq!(env.openai.hits() + env.xai.hits(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn malformed_client_keys_are_401() {
    let env = Env::start().await;
    let key = env.client_key.clone();
    assert_eq!(key.len(), 45, "kg_ + 36 + 6 checksum characters: {key}");
    // One character of the random part changed: the checksum no longer matches.
    let mut typo: Vec<char> = key.chars().collect();
    typo[10] = if typo[10] == 'a' { 'b' } else { 'a' };
    let typo: String = typo.into_iter().collect();
    let truncated = key[..key.len() - 1].to_string();
    let longer = format!("{key}0");

    let cases: Vec<(&str, String)> = vec![
        ("authorization", format!("Bearer {typo}")),
        ("authorization", format!("Bearer {truncated}")),
        ("authorization", format!("Bearer {longer}")),
        ("authorization", "Bearer kg_short".to_string()),
        ("authorization", "Bearer ".to_string()),
        (
            "authorization",
            "Bearer sk-test-not-a-keygate-key-000000".to_string(),
        ),
        ("x-api-key", typo.clone()),
        ("x-api-key", String::new()),
    ];
    for (header, value) in &cases {
        let resp = env.server.send(chat_with(&[(header, value)])).await;
        assert_eq!(
            resp.status,
            401,
            "`{header}: {value}` must be refused: {}",
            resp.text()
        );
        resp.assert_keygate_error(401, "invalid_client_key");
    }
    assert_eq!(env.openai.hits() + env.xai.hits(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn revoked_client_key_is_401_on_a_running_server() {
    let env = Env::start().await;
    let resp = env.server.send(env.chat("gpt-4o")).await;
    assert_eq!(resp.status, 200, "{}", resp.text());

    env.kg
        .run(&["client", "revoke", "app"])
        .assert_ok("client revoke");
    let refused = eventually(RELOAD_WAIT, || async {
        let resp = env.server.send(env.chat("gpt-4o")).await;
        (resp.status == 401).then_some(resp)
    })
    .await
    .expect("the revoked key still works 3 s after `client revoke`");
    refused.assert_keygate_error(401, "invalid_client_key");

    let hits = env.openai.hits();
    let resp = env.server.send(env.chat("gpt-4o")).await;
    resp.assert_keygate_error(401, "invalid_client_key");
    assert_eq!(
        env.openai.hits(),
        hits,
        "a revoked client must not reach the upstream"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn client_added_on_a_running_server_is_accepted() {
    let env = Env::start().await;
    let new_key = env.kg.add_client("late-comer");
    let resp = eventually(RELOAD_WAIT, || async {
        let resp = env
            .server
            .send(
                Req::post("/v1/chat/completions")
                    .bearer(&new_key)
                    .json(&chat_body("gpt-4o")),
            )
            .await;
        (resp.status == 200).then_some(resp)
    })
    .await;
    assert!(
        resp.is_some(),
        "a client added with `client add` is not accepted by the running server after 3 s"
    );
    // The first client still works.
    let resp = env.server.send(env.chat("gpt-4o")).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn anonymous_requests_pass_only_when_allowed() {
    let env = Env::setup()
        .config(|b| b.extra("[clients]\nallow_anonymous = true"))
        .start()
        .await;
    let resp = env.server.send(chat_with(&[])).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(env.openai.hits(), 1);
    // A presented but wrong key is still refused.
    let resp = env
        .server
        .send(chat_with(&[("authorization", "Bearer kg_short")]))
        .await;
    resp.assert_keygate_error(401, "invalid_client_key");
    assert_eq!(env.openai.hits(), 1);
}
