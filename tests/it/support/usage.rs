//! Usage as the tests count it: ledger rows (`keygate usage --json`,
//! `GET /admin/usage`) as a map of [`Totals`], and the usage the recording
//! mock reports in its JSON answers and its stream's usage chunk.

use std::collections::BTreeMap;

use serde_json::Value;

use super::mock::{chat_completion_body, sse_events};

/// A ledger row's key: (client, provider, model).
pub type Row = (String, String, String);

/// The counts of one ledger row.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Totals {
    pub requests: u64,
    pub errors: u64,
    pub prompt: u64,
    pub completion: u64,
    pub total: u64,
}

impl Totals {
    /// One more request with this usage.
    pub fn add_usage(&mut self, (prompt, completion, total): (u64, u64, u64)) {
        self.requests += 1;
        self.prompt += prompt;
        self.completion += completion;
        self.total += total;
    }
}

pub fn row(client: &str, provider: &str, model: &str) -> Row {
    (client.into(), provider.into(), model.into())
}

/// `keygate usage --json` / `GET /admin/usage` output as a map; panics on a
/// row that lacks a documented field or repeats a key.
pub fn rows(v: &Value) -> BTreeMap<Row, Totals> {
    let list = v
        .as_array()
        .unwrap_or_else(|| panic!("usage JSON is not an array: {v}"));
    let mut out = BTreeMap::new();
    for r in list {
        let s = |f: &str| {
            r[f].as_str()
                .unwrap_or_else(|| panic!("usage row without string `{f}`: {r}"))
                .to_string()
        };
        let n = |f: &str| {
            r[f].as_u64()
                .unwrap_or_else(|| panic!("usage row without integer `{f}`: {r}"))
        };
        let key = (s("client"), s("provider"), s("model"));
        let totals = Totals {
            requests: n("requests"),
            errors: n("errors"),
            prompt: n("prompt_tokens"),
            completion: n("completion_tokens"),
            total: n("total_tokens"),
        };
        assert!(
            out.insert(key.clone(), totals).is_none(),
            "usage JSON repeats {key:?}: {v}"
        );
    }
    out
}

/// The usage of the usage-only chunk the mock sends at the end of a stream
/// that asked for it: (prompt, completion, total).
pub fn mock_stream_usage() -> (u64, u64, u64) {
    let events = sse_events("m", true);
    let chunk = events
        .iter()
        .find(|e| e.contains("\"choices\":[]"))
        .expect("the mock's usage chunk");
    let v: Value = serde_json::from_str(chunk.trim().trim_start_matches("data: ")).unwrap();
    usage_of(&v["usage"])
}

/// The usage of the mock's normal (non-canned) JSON chat completion.
pub fn mock_json_usage() -> (u64, u64, u64) {
    let v: Value = serde_json::from_str(&chat_completion_body("m")).unwrap();
    usage_of(&v["usage"])
}

fn usage_of(u: &Value) -> (u64, u64, u64) {
    (
        u["prompt_tokens"].as_u64().unwrap(),
        u["completion_tokens"].as_u64().unwrap(),
        u["total_tokens"].as_u64().unwrap(),
    )
}
