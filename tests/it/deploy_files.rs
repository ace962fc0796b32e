//! The deploy files (README "Deploying"; `deploy/`) agree with keygate's
//! defaults: the Kubernetes manifests parse, point their probes at `/readyz`
//! and `/healthz` on the admin port, expose the default ports, mount the
//! vault and master key read-only with mode 0400, keep the ledger on a
//! volume claim, and give a drain longer than `[server] shutdown_grace`; the
//! systemd unit and the Dockerfile set the hardening and the paths the docs
//! promise; the Docker build context (`.dockerignore`) holds the sources
//! and no build output, vault, key or ledger. (No image registry is
//! reachable here, so the image is not built; `deployments.rs` runs each
//! file's way of running keygate; `systemd-analyze verify` runs when it is
//! installed.) Every metric the alert rules and the Grafana dashboard name
//! is exported by a running keygate (scraped here); `promtool check rules`
//! validates the rules (`.ci/run` installs promtool).

use std::time::Duration;

fn defaults() -> keygate::config::Config {
    keygate::config::Config::from_toml("").expect("the embedded defaults load")
}

fn manifests() -> Vec<serde_yaml::Value> {
    let text = std::fs::read_to_string("deploy/kubernetes/keygate.yaml").unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .map(|doc| serde::Deserialize::deserialize(doc).expect("a manifest parses"))
        .collect()
}

fn kind<'a>(docs: &'a [serde_yaml::Value], kind: &str) -> &'a serde_yaml::Value {
    docs.iter()
        .find(|d| d["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind} in deploy/kubernetes/keygate.yaml"))
}

#[test]
fn kubernetes_manifests_agree_with_the_defaults() {
    let config = defaults();
    let docs = manifests();
    for wanted in [
        "StatefulSet",
        "Service",
        "PodDisruptionBudget",
        "ServiceMonitor",
    ] {
        kind(&docs, wanted);
    }
    let workload = kind(&docs, "StatefulSet");
    let pod = &workload["spec"]["template"]["spec"];
    let grace = pod["terminationGracePeriodSeconds"].as_u64().unwrap();
    assert!(
        Duration::from_secs(grace) > config.server.shutdown_grace,
        "terminationGracePeriodSeconds {grace} must outlast shutdown_grace {:?}",
        config.server.shutdown_grace
    );
    let container = &pod["containers"][0];
    let ports: Vec<u64> = container["ports"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|p| p["containerPort"].as_u64().unwrap())
        .collect();
    assert_eq!(
        ports,
        [
            config.server.listen.port() as u64,
            config.server.admin_listen.port() as u64
        ]
    );
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(container["readinessProbe"]["httpGet"]["port"], "admin");
    assert_eq!(container["securityContext"]["readOnlyRootFilesystem"], true);
    // Secret volumes: 0400, written as decimal 256 (a bare `0400` is octal to
    // Kubernetes' YAML 1.1 reader but a string or 400 to YAML 1.2 readers).
    for volume in ["vault", "master-key"] {
        let v = pod["volumes"]
            .as_sequence()
            .unwrap()
            .iter()
            .find(|v| v["name"] == volume)
            .unwrap();
        let mode = &v["secret"]["defaultMode"];
        assert!(
            mode.as_u64() == Some(0o400),
            "{volume}: defaultMode {mode:?}"
        );
    }
    let env: Vec<String> = container["env"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap().to_owned())
        .collect();
    for name in [
        "KEYGATE_VAULT__PATH",
        "KEYGATE_VAULT__MASTER_KEY_FILE",
        "KEYGATE_METERING__DB",
    ] {
        assert!(env.iter().any(|e| e == name), "no {name}");
    }
    // The ledger outlives the pod: its volume is a claim, not an emptyDir.
    let db = container["env"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "KEYGATE_METERING__DB")
        .and_then(|e| e["value"].as_str())
        .unwrap();
    let ledger_volume = container["volumeMounts"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|m| db.starts_with(m["mountPath"].as_str().unwrap()))
        .map(|m| m["name"].as_str().unwrap())
        .expect("the ledger is on a volume");
    let claims = workload["spec"]["volumeClaimTemplates"]
        .as_sequence()
        .unwrap();
    assert!(
        claims
            .iter()
            .any(|c| c["metadata"]["name"] == ledger_volume),
        "the ledger's volume {ledger_volume} is not a PersistentVolumeClaim"
    );
    // The environment names are real config keys: they load.
    let overrides: Vec<(String, String)> = container["env"]
        .as_sequence()
        .unwrap()
        .iter()
        .filter_map(|e| {
            Some((
                e["name"].as_str()?.to_owned(),
                e["value"].as_str()?.to_owned(),
            ))
        })
        .filter(|(k, _)| k.contains("__"))
        .collect();
    let sources = keygate::config::Sources {
        explicit_file: None,
        default_file: None,
        env: overrides,
    };
    keygate::config::Config::load(&sources).expect("the manifest's environment is a valid config");
    let monitor = &kind(&docs, "ServiceMonitor")["spec"]["endpoints"][0];
    assert_eq!(monitor["path"], "/metrics");
}

