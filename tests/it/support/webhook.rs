//! A `[[notify]]` receiver: a real HTTP server on 127.0.0.1:0 that records
//! every delivery with the status it answered, and can be told to answer
//! 503 for a while, to fail its first N attempts, or never to answer.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::mock::Seen;
use super::recording::{full, Recording};

/// One delivery attempt as the receiver saw it.
#[derive(Clone, Debug)]
pub struct Attempt {
    pub seen: Seen,
    /// What the receiver answered (0: it never did).
    pub status: u16,
}

impl Attempt {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.seen.body).expect("a delivery is JSON")
    }

    pub fn header(&self, name: &str) -> Option<String> {
        self.seen
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    }
}

/// The token in the receiver's URL path (a Slack webhook URL's last part
/// is its credential), for the leak check (obviously fake).
pub const WEBHOOK_TOKEN: &str = "hook-test-Vq7Lx2Mz9Kp4Wd1Rn";

#[derive(Default)]
struct Script {
    fail_first: AtomicUsize,
    down: AtomicBool,
    hang: AtomicBool,
    attempts: Mutex<Vec<Attempt>>,
}

pub struct Webhook {
    recording: Recording,
    script: Arc<Script>,
}

impl Webhook {
    pub async fn start() -> Webhook {
        let script = Arc::new(Script::default());
        let answering = script.clone();
        let recording = Recording::start(move |seen: Seen| {
            let script = answering.clone();
            async move {
                if script.hang.load(Ordering::SeqCst) {
                    script
                        .attempts
                        .lock()
                        .unwrap()
                        .push(Attempt { seen, status: 0 });
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                    return full(504, &[], "");
                }
                let failing = script
                    .fail_first
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                    .is_ok();
                let status = if failing || script.down.load(Ordering::SeqCst) {
                    503
                } else {
                    200
                };
                script
                    .attempts
                    .lock()
                    .unwrap()
                    .push(Attempt { seen, status });
                full(status, &[("content-type", "text/plain")], "ok")
            }
        })
        .await;
        Webhook { recording, script }
    }

    /// Where keygate POSTs (a path with a token in it, as Slack's are).
    pub fn url(&self) -> String {
        format!("{}/hooks/T000/B000/{WEBHOOK_TOKEN}", self.recording.url())
    }

    /// A `[[notify]]` table naming this receiver `name`, with `extra` lines.
    pub fn table(&self, name: &str, extra: &str) -> String {
        format!(
            "\n[[notify]]\nname = \"{name}\"\nurl = \"{}\"\n{extra}\n",
            self.url()
        )
    }

    /// Answer 503 to the next `n` attempts.
    pub fn fail_first(&self, n: usize) {
        self.script.fail_first.store(n, Ordering::SeqCst);
    }

    /// Answer 503 to everything while `down`.
    pub fn set_down(&self, down: bool) {
        self.script.down.store(down, Ordering::SeqCst);
    }

    /// Never answer (hold every request for an hour).
    pub fn hang(&self) {
        self.script.hang.store(true, Ordering::SeqCst);
    }

    /// Every attempt so far, oldest first.
    pub fn attempts(&self) -> Vec<Attempt> {
        self.script.attempts.lock().unwrap().clone()
    }

    /// Attempts answered 2xx.
    pub fn delivered(&self) -> Vec<Attempt> {
        self.attempts()
            .into_iter()
            .filter(|a| a.status == 200)
            .collect()
    }

    /// The first delivered event of type `kind`.
    pub fn delivered_of(&self, kind: &str) -> Option<Attempt> {
        self.delivered()
            .into_iter()
            .find(|a| a.json()["type"] == kind)
    }
}
