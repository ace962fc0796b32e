//! `keygate scan` (docs/design.md §15): in a tree built here — the current
//! key in code, a retired key in a `.env`, a client key and a revoked
//! client's, an unknown key of another kind, bait, an ignored directory and
//! a binary file — each finding is named against the vault, exit codes say
//! whether anything usable was found, `--env` reads the environment, and no
//! output carries a whole key (the leak check, every key registered).

use std::fs;
use std::path::Path;

use crate::support::Keygate;

fn fill(pattern: &str, n: usize) -> String {
    pattern.chars().cycle().take(n).collect()
}

/// An OpenAI project key in the shape OpenAI issues (obviously fake).
fn project_key(seed: &str) -> String {
    format!("sk-proj-{}T3BlbkFJ{}", fill(seed, 74), fill(seed, 74))
}

fn write(root: &Path, path: &str, text: &str) {
    let path = root.join(path);
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, text).unwrap();
}

fn scan(
    kg: &Keygate,
    args: &[&str],
    env: &[(&str, &str)],
) -> (Option<i32>, Vec<serde_json::Value>) {
    let mut all = vec!["scan", "--json"];
    all.extend_from_slice(args);
    let out = kg.run_with(&all, None, env);
    let rows = serde_json::from_str::<serde_json::Value>(out.stdout.trim())
        .unwrap_or_else(|e| panic!("{e}: {}\n{}", out.stdout, out.stderr));
    (out.code, rows.as_array().unwrap().clone())
}

fn reading<'a>(rows: &'a [serde_json::Value], file: &str) -> &'a str {
    rows.iter()
        .find(|r| r["location"].as_str().unwrap().contains(file))
        .unwrap_or_else(|| panic!("nothing found in {file}: {rows:?}"))["reading"]
        .as_str()
        .unwrap()
}

#[test]
fn every_copy_is_named_against_the_vault_and_the_exit_code_says_if_one_is_usable() {
    let kg = Keygate::new(&crate::support::KeygateBuilder::new().provider(
        "openai",
        "http://127.0.0.1:9",
        "bearer",
    ));
    kg.vault_init();
    let (old, current) = (project_key("Ab3_Cd4-"), project_key("Zy9-Xw8_"));
    let unknown = format!("xai-{}", fill("Qr7St6Uv5", 80));
    for key in [&old, &current, &unknown] {
        kg.register_secret(key);
    }
    let old_id = kg.add_key("openai", &old);
    kg.run_with(
        &["key", "rotate", "openai", "--no-verify", "--grace", "0s"],
        Some(&current),
        &[],
    )
    .assert_ok("key rotate");
    let client = kg.add_client("app");
    let gone = kg.add_client("old-app");
    kg.run(&["client", "revoke", "old-app"])
        .assert_ok("client revoke");
    // The old key's grace ended: the next write retires it and wipes it.
    let list = crate::support::keys::key_list(&kg);
    let current_id = crate::support::keys::key_row(&list, "openai", &current)["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let tree = tempfile::tempdir().unwrap();
    let root = tree.path();
    write(
        root,
        "app/config.py",
        &format!("OPENAI_API_KEY = \"{current}\"\n"),
    );
    write(root, ".env", &format!("# old\nOPENAI_API_KEY={old}\n"));
    write(
        root,
        "deploy/values.yaml",
        &format!("client:\n  key: {client}\n"),
    );
    write(root, "old/client.txt", &gone);
    write(
        root,
        "notes/found.md",
        &format!("someone pasted {unknown} here"),
    );
    write(
        root,
        "bait.txt",
        "use sk-learn; uuid 123e4567-e89b-12d3-a456-426614174000; kg_notakeyatall\n",
    );
    write(root, ".gitignore", "ignored/\n");
    write(root, "ignored/secret.txt", &current);
    fs::write(
        root.join("blob.bin"),
        [b"\0\0".as_slice(), current.as_bytes()].concat(),
    )
    .unwrap();

    let dir = root.to_str().unwrap();
    let (code, rows) = scan(&kg, &[dir], &[]);
    assert_eq!(code, Some(1), "usable keys were found: {rows:?}");
    assert_eq!(
        reading(&rows, "config.py"),
        format!("vault {current_id} current")
    );
    assert_eq!(reading(&rows, ".env"), format!("vault {old_id} retired"));
    assert_eq!(reading(&rows, "values.yaml"), "client app");
    assert_eq!(reading(&rows, "client.txt"), "client old-app (revoked)");
    assert_eq!(reading(&rows, "found.md"), "unknown");
    assert_eq!(
        rows.len(),
        5,
        "bait, the ignored directory and the binary file: {rows:?}"
    );
    let config = rows
        .iter()
        .find(|r| r["location"].as_str().unwrap().ends_with("config.py:1:19"))
        .unwrap();
    assert_eq!(config["provider"], "OpenAI");
    assert_eq!(
        config["key"],
        format!("sk-…{}", &current[current.len() - 4..])
    );
    let (_, all) = scan(&kg, &[dir, "--no-ignore"], &[]);
    assert_eq!(all.len(), 6, "--no-ignore reads ignored/ too: {all:?}");

    // Only copies that open nothing left: exit 0.
    for gone in ["app/config.py", "deploy/values.yaml", "notes/found.md"] {
        fs::remove_file(root.join(gone)).unwrap();
    }
    let (code, rows) = scan(&kg, &[dir], &[]);
    assert_eq!((code, rows.len()), (Some(0), 2), "{rows:?}");

    // The environment.
    let (code, rows) = scan(&kg, &["--env", dir], &[("SCAN_TEST_KEY", &unknown)]);
    assert_eq!(code, Some(1));
    assert!(
        rows.iter()
            .any(|r| r["location"] == "env:SCAN_TEST_KEY" && r["reading"] == "unknown"),
        "{rows:?}"
    );
    let text = kg.run(&["scan", dir]);
    assert!(
        text.stdout.contains(&format!("vault {old_id} retired")),
        "{}",
        text.stdout
    );
    kg.run(&["scan", "/no/such/dir"])
        .assert_code(2, "scan of a path that does not exist");
}
