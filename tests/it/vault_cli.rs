//! The vault through the CLI (docs/design.md §2, §6): file modes, the two distinct
//! decryption failures, refusal of readable files, and what `key`/`client`
//! commands print. Every failure must leave the vault byte-for-byte untouched.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use base64::Engine;

use crate::support::{find_token, Keygate, KeygateBuilder, OPENAI_KEY, OPENAI_KEY_2, XAI_KEY};

const WRONG_KEY_MSG: &str = "cannot decrypt vault: wrong master key";
const CORRUPT_MSG: &str = "vault file modified or corrupted";

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

/// A keygate with an initialised vault holding one openai key.
fn keygate_with_a_key() -> Keygate {
    let kg = Keygate::new(&KeygateBuilder::new());
    kg.vault_init();
    kg.add_key("openai", OPENAI_KEY);
    kg
}

fn other_master_key_b64() -> String {
    base64::engine::general_purpose::STANDARD.encode([0x5au8; 32])
}

#[test]
fn vault_init_creates_vault_and_master_key_file_0600() {
    let kg = Keygate::new(&KeygateBuilder::new());
    let out = kg.run(&["vault", "init"]);
    out.assert_ok("vault init");
    assert!(
        kg.vault_path().exists(),
        "no vault at {}",
        kg.vault_path().display()
    );
    assert!(kg.master_key_path().exists(), "no master key file");
    assert_eq!(mode(&kg.vault_path()), 0o600, "vault mode");
    assert_eq!(mode(&kg.master_key_path()), 0o600, "master key file mode");
    if let Ok(text) = std::fs::read_to_string(kg.master_key_path()) {
        kg.register_secret(text.trim());
    }
    // Writing keeps the mode.
    kg.add_key("openai", OPENAI_KEY);
    assert_eq!(mode(&kg.vault_path()), 0o600, "vault mode after a write");
    let leftovers: Vec<String> = std::fs::read_dir(kg.dir())
        .expect("read dir")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp"))
        .collect();
    assert!(
        leftovers.is_empty(),
        "temp files left behind: {leftovers:?}"
    );
}

#[test]
fn wrong_master_key_in_env_is_named_and_vault_untouched() {
    let kg = keygate_with_a_key();
    let before = std::fs::read(kg.vault_path()).expect("read vault");
    let wrong = other_master_key_b64();
    let env = [("KEYGATE_MASTER_KEY", wrong.as_str())];

    let out = kg.run_with(&["key", "list", "--json"], None, &env);
    out.assert_code(1, "key list with the wrong master key");
    assert!(out.stderr.contains(WRONG_KEY_MSG), "stderr: {}", out.stderr);
    assert!(!out.stderr.contains(CORRUPT_MSG), "stderr: {}", out.stderr);

    let out = kg.run_with(&["key", "add", "xai"], Some(XAI_KEY), &env);
    out.assert_code(1, "key add with the wrong master key");
    assert!(out.stderr.contains(WRONG_KEY_MSG), "stderr: {}", out.stderr);
    kg.register_secret(XAI_KEY);

    assert_eq!(
        std::fs::read(kg.vault_path()).expect("read vault"),
        before,
        "the vault must be left byte-for-byte untouched"
    );
    // With the right key it still opens.
    kg.run(&["key", "list", "--json"]).assert_ok("key list");
}

#[test]
fn wrong_master_key_file_is_named_and_vault_untouched() {
    let kg = keygate_with_a_key();
    let before = std::fs::read(kg.vault_path()).expect("read vault");
    let original = std::fs::read(kg.master_key_path()).expect("read master key");
    // Another valid key, in the same encoding as the file keygate wrote.
    let replacement = match std::str::from_utf8(&original) {
        Ok(text) if text.trim().len() >= 40 => {
            let newline = if text.ends_with('\n') { "\n" } else { "" };
            format!("{}{newline}", other_master_key_b64()).into_bytes()
        }
        _ => vec![0x5au8; original.len()],
    };
    std::fs::write(kg.master_key_path(), &replacement).expect("write master key");

    let out = kg.run(&["key", "list", "--json"]);
    out.assert_code(1, "key list with the wrong master key file");
    assert!(out.stderr.contains(WRONG_KEY_MSG), "stderr: {}", out.stderr);
    assert_eq!(std::fs::read(kg.vault_path()).expect("read vault"), before);
}

