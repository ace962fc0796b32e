//! What a restart and a crash may not undo (issue: hardening, second round):
//! an older vault copy restored under a server is refused at its next start
//! (and the CLI will not write on top of it), and a crashing keygate leaves no
//! core file holding its keys.

use std::time::Duration;

use crate::support::{chat_body, eventually, Env, Req, RELOAD_WAIT};

fn chat(client_key: &str) -> Req {
    Req::post("/v1/chat/completions")
        .bearer(client_key)
        .json(&chat_body("gpt-4o"))
}

async fn served_generation(env: &Env) -> u64 {
    env.server.vault_generation().await
}

/// The client is revoked and the server serves (and records) the newer
/// vault; it stops; someone restores the older copy, in which the revoked key
/// would work again. The generations before and after the revocation.
async fn serve_a_revocation_then_restore_the_older_vault(env: &mut Env) -> (u64, u64) {
    let vault = env.kg.vault_path();
    let old_copy = env.kg.dir().join("vault.backup");
    std::fs::copy(&vault, &old_copy).unwrap();
    let old_generation = served_generation(env).await;
    env.kg
        .run(&["client", "revoke", "app"])
        .assert_ok("client revoke");
    let revoked = eventually(RELOAD_WAIT, || async {
        let resp = env.server.send(env.chat("gpt-4o")).await;
        (resp.status == 401).then_some(())
    })
    .await;
    assert!(revoked.is_some(), "the revocation never reached the server");
    let new_generation = served_generation(env).await;
    assert!(new_generation > old_generation);
    env.server.terminate();
    std::fs::copy(&old_copy, &vault).unwrap();
    (old_generation, new_generation)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_older_vault_restored_across_a_restart_is_refused() {
    let mut env = Env::start().await;
    let vault = env.kg.vault_path();
    let (old_generation, new_generation) =
        serve_a_revocation_then_restore_the_older_vault(&mut env).await;
    let before = std::fs::read(&vault).unwrap();
    let out = env.kg.run(&["serve"]);
    out.assert_code(1, "serve on an older vault copy");
    for needle in [
        format!("generation {old_generation}"),
        format!("generation {new_generation}"),
        format!("--accept-vault-generation {old_generation}"),
    ] {
        assert!(
            out.stderr.contains(&needle),
            "no `{needle}` in:\n{}",
            out.stderr
        );
    }

    // `doctor` fails where `serve` does, with the same way back.
    let doctor = env.kg.run(&["doctor"]);
    doctor.assert_code(1, "doctor on an older vault copy");
    let vault_line = doctor
        .stdout
        .lines()
        .find(|l| l.starts_with("FAIL  vault"))
        .unwrap_or_else(|| panic!("no failed vault check:\n{}", doctor.stdout));
    for needle in [
        format!("generation {old_generation}"),
        format!("generation {new_generation}"),
        format!("--accept-vault-generation {old_generation}"),
    ] {
        assert!(
            vault_line.contains(&needle),
            "no `{needle}` in {vault_line}"
        );
    }

    // The CLI refuses to write on top of it (its key would never be served).
    let add = env.kg.run(&["client", "add", "late"]);
    add.assert_code(1, "client add on an older vault copy");
    assert!(
        !add.stdout.contains("kg_"),
        "a key was printed: {}",
        add.stdout
    );
    assert!(add.stderr.contains("older copy"), "{}", add.stderr);
    assert_eq!(
        std::fs::read(&vault).unwrap(),
        before,
        "the vault was changed"
    );

    // The operator may go back on purpose; the choice is recorded.
    let wrong = env.kg.run(&["serve", "--accept-vault-generation", "999"]);
    wrong.assert_code(1, "serve accepting a generation the vault does not have");
    assert!(wrong.stderr.contains("999"), "{}", wrong.stderr);
    let accepted = env
        .kg
        .serve_with_args(&["--accept-vault-generation", &old_generation.to_string()]);
    let resp = accepted.send(env.chat("gpt-4o")).await;
    assert_eq!(
        resp.status,
        200,
        "the accepted vault serves: {}",
        resp.text()
    );
    drop(accepted);
    // From then on that generation is the floor: a plain restart works.
    let again = env.kg.serve();
    assert_eq!(again.send(env.chat("gpt-4o")).await.status, 200);
}

/// `/proc/PID/limits`'s core file size line.
fn core_limit(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/limits"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("Max core file size"))
        .unwrap_or("")
        .to_string()
}

/// Files named like core dumps in `dir`.
fn core_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n == "core" || n.starts_with("core."))
        })
        .collect()
}

