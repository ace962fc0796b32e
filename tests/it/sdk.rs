//! The official OpenAI Python SDK against keygate (the quickstart's SDK flow):
//! chat, streaming chat, the Responses API, models and embeddings through a real `keygate serve`,
//! against the example mock upstream on 127.0.0.1:0.
//!
//! Needs `python3` with the `openai` package; `.ci/run` installs it and sets
//! `KEYGATE_REQUIRE_SDK_TEST=1`, which turns a missing SDK into a failure. On a
//! developer machine without it the test passes with a `SKIPPED` line in the
//! `cargo test` output and in `target/tmp/skipped-tests.txt` (`support/skips.rs`).
//!
//! The same world runs the OpenAI Node SDK (`examples/openai_sdk.cjs`; `.ci/run`
//! installs the `openai` npm package under `target/ci-node` and sets
//! `NODE_PATH`), LangChain's ChatOpenAI (`examples/langchain_chat.py`) and curl
//! (`examples/curl.sh`).
//!
//! The Anthropic SDK's flow (`examples/anthropic_sdk.py`) is tested the same
//! way in `providers_usage.rs`, next to the Anthropic mock it needs.

#[path = "../../examples/mock_upstream.rs"]
mod mock_upstream;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::{skips, Keygate, KeygateBuilder, Server};

const UPSTREAM_KEY: &str = "sk-mock-sdk-test-000000000000000000";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_python_sdk_works_through_keygate() {
    if !sdk_available(
        "sdk::openai_python_sdk_works_through_keygate",
        &["python3", "-c", "import openai"],
        "python3 with the openai package (pip install openai)",
    ) {
        return;
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mock_addr = listener.local_addr().unwrap();
    tokio::spawn(mock_upstream::serve(
        listener,
        vec![UPSTREAM_KEY.to_owned()],
    ));

    let kg = Keygate::new(&KeygateBuilder::new().provider(
        "openai",
        &format!("http://{mock_addr}"),
        "bearer",
    ));
    kg.vault_init();
    kg.add_key("openai", UPSTREAM_KEY);
    let client_key = kg.add_client("app");
    let server = kg.serve_with(&[("KEYGATE_METERING__FLUSH_INTERVAL", "100ms")]);

    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/openai_sdk.py");
    let base_url = format!("http://{}/v1", server.client);
    let sdk = tokio::task::spawn_blocking(move || {
        Command::new("python3")
            .arg(script)
            .arg(base_url)
            .env("KEYGATE_CLIENT_KEY", client_key)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&sdk.stdout).into_owned();
    kg.record("openai sdk stdout", stdout.clone());
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
    assert!(
        stdout.contains("responses: Hello from the mock! | usage: 14"),
        "{stdout}"
    );
    assert!(stdout.contains("models: ['gpt-4o-mini']"), "{stdout}");
    assert!(stdout.contains("embedding length: 3"), "{stdout}");

    // Every call was metered, the stream included (keygate asked for its usage).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = kg.run(&["usage", "--json"]);
        out.assert_ok("usage --json");
        let rows: serde_json::Value = serde_json::from_str(out.stdout.trim()).unwrap();
        let total: u64 = rows
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["total_tokens"].as_u64().unwrap())
            .sum();
        if total == 14 + 14 + 14 + 4 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "metered {total} tokens, want {}: {}",
            14 + 14 + 14 + 4,
            out.stdout
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// keygate serving in front of the example mock, and a client key.
async fn example_world() -> (Keygate, Server, String) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mock_addr = listener.local_addr().unwrap();
    tokio::spawn(mock_upstream::serve(
        listener,
        vec![UPSTREAM_KEY.to_owned()],
    ));
    let kg = Keygate::new(&KeygateBuilder::new().provider(
        "openai",
        &format!("http://{mock_addr}"),
        "bearer",
    ));
    kg.vault_init();
    kg.add_key("openai", UPSTREAM_KEY);
    let client_key = kg.add_client("app");
    let server = kg.serve();
    (kg, server, client_key)
}

/// Runs `program args…` with the client key; its stdout, recorded for the leak check.
async fn run_example(kg: &Keygate, client_key: &str, program: &str, args: Vec<String>) -> String {
    let (program, key) = (program.to_owned(), client_key.to_owned());
    let out = tokio::task::spawn_blocking(move || {
        Command::new(program)
            .args(args)
            .env("KEYGATE_CLIENT_KEY", key)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    kg.record("example stdout", stdout.clone());
    assert!(
        out.status.success(),
        "example failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_node_sdk_works_through_keygate() {
    if !sdk_available(
        "sdk::openai_node_sdk_works_through_keygate",
        &["node", "-e", "require('openai')"],
        "node with the openai package (npm install openai; NODE_PATH)",
    ) {
        return;
    }
    let (kg, server, client_key) = example_world().await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/openai_sdk.cjs");
    let base_url = format!("http://{}/v1", server.client);
    let stdout = run_example(&kg, &client_key, "node", vec![script.to_owned(), base_url]).await;
    for line in [
        "chat: Hello from the mock! | usage: 14",
        "stream: Hello from the mock! (5 chunks)",
        "models: gpt-4o-mini",
        "model: gpt-4o-mini",
    ] {
        assert!(stdout.contains(line), "no `{line}` in:\n{stdout}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_works_through_keygate() {
    let (kg, server, client_key) = example_world().await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/curl.sh");
    let base_url = format!("http://{}/v1", server.client);
    let stdout = run_example(&kg, &client_key, "sh", vec![script.to_owned(), base_url]).await;
    assert!(
        stdout.contains("\"content\":\"Hello from the mock!\""),
        "{stdout}"
    );
    assert!(stdout.contains("data: [DONE]"), "{stdout}");
    // The streamed answer's usage chunk, which keygate asked for, is not shown.
    assert_eq!(stdout.matches("\"usage\"").count(), 1, "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn langchain_chat_openai_works_through_keygate() {
    if !sdk_available(
        "sdk::langchain_chat_openai_works_through_keygate",
        &["python3", "-c", "import langchain_openai"],
        "python3 with langchain-openai (pip install langchain-openai)",
    ) {
        return;
    }
    let (kg, server, client_key) = example_world().await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/langchain_chat.py");
    let base_url = format!("http://{}/v1", server.client);
    let stdout = run_example(
        &kg,
        &client_key,
        "python3",
        vec![script.to_owned(), base_url],
    )
    .await;
    assert!(
        stdout.contains("langchain: Hello from the mock!"),
        "{stdout}"
    );
    assert!(
        stdout.contains("langchain stream: Hello from the mock!"),
        "{stdout}"
    );
}

/// True when `probe` (`program FLAG CODE`) runs: the SDK is installed.
/// Otherwise a failure under `KEYGATE_REQUIRE_SDK_TEST` (CI installs it),
/// else `test` says loudly that it skipped ([`skips`]).
#[track_caller]
fn sdk_available(test: &str, probe: &[&str; 3], sdk: &str) -> bool {
    let present = Command::new(probe[0])
        .args(&probe[1..])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !present {
        skips::skip_unless_required(test, sdk, "KEYGATE_REQUIRE_SDK_TEST");
    }
    present
}
