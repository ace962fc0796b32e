//! Each deploy file's way of running keygate, run (README "Deploying",
//! docs/operations.md "Deployments"): the Dockerfile, the Kubernetes
//! manifest and the systemd unit are read for the uid, groups, environment,
//! volumes and file modes they give keygate, and keygate runs that way
//! ([`Jail`]: `setpriv`, `unshare`, a read-only root where the file says
//! so; no container runtime). Each starts, serves, takes the documented
//! commands against the running service (`docker exec`; root with the
//! unit's paths; a new vault Secret), and every file in its data directory
//! stays the service user's. A Kubernetes pod restart keeps budgets. A
//! command that could not keep a file's owner refuses and says what to run.
//! Every absolute path a deploy file names is placed under the test's
//! `root/`; listeners go to 127.0.0.1:0.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::support::jail::{not_owned_by, owner_and_mode, set_owner_and_mode, Jail};
use crate::support::mock::{AuthStyle, Mock};
use crate::support::{
    chat_body, eventually, Keygate, KeygateBuilder, Req, Server, OPENAI_KEY, OPENAI_KEY_2,
    RELOAD_WAIT,
};

/// A third openai key the mock accepts (obviously fake, made at run time).
fn third_key() -> String {
    format!("sk-test-oa3-{}", "Rt5Yh8Kp2Lm6Nq9Wz3Xc7")
}

/// A keygate (config: the openai mock) whose tempdir other users may enter.
async fn world() -> (Keygate, Mock) {
    let mock = Mock::start(&[OPENAI_KEY, OPENAI_KEY_2, &third_key()], AuthStyle::Bearer).await;
    let kg = Keygate::new(&KeygateBuilder::new().provider("openai", &mock.url(), "bearer"));
    set_owner_and_mode(kg.dir(), 0, 0, 0o755);
    (kg, mock)
}

/// Where the deploy file's absolute `path` is in this test.
fn placed(kg: &Keygate, path: &str) -> PathBuf {
    kg.dir().join("root").join(path.trim_start_matches('/'))
}

/// The deploy file's environment, its paths placed, its listeners on port 0.
fn placed_env(kg: &Keygate, pairs: &[(String, String)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| {
            let v = if k.ends_with("LISTEN") {
                "127.0.0.1:0".to_owned()
            } else if v.starts_with('/') {
                placed(kg, v).display().to_string()
            } else {
                v.clone()
            };
            (k.clone(), v)
        })
        .collect()
}

fn pairs(env: &[(String, String)]) -> Vec<(&str, &str)> {
    env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

fn value<'a>(env: &'a [(String, String)], key: &str) -> &'a str {
    env.iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
        .unwrap_or_else(|| panic!("no {key} in {env:?}"))
}

fn mkdir(path: &Path, uid: u32, gid: u32, mode: u32) {
    std::fs::create_dir_all(path).unwrap();
    set_owner_and_mode(path, uid, gid, mode);
}

fn chat(client: &str) -> Req {
    let mut body = chat_body("gpt-4o");
    body["max_tokens"] = serde_json::json!(7);
    Req::post("/v1/chat/completions").bearer(client).json(&body)
}

/// Waits until `client` gets a 200 (a change reached the server).
async fn served(server: &Server, client: &str, within: Duration) {
    let ok = eventually(within, || async {
        (server.send(chat(client)).await.status == 200).then_some(())
    })
    .await;
    let last = server.send(chat(client)).await;
    assert!(
        ok.is_some(),
        "the client never got a 200 (last {}: {})\n--- server log\n{}",
        last.status,
        last.text(),
        crate::support::keygate::tail(&server.stderr())
    );
}

/// The Dockerfile's lines with `\` continuations joined; comment lines
/// (`#   cmd …`) are kept as commands without their `#`.
fn logical_lines(text: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut open = false;
    for line in text.lines() {
        let line = line.strip_prefix('#').map_or(line, str::trim_start);
        let (body, continues) = match line.trim_end().strip_suffix('\\') {
            Some(b) => (b.trim_end(), true),
            None => (line.trim_end(), false),
        };
        match (open, out.last_mut()) {
            (true, Some(last)) => {
                last.push(' ');
                last.push_str(body.trim_start());
            }
            _ => out.push(body.to_owned()),
        }
        open = continues;
    }
    out
}