#[test]
fn flipped_byte_is_named_modified_or_corrupted_and_vault_untouched() {
    let kg = keygate_with_a_key();
    let original = std::fs::read(kg.vault_path()).expect("read vault");
    assert!(original.len() > 100, "vault suspiciously small");
    for at in [original.len() - 1, original.len() - 30] {
        let mut flipped = original.clone();
        flipped[at] ^= 0x01;
        std::fs::write(kg.vault_path(), &flipped).expect("write vault");

        let out = kg.run(&["key", "list", "--json"]);
        out.assert_code(1, "key list on a modified vault");
        assert!(
            out.stderr.contains(CORRUPT_MSG),
            "byte {at} flipped; stderr: {}",
            out.stderr
        );
        assert!(
            !out.stderr.contains(WRONG_KEY_MSG),
            "a modified file is not a wrong key; stderr: {}",
            out.stderr
        );
        let out = kg.run_with(&["key", "add", "xai"], Some(XAI_KEY), &[]);
        out.assert_code(1, "key add on a modified vault");
        kg.register_secret(XAI_KEY);
        assert_eq!(
            std::fs::read(kg.vault_path()).expect("read vault"),
            flipped,
            "a modified vault must be left as it is"
        );
    }
}

#[test]
fn readable_vault_or_master_key_file_is_refused_naming_mode_and_fix() {
    let kg = keygate_with_a_key();
    let before = std::fs::read(kg.vault_path()).expect("read vault");

    chmod(&kg.vault_path(), 0o644);
    let out = kg.run(&["key", "list", "--json"]);
    out.assert_code(1, "key list on a 0644 vault");
    assert!(
        out.stderr.contains("0644") && out.stderr.contains("chmod 600"),
        "the refusal must name the mode and the fix; stderr: {}",
        out.stderr
    );
    assert_eq!(std::fs::read(kg.vault_path()).expect("read vault"), before);
    assert_eq!(
        mode(&kg.vault_path()),
        0o644,
        "keygate must not chmod it itself"
    );

    chmod(&kg.vault_path(), 0o600);
    // Group-readable: refused unless the group is one keygate runs in (its
    // own group is keygate: Kubernetes' fsGroup; docs/operations.md).
    chmod(&kg.master_key_path(), 0o640);
    kg.run(&["key", "list", "--json"])
        .assert_ok("key list with a 0640 master key file of keygate's own group");
    if rustix::process::geteuid().is_root() {
        std::os::unix::fs::chown(kg.master_key_path(), None, Some(4_000_000_126)).unwrap();
        let out = kg.run(&["key", "list", "--json"]);
        out.assert_code(1, "key list with a 0640 master key file of another group");
        assert!(
            out.stderr.contains("0640")
                && out.stderr.contains("group 4000000126")
                && out.stderr.contains("chmod 600"),
            "stderr: {}",
            out.stderr
        );
    }

    chmod(&kg.master_key_path(), 0o600);
    kg.run(&["key", "list", "--json"])
        .assert_ok("key list after chmod 600");
}

#[test]
fn serve_with_the_wrong_master_key_exits_1_naming_it() {
    let kg = keygate_with_a_key();
    let before = std::fs::read(kg.vault_path()).expect("read vault");
    let wrong = other_master_key_b64();
    let out = kg.run_with(&["serve"], None, &[("KEYGATE_MASTER_KEY", wrong.as_str())]);
    out.assert_code(1, "serve with the wrong master key");
    assert!(out.stderr.contains(WRONG_KEY_MSG), "stderr: {}", out.stderr);
    assert_eq!(std::fs::read(kg.vault_path()).expect("read vault"), before);
}

