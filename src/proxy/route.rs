//! Routing: which provider a request goes to, and the upstream path.
//!
//! Looks only at the raw path and, for plain `/v1/…`, the body's `model`.
//! Never at `Host`, `X-Forwarded-Host`, an absolute-form URL's authority or any
//! body field naming a URL: the upstream is fixed by config.

use crate::json_skim::ChatFields;

use crate::config::{Config, Provider};
use crate::proxy::error::ProxyError;

/// How the path was matched.
#[derive(Debug, Clone, Copy)]
pub enum PathMatch<'a> {
    /// `/{prefix}/v1/…`: this provider, whatever the model.
    Prefixed(&'a Provider, &'a str),
    /// Plain `/v1/…`: the default provider unless the model says otherwise.
    Plain(&'a str),
}

/// Matches the path (without query). `rest` always starts with `/v1`.
pub fn by_path<'a>(config: &'a Config, path: &'a str) -> Result<PathMatch<'a>, ProxyError> {
    if normalises_differently(path) {
        return Err(ProxyError::InvalidPath(path.to_owned()));
    }
    if is_v1(path) {
        return Ok(PathMatch::Plain(path));
    }
    for provider in config.providers.values() {
        if let Some(rest) = path.strip_prefix(provider.prefix.as_str()) {
            if is_v1(rest) {
                return Ok(PathMatch::Prefixed(provider, rest));
            }
        }
    }
    Err(ProxyError::UnknownRoute(path.to_owned()))
}

fn is_v1(path: &str) -> bool {
    path == "/v1" || path.starts_with("/v1/")
}

/// True for a path that common servers and frameworks would read as another
/// path: a `.` or `..` segment, a `\` (a separator to some), an encoded
/// dot, slash, backslash or percent (`%2e`, `%2f`, `%5c`, and `%25`, which a
/// second decode turns into any of them), an encoded control byte (`%00`
/// truncates a path in C code), a `.` or `..` segment carrying `;parameters`
/// (`..;` climbs in servlet containers), or a `%` that is no escape at all. keygate
/// forwards the path as sent, with the upstream key, so a path the upstream
/// might read as something else than keygate routed is refused.
/// No allocation: this runs on every request (the query is not checked:
/// a query may well hold `%25`).
fn normalises_differently(path: &str) -> bool {
    let bytes = path.as_bytes();
    if memchr::memchr3(b'.', b'%', b'\\', bytes).is_none() {
        return false; // the common case
    }
    let hex = |b: Option<&u8>| b.and_then(|b| char::from(*b).to_digit(16));
    let mut at = 0;
    while let Some(found) = memchr::memchr2(b'%', b'\\', &bytes[at..]) {
        at += found;
        if bytes[at] == b'\\' {
            return true;
        }
        let (Some(high), Some(low)) = (hex(bytes.get(at + 1)), hex(bytes.get(at + 2))) else {
            return true; // a malformed escape: each server guesses differently
        };
        let decoded = high * 16 + low;
        if matches!(decoded, 0x2e | 0x2f | 0x5c | 0x25 | 0x00..=0x1f | 0x7f) {
            return true;
        }
        at += 3;
    }
    // A `;` starts a segment's parameters, which servlet containers drop
    // before resolving the segment: `..;x` climbs as `..` does.
    path.split('/').any(|segment| {
        let name = segment.split(';').next().unwrap_or(segment);
        name == "." || name == ".."
    })
}

/// The JSON body's `model` as the upstream reads it, from the body's
/// [`crate::json_skim::chat_fields`] (`None`: not a JSON object, or no
/// string `model`).
pub fn model_of<'a>(fields: Option<&ChatFields<'a>>) -> Option<std::borrow::Cow<'a, str>> {
    fields?
        .model
        .and_then(|value| serde_json::from_slice(value).ok())
}

/// The provider for a plain `/v1/…` request: the first `routing.models` prefix
/// (longest first) that `model` starts with, else the default.
pub fn by_model<'a>(config: &'a Config, model: Option<&str>) -> &'a Provider {
    let chosen = model.and_then(|model| {
        config
            .routing
            .models
            .iter()
            .find(|(prefix, _)| model.starts_with(prefix.as_str()))
            .map(|(_, provider)| provider.as_str())
    });
    let name = chosen.unwrap_or(config.routing.default.as_str());
    // validate() guarantees every routed name is a configured provider.
    config
        .providers
        .get(name)
        .or_else(|| config.providers.values().next())
        .unwrap_or_else(|| unreachable_provider())
}