/// The value after `flag` in a command's words.
fn flag<'a>(words: &[&'a str], flag: &str) -> &'a str {
    let at = words.iter().position(|w| *w == flag);
    at.and_then(|i| words.get(i + 1))
        .unwrap_or_else(|| panic!("no {flag} in {words:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_docker_image_runs_as_its_dockerfile_documents() {
    if !Jail::available("deployments::the_docker_image_runs_as_its_dockerfile_documents") {
        return;
    }
    let dockerfile = std::fs::read_to_string("deploy/docker/Dockerfile").unwrap();
    let lines = logical_lines(&dockerfile);
    let find = |prefix: &str| {
        lines
            .iter()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("the Dockerfile has no line `{prefix}…`"))
            .clone()
    };
    let user = find("USER ");
    let (uid, gid) = user[5..].trim().split_once(':').unwrap();
    let (uid, gid): (u32, u32) = (uid.parse().unwrap(), gid.parse().unwrap());
    let env: Vec<(String, String)> = find("ENV ")[4..]
        .split_whitespace()
        .map(|kv| kv.split_once('=').unwrap())
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    let workdir = find("WORKDIR /data")[8..].trim().to_owned();
    assert!(
        find("RUN apt-get").contains("chown keygate:keygate /data && chmod 0700 /data"),
        "the image's /data is no longer its user's 0700"
    );
    // The documented commands: the key file given to the image's user, then the run.
    let install = find("sudo install ");
    let words: Vec<&str> = install.split_whitespace().collect();
    let key_owner: u32 = flag(&words, "-o").parse().unwrap();
    let key_group: u32 = flag(&words, "-g").parse().unwrap();
    let key_mode = u32::from_str_radix(flag(&words, "-m"), 8).unwrap();
    let host_key = *words.last().unwrap();
    let run = find("docker run ");
    assert!(run.contains("--read-only"), "{run}");
    let mount = format!(
        "{host_key}:{}:ro",
        value(&env, "KEYGATE_VAULT__MASTER_KEY_FILE")
    );
    assert!(
        run.contains(&mount),
        "the run mounts the installed key: {run}"
    );
    let exec = find("docker exec keygate keygate client add");
    assert!(exec.contains("client add app"), "{exec}");

    let (kg, _mock) = world().await;
    let data = placed(&kg, &workdir);
    mkdir(&data, uid, gid, 0o700);
    // `-v HOST_KEY:…:ro` shows the installed file, owner and mode as they are.
    let key_file = placed(&kg, value(&env, "KEYGATE_VAULT__MASTER_KEY_FILE"));
    let secrets = key_file.parent().unwrap().to_owned();
    mkdir(&secrets, 0, 0, 0o755);
    let master = keygate::vault::MasterKey::generate().to_base64();
    kg.register_secret(master.expose());
    std::fs::write(&key_file, format!("{}\n", master.expose())).unwrap();
    set_owner_and_mode(&key_file, key_owner, key_group, key_mode);
    let jail = Jail {
        uid,
        gid,
        groups: Vec::new(),
        read_only_root: true,
        writable: vec![data.clone()],
        read_only: vec![secrets],
        workdir: data.clone(),
    };
    let env = placed_env(&kg, &env);
    let env = pairs(&env);

    // The first start makes the vault; `docker exec` adds a key and a client.
    let mut server = kg.serve_in(&jail, &env);
    kg.register_secret(OPENAI_KEY);
    kg.run_in(&jail, &["key", "add", "openai"], Some(OPENAI_KEY), &env)
        .assert_ok("docker exec … key add");
    let out = kg.run_in(&jail, &["client", "add", "app"], None, &env);
    let client = kg.client_key_from(&out);
    served(&server, &client, RELOAD_WAIT).await;
    assert_eq!(server.admin_get("/readyz").await.status, 200);
    assert_eq!(not_owned_by(&data, uid, gid), Vec::<String>::new());
    // A container restart serves the same vault.
    server.terminate();
    let server = kg.serve_in(&jail, &env);
    assert_eq!(server.send(chat(&client)).await.status, 200);
    let log = server.stderr();
    assert!(
        !log.contains("Permission denied") && !log.contains("WARN"),
        "{}",
        crate::support::keygate::tail(&log)
    );
}