#[test]
fn key_add_and_key_list_show_ids_and_fingerprints_never_secrets() {
    let kg = Keygate::new(&KeygateBuilder::new());
    kg.vault_init();
    let current = kg.add_key_with("openai", OPENAI_KEY, &["--label", "prod"]);
    let previous = kg.add_key_with("openai", OPENAI_KEY_2, &["--fallback", "--label", "old"]);
    let xai = kg.add_key("xai", XAI_KEY);
    assert_ne!(current, previous);

    let out = kg.run(&["key", "list", "--json"]);
    out.assert_ok("key list --json");
    let list: serde_json::Value = serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("key list --json is not JSON ({e}): {}", out.stdout));
    let keys = list.as_array().expect("key list --json must be an array");
    assert_eq!(keys.len(), 3, "{}", out.stdout);
    for k in keys {
        for field in ["id", "provider", "label", "state", "fingerprint", "created"] {
            assert!(k.get(field).is_some(), "key without `{field}`: {k}");
        }
    }
    let by_id = |id: &str| {
        keys.iter()
            .find(|k| k["id"] == id)
            .unwrap_or_else(|| panic!("{id} not listed: {}", out.stdout))
            .clone()
    };
    let c = by_id(&current);
    assert_eq!(c["provider"], "openai");
    assert_eq!(c["label"], "prod");
    assert_eq!(c["state"], "current");
    let p = by_id(&previous);
    assert_eq!(p["state"], "previous");
    assert_eq!(p["label"], "old");
    assert_eq!(by_id(&xai)["provider"], "xai");
    let fp = c["fingerprint"].as_str().unwrap_or_default();
    assert!(
        fp.ends_with(&OPENAI_KEY[OPENAI_KEY.len() - 4..]),
        "fingerprint should end with the key's last four characters: {fp}"
    );

    let out = kg.run(&["key", "list", "xai", "--json"]);
    out.assert_ok("key list xai --json");
    let list: serde_json::Value = serde_json::from_str(&out.stdout).expect("JSON");
    assert_eq!(list.as_array().map(Vec::len), Some(1), "{}", out.stdout);

    // The human-readable list too (checked for secrets when `kg` drops).
    let out = kg.run(&["key", "list"]);
    out.assert_ok("key list");
    assert!(out.stdout.contains(&current), "{}", out.stdout);
}

#[test]
fn client_add_prints_a_well_formed_key_once_and_lists_never_show_it() {
    let kg = Keygate::new(&KeygateBuilder::new());
    kg.vault_init();
    let a = kg.add_client("alpha");
    let b = kg.add_client("beta");
    for key in [&a, &b] {
        assert_eq!(key.len(), 45, "kg_ + 36 + 6 characters: {key}");
        assert!(key[3..].chars().all(|c| c.is_ascii_alphanumeric()), "{key}");
    }
    assert_ne!(a, b);

    let out = kg.run(&["client", "list", "--json"]);
    out.assert_ok("client list --json");
    let list: serde_json::Value = serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("client list --json is not JSON ({e}): {}", out.stdout));
    let names: Vec<&str> = list
        .as_array()
        .expect("client list --json must be an array")
        .iter()
        .filter_map(|c| c["name"].as_str())
        .collect();
    assert!(
        names.contains(&"alpha") && names.contains(&"beta"),
        "{}",
        out.stdout
    );
    assert_eq!(find_token(&out.stdout, "kg_"), None, "{}", out.stdout);

    kg.run(&["client", "revoke", "alpha"])
        .assert_ok("client revoke");
    let out = kg.run(&["client", "list"]);
    out.assert_ok("client list");
    assert!(out.stdout.contains("beta"), "{}", out.stdout);
    assert_eq!(find_token(&out.stdout, "kg_"), None, "{}", out.stdout);
}

