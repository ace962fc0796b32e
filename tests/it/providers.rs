//! Providers as they really behave (docs/design.md §11): each kind tells a bad key, an
//! account out of credit and a rate limit apart from the status *and* the error
//! body, the pool carries on past each, `key verify` explains each answer, and
//! the operator (not the client) picks the organisation and project a key bills.
//! The mock answers in each provider's own words (`support/provider_answers.rs`).

use std::time::Duration;

use crate::support::env::EnvSetup;
use crate::support::keys::{key_id, key_list, key_of};
use crate::support::metrics::metric_value;
use crate::support::mock::Mock;
use crate::support::provider_answers::{openai_masked, Flavor, KeyStanding};
use crate::support::{eventually, Env, Req, OPENAI_KEY, OPENAI_KEY_2, XAI_KEY};

/// The `kind` and `auth` keygate is configured with for a flavour of mock.
fn kind_of(flavor: Flavor) -> (&'static str, &'static str) {
    match flavor {
        Flavor::OpenAi => ("openai", "bearer"),
        Flavor::Xai => ("xai", "bearer"),
        Flavor::Anthropic => ("anthropic", "x-api-key"),
        Flavor::OpenRouter => ("openrouter", "bearer"),
        Flavor::Gemini => ("gemini", "bearer"),
        Flavor::Mistral => ("mistral", "bearer"),
        Flavor::Groq => ("groq", "bearer"),
        Flavor::DeepSeek => ("deepseek", "bearer"),
    }
}

/// The standard world with the `openai` provider configured as `flavor`'s kind
/// and its mock answering like that provider.
fn world(flavor: Flavor) -> EnvSetup {
    let (kind, auth) = kind_of(flavor);
    Env::setup().config(move |b| {
        b.provider_set("openai", "kind", &format!("\"{kind}\""))
            .provider_set("openai", "auth", &format!("\"{auth}\""))
            .provider_base_path("openai", flavor.base_path())
    })
}

/// A chat request as an SDK of `flavor`'s provider would send it.
fn chat(env: &Env, flavor: Flavor) -> Req {
    let req = env.chat("gpt-4o");
    match flavor {
        Flavor::Anthropic => req.header("anthropic-version", "2023-06-01"),
        _ => req,
    }
}

async fn metrics(env: &Env) -> String {
    let resp = env.server.admin_get("/metrics").await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    resp.text()
}

fn chat_attempts_with(mock: &Mock, key: &str) -> usize {
    mock.requests()
        .iter()
        .filter(|s| s.uri.ends_with("/chat/completions") && key_of(s) == key)
        .count()
}

/// A pool of two (the current key in `standing`, a good fallback): 20 requests
/// all succeed, the troubled key is tried at most twice, and the rejection
/// metric carries the right reason.
async fn the_pool_carries_on(flavor: Flavor, standing: KeyStanding) {
    let env = world(flavor)
        .key("openai", OPENAI_KEY_2, &["--fallback"])
        .start()
        .await;
    env.openai.set_flavor(flavor);
    env.openai.set_keys(&[OPENAI_KEY_2]);
    match standing {
        KeyStanding::Bad => {}
        KeyStanding::OutOfCredit => env.openai.set_out_of_credit_keys(&[OPENAI_KEY]),
        KeyStanding::RateLimited => env.openai.set_rate_limited_keys(&[OPENAI_KEY]),
    }
    for n in 0..20 {
        let resp = env.server.send(chat(&env, flavor)).await;
        assert_eq!(
            resp.status,
            200,
            "{flavor:?} {standing:?}, request {n}: {}",
            resp.text()
        );
    }
    let troubled = chat_attempts_with(&env.openai, OPENAI_KEY);
    assert!(
        (1..=2).contains(&troubled),
        "{flavor:?} {standing:?}: the troubled key was tried {troubled} times in 20 requests"
    );
    let reason = match standing {
        KeyStanding::Bad => "rejected",
        KeyStanding::OutOfCredit => "exhausted",
        KeyStanding::RateLimited => "rate_limited",
    };
    let page = metrics(&env).await;
    for other in ["rejected", "exhausted", "rate_limited"] {
        let value = metric_value(
            &page,
            "keygate_upstream_key_rejections_total",
            &[("provider", "openai"), ("reason", other)],
        )
        .unwrap_or(0.0);
        let expected = if other == reason {
            troubled as f64
        } else {
            0.0
        };
        assert_eq!(
            value, expected,
            "{flavor:?} {standing:?}: reason {other}\n{page}"
        );
    }
    let healthy = metric_value(
        &page,
        "keygate_key_healthy",
        &[("provider", "openai"), ("key_id", &first_key_id(&env))],
    );
    let expect_healthy = if standing == KeyStanding::RateLimited {
        // Cooling for the rate limit's reset time.
        healthy
    } else {
        Some(0.0)
    };
    assert_eq!(healthy, expect_healthy, "{flavor:?} {standing:?}\n{page}");
}

