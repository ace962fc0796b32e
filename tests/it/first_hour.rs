//! The first hour (the issue "The first hour and the production day"; README
//! Quickstart): `serve` on an empty vault says what makes it useful, with the
//! config's absolute path; `key list` and `key verify` show a `previous` key
//! whose grace ended as retired, as the server does, with a grace-end column;
//! `keygate completions SHELL` prints a completion script without any setup;
//! `keygate client rotate` gives a client a second key, both valid until the
//! grace ends, then the old one is refused as rotated; a lost master key file
//! is named (absolute path) with the way back, and a running server warns.

use std::time::Duration;

use crate::support::keys::{key_list, key_row, wait_for_unix_second};
use crate::support::mock::{AuthStyle, Mock};
use crate::support::{Keygate, KeygateBuilder, OPENAI_KEY, OPENAI_KEY_2};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_on_an_empty_vault_says_what_to_do_next() {
    let kg = Keygate::new(&KeygateBuilder::new().provider(
        "openai",
        &crate::support::mock::closed_port_url(),
        "bearer",
    ));
    kg.vault_init();
    let server = kg.serve();
    let config = std::fs::canonicalize(kg.config_path()).unwrap();
    let said = crate::support::eventually(Duration::from_secs(5), || async {
        let out = server.stdout();
        out.contains("client add my-app").then_some(out)
    })
    .await
    .expect("no first steps printed");
    assert!(said.contains("holds no upstream key yet"), "{said}");
    assert!(
        said.contains(&format!(
            "keygate --config {} key add openai",
            config.display()
        )),
        "{said}"
    );

    // With a key, nothing of the kind is said. `/readyz` answering 200 shows
    // the start (which prints the first steps before it serves) is over;
    // stopping the server and reading its stdout to the end shows all of it.
    kg.add_key("openai", OPENAI_KEY);
    let mut again = kg.serve();
    let ready = again.admin_get("/readyz").await;
    assert_eq!(ready.status, 200, "a key is in the vault: {}", ready.text());
    let status = again.stop_and_read_everything();
    assert!(status.success(), "`serve` exited with {status:?}");
    let everything = again.stdout();
    assert!(
        everything.contains("keygate: admin listener on"),
        "not the whole stdout: {everything}"
    );
    assert!(
        !everything.contains("holds no upstream key"),
        "{everything}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_previous_key_whose_grace_ended_is_listed_and_verified_as_retired() {
    let mock = Mock::start(&[OPENAI_KEY_2], AuthStyle::Bearer).await;
    let kg = Keygate::new(&KeygateBuilder::new().provider("openai", &mock.url(), "bearer"));
    kg.vault_init();
    kg.add_key("openai", OPENAI_KEY);
    kg.run_with(
        &["key", "rotate", "openai", "--grace", "3s"],
        Some(OPENAI_KEY_2),
        &[],
    )
    .assert_ok("key rotate");
    let out = kg.run(&["key", "list"]);
    assert!(out.stdout.contains("GRACE ENDS"), "{}", out.stdout);
    let row = key_row(&key_list(&kg), "openai", OPENAI_KEY);
    assert_eq!(row["state"], "previous");
    // Wait out the grace until the end keygate recorded for it (not a guess).
    let grace_until = row["grace_until"]
        .as_u64()
        .unwrap_or_else(|| panic!("a previous key has a grace_until: {row}"));
    wait_for_unix_second(grace_until, Duration::from_secs(4), "the 3s grace").await;
    assert_eq!(
        key_row(&key_list(&kg), "openai", OPENAI_KEY)["state"],
        "retired",
        "listed as the server sees it"
    );
    // The old key is no longer the mock's, but it is out of use: verify passes.
    kg.run(&["key", "verify"])
        .assert_ok("key verify after the grace ended");
}

#[test]
fn completions_are_printed_without_any_setup() {
    let kg = Keygate::with_config_text("this is not toml [");
    for shell in ["bash", "zsh", "fish"] {
        let out = kg.run(&["completions", shell]);
        out.assert_ok(&format!("completions {shell}"));
        for word in ["burn", "admin-key", "rotate"] {
            assert!(out.stdout.contains(word), "{shell}: no `{word}`");
        }
    }
    let script = kg.run(&["completions", "bash"]).stdout;
    let path = kg.dir().join("keygate.bash");
    std::fs::write(&path, script).unwrap();
    let checked = std::process::Command::new("bash")
        .arg("-n")
        .arg(&path)
        .status()
        .unwrap();
    assert!(checked.success(), "the bash script does not parse");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_rotate_keeps_both_keys_until_the_grace_ends() {
    let env = crate::support::Env::start().await;
    let old = env.client_key.clone();
    let new = env.kg.rotate_client("app", &["--grace", "3s"]);
    assert_ne!(old, new);
    env.wait_until_live("client rotate").await;
    let chat = |key: &str| {
        crate::support::Req::post("/v1/chat/completions")
            .bearer(key)
            .json(&crate::support::chat_body("gpt-4o"))
    };
    for key in [&old, &new] {
        let resp = env.server.send(chat(key)).await;
        assert_eq!(
            resp.status,
            200,
            "both keys work during the grace: {}",
            resp.text()
        );
    }
    let listing = env.kg.run(&["client", "list"]);
    assert!(
        listing.stdout.contains("OLD KEY VALID UNTIL"),
        "{}",
        listing.stdout
    );
    let rows = env.kg.run(&["client", "list", "--json"]).stdout;
    assert!(!rows.contains("\"old_key_valid_until\":null"), "{rows}");
    let refused = crate::support::eventually(Duration::from_secs(8), || async {
        let resp = env.server.send(chat(&old)).await;
        (resp.status == 401).then_some(resp)
    })
    .await
    .expect("the old key still works after its grace");
    // Said as it is: the key was rotated, not revoked (the client is fine).
    let said = refused.json()["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(said.contains("key was rotated"), "{said}");
    assert!(!said.contains("revoked"), "{said}");
    let metrics = env.server.admin_get("/metrics").await.text();
    assert_eq!(
        crate::support::metrics::metric_value(
            &metrics,
            "keygate_client_auth_failures_total",
            &[("reason", "rotated")]
        ),
        Some(1.0),
        "{metrics}"
    );
    let resp = env.server.send(chat(&new)).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_master_key_file_is_named_with_the_way_back() {
    let kg = Keygate::new(&KeygateBuilder::new().provider(
        "openai",
        &crate::support::mock::closed_port_url(),
        "bearer",
    ));
    kg.vault_init();
    kg.add_key("openai", OPENAI_KEY);
    let server = kg.serve();
    let key_file = std::fs::canonicalize(kg.master_key_path()).unwrap();
    let backup = std::fs::read(&key_file).unwrap();
    std::fs::remove_file(&key_file).unwrap();
    // The running server warns, once, and keeps serving.
    let warned = crate::support::eventually(Duration::from_secs(5), || async {
        server.stderr().contains("has disappeared").then_some(())
    })
    .await;
    assert!(warned.is_some(), "{}", server.stderr());
    assert!(server.stderr().contains(&key_file.display().to_string()));
    let out = kg.run(&["key", "list"]);
    out.assert_code(1, "key list without the master key file");
    assert!(
        out.stderr
            .contains("restore the master key file from its backup")
            && out.stderr.contains(&key_file.display().to_string())
            && !out.stderr.contains("run `keygate vault init`"),
        "{}",
        out.stderr
    );
    std::fs::write(&key_file, backup).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    kg.run(&["key", "list"])
        .assert_ok("key list after the restore");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_checks_everything_and_fails_only_on_what_is_broken() {
    let mock = Mock::start(&[OPENAI_KEY], AuthStyle::Bearer).await;
    let kg = Keygate::new(
        &KeygateBuilder::new()
            .provider("openai", &mock.url(), "bearer")
            .provider("xai", &crate::support::mock::closed_port_url(), "bearer"),
    );
    kg.vault_init();
    kg.add_key("openai", OPENAI_KEY);
    let out = kg.run(&["doctor"]);
    out.assert_ok("doctor on a working setup");
    for line in [
        "ok    config",
        "ok    master key",
        "ok    vault",
        "openai: 1 of 1 usable keys verified working",
        "warn  keys           xai has no usable key",
        "warn  admin token",
        // Offered by the embedded defaults, never set up: said, not warned.
        "ok    keys           anthropic: not set up",
    ] {
        assert!(out.stdout.contains(line), "no `{line}` in:\n{}", out.stdout);
    }
    assert!(
        !out.stdout.contains("anthropic has no usable key"),
        "{}",
        out.stdout
    );
    let json = kg.run(&["doctor", "--json"]);
    let rows: serde_json::Value = serde_json::from_str(json.stdout.trim()).unwrap();
    assert!(
        rows.as_array()
            .unwrap()
            .iter()
            .all(|r| r["status"] != "fail"),
        "{rows}"
    );

    // The default provider's only key stops working: a failure, with its fix.
    mock.set_keys(&[OPENAI_KEY_2]);
    let out = kg.run(&["doctor"]);
    out.assert_code(1, "doctor with a dead key");
    assert!(
        out.stdout.contains("FAIL  keys           openai: 0 of 1 usable keys verified working — fix: keygate key verify openai"),
        "{}",
        out.stdout
    );
    // No master key: named, exit 1.
    std::fs::remove_file(kg.master_key_path()).unwrap();
    let out = kg.run(&["doctor"]);
    out.assert_code(1, "doctor without the master key");
    assert!(out.stdout.contains("FAIL  master key"), "{}", out.stdout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_quickstart_works_in_either_order_with_the_try_it_config() {
    // The README's "Try it" config, as shipped, in a fresh directory.
    let kg = Keygate::with_config_text(include_str!("../../examples/try-it.toml"));
    let server = kg.serve(); // creates the vault first, as a first `serve` does
    drop(server);
    let out = kg.run(&["vault", "init"]);
    out.assert_ok("vault init after serve");
    assert!(out.stdout.contains("nothing to do"), "{}", out.stdout);
    kg.add_key("openai", OPENAI_KEY);
    let list = kg.run(&["key", "list"]);
    list.assert_ok("key list under try-it.toml");
    assert!(kg.dir().join("data/try-it/keygate.vault").exists());
    // A vault the master key cannot open is still an error, not "nothing to do".
    std::fs::write(kg.dir().join("data/try-it/master.key"), "A".repeat(44)).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(
        kg.dir().join("data/try-it/master.key"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    kg.run(&["vault", "init"])
        .assert_code(1, "vault init with the wrong master key");
}

#[test]
fn an_absurd_grace_is_refused_where_it_is_parsed_and_nothing_is_written() {
    let kg = crate::support::Keygate::new(&crate::support::KeygateBuilder::new());
    kg.vault_init();
    kg.add_client("app");
    let out = kg.run(&["client", "rotate", "app", "--grace", "99999999999d"]);
    assert_eq!(out.code, Some(2), "{}{}", out.stdout, out.stderr);
    assert!(out.stderr.contains("3650d"), "{}", out.stderr);
    assert!(!out.stderr.contains("panicked"), "{}", out.stderr);
    for args in [&["client", "list"][..], &["key", "list"][..]] {
        let listed = kg.run(args);
        assert_eq!(listed.code, Some(0), "{args:?}: {}", listed.stderr);
        assert!(!listed.stderr.contains("panicked"), "{}", listed.stderr);
    }
    let rows = kg.run(&["client", "list", "--json"]).stdout;
    assert!(
        rows.contains("\"old_key_valid_until\":null"),
        "no rotation was written: {rows}"
    );
}

/// A setup `serve` refuses at start: the config, the environment, and the
/// words both `serve` and `doctor`'s failed check say.
struct Refused {
    config: KeygateBuilder,
    env: &'static [(&'static str, &'static str)],
    check: &'static str,
    words: &'static str,
}

/// `serve` refuses to start on each of these; `doctor` fails on each, with
/// the same words, instead of passing a setup that cannot serve.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_fails_on_what_serve_refuses_at_start() {
    let mock = Mock::start(&[OPENAI_KEY], AuthStyle::Bearer).await;
    let working = || KeygateBuilder::new().provider("openai", &mock.url(), "bearer");
    let cases = [
        Refused {
            config: working().extra(
                "[[notify]]\nurl = \"http://127.0.0.1:9/hook\"\nsecret_env = \"KG_TEST_SIGNING\"\n",
            ),
            env: &[],
            check: "FAIL  notify",
            words: "KG_TEST_SIGNING, which is not set",
        },
        Refused {
            config: working()
                .server("tls_cert", "\"no-such-cert.pem\"")
                .server("tls_key", "\"no-such-key.pem\""),
            env: &[],
            check: "FAIL  tls",
            words: "cannot load TLS certificate from no-such-cert.pem",
        },
        Refused {
            config: working(),
            env: &[("KEYGATE_ADMIN_TOKEN", "qz7-vx3-mm")],
            check: "FAIL  admin token",
            words: "KEYGATE_ADMIN_TOKEN is 10 characters",
        },
    ];
    for case in cases {
        let kg = Keygate::new(&case.config);
        kg.vault_init();
        kg.add_key("openai", OPENAI_KEY);
        let serve = kg.run_with(&["serve"], None, case.env);
        assert_ne!(serve.code, Some(0), "serve started: {}", serve.stderr);
        assert!(
            serve.stderr.contains(case.words),
            "{}: {}",
            case.words,
            serve.stderr
        );
        let doctor = kg.run_with(&["doctor"], None, case.env);
        doctor.assert_code(1, case.check);
        assert!(
            doctor.stdout.contains(case.check) && doctor.stdout.contains(case.words),
            "no `{}` … `{}` in:\n{}",
            case.check,
            case.words,
            doctor.stdout
        );
    }
}
