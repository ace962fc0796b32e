//! Does the vault scale? A vault of `VAULT_CLIENTS` clients (100,000) and
//! `VAULT_KEYS` current upstream keys (1,000), against one nearly empty, in
//! one run (docs/performance.md, "Vault at scale").
//!
//! Run: `cargo bench --bench vault_scale`
//! (`VAULT_CLIENTS=3000 VAULT_KEYS=10` for a smaller vault, `VAULT_ROUNDS=9`
//! for the medians, `VAULT_LOAD_SECONDS=10` for each load run,
//! `BENCH_KEYGATE_BIN=/path/to/keygate` to measure another build;
//! `VAULT_PROFILE_DIR=DIR` writes the big workspace into DIR, an empty
//! directory, measures `client add` and stops, leaving it there to be
//! profiled: `perf record -g keygate --config DIR/keygate.toml client add x`.)
//!
//! It prints:
//! - `client add`: the CLI process, wall time, median of `VAULT_ROUNDS`, and
//!   the library's steps in this process (load = read + decrypt + parse; a
//!   whole update = load + serialise + encrypt + write + fsync + rename);
//! - the server's reload after a change: `took_ms` of `GET /admin/status`'s
//!   `last_reload`, median and worst of the reloads of the run;
//! - RSS of `keygate serve` (VmRSS and VmHWM), the empty vault's and the big one's;
//! - the admin API's answers the status page reads, median of `VAULT_ROUNDS`;
//! - the proxy's p50/p99 under a paced load (8 connections, a request every
//!   10 ms each) without reloads, then with 20 reloads spread over the run.
//!
//! The mock upstream is this bench re-executed with `KEYGATE_BENCH_ROLE=mock`;
//! the big vault is written through the library (`support/big_vault.rs`).

// A benchmark panics loudly on a broken setup; that is its error handling.
#![allow(clippy::expect_used, clippy::unwrap_used)]

#[path = "support/big_vault.rs"]
mod big_vault;

use std::convert::Infallible;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};

type HttpClient = Client<HttpConnector, Full<Bytes>>;