#[test]
fn the_systemd_unit_and_the_dockerfile_carry_the_hardening() {
    let config = defaults();
    let unit = std::fs::read_to_string("deploy/systemd/keygate.service").unwrap();
    for line in [
        "DynamicUser=yes",
        "LoadCredential=master.key:",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "StateDirectory=keygate",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "KillSignal=SIGTERM",
    ] {
        assert!(
            unit.lines().any(|l| l.starts_with(line)),
            "keygate.service lacks `{line}`"
        );
    }
    let stop = unit
        .lines()
        .find_map(|l| l.strip_prefix("TimeoutStopSec="))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap();
    assert!(Duration::from_secs(stop) > config.server.shutdown_grace);
    if let Ok(out) = std::process::Command::new("systemd-analyze")
        .args(["verify", "deploy/systemd/keygate.service"])
        .output()
    {
        let text = String::from_utf8_lossy(&out.stderr);
        assert!(
            !text.contains("Unknown key") && !text.contains("Unknown section"),
            "systemd-analyze verify: {text}"
        );
    }
    let docker = std::fs::read_to_string("deploy/docker/Dockerfile").unwrap();
    for needle in [
        "USER 10001",
        "VOLUME [\"/data\"]",
        "EXPOSE 8080 8081",
        "STOPSIGNAL SIGTERM",
    ] {
        assert!(docker.contains(needle), "Dockerfile lacks `{needle}`");
    }
}

/// True when the `.dockerignore` pattern `pattern` matches the context
/// path `path` (both `/`-separated): Go's `filepath.Match` per component
/// (`*`, `?`), and `**` for any number of components.
fn docker_match(pattern: &[&str], path: &[&str]) -> bool {
    match (pattern.first(), path.first()) {
        (None, None) => true,
        (Some(&"**"), _) => {
            docker_match(&pattern[1..], path)
                || (!path.is_empty() && docker_match(pattern, &path[1..]))
        }
        (Some(p), Some(c)) => {
            glob(p.as_bytes(), c.as_bytes()) && docker_match(&pattern[1..], &path[1..])
        }
        _ => false,
    }
}

fn glob(p: &[u8], s: &[u8]) -> bool {
    match (p.first(), s.first()) {
        (None, None) => true,
        (Some(b'*'), _) => glob(&p[1..], s) || (!s.is_empty() && glob(p, &s[1..])),
        (Some(b'?'), Some(_)) => glob(&p[1..], &s[1..]),
        (Some(a), Some(b)) => a == b && glob(&p[1..], &s[1..]),
        _ => false,
    }
}

/// True when `.dockerignore` leaves `path` out of the build context: a
/// pattern matches it or one of its parent directories (no `!` patterns).
fn left_out(patterns: &[String], path: &str) -> bool {
    let parts: Vec<&str> = path.split('/').collect();
    patterns.iter().any(|pattern| {
        let pattern: Vec<&str> = pattern.trim_matches('/').split('/').collect();
        (1..=parts.len()).any(|n| docker_match(&pattern, &parts[..n]))
    })
}

#[test]
fn the_docker_build_context_holds_the_sources_and_no_secret_or_build_output() {
    let ignore =
        std::fs::read_to_string(".dockerignore").expect("a .dockerignore beside Cargo.toml");
    let patterns: Vec<String> = ignore
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
        .collect();
    assert!(
        patterns.iter().all(|p| !p.starts_with('!')),
        "re-included paths are not modelled here"
    );
    // What a working copy holds after `vault init`, a test run and a fuzz run.
    for path in [
        "target/release/keygate",
        "target/debug/deps/libkeygate.rlib",
        "data/keygate.vault",
        "data/master.key",
        "data/usage.sqlite-wal",
        "fuzz/target/x86_64-unknown-linux-gnu/release/vault_open",
        "keygate.vault",
        "config/master.key",
        "some/dir/usage.sqlite",
        ".git/config",
    ] {
        assert!(
            left_out(&patterns, path),
            "{path} would be sent to the Docker daemon"
        );
    }
    // Everything `cargo build --release --locked` reads is sent.
    let tracked = std::process::Command::new("git")
        .args(["ls-files"])
        .output()
        .expect("git");
    let tracked = String::from_utf8(tracked.stdout).unwrap();
    assert!(tracked.lines().count() > 100, "git ls-files: {tracked}");
    let dropped: Vec<&str> = tracked
        .lines()
        .filter(|f| left_out(&patterns, f) && !f.starts_with("fuzz/corpus/"))
        .collect();
    assert!(
        dropped.is_empty(),
        "sources left out of the build: {dropped:?}"
    );
}

