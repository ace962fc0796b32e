//! Management credentials (docs/design.md §2 `admin-key`, §12): stored in the
//! vault apart from the inference keys, listed by fingerprint only, replaced by
//! a second `set`, removed; never in a CLI output, a log line at TRACE,
//! `/metrics`, an admin answer, nor on any request an inference upstream
//! receives. Older vaults open; the vault's failure modes stay clear.

use base64::Engine;

use crate::support::client::{send_h1, Resp};
use crate::support::config::toml_string;
use crate::support::mock::{AuthStyle, Mock};
use crate::support::{
    chat_body, find_leaks, Keygate, KeygateBuilder, Req, Server, OPENAI_KEY, RELOAD_WAIT, XAI_KEY,
};

/// An OpenAI admin key and an xAI management key (obviously fake).
const OPENAI_ADMIN: &str = "sk-admin-test-Hu3Kd9Wq5Lm1Zx7Rv2Tb8Ny4Pc6";
const OPENAI_ADMIN_2: &str = "sk-admin-test-Gm6Vx2Qj8Ks4Dw0Fy5Lr9Te3Za1";
const XAI_ADMIN: &str = "xai-mgmt-test-Pn5Ws1Ey7Gh3Jk9Ub2Oc4Xl6Vq8";
/// The admin token the serve test runs with (obviously fake).
const TOKEN: &str = "kgadm-test-Bq7Yt3Mw9Ke5Rx1Ls8Hd2Vn4Ga6";

const WRONG_KEY_MSG: &str = "cannot decrypt vault: wrong master key";
const CORRUPT_MSG: &str = "vault file modified or corrupted";

/// A vault written by keygate before management credentials existed (main at
/// dce7798: `vault init`, `key add openai --label old` with [`OPENAI_KEY`],
/// `client add app`), and its master key file.
const OLD_VAULT_B64: &str = "S0dWQVVMVAAAAQAAAAAAAAAAAAMAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAHm1zUXlY65PC0YKOv3LoL6DcAhV6avB2fTI1XRRCN9vKhCqf+sj+uw2IlBAl6uMJcP8y/5k3YfI9UF4q3Gvj3OxSWXI4fIvVO5A6MD8QP2aXwYpGD82kvErJQSVncGgm6kIK12BmQLc5dcuSVI+nv4RToVa01F92hoJJzbyyYdc6p96pb0uoNlG0vwTEj8ycspXL8prQgdMpwSsV28vZfnCABtindM8jn2cAw55n+Y88BHi4/+dboteaICKAayc3QNNEJUeqkQS7o5ffkcJA3uFKK5h9Us3L/vzL4MSgunTPJsA2doq/Ez139TqJqE5aIyHPO3n+6sYxnOgHyjyheM4Jc27NebsjTauZ6lftt1XakDcfuWZnGmMLPLkMEMh1M5TQdVLdQZelVjQFPzdJN+z79sThHXpBuvEfoMRGMB+xdPFQfm6n3IYElQCelxZ+Satwb4HiWAcSvKWQ1QK2o32WGDj3q86BJZ8DSHoz0q6bi27liqQTdZCnUL/JrN3+0KZOGTEsEe/OtqOYYjXatgaeMcOZhFDgJ+EHTU1gMb2QM1jLiV7qgy5WZuLoR5WTJa3feSoVAQ73W6D83RwUoPDetqO0HEAVwGPkof3+eIQlMf7FIPHKrfDuCA1viw2Fgd17spYgocuYj+Ky/LdcLDbS7c1wqznSJ1Rfks7boQSswyuFzowcKq5JObQY9ybOqJIBjzIWcAN1eEoN1OgcgHBcKuT";
const OLD_MASTER_KEY: &str = "RcgVDktRiXrDIKiz51/bLTqi9tR8GDny4ppN6ZeqU9Q=";

