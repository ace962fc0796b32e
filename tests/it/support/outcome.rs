//! What one client sees for one chat request (status, text, a transport error
//! or a cut stream), reported rather than panicked on, so a test can send many
//! requests through a rotation or a failing key and judge them all afterwards.

use std::time::Instant;

use http_body_util::BodyExt;

use super::client::{open_h1, REQUEST_TIMEOUT};
use super::{Env, Req};

/// What one client saw for one request.
pub struct Outcome {
    pub streaming: bool,
    pub status: u16,
    pub text: String,
    /// A transport error or a stream cut short: a client-visible error.
    pub error: Option<String>,
    pub ended: Instant,
}

/// A streaming chat request that asks for the usage chunk itself (so what the
/// client reads is exactly what the mock sent).
pub fn stream_request(env: &Env) -> Req {
    Req::post("/v1/chat/completions")
        .bearer(&env.client_key)
        .json(&serde_json::json!({
            "model": "gpt-4o",
            "messages": [{"role": "user", "content": "Say hello."}],
            "stream": true,
            "stream_options": {"include_usage": true},
        }))
}

/// One chat completion as client `app`, plain or streaming (read to the end;
/// errors are reported, not panicked on).
pub async fn one_request(env: &Env, streaming: bool) -> Outcome {
    if !streaming {
        let resp = env.server.send(env.chat("gpt-4o")).await;
        return Outcome {
            streaming,
            status: resp.status.as_u16(),
            text: resp.text(),
            error: None,
            ended: Instant::now(),
        };
    }
    let resp = open_h1(env.server.client, stream_request(env)).await;
    let status = resp.status().as_u16();
    let mut body = resp.into_body();
    let mut bytes = Vec::new();
    let mut error = None;
    loop {
        match tokio::time::timeout(REQUEST_TIMEOUT, body.frame()).await {
            Err(_) => {
                error = Some("stream stalled".to_string());
                break;
            }
            Ok(None) => break,
            Ok(Some(Err(e))) => {
                error = Some(format!("stream body error: {e}"));
                break;
            }
            Ok(Some(Ok(frame))) => {
                if let Ok(data) = frame.into_data() {
                    bytes.extend_from_slice(&data);
                }
            }
        }
    }
    let text = String::from_utf8_lossy(&bytes).into_owned();
    env.server
        .record("client stream during rotation", text.clone());
    Outcome {
        streaming,
        status,
        text,
        error,
        ended: Instant::now(),
    }
}