#[cold]
fn unreachable_provider() -> &'static Provider {
    // Config::validate refuses a config whose routing.default is not a provider,
    // so there is always at least one provider; this keeps the signature total.
    static FALLBACK: std::sync::OnceLock<Provider> = std::sync::OnceLock::new();
    FALLBACK.get_or_init(|| Provider {
        name: "none".into(),
        origin: http::Uri::from_static("http://127.0.0.1:9/"),
        base_path: String::new(),
        kind: crate::providers::Kind::generic(),
        auth: crate::config::AuthStyle::Bearer,
        prefix: "/none".into(),
        organization: None,
        project: None,
        allow_client_org_headers: false,
        http: crate::config::UpstreamHttp::Auto,
        pool: crate::config::Pool::Sticky,
        admin: None,
        as_shipped: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_and_model_routing() {
        let config = Config::from_toml("").unwrap();
        match by_path(&config, "/xai/v1/chat/completions").unwrap() {
            PathMatch::Prefixed(p, rest) => {
                assert_eq!(p.name, "xai");
                assert_eq!(rest, "/v1/chat/completions");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            by_path(&config, "/v1/models"),
            Ok(PathMatch::Plain(_))
        ));
        let grok = skim_then_model(br#"{"model":"grok-3","x":[1]}"#);
        assert_eq!(by_model(&config, grok.as_deref()).name, "xai");
        let gpt = skim_then_model(br#"{"model":"gpt-4o"}"#);
        assert_eq!(by_model(&config, gpt.as_deref()).name, "openai");
        assert_eq!(by_model(&config, None).name, "openai");
    }

    /// model_of as the conductor calls it: skim first.
    fn skim_then_model(body: &[u8]) -> Option<String> {
        let fields = crate::json_skim::chat_fields(body);
        model_of(fields.as_ref()).map(|m| m.into_owned())
    }

    /// What serde_json reads (the last of repeated keys, escapes decoded).
    fn serde_model(body: &[u8]) -> Option<String> {
        let value: serde_json::Value = serde_json::from_slice(body).ok()?;
        value.get("model")?.as_str().map(str::to_owned)
    }

    #[test]
    fn the_skim_finds_the_model_serde_finds() {
        let bodies: &[&[u8]] = &[
            br#"{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}]}"#,
            br#"{"messages":[{"role":"user","content":"say \"model\": 1","model":"inner"}],"model":"grok-3"}"#,
            br#"{ "stream" : true ,
                "model" : "gpt-4o-mini" } "#,
            br#"{"metadata":{"model":"nested"},"tools":[{"model":"x"}]}"#,
            br#"{"model":"a\"b\\c\u00e9"}"#,
            br#"{"mod\u0065l":"escaped-key"}"#,
            br#"{"model":"first","model":"second"}"#,
            br#"{"model":"first","m\u006fdel":"second"}"#,
            br#" {"model":"grok-3"} "#,
            br#"{"model":7}"#,
            br#"{"model":null}"#,
            br#"{"model":"x"#,
            br#"{"x":"\\","model":"after-backslash"}"#,
            br#"{"x":[[],{},"]"],"model":"after-brackets"}"#,
            b"{}",
            b"{\"model\":\"caf\xc3\xa9\"}",
        ];
        for body in bodies {
            assert_eq!(
                skim_then_model(body),
                serde_model(body),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn the_skim_agrees_with_serde_on_generated_bodies() {
        use serde_json::{Map, Value};
        let mut seed = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = move |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        const KEYS: [&str; 5] = ["model", "messages", "content", "mo\"del", "x\\"];
        const TEXTS: [&str; 6] = ["gpt-4o", "a\"}]b", "\\", "é ü", "{\"model\":1}", ""];
        fn value(next: &mut dyn FnMut(u64) -> u64, depth: u32) -> Value {
            match next(if depth > 3 { 3 } else { 6 }) {
                0 => Value::String(TEXTS[next(6) as usize].to_owned()),
                1 => Value::from(next(1000)),
                2 => Value::Null,
                3 => Value::Array((0..next(4)).map(|_| value(next, depth + 1)).collect()),
                _ => {
                    let mut map = Map::new();
                    for _ in 0..next(4) {
                        map.insert(KEYS[next(5) as usize].to_owned(), value(next, depth + 1));
                    }
                    Value::Object(map)
                }
            }
        }
        // Bodies the skim judged itself (the rest fall back to serde, which
        // would agree with serde whatever the skim did).
        let mut skimmed = 0;
        for case in 0..3000 {
            let mut top = Map::new();
            for _ in 0..next(5) {
                let key = KEYS[next(5) as usize].to_owned();
                top.insert(key, value(&mut next, 1));
            }
            let top = Value::Object(top);
            for text in [
                serde_json::to_string(&top).unwrap(),
                serde_json::to_string_pretty(&top).unwrap(),
            ] {
                skimmed += usize::from(crate::json_skim::skim(text.as_bytes()).is_some());
                assert_eq!(
                    skim_then_model(text.as_bytes()),
                    serde_model(text.as_bytes()),
                    "case {case}: {text}"
                );
            }
        }
        assert!(
            skimmed > 2000,
            "the skim judged only {skimmed} of 6000 bodies"
        );
    }

    #[test]
    fn unknown_and_climbing_paths_are_refused() {
        let config = Config::from_toml("").unwrap();
        for path in ["/nope", "/v2/x", "/xaiv1/x", "/v1"] {
            let refused = by_path(&config, path);
            if path == "/v1" {
                assert!(refused.is_ok());
            } else {
                assert!(
                    matches!(refused, Err(ProxyError::UnknownRoute(_))),
                    "{path}"
                );
            }
        }
        for path in [
            "/v1/../admin",
            "/v1/%2e%2e/x",
            "/v1%2f..%2fx",
            "/v1/%2E./x",
            "/v1/.%2e",
            "/v1/.",
            "/v1/x%2Fy",
            "/v1/%2e%2e%2e",
            "/v1/a%2eb",
            "/v1\\..\\admin",
            "/v1/chat\\completions",
            "/v1/%5c../x",
            "/v1/%5Cx",
            "/v1/%252e%252e/x",
            "/v1/%25",
            "/v1/%2",
            "/v1/%zz",
            "/v1/%",
            "/v1/x%00y",
            "/v1/x%0a",
            "/xai/v1/%2e%2e/x",
            "/openai/v1/..;/x",
            "/v1/..;a=b/x",
            "/v1/.;/x",
        ] {
            assert!(
                matches!(by_path(&config, path), Err(ProxyError::InvalidPath(_))),
                "{path}"
            );
        }
        for path in [
            "/v1/a.b",
            "/v1/...",
            "/v1/x%20y",
            "/v1/x%41%7e",
            "/v1/.well",
            "/v1/files/file-abc/content",
            "/v1/a;b",
            "/v1/...;x",
        ] {
            assert!(by_path(&config, path).is_ok(), "{path}");
        }
    }
}
