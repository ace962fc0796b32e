//! Client authentication (docs/design.md §4): only a live `kg_` key issued by this
//! keygate gets through, in `Authorization: Bearer`, `x-api-key` or `api-key`;
//! every refusal is a 401 `invalid_client_key` whose message says which case it
//! is (and never quotes what was sent), counted by reason and named on the log
//! line; the upstream sees nothing.

use crate::support::metrics::metric_value;
use crate::support::{
    chat_body, eventually, Env, Keygate, KeygateBuilder, Req, OPENAI_KEY, RELOAD_WAIT,
};

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
    let message = refused.json()["error"]["message"].to_string();
    assert!(message.contains("was revoked"), "{message}");

    let hits = env.openai.hits();
    let resp = env.server.send(env.chat("gpt-4o")).await;
    resp.assert_keygate_error(401, "invalid_client_key");
    assert_eq!(
        env.openai.hits(),
        hits,
        "a revoked client must not reach the upstream"
    );
    assert!(auth_failures(&env, "revoked").await >= 2.0);
    assert!(logged_failures(&env, "revoked") >= 2);
    assert_eq!(auth_failures(&env, "unknown").await, 0.0);
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

/// `keygate_client_auth_failures_total{reason}` on the admin listener.
async fn auth_failures(env: &Env, reason: &str) -> f64 {
    let page = env.server.admin_get("/metrics").await.text();
    metric_value(
        &page,
        "keygate_client_auth_failures_total",
        &[("reason", reason)],
    )
    .unwrap_or_else(|| {
        panic!("no keygate_client_auth_failures_total{{reason=\"{reason}\"}} sample on /metrics:\n{page}")
    })
}

/// The access log lines of refused requests, by their `auth_failure` field.
fn logged_failures(env: &Env, reason: &str) -> usize {
    let field = format!(" auth_failure=\"{reason}\" ");
    env.server
        .stderr()
        .lines()
        .filter(|l| l.contains(" keygate::proxy: request ") && l.contains(&field))
        .count()
}