#[test]
fn client_add_and_rotate_print_the_key_alone_on_stdout_for_scripts() {
    let kg = Keygate::new(&KeygateBuilder::new());
    kg.vault_init();
    // `KEY=$(keygate client add app)` captures the key and nothing else.
    let out = kg.run(&["client", "add", "app"]);
    out.assert_ok("client add");
    let key = kg.issued_key(&out);
    assert_eq!(out.stdout, format!("{key}\n"));
    assert!(
        out.stderr.contains("client `app` created"),
        "the words for a person are on stderr: {}",
        out.stderr
    );
    let out = kg.run(&["client", "add", "bot", "--json"]);
    out.assert_ok("client add --json");
    let key = kg.issued_key(&out);
    let line: serde_json::Value = serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("not one JSON value ({e}): {}", out.stdout));
    assert_eq!(
        line,
        serde_json::json!({"name": "bot", "key": key, "decoy": false})
    );

    let out = kg.run(&["client", "rotate", "app", "--grace", "1h"]);
    out.assert_ok("client rotate");
    let new = kg.issued_key(&out);
    assert_eq!(out.stdout, format!("{new}\n"));
    assert!(
        out.stderr.contains("old key keeps working until"),
        "{}",
        out.stderr
    );
    let out = kg.run(&["client", "rotate", "bot", "--json"]);
    out.assert_ok("client rotate --json");
    let new = kg.issued_key(&out);
    let line: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!((&line["name"], &line["key"]), (&"bot".into(), &new.into()));
    let listed: serde_json::Value =
        serde_json::from_str(&kg.run(&["client", "list", "--json"]).stdout).unwrap();
    let bot = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "bot")
        .unwrap();
    assert_eq!(
        line["old_key_valid_until"], bot["old_key_valid_until"],
        "{listed}"
    );
}

#[test]
fn a_closed_stdout_never_panics_and_a_key_nobody_got_is_taken_back() {
    let kg = keygate_with_a_key();
    let client = kg.add_client("app");
    let clients = || -> serde_json::Value {
        serde_json::from_str(&kg.run(&["client", "list", "--json"]).stdout).unwrap()
    };
    let before = clients();

    // `keygate client add late | head -0`: the key could not be handed
    // over, so the client is not left behind holding it.
    let out = kg.run_with_stdout_closed(&["client", "add", "late"]);
    out.assert_code(1, "client add into a closed pipe");
    assert!(!out.stderr.contains("panicked"), "{}", out.stderr);
    assert!(
        out.stderr.contains("client `late` was not created"),
        "{}",
        out.stderr
    );
    // `keygate client rotate app | head -0`: the old key stays the key.
    let out = kg.run_with_stdout_closed(&["client", "rotate", "app"]);
    out.assert_code(1, "client rotate into a closed pipe");
    assert!(
        out.stderr.contains("client `app` was not rotated"),
        "{}",
        out.stderr
    );
    let after = clients();
    assert_eq!(
        after.as_array().map(Vec::len),
        before.as_array().map(Vec::len),
        "{after}"
    );
    assert!(
        after[0]["old_key_valid_until"].is_null(),
        "the rotation was undone: {after}"
    );
    kg.add_client("late");

    // Everything else: as quiet as `| head` expects, exit 0, no panic.
    for args in [
        &["key", "list"][..],
        &["key", "list", "--json"],
        &["client", "list"],
        &["prices"],
        &["completions", "bash"],
        &["key", "--help"],
    ] {
        let out = kg.run_with_stdout_closed(args);
        out.assert_code(0, &format!("{args:?} into a closed pipe"));
        assert!(!out.stderr.contains("panicked"), "{args:?}: {}", out.stderr);
    }
    // A scan that finds a key: exit 1 (a usable key), not a panic's 101.
    let tree = tempfile::tempdir().unwrap();
    std::fs::write(tree.path().join("a.env"), format!("KEY={client}\n")).unwrap();
    let out = kg.run_with_stdout_closed(&["scan", tree.path().to_str().unwrap()]);
    out.assert_code(1, "scan into a closed pipe");
    assert!(!out.stderr.contains("panicked"), "{}", out.stderr);
}