/// Kubelet's Secret volume: `NAME -> ..data/NAME`, `..data -> ..TIMESTAMP`,
/// the file root-owned with `defaultMode`, and with `fsGroup` the group
/// `fsGroup` and the group's read bit (a read-only volume).
fn mount_secret(dir: &Path, name: &str, source: &Path, mode: u32, fs_group: Option<u32>, n: u32) {
    let stamp = format!("..2026_01_01_00_00_{n:02}.000000001");
    let target = dir.join(&stamp);
    std::fs::create_dir_all(&target).unwrap();
    std::fs::copy(source, target.join(name)).unwrap();
    let group = fs_group.unwrap_or(0);
    let mode = if fs_group.is_some() {
        mode | 0o440
    } else {
        mode
    };
    set_owner_and_mode(&target.join(name), 0, group, mode);
    set_owner_and_mode(&target, 0, group, 0o755);
    // The atomic swap: a new `..data` link renamed over the old one.
    let link = dir.join("..data_tmp");
    std::os::unix::fs::symlink(&stamp, &link).unwrap();
    std::fs::rename(&link, dir.join("..data")).unwrap();
    let file = dir.join(name);
    if std::fs::symlink_metadata(&file).is_err() {
        std::os::unix::fs::symlink(format!("..data/{name}"), file).unwrap();
    }
}