/// Headers sent, the reason expected, what the message must say, and the
/// value that must not come back.
type Case<'a> = (Vec<(&'a str, String)>, &'a str, &'a str, &'a str);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn each_refusal_says_which_case_it_is_and_never_echoes_the_key() {
    let env = Env::start().await;
    let key = env.client_key.clone();
    let mut typo: Vec<char> = key.chars().collect();
    typo[12] = if typo[12] == 'a' { 'b' } else { 'a' };
    let typo: String = typo.into_iter().collect();
    let cut = key[..30].to_string();
    let other = Keygate::new(&KeygateBuilder::new());
    other.vault_init();
    let foreign = other.add_client("elsewhere");
    // Provider keys pasted into the app by mistake (made up, but shaped right).
    let openai_project = "sk-proj-FAKE-test-T3stPr0jKeyQw9Er8Ty7Ui6Op5As4Df3Gh2Jk1Lz".to_string();
    let openai_classic = "sk-FAKE-test-Cl4ssicKeyZx9Cv8Bn7Mq6We5Rt4Yu3".to_string();
    let anthropic = "sk-ant-api03-FAKE-test-AnthR0picKeyLk9Jh8Gf7Ds6Aq5Wz4Xe3-AA".to_string();
    let xai = "xai-FAKE-test-XaiK3yMn9Bv8Cx7Zl6Kj5Hg4Fd3Sa2Qw".to_string();
    let openrouter = "sk-or-v1-FAKE-test-0penR0uterKey9a8b7c6d5e4f3a2b1c0d9e8".to_string();
    let basic = "dXNlcjpodW50ZXIyaHVudGVyMg==".to_string();
    let junk = "hello-this-is-not-any-kind-of-key".to_string();
    for secret in [
        &typo,
        &cut,
        &foreign,
        &openai_project,
        &openai_classic,
        &anthropic,
        &xai,
        &openrouter,
        &basic,
        &junk,
    ] {
        env.kg.register_secret(secret);
    }

    let bearer = |k: &str| ("authorization", format!("Bearer {k}"));
    let cases: Vec<Case> = vec![
        (vec![], "missing", "No keygate client key was sent", ""),
        (
            vec![("authorization", key.clone())],
            "no_bearer_scheme",
            "no `Bearer ` scheme",
            &key,
        ),
        (
            vec![("authorization", format!("Token {key}"))],
            "no_bearer_scheme",
            "no `Bearer ` scheme",
            &key,
        ),
        (
            vec![("authorization", format!("Basic {basic}"))],
            "no_bearer_scheme",
            "no `Bearer ` scheme",
            &basic,
        ),
        (
            vec![bearer(&openai_project)],
            "provider_key",
            "looks like an OpenAI API key",
            &openai_project,
        ),
        (
            vec![bearer(&openai_classic)],
            "provider_key",
            "rotate it at OpenAI",
            &openai_classic,
        ),
        (
            vec![("x-api-key", anthropic.clone())],
            "provider_key",
            "looks like an Anthropic API key",
            &anthropic,
        ),
        (vec![bearer(&xai)], "provider_key", "rotate it at xAI", &xai),
        (
            vec![("api-key", openrouter.clone())],
            "provider_key",
            "looks like an OpenRouter API key",
            &openrouter,
        ),
        (
            vec![bearer(&typo)],
            "bad_checksum",
            "fails its checksum",
            &typo,
        ),
        (
            vec![("x-api-key", cut.clone())],
            "bad_checksum",
            "cut short",
            &cut,
        ),
        (
            vec![bearer(&junk)],
            "malformed",
            "not a keygate client key",
            &junk,
        ),
        (
            vec![bearer(&foreign)],
            "unknown",
            "unknown to this keygate",
            &foreign,
        ),
        (
            vec![("api-key", foreign.clone())],
            "unknown",
            "unknown to this keygate",
            &foreign,
        ),
    ];
    for (headers, reason, says, sent) in &cases {
        let req = headers
            .iter()
            .fold(Req::post("/v1/chat/completions"), |r, (k, v)| {
                r.header(k, v)
            })
            .json(&chat_body("gpt-4o"));
        let resp = env.server.send(req).await;
        resp.assert_keygate_error(401, "invalid_client_key");
        let message = resp.json()["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        assert!(
            message.contains(says) && message.contains("keygate"),
            "{reason}: the message must say `{says}`: {message}"
        );
        if *reason == "provider_key" {
            assert!(message.contains("exposed"), "{message}");
        }
        if !sent.is_empty() {
            assert!(
                !resp.everything().contains(&sent[..12]),
                "{reason}: the response quotes what was sent:\n{}",
                resp.everything()
            );
        }
    }
    assert_eq!(env.openai.hits() + env.xai.hits(), 0);

    for reason in [
        "missing",
        "no_bearer_scheme",
        "provider_key",
        "bad_checksum",
        "malformed",
        "unknown",
    ] {
        let expected = cases.iter().filter(|c| c.1 == reason).count();
        assert_eq!(
            auth_failures(&env, reason).await,
            expected as f64,
            "keygate_client_auth_failures_total{{reason={reason}}}"
        );
        assert_eq!(
            logged_failures(&env, reason),
            expected,
            "access log lines with auth_failure={reason}:\n{}",
            env.server.stderr()
        );
    }
    assert_eq!(auth_failures(&env, "revoked").await, 0.0);
    // A request that got through names no auth failure.
    let ok = env.server.send(env.chat("gpt-4o")).await;
    assert_eq!(ok.status, 200, "{}", ok.text());
    // The line is written when the response is over; it reaches the harness
    // through a pipe.
    let served = crate::support::eventually(std::time::Duration::from_secs(3), || async {
        env.server
            .stderr()
            .lines()
            .find(|l| l.contains(" keygate::proxy: request ") && l.contains("status=200"))
            .map(str::to_owned)
    })
    .await
    .unwrap_or_else(|| panic!("no access line for the 200:\n{}", env.server.stderr()));
    assert!(!served.contains("auth_failure"), "{served}");
    // Every presented value is checked against keygate's logs, CLI output,
    // /metrics and every response when `env` drops (8-character windows).
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn api_key_header_is_accepted_and_not_forwarded() {
    let env = Env::start().await;
    let resp = env
        .server
        .send(
            Req::post("/v1/chat/completions")
                .header("api-key", &env.client_key)
                .json(&chat_body("gpt-4o")),
        )
        .await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    let seen = env.openai.last();
    assert_eq!(seen.header("api-key"), None, "{}", seen.everything());
    assert_eq!(
        seen.header("authorization").as_deref(),
        Some(format!("Bearer {OPENAI_KEY}").as_str())
    );
    assert!(!seen.everything().contains(&env.client_key));
    // `Authorization` in another scheme does not hide a key in `api-key`.
    let resp = env
        .server
        .send(
            Req::post("/v1/chat/completions")
                .header("authorization", "Basic dXNlcjpwYXNz")
                .header("api-key", &env.client_key)
                .json(&chat_body("gpt-4o")),
        )
        .await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    // The scheme is case-insensitive.
    let resp = env
        .server
        .send(
            Req::post("/v1/chat/completions")
                .header("authorization", &format!("bearer {}", env.client_key))
                .json(&chat_body("gpt-4o")),
        )
        .await;
    assert_eq!(resp.status, 200, "{}", resp.text());
}