/// Every `keygate_…` metric name in `text` (histogram series by family name).
fn metric_names(text: &str) -> std::collections::BTreeSet<String> {
    let mut names = std::collections::BTreeSet::new();
    let bytes = text.as_bytes();
    let mut at = 0;
    while let Some(found) = text[at..].find("keygate_") {
        let start = at + found;
        let mut end = start;
        while end < bytes.len() && (bytes[end].is_ascii_lowercase() || bytes[end] == b'_') {
            end += 1;
        }
        let name = &text[start..end];
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(name);
        names.insert(family.to_owned());
        at = end;
    }
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_in_the_alerts_and_the_dashboard_exists() {
    use crate::support::mock::{closed_port_url, AuthStyle, Mock};
    use crate::support::{chat_body, Keygate, KeygateBuilder, Req, OPENAI_KEY, OPENAI_KEY_2};
    let alerts = std::fs::read_to_string("deploy/prometheus/alerts.yaml").unwrap();
    let rules: serde_yaml::Value = serde_yaml::from_str(&alerts).expect("alerts.yaml parses");
    assert!(rules["groups"][0]["rules"].as_sequence().unwrap().len() >= 7);
    let dashboard = std::fs::read_to_string("deploy/grafana/keygate.json").unwrap();
    let _: serde_json::Value = serde_json::from_str(&dashboard).expect("keygate.json parses");
    let wanted: std::collections::BTreeSet<String> = metric_names(&alerts)
        .into_iter()
        .chain(metric_names(&dashboard))
        .collect();
    assert!(wanted.len() >= 12, "{wanted:?}");

    // A keygate whose series all exist: a rejected key and a fallback, a
    // key in its grace, an admin table (mint and delete counters), a Redis
    // that is not there.
    let mock = Mock::start(&[OPENAI_KEY], AuthStyle::Bearer).await;
    let kg = Keygate::new(
        &KeygateBuilder::new()
            .provider("openai", &mock.url(), "bearer")
            .extra(&format!(
                "[providers.openai.admin]\nproject = \"proj_x\"\nurl = \"{}\"\n",
                closed_port_url()
            )),
    );
    kg.vault_init();
    kg.add_key("openai", OPENAI_KEY);
    // The new current key is refused by the provider; the previous one, in
    // its grace (the grace-end gauge), carries the request.
    kg.run_with(
        &["key", "rotate", "openai", "--no-verify", "--grace", "1h"],
        Some(OPENAI_KEY_2),
        &[],
    )
    .assert_ok("key rotate");
    let client = kg.add_client("app");
    let decoy = kg.add_decoy("planted");
    let server = kg.serve_with(&[("KEYGATE_CLUSTER__REDIS_URL", "redis://127.0.0.1:9/0")]);
    let resp = server
        .send(
            Req::post("/v1/chat/completions")
                .bearer(&client)
                .json(&chat_body("gpt-4o")),
        )
        .await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    // A decoy presented (keygate_decoy_uses_total).
    let resp = server
        .send(
            Req::post("/v1/chat/completions")
                .bearer(&decoy)
                .json(&chat_body("gpt-4o")),
        )
        .await;
    assert_eq!(resp.status, 401);
    let page = server.admin_get("/metrics").await.text();
    let exported: std::collections::BTreeSet<String> = page
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect();
    let missing: Vec<&String> = wanted.difference(&exported).collect();
    assert!(
        missing.is_empty(),
        "named in deploy/ but not exported: {missing:?}"
    );

    match std::process::Command::new("promtool")
        .args(["check", "rules", "deploy/prometheus/alerts.yaml"])
        .output()
    {
        Ok(out) => assert!(
            out.status.success(),
            "promtool: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
        // .ci/run installs it, and says so with KEYGATE_REQUIRE_PROMTOOL.
        Err(_) => crate::support::skips::skip_unless_required(
            "deploy_files::every_metric_in_the_alerts_and_the_dashboard_exists (its `promtool check rules` part)",
            "promtool (apt-get install prometheus)",
            "KEYGATE_REQUIRE_PROMTOOL",
        ),
    }
}