/// Kubelet's `fsGroup` on a writable volume, at every pod start: the
/// group `fs_group` and g+rw on each file, g+rwxs on each directory.
fn apply_fs_group(dir: &Path, fs_group: u32) {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::symlink_metadata(dir).unwrap();
    let extra = if meta.is_dir() { 0o2770 } else { 0o660 };
    set_owner_and_mode(dir, meta.uid(), fs_group, (meta.mode() & 0o7777) | extra);
    if meta.is_dir() {
        for entry in std::fs::read_dir(dir).unwrap() {
            apply_fs_group(&entry.unwrap().path(), fs_group);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kubernetes_pod_starts_from_its_secrets_and_keeps_budgets_across_a_restart() {
    if !Jail::available(
        "deployments::a_kubernetes_pod_starts_from_its_secrets_and_keeps_budgets_across_a_restart",
    ) {
        return;
    }
    let text = std::fs::read_to_string("deploy/kubernetes/keygate.yaml").unwrap();
    let docs: Vec<serde_yaml::Value> = serde_yaml::Deserializer::from_str(&text)
        .map(|doc| serde::Deserialize::deserialize(doc).unwrap())
        .collect();
    let workload = docs
        .iter()
        .find(|d| d["kind"] == "StatefulSet" || d["kind"] == "Deployment")
        .expect("a workload");
    let pod = &workload["spec"]["template"]["spec"];
    let security = &pod["securityContext"];
    let id = |key: &str| security[key].as_u64().map(|v| v as u32);
    let (uid, gid, fs_group) = (
        id("runAsUser").unwrap(),
        id("runAsGroup").unwrap(),
        id("fsGroup"),
    );
    let container = &pod["containers"][0];
    let read_only_root = container["securityContext"]["readOnlyRootFilesystem"] == true;
    let env: Vec<(String, String)> = container["env"]
        .as_sequence()
        .unwrap()
        .iter()
        .filter_map(|e| {
            Some((
                e["name"].as_str()?.to_owned(),
                e["value"].as_str()?.to_owned(),
            ))
        })
        .collect();
    let claims: Vec<&str> = workload["spec"]["volumeClaimTemplates"]
        .as_sequence()
        .map(|c| {
            c.iter()
                .filter_map(|c| c["metadata"]["name"].as_str())
                .collect()
        })
        .unwrap_or_default();

    // The operator's machine: a vault with a key and a client on a budget.
    let (kg, _mock) = world().await;
    kg.vault_init();
    kg.add_key("openai", OPENAI_KEY);
    let client = kg.add_client("app");
    kg.run(&["client", "limits", "app", "--budget-tokens", "60"])
        .assert_ok("client limits");
    let sources = [
        ("KEYGATE_VAULT__PATH", kg.vault_path()),
        ("KEYGATE_VAULT__MASTER_KEY_FILE", kg.master_key_path()),
    ];

    // The pod's volumes, as the kubelet mounts them.
    let (mut writable, mut read_only, mut wiped_on_restart) = (Vec::new(), Vec::new(), Vec::new());
    let mut secret_volumes = Vec::new();
    for mount in container["volumeMounts"].as_sequence().unwrap() {
        let name = mount["name"].as_str().unwrap();
        let dir = placed(&kg, mount["mountPath"].as_str().unwrap());
        let volume = pod["volumes"]
            .as_sequence()
            .unwrap()
            .iter()
            .find(|v| v["name"] == name);
        if let Some(secret) = volume.map(|v| &v["secret"]).filter(|s| !s.is_null()) {
            let mode = secret["defaultMode"].as_u64().unwrap() as u32;
            let (var, source) = sources
                .iter()
                .find(|(var, _)| value(&env, var).starts_with(mount["mountPath"].as_str().unwrap()))
                .unwrap();
            let file = Path::new(value(&env, var))
                .file_name()
                .unwrap()
                .to_str()
                .unwrap();
            mkdir(&dir, 0, fs_group.unwrap_or(0), 0o2755);
            mount_secret(&dir, file, source, mode, fs_group, 0);
            read_only.push(dir.clone());
            secret_volumes.push((dir, file.to_owned(), source.clone(), mode));
        } else {
            let persistent = claims.contains(&name);
            let empty_dir = volume.is_some_and(|v| !v["emptyDir"].is_null());
            assert!(
                persistent || empty_dir,
                "volume {name}: not a Secret, claim or emptyDir"
            );
            mkdir(&dir, 0, 0, if persistent { 0o755 } else { 0o777 });
            if !persistent {
                wiped_on_restart.push(dir.clone());
            }
            writable.push(dir);
        }
    }
    let start_pod = |writable: &[PathBuf]| {
        if let Some(group) = fs_group {
            writable.iter().for_each(|dir| apply_fs_group(dir, group));
        }
    };
    start_pod(&writable);
    let jail = Jail {
        uid,
        gid,
        groups: fs_group.into_iter().collect(),
        read_only_root,
        writable: writable.clone(),
        read_only,
        workdir: kg.dir().join("root"),
    };
    let mut env = placed_env(&kg, &env);
    env.push(("KEYGATE_METERING__FLUSH_INTERVAL".into(), "100ms".into()));
    let env = pairs(&env);

    let mut server = kg.serve_in(&jail, &env);
    assert_eq!(server.admin_get("/readyz").await.status, 200);
    let mut statuses = Vec::new();
    while statuses.last() != Some(&429) && statuses.len() < 10 {
        statuses.push(server.send(chat(&client)).await.status.as_u16());
    }
    assert_eq!(statuses.first(), Some(&200), "{statuses:?}");
    assert_eq!(
        statuses.last(),
        Some(&429),
        "the budget never ran out: {statuses:?}"
    );

    // The pod restarts: an emptyDir starts empty, a claim comes back (with
    // the kubelet's fsGroup walk over it).
    server.terminate();
    for dir in &wiped_on_restart {
        std::fs::remove_dir_all(dir).unwrap();
        mkdir(dir, 0, 0, 0o777);
    }
    start_pod(&writable);
    let server = kg.serve_in(&jail, &env);
    let resp = server.send(chat(&client)).await;
    assert_eq!(
        resp.status,
        429,
        "after a pod restart the spent budget is back ({})",
        resp.text()
    );

    // The manifest's way to change the vault: the CLI where data/ is, then
    // the Secret replaced (the kubelet swaps ..data).
    let second = kg.add_client("second");
    for (dir, file, source, mode) in &secret_volumes {
        if source == &kg.vault_path() {
            mount_secret(dir, file, source, *mode, fs_group, 1);
        }
    }
    served(&server, &second, Duration::from_secs(10)).await;
    let log = server.stderr();
    for complaint in [
        "Permission denied",
        "cannot record the served vault generation",
    ] {
        assert!(
            !log.contains(complaint),
            "{complaint}:\n{}",
            crate::support::keygate::tail(&log)
        );
    }
}

/// The DynamicUser uid this test gives the unit (systemd picks one in 61184–65519).
const DYNAMIC_UID: u32 = 61234;

/// Sets the POSIX access ACL systemd gives a credential (and its folder):
/// owner `owner_perm`, `user:uid:perm`, no group, mask `perm`, no others.
fn systemd_acl(path: &Path, owner_perm: u16, uid: u32, perm: u16) {
    let mut bytes = 2u32.to_le_bytes().to_vec();
    for (tag, p, id) in [
        (0x01u16, owner_perm, u32::MAX),
        (0x02, perm, uid),
        (0x04, 0, u32::MAX),
        (0x10, perm, u32::MAX),
        (0x20, 0, u32::MAX),
    ] {
        bytes.extend_from_slice(&tag.to_le_bytes());
        bytes.extend_from_slice(&p.to_le_bytes());
        bytes.extend_from_slice(&id.to_le_bytes());
    }
    rustix::fs::setxattr(
        path,
        "system.posix_acl_access",
        &bytes,
        rustix::fs::XattrFlags::empty(),
    )
    .expect("this file system keeps POSIX ACLs (as systemd's credential tmpfs does)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_systemd_unit_runs_with_its_credential_and_root_commands_keep_its_files() {
    if !Jail::available(
        "deployments::the_systemd_unit_runs_with_its_credential_and_root_commands_keep_its_files",
    ) {
        return;
    }
    let unit = std::fs::read_to_string("deploy/systemd/keygate.service").unwrap();
    let setting = |key: &str| {
        unit.lines()
            .find_map(|l| l.strip_prefix(&format!("{key}=")))
            .unwrap_or_else(|| panic!("the unit has no {key}="))
            .trim()
            .to_owned()
    };
    assert_eq!(setting("DynamicUser"), "yes");
    assert_eq!(setting("ProtectSystem"), "strict");
    let state = format!("/var/lib/{}", setting("StateDirectory"));
    let state_mode = u32::from_str_radix(&setting("StateDirectoryMode"), 8).unwrap();
    let (credential, credential_source) = setting("LoadCredential")
        .split_once(':')
        .map(|(a, b)| (a.to_owned(), b.to_owned()))
        .unwrap();
    let unit_env: Vec<(String, String)> = unit
        .lines()
        .filter_map(|l| l.strip_prefix("Environment="))
        .map(|kv| kv.split_once('=').unwrap())
        .map(|(k, v)| {
            let v = v.replace("%d", "/run/credentials/keygate.service");
            (k.to_owned(), v)
        })
        .collect();
    // The commands the unit's header documents, run as root.
    let root_env: Vec<(String, String)> = logical_lines(&unit)
        .iter()
        .find(|l| l.starts_with("sudo env "))
        .expect("the unit documents how to run a command")
        .split_whitespace()
        .filter_map(|w| w.split_once('='))
        .filter(|(k, _)| k.starts_with("KEYGATE_"))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();

    let (kg, _mock) = world().await;
    let data = placed(&kg, &state);
    mkdir(&data, DYNAMIC_UID, DYNAMIC_UID, state_mode);
    assert_eq!(placed(&kg, &setting("WorkingDirectory")), data);
    // The root-only key file, and systemd's copy of it for the service.
    let master = keygate::vault::MasterKey::generate().to_base64();
    kg.register_secret(master.expose());
    let source = placed(&kg, &credential_source);
    mkdir(source.parent().unwrap(), 0, 0, 0o755);
    std::fs::write(&source, format!("{}\n", master.expose())).unwrap();
    set_owner_and_mode(&source, 0, 0, 0o600);
    let credentials = placed(&kg, "/run/credentials/keygate.service");
    mkdir(&credentials, 0, 0, 0o500);
    systemd_acl(&credentials, 5, DYNAMIC_UID, 5);
    let handed = credentials.join(&credential);
    std::fs::copy(&source, &handed).unwrap();
    set_owner_and_mode(&handed, 0, 0, 0o400);
    systemd_acl(&handed, 4, DYNAMIC_UID, 4);
    assert_eq!(
        owner_and_mode(&handed),
        (0, 0, 0o440),
        "stat shows the ACL's mask"
    );
    let jail = Jail {
        uid: DYNAMIC_UID,
        gid: DYNAMIC_UID,
        groups: Vec::new(),
        read_only_root: true,
        writable: vec![data.clone()],
        read_only: vec![credentials],
        workdir: data.clone(),
    };
    let mut serve_env = placed_env(&kg, &unit_env);
    serve_env.push(("KEYGATE_METERING__FLUSH_INTERVAL".into(), "100ms".into()));
    let serve_env = pairs(&serve_env);
    let root_env = placed_env(&kg, &root_env);
    let root_env = pairs(&root_env);
    let root = |args: &[&str], stdin: Option<&str>| {
        let out = kg.run_with(args, stdin, &root_env);
        out.assert_ok(&args.join(" "));
        out
    };

    // The first start makes the vault; root adds a key, a client, rotates.
    let mut server = kg.serve_in(&jail, &serve_env);
    kg.register_secret(OPENAI_KEY);
    kg.register_secret(OPENAI_KEY_2);
    root(&["key", "add", "openai"], Some(OPENAI_KEY));
    let client = kg.client_key_from(&root(&["client", "add", "app"], None));
    served(&server, &client, RELOAD_WAIT).await;
    root(
        &["key", "rotate", "openai", "--grace", "1h"],
        Some(OPENAI_KEY_2),
    );
    assert_eq!(server.send(chat(&client)).await.status, 200);
    let vault = placed(&kg, value(&unit_env, "KEYGATE_VAULT__PATH"));
    assert_eq!(owner_and_mode(&vault), (DYNAMIC_UID, DYNAMIC_UID, 0o600));
    assert_eq!(
        not_owned_by(&data, DYNAMIC_UID, DYNAMIC_UID),
        Vec::<String>::new()
    );

    // A restart opens everything root touched.
    server.terminate();
    // Root's command before the service's ledger exists: it makes the
    // ledger (an event) — the service's, too.
    for entry in std::fs::read_dir(&data).unwrap() {
        let path = entry.unwrap().path();
        if path.to_string_lossy().contains("usage.sqlite") {
            std::fs::remove_file(path).unwrap();
        }
    }
    kg.register_secret(&third_key());
    root(
        &["key", "rotate", "openai", "--grace", "1h"],
        Some(&third_key()),
    );
    assert!(placed(&kg, value(&unit_env, "KEYGATE_METERING__DB")).exists());
    assert_eq!(
        not_owned_by(&data, DYNAMIC_UID, DYNAMIC_UID),
        Vec::<String>::new()
    );
    let mut server = kg.serve_in(&jail, &serve_env);
    assert_eq!(server.send(chat(&client)).await.status, 200);
    tokio::time::sleep(Duration::from_millis(300)).await; // a ledger flush
    server.terminate();
    let log = server.stderr();
    assert!(
        !log.contains("Permission denied") && !log.contains("readonly database"),
        "{}",
        crate::support::keygate::tail(&log)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_that_cannot_keep_a_files_owner_refuses_and_says_what_to_run() {
    if !Jail::available(
        "deployments::a_command_that_cannot_keep_a_files_owner_refuses_and_says_what_to_run",
    ) {
        return;
    }
    // A vault the service (10001) owns, in a directory its group (10005)
    // may write, and an operator (10002) in that group.
    let (kg, _mock) = world().await;
    kg.vault_init();
    let data = kg.dir().join("data");
    mkdir(&data, 10001, 10005, 0o2770);
    let env = [
        ("KEYGATE_VAULT__PATH", data.join("keygate.vault")),
        ("KEYGATE_VAULT__MASTER_KEY_FILE", data.join("master.key")),
        ("KEYGATE_METERING__DB", data.join("usage.sqlite")),
    ];
    std::fs::copy(kg.vault_path(), &env[0].1).unwrap();
    std::fs::copy(kg.master_key_path(), &env[1].1).unwrap();
    set_owner_and_mode(&env[0].1, 10001, 10005, 0o640);
    set_owner_and_mode(&env[1].1, 10001, 10005, 0o440);
    let before = std::fs::read(&env[0].1).unwrap();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.to_str().unwrap())).collect();
    let operator = Jail {
        uid: 10002,
        gid: 10002,
        groups: vec![10005],
        read_only_root: false,
        writable: Vec::new(),
        read_only: Vec::new(),
        workdir: data.clone(),
    };
    let out = kg.run_in(&operator, &["client", "add", "app"], None, &env);
    out.assert_code(1, "client add as another user");
    assert!(
        out.stderr.contains("belongs to uid 10001") && out.stderr.contains("sudo -u '#10001'"),
        "{}",
        out.stderr
    );
    assert_eq!(std::fs::read(data.join("keygate.vault")).unwrap(), before);
    assert_eq!(not_owned_by(&data, 10001, 10005), Vec::<String>::new());
}
