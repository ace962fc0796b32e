//! A running server follows the vault file (docs/design.md §2, §6, §10): a bad file
//! (truncated, tampered, an older generation) never replaces the last good
//! keys, and counts `keygate_vault_reloads_total{result="error"}`; the next
//! valid write is live within a second; a Kubernetes Secret volume's atomic
//! `..data` symlink swap is picked up the same way.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{symlink, DirBuilderExt, OpenOptionsExt};
use std::path::Path;
use std::time::{Duration, Instant};

use crate::support::keys::{assert_upstream_switches_to, key_of, upstream_key_now, LIVE_WITHIN};
use crate::support::metrics::metric_value;
use crate::support::mock::AuthStyle;
use crate::support::{
    eventually, Env, Keygate, KeygateBuilder, Mock, Req, Server, OPENAI_KEY, OPENAI_KEY_2, XAI_KEY,
};

/// Replace `path` with `bytes` the way a careful tool does (temp file 0600 in
/// the same directory, rename over), so the server never sees half a write.
fn replace_file(path: &Path, bytes: &[u8], mode: u32) {
    let tmp = path.with_extension("test-tmp");
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .expect("create temp file");
    f.write_all(bytes).expect("write temp file");
    f.sync_all().expect("sync temp file");
    drop(f);
    fs::rename(&tmp, path).expect("rename over the vault");
}

fn rotate_no_verify(kg: &Keygate, secret: &str) {
    kg.register_secret(secret);
    kg.run_with(
        &["key", "rotate", "openai", "--no-verify"],
        Some(secret),
        &[],
    )
    .assert_ok("key rotate openai --no-verify");
}

async fn reload_errors(server: &Server) -> f64 {
    let page = server.admin_get("/metrics").await.text();
    metric_value(&page, "keygate_vault_reloads_total", &[("result", "error")]).unwrap_or(0.0)
}