/// `[providers.NAME.admin]` for openai and xai, management APIs at `url`.
fn admin_tables(url: &str) -> String {
    let url = toml_string(url);
    format!(
        "[providers.openai.admin]\nproject = \"proj_test\"\nurl = {url}\n\n\
         [providers.xai.admin]\nteam = \"team-test\"\nurl = {url}\n"
    )
}

/// A keygate (no server) with both admin tables and an initialised vault.
fn keygate() -> Keygate {
    let kg = Keygate::new(&KeygateBuilder::new().extra(&admin_tables("http://127.0.0.1:9")));
    kg.vault_init();
    kg
}

/// `printf SECRET | keygate admin-key set PROVIDER`, registering the secret.
fn set(kg: &Keygate, provider: &str, secret: &str) -> String {
    kg.register_secret(secret);
    let out = kg.run_with(&["admin-key", "set", provider], Some(secret), &[]);
    out.assert_ok("admin-key set");
    out.stdout.clone()
}

fn list_json(kg: &Keygate) -> Vec<serde_json::Value> {
    let out = kg.run(&["admin-key", "list", "--json"]);
    out.assert_ok("admin-key list --json");
    serde_json::from_str::<serde_json::Value>(&out.stdout)
        .unwrap_or_else(|e| panic!("admin-key list --json is not JSON ({e}): {}", out.stdout))
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn row<'a>(rows: &'a [serde_json::Value], provider: &str) -> &'a serde_json::Value {
    rows.iter()
        .find(|r| r["provider"] == provider)
        .unwrap_or_else(|| panic!("no {provider} row in {rows:?}"))
}

/// The `sk-…wxyz` label keygate shows for a secret.
fn fingerprint(secret: &str) -> String {
    format!("{}…{}", &secret[..3], &secret[secret.len() - 4..])
}

fn key_count(kg: &Keygate) -> usize {
    let out = kg.run(&["key", "list", "--json"]);
    out.assert_ok("key list --json");
    serde_json::from_str::<serde_json::Value>(&out.stdout)
        .expect("key list --json")
        .as_array()
        .map_or(0, Vec::len)
}

#[test]
fn set_list_replace_remove_round_trip() {
    let kg = keygate();
    kg.add_key("openai", OPENAI_KEY);

    let stdout = set(&kg, "openai", OPENAI_ADMIN);
    assert!(stdout.contains(&fingerprint(OPENAI_ADMIN)), "{stdout}");
    let rows = list_json(&kg);
    let openai = row(&rows, "openai");
    assert_eq!(openai["fingerprint"], fingerprint(OPENAI_ADMIN));
    assert!(openai["added"].as_u64().is_some_and(|t| t > 0), "{openai}");
    assert!(openai["last_used"].is_null(), "{openai}");
    assert_eq!(openai["admin_configured"], true);
    // xai has its admin table but no credential yet.
    assert!(row(&rows, "xai")["fingerprint"].is_null(), "{rows:?}");
    // The inference keys are untouched: it is a record kind of its own.
    assert_eq!(key_count(&kg), 1, "a management credential is not a key");
    let table = kg.run(&["admin-key", "list"]);
    table.assert_ok("admin-key list");
    assert!(
        table.stdout.contains("openai") && table.stdout.contains(&fingerprint(OPENAI_ADMIN)),
        "{}",
        table.stdout
    );

    // A second `set` replaces, and says so.
    let stdout = set(&kg, "openai", OPENAI_ADMIN_2);
    assert!(
        stdout.contains("replacing") && stdout.contains(&fingerprint(OPENAI_ADMIN)),
        "{stdout}"
    );
    let rows = list_json(&kg);
    assert_eq!(
        rows.iter().filter(|r| r["provider"] == "openai").count(),
        1,
        "at most one per provider: {rows:?}"
    );
    assert_eq!(
        row(&rows, "openai")["fingerprint"],
        fingerprint(OPENAI_ADMIN_2)
    );

    set(&kg, "xai", XAI_ADMIN);
    kg.run(&["admin-key", "remove", "openai"])
        .assert_ok("admin-key remove");
    let rows = list_json(&kg);
    assert!(row(&rows, "openai")["fingerprint"].is_null(), "{rows:?}");
    assert_eq!(row(&rows, "xai")["fingerprint"], fingerprint(XAI_ADMIN));
    let again = kg.run(&["admin-key", "remove", "openai"]);
    again.assert_code(2, "admin-key remove of nothing");
    assert!(
        again.stderr.contains("no management credential"),
        "{}",
        again.stderr
    );
    assert_eq!(key_count(&kg), 1);
}

