//! The life of keygate processes under stress (docs/design.md §2, §3 `shutdown_grace`,
//! §6 vault writes): SIGTERM with streams in flight, many writers at once,
//! writers killed mid-write, and where secrets can (not) be seen: argv,
//! environment, `--help`, logs.

use std::collections::{BTreeSet, VecDeque};
use std::hash::{BuildHasher, RandomState};
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::support::bad_upstream::{
    drain, hardened, read_until, BadUpstream, BodyEnd, End, RawConn, RawEnd, Script,
};
use crate::support::client::{open_h1, send_h1};
use crate::support::{blocking, find_leaks, Env, Keygate, KeygateBuilder, Req, OPENAI_KEY};

const GRACE: Duration = Duration::from_secs(2);

async fn env_for(bad: &BadUpstream) -> Env {
    let url = bad.url();
    Env::setup()
        .config(move |b| hardened(b).provider("openai", &url, "bearer"))
        .start()
        .await
}

fn stream_req(env: &Env) -> Req {
    Req::post("/v1/chat/completions")
        .bearer(&env.client_key)
        .json(&json!({"model": "gpt-4o", "messages": [], "stream": true}))
}

/// True when a new request on `addr` is not served (refused, closed, or no answer).
async fn not_served(addr: SocketAddr) -> bool {
    let Ok(Ok(stream)) = tokio::time::timeout(
        Duration::from_millis(300),
        tokio::net::TcpStream::connect(addr),
    )
    .await
    else {
        return true;
    };
    let mut conn = RawConn {
        stream,
        got: Vec::new(),
    };
    let _ = conn
        .send(format!("GET /v1/models HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await;
    let end = conn.read_response(Duration::from_millis(300)).await;
    conn.status().is_none() && (end != RawEnd::Open || conn.got.is_empty())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_lets_a_stream_shorter_than_the_grace_finish_then_exits_0() {
    let bad = BadUpstream::start().await;
    let mut env = env_for(&bad).await;
    // Six events 200 ms apart: ~1 s, inside the 2 s grace.
    bad.push(Script::Sse {
        events: 6,
        interval: Duration::from_millis(200),
        end: End::Clean,
    });
    let resp = open_h1(env.server.client, stream_req(&env)).await;
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let mut text = read_until(&mut body, "piece-0").await;

    let t = Instant::now();
    env.server.signal_term();
    let addr = env.server.client;
    let draining = crate::support::eventually(Duration::from_secs(1), || async {
        not_served(addr).await.then_some(())
    })
    .await;
    let (rest, how) = drain(&mut body, Duration::from_secs(3)).await;
    text.push_str(&rest);
    env.server.record("stream across SIGTERM", text.clone());
    assert_eq!(
        how,
        BodyEnd::Clean,
        "an in-flight stream shorter than shutdown_grace must finish: {text:?}"
    );
    assert!(text.ends_with("data: [DONE]\n\n"), "{text:?}");
    assert!(text.contains("piece-5"), "{text:?}");
    assert!(
        draining.is_some(),
        "keygate still served new requests during the drain"
    );

    let status = env.server.wait_exit();
    let took = t.elapsed();
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(0),
        "serve must exit 0 after draining (got {status:?})\n{}",
        crate::support::keygate::tail(&env.server.stderr())
    );
    assert!(
        took < GRACE + Duration::from_secs(1),
        "exit took {} ms after SIGTERM although the only stream ended after ~1 s",
        took.as_millis()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_cuts_a_stream_longer_than_the_grace_and_exits_in_time() {
    let bad = BadUpstream::start().await;
    let mut env = env_for(&bad).await;
    // Forty events 250 ms apart: 10 s, far beyond the 2 s grace.
    bad.push(Script::Sse {
        events: 40,
        interval: Duration::from_millis(250),
        end: End::Clean,
    });
    let resp = open_h1(env.server.client, stream_req(&env)).await;
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let mut text = read_until(&mut body, "piece-0").await;

    let t = Instant::now();
    env.server.signal_term();
    let reader = tokio::spawn(async move {
        let (rest, how) = drain(&mut body, Duration::from_secs(6)).await;
        (rest, how, Instant::now())
    });
    let status = env.server.wait_exit();
    let took = t.elapsed();
    let (rest, how, cut_at) = reader.await.expect("stream reader");
    text.push_str(&rest);
    env.server.record("stream cut by shutdown", text.clone());

    assert!(
        took >= GRACE - Duration::from_millis(300),
        "serve exited {} ms after SIGTERM: it must drain in-flight streams for shutdown_grace",
        took.as_millis()
    );
    assert!(
        took <= GRACE + Duration::from_secs(3),
        "shutdown_grace is 2s: serve took {} ms to exit after SIGTERM",
        took.as_millis()
    );
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(0),
        "SIGTERM ends serve with 0 even when the grace runs out (got {status:?})\n{}",
        crate::support::keygate::tail(&env.server.stderr())
    );
    assert!(
        text.contains("piece-4"),
        "the stream must keep flowing during the grace: {text:?}"
    );
    assert!(!text.contains("[DONE]"), "{text:?}");
    assert!(
        matches!(how, BodyEnd::Broken(_)),
        "a stream cut by shutdown must end broken, not {how:?}"
    );
    assert!(
        cut_at.duration_since(t) <= GRACE + Duration::from_secs(3),
        "the stream was cut only {} ms after SIGTERM",
        cut_at.duration_since(t).as_millis()
    );
}

/// `keygate --config … ARGS` as the harness runs it, with pipes, not waited for.
fn spawn_cli(kg: &Keygate, args: &[&str], env: &[(&str, &str)]) -> Child {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_keygate"));
    cmd.arg("--config")
        .arg(kg.config_path())
        .args(args)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", kg.dir())
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .current_dir(kg.dir())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.spawn().expect("spawn keygate")
}

/// Waits at most `limit` for `child`, then collects its output; kills it on timeout.
fn finish(mut child: Child, limit: Duration) -> (Option<ExitStatus>, String, String) {
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Ok(Some(s)) = child.try_wait() {
            break Some(s);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let mut out = String::new();
    let mut err = String::new();
    if let Some(mut s) = child.stdout.take() {
        let _ = s.read_to_string(&mut out);
    }
    if let Some(mut s) = child.stderr.take() {
        let _ = s.read_to_string(&mut err);
    }
    (status, out, err)
}

fn json_list(kg: &Keygate, args: &[&str]) -> Vec<serde_json::Value> {
    let out = kg.run(args);
    out.assert_ok(&args.join(" "));
    serde_json::from_str::<Vec<serde_json::Value>>(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "`{}` did not print a JSON list ({e}): {}",
            args.join(" "),
            out.stdout
        )
    })
}

fn field_set(list: &[serde_json::Value], field: &str) -> BTreeSet<String> {
    list.iter()
        .filter_map(|v| v[field].as_str().map(str::to_string))
        .collect()
}

fn temp_files(kg: &Keygate) -> Vec<String> {
    std::fs::read_dir(kg.dir())
        .expect("read dir")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp"))
        .collect()
}

/// A fake upstream secret per writer.
fn writer_secret(tag: &str) -> String {
    format!("sk-test-{tag}-Hq4Wn7Zr2Ku9Mb5Xe1Tc8Lp3Vd6")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_cli_and_admin_writers_lose_nothing() {
    let kg = Keygate::new(&hardened(KeygateBuilder::new()));
    kg.vault_init();
    kg.add_key("openai", OPENAI_KEY);
    let token = "kgadmin-test-Rb8Ny3Qs6Wd1Fh4Jm7Tx0Vc2";
    kg.register_secret(token);
    let server = kg.serve_with(&[("KEYGATE_ADMIN_TOKEN", token)]);
    let admin = server.admin;

    // Admin API writers: 10 tasks, 2 keys each, slightly staggered.
    let mut admin_tasks = Vec::new();
    for i in 0..10 {
        for j in 0..2 {
            let secret = writer_secret(&format!("adm{i}x{j}"));
            kg.register_secret(&secret);
            let label = format!("adm-{i}-{j}");
            let token = token.to_string();
            let stagger = Duration::from_millis(RandomState::new().hash_one((i, j)) % 40);
            admin_tasks.push(tokio::spawn(async move {
                tokio::time::sleep(stagger).await;
                let resp = send_h1(
                    admin,
                    Req::post("/admin/keys/openai")
                        .bearer(&token)
                        .json(&json!({"secret": secret, "label": label})),
                )
                .await;
                (label, resp)
            }));
        }
    }
    // CLI writers at the same time: 10 `client add`, 5 `key add`.
    let cli = blocking(|| {
        std::thread::scope(|s| {
            let mut handles = Vec::new();
            for i in 0..10 {
                let kg = &kg;
                handles.push(s.spawn(move || {
                    let out = kg.run(&["client", "add", &format!("w{i}")]);
                    (format!("client add w{i}"), out.code, out.stderr)
                }));
            }
            for i in 0..5 {
                let kg = &kg;
                let secret = writer_secret(&format!("cli{i}"));
                kg.register_secret(&secret);
                handles.push(s.spawn(move || {
                    let label = format!("cli-{i}");
                    let out = kg.run_with(
                        &["key", "add", "openai", "--label", &label],
                        Some(&secret),
                        &[],
                    );
                    (format!("key add {label}"), out.code, out.stderr)
                }));
            }
            handles
                .into_iter()
                .map(|h| h.join().expect("writer thread"))
                .collect::<Vec<_>>()
        })
    });
    for (what, code, stderr) in &cli {
        assert_eq!(
            *code,
            Some(0),
            "`{what}` failed while others wrote: {stderr}"
        );
    }
    for t in admin_tasks {
        let (label, resp) = t.await.expect("admin task");
        kg.record(&format!("admin add {label}"), resp.everything());
        assert!(
            resp.status.is_success(),
            "admin add {label} failed while others wrote: {} {}",
            resp.status,
            resp.text()
        );
    }

    let clients = field_set(&json_list(&kg, &["client", "list", "--json"]), "name");
    let keys = json_list(&kg, &["key", "list", "--json"]);
    let labels = field_set(&keys, "label");
    let mut missing = Vec::new();
    for i in 0..10 {
        if !clients.contains(&format!("w{i}")) {
            missing.push(format!("client w{i}"));
        }
        for j in 0..2 {
            if !labels.contains(&format!("adm-{i}-{j}")) {
                missing.push(format!("key adm-{i}-{j}"));
            }
        }
    }
    for i in 0..5 {
        if !labels.contains(&format!("cli-{i}")) {
            missing.push(format!("key cli-{i}"));
        }
    }
    assert!(
        missing.is_empty(),
        "concurrent writes were lost: {missing:?}\nclients: {clients:?}\nkeys: {labels:?}"
    );
    assert_eq!(
        keys.len(),
        1 + 20 + 5,
        "exactly the keys written: {labels:?}"
    );
    assert!(
        keys.iter().all(|k| k["state"] == "current"),
        "every added key is current: {keys:?}"
    );

    // The running server sees the same vault.
    let listed = send_h1(admin, Req::get("/admin/keys").bearer(token)).await;
    kg.record("admin GET /admin/keys", listed.everything());
    assert_eq!(listed.status, 200, "{}", listed.text());
    let text = listed.text();
    for i in 0..5 {
        assert!(
            text.contains(&format!("cli-{i}")),
            "serve missed cli-{i}: {text}"
        );
    }
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_during_writes_never_corrupts_the_vault() {
    let kg = Keygate::new(&KeygateBuilder::new());
    kg.vault_init();
    kg.add_key("openai", OPENAI_KEY);
    let random = RandomState::new();
    let (mut started_keys, mut done_keys) = (BTreeSet::new(), BTreeSet::new());
    let (mut started_clients, mut done_clients) = (BTreeSet::new(), BTreeSet::new());
    let mut killed = 0;

    blocking(|| {
        for round in 0..6 {
            let mut children = VecDeque::new();
            for i in 0..4 {
                let n = round * 4 + i;
                let child = if n % 2 == 0 {
                    let name = format!("c{n}");
                    started_clients.insert(name.clone());
                    (
                        name.clone(),
                        false,
                        spawn_cli(&kg, &["client", "add", &name], &[]),
                    )
                } else {
                    let label = format!("k{n}");
                    let secret = writer_secret(&format!("kill{n}"));
                    kg.register_secret(&secret);
                    started_keys.insert(label.clone());
                    let mut c = spawn_cli(&kg, &["key", "add", "openai", "--label", &label], &[]);
                    let mut stdin = c.stdin.take().expect("stdin");
                    let _ = stdin.write_all(secret.as_bytes());
                    drop(stdin);
                    (label, true, c)
                };
                children.push_back(child);
            }
            for (i, (name, is_key, mut child)) in children.into_iter().enumerate() {
                if i < 2 {
                    // SIGKILL at a random moment in the first 40 ms of its life.
                    std::thread::sleep(Duration::from_millis(random.hash_one((round, i)) % 40));
                    let _ = child.kill();
                }
                let (status, _out, err) = finish(child, Duration::from_secs(30));
                let status = status.unwrap_or_else(|| panic!("{name} hung"));
                if status.success() {
                    if is_key {
                        done_keys.insert(name);
                    } else {
                        done_clients.insert(name);
                    }
                } else if status.code().is_none() {
                    killed += 1;
                } else {
                    panic!("{name} failed on its own ({status:?}): {err}");
                }
            }
            // The vault always still decrypts.
            let out = kg.run(&["key", "list", "--json"]);
            out.assert_ok(&format!("key list after kill round {round}"));
        }
    });

    let keys = json_list(&kg, &["key", "list", "--json"]);
    let labels: Vec<String> = keys
        .iter()
        .filter_map(|k| k["label"].as_str().map(str::to_string))
        .collect();
    let label_set: BTreeSet<String> = labels.iter().cloned().collect();
    assert_eq!(
        labels.len(),
        label_set.len(),
        "a key appears twice: {labels:?}"
    );
    assert!(
        done_keys.is_subset(&label_set),
        "keys whose `key add` exited 0 are missing: {:?}",
        done_keys.difference(&label_set).collect::<Vec<_>>()
    );
    assert!(
        label_set.is_subset(&started_keys),
        "keys nobody added: {:?}",
        label_set.difference(&started_keys).collect::<Vec<_>>()
    );
    assert_eq!(
        keys.len(),
        label_set.len() + 1,
        "the original key (no label) plus the labelled ones: {keys:?}"
    );
    assert!(
        keys.iter().all(|k| k["state"] == "current"),
        "exactly the added keys are current, nothing else: {keys:?}"
    );
    let clients = field_set(&json_list(&kg, &["client", "list", "--json"]), "name");
    assert!(
        done_clients.is_subset(&clients) && clients.is_subset(&started_clients),
        "clients: completed {done_clients:?}, started {started_clients:?}, present {clients:?}"
    );

    // Temp files: at most one per killed writer, and a later write adds none.
    let before = temp_files(&kg);
    assert!(
        before.len() <= killed,
        "{} temp files for {killed} killed writers: {before:?}",
        before.len()
    );
    kg.add_client("after-the-kills");
    let after = temp_files(&kg);
    assert!(
        after.len() <= before.len(),
        "a clean write left a temp file: before {before:?}, after {after:?}"
    );
    eprintln!(
        "kill -9: {killed} writers killed, {} keys and {} clients committed, temp files before/after a clean write: {}/{}",
        label_set.len(),
        clients.len(),
        before.len(),
        after.len()
    );
}

#[test]
fn a_later_write_cleans_up_a_temp_file_left_by_a_killed_writer() {
    use std::os::unix::fs::OpenOptionsExt;
    let kg = Keygate::new(&KeygateBuilder::new());
    kg.vault_init();
    // What a writer killed after creating its temp file leaves behind.
    let stale = kg.dir().join(".keygate.vault.tmp.00c0ffee00c0ffee");
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&stale)
        .and_then(|mut f| f.write_all(&std::fs::read(kg.vault_path())?))
        .expect("plant a stale temp file");
    kg.add_client("after-a-crash");
    kg.add_key("openai", OPENAI_KEY);
    assert!(
        !stale.exists(),
        "the stale temp file {} is still there after two vault writes; every killed \
         writer leaves one more (each holds an encrypted copy of the vault)",
        stale.display()
    );
}

#[test]
fn secret_is_not_in_argv_or_environment_while_key_add_waits_for_stdin() {
    let kg = Keygate::new(&KeygateBuilder::new());
    kg.vault_init();
    let secret = writer_secret("proc");
    kg.register_secret(&secret);
    let (first, second) = secret.split_at(secret.len() / 2);

    let mut child = spawn_cli(&kg, &["key", "add", "openai", "--label", "from-stdin"], &[]);
    let pid = child.id();
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(first.as_bytes()).expect("write first half");
    stdin.flush().expect("flush");
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        matches!(child.try_wait(), Ok(None)),
        "`key add` must still be waiting for the rest of its secret on stdin"
    );
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).expect("read cmdline");
    let environ = std::fs::read(format!("/proc/{pid}/environ")).expect("read environ");
    let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
    let environ = String::from_utf8_lossy(&environ).replace('\0', "\n");
    assert!(
        cmdline.contains("key add openai"),
        "not the process we started: {cmdline}"
    );
    let leaks = find_leaks(
        &[secret.clone(), first.to_string()],
        &[
            ("cmdline".to_string(), cmdline.clone()),
            ("environ".to_string(), environ),
        ],
    );
    assert!(leaks.is_empty(), "{}", leaks.join("\n"));

    stdin
        .write_all(second.as_bytes())
        .expect("write second half");
    drop(stdin);
    let (status, out, err) = finish(child, Duration::from_secs(30));
    assert!(
        status.is_some_and(|s| s.success()),
        "key add failed ({status:?}): {out} {err}"
    );
    kg.record("key add (stdin in two parts)", format!("{out}\n{err}"));
    let keys = json_list(&kg, &["key", "list", "--json"]);
    let key = keys
        .iter()
        .find(|k| k["label"] == "from-stdin")
        .unwrap_or_else(|| panic!("no key labelled from-stdin: {keys:?}"));
    let fingerprint = key["fingerprint"].as_str().unwrap_or_default();
    assert!(
        fingerprint.ends_with(&secret[secret.len() - 4..]),
        "the stored key is not the whole secret written in two parts: {fingerprint}"
    );
}

/// Every `Commands:` entry of a clap help text (without `help`).
fn subcommands(help: &str) -> Vec<String> {
    help.lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .map(str::to_string)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn help_texts_and_serve_output_never_show_the_admin_token_or_other_secrets() {
    let kg = Keygate::new(&KeygateBuilder::new());
    kg.vault_init();
    kg.add_key("openai", OPENAI_KEY);
    let token = "kgadmin-test-Pz5Lk8Jd2Sa7Gf0Hq3Wx6Ec1";
    let passphrase = "correct-horse-battery-staple-Xr7Qm2";
    kg.register_secret(token);
    kg.register_secret(passphrase);
    let env = [
        ("KEYGATE_ADMIN_TOKEN", token),
        ("KEYGATE_PASSPHRASE", passphrase),
    ];

    // `--help` of the binary and of every subcommand, found from the help itself.
    let mut queue: VecDeque<Vec<String>> = VecDeque::from([Vec::new()]);
    let mut seen = 0;
    let mut captures = Vec::new();
    while let Some(path) = queue.pop_front() {
        let mut args: Vec<&str> = path.iter().map(String::as_str).collect();
        args.push("--help");
        let out = kg.run_with(&args, None, &env);
        out.assert_ok(&args.join(" "));
        seen += 1;
        for sub in subcommands(&out.stdout) {
            let mut next = path.clone();
            next.push(sub);
            queue.push_back(next);
        }
        captures.push((args.join(" "), format!("{}{}", out.stdout, out.stderr)));
    }
    assert!(seen >= 15, "only {seen} help texts found: {captures:?}");
    let leaks = find_leaks(&[token.to_string(), passphrase.to_string()], &captures);
    assert!(leaks.is_empty(), "{}", leaks.join("\n"));

    // `serve` with the token set, logging at trace: used, refused, never printed.
    let mut server = kg.serve_with(&[("KEYGATE_ADMIN_TOKEN", token)]);
    let ok = send_h1(server.admin, Req::get("/admin/keys").bearer(token)).await;
    assert_eq!(ok.status, 200, "{}", ok.text());
    let wrong = send_h1(
        server.admin,
        Req::get("/admin/keys").bearer("kgadmin-test-wrong-token-000000"),
    )
    .await;
    assert_eq!(wrong.status, 401, "{}", wrong.text());
    let on_client_listener = server.send(Req::get("/v1/models").bearer(token)).await;
    assert_eq!(on_client_listener.status, 401);
    let reload = send_h1(server.admin, Req::post("/admin/reload").bearer(token)).await;
    assert_eq!(reload.status, 200, "{}", reload.text());
    let metrics = server.admin_get("/metrics").await;
    for (label, resp) in [
        ("admin ok", &ok),
        ("admin wrong", &wrong),
        ("reload", &reload),
        ("metrics", &metrics),
    ] {
        kg.record(label, resp.everything());
    }
    let status = server.terminate();
    assert_eq!(status.and_then(|s| s.code()), Some(0));
    let logs = vec![
        ("serve stdout".to_string(), server.stdout()),
        ("serve stderr".to_string(), server.stderr()),
    ];
    assert!(
        server.stderr().contains("keygate serving"),
        "no logs from serve to check: {:?}",
        server.stderr()
    );
    let leaks = find_leaks(&[token.to_string()], &logs);
    assert!(leaks.is_empty(), "{}", leaks.join("\n"));

    // A config error while the token is set (even mistakenly put into a config key).
    let out = kg.run_with(
        &["serve"],
        None,
        &[
            ("KEYGATE_ADMIN_TOKEN", token),
            ("KEYGATE_ADMIN__TOKEN", token),
        ],
    );
    out.assert_code(2, "serve with an unknown config key");
    assert!(
        !out.stderr.contains(token) && !out.stdout.contains(token),
        "{}",
        out.stderr
    );
}
