//! A running `keygate serve`: its two real listener addresses, requests to
//! them (every response kept for the leak check), SIGTERM, kill on drop.

use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use super::client::{self, Req, Resp};
use super::keygate::{tail, wait_bounded, Captures, SHUTDOWN_TIMEOUT};
use super::{blocking, eventually, RELOAD_WAIT};

/// A running `keygate serve`. Killed (and its output kept) when dropped.
pub struct Server {
    pub(super) child: Child,
    /// The client listener's real address.
    pub client: SocketAddr,
    /// The admin listener's real address.
    pub admin: SocketAddr,
    pub(super) stdout: Arc<Mutex<String>>,
    pub(super) stderr: Arc<Mutex<String>>,
    pub(super) readers: Vec<JoinHandle<()>>,
    pub(super) captures: Captures,
    pub(super) exited: Option<ExitStatus>,
}

impl Server {
    /// Send to the client listener over HTTP/1.1; the response is kept for the leak check.
    pub async fn send(&self, req: Req) -> Resp {
        let label = format!("client response to {}", req.describe());
        let resp = client::send_h1(self.client, req).await;
        self.captures.record(&label, resp.everything());
        resp
    }

    /// Send to the client listener over h2c (HTTP/2 prior knowledge).
    pub async fn send_h2(&self, req: Req) -> Resp {
        let label = format!("client h2 response to {}", req.describe());
        let resp = client::send_h2(self.client, req).await;
        self.captures.record(&label, resp.everything());
        resp
    }

    /// Sends `req` to the admin listener; the response goes into the leak check.
    pub async fn send_admin(&self, req: Req) -> Resp {
        let label = format!("admin API response to {}", req.describe());
        let resp = client::send_h1(self.admin, req).await;
        self.captures.record(&label, resp.everything());
        resp
    }

    /// `GET path` on the admin listener.
    pub async fn admin_get(&self, path: &str) -> Resp {
        let resp = client::send_h1(self.admin, Req::get(path)).await;
        self.captures
            .record(&format!("admin GET {path}"), resp.everything());
        resp
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The server process's resident set size, in KiB (from /proc).
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }

    /// Keep text a client read (e.g. a stream) for the leak check.
    pub fn record(&self, label: &str, text: String) {
        self.captures.record(label, text);
    }

    /// Everything `serve` wrote to stderr so far (its logs).
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Waits (bounded by [`RELOAD_WAIT`]) until `serve` logged a line holding
    /// `needle`; that line. Logs reach the harness through a pipe, a little late.
    pub async fn wait_for_log(&self, needle: &str) -> String {
        let found = eventually(RELOAD_WAIT, || async {
            self.stderr()
                .lines()
                .find(|l| l.contains(needle))
                .map(str::to_string)
        })
        .await;
        found.unwrap_or_else(|| {
            panic!(
                "`serve` logged no line with {needle:?} within {RELOAD_WAIT:?}:\n{}",
                tail(&self.stderr())
            )
        })
    }

    /// The vault generation this server serves (`/readyz`).
    pub async fn vault_generation(&self) -> u64 {
        let ready = self.admin_get("/readyz").await;
        ready.json()["vault_generation"]
            .as_u64()
            .unwrap_or_else(|| panic!("/readyz has no vault_generation: {}", ready.text()))
    }

    /// Everything `serve` wrote to stdout so far.
    pub fn stdout(&self) -> String {
        self.stdout.lock().unwrap().clone()
    }

    /// SIGKILL, as a crash: nothing is drained or flushed.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        self.exited = self.child.wait().ok();
    }

    /// Send SIGTERM and wait (bounded) for the process to exit.
    pub fn terminate(&mut self) -> Option<ExitStatus> {
        self.signal_term();
        self.wait_exit()
    }

    /// Send SIGTERM without waiting.
    pub fn signal_term(&self) {
        let pid = self.child.id().to_string();
        blocking(|| {
            let sent = Command::new("kill")
                .args(["-TERM", &pid])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            assert!(
                sent.as_ref().is_ok_and(|s| s.success()),
                "could not send SIGTERM with `kill -TERM {pid}`: {sent:?}"
            );
        });
    }

    /// Wait (bounded) for the process to exit; kills it and returns `None` on timeout.
    pub fn wait_exit(&mut self) -> Option<ExitStatus> {
        let status = blocking(|| wait_bounded(&mut self.child, SHUTDOWN_TIMEOUT));
        self.exited = status;
        status
    }

    /// SIGTERM, wait (bounded) for the exit, then for the harness to have
    /// read the process's stdout and stderr to their end: afterwards
    /// [`Server::stdout`] and [`Server::stderr`] hold everything it ever
    /// wrote, so a test can assert that something was *never* printed.
    /// Panics if the process does not exit or its pipes do not close in time.
    pub fn stop_and_read_everything(&mut self) -> ExitStatus {
        let status = self.terminate().unwrap_or_else(|| {
            panic!(
                "`serve` did not exit within {SHUTDOWN_TIMEOUT:?} of SIGTERM:\n{}",
                tail(&self.stderr())
            )
        });
        let deadline = std::time::Instant::now() + SHUTDOWN_TIMEOUT;
        blocking(|| {
            while !self.readers.iter().all(JoinHandle::is_finished) {
                assert!(
                    std::time::Instant::now() < deadline,
                    "`serve` exited but its stdout/stderr were not closed within {SHUTDOWN_TIMEOUT:?}"
                );
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            for r in self.readers.drain(..) {
                let _ = r.join();
            }
        });
        status
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        blocking(|| {
            if self.exited.is_none() {
                let _ = self.child.kill();
                let _ = self.child.wait();
            }
            for r in self.readers.drain(..) {
                let _ = r.join();
            }
        });
    }
}
