//! The runtime health of every key, as the running `keygate serve` sees it,
//! left in a small file beside the usage ledger so that `keygate key list`
//! (another process) can show it. Key health lives in the server's memory
//! (docs/design.md §5); this is only a report of it, written by the reloader once a
//! second when something changed, never on the request path.
//!
//! The file holds key ids and state names, never a secret. A report older
//! than [`FRESH_FOR`] is ignored: the server that wrote it is gone.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The report's file name, in the ledger's directory.
const FILE_NAME: &str = "key-health.json";

/// A report not rewritten for this long is stale.
pub const FRESH_FOR: Duration = Duration::from_secs(10);

/// Where the running server reports key health.
#[derive(Debug, Clone)]
pub struct HealthReport {
    path: PathBuf,
}

#[derive(serde::Serialize, serde::Deserialize, PartialEq, Eq)]
struct Report {
    /// Unix seconds of the last write.
    written: u64,
    /// Key id → `healthy` | `suspect` | `exhausted` | `cooling`.
    keys: BTreeMap<String, String>,
    /// Key id → what the provider last said is left (§17); absent in
    /// reports of older servers.
    #[serde(default)]
    headroom: BTreeMap<String, Room>,
}

/// A key's headroom as reported: what is left (when the provider said so,
/// within its window) and the requests keygate has open on it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Room {
    /// Requests left.
    pub requests: Option<u64>,
    /// Tokens left.
    pub tokens: Option<u64>,
    /// Requests open.
    pub in_flight: u32,
}

impl Room {
    /// A key's headroom now.
    pub fn of(headroom: &super::headroom::Headroom, now_ms: u64) -> Room {
        Room {
            requests: headroom.requests(now_ms),
            tokens: headroom.tokens(now_ms),
            in_flight: headroom.in_flight(),
        }
    }

    /// `480 req, 39k tok left` for tables; `-` when nothing is known.
    pub fn describe(&self) -> String {
        let short = |n: u64| match n {
            0..=9_999 => n.to_string(),
            10_000..=9_999_999 => format!("{}k", n / 1000),
            _ => format!("{}M", n / 1_000_000),
        };
        let mut parts = Vec::new();
        if let Some(requests) = self.requests {
            parts.push(format!("{} req", short(requests)));
        }
        if let Some(tokens) = self.tokens {
            parts.push(format!("{} tok", short(tokens)));
        }
        if parts.is_empty() {
            return "-".to_owned();
        }
        format!("{} left", parts.join(", "))
    }
}

impl HealthReport {
    /// The report beside the ledger at `ledger`.
    pub fn beside(ledger: &Path) -> HealthReport {
        HealthReport {
            path: ledger.with_file_name(FILE_NAME),
        }
    }

    /// Writes the health of every key of `snapshot` (temp file, rename).
    pub fn write(&self, rings: &super::Rings, now_ms: u64) -> std::io::Result<()> {
        let keys = rings
            .values()
            .flat_map(|ring| ring.keys())
            .map(|key| (key.id.to_string(), key.health.state_name(now_ms).to_owned()))
            .collect();
        let headroom = rings
            .values()
            .flat_map(|ring| ring.keys())
            .map(|key| (key.id.to_string(), Room::of(&key.health.headroom, now_ms)))
            .filter(|(_, room)| *room != Room::default())
            .collect();
        let report = Report {
            written: crate::unix_now(),
            keys,
            headroom,
        };
        let tmp = self.path.with_extension("json.tmp");
        std::fs::write(&tmp, serde_json::to_vec(&report)?)?;
        std::fs::rename(&tmp, &self.path)
    }

    /// Key id → health state, from a fresh report; `None` when no server
    /// reported within [`FRESH_FOR`].
    pub fn read(&self) -> Option<BTreeMap<String, String>> {
        let report: Report = serde_json::from_slice(&std::fs::read(&self.path).ok()?).ok()?;
        let age = crate::unix_now().saturating_sub(report.written);
        (age <= FRESH_FOR.as_secs()).then_some(report.keys)
    }

    /// Key id → headroom, from a fresh report (empty when none is fresh).
    pub fn read_headroom(&self) -> BTreeMap<String, Room> {
        std::fs::read(&self.path)
            .ok()
            .and_then(|bytes| serde_json::from_slice::<Report>(&bytes).ok())
            .filter(|r| crate::unix_now().saturating_sub(r.written) <= FRESH_FOR.as_secs())
            .map(|r| r.headroom)
            .unwrap_or_default()
    }

    /// Removes the report (the server is stopping).
    pub fn remove(&self) {
        let _ = std::fs::remove_file(&self.path);
    }
}