async fn generation(server: &Server) -> u64 {
    server.vault_generation().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_bad_vault_file_keeps_the_last_good_keys_and_the_next_good_write_is_live() {
    let env = Env::start().await;
    env.openai.set_keys(&[OPENAI_KEY, OPENAI_KEY_2]);
    let vault = env.kg.vault_path();
    let older = fs::read(&vault).expect("read vault");
    rotate_no_verify(&env.kg, OPENAI_KEY_2);
    assert_upstream_switches_to(&env, OPENAI_KEY_2, "`key rotate`").await;
    let good = fs::read(&vault).expect("read vault");
    let serving = generation(&env.server).await;

    let mut flipped = good.clone();
    let at = good.len() - 24;
    flipped[at] ^= 0x01;
    let cases: [(&str, &[u8]); 3] = [
        ("a truncated copy", &good[..good.len() / 2]),
        ("a copy with one flipped byte", &flipped),
        ("an older generation of the vault", &older),
    ];
    for (what, bytes) in cases {
        let before = reload_errors(&env.server).await;
        replace_file(&vault, bytes, 0o600);
        let noticed = eventually(LIVE_WITHIN, || async {
            (reload_errors(&env.server).await > before).then_some(())
        })
        .await;
        assert!(
            noticed.is_some(),
            "{what} over the vault did not count keygate_vault_reloads_total{{result=\"error\"}} within {LIVE_WITHIN:?}\n{}",
            crate::support::keygate::tail(&env.server.stderr())
        );
        assert_eq!(
            generation(&env.server).await,
            serving,
            "after {what}, the served generation changed"
        );
        for _ in 0..3 {
            assert_eq!(
                upstream_key_now(&env).await,
                OPENAI_KEY_2,
                "after {what}, traffic must go on with the last good keys"
            );
        }
    }
    // The same bad file is not retried in a loop: it failed once, it counts once.
    let settled = reload_errors(&env.server).await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(reload_errors(&env.server).await, settled);
    // Each distinct failure is one `vault_reload_failed` event naming what is
    // served: the truncated and the flipped copies fail alike (one event),
    // the older generation otherwise.
    let out = env
        .kg
        .run(&["events", "--type", "vault_reload_failed", "--json"]);
    out.assert_ok("keygate events --type vault_reload_failed");
    let events: Vec<serde_json::Value> = serde_json::from_str(out.stdout.trim()).unwrap();
    assert_eq!(events.len(), 2, "{}", out.stdout);
    assert!(events[0]["error"]
        .as_str()
        .unwrap()
        .contains("older than the generation"));
    assert!(events[1]["error"]
        .as_str()
        .unwrap()
        .contains("failed authentication"));
    assert!(
        events.iter().all(|e| e["serving_generation"] == serving),
        "{}",
        out.stdout
    );

    // The operator puts the good file back; the next CLI write is live within a second.
    replace_file(&vault, &good, 0o600);
    let key = env.kg.add_client("app2");
    let written = Instant::now();
    let live = eventually(LIVE_WITHIN, || async {
        let resp = env
            .server
            .send(
                Req::post("/v1/chat/completions")
                    .bearer(&key)
                    .json(&crate::support::chat_body("gpt-4o")),
            )
            .await;
        (resp.status == 200).then(|| written.elapsed())
    })
    .await;
    let live = live.unwrap_or_else(|| {
        panic!(
            "a client added after the bad writes was not accepted within {LIVE_WITHIN:?}\n{}",
            crate::support::keygate::tail(&env.server.stderr())
        )
    });
    eprintln!("client add was live after {live:?}");
    assert!(generation(&env.server).await > serving);
    assert_eq!(key_of(&env.openai.last()), OPENAI_KEY_2);
}

/// Publishes `bytes` as a new `..data` generation of a Kubernetes-style
/// Secret volume at `mount`, the way the kubelet does: a new timestamped
/// directory, a new symlink, renamed over `..data` in one step.
fn publish_secret_volume(mount: &Path, stamp: &str, bytes: &[u8]) {
    let dir = mount.join(stamp);
    fs::DirBuilder::new()
        .mode(0o700)
        .create(&dir)
        .expect("create timestamped dir");
    let file = dir.join("keygate.vault");
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o400)
        .open(&file)
        .expect("create vault in the timestamped dir");
    f.write_all(bytes).expect("write vault copy");
    f.sync_all().expect("sync vault copy");
    let tmp = mount.join("..data_tmp");
    symlink(stamp, &tmp).expect("symlink ..data_tmp");
    fs::rename(&tmp, mount.join("..data")).expect("rename ..data_tmp over ..data");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_kubernetes_style_symlink_swap_is_picked_up_within_a_second() {
    let openai = Mock::start(&[OPENAI_KEY, OPENAI_KEY_2], AuthStyle::Bearer).await;
    let xai = Mock::start(&[XAI_KEY], AuthStyle::Bearer).await;
    let kg = Keygate::new(
        &KeygateBuilder::new()
            .provider("openai", &openai.url(), "bearer")
            .provider("xai", &xai.url(), "bearer"),
    );
    kg.vault_init();
    kg.add_key("openai", OPENAI_KEY);
    let client_key = kg.add_client("app");

    // <mount>/keygate.vault -> ..data/keygate.vault, ..data -> ..2025_…_1
    let mount = kg.dir().join("secret-volume");
    fs::DirBuilder::new()
        .mode(0o700)
        .create(&mount)
        .expect("create mount dir");
    let first = "..2025_06_01_10_00_00.000000001";
    publish_secret_volume(
        &mount,
        first,
        &fs::read(kg.vault_path()).expect("read vault"),
    );
    symlink("..data/keygate.vault", mount.join("keygate.vault")).expect("symlink the vault");
    let mounted = mount.join("keygate.vault").display().to_string();
    let server = kg.serve_with(&[("KEYGATE_VAULT__PATH", mounted.as_str())]);

    let chat = || {
        Req::post("/v1/chat/completions")
            .bearer(&client_key)
            .json(&crate::support::chat_body("gpt-4o"))
    };
    let resp = server.send(chat()).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(key_of(&openai.last()), OPENAI_KEY);

    // The Secret is updated elsewhere (here: the CLI on the source vault),
    // then the kubelet swaps ..data and removes the old directory.
    rotate_no_verify(&kg, OPENAI_KEY_2);
    publish_secret_volume(
        &mount,
        "..2025_06_01_10_05_00.000000002",
        &fs::read(kg.vault_path()).expect("read vault"),
    );
    let swapped = Instant::now();
    fs::remove_dir_all(mount.join(first)).expect("remove the old timestamped dir");

    let live = eventually(LIVE_WITHIN, || async {
        let resp = server.send(chat()).await;
        (resp.status == 200 && key_of(&openai.last()) == OPENAI_KEY_2).then(|| swapped.elapsed())
    })
    .await;
    let live = live.unwrap_or_else(|| {
        panic!(
            "the ..data swap was not picked up within {LIVE_WITHIN:?}\n{}",
            crate::support::keygate::tail(&server.stderr())
        )
    });
    eprintln!("..data swap was live after {live:?}");
    let page = server.admin_get("/metrics").await.text();
    assert_eq!(
        metric_value(&page, "keygate_vault_reloads_total", &[("result", "error")]),
        Some(0.0),
        "the swap must not have produced a failed reload:\n{page}"
    );
    drop(server);
    drop(kg);
}
