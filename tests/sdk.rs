//! The official OpenAI Python SDK against keygate (issue: "the OpenAI SDK flow
//! works"): chat, streaming chat, models and embeddings through a real
//! `keygate serve`, against the example mock upstream on 127.0.0.1:0.
//!
//! Needs `python3` with the `openai` package; `.ci/run` installs it and sets
//! `KEYGATE_REQUIRE_SDK_TEST=1`, which turns a missing SDK into a failure. On a
//! developer machine without it the test says so and passes.
//!
//! The Anthropic SDK's flow (`examples/anthropic_sdk.py`) is tested the same
//! way in `tests/it/providers_usage.rs`, next to the Anthropic mock it needs.

#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

#[path = "../examples/mock_upstream.rs"]
mod mock_upstream;

use std::process::Command;

const UPSTREAM_KEY: &str = "sk-mock-sdk-test-000000000000000000";

#[test]
fn openai_python_sdk_works_through_keygate() {
    let sdk_present = Command::new("python3")
        .args(["-c", "import openai"])
        .status()
        .is_ok_and(|s| s.success());
    if !sdk_present {
        assert!(
            std::env::var("KEYGATE_REQUIRE_SDK_TEST").is_err(),
            "python3 with the openai package is required (pip install openai)"
        );
        eprintln!("SKIPPED: python3 with the openai package not found (pip install openai)");
        return;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let mock_addr = listener.local_addr().unwrap();
    runtime.spawn(mock_upstream::serve(listener, UPSTREAM_KEY.to_owned()));

    let workspace = common::Workspace::new(
        &mock_addr.to_string(),
        UPSTREAM_KEY,
        "",
        "flush_interval = \"100ms\"",
    );
    let (_serve, listen) = workspace.serve();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/openai_sdk.py");
    let sdk = Command::new("python3")
        .arg(script)
        .arg(format!("http://{listen}/v1"))
        .env("KEYGATE_CLIENT_KEY", &workspace.client_key)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&sdk.stdout);
    assert!(
        sdk.status.success(),
        "SDK script failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&sdk.stderr)
    );
    assert!(
        stdout.contains("chat: Hello from the mock! | usage: 14"),
        "{stdout}"
    );
    assert!(
        stdout.contains("stream: Hello from the mock! (5 chunks)"),
        "{stdout}"
    );
    assert!(stdout.contains("models: ['gpt-4o-mini']"), "{stdout}");
    assert!(stdout.contains("embedding length: 3"), "{stdout}");

    // Every call was metered, the stream included (keygate asked for its usage).
    std::thread::sleep(std::time::Duration::from_millis(400));
    let usage = common::keygate(&workspace.config, &["usage", "--json"], None);
    let rows: serde_json::Value = serde_json::from_str(&usage).unwrap();
    let total: u64 = rows
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["total_tokens"].as_u64().unwrap())
        .sum();
    assert_eq!(total, 14 + 14 + 4, "{usage}");
}
