//! A tiny OpenAI-compatible upstream, to try keygate without a real API key.
//!
//! Run:
//!   cargo run --example mock_upstream -- 127.0.0.1:9999 sk-mock-0000000000000000 sk-mock-1111111111111111
//! (it accepts every key given, so a rotation can be tried), then point a
//! provider at it (`examples/try-it.toml` does), add a key with
//! `printf '%s' sk-mock-0000000000000000 | keygate key add openai`, and send
//! requests through keygate. You will see one line per request here, showing
//! which upstream key keygate injected (by fingerprint). It answers
//! `GET /v1/models`, `GET /v1/models/{id}`, `POST /v1/embeddings`, `POST /v1/responses`
//! (the Responses API, JSON) and `POST /v1/chat/completions`
//! (JSON, or SSE with a final usage chunk when `"stream": true`), and 401 with
//! OpenAI's error JSON for any other key. Like the real APIs, it gzips its
//! answers when the request accepts gzip (the SDKs send
//! `Accept-Encoding: gzip, deflate`), so keygate's metering of compressed
//! answers is exercised by the SDK test too. It has no management API, so
//! `key rotate --mint` and `key inventory` cannot be tried on it.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::convert::Infallible;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

#[tokio::main(flavor = "current_thread")]
#[allow(dead_code)] // also compiled into tests/it/sdk.rs, which uses only `serve`
async fn main() {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:9999".to_owned());
    let mut keys: Vec<String> = args.collect();
    if keys.is_empty() {
        keys.push("sk-mock-0000000000000000".to_owned());
    }
    let listener = tokio::net::TcpListener::bind(&addr).await.expect("bind");
    println!(
        "mock upstream on http://{} accepting {} key(s)",
        listener.local_addr().unwrap(),
        keys.len()
    );
    serve(listener, keys).await;
}

/// Answers on `listener` forever, accepting only `keys`.
pub async fn serve(listener: tokio::net::TcpListener, keys: Vec<String>) {
    let key: &'static [String] = Box::leak(keys.into_boxed_slice());
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |r| answer(r, key));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// One answer, gzipped when the request accepted gzip (as the real APIs do).
fn respond((status, body, content_type): (u16, String, &str), gzip: bool) -> Response<Full<Bytes>> {
    let response = Response::builder()
        .status(status)
        .header("content-type", content_type);
    if !gzip {
        return response.body(Full::new(Bytes::from(body))).unwrap();
    }
    use std::io::Write;
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(body.as_bytes()).unwrap();
    response
        .header("content-encoding", "gzip")
        .body(Full::new(Bytes::from(encoder.finish().unwrap())))
        .unwrap()
}

async fn answer(
    request: Request<Incoming>,
    keys: &[String],
) -> Result<Response<Full<Bytes>>, Infallible> {
    let presented = request
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("")
        .to_owned();
    let (method, path) = (request.method().clone(), request.uri().path().to_owned());
    let gzip = request
        .headers()
        .get("accept-encoding")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|c| c.trim().starts_with("gzip")));
    let body = request
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let tail: String = presented
        .chars()
        .rev()
        .take(4)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    println!("{method} {path} with key …{tail}");
    if !keys.contains(&presented) {
        return Ok(respond((401, format!("{{\"error\":{{\"message\":\"Incorrect API key provided: sk-…{tail}.\",\"type\":\"invalid_request_error\",\"param\":null,\"code\":\"invalid_api_key\"}}}}"), "application/json"), gzip));
    }
    let request: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let model = request["model"]
        .as_str()
        .unwrap_or("gpt-4o-mini")
        .to_owned();
    Ok(respond(match path.as_str() {
        "/v1/models" => (200, r#"{"object":"list","data":[{"id":"gpt-4o-mini","object":"model","owned_by":"mock"}]}"#.into(), "application/json"),
        p if p.starts_with("/v1/models/") => (200, format!(r#"{{"id":"{}","object":"model","owned_by":"mock"}}"#, &p["/v1/models/".len()..]), "application/json"),
        "/v1/embeddings" => (200, format!(r#"{{"object":"list","data":[{{"object":"embedding","index":0,"embedding":[0.1,0.2,0.3]}}],"model":"{model}","usage":{{"prompt_tokens":4,"total_tokens":4}}}}"#), "application/json"),
        "/v1/chat/completions" if request["stream"] == true => {
            let mut sse = String::new();
            for word in ["Hello", " from", " the", " mock", "!"] {
                sse.push_str(&format!("data: {{\"id\":\"chatcmpl-mock\",\"object\":\"chat.completion.chunk\",\"model\":\"{model}\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"{word}\"}},\"finish_reason\":null}}]}}\n\n"));
            }
            if request["stream_options"]["include_usage"] == true {
                sse.push_str(&format!("data: {{\"id\":\"chatcmpl-mock\",\"object\":\"chat.completion.chunk\",\"model\":\"{model}\",\"choices\":[],\"usage\":{{\"prompt_tokens\":9,\"completion_tokens\":5,\"total_tokens\":14}}}}\n\n"));
            }
            sse.push_str("data: [DONE]\n\n");
            (200, sse, "text/event-stream")
        }
        "/v1/responses" => (200, format!(r#"{{"id":"resp_mock","object":"response","created_at":1741476542,"status":"completed","error":null,"incomplete_details":null,"instructions":null,"max_output_tokens":null,"model":"{model}","output":[{{"type":"message","id":"msg_mock","status":"completed","role":"assistant","content":[{{"type":"output_text","text":"Hello from the mock!","annotations":[]}}]}}],"parallel_tool_calls":true,"previous_response_id":null,"reasoning":{{"effort":null,"summary":null}},"store":true,"temperature":1.0,"text":{{"format":{{"type":"text"}}}},"tool_choice":"auto","tools":[],"top_p":1.0,"truncation":"disabled","usage":{{"input_tokens":9,"input_tokens_details":{{"cached_tokens":0}},"output_tokens":5,"output_tokens_details":{{"reasoning_tokens":0}},"total_tokens":14}},"user":null,"metadata":{{}}}}"#), "application/json"),
        "/v1/chat/completions" => (200, format!(r#"{{"id":"chatcmpl-mock","object":"chat.completion","model":"{model}","choices":[{{"index":0,"message":{{"role":"assistant","content":"Hello from the mock!"}},"finish_reason":"stop"}}],"usage":{{"prompt_tokens":9,"completion_tokens":5,"total_tokens":14}}}}"#), "application/json"),
        _ => (404, r#"{"error":{"message":"Unknown path","type":"invalid_request_error","code":"unknown_url"}}"#.into(), "application/json"),
    }, gzip))
}
