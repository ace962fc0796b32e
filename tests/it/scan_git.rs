//! `keygate scan --git`, `--staged`, `--verify --import` and `--sarif`
//! (docs/design.md §15), on a repository built here with git: the current
//! key only in an old commit (named with the commit that introduced it), a
//! retired key in a committed `.env`, a client key on a side branch, keys of
//! every kind, bait; the staged changes alone; an unknown key verified live
//! at a mock provider and imported, a dead one left; SARIF checked against
//! the SARIF 2.1.0 schema. No output carries a whole key (the leak check).

use std::fs;
use std::path::Path;
use std::process::Command;

use crate::support::mock::{AuthStyle, Mock};
use crate::support::{Keygate, KeygateBuilder};

fn fill(pattern: &str, n: usize) -> String {
    pattern.chars().cycle().take(n).collect()
}

/// Keys in every kind's issued shape (obviously fake), with the provider
/// the scan names.
fn every_kind() -> Vec<(String, &'static str)> {
    let tok = |n| fill("Mn7_Op8-Qr9St0", n);
    let alnum = |n| fill("Mn7Op8Qr9St0", n);
    let hex = |n| fill("9f8e7d6c5b4a", n);
    vec![
        (format!("sk-proj-{}T3BlbkFJ{}", tok(74), tok(74)), "OpenAI"),
        (
            format!("sk-svcacct-{}T3BlbkFJ{}", tok(58), tok(58)),
            "OpenAI",
        ),
        (format!("sk-admin-{}T3BlbkFJ{}", tok(58), tok(74)), "OpenAI"),
        (format!("sk-ant-api03-{}AA", tok(93)), "Anthropic"),
        (format!("sk-ant-admin01-{}AA", tok(93)), "Anthropic"),
        (format!("xai-{}", alnum(80)), "xAI"),
        (format!("sk-or-v1-{}", hex(64)), "OpenRouter"),
        (format!("gsk_{}", alnum(52)), "Groq"),
        (format!("AIza{}", tok(35)), "Google"),
        (format!("sk-{}", hex(32)), "DeepSeek"),
    ]
}

fn project_key(seed: &str) -> String {
    format!("sk-proj-{}T3BlbkFJ{}", fill(seed, 74), fill(seed, 74))
}

