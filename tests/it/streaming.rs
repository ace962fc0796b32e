//! Streaming (docs/design.md §4, §7): a `text/event-stream` answer is passed through
//! event by event, never buffered, and arrives intact.

use std::time::Duration;

use serde_json::json;

use crate::support::client::{next_data, open_h1};
use crate::support::mock::sse_events;
use crate::support::{Env, Req};

fn stream_request(env: &Env, model: &str, include_usage: bool) -> Req {
    let mut body = json!({
        "model": model,
        "messages": [{"role": "user", "content": "Count to four."}],
        "stream": true,
    });
    if include_usage {
        body["stream_options"] = json!({"include_usage": true});
    }
    Req::post("/v1/chat/completions")
        .bearer(&env.client_key)
        .json(&body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn first_event_reaches_the_client_while_the_upstream_holds_the_stream() {
    let env = Env::start().await;
    let release = env.openai.hold_streams();
    let resp = open_h1(env.server.client, stream_request(&env, "gpt-4o", true)).await;
    assert_eq!(resp.status(), 200);
    let ctype = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    assert!(
        ctype.starts_with("text/event-stream"),
        "content-type: {ctype}"
    );

    let mut body = resp.into_body();
    // The upstream has sent only its first event and is waiting on us.
    let first = next_data(&mut body, Duration::from_secs(5))
        .await
        .expect("the stream ended before its first event");
    let mut got = String::from_utf8_lossy(&first).into_owned();
    while !got.contains("\n\n") {
        let more = next_data(&mut body, Duration::from_secs(5))
            .await
            .expect("the stream ended inside its first event");
        got.push_str(&String::from_utf8_lossy(&more));
    }
    assert!(
        got.starts_with("data: ") && got.contains(r#""role":"assistant""#),
        "the first bytes must be the first event, got {got:?}"
    );
    let expected = sse_events("gpt-4o", true);
    assert_eq!(
        got, expected[0],
        "only the first event can have arrived while the upstream holds"
    );

    release.release();
    while let Some(chunk) = next_data(&mut body, Duration::from_secs(10)).await {
        got.push_str(&String::from_utf8_lossy(&chunk));
    }
    env.server.record("stream", got.clone());
    assert_eq!(got, expected.concat(), "the stream must arrive intact");
    assert_eq!(env.openai.hits(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn whole_stream_arrives_intact_ending_in_done() {
    let env = Env::start().await;
    env.openai.set_stream_delay(Duration::from_millis(20));
    let resp = open_h1(env.server.client, stream_request(&env, "gpt-4o", true)).await;
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let mut got = String::new();
    let mut frames = 0;
    while let Some(chunk) = next_data(&mut body, Duration::from_secs(10)).await {
        frames += 1;
        got.push_str(&String::from_utf8_lossy(&chunk));
    }
    env.server.record("stream", got.clone());
    assert_eq!(got, sse_events("gpt-4o", true).concat());
    assert!(got.ends_with("data: [DONE]\n\n"));
    assert!(
        frames > 1,
        "events paced 20 ms apart arrived in a single read: the stream was buffered"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stream_without_include_usage_gets_no_usage_chunk() {
    let env = Env::start().await;
    let resp = open_h1(env.server.client, stream_request(&env, "gpt-4o", false)).await;
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let mut got = String::new();
    while let Some(chunk) = next_data(&mut body, Duration::from_secs(10)).await {
        got.push_str(&String::from_utf8_lossy(&chunk));
    }
    env.server.record("stream", got.clone());
    assert!(
        !got.contains(r#""choices":[]"#),
        "a client that did not ask for usage must not get the usage chunk:\n{got}"
    );
    // keygate may have asked the upstream for usage on the client's behalf, so
    // chunks may carry `"usage":null`; apart from that the events are the upstream's.
    let expected: Vec<serde_json::Value> = sse_events("gpt-4o", false)
        .iter()
        .map(|e| event_json(e))
        .collect();
    let events: Vec<serde_json::Value> = got
        .split("\n\n")
        .filter(|e| !e.trim().is_empty())
        .map(event_json)
        .collect();
    assert_eq!(events, expected, "stream:\n{got}");
    assert!(got.ends_with("data: [DONE]\n\n"));
}

/// One SSE event as JSON without a null `usage` field; `[DONE]` as a string.
fn event_json(event: &str) -> serde_json::Value {
    let data = event
        .trim()
        .strip_prefix("data: ")
        .unwrap_or_else(|| panic!("not an SSE data event: {event:?}"));
    if data == "[DONE]" {
        return json!("[DONE]");
    }
    let mut v: serde_json::Value =
        serde_json::from_str(data).unwrap_or_else(|e| panic!("bad event JSON ({e}): {data}"));
    if v.get("usage").is_some_and(|u| u.is_null()) {
        v.as_object_mut().expect("object").remove("usage");
    }
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stream_over_http2_arrives_intact() {
    let env = Env::start().await;
    let resp = env
        .server
        .send_h2(stream_request(&env, "grok-3", true))
        .await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.text(), sse_events("grok-3", true).concat());
    assert_eq!(env.xai.hits(), 1);
}
