//! Decoy client keys (docs/design.md §16, docs/clients-and-usage.md "Decoy
//! keys"): a `kg_` key issued with `client add --decoy` is never valid; the
//! request that presents it is answered byte for byte as an unknown key is,
//! counted as `unknown`, never reaches an upstream, and is recorded for the
//! operator (`keygate_decoy_uses_total{client}`, one warning line).

use crate::support::metrics::metric_value;
use crate::support::{chat_body, Env, Keygate, KeygateBuilder, Req};

/// The admin token of these tests (obviously fake).
const ADMIN_TOKEN: &str = "adm-test-Decoy4Hq8Lp2Vn6Rc1Wd9Kz";

/// A chat request as a scraper would send it: the key, a user agent with a
/// control character, a query string.
fn scraper(key: &str) -> Req {
    Req::post("/v1/chat/completions?note=found-in-env")
        .bearer(key)
        .header("user-agent", "curl/8.5\tscanner")
        .json(&chat_body("gpt-4o"))
}

/// Every header but `Date`, sorted, as text.
fn headers_but_date(resp: &crate::support::client::Resp) -> Vec<(String, String)> {
    let mut headers: Vec<(String, String)> = resp
        .headers
        .iter()
        .filter(|(name, _)| *name != http::header::DATE)
        .map(|(name, value)| {
            (
                name.to_string(),
                String::from_utf8_lossy(value.as_bytes()).into_owned(),
            )
        })
        .collect();
    headers.sort();
    headers
}

async fn metric(env: &Env, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let page = env.server.admin_get("/metrics").await.text();
    metric_value(&page, name, labels)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decoy_is_refused_byte_for_byte_as_an_unknown_key_and_recorded() {
    let env = Env::start().await;
    let decoy = env.kg.add_decoy("old-env-file");
    // A well-formed key this keygate never issued: the unknown key.
    let other = Keygate::new(&KeygateBuilder::new());
    other.vault_init();
    let unknown = other.add_client("elsewhere");
    env.kg.register_secret(&unknown);
    env.wait_until_live("client add --decoy").await;

    let refused = env.server.send(scraper(&unknown)).await;
    let trapped = env.server.send(scraper(&decoy)).await;
    refused.assert_keygate_error(401, "invalid_client_key");
    assert_eq!(trapped.status, refused.status);
    assert_eq!(headers_but_date(&trapped), headers_but_date(&refused));
    assert_eq!(trapped.body, refused.body, "{}", trapped.text());
    assert_eq!(
        env.openai.hits() + env.xai.hits(),
        0,
        "a decoy must never reach an upstream"
    );

    // Counted once, by name; the auth metric says `unknown` for both.
    let uses = metric(
        &env,
        "keygate_decoy_uses_total",
        &[("client", "old-env-file")],
    )
    .await;
    assert_eq!(uses, Some(1.0));
    let unknowns = metric(
        &env,
        "keygate_client_auth_failures_total",
        &[("reason", "unknown")],
    )
    .await;
    assert_eq!(unknowns, Some(2.0));
    // One warning line with the decoy's name, where it came from and what it
    // asked for (the path without its query string, control characters
    // replaced); the key itself is checked against every log line by the
    // leak check when `env` drops.
    let line = env.server.wait_for_log("decoy client key presented").await;
    for field in [
        "old-env-file",
        "127.0.0.1:",
        "/v1/chat/completions",
        "curl/8.5?scanner",
    ] {
        assert!(line.contains(field), "no `{field}` in: {line}");
    }
    assert!(!line.contains("found-in-env"), "{line}");
    let access_lines = env
        .server
        .stderr()
        .lines()
        .filter(|l| {
            l.contains(" keygate::proxy: request ") && l.contains("auth_failure=\"unknown\"")
        })
        .count();
    assert_eq!(access_lines, 2, "{}", env.server.stderr());
    // The event, with where the key came from, in the outbox.
    let event = crate::support::eventually(std::time::Duration::from_secs(5), || async {
        let out = env.kg.run(&["events", "--type", "decoy_used", "--json"]);
        let events: Vec<serde_json::Value> = serde_json::from_str(out.stdout.trim()).ok()?;
        events.into_iter().next()
    })
    .await
    .expect("no decoy_used event");
    assert_eq!(event["client"], "old-env-file");
    assert!(
        event["remote_addr"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:"),
        "{event}"
    );
    assert_eq!(event["path"], "/v1/chat/completions");
    assert!(
        event["user_agent"].as_str().unwrap().contains("scanner"),
        "{event}"
    );
    // The real client is unaffected.
    let ok = env.server.send(env.chat("gpt-4o")).await;
    assert_eq!(ok.status, 200, "{}", ok.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decoy_is_marked_in_client_list_and_can_be_revoked() {
    let env = Env::setup()
        .serve_env("KEYGATE_ADMIN_TOKEN", ADMIN_TOKEN)
        .start()
        .await;
    env.kg.register_secret(ADMIN_TOKEN);
    let decoy = env.kg.add_decoy("ci-unused");
    let listed = env.kg.run(&["client", "list"]);
    listed.assert_ok("client list");
    let row = |name: &str| {
        listed
            .stdout
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("no {name} in: {}", listed.stdout))
            .to_owned()
    };
    assert!(row("ci-unused").contains("DECOY"), "{}", listed.stdout);
    assert!(!row("app").contains("DECOY"), "{}", listed.stdout);
    let json = env.kg.run(&["client", "list", "--json"]);
    json.assert_ok("client list --json");
    let rows: serde_json::Value = serde_json::from_str(json.stdout.trim()).unwrap();
    let decoy_of = |rows: &serde_json::Value, name: &str| {
        rows.as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == name)
            .map(|r| r["decoy"].clone())
    };
    assert_eq!(decoy_of(&rows, "ci-unused"), Some(true.into()));
    assert_eq!(decoy_of(&rows, "app"), Some(false.into()));
    let admin = env
        .server
        .send_admin(Req::get("/admin/clients").bearer(ADMIN_TOKEN))
        .await;
    assert_eq!(admin.status, 200, "{}", admin.text());
    assert_eq!(decoy_of(&admin.json(), "ci-unused"), Some(true.into()));

    // A decoy has no limits and nothing to rotate.
    env.kg
        .run(&["client", "limits", "ci-unused", "--rpm", "5"])
        .assert_code(2, "client limits on a decoy");
    env.kg
        .run(&["client", "add", "other", "--decoy", "--rpm", "5"])
        .assert_code(2, "client add --decoy --rpm");

    env.wait_until_live("client add --decoy").await;
    env.server
        .send(scraper(&decoy))
        .await
        .assert_keygate_error(401, "invalid_client_key");
    env.kg
        .run(&["client", "revoke", "ci-unused"])
        .assert_ok("client revoke of a decoy");
    env.wait_until_live("client revoke").await;
    let uses = || metric(&env, "keygate_decoy_uses_total", &[("client", "ci-unused")]);
    let before = uses().await;
    assert_eq!(before, Some(1.0));
    let resp = env.server.send(scraper(&decoy)).await;
    resp.assert_keygate_error(401, "invalid_client_key");
    assert!(resp.text().contains("was revoked"), "{}", resp.text());
    assert_eq!(uses().await, before, "a revoked decoy is no longer a decoy");
    assert_eq!(env.openai.hits() + env.xai.hits(), 0);
}
