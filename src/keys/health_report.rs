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
        let report = Report {
            written: crate::unix_now(),
            keys,
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

    /// Removes the report (the server is stopping).
    pub fn remove(&self) {
        let _ = std::fs::remove_file(&self.path);
    }
}