fn first_key_id(env: &Env) -> String {
    key_id(&env.kg, "openai", OPENAI_KEY)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn openai_a_bad_key_an_empty_account_and_a_rate_limit_each_leave_the_pool_serving() {
    for standing in [
        KeyStanding::Bad,
        KeyStanding::OutOfCredit,
        KeyStanding::RateLimited,
    ] {
        the_pool_carries_on(Flavor::OpenAi, standing).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn xai_a_bad_key_an_empty_account_and_a_rate_limit_each_leave_the_pool_serving() {
    for standing in [
        KeyStanding::Bad,
        KeyStanding::OutOfCredit,
        KeyStanding::RateLimited,
    ] {
        the_pool_carries_on(Flavor::Xai, standing).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn anthropic_a_bad_key_an_empty_account_and_a_rate_limit_each_leave_the_pool_serving() {
    for standing in [
        KeyStanding::Bad,
        KeyStanding::OutOfCredit,
        KeyStanding::RateLimited,
    ] {
        the_pool_carries_on(Flavor::Anthropic, standing).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn openrouter_a_bad_key_an_empty_account_and_a_rate_limit_each_leave_the_pool_serving() {
    for standing in [
        KeyStanding::Bad,
        KeyStanding::OutOfCredit,
        KeyStanding::RateLimited,
    ] {
        the_pool_carries_on(Flavor::OpenRouter, standing).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn gemini_a_bad_key_an_empty_account_and_a_rate_limit_each_leave_the_pool_serving() {
    for standing in [
        KeyStanding::Bad,
        KeyStanding::OutOfCredit,
        KeyStanding::RateLimited,
    ] {
        the_pool_carries_on(Flavor::Gemini, standing).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mistral_a_bad_key_an_empty_account_and_a_rate_limit_each_leave_the_pool_serving() {
    for standing in [
        KeyStanding::Bad,
        KeyStanding::OutOfCredit,
        KeyStanding::RateLimited,
    ] {
        the_pool_carries_on(Flavor::Mistral, standing).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn groq_a_bad_key_an_empty_account_and_a_rate_limit_each_leave_the_pool_serving() {
    for standing in [
        KeyStanding::Bad,
        KeyStanding::OutOfCredit,
        KeyStanding::RateLimited,
    ] {
        the_pool_carries_on(Flavor::Groq, standing).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deepseek_a_bad_key_an_empty_account_and_a_rate_limit_each_leave_the_pool_serving() {
    for standing in [
        KeyStanding::Bad,
        KeyStanding::OutOfCredit,
        KeyStanding::RateLimited,
    ] {
        the_pool_carries_on(Flavor::DeepSeek, standing).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn gemini_a_400_api_key_invalid_is_a_key_rejection_and_its_other_400s_pass_through() {
    // A single bad key: the client gets keygate's 502 naming the provider,
    // never Gemini's array-wrapped 400.
    let env = world(Flavor::Gemini).start().await;
    env.openai.set_flavor(Flavor::Gemini);
    env.openai.set_keys(&[]);
    let resp = env.server.send(env.chat("gemini-2.5-flash")).await;
    resp.assert_keygate_error(502, "upstream_key_rejected");
    assert!(!resp.text().contains("API_KEY_INVALID"), "{}", resp.text());
    // The request went to the versioned base, without the client's /v1.
    assert_eq!(env.openai.last().uri, "/v1beta/openai/chat/completions");
    // A 400 about the request is the client's, passed through as Gemini sent it.
    env.openai.set_keys(&[OPENAI_KEY]);
    env.openai.push_response(
        400,
        &[("content-type", "application/json")],
        r#"[{"error":{"code":400,"message":"Invalid JSON payload received. Unknown name \"web_search_options\": Cannot find field.","status":"INVALID_ARGUMENT","details":[{"@type":"type.googleapis.com/google.rpc.BadRequest","fieldViolations":[{"description":"Unknown name"}]}]}}]"#,
    );
    let resp = env.server.send(env.chat("gemini-2.5-flash")).await;
    assert_eq!(resp.status, 400, "{}", resp.text());
    assert!(
        resp.text().contains("web_search_options"),
        "{}",
        resp.text()
    );
    let resp = env.server.send(env.chat("gemini-2.5-flash")).await;
    assert_eq!(resp.status, 200, "the key is still in use: {}", resp.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mistral_streams_are_not_sent_the_stream_usage_option_it_refuses() {
    let env = world(Flavor::Mistral).start().await;
    env.openai.set_flavor(Flavor::Mistral);
    let resp = env
        .server
        .send(env.chat_stream("mistral-small-latest"))
        .await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert!(
        env.openai.last().json().get("stream_options").is_none(),
        "keygate must not add stream_options for Mistral (it answers 422)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn xai_400_for_a_bad_key_is_a_key_rejection_not_a_bad_request() {
    // A single bad key: the client gets keygate's 502 naming the provider,
    // never xAI's 400 (which the OpenAI SDK raises as BadRequestError).
    let env = Env::start().await;
    env.xai.set_flavor(Flavor::Xai);
    env.xai.set_keys(&[]);
    let resp = env.server.send(env.chat("grok-3")).await;
    resp.assert_keygate_error(502, "upstream_key_rejected");
    assert!(resp.text().contains("xai"), "{}", resp.text());
    assert!(
        !resp.text().contains("Incorrect API key"),
        "{}",
        resp.text()
    );
    // A 400 about something else is the client's mistake and passes through.
    env.xai.set_keys(&[XAI_KEY]);
    env.xai.push_response(
        400,
        &[("content-type", "application/json")],
        r#"{"code":"Client specified an invalid argument","error":"Model not found: grok-9"}"#,
    );
    let resp = env.server.send(env.chat("grok-9")).await;
    assert_eq!(resp.status, 400, "{}", resp.text());
    assert!(resp.text().contains("Model not found"), "{}", resp.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn when_every_key_is_out_of_credit_the_providers_answer_passes_through() {
    let env = world(Flavor::OpenAi).start().await;
    env.openai.set_out_of_credit_keys(&[OPENAI_KEY]);
    for _ in 0..3 {
        let resp = env.server.send(env.chat("gpt-4o")).await;
        assert_eq!(resp.status, 429, "{}", resp.text());
        assert_eq!(resp.json()["error"]["code"], "insufficient_quota");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_exhausted_key_rests_and_is_probed_once_after_exhausted_cooldown() {
    let env = world(Flavor::OpenAi)
        .key("openai", OPENAI_KEY_2, &["--fallback"])
        .config(|b| b.extra("[keys]\nexhausted_cooldown = \"1s\"\n"))
        .start()
        .await;
    env.openai.set_keys(&[OPENAI_KEY_2]);
    env.openai.set_out_of_credit_keys(&[OPENAI_KEY]);
    // Before the request that finds the key out of credit: the rest starts later.
    let before_exhausted = std::time::Instant::now();
    assert_eq!(env.server.send(env.chat("gpt-4o")).await.status, 200);
    assert_eq!(chat_attempts_with(&env.openai, OPENAI_KEY), 1);
    let admin = env.server.admin_get("/metrics").await.text();
    assert!(admin.contains("reason=\"exhausted\""), "{admin}");
    // The account is topped up; after the rest one request probes the key.
    // Requests keep coming: each goes to the fallback while the key rests,
    // until one probes it (the upstream sees the key a second time).
    env.openai.set_out_of_credit_keys(&[]);
    env.openai.set_keys(&[OPENAI_KEY, OPENAI_KEY_2]);
    let probed_after = eventually(Duration::from_secs(5), || async {
        let resp = env.server.send(env.chat("gpt-4o")).await;
        assert_eq!(resp.status, 200, "{}", resp.text());
        (chat_attempts_with(&env.openai, OPENAI_KEY) > 1).then(|| before_exhausted.elapsed())
    })
    .await
    .expect("the exhausted key was not probed within 5s; its exhausted_cooldown is 1s");
    // keygate's clock counts whole milliseconds, hence the 1 ms of slack.
    assert!(
        probed_after >= Duration::from_millis(999),
        "probed {probed_after:?} after it was found out of credit, before its 1s exhausted_cooldown ended"
    );
    assert_eq!(
        chat_attempts_with(&env.openai, OPENAI_KEY),
        2,
        "one request probes the rested key"
    );
    for _ in 0..5 {
        assert_eq!(env.server.send(env.chat("gpt-4o")).await.status, 200);
    }
    assert_eq!(key_of(&env.openai.last()), OPENAI_KEY, "healthy again");
    assert_eq!(
        chat_attempts_with(&env.openai, OPENAI_KEY),
        7,
        "after the probe, the key carries every request again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_operator_not_the_client_picks_organization_and_project() {
    let env = Env::start().await;
    let req = || {
        env.chat("gpt-4o")
            .header("openai-organization", "org-client")
            .header("openai-project", "proj_client")
    };
    assert_eq!(env.server.send(req()).await.status, 200);
    let seen = env.openai.last();
    assert_eq!(seen.header("openai-organization"), None);
    assert_eq!(seen.header("openai-project"), None);
    drop(env);

    let env = Env::setup()
        .config(|b| {
            b.provider_set("openai", "organization", "\"org-operator\"")
                .provider_set("openai", "project", "\"proj_operator\"")
        })
        .start()
        .await;
    let resp = env
        .server
        .send(
            env.chat("gpt-4o")
                .header("openai-organization", "org-client")
                .header("openai-project", "proj_client"),
        )
        .await;
    assert_eq!(resp.status, 200);
    let seen = env.openai.last();
    assert_eq!(
        seen.header("openai-organization").as_deref(),
        Some("org-operator")
    );
    assert_eq!(
        seen.header("openai-project").as_deref(),
        Some("proj_operator")
    );
    drop(env);

    let env = Env::setup()
        .config(|b| b.provider_set("openai", "allow_client_org_headers", "true"))
        .start()
        .await;
    let resp = env
        .server
        .send(env.chat("gpt-4o").header("openai-project", "proj_client"))
        .await;
    assert_eq!(resp.status, 200);
    assert_eq!(
        env.openai.last().header("openai-project").as_deref(),
        Some("proj_client")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_anthropic_kind_never_gets_stream_options() {
    let env = world(Flavor::Anthropic).start().await;
    env.openai.set_flavor(Flavor::Anthropic);
    let resp = env
        .server
        .send(
            env.chat_stream("claude-sonnet-4-5")
                .header("anthropic-version", "2023-06-01"),
        )
        .await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    let seen = env.openai.last().json();
    assert!(seen.get("stream_options").is_none(), "{seen}");
}

/// `key verify --json` rows, parsed.
fn verify_json(env: &Env, provider: &str) -> (i32, Vec<serde_json::Value>) {
    let out = env.kg.run(&["key", "verify", provider, "--json"]);
    let rows: Vec<serde_json::Value> = serde_json::from_str(out.stdout.trim())
        .unwrap_or_else(|e| panic!("key verify --json is not JSON ({e}): {}", out.stdout));
    (out.code.unwrap_or(-1), rows)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn key_verify_on_a_bad_xai_key_says_the_key_is_invalid_and_what_to_do() {
    let env = Env::start().await;
    env.xai.set_flavor(Flavor::Xai);
    env.xai.set_keys(&[]);
    let out = env.kg.run(&["key", "verify", "xai"]);
    out.assert_code(1, "key verify on a bad xai key");
    let text = out.stdout.clone();
    assert!(text.contains("rejected (400"), "{text}");
    assert!(text.contains("invalid or revoked"), "{text}");
    assert!(
        text.contains("console.x.ai") && text.contains("keygate key rotate xai"),
        "{text}"
    );
    assert!(!text.contains("base_url"), "the wrong diagnosis: {text}");
    assert!(!text.contains(&XAI_KEY[4..20]), "{text}");
    let (code, rows) = verify_json(&env, "xai");
    assert_eq!(code, 1);
    assert_eq!(rows[0]["verdict"], "rejected");
    assert_eq!(rows[0]["status"], 400);
    assert_eq!(
        rows[0]["provider_code"],
        "Client specified an invalid argument"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn key_verify_json_explains_each_key() {
    const KEY_3: &str = "sk-test-oa3-Lm6Tb1Vq8Zr3Wx5Ke7Pn2Dj4Ha0Cu";
    const KEY_4: &str = "sk-test-oa4-Qw2Er5Ty8Ui1Op4As7Df0Gh3Jk6Lz";
    let env = Env::setup()
        .key("openai", OPENAI_KEY_2, &[])
        .key("openai", KEY_3, &[])
        .key("openai", KEY_4, &[])
        .start()
        .await;
    // Canned answers go to the requests in order, one per key in vault order:
    // good, invalid, wrong project; the fourth key's account has no quota.
    env.openai
        .push_response(200, &[], &crate::support::mock::models_body());
    let invalid = format!(
        r#"{{"error":{{"message":"Incorrect API key provided: {}. You can find your API key at https://platform.openai.com/account/api-keys.","type":"invalid_request_error","param":null,"code":"invalid_api_key"}}}}"#,
        openai_masked(OPENAI_KEY_2)
    );
    env.openai.push_response(401, &[], &invalid);
    env.openai.push_response(
        401,
        &[],
        r#"{"error":{"message":"OpenAI-Project header should match project for API key","type":"invalid_request_error","param":null,"code":"mismatched_project"}}"#,
    );
    env.openai.set_out_of_credit_keys(&[KEY_4]);
    let (code, rows) = verify_json(&env, "openai");
    assert_eq!(code, 1, "not every key is ok: {rows:#?}");
    let verdicts: Vec<(&str, Option<&str>)> = rows
        .iter()
        .map(|r| (r["verdict"].as_str().unwrap(), r["provider_code"].as_str()))
        .collect();
    assert_eq!(
        verdicts,
        [
            ("ok", None),
            ("rejected", Some("invalid_api_key")),
            ("rejected", Some("mismatched_project")),
            ("exhausted", Some("insufficient_quota")),
        ],
        "{rows:#?}"
    );
    assert!(
        rows[2]["explanation"]
            .as_str()
            .unwrap()
            .contains("another project"),
        "{rows:#?}"
    );
    assert!(
        rows[2]["fix"]
            .as_str()
            .unwrap()
            .contains("[providers.openai] project"),
        "{rows:#?}"
    );
    assert!(
        rows[3]["fix"].as_str().unwrap().contains("billing"),
        "{rows:#?}"
    );
    for row in &rows {
        for field in ["id", "provider", "label", "status", "explanation", "fix"] {
            assert!(row.get(field).is_some(), "{field} missing: {row}");
        }
        assert_eq!(row["provider"], "openai");
    }
    // Every key ok: exit 0.
    let env2 = Env::start().await;
    let (code, rows) = verify_json(&env2, "openai");
    assert_eq!((code, rows.len()), (0, 1), "{rows:#?}");
    assert_eq!(rows[0]["verdict"], "ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn openrouter_keys_are_verified_where_a_key_is_needed() {
    // OpenRouter's /v1/models answers anyone: verify asks /v1/key instead.
    let env = world(Flavor::OpenRouter).start().await;
    env.openai.set_flavor(Flavor::OpenRouter);
    env.openai.set_keys(&[]);
    let (code, rows) = verify_json(&env, "openai");
    assert_eq!(code, 1, "{rows:#?}");
    assert_eq!(rows[0]["verdict"], "rejected", "{rows:#?}");
    assert_eq!(env.openai.last().uri, "/v1/key");
    env.openai.set_keys(&[OPENAI_KEY]);
    let (code, rows) = verify_json(&env, "openai");
    assert_eq!((code, rows[0]["verdict"].as_str()), (0, Some("ok")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn anthropic_keys_are_verified_with_the_api_version_header() {
    let env = world(Flavor::Anthropic).start().await;
    env.openai.set_flavor(Flavor::Anthropic);
    let (code, rows) = verify_json(&env, "openai");
    assert_eq!(
        (code, rows[0]["verdict"].as_str()),
        (0, Some("ok")),
        "{rows:#?}"
    );
    assert_eq!(
        env.openai.last().header("anthropic-version").as_deref(),
        Some("2023-06-01")
    );
    env.openai.set_keys(&[]);
    let (code, rows) = verify_json(&env, "openai");
    assert_eq!(code, 1);
    assert_eq!(rows[0]["provider_code"], "authentication_error");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn xai_rotation_to_a_bad_key_under_load_gives_no_client_error() {
    const BAD: &str = "xai-test-BAD0rotated0key0Qe8Rw1Ut6Io3Pa9Sd";
    let env = std::sync::Arc::new(Env::start().await);
    env.xai.set_flavor(Flavor::Xai);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut clients = Vec::new();
    for _ in 0..6 {
        let (env, stop) = (env.clone(), stop.clone());
        clients.push(tokio::spawn(async move {
            let mut statuses = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let resp = env.server.send(env.chat("grok-3")).await;
                statuses.push((resp.status.as_u16(), resp.text()));
            }
            statuses
        }));
    }
    // Load is flowing: two requests per client on average.
    crate::support::eventually(Duration::from_secs(5), || async {
        (env.xai.hits() >= 12).then_some(())
    })
    .await
    .expect("the load never reached the upstream");
    let kg_env = env.clone();
    let out = tokio::task::spawn_blocking(move || {
        kg_env.kg.register_secret(BAD);
        kg_env
            .kg
            .run_with(&["key", "rotate", "xai", "--no-verify"], Some(BAD), &[])
    })
    .await
    .unwrap();
    out.assert_ok("key rotate xai --no-verify");
    // Long enough for the server to switch and requests to meet the bad key.
    crate::support::eventually(Duration::from_secs(5), || async {
        (env.xai.requests().iter().any(|s| key_of(s) == BAD)).then_some(())
    })
    .await
    .expect("the rotated-in key never reached the upstream");
    // And the load goes on past the rejection, through the fallback key.
    crate::support::eventually(Duration::from_secs(5), || async {
        let seen = env.xai.requests();
        let first_bad = seen.iter().position(|s| key_of(s) == BAD)?;
        let after = seen[first_bad..]
            .iter()
            .filter(|s| key_of(s) == XAI_KEY)
            .count();
        (after >= 12).then_some(())
    })
    .await
    .expect("no load went through the fallback after the rejection");
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut total = 0;
    for client in clients {
        for (status, text) in client.await.unwrap() {
            total += 1;
            assert_eq!(status, 200, "a client saw an error during rotation: {text}");
        }
    }
    assert!(total > 20, "too little load: {total} requests");
    let bad_attempts = env
        .xai
        .requests()
        .iter()
        .filter(|s| key_of(s) == BAD)
        .count();
    assert!(
        bad_attempts <= 6,
        "the rejected key kept being tried: {bad_attempts} times"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn key_list_and_admin_keys_show_the_health_the_server_sees() {
    const KEY_3: &str = "sk-test-oa3-Lm6Tb1Vq8Zr3Wx5Ke7Pn2Dj4Ha0Cu";
    let env = world(Flavor::OpenAi)
        .key("openai", KEY_3, &[])
        .key("openai", OPENAI_KEY_2, &["--fallback"])
        .serve_env("KEYGATE_ADMIN_TOKEN", "admin-token-for-health-test-000")
        .start()
        .await;
    // The pool's two current keys: one out of credit, one refused.
    env.openai.set_keys(&[OPENAI_KEY_2]);
    env.openai.set_out_of_credit_keys(&[OPENAI_KEY]);
    for _ in 0..4 {
        assert_eq!(env.server.send(env.chat("gpt-4o")).await.status, 200);
    }
    let exhausted_id = first_key_id(&env);
    let refused_id = key_id(&env.kg, "openai", KEY_3);
    let healthy_id = key_id(&env.kg, "openai", OPENAI_KEY_2);
    let expected = [
        (exhausted_id.as_str(), "exhausted"),
        (refused_id.as_str(), "suspect"),
        (healthy_id.as_str(), "healthy"),
    ];
    let rows = crate::support::eventually(Duration::from_secs(4), || async {
        let rows = key_list(&env.kg);
        let all = expected.iter().all(|(id, health)| {
            rows.iter()
                .any(|r| r["id"] == *id && r["health"].as_str() == Some(*health))
        });
        all.then_some(rows)
    })
    .await;
    assert!(
        rows.is_some(),
        "key list --json never showed {expected:?}: {:#?}",
        key_list(&env.kg)
    );
    let text = env.kg.run(&["key", "list"]).stdout;
    assert!(text.contains("HEALTH"), "{text}");
    let line = text.lines().find(|l| l.contains(&exhausted_id)).unwrap();
    assert!(line.contains("exhausted"), "{line}");

    let admin = crate::support::client::send_h1(
        env.server.admin,
        Req::get("/admin/keys").bearer("admin-token-for-health-test-000"),
    )
    .await
    .json();
    for (id, health) in expected {
        let row = admin
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["id"] == id)
            .unwrap_or_else(|| panic!("{id} missing from /admin/keys: {admin}"));
        assert_eq!(row["health"], health, "{admin}");
    }
}