fn abort(pid: u32) {
    let sent = std::process::Command::new("kill")
        .args(["-ABRT", &pid.to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_crashing_keygate_leaves_no_core_file_with_its_keys() {
    let Env {
        server,
        kg,
        openai: _openai,
        client_key,
        ..
    } = Env::start().await;
    drop(server);
    let mut server = kg.serve_after_shell("ulimit -c unlimited");
    assert_eq!(
        server.send(chat(&client_key)).await.status,
        200,
        "serving, keys loaded"
    );
    let limit = core_limit(server.pid());
    let fields: Vec<&str> = limit.split_whitespace().collect();
    assert_eq!(
        fields.get(4..6),
        Some(&["0", "0"][..]),
        "core file size not 0: {limit}"
    );
    abort(server.pid());
    server.wait_exit();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        core_files(kg.dir()).is_empty(),
        "a core file was written: {:?}",
        core_files(kg.dir())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_allow_core_dumps_the_core_file_would_hold_the_keys() {
    // The control for the test above: without the protection, this machine
    // does write a core file, and it holds the upstream key in plaintext.
    let pattern = std::fs::read_to_string("/proc/sys/kernel/core_pattern").unwrap_or_default();
    if pattern.trim() != "core" {
        crate::support::skips::skip(
            "process_hardening::with_allow_core_dumps_the_core_file_would_hold_the_keys",
            &format!(
                "/proc/sys/kernel/core_pattern is {:?}, not `core` (a file in the working directory), so no core file to read",
                pattern.trim()
            ),
        );
        return;
    }
    let Env {
        server,
        kg,
        openai: _openai,
        client_key,
        ..
    } = Env::setup()
        .config(|b| b.server("allow_core_dumps", "true"))
        .start()
        .await;
    drop(server);
    let mut server = kg.serve_after_shell("ulimit -c unlimited");
    assert_eq!(server.send(chat(&client_key)).await.status, 200);
    assert!(
        core_limit(server.pid()).contains("unlimited"),
        "{}",
        core_limit(server.pid())
    );
    abort(server.pid());
    server.wait_exit();
    let cores = eventually(Duration::from_secs(5), || async {
        let cores = core_files(kg.dir());
        (!cores.is_empty()).then_some(cores)
    })
    .await
    .expect("no core file even with allow_core_dumps = true");
    let core = std::fs::read(&cores[0]).unwrap();
    for path in &cores {
        let _ = std::fs::remove_file(path);
    }
    let key = crate::support::OPENAI_KEY.as_bytes();
    assert!(
        core.windows(key.len()).any(|w| w == key),
        "the core file does not hold the key: the control proves nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_older_vault_is_refused_even_after_the_ledger_moved() {
    let mut env = Env::start().await;
    let (old_generation, new_generation) =
        serve_a_revocation_then_restore_the_older_vault(&mut env).await;
    // `[metering] db` now points elsewhere, where no record was ever
    // written: the copy beside the vault remembers.
    let moved = env.kg.dir().join("elsewhere").join("usage.sqlite");
    let out = env.kg.run_with(
        &["serve"],
        None,
        &[("KEYGATE_METERING__DB", moved.to_str().unwrap())],
    );
    out.assert_code(1, "serve on an older vault copy with a moved ledger");
    for needle in [
        format!("generation {old_generation}"),
        format!("generation {new_generation}"),
    ] {
        assert!(
            out.stderr.contains(&needle),
            "no `{needle}` in:\n{}",
            out.stderr
        );
    }
}
