//! `[telemetry]` (OpenTelemetry traces over OTLP/HTTP, docs/operations.md
//! "Traces") and `[server] log_format`, as serde reads them and as they are
//! checked: an endpoint that is not an `http://` or `https://` URL with a
//! host, or a ratio outside 0..1, stops the start with a message naming the
//! key.

use serde::Deserialize;

/// `[server] log_format`: how each log line is written to stderr.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// `2026-12-02T02:08:32.251776Z  INFO target: message key=value …`.
    #[default]
    Text,
    /// One JSON object per line, with the same fields.
    Json,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTelemetry {
    #[serde(default)]
    otlp_endpoint: Option<String>,
    #[serde(default)]
    sample_ratio: Option<f64>,
    #[serde(default)]
    service_name: Option<String>,
}

/// `[telemetry]`: where traces go, and how many.
#[derive(Debug, Clone, PartialEq)]
pub struct TelemetryConfig {
    /// The collector's OTLP/HTTP traces URL (`…/v1/traces`); `None`: no
    /// traces at all.
    pub traces_url: Option<http::Uri>,
    /// The share of requests traced (0..=1).
    pub sample_ratio: f64,
    /// `service.name` of every span.
    pub service_name: String,
}

/// The OTLP/HTTP path of traces under a collector's base URL.
const TRACES_PATH: &str = "/v1/traces";

/// Checks `[telemetry]`. `otlp_endpoint` is the collector's base URL, as
/// `OTEL_EXPORTER_OTLP_ENDPOINT` is (`http://collector:4318`): traces go to
/// its `/v1/traces`, unless the URL already ends with it.
pub(super) fn telemetry(raw: RawTelemetry) -> Result<TelemetryConfig, String> {
    let sample_ratio = raw.sample_ratio.unwrap_or(1.0);
    if !(0.0..=1.0).contains(&sample_ratio) {
        return Err(format!(
            "telemetry.sample_ratio must be between 0 and 1 (the share of requests traced), not {sample_ratio}"
        ));
    }
    let service_name = raw.service_name.unwrap_or_else(|| "keygate".to_owned());
    if service_name.trim().is_empty() {
        return Err("telemetry.service_name must not be empty (default: \"keygate\")".to_owned());
    }
    let traces_url = match raw.otlp_endpoint.filter(|e| !e.is_empty()) {
        None => None,
        Some(endpoint) => Some(traces_url(&endpoint)?),
    };
    Ok(TelemetryConfig {
        traces_url,
        sample_ratio,
        service_name,
    })
}

fn traces_url(endpoint: &str) -> Result<http::Uri, String> {
    // A URL with a user part may carry a password: it is not repeated.
    let shown = if endpoint.contains('@') {
        String::new()
    } else {
        format!(" `{endpoint}`")
    };
    let bad = |why: &str| {
        format!(
            "telemetry.otlp_endpoint{shown} {why}: write the collector's OTLP/HTTP base URL, e.g. \"http://127.0.0.1:4318\""
        )
    };
    let uri: http::Uri = endpoint.parse().map_err(|_| bad("is not a URL"))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        Some(_) => {
            return Err(bad(
                "must be http:// or https:// (OTLP/HTTP; gRPC is not supported)",
            ))
        }
        None => return Err(bad("needs a scheme and host")),
    }
    let Some(authority) = uri.authority() else {
        return Err(bad("needs a scheme and host"));
    };
    if authority.as_str().contains('@') {
        return Err(bad(
            "carries a credential: give the collector's headers in OTEL_EXPORTER_OTLP_HEADERS instead",
        ));
    }
    if uri.query().is_some() {
        return Err(bad("has a query string"));
    }
    let path = uri.path().trim_end_matches('/');
    let path = if path.ends_with(TRACES_PATH) {
        path.to_owned()
    } else {
        format!("{path}{TRACES_PATH}")
    };
    format!("{}://{authority}{path}", uri.scheme_str().unwrap_or("http"))
        .parse()
        .map_err(|_| bad("is not a URL"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_endpoint(endpoint: &str) -> Result<TelemetryConfig, String> {
        telemetry(RawTelemetry {
            otlp_endpoint: Some(endpoint.to_owned()),
            ..RawTelemetry::default()
        })
    }

    #[test]
    fn the_endpoint_is_the_collectors_base_url() {
        let url = |e: &str| with_endpoint(e).unwrap().traces_url.unwrap().to_string();
        assert_eq!(
            url("http://127.0.0.1:4318"),
            "http://127.0.0.1:4318/v1/traces"
        );
        assert_eq!(url("http://otel:4318/"), "http://otel:4318/v1/traces");
        assert_eq!(
            url("https://otel.example.com/otlp/v1/traces"),
            "https://otel.example.com/otlp/v1/traces"
        );
        assert_eq!(
            url("https://otel.example.com/otlp"),
            "https://otel.example.com/otlp/v1/traces"
        );
    }

    #[test]
    fn off_by_default_with_every_request_sampled_as_keygate() {
        let config = telemetry(RawTelemetry::default()).unwrap();
        assert_eq!(config.traces_url, None);
        assert_eq!(config.sample_ratio, 1.0);
        assert_eq!(config.service_name, "keygate");
    }

    #[test]
    fn bad_values_are_named() {
        for (endpoint, expected) in [
            ("not a url", "is not a URL"),
            ("grpc://otel:4317", "must be http:// or https://"),
            ("otel:4318", "needs a scheme and host"),
            ("/v1/traces", "needs a scheme and host"),
            ("http://user:pw@otel:4318", "carries a credential"),
        ] {
            let error = with_endpoint(endpoint).unwrap_err();
            assert!(error.contains(expected), "{endpoint}: {error}");
            assert!(error.contains("telemetry.otlp_endpoint"), "{error}");
            assert!(!error.contains("pw@"), "{error}");
        }
        for ratio in [-0.1, 1.5, f64::NAN] {
            let error = telemetry(RawTelemetry {
                sample_ratio: Some(ratio),
                ..RawTelemetry::default()
            })
            .unwrap_err();
            assert!(error.contains("telemetry.sample_ratio"), "{error}");
        }
    }
}