/// Runs git in `repo`, panicking with its output on failure; returns stdout.
fn git(repo: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args(["-c", "user.name=t", "-c", "user.email=t@example.com"])
        .args([
            "-c",
            "commit.gpgsign=false",
            "-c",
            "init.defaultBranch=main",
        ])
        .args(args)
        .current_dir(repo)
        .output()
        .expect("git runs");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn commit_file(repo: &Path, path: &str, text: &str, message: &str) -> String {
    let file = repo.join(path);
    fs::create_dir_all(file.parent().unwrap()).unwrap();
    fs::write(file, text).unwrap();
    git(repo, &["add", path]);
    git(repo, &["commit", "-q", "-m", message]);
    git(repo, &["rev-parse", "HEAD"])
}

fn scan(kg: &Keygate, args: &[&str]) -> (Option<i32>, Vec<serde_json::Value>, String) {
    let mut all = vec!["scan", "--json"];
    all.extend_from_slice(args);
    // Traced to the last line: the leak check reads stderr too.
    let out = kg.run_with(&all, None, &[("RUST_LOG", "trace")]);
    let rows = serde_json::from_str::<serde_json::Value>(out.stdout.trim())
        .unwrap_or_else(|e| panic!("{e}: {}\n{}", out.stdout, out.stderr));
    (
        out.code,
        rows.as_array().unwrap().clone(),
        out.stderr.clone(),
    )
}

fn row<'a>(rows: &'a [serde_json::Value], path: &str) -> &'a serde_json::Value {
    rows.iter()
        .find(|r| r["path"] == path)
        .unwrap_or_else(|| panic!("nothing found in {path}: {rows:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_staged_changes_verify_and_import() {
    let live = project_key("Li7_Ve6-");
    let dead = project_key("De5-Ad4_");
    let mock = Mock::start(&[live.as_str()], AuthStyle::Bearer).await;
    let kg = Keygate::new(&KeygateBuilder::new().provider("openai", &mock.url(), "bearer"));
    kg.vault_init();
    let (old, current) = (project_key("Ol3_Dk2-"), project_key("Cu1-Rr0_"));
    for key in [&old, &current, &live, &dead] {
        kg.register_secret(key);
    }
    for (key, _) in every_kind() {
        kg.register_secret(&key);
    }
    let old_id = kg.add_key("openai", &old);
    kg.run_with(
        &["key", "rotate", "openai", "--no-verify", "--grace", "0s"],
        Some(&current),
        &[],
    )
    .assert_ok("key rotate");
    let current_id =
        crate::support::keys::key_row(&crate::support::keys::key_list(&kg), "openai", &current)
            ["id"]
            .as_str()
            .unwrap()
            .to_owned();
    let client = kg.add_client("app");

    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path();
    git(repo, &["init", "-q"]);
    let introduced = commit_file(
        repo,
        "app/config.py",
        &format!("import os\nKEY = \"{current}\"\n"),
        "config",
    );
    // The same blob again under another commit: still one finding.
    commit_file(repo, "README", "docs\n", "docs");
    commit_file(
        repo,
        "app/config.py",
        "import os\nKEY = os.environ['KEY']\n",
        "no key",
    );
    commit_file(repo, ".env", &format!("OPENAI_API_KEY={old}\n"), "env");
    let kinds: String = every_kind()
        .iter()
        .map(|(key, _)| format!("key: {key}\n"))
        .collect();
    commit_file(repo, "kinds.txt", &kinds, "kinds");
    commit_file(
        repo,
        "bait.txt",
        "pip install sk-learn\nuuid 123e4567-e89b-12d3-a456-426614174000\nkg_notakeyatall\n",
        "bait",
    );
    git(repo, &["checkout", "-q", "-b", "side"]);
    let side = commit_file(
        repo,
        "deploy/values.yaml",
        &format!("key: {client}\n"),
        "client",
    );
    git(repo, &["checkout", "-q", "main"]);

    let path = repo.to_str().unwrap();
    let (code, rows, _) = scan(&kg, &["--git", path]);
    assert_eq!(code, Some(1), "{rows:?}");
    let config = row(&rows, "app/config.py");
    assert_eq!(config["reading"], format!("vault {current_id} current"));
    assert_eq!(
        config["commit"], introduced,
        "the commit that introduced it"
    );
    assert_eq!(config["line"], 2);
    assert_eq!(
        config["location"],
        format!("{}:app/config.py:2", &introduced[..12])
    );
    assert_eq!(
        row(&rows, ".env")["reading"],
        format!("vault {old_id} retired")
    );
    let values = row(&rows, "deploy/values.yaml");
    assert_eq!(
        (&values["reading"], &values["commit"]),
        (&"client app".into(), &side.clone().into())
    );
    let in_kinds: Vec<_> = rows.iter().filter(|r| r["path"] == "kinds.txt").collect();
    assert_eq!(in_kinds.len(), every_kind().len(), "{in_kinds:?}");
    for ((_, provider), found) in every_kind().iter().zip(&in_kinds) {
        assert!(
            found["provider"].as_str().unwrap().starts_with(provider),
            "{provider}: {found}"
        );
        assert_eq!(found["reading"], "unknown");
    }
    assert_eq!(
        rows.len(),
        3 + every_kind().len(),
        "each blob once, no bait: {rows:?}"
    );

    // Staged: only what the next commit adds.
    fs::write(repo.join("new.py"), format!("KEY = '{dead}'\n")).unwrap();
    git(repo, &["add", "new.py"]);
    let (code, rows, _) = scan(&kg, &["--staged", path]);
    assert_eq!(code, Some(1));
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(
        (&rows[0]["path"], &rows[0]["line"]),
        (&"new.py".into(), &1.into())
    );
    git(repo, &["commit", "-q", "-m", "new"]);
    let (code, rows, _) = scan(&kg, &["--staged", path]);
    assert_eq!((code, rows.len()), (Some(0), 0), "{rows:?}");

    // Verify and import: the live key joins the vault, the dead one does not.
    let tree = tempfile::tempdir().unwrap();
    fs::write(
        tree.path().join("a.env"),
        format!("A={live}\nB={dead}\nC={live}\n"),
    )
    .unwrap();
    let tree_path = tree.path().to_str().unwrap();
    let (code, rows, stderr) = scan(&kg, &["--import", "openai", tree_path]);
    assert_eq!(code, Some(1), "a live key is usable");
    let by_line = |n: u64| rows.iter().find(|r| r["line"] == n).unwrap();
    assert_eq!(by_line(2)["verified"], "dead");
    assert_eq!(by_line(2)["reading"], "unknown (dead)");
    assert_eq!(by_line(2)["usable"], false);
    assert_eq!(by_line(1)["verified"], "live");
    let imported = by_line(1)["imported_as"].as_str().unwrap().to_owned();
    assert_eq!(
        by_line(3)["imported_as"],
        imported.as_str(),
        "one import per key"
    );
    assert!(stderr.contains(&imported), "{stderr}");
    let listed =
        crate::support::keys::key_row(&crate::support::keys::key_list(&kg), "openai", &live)
            .clone();
    assert_eq!(
        (listed["id"].as_str(), listed["state"].as_str()),
        (Some(imported.as_str()), Some("current"))
    );
    // Asked once per distinct key.
    let asked = mock
        .requests()
        .iter()
        .filter(|r| r.uri.contains("/models"))
        .count();
    assert_eq!(asked, 2, "one verify call per distinct key");
    let (_, rows, _) = scan(&kg, &[tree_path]);
    assert_eq!(
        by_line_in(&rows, 1)["reading"],
        format!("vault {imported} current")
    );
    kg.run(&["scan", "--git", tree_path])
        .assert_code(2, "--git outside a repository is a usage error");
    kg.run(&["scan", "--import", "nosuch", tree_path])
        .assert_code(2, "an unknown provider is a usage error");
}

fn by_line_in(rows: &[serde_json::Value], n: u64) -> &serde_json::Value {
    rows.iter().find(|r| r["line"] == n).unwrap()
}

#[test]
fn sarif_is_valid_sarif_2_1_0_with_a_rule_per_kind() {
    let kg =
        Keygate::new(&KeygateBuilder::new().provider("openai", "http://127.0.0.1:9", "bearer"));
    let tree = tempfile::tempdir().unwrap();
    let kinds: String = every_kind()
        .iter()
        .map(|(key, _)| format!("key: {key}\n"))
        .collect();
    for (key, _) in every_kind() {
        kg.register_secret(&key);
    }
    fs::write(tree.path().join("my keys.txt"), kinds).unwrap();
    let out = kg.run(&["scan", "--sarif", tree.path().to_str().unwrap()]);
    out.assert_code(1, "scan --sarif with unknown keys");
    let log: serde_json::Value = serde_json::from_str(out.stdout.trim()).unwrap();
    let run = &log["runs"][0];
    let rules = run["tool"]["driver"]["rules"].as_array().unwrap();
    let results = run["results"].as_array().unwrap();
    assert_eq!(results.len(), every_kind().len());
    for result in results {
        let index = result["ruleIndex"].as_u64().unwrap() as usize;
        assert_eq!(rules[index]["id"], result["ruleId"]);
        assert_eq!(result["level"], "error");
        assert!(
            result["locations"][0]["physicalLocation"]["artifactLocation"]["uri"]
                .as_str()
                .unwrap()
                .ends_with("my%20keys.txt")
        );
    }
    let ids: std::collections::BTreeSet<_> =
        rules.iter().map(|r| r["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), rules.len(), "one rule per kind");
    for kind in [
        "openai-key",
        "anthropic-key",
        "xai-key",
        "groq-key",
        "gemini-key",
        "deepseek-key",
        "openrouter-key",
        "keygate-client-key",
    ] {
        assert!(ids.contains(kind), "{kind}: {ids:?}");
    }
    validate_sarif(&out.stdout);
}

/// Validates against the SARIF 2.1.0 JSON schema (from the SARIF
/// multitool's npm package, installed by .ci/run) with Python's jsonschema.
fn validate_sarif(text: &str) {
    let schema = std::env::var("NODE_PATH")
        .ok()
        .map(|p| Path::new(&p).join("@microsoft/sarif-multitool-linux/sarif-2.1.0.json"))
        .filter(|p| p.exists());
    let Some(schema) = schema else {
        crate::support::skips::skip_unless_required(
            "scan_git::sarif_is_valid_sarif_2_1_0_with_a_rule_per_kind",
            "the SARIF 2.1.0 schema (npm @microsoft/sarif-multitool-linux under NODE_PATH)",
            "KEYGATE_REQUIRE_SARIF_SCHEMA",
        );
        return;
    };
    let file = tempfile::NamedTempFile::new().unwrap();
    fs::write(file.path(), text).unwrap();
    let out = Command::new("python3")
        .args([
            "-c",
            "import json,sys,jsonschema; s=json.load(open(sys.argv[1])); d=json.load(open(sys.argv[2])); jsonschema.validators.validator_for(s)(s).validate(d); print('valid')",
        ])
        .arg(&schema)
        .arg(file.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "not valid SARIF 2.1.0: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
