//! Runs the real `keygate` binary: writes its config into a private tempdir,
//! runs CLI commands (secrets on stdin), starts `keygate serve` and reads the
//! two listener lines it prints, stops it (SIGTERM, or kill on drop).
//!
//! Every process runs with `RUST_LOG=trace` and a cleared environment; all of
//! its stdout and stderr is captured, as is every response a test reads through
//! [`Server`], so that [`Keygate`] can check at the end of each test that no
//! upstream key, client key or master key (nor any 8-character window of one)
//! ever appeared anywhere a user or a log shipper could see it.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::{blocking, find_leaks, find_token, KeygateBuilder, Server};

/// How long one CLI command may run.
const CLI_TIMEOUT: Duration = Duration::from_secs(60);
/// How long `serve` may take to print its listener lines.
const SERVE_START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long SIGTERM may take to end `serve`.
pub(super) const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(15);

/// Everything a process printed or a client read, kept for the leak check.
pub(super) struct Capture {
    label: String,
    text: Arc<Mutex<String>>,
    /// A secret this capture is allowed to print on exactly one line
    /// (the `client add` output that hands the new key to the operator).
    exempt: Option<String>,
}

#[derive(Clone, Default)]
pub(super) struct Captures(Arc<Mutex<Vec<Capture>>>);

impl Captures {
    pub(super) fn add(&self, label: &str, text: Arc<Mutex<String>>) -> usize {
        let mut v = self.0.lock().unwrap();
        v.push(Capture {
            label: label.to_string(),
            text,
            exempt: None,
        });
        v.len() - 1
    }

    pub(super) fn record(&self, label: &str, text: String) -> usize {
        self.add(label, Arc::new(Mutex::new(text)))
    }

    pub(super) fn exempt(&self, idx: usize, secret: &str) {
        self.0.lock().unwrap()[idx].exempt = Some(secret.to_string());
    }

    /// (label, text) pairs with each exempt line removed once.
    pub(super) fn texts(&self) -> Vec<(String, String)> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .map(|c| {
                let text = c.text.lock().unwrap().clone();
                let text = match &c.exempt {
                    None => text,
                    Some(secret) => {
                        let mut removed = false;
                        text.lines()
                            .filter(|l| {
                                if !removed && l.contains(secret.as_str()) {
                                    removed = true;
                                    false
                                } else {
                                    true
                                }
                            })
                            .collect::<Vec<_>>()
                            .join("\n")
                    }
                };
                (c.label.clone(), text)
            })
            .collect()
    }
}

/// The result of one CLI command.
#[derive(Debug)]
pub struct Out {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    capture: usize,
}

impl Out {
    /// Panic with the whole output unless the command exited 0.
    pub fn assert_ok(&self, what: &str) -> &Out {
        assert_eq!(
            self.code,
            Some(0),
            "`{what}` failed\n--- stdout\n{}\n--- stderr\n{}",
            self.stdout,
            tail(&self.stderr)
        );
        self
    }

    /// Panic with the whole output unless the command exited `code`.
    pub fn assert_code(&self, code: i32, what: &str) -> &Out {
        assert_eq!(
            self.code,
            Some(code),
            "`{what}`: expected exit code {code}\n--- stdout\n{}\n--- stderr\n{}",
            self.stdout,
            tail(&self.stderr)
        );
        self
    }
}

/// The last few KiB of a log, for panic messages.
pub fn tail(s: &str) -> &str {
    const MAX: usize = 6000;
    if s.len() <= MAX {
        return s;
    }
    let mut i = s.len() - MAX;
    while !s.is_char_boundary(i) {
        i += 1;
    }
    &s[i..]
}

/// One keygate installation: a private 0700 tempdir holding its config, vault,
/// master key and ledger. Checks for leaked secrets when dropped.
pub struct Keygate {
    dir: TempDir,
    config_path: PathBuf,
    captures: Captures,
    secrets: Arc<Mutex<Vec<String>>>,
}