#[test]
fn key_list_shows_the_keys_in_play_and_recent_ones_in_aligned_columns() {
    let kg = Keygate::new(&KeygateBuilder::new());
    kg.vault_init();
    let long = "a-label-far-longer-than-fourteen-characters";
    let kept = kg.add_key_with("openai", OPENAI_KEY, &["--label", long]);
    let gone = kg.add_key_with("openai", OPENAI_KEY_2, &["--label", "b"]);
    kg.run(&["key", "revoke", &gone]).assert_ok("key revoke");

    let out = kg.run(&["key", "list"]);
    out.assert_ok("key list");
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{}", out.stdout);
    // Every row's STATE and HEALTH start under their headers.
    for header in ["STATE", "HEALTH"] {
        let at = lines[0].find(header).unwrap();
        for row in &lines[1..] {
            let cell = row[at..].split_whitespace().next().unwrap_or_default();
            assert!(
                matches!(cell, "current" | "revoked" | "-"),
                "`{header}` column misaligned:\n{}",
                out.stdout
            );
        }
    }

    // A key out of use for longer than --recent (default 24h) is left out,
    // and stderr says how to see it; --all lists the whole history.
    std::thread::sleep(std::time::Duration::from_millis(2100));
    let out = kg.run(&["key", "list", "--recent", "1s"]);
    out.assert_ok("key list --recent 1s");
    assert!(out.stdout.contains(&kept), "{}", out.stdout);
    assert!(!out.stdout.contains(&gone), "{}", out.stdout);
    assert!(
        out.stderr.contains("1 key(s) out of use") && out.stderr.contains("--all"),
        "{}",
        out.stderr
    );
    let json = kg.run(&["key", "list", "--json", "--recent", "1s"]).stdout;
    assert!(json.contains(&kept) && !json.contains(&gone), "{json}");
    let all = kg.run(&["key", "list", "--all"]).stdout;
    assert!(all.contains(&kept) && all.contains(&gone), "{all}");
}

#[test]
fn key_add_at_a_terminal_does_not_show_the_pasted_key() {
    let kg = Keygate::new(&KeygateBuilder::new());
    kg.vault_init();
    kg.register_secret(OPENAI_KEY);
    let (code, shown) = kg.run_at_terminal(
        &["key", "add", "openai"],
        "Paste the upstream API key",
        OPENAI_KEY,
        "stty -a",
    );
    assert_eq!(code, Some(0), "{shown}");
    assert!(shown.contains("added key_"), "{shown}");
    assert!(!shown.contains(OPENAI_KEY), "the key was echoed: {shown}");
    // The terminal's echo is back on afterwards (stty prints `-echo` when off).
    let flags: Vec<&str> = shown.split_whitespace().collect();
    assert!(
        flags.contains(&"echo") && !flags.contains(&"-echo"),
        "{shown}"
    );
}

#[test]
fn vault_rekey_says_to_back_up_the_new_master_key_the_only_one_that_opens_the_vault() {
    let kg = keygate_with_a_key();
    let key_file = kg.master_key_path();
    let old = std::fs::read(&key_file).unwrap();
    let out = kg.run(&["vault", "rekey"]);
    out.assert_ok("vault rekey");
    let new = std::fs::read(&key_file).unwrap();
    kg.register_secret(String::from_utf8_lossy(&new).trim());
    assert_ne!(old, new, "a new master key file");
    assert!(
        out.stdout
            .contains(&format!("back up {} now", key_file.display())),
        "{}",
        out.stdout
    );
    kg.run(&["key", "list"])
        .assert_ok("key list with the new master key");
    // The old key's backup no longer opens this vault.
    std::fs::write(&key_file, &old).unwrap();
    chmod(&key_file, 0o600);
    let out = kg.run(&["key", "list"]);
    out.assert_code(1, "key list with the old master key");
    assert!(out.stderr.contains(WRONG_KEY_MSG), "{}", out.stderr);
}
