//! The status page (`GET /` on the admin listener; README "Status page"):
//! one self-contained page with a Content-Security-Policy that allows only
//! its own inline script and style (by hash) and no framing, no external
//! asset and no data of its own; in headless Chromium (when installed —
//! `.ci/run` installs it and playwright-core) it asks for the token, shows
//! the keys with their states and health after a rotation and a rejected
//! key (its last refusal with the provider's code, the rotation in flight,
//! the hour's refusal and fallback sparklines, the last reload), refuses a
//! wrong token, and explains an admin API that is off; the JSON behind the
//! sparklines and the reload line, including a vault that stops opening.

use std::process::Command;

use base64::Engine;
use sha2::{Digest, Sha256};

use crate::support::client::Req;
use crate::support::mock::{AuthStyle, Mock};
use crate::support::{chat_body, Keygate, KeygateBuilder, OPENAI_KEY, OPENAI_KEY_2};

/// The admin token of these tests (obviously fake).
const TOKEN: &str = "adm-test-Status4Hx8Qp2Lw6Zn1";

fn inline<'a>(html: &'a str, open: &str, close: &str) -> &'a str {
    let start = html.find(open).expect("inline block") + open.len();
    let end = start + html[start..].find(close).expect("block end");
    &html[start..end]
}

fn hash(text: &str) -> String {
    format!(
        "'sha256-{}'",
        base64::engine::general_purpose::STANDARD.encode(Sha256::digest(text.as_bytes()))
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_is_self_contained_and_locked_down() {
    let kg = Keygate::new(&KeygateBuilder::new().provider(
        "openai",
        &crate::support::mock::closed_port_url(),
        "bearer",
    ));
    kg.vault_init();
    kg.add_key("openai", OPENAI_KEY);
    let server = kg.serve();
    let resp = server.admin_get("/").await;
    assert_eq!(resp.status, 200);
    let header = |name: &str| {
        resp.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    assert!(header("content-type").starts_with("text/html"));
    assert_eq!(header("x-frame-options"), "DENY");
    let policy = header("content-security-policy");
    let html = resp.text();
    let script = inline(&html, "<script>", "</script>");
    let style = inline(&html, "<style>", "</style>");
    assert!(policy.contains("default-src 'none'"), "{policy}");
    assert!(
        policy.contains(&format!("script-src {}", hash(script))),
        "{policy}"
    );
    assert!(
        policy.contains(&format!("style-src {}", hash(style))),
        "{policy}"
    );
    assert!(policy.contains("frame-ancestors 'none'"), "{policy}");
    assert!(!policy.contains("unsafe-inline"), "{policy}");
    // No external asset, and the token only ever in a header.
    for needle in ["src=\"http", "href=\"http", "<script src", "<link"] {
        assert!(!html.contains(needle), "the page loads `{needle}`");
    }
    assert!(script.contains("sessionStorage") && script.contains("Authorization"));
    assert!(!script.contains("?token") && !script.contains("&token"));
    // The page carries no data: no key id, fingerprint or secret in it.
    let keys = kg.run(&["key", "list", "--json"]).stdout;
    let id = keys
        .split("\"id\":\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap()
        .to_owned();
    assert!(!html.contains(&id));
}

/// Runs `examples`-style browser steps in headless Chromium through
/// playwright-core; `None` when the browser or the driver is not installed.
fn browser(script: &str, env: &[(&str, String)]) -> Result<std::process::Output, &'static str> {
    let chromium = ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .ok_or("chromium (apt-get install chromium)")?;
    let driver = Command::new("node")
        .args(["-e", "require('playwright-core')"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !driver {
        return Err("node with playwright-core (npm install playwright-core; NODE_PATH)");
    }
    let mut command = Command::new("node");
    command.arg("-e").arg(script).env("CHROMIUM", chromium);
    for (k, v) in env {
        command.env(k, v);
    }
    Ok(command.output().expect("node"))
}

const BROWSER_STEPS: &str = r#"
const { chromium } = require('playwright-core');
(async () => {
  const browser = await chromium.launch({ executablePath: process.env.CHROMIUM, args: ['--no-sandbox'] });
  const page = await browser.newPage();
  const errors = [];
  // A blocked inline script or style, or any other policy violation, shows here.
  page.on('console', (m) => { if (m.type() === 'error' && /Content Security Policy|Refused to/.test(m.text())) errors.push(m.text()); });
  page.on('pageerror', (e) => errors.push(String(e)));
  await page.goto(process.env.URL);
  await page.fill('#token', 'wrong-token');
  await page.click('button[type=submit]');
  await page.waitForSelector('#message:not([hidden])');
  const refused = await page.textContent('#message');
  const shownBeforeLogin = await page.isVisible('#data');
  await page.fill('#token', process.env.TOKEN);
  await page.click('button[type=submit]');
  await page.waitForSelector('#keys tr[data-key]');
  const rows = await page.$$eval('#keys tr[data-key]', (trs) => trs.map((tr) => [...tr.children].map((td) => td.textContent)));
  const clients = await page.$$eval('#clients tr[data-client]', (trs) => trs.map((tr) => [...tr.children].map((td) => td.textContent)));
  const providers = await page.$$eval('#providers tr[data-provider]', (trs) => trs.map((tr) => [...tr.children].map((td) => td.textContent)));
  const usableClass = await page.$$eval('#providers tr[data-provider]', (trs) => Object.fromEntries(trs.map((tr) => [tr.dataset.provider, tr.children[2].className])));
  const events = await page.$$eval('#events tr[data-event]', (trs) => trs.map((tr) => [...tr.children].map((td) => td.textContent)));
  const meta = await page.textContent('#meta');
  await page.screenshot({ path: process.env.SHOT, fullPage: true });
  console.log(JSON.stringify({ refused, shownBeforeLogin, rows, clients, providers, usableClass, events, meta, errors }));
  await browser.close();
})().catch((e) => { console.error(e); process.exit(1); });
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_a_real_browser_the_page_shows_every_key_and_refuses_a_wrong_token() {
    // A rotation (the old key previous, in its grace) and a rejected key.
    let mock = Mock::start(&[OPENAI_KEY], AuthStyle::Bearer).await;
    let kg = Keygate::new(&KeygateBuilder::new().provider("openai", &mock.url(), "bearer"));
    kg.register_secret(TOKEN);
    kg.vault_init();
    kg.add_key("openai", OPENAI_KEY);
    kg.run_with(
        &["key", "rotate", "openai", "--no-verify", "--grace", "1h"],
        Some(OPENAI_KEY_2),
        &[],
    )
    .assert_ok("key rotate");
    let client = kg.add_client("app");
    kg.run(&["client", "limits", "app", "--rpm", "60"])
        .assert_ok("client limits");
    let server = kg.serve_with(&[("KEYGATE_ADMIN_TOKEN", TOKEN)]);
    let minute = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            / 60
    };
    let sent_in = minute();
    let resp = server
        .send(
            Req::post("/v1/chat/completions")
                .bearer(&client)
                .json(&chat_body("gpt-4o")),
        )
        .await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    let shot = kg.dir().join("status.png");
    let url = format!("http://{}/", server.admin);
    let env = [
        ("URL", url),
        ("TOKEN", TOKEN.to_owned()),
        ("SHOT", shot.display().to_string()),
    ];
    let out = tokio::task::spawn_blocking(move || browser(BROWSER_STEPS, &env))
        .await
        .unwrap();
    let out = match out {
        Ok(out) => out,
        Err(missing) => {
            crate::support::skips::skip_unless_required(
                "status_page::in_a_real_browser_the_page_shows_every_key_and_refuses_a_wrong_token",
                missing,
                "KEYGATE_REQUIRE_BROWSER",
            );
            return;
        }
    };
    // rpm counts per clock minute: the request is in the page's count unless
    // the browser read it in the next minute.
    let same_minute = minute() == sent_in;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    kg.record("browser", stdout.clone());
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let seen: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert!(
        seen["refused"]
            .as_str()
            .unwrap()
            .contains("Wrong admin token"),
        "{seen}"
    );
    assert_eq!(seen["shownBeforeLogin"], false);
    let rows = seen["rows"].as_array().unwrap();
    let state = |s: &str| rows.iter().any(|r| r[3] == s);
    assert!(state("current") && state("previous"), "{seen}");
    let rejected = rows
        .iter()
        .find(|r| r[4] == "suspect")
        .unwrap_or_else(|| panic!("the rejected key shows as suspect: {seen}"));
    assert!(
        rejected[9]
            .as_str()
            .unwrap()
            .starts_with("401 invalid_api_key (rejected) "),
        "its last refusal with the provider's code: {seen}"
    );
    assert!(
        rows.iter().any(|r| r[4] == "healthy" && r[9] == "-"),
        "the key that works has none: {seen}"
    );
    assert!(
        rows.iter().any(|r| r[7] != "-"),
        "a grace countdown: {seen}"
    );
    // The CLI's rotation and the refusal of the request are the last events.
    let events = seen["events"].as_array().unwrap();
    let event = |kind: &str| events.iter().find(|e| e[1] == kind);
    let rotated = event("key_rotated").unwrap_or_else(|| panic!("{seen}"));
    assert!(
        rotated[2].as_str().unwrap().contains("provider openai"),
        "{seen}"
    );
    assert!(event("key_rejected").is_some(), "{seen}");
    let clients = seen["clients"].as_array().unwrap();
    assert_eq!(clients.len(), 1, "{seen}");
    assert_eq!(clients[0][0], "app");
    let rpm = clients[0][2].as_str().unwrap_or_default();
    assert!(
        rpm == "1/60 rpm" || (!same_minute && rpm == "0/60 rpm"),
        "how close the client is to its limit: {seen}"
    );
    // Its spend (gpt-4o is priced: $0.0001 once the ledger has the request).
    let spend = clients[0][7].as_str().unwrap_or_default();
    assert!(spend == "$0.0001" || spend == "$0.0000", "{seen}");
    let providers = seen["providers"].as_array().unwrap();
    let openai = providers
        .iter()
        .find(|p| p[0] == "openai (default)")
        .unwrap_or_else(|| panic!("{seen}"));
    assert_eq!(
        (&openai[2], &openai[3]),
        (&serde_json::json!("2"), &serde_json::json!("no")),
        "{seen}"
    );
    // xai and anthropic come from the embedded defaults and were never set
    // up: grey "not set up", not a red 0 like a provider that lost its keys.
    for offered in ["xai", "anthropic"] {
        let row = providers
            .iter()
            .find(|p| p[0] == offered)
            .unwrap_or_else(|| panic!("{offered}: {seen}"));
        assert_eq!(row[2], "not set up", "{seen}");
        assert_eq!(seen["usableClass"][offered], "num not-set-up", "{seen}");
    }
    assert_eq!(seen["usableClass"]["openai"], "num", "{seen}");
    let rotation = openai[4].as_str().unwrap();
    assert!(
        rotation.contains(" in grace, ends in 59m") || rotation.contains(" in grace, ends in 1h"),
        "the rotation in flight: {seen}"
    );
    assert_eq!(
        (&openai[5], &openai[6]),
        (
            &serde_json::json!("refusals: 1 in the last hour"),
            &serde_json::json!("fallbacks: 1 in the last hour")
        ),
        "the sparklines count the one rejection and its fallback: {seen}"
    );
    let meta = seen["meta"].as_str().unwrap();
    assert!(
        meta.contains("vault generation ") && meta.contains("last reload") && meta.contains(": ok"),
        "the vault generation and the last reload: {seen}"
    );
    assert_eq!(
        seen["errors"],
        serde_json::json!([]),
        "console errors (a CSP violation shows here)"
    );
    let png = std::fs::read(&shot).expect("a screenshot");
    // KEYGATE_STATUS_SHOT=docs/status-page.png keeps a copy (README's picture).
    if let Ok(keep) = std::env::var("KEYGATE_STATUS_SHOT") {
        std::fs::write(keep, &png).unwrap();
    }
    assert!(png.len() > 1000 && png.starts_with(b"\x89PNG"), "not a PNG");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_admin_api_off_the_page_says_how_to_turn_it_on() {
    let kg = Keygate::new(&KeygateBuilder::new().provider(
        "openai",
        &crate::support::mock::closed_port_url(),
        "bearer",
    ));
    kg.vault_init();
    let server = kg.serve();
    // What the page's script reads when it asks.
    let resp = server
        .send_admin(Req::get("/admin/keys").bearer("anything"))
        .await;
    assert_eq!(resp.status, 404);
    assert_eq!(resp.json()["error"]["code"], "admin_api_off");
    let html = server.admin_get("/").await.text();
    assert!(
        html.contains("The admin API is off: set KEYGATE_ADMIN_TOKEN"),
        "the page explains it"
    );
    assert!(
        html.contains("No upstream key yet"),
        "and the empty vault's next step"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_json_behind_the_sparklines_and_the_reload_line() {
    let mock = Mock::start(&[OPENAI_KEY], AuthStyle::Bearer).await;
    let kg = Keygate::new(&KeygateBuilder::new().provider("openai", &mock.url(), "bearer"));
    kg.register_secret(TOKEN);
    kg.vault_init();
    kg.add_key("openai", OPENAI_KEY);
    kg.run_with(
        &["key", "rotate", "openai", "--no-verify", "--grace", "1h"],
        Some(OPENAI_KEY_2),
        &[],
    )
    .assert_ok("key rotate");
    let client = kg.add_client("app");
    let server = kg.serve_with(&[("KEYGATE_ADMIN_TOKEN", TOKEN)]);
    let admin = |path: &'static str| {
        let server = &server;
        async move {
            let resp = server.send_admin(Req::get(path).bearer(TOKEN)).await;
            assert_eq!(resp.status, 200, "{path}: {}", resp.text());
            resp.json()
        }
    };
    let quiet = admin("/admin/activity").await;
    let sum = |v: &serde_json::Value, series: &str| -> u64 {
        v["providers"]["openai"][series]
            .as_array()
            .unwrap_or_else(|| panic!("{v}"))
            .iter()
            .map(|n| n.as_u64().unwrap())
            .sum()
    };
    assert_eq!(quiet["minutes"], 60);
    assert_eq!(
        quiet["providers"]["openai"]["refusals"]
            .as_array()
            .unwrap()
            .len(),
        60
    );
    assert_eq!((sum(&quiet, "refusals"), sum(&quiet, "fallbacks")), (0, 0));

    // Three requests: the first finds the new key rejected and falls back;
    // the others skip the suspect key, so nothing more is refused.
    for _ in 0..3 {
        let resp = server
            .send(
                Req::post("/v1/chat/completions")
                    .bearer(&client)
                    .json(&chat_body("gpt-4o")),
            )
            .await;
        assert_eq!(resp.status, 200, "{}", resp.text());
    }
    let busy = admin("/admin/activity").await;
    assert_eq!(
        (sum(&busy, "refusals"), sum(&busy, "fallbacks")),
        (1, 1),
        "{busy}"
    );
    let last = busy["providers"]["openai"]["refusals"][59]
        .as_u64()
        .unwrap()
        + busy["providers"]["openai"]["refusals"][58]
            .as_u64()
            .unwrap();
    assert_eq!(
        last, 1,
        "counted in this minute (or the one before, at a boundary): {busy}"
    );

    let keys = admin("/admin/keys").await;
    let refused: Vec<_> = keys
        .as_array()
        .unwrap()
        .iter()
        .filter(|k| !k["last_refusal"].is_null())
        .collect();
    assert_eq!(refused.len(), 1, "{keys}");
    assert_eq!(refused[0]["last_refusal"]["status"], 401);
    assert_eq!(refused[0]["last_refusal"]["code"], "invalid_api_key");
    assert_eq!(refused[0]["last_refusal"]["reason"], "rejected");
    let providers = admin("/admin/providers").await;
    let openai = providers
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "openai")
        .unwrap();
    assert_eq!(openai["rotation"]["stage"], "grace", "{providers}");
    let set_up = |name: &str| {
        providers
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .map(|p| p["set_up"].clone())
    };
    assert_eq!(
        (set_up("openai"), set_up("xai"), set_up("anthropic")),
        (Some(true.into()), Some(false.into()), Some(false.into())),
        "only the default route and providers the operator configured or gave keys are set up: {providers}"
    );

    // A vault file that does not open: the last reload says so, the
    // generation served stays, and the next good write clears it.
    let status = admin("/admin/status").await;
    let serving = status["vault_generation"].as_u64().unwrap();
    assert_eq!(status["last_reload"]["result"], "ok", "{status}");
    assert!(status["cluster"].is_null());
    let vault = kg.vault_path();
    let good = std::fs::read(&vault).unwrap();
    let mut flipped = good.clone();
    let at = flipped.len() - 24;
    flipped[at] ^= 1;
    std::fs::write(&vault, &flipped).unwrap();
    let failed = crate::support::eventually(std::time::Duration::from_secs(5), || async {
        let status = admin("/admin/status").await;
        (status["last_reload"]["result"] == "error").then_some(status)
    })
    .await
    .expect("the failed reload shows in /admin/status");
    assert_eq!(failed["vault_generation"].as_u64(), Some(serving));
    assert_eq!(failed["last_reload"]["generation"].as_u64(), Some(serving));
    assert!(
        !failed["last_reload"]["error"].as_str().unwrap().is_empty(),
        "{failed}"
    );
    std::fs::write(&vault, &good).unwrap();
    kg.add_client("app2");
    let healed = crate::support::eventually(std::time::Duration::from_secs(5), || async {
        let status = admin("/admin/status").await;
        (status["last_reload"]["result"] == "ok").then_some(status)
    })
    .await
    .expect("a good write clears it");
    assert!(healed["vault_generation"].as_u64().unwrap() > serving);
}
