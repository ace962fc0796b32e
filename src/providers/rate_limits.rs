//! What a provider's answer says is left of a key's rate limits (docs/design.md
//! §17), in the two dialects the providers speak, for the kinds' files to
//! pick from ([`super::ProviderKind::rate_limits`]):
//!
//! - OpenAI's, also spoken by xAI, Groq and Azure OpenAI:
//!   `x-ratelimit-remaining-requests`, `x-ratelimit-remaining-tokens`, and
//!   `x-ratelimit-reset-requests` / `-tokens` as Go durations (`1s`, `6m0s`,
//!   `20ms`, `2m59.56s`) from now.
//! - Anthropic's: `anthropic-ratelimit-requests-remaining`,
//!   `anthropic-ratelimit-tokens-remaining` (or `-input-tokens-`), and
//!   `…-reset` as RFC 3339 instants.
//!
//! A header that is missing or does not parse is no information, never an
//! error: the pool then schedules as if the key had room.

use std::time::{Duration, SystemTime};

use http::HeaderMap;

/// What is left of one limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Allowance {
    /// Requests or tokens left in the window.
    pub remaining: u64,
    /// When the window starts over, from now (`None`: not said).
    pub resets_in: Option<Duration>,
}

/// What an answer said of a key's limits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RateLimits {
    /// Requests left.
    pub requests: Option<Allowance>,
    /// Tokens left.
    pub tokens: Option<Allowance>,
}

/// The values of the headers named `prefix` + one of `names`, in one pass
/// over `headers` (the first value of each; `None` when absent or not text).
/// Every answer is read, and most carry none of these: a pass comparing
/// prefixes costs a fraction of one hashed lookup per name (callgrind).
fn values<'a, const N: usize>(
    headers: &'a HeaderMap,
    prefix: &str,
    names: [&str; N],
) -> [Option<&'a str>; N] {
    let mut found = [None; N];
    for (name, value) in headers {
        let Some(rest) = name.as_str().strip_prefix(prefix) else {
            continue;
        };
        if let Some(slot) = names.iter().position(|n| *n == rest) {
            if found[slot].is_none() {
                found[slot] = value.to_str().ok().map(str::trim);
            }
        }
    }
    found
}

/// OpenAI's dialect.
pub fn x_ratelimit(headers: &HeaderMap) -> RateLimits {
    let [remaining_requests, reset_requests, remaining_tokens, reset_tokens] = values(
        headers,
        "x-ratelimit-",
        [
            "remaining-requests",
            "reset-requests",
            "remaining-tokens",
            "reset-tokens",
        ],
    );
    let read = |remaining: Option<&str>, reset: Option<&str>| {
        Some(Allowance {
            remaining: remaining?.parse().ok()?,
            resets_in: reset.and_then(go_duration),
        })
    };
    RateLimits {
        requests: read(remaining_requests, reset_requests),
        tokens: read(remaining_tokens, reset_tokens),
    }
}

/// Anthropic's dialect, at `now`.
pub fn anthropic_ratelimit(headers: &HeaderMap, now: SystemTime) -> RateLimits {
    let [requests, requests_reset, tokens, tokens_reset, input, input_reset] = values(
        headers,
        "anthropic-ratelimit-",
        [
            "requests-remaining",
            "requests-reset",
            "tokens-remaining",
            "tokens-reset",
            "input-tokens-remaining",
            "input-tokens-reset",
        ],
    );
    let read = |remaining: Option<&str>, reset: Option<&str>| {
        Some(Allowance {
            remaining: remaining?.parse().ok()?,
            resets_in: reset
                .and_then(|at| humantime::parse_rfc3339_weak(at).ok())
                .map(|at| at.duration_since(now).unwrap_or_default()),
        })
    };
    RateLimits {
        requests: read(requests, requests_reset),
        // The combined limit when the organisation has one, else the input
        // side (what a request's estimate mostly is).
        tokens: read(tokens, tokens_reset).or_else(|| read(input, input_reset)),
    }
}

/// A Go duration (`1h2m3.5s`, `20ms`, `6m0s`, `850us`); `None` if it is not one.
pub fn go_duration(text: &str) -> Option<Duration> {
    let mut rest = text;
    let mut total = 0f64;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let value: f64 = rest[..number_len].parse().ok()?;
        rest = &rest[number_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let seconds = match &rest[..unit_len] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" => 1e-6,
            "ns" => 1e-9,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total += value * seconds;
    }
    Duration::try_from_secs_f64(total).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(n, v)| (http::HeaderName::from_static(n), v.parse().unwrap()))
            .collect()
    }

    #[test]
    fn go_durations_as_openai_and_groq_send_them() {
        assert_eq!(go_duration("1s"), Some(Duration::from_secs(1)));
        assert_eq!(go_duration("6m0s"), Some(Duration::from_secs(360)));
        assert_eq!(go_duration("20ms"), Some(Duration::from_millis(20)));
        assert_eq!(
            go_duration("2m59.56s"),
            Some(Duration::from_millis(179_560))
        );
        assert_eq!(go_duration("1h2m3s"), Some(Duration::from_secs(3723)));
        for bad in ["", "s", "12", "1x", "-1s"] {
            assert_eq!(go_duration(bad), None, "{bad}");
        }
    }

    #[test]
    fn openai_dialect() {
        let limits = x_ratelimit(&headers(&[
            ("x-ratelimit-limit-requests", "5000"),
            ("x-ratelimit-remaining-requests", "4999"),
            ("x-ratelimit-reset-requests", "12ms"),
            ("x-ratelimit-remaining-tokens", "159976"),
            ("x-ratelimit-reset-tokens", "6m0s"),
        ]));
        assert_eq!(
            limits.requests,
            Some(Allowance {
                remaining: 4999,
                resets_in: Some(Duration::from_millis(12))
            })
        );
        assert_eq!(
            limits.tokens.unwrap().resets_in,
            Some(Duration::from_secs(360))
        );
        assert_eq!(x_ratelimit(&HeaderMap::new()), RateLimits::default());
    }

    #[test]
    fn the_first_value_counts_and_other_names_are_ignored() {
        let mut map = headers(&[
            ("x-ratelimit-remaining-requests", " 7 "),
            ("x-ratelimit-remaining-requests-extra", "1"),
            ("anthropic-ratelimit-requests-remaining", "9"),
        ]);
        map.append("x-ratelimit-remaining-requests", "3".parse().unwrap());
        let limits = x_ratelimit(&map);
        assert_eq!(limits.requests.map(|a| a.remaining), Some(7));
        assert_eq!(limits.tokens, None);
    }

    #[test]
    fn anthropic_dialect() {
        let now = humantime::parse_rfc3339("2025-08-21T12:40:30Z").unwrap();
        let limits = anthropic_ratelimit(
            &headers(&[
                ("anthropic-ratelimit-requests-remaining", "999"),
                ("anthropic-ratelimit-requests-reset", "2025-08-21T12:40:59Z"),
                ("anthropic-ratelimit-input-tokens-remaining", "80000"),
                (
                    "anthropic-ratelimit-input-tokens-reset",
                    "2025-08-21T12:41:00Z",
                ),
            ]),
            now,
        );
        assert_eq!(
            limits.requests,
            Some(Allowance {
                remaining: 999,
                resets_in: Some(Duration::from_secs(29))
            })
        );
        assert_eq!(
            limits.tokens,
            Some(Allowance {
                remaining: 80_000,
                resets_in: Some(Duration::from_secs(30))
            })
        );
    }
}