#[test]
fn bad_input_is_refused_with_exit_2_and_nothing_written() {
    let kg = keygate();
    kg.add_key("openai", OPENAI_KEY);
    kg.register_secret(OPENAI_ADMIN);
    let before = std::fs::read(kg.vault_path()).expect("read vault");

    let out = kg.run_with(&["admin-key", "set", "groq"], Some(OPENAI_ADMIN), &[]);
    out.assert_code(2, "admin-key set of an unknown provider");
    assert!(
        out.stderr.contains("unknown provider `groq`")
            && out.stderr.contains("configured providers are")
            && out.stderr.contains("openai"),
        "{}",
        out.stderr
    );
    let out = kg.run(&["admin-key", "remove", "groq"]);
    out.assert_code(2, "admin-key remove of an unknown provider");
    assert!(
        out.stderr.contains("unknown provider `groq`"),
        "{}",
        out.stderr
    );

    for (stdin, what) in [
        ("", "empty stdin"),
        ("sk-admin two words", "a space"),
        (OPENAI_KEY, "an inference key"),
    ] {
        let out = kg.run_with(&["admin-key", "set", "openai"], Some(stdin), &[]);
        out.assert_code(2, what);
    }
    assert_eq!(
        std::fs::read(kg.vault_path()).expect("read vault"),
        before,
        "a refused command must not write the vault"
    );
    // And the help of every admin-key command (in the leak check like all output).
    for args in [
        &["admin-key", "--help"][..],
        &["admin-key", "set", "--help"],
        &["admin-key", "list", "--help"],
        &["admin-key", "remove", "--help"],
        &["--help"],
    ] {
        kg.run(args).assert_ok("--help");
    }
}

