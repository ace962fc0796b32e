//! A small black-box setup shared by the stand-alone test binaries
//! (`tests/sdk.rs`, `tests/tls.rs`): a workspace with a vault holding one
//! upstream key and one client, and a running `keygate serve`.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// Runs a keygate CLI command, feeding `stdin`; panics with stderr on failure.
pub fn keygate(config: &Path, args: &[&str], stdin: Option<&str>) -> String {
    let mut child = Command::new(env!("CARGO_BIN_EXE_keygate"))
        .arg("--config")
        .arg(config)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("keygate runs");
    if let Some(text) = stdin {
        let mut pipe = child.stdin.take().expect("stdin");
        pipe.write_all(text.as_bytes()).expect("write stdin");
    }
    drop(child.stdin.take());
    let out = child.wait_with_output().expect("keygate finishes");
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}

/// A prepared workspace: config, vault with `upstream_key` for `openai`, one client.
pub struct Workspace {
    _dir: tempfile::TempDir,
    /// The config file.
    pub config: PathBuf,
    /// The client's `kg_` key.
    pub client_key: String,
}

impl Workspace {
    /// `server_extra` is appended to `[server]`; `metering_extra` to `[metering]`.
    pub fn new(
        upstream: &str,
        upstream_key: &str,
        server_extra: &str,
        metering_extra: &str,
    ) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = dir.path().join("keygate.toml");
        std::fs::write(
            &config,
            format!(
                "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n{server_extra}\n\
                 [vault]\npath = \"{d}/keygate.vault\"\nmaster_key_file = \"{d}/master.key\"\n\
                 [metering]\ndb = \"{d}/usage.sqlite\"\n{metering_extra}\n\
                 [providers.openai]\nbase_url = \"http://{upstream}\"\n",
                d = dir.path().display()
            ),
        )
        .expect("config written");
        keygate(&config, &["vault", "init"], None);
        keygate(&config, &["key", "add", "openai"], Some(upstream_key));
        let out = keygate(&config, &["client", "add", "app"], None);
        let client_key = out
            .split_whitespace()
            .find(|w| w.starts_with("kg_"))
            .expect("client key printed")
            .to_owned();
        Workspace {
            _dir: dir,
            config,
            client_key,
        }
    }

    /// Starts `keygate serve`; returns it (killed on drop) and its client address.
    pub fn serve(&self) -> (Serve, String) {
        let mut child = Command::new(env!("CARGO_BIN_EXE_keygate"))
            .arg("--config")
            .arg(&self.config)
            .arg("serve")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("serve starts");
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let addr = loop {
            let line = lines
                .next()
                .expect("serve prints its address")
                .expect("readable stdout");
            if let Some(addr) = line.strip_prefix("keygate: client listener on ") {
                break addr.to_owned();
            }
        };
        // Keep reading, so the server never writes into a closed pipe.
        std::thread::spawn(move || lines.for_each(drop));
        (Serve(child), addr)
    }
}

/// A running `keygate serve`, killed when dropped.
pub struct Serve(Child);

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
