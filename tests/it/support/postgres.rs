//! A real PostgreSQL server for the shared-ledger tests (docs/design.md §10):
//! `initdb` into a temp dir, `postgres` on a free 127.0.0.1 port with a
//! password (scram-sha-256), `fsync` off; killed on drop. It can be killed
//! with SIGKILL and started again on the same data directory and port.
//! Run as root (as here and in CI), the server runs as the `postgres` user
//! that Debian's package creates (PostgreSQL refuses to run as root).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The test database's password (obviously fake; registered as a secret).
pub const PG_PASSWORD: &str = "pg-test-Zr8Hw3Kd6Qm1Xs4Tn9";

/// A running PostgreSQL.
pub struct Postgres {
    child: Option<Child>,
    pub port: u16,
    dir: tempfile::TempDir,
    bin: PathBuf,
}

/// Where `initdb` and `postgres` are: PATH, else Debian's versioned directory.
fn bin_dir() -> PathBuf {
    let on_path = Command::new("sh")
        .args(["-c", "command -v initdb"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
    if let Some(initdb) = on_path {
        return initdb.parent().map(Path::to_path_buf).unwrap_or_default();
    }
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|p| p.join("initdb").exists())
        .collect();
    versions.sort();
    versions.pop().expect(
        "PostgreSQL is required for the shared-ledger tests (apt-get install postgresql; .ci/run installs it)",
    )
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// `program args…`, as the `postgres` user when running as root.
fn as_db_user(program: &Path) -> Command {
    if is_root() {
        let mut cmd = Command::new("setpriv");
        cmd.args([
            "--reuid=postgres",
            "--regid=postgres",
            "--clear-groups",
            "--",
        ])
        .arg(program);
        cmd
    } else {
        Command::new(program)
    }
}

impl Postgres {
    /// Creates and starts one.
    pub fn start() -> Postgres {
        let bin = bin_dir();
        let dir = tempfile::tempdir().expect("temp dir");
        if is_root() {
            let ok = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir.path())
                .status()
                .is_ok_and(|s| s.success());
            assert!(ok, "cannot hand the temp dir to the postgres user");
        }
        let pwfile = dir.path().join("pw");
        std::fs::write(&pwfile, PG_PASSWORD).unwrap();
        if is_root() {
            let _ = Command::new("chown")
                .args(["postgres:postgres"])
                .arg(&pwfile)
                .status();
        }
        let out = as_db_user(&bin.join("initdb"))
            .arg("-D")
            .arg(dir.path().join("data"))
            .args(["-U", "keygate", "--auth=scram-sha-256", "--no-sync"])
            .arg(format!("--pwfile={}", pwfile.display()))
            .output()
            .expect("initdb");
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let mut pg = Postgres {
            child: None,
            port,
            dir,
            bin,
        };
        pg.spawn();
        pg
    }

    fn spawn(&mut self) {
        let child = as_db_user(&self.bin.join("postgres"))
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .args(["-p", &self.port.to_string(), "-k"])
            .arg(self.dir.path())
            .args(["-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("postgres");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                std::thread::sleep(Duration::from_millis(300));
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("postgres did not listen on port {}", self.port);
    }

    /// `postgres://keygate:PASSWORD@127.0.0.1:PORT/postgres`, for `[metering] db`.
    pub fn url(&self) -> String {
        format!(
            "postgres://keygate:{PG_PASSWORD}@127.0.0.1:{}/postgres",
            self.port
        )
    }

    /// An immediate shutdown (SIGQUIT: every backend dies at once, no
    /// checkpoint, crash recovery on the next start), as a crashed server.
    pub fn kill(&mut self) {
        // A frozen server takes no signal but SIGCONT: thaw it first, or a
        // test that failed while it was frozen would hang here for ever.
        self.thaw();
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-QUIT", &child.id().to_string()])
                .status();
            let _ = child.wait();
        }
    }

    /// Stops (`SIGSTOP`) the server and every backend: connections stay
    /// open and silent, as with a database host that froze.
    pub fn freeze(&self) {
        self.signal_all("-STOP");
    }

    /// Stops every process the server runs now but the server itself: the
    /// open connections go silent, while new ones (a new backend each) work.
    pub fn freeze_backends(&self) {
        self.signal(false, "-STOP");
    }

    /// Lets a frozen server go on (`SIGCONT`).
    pub fn thaw(&self) {
        self.signal_all("-CONT");
    }

    fn signal_all(&self, signal: &str) {
        self.signal(true, signal);
    }

    fn signal(&self, postmaster_too: bool, signal: &str) {
        let Some(child) = &self.child else { return };
        let postmaster = child.id();
        // The backends are the postmaster's children (their parent in
        // /proc/PID/stat, the field after the parenthesised name).
        let mut pids = Vec::new();
        if postmaster_too {
            pids.push(postmaster.to_string());
        }
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
                continue;
            };
            let parent = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                .and_then(|ppid| ppid.parse::<u32>().ok());
            if parent == Some(postmaster) {
                pids.push(entry.file_name().to_string_lossy().into_owned());
            }
        }
        if !pids.is_empty() {
            let _ = Command::new("kill").arg(signal).args(&pids).status();
        }
    }

    /// Starts it again on the same data and port.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.kill();
    }
}