fn main() {
    if std::env::var("KEYGATE_BENCH_ROLE").as_deref() == Ok("mock") {
        return run_mock();
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(bench());
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Answers every request with a small chat completion, whatever the key.
fn run_mock() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        println!("mock listening on {}", listener.local_addr().expect("addr"));
        loop {
            let (stream, _) = listener.accept().await.expect("accept");
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let service = hyper::service::service_fn(|request: Request<_>| async move {
                    let _ = BodyExt::collect(request.into_body()).await;
                    Ok::<_, Infallible>(
                        Response::builder()
                            .header("content-type", "application/json")
                            .body(Full::new(Bytes::from_static(
                                b"{\"id\":\"c\",\"object\":\"chat.completion\",\"model\":\"gpt-4o-mini\",\"choices\":[{\"index\":0,\"message\":{\"role\":\"assistant\",\"content\":\"ok\"},\"finish_reason\":\"stop\"}],\"usage\":{\"prompt_tokens\":20,\"completion_tokens\":2,\"total_tokens\":22}}",
                            )))
                            .expect("response"),
                    )
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
}

struct Proc(Child);
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `command`, reads its stdout until every marker has been seen, and
/// returns those lines' last words (the addresses).
fn spawn_reading(mut command: Command, markers: &[&str]) -> (Proc, Vec<String>) {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let mut reader = BufReader::new(child.stdout.take().expect("stdout"));
    let mut found = vec![String::new(); markers.len()];
    while found.iter().any(String::is_empty) {
        let mut line = String::new();
        if reader.read_line(&mut line).expect("read") == 0 {
            panic!("process exited before printing {markers:?}");
        }
        for (i, marker) in markers.iter().enumerate() {
            if line.contains(marker) {
                found[i] = line.trim().rsplit(' ').next().unwrap_or("").to_owned();
            }
        }
    }
    std::thread::spawn(move || for _ in reader.lines() {});
    (Proc(child), found)
}

fn keygate_exe() -> std::ffi::OsString {
    std::env::var_os("BENCH_KEYGATE_BIN").unwrap_or_else(|| env!("CARGO_BIN_EXE_keygate").into())
}

/// Runs one keygate command; returns its stdout.
fn keygate(config: &std::path::Path, args: &[&str]) -> String {
    keygate_at(0, config, args)
}

/// [`keygate`] under `nice -n NICE` (0: as is).
fn keygate_at(nice: u8, config: &std::path::Path, args: &[&str]) -> String {
    let mut command = Command::new("nice");
    command.arg("-n").arg(nice.to_string()).arg(keygate_exe());
    let out = command
        .arg("--config")
        .arg(config)
        .args(args)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .output()
        .expect("keygate");
    assert!(
        out.status.success(),
        "keygate {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// An admin token built at run time (no English word in it).
fn admin_token() -> String {
    format!("vs{}", "q7".repeat(12))
}

/// A workspace: config, vault, master key and ledger in `dir`.
fn workspace(dir: &std::path::Path, mock: &str) -> std::path::PathBuf {
    let config = dir.join("keygate.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n\
             [vault]\npath = \"{d}/keygate.vault\"\nmaster_key_file = \"{d}/master.key\"\n\
             [metering]\ndb = \"{d}/usage.sqlite\"\n\
             [providers.openai]\nbase_url = \"http://{mock}\"\n",
            d = dir.display(),
        ),
    )
    .expect("config");
    keygate(&config, &["vault", "init"]);
    config
}

fn client_key(out: &str) -> String {
    out.split_whitespace()
        .find(|w| w.starts_with("kg_"))
        .expect("client key")
        .to_owned()
}

struct Server {
    proc: Proc,
    client: String,
    admin: String,
}

fn serve(config: &std::path::Path) -> Server {
    let mut command = Command::new(keygate_exe());
    command
        .arg("--config")
        .arg(config)
        .arg("serve")
        .env("RUST_LOG", "warn")
        .env("KEYGATE_ADMIN_TOKEN", admin_token());
    let (proc, addrs) = spawn_reading(command, &["client listener on", "admin listener on"]);
    Server {
        proc,
        client: addrs[0].clone(),
        admin: addrs[1].clone(),
    }
}

/// (VmRSS, VmHWM) in MiB.
fn rss_mib(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
            .unwrap_or(0.0)
            / 1024.0
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn http_client() -> HttpClient {
    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(64)
        .build(http)
}

const CHAT: &str =
    "{\"model\":\"gpt-4o-mini\",\"messages\":[{\"role\":\"user\",\"content\":\"Say ok.\"}]}";

async fn chat(client: &HttpClient, addr: &str, key: &str) -> Duration {
    let started = Instant::now();
    let request = Request::post(format!("http://{addr}/v1/chat/completions"))
        .header("authorization", format!("Bearer {key}"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(CHAT.as_bytes())))
        .expect("request");
    let response = client.request(request).await.expect("response");
    let status = response.status();
    response.into_body().collect().await.expect("body");
    assert!(status.is_success(), "status {status}");
    started.elapsed()
}

/// GET an admin path: (time, body).
async fn admin_get(client: &HttpClient, addr: &str, path: &str) -> (Duration, Bytes) {
    let started = Instant::now();
    let request = Request::get(format!("http://{addr}{path}"))
        .header("authorization", format!("Bearer {}", admin_token()))
        .body(Full::new(Bytes::new()))
        .expect("request");
    let response = client.request(request).await.expect("response");
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    assert!(status.is_success(), "{path}: status {status}");
    (started.elapsed(), body)
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// 8 connections, each sending a request every 10 ms (or as soon as the last
/// one answers, when that took longer), for `run_for`; every latency.
async fn paced_load(addr: &str, key: &str, run_for: Duration) -> Vec<Duration> {
    let client = http_client();
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (client, addr, key) = (client.clone(), addr.to_owned(), key.to_owned());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let end = Instant::now() + run_for;
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            while Instant::now() < end {
                tick.tick().await;
                latencies.push(chat(&client, &addr, &key).await);
            }
            latencies
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.expect("load task"));
    }
    all.sort();
    all
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

/// The last reload's `took_ms` and generation, from `GET /admin/status`.
async fn last_reload(client: &HttpClient, admin: &str) -> (u64, u64) {
    let (_, body) = admin_get(client, admin, "/admin/status").await;
    let status: serde_json::Value = serde_json::from_slice(&body).expect("status json");
    let last = &status["last_reload"];
    (
        last["took_ms"].as_u64().unwrap_or(0),
        last["generation"].as_u64().unwrap_or(0),
    )
}

/// Waits until the server serves generation `at_least`; its reload's took_ms.
async fn reload_seen(client: &HttpClient, admin: &str, at_least: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (took, generation) = last_reload(client, admin).await;
        if generation >= at_least {
            return took;
        }
        assert!(Instant::now() < deadline, "no reload to {at_least}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn bench() {
    let clients: usize = env_or("VAULT_CLIENTS", 100_000);
    let keys: usize = env_or("VAULT_KEYS", 1000);
    let rounds: usize = env_or("VAULT_ROUNDS", 9);
    let load_for = Duration::from_secs(env_or("VAULT_LOAD_SECONDS", 10));
    let mut mock_cmd = Command::new(std::env::current_exe().expect("exe"));
    mock_cmd.env("KEYGATE_BENCH_ROLE", "mock");
    let (_mock, mock) = spawn_reading(mock_cmd, &["mock listening on"]);
    let mock = &mock[0];
    let http = http_client();

    // The empty vault: one key, one client.
    let empty_dir = tempfile::tempdir().expect("tempdir");
    let empty = workspace(empty_dir.path(), mock);
    big_vault::fill(
        &empty_dir.path().join("keygate.vault"),
        &big_vault::kek(&empty_dir.path().join("master.key")),
        "openai",
        0,
        1,
    );
    let key = client_key(&keygate(&empty, &["client", "add", "load"]));
    let server = serve(&empty);
    for _ in 0..200 {
        chat(&http, &server.client, &key).await;
    }
    let empty_rss = rss_mib(server.proc.0.id());
    drop(server);

    // The big vault (kept in VAULT_PROFILE_DIR when that is set).
    let temp = tempfile::tempdir().expect("tempdir");
    let profile_dir = std::env::var_os("VAULT_PROFILE_DIR").map(std::path::PathBuf::from);
    let dir = profile_dir.as_deref().unwrap_or(temp.path());
    let config = workspace(dir, mock);
    let vault_path = dir.join("keygate.vault");
    let kek = big_vault::kek(&dir.join("master.key"));
    let started = Instant::now();
    big_vault::fill(&vault_path, &kek, "openai", clients, keys);
    let size = std::fs::metadata(&vault_path).expect("vault").len();
    println!(
        "vault: {clients} clients, {keys} keys, {:.1} MiB, written in {:.1} s",
        size as f64 / 1048576.0,
        started.elapsed().as_secs_f64()
    );
    let key = client_key(&keygate(&config, &["client", "add", "load"]));

    // client add, the CLI process; and the library's steps.
    let mut add = Vec::new();
    for i in 0..rounds {
        let started = Instant::now();
        keygate(&config, &["client", "add", &format!("timed-{i}")]);
        add.push(ms(started.elapsed()));
    }
    let vault = keygate::vault::Vault::new(&vault_path);
    let (mut load, mut update) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        let started = Instant::now();
        vault.load(&kek).expect("load");
        load.push(ms(started.elapsed()));
        let started = Instant::now();
        vault
            .update(&kek, |_| Ok::<_, keygate::vault::VaultError>(()))
            .expect("update");
        update.push(ms(started.elapsed()));
    }
    println!(
        "client add (CLI process): median {:.1} ms of {rounds}; in process: load {:.1} ms, whole update {:.1} ms",
        median(add),
        median(load),
        median(update)
    );
    if profile_dir.is_some() {
        println!("workspace kept: {}", config.display());
        return;
    }

    let server = serve(&config);
    let pid = server.proc.0.id();
    for _ in 0..200 {
        chat(&http, &server.client, &key).await;
    }
    let big_rss = rss_mib(pid);

    // The admin answers the status page reads.
    for path in [
        "/admin/status",
        "/admin/clients",
        "/admin/keys",
        "/admin/providers",
        "/admin/activity",
        "/admin/usage?since=1h",
        "/admin/events?since=7d",
    ] {
        let mut times = Vec::new();
        let mut bytes = 0;
        for _ in 0..rounds {
            let (took, body) = admin_get(&http, &server.admin, path).await;
            times.push(ms(took));
            bytes = body.len();
        }
        println!(
            "GET {path:<24} median {:>7.1} ms, {:>9} bytes",
            median(times),
            bytes
        );
    }

    // Load without reloads, then with 20 reloads spread over the run.
    let quiet = paced_load(&server.client, &key, load_for).await;
    let (_, mut generation) = last_reload(&http, &server.admin).await;
    let load = {
        let (addr, key) = (server.client.clone(), key.clone());
        tokio::spawn(async move { paced_load(&addr, &key, load_for).await })
    };
    let mut reloads = Vec::new();
    let gap = load_for / 21;
    for i in 0..20 {
        tokio::time::sleep(gap).await;
        // The operator's change, as the operator makes it: a CLI process,
        // run under `nice` so that its own ~170 ms of CPU on this 2-core
        // box is not what the load run measures (a write in this process
        // stalled the load generator's threads as well).
        let config = config.clone();
        tokio::task::spawn_blocking(move || {
            let name = format!("bulk-{i}");
            let rpm = (1000 + i).to_string();
            keygate_at(10, &config, &["client", "limits", &name, "--rpm", &rpm]);
        })
        .await
        .expect("change task");
        generation += 1;
        reloads.push(reload_seen(&http, &server.admin, generation).await as f64);
    }
    let busy = load.await.expect("load");
    let after = rss_mib(pid);
    let worst = reloads.iter().copied().fold(0.0, f64::max);
    println!(
        "reload after a change (took_ms): median {:.0} ms, worst {worst:.0} ms, of {}",
        median(reloads.clone()),
        reloads.len()
    );
    for (name, run) in [("no reloads", &quiet), ("20 reloads", &busy)] {
        println!(
            "load, {name:<10}: {:>6} requests, p50 {:.2} ms, p99 {:.2} ms, max {:.1} ms",
            run.len(),
            ms(percentile(run, 0.5)),
            ms(percentile(run, 0.99)),
            ms(*run.last().expect("requests"))
        );
    }
    println!(
        "RSS: empty vault {:.1} MiB (peak {:.1}); big vault {:.1} MiB (peak {:.1}), after the reloads {:.1} MiB (peak {:.1}); above empty {:.1} MiB",
        empty_rss.0,
        empty_rss.1,
        big_rss.0,
        big_rss.1,
        after.0,
        after.1,
        after.0.max(big_rss.0) - empty_rss.0
    );
}