#[test]
fn a_vault_written_before_admin_keys_opens_and_takes_one() {
    let kg = Keygate::new(&KeygateBuilder::new().extra(&admin_tables("http://127.0.0.1:9")));
    let b64 = base64::engine::general_purpose::STANDARD;
    std::fs::write(kg.vault_path(), b64.decode(OLD_VAULT_B64).unwrap()).unwrap();
    std::fs::write(kg.master_key_path(), format!("{OLD_MASTER_KEY}\n")).unwrap();
    for path in [kg.vault_path(), kg.master_key_path()] {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    kg.register_secret(OLD_MASTER_KEY);
    kg.register_secret(OPENAI_KEY);

    let rows = list_json(&kg);
    assert!(
        rows.iter().all(|r| r["fingerprint"].is_null()),
        "an old vault holds no management credential: {rows:?}"
    );
    set(&kg, "openai", OPENAI_ADMIN);
    // Everything the old vault held is still there.
    let out = kg.run(&["key", "list", "--json"]);
    out.assert_ok("key list");
    let keys: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(keys[0]["label"], "old", "{keys}");
    assert_eq!(keys[0]["state"], "current", "{keys}");
    let out = kg.run(&["client", "list", "--json"]);
    out.assert_ok("client list");
    assert!(out.stdout.contains("\"app\""), "{}", out.stdout);
    assert_eq!(
        row(&list_json(&kg), "openai")["fingerprint"],
        fingerprint(OPENAI_ADMIN)
    );
}

#[test]
fn wrong_master_key_and_tampered_vault_fail_clearly_and_touch_nothing() {
    let kg = keygate();
    set(&kg, "openai", OPENAI_ADMIN);
    let before = std::fs::read(kg.vault_path()).expect("read vault");
    let wrong = base64::engine::general_purpose::STANDARD.encode([0x5au8; 32]);
    let env = [("KEYGATE_MASTER_KEY", wrong.as_str())];
    kg.register_secret(OPENAI_ADMIN_2);
    let commands: [(&[&str], Option<&str>); 3] = [
        (&["admin-key", "set", "openai"], Some(OPENAI_ADMIN_2)),
        (&["admin-key", "list", "--json"], None),
        (&["admin-key", "remove", "openai"], None),
    ];
    for (args, stdin) in commands {
        let out = kg.run_with(args, stdin, &env);
        out.assert_code(1, "admin-key with the wrong master key");
        assert!(
            out.stderr.contains(WRONG_KEY_MSG),
            "{args:?}: {}",
            out.stderr
        );
    }
    assert_eq!(std::fs::read(kg.vault_path()).unwrap(), before);

    let mut flipped = before.clone();
    let at = flipped.len() - 20;
    flipped[at] ^= 0x01;
    std::fs::write(kg.vault_path(), &flipped).unwrap();
    for (args, stdin) in commands {
        let out = kg.run_with(args, stdin, &[]);
        out.assert_code(1, "admin-key on a modified vault");
        assert!(out.stderr.contains(CORRUPT_MSG), "{args:?}: {}", out.stderr);
        assert!(
            !out.stderr.contains(WRONG_KEY_MSG),
            "{args:?}: {}",
            out.stderr
        );
    }
    assert_eq!(
        std::fs::read(kg.vault_path()).unwrap(),
        flipped,
        "left untouched"
    );
    std::fs::write(kg.vault_path(), &before).unwrap();
    assert_eq!(
        row(&list_json(&kg), "openai")["fingerprint"],
        fingerprint(OPENAI_ADMIN)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_refuses_a_vault_older_than_the_one_served() {
    let kg = keygate();
    kg.add_key("openai", OPENAI_KEY);
    kg.add_key("xai", XAI_KEY);
    let older = std::fs::read(kg.vault_path()).unwrap();
    set(&kg, "openai", OPENAI_ADMIN);
    let mut server = kg.serve();
    server.terminate();
    std::fs::write(kg.vault_path(), &older).unwrap();
    kg.register_secret(OPENAI_ADMIN_2);
    let out = kg.run_with(&["admin-key", "set", "openai"], Some(OPENAI_ADMIN_2), &[]);
    out.assert_code(1, "admin-key set on a rolled-back vault");
    assert!(
        out.stderr.contains("already served generation"),
        "{}",
        out.stderr
    );
    assert_eq!(std::fs::read(kg.vault_path()).unwrap(), older);
}

async fn admin_api(server: &Server, path: &str) -> Resp {
    let resp = send_h1(server.admin, Req::get(path).bearer(TOKEN)).await;
    server.record(
        &format!("admin API response to GET {path}"),
        resp.everything(),
    );
    resp
}

/// Every request an inference upstream received, checked for any 8-character
/// window of a management credential (or its base64 form) in any header or the body.
fn admin_secret_on_the_wire(mocks: &[(&str, &Mock)]) -> Vec<String> {
    let secrets = [OPENAI_ADMIN.to_string(), XAI_ADMIN.to_string()];
    let seen: Vec<(String, String)> = mocks
        .iter()
        .flat_map(|(name, mock)| {
            mock.requests().into_iter().map(move |r| {
                (
                    format!("{name} upstream received {}", r.uri),
                    r.everything(),
                )
            })
        })
        .collect();
    find_leaks(&secrets, &seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_management_credential_is_never_logged_listed_measured_or_sent_upstream() {
    let openai = Mock::start(&[OPENAI_KEY], AuthStyle::Bearer).await;
    let xai = Mock::start(&[XAI_KEY], AuthStyle::Bearer).await;
    // The management APIs live elsewhere: nothing in this slice calls them.
    let management = Mock::start(&[], AuthStyle::Bearer).await;
    let builder = KeygateBuilder::new()
        .provider("openai", &openai.url(), "bearer")
        .provider("xai", &xai.url(), "bearer")
        .extra(&admin_tables(&management.url()));
    let kg = Keygate::new(&builder);
    kg.vault_init();
    kg.register_secret(TOKEN);
    kg.add_key("openai", OPENAI_KEY);
    kg.add_key("xai", XAI_KEY);
    set(&kg, "openai", OPENAI_ADMIN);
    let client = kg.add_client("app");
    let mut server = kg.serve_with(&[("KEYGATE_ADMIN_TOKEN", TOKEN)]);

    let chat = |model: &str, stream: bool| {
        let mut body = chat_body(model);
        if stream {
            body["stream"] = serde_json::json!(true);
        }
        Req::post("/v1/chat/completions")
            .bearer(&client)
            .json(&body)
    };
    let traffic = || async {
        for stream in [false, true] {
            for model in ["gpt-4o", "grok-3"] {
                assert_eq!(server.send(chat(model, stream)).await.status, 200);
            }
        }
        let anthropic_style = Req::post("/openai/v1/chat/completions")
            .header("x-api-key", &client)
            .json(&chat_body("gpt-4o"));
        assert_eq!(server.send(anthropic_style).await.status, 200);
        assert_eq!(
            server
                .send(Req::get("/xai/v1/models").bearer(&client))
                .await
                .status,
            200
        );
    };
    traffic().await;
    // A credential stored while serve runs reaches it by the live reload.
    set(&kg, "xai", XAI_ADMIN);
    tokio::time::sleep(RELOAD_WAIT).await;
    traffic().await;
    // The upstream refusing its key: the paths that retry, cool and report keys.
    openai.set_keys(&[]);
    let refused = server.send(chat("gpt-4o", false)).await;
    assert!(!refused.status.is_success(), "{}", refused.status);
    openai.set_keys(&[OPENAI_KEY]);

    for path in ["/metrics", "/readyz", "/healthz"] {
        server.admin_get(path).await;
    }
    for path in ["/admin/keys", "/admin/clients"] {
        let resp = admin_api(&server, path).await;
        assert_eq!(resp.status, 200, "{path}: {}", resp.text());
    }
    for args in [
        &["admin-key", "list"][..],
        &["admin-key", "list", "--json"],
        &["key", "list"],
        &["key", "list", "--json"],
        &["client", "list", "--json"],
    ] {
        kg.run(args).assert_ok("listing");
    }
    // `key verify` calls the inference upstreams with every key it knows.
    kg.run(&["key", "verify"]).assert_ok("key verify");

    // Inference upstreams: the keys arrived (so the check below can see a
    // header at all), the management credentials never did.
    let bearer = format!("Bearer {OPENAI_KEY}");
    let carried_the_key = openai
        .requests()
        .iter()
        .filter(|r| r.header("authorization").as_deref() == Some(bearer.as_str()))
        .count();
    assert!(
        carried_the_key >= 8,
        "only {carried_the_key} requests carried the openai key"
    );
    let on_the_wire = admin_secret_on_the_wire(&[("openai", &openai), ("xai", &xai)]);
    assert!(
        on_the_wire.is_empty(),
        "a management credential was sent to an inference upstream:\n{}",
        on_the_wire.join("\n")
    );

    server.terminate();
    assert!(
        server.stderr().contains("TRACE") || server.stderr().len() > 1000,
        "serve logged little at RUST_LOG=trace: is the log capture working?"
    );
    assert!(
        kg.captured_bytes() > 5000,
        "the leak check must see the outputs"
    );
    kg.assert_no_secret_leaks();
}