impl Keygate {
    /// Write the builder's config into a fresh tempdir (no vault yet).
    pub fn new(builder: &KeygateBuilder) -> Keygate {
        let dir = tempfile::Builder::new()
            .prefix("keygate-it-")
            .tempdir()
            .expect("tempdir");
        let text = builder.render(dir.path());
        Keygate::in_dir(dir, &text)
    }

    /// Use this config text verbatim; `{dir}` is replaced by the tempdir path.
    pub fn with_config_text(text: &str) -> Keygate {
        let dir = tempfile::Builder::new()
            .prefix("keygate-it-")
            .tempdir()
            .expect("tempdir");
        let text = text.replace("{dir}", &dir.path().display().to_string());
        Keygate::in_dir(dir, &text)
    }

    fn in_dir(dir: TempDir, text: &str) -> Keygate {
        let config_path = dir.path().join("keygate.toml");
        std::fs::write(&config_path, text).expect("write config");
        Keygate {
            dir,
            config_path,
            captures: Captures::default(),
            secrets: Arc::new(Mutex::new(Vec::new())),
        }
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    pub fn vault_path(&self) -> PathBuf {
        self.dir.path().join("keygate.vault")
    }

    /// The generation in the vault file's header (bytes 12..20, big-endian;
    /// docs/design.md, vault format); `None` while the file cannot be read.
    pub fn vault_file_generation(&self) -> Option<u64> {
        let bytes = std::fs::read(self.vault_path()).ok()?;
        Some(u64::from_be_bytes(bytes.get(12..20)?.try_into().ok()?))
    }

    pub fn master_key_path(&self) -> PathBuf {
        self.dir.path().join("master.key")
    }

    /// Remember a secret that must never show up in any captured output.
    pub fn register_secret(&self, secret: &str) {
        self.secrets.lock().unwrap().push(secret.to_string());
    }

    /// Keep some text a user could see (a response, a metrics page) for the leak check.
    pub fn record(&self, label: &str, text: String) {
        self.captures.record(label, text);
    }

    fn command(&self, args: &[&str], env: &[(&str, &str)]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_keygate"));
        cmd.arg("--config").arg(&self.config_path).args(args);
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", self.dir.path())
            .env("RUST_LOG", "trace")
            .env("RUST_BACKTRACE", "1")
            .env("NO_COLOR", "1")
            .current_dir(self.dir.path());
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd
    }

    /// Run `keygate --config PATH ARGS...` with empty stdin.
    pub fn run(&self, args: &[&str]) -> Out {
        self.run_with(args, None, &[])
    }

    /// Run a CLI command with this stdin and extra environment variables, bounded.
    pub fn run_with(&self, args: &[&str], stdin: Option<&str>, env: &[(&str, &str)]) -> Out {
        self.run_command(args, self.command(args, env), stdin)
    }

    fn run_command(&self, args: &[&str], mut cmd: Command, stdin: Option<&str>) -> Out {
        let label = format!("keygate {}", args.join(" "));
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        blocking(|| {
            let mut child = cmd.spawn().expect("spawn keygate");
            let mut sin = child.stdin.take().expect("stdin");
            if let Some(input) = stdin {
                // A command that does not read stdin may have exited already.
                let _ = sin.write_all(input.as_bytes());
            }
            drop(sin);
            let out = reader_thread(child.stdout.take().expect("stdout"));
            let err = reader_thread(child.stderr.take().expect("stderr"));
            let status = wait_bounded(&mut child, CLI_TIMEOUT);
            let stdout = out.join().unwrap_or_default();
            let stderr = err.join().unwrap_or_default();
            let capture = self.captures.record(
                &label,
                format!("--- stdout\n{stdout}\n--- stderr\n{stderr}"),
            );
            let Some(status) = status else {
                panic!(
                    "`{label}` did not finish within {CLI_TIMEOUT:?}\n--- stdout\n{stdout}\n--- stderr\n{}",
                    tail(&stderr)
                );
            };
            Out {
                code: status.code(),
                stdout,
                stderr,
                capture,
            }
        })
    }

    /// `keygate vault init`, which must succeed; remembers the master key as a secret.
    pub fn vault_init(&self) {
        self.run(&["vault", "init"]).assert_ok("vault init");
        if let Ok(text) = std::fs::read_to_string(self.master_key_path()) {
            let text = text.trim();
            if text.len() >= 8 {
                self.register_secret(text);
            }
        }
    }

    /// `printf SECRET | keygate key add PROVIDER`; returns the printed key id.
    pub fn add_key(&self, provider: &str, secret: &str) -> String {
        self.add_key_with(provider, secret, &[])
    }

    /// `key add` with extra flags (`--fallback`, `--label L`); returns the key id.
    pub fn add_key_with(&self, provider: &str, secret: &str, flags: &[&str]) -> String {
        self.register_secret(secret);
        let mut args = vec!["key", "add", provider];
        args.extend_from_slice(flags);
        let out = self.run_with(&args, Some(secret), &[]);
        out.assert_ok("key add");
        find_token(&out.stdout, "key_")
            .unwrap_or_else(|| panic!("`key add` printed no key id (key_…): {}", out.stdout))
    }

    /// `keygate client add NAME`; returns the `kg_…` key it printed.
    pub fn add_client(&self, name: &str) -> String {
        self.issue_client(&["client", "add", name])
    }

    /// `keygate client add NAME --decoy`; returns the decoy `kg_…` key it printed.
    pub fn add_decoy(&self, name: &str) -> String {
        self.issue_client(&["client", "add", name, "--decoy"])
    }

    fn issue_client(&self, args: &[&str]) -> String {
        self.client_key_from(&self.run(args))
    }

    /// The `kg_…` key a `client add` printed (it must have succeeded),
    /// remembered as a secret and allowed on that one line.
    pub fn client_key_from(&self, out: &Out) -> String {
        out.assert_ok("client add");
        self.issued_key(out)
    }

    /// `keygate client rotate NAME ARGS…`; returns the new `kg_…` key it printed.
    pub fn rotate_client(&self, name: &str, args: &[&str]) -> String {
        let mut all = vec!["client", "rotate", name];
        all.extend_from_slice(args);
        let out = self.run(&all);
        out.assert_ok("client rotate");
        self.issued_key(&out)
    }

    /// The `kg_` key a command printed once on stdout (`client add`,
    /// `client rotate`), remembered as a secret that may appear on that one
    /// line of its output and nowhere else.
    pub fn issued_key(&self, out: &Out) -> String {
        let key = find_token(&out.stdout, "kg_")
            .unwrap_or_else(|| panic!("no kg_ key on stdout: {}", out.stdout));
        self.register_secret(&key);
        self.captures.exempt(out.capture, &key);
        key
    }

    /// Run a CLI command at a terminal — a pseudo-terminal made by
    /// util-linux's `script` — typing `typed` and Enter once `prompt` shows,
    /// then the shell command `then` at the same terminal. Returns the exit
    /// code of `then` and everything the terminal showed (kept for the leak
    /// check).
    pub fn run_at_terminal(
        &self,
        args: &[&str],
        prompt: &str,
        typed: &str,
        then: &str,
    ) -> (Option<i32>, String) {
        let inner = self.command(args, &[("RUST_LOG", "warn")]);
        let quote =
            |s: &std::ffi::OsStr| format!("'{}'", s.to_string_lossy().replace('\'', "'\\''"));
        let line = std::iter::once(inner.get_program())
            .chain(inner.get_args())
            .map(quote)
            .collect::<Vec<_>>()
            .join(" ");
        let mut cmd = Command::new("script");
        cmd.args(["-qec", &format!("{line}; {then}"), "/dev/null"])
            .env_clear()
            .current_dir(self.dir.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in inner.get_envs() {
            if let Some(v) = v {
                cmd.env(k, v);
            }
        }
        let label = format!("keygate {} (at a terminal)", args.join(" "));
        blocking(|| {
            let mut child = cmd.spawn().expect("spawn script (util-linux)");
            let shown = Arc::new(Mutex::new(String::new()));
            let mut out = child.stdout.take().expect("stdout");
            let copy = shown.clone();
            let reading = std::thread::spawn(move || {
                let mut buf = [0u8; 1024];
                while let Ok(n @ 1..) = out.read(&mut buf) {
                    copy.lock()
                        .unwrap()
                        .push_str(&String::from_utf8_lossy(&buf[..n]));
                }
            });
            let err = reader_thread(child.stderr.take().expect("stderr"));
            let deadline = Instant::now() + CLI_TIMEOUT;
            while !shown.lock().unwrap().contains(prompt) {
                assert!(
                    Instant::now() < deadline,
                    "no `{prompt}` at the terminal: {}",
                    shown.lock().unwrap()
                );
                std::thread::sleep(Duration::from_millis(20));
            }
            let mut keyboard = child.stdin.take().expect("stdin");
            let _ = keyboard.write_all(format!("{typed}\n").as_bytes());
            drop(keyboard);
            let status = wait_bounded(&mut child, CLI_TIMEOUT);
            let _ = reading.join();
            let stderr = err.join().unwrap_or_default();
            let text = shown.lock().unwrap().clone();
            self.captures.record(
                &label,
                format!("--- terminal\n{text}\n--- stderr\n{stderr}"),
            );
            let status = status.unwrap_or_else(|| panic!("`{label}` did not finish: {text}"));
            (status.code(), text)
        })
    }

    /// Run a CLI command whose standard output is a pipe nobody reads any
    /// more (`keygate … | head -0`); its stdout is empty here.
    pub fn run_with_stdout_closed(&self, args: &[&str]) -> Out {
        let label = format!("keygate {} | (closed)", args.join(" "));
        let (reader, writer) = std::io::pipe().expect("pipe");
        drop(reader);
        let mut cmd = self.command(args, &[]);
        cmd.stdin(Stdio::null())
            .stdout(writer)
            .stderr(Stdio::piped());
        blocking(|| {
            let mut child = cmd.spawn().expect("spawn keygate");
            // The parent's copy of the write end goes with `cmd`.
            drop(cmd);
            let err = reader_thread(child.stderr.take().expect("stderr"));
            let status = wait_bounded(&mut child, CLI_TIMEOUT);
            let stderr = err.join().unwrap_or_default();
            let capture = self
                .captures
                .record(&label, format!("--- stderr\n{stderr}"));
            let status =
                status.unwrap_or_else(|| panic!("`{label}` did not finish: {}", tail(&stderr)));
            Out {
                code: status.code(),
                stdout: String::new(),
                stderr,
                capture,
            }
        })
    }

    /// Start `keygate serve` and wait for its two listener lines.
    pub fn serve(&self) -> Server {
        self.serve_with(&[])
    }

    /// Start `keygate serve` with extra environment variables.
    pub fn serve_with(&self, env: &[(&str, &str)]) -> Server {
        self.start_serve(self.command(&["serve"], env))
    }

    /// Start `keygate serve ARGS…`.
    pub fn serve_with_args(&self, args: &[&str]) -> Server {
        let mut all = vec!["serve"];
        all.extend_from_slice(args);
        self.start_serve(self.command(&all, &[]))
    }

    /// Start `keygate serve` from a shell that first runs `setup` (e.g.
    /// `ulimit -c unlimited`), then execs keygate (same pid).
    pub fn serve_after_shell(&self, setup: &str) -> Server {
        let keygate = self.command(&["serve"], &[]);
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(format!("{setup}; exec \"$0\" \"$@\""))
            .arg(keygate.get_program())
            .args(keygate.get_args())
            .env_clear()
            .current_dir(self.dir.path());
        for (k, v) in keygate.get_envs() {
            if let Some(v) = v {
                cmd.env(k, v);
            }
        }
        self.start_serve(cmd)
    }

    /// Start `keygate serve` as a deployment runs it ([`Jail`](super::jail::Jail)).
    pub fn serve_in(&self, jail: &super::jail::Jail, env: &[(&str, &str)]) -> Server {
        self.start_serve(jail.wrap(&self.command(&["serve"], env)))
    }

    /// Run a CLI command as a deployment runs it (`docker exec`, `kubectl exec`).
    pub fn run_in(
        &self,
        jail: &super::jail::Jail,
        args: &[&str],
        stdin: Option<&str>,
        env: &[(&str, &str)],
    ) -> Out {
        self.run_command(args, jail.wrap(&self.command(args, env)), stdin)
    }

    fn start_serve(&self, mut cmd: Command) -> Server {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        blocking(|| {
            let mut child = cmd.spawn().expect("spawn keygate serve");
            let stdout = Arc::new(Mutex::new(String::new()));
            let stderr = Arc::new(Mutex::new(String::new()));
            self.captures.add("keygate serve (stdout)", stdout.clone());
            self.captures.add("keygate serve (stderr)", stderr.clone());
            let (tx, rx) = mpsc::channel::<String>();
            let mut readers = vec![line_reader(
                child.stdout.take().expect("stdout"),
                stdout.clone(),
                Some(tx),
            )];
            readers.push(line_reader(
                child.stderr.take().expect("stderr"),
                stderr.clone(),
                None,
            ));
            let deadline = Instant::now() + SERVE_START_TIMEOUT;
            let (mut client_addr, mut admin_addr) = (None, None);
            while client_addr.is_none() || admin_addr.is_none() {
                let left = deadline.saturating_duration_since(Instant::now());
                match rx.recv_timeout(left) {
                    Ok(line) => {
                        if let Some(a) = line.strip_prefix("keygate: client listener on ") {
                            client_addr = Some(a.trim().parse().expect("client listener address"));
                        } else if let Some(a) = line.strip_prefix("keygate: admin listener on ") {
                            admin_addr = Some(a.trim().parse().expect("admin listener address"));
                        }
                    }
                    Err(_) => {
                        let _ = child.kill();
                        let _ = wait_bounded(&mut child, SHUTDOWN_TIMEOUT);
                        std::thread::sleep(Duration::from_millis(100));
                        panic!(
                            "`keygate serve` did not print both listener lines within {SERVE_START_TIMEOUT:?} (exit: {:?})\n--- stdout\n{}\n--- stderr\n{}",
                            child.try_wait().ok().flatten(),
                            stdout.lock().unwrap(),
                            tail(&stderr.lock().unwrap())
                        );
                    }
                }
            }
            Server {
                child,
                client: client_addr.expect("client addr"),
                admin: admin_addr.expect("admin addr"),
                stdout,
                stderr,
                readers,
                captures: self.captures.clone(),
                exited: None,
            }
        })
    }

    /// Panic naming every place a registered secret (or an 8-character window of
    /// one) appeared: process output, responses, metrics pages.
    pub fn assert_no_secret_leaks(&self) {
        let secrets = self.secrets.lock().unwrap().clone();
        let leaks = find_leaks(&secrets, &self.captures.texts());
        assert!(
            leaks.is_empty(),
            "secret material leaked:\n{}",
            leaks.join("\n")
        );
    }

    /// How many captures of process output and responses the leak check covers.
    pub fn captured_bytes(&self) -> usize {
        self.captures.texts().iter().map(|(_, t)| t.len()).sum()
    }
}

impl Drop for Keygate {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            self.assert_no_secret_leaks();
        }
    }
}

fn reader_thread(mut r: impl Read + Send + 'static) -> JoinHandle<String> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = r.read_to_end(&mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    })
}

fn line_reader(
    r: impl Read + Send + 'static,
    sink: Arc<Mutex<String>>,
    lines: Option<mpsc::Sender<String>>,
) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut r = BufReader::new(r);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match r.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => return,
                Ok(_) => {
                    let line = String::from_utf8_lossy(&buf).into_owned();
                    sink.lock().unwrap().push_str(&line);
                    if let Some(tx) = &lines {
                        let _ = tx.send(line.trim_end().to_string());
                    }
                }
            }
        }
    })
}

/// Wait for a child at most `limit`; `None` if it is still running.
pub(super) fn wait_bounded(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
