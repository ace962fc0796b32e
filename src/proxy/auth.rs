//! Client authentication: the presented `kg_…` key → a known, unrevoked client.
//!
//! The key is taken from `Authorization: Bearer`, else `x-api-key`, else
//! `api-key` (what the OpenAI, Anthropic and Azure SDKs send), parsed (shape +
//! checksum) before any lookup, hashed, looked up by digest and confirmed in
//! constant time. A refusal says which of a few cases it is ([`AuthFailure`]),
//! so the app's developer can tell a pasted provider key from a typo from a
//! revoked key — and a decoy's key from an unknown one, for the conductor's
//! bookkeeping only (it is answered as unknown). Never logs or returns the
//! key, nor any part of it.

use std::sync::{Arc, OnceLock};

use http::{HeaderMap, HeaderValue};

use crate::control::snapshot::{ClientInfo, OutOfUse, Snapshot};
use crate::proxy::error::{AuthFailure, ProxyError};
use crate::vault::client_key::{self, ClientKeyDigest, ClientKeyError};

/// The client making this request.
pub fn authenticate(
    headers: &HeaderMap,
    snapshot: &Snapshot,
    allow_anonymous: bool,
) -> Result<Arc<ClientInfo>, ProxyError> {
    let presented = match presented_key(headers) {
        Err(AuthFailure::Missing) if allow_anonymous => return Ok(anonymous()),
        other => other.map_err(ProxyError::InvalidClientKey)?,
    };
    let digest = client_key::parse(presented).map_err(|error| {
        ProxyError::InvalidClientKey(match error {
            ClientKeyError::BadChecksum => AuthFailure::BadChecksum,
            ClientKeyError::Malformed => match crate::providers::lookalike(presented) {
                Some(provider) => AuthFailure::ProviderKey(provider),
                None => AuthFailure::Malformed,
            },
        })
    })?;
    if let Some(client) = snapshot.clients.get(&digest) {
        if client.digest.ct_eq(&digest) {
            return Ok(client.clone());
        }
    }
    // A refused key costs the same two lookups whatever it is, so a decoy
    // takes no longer to refuse than an unknown key.
    let out_of_use = snapshot
        .out_of_use
        .get_key_value(&digest)
        .filter(|(known, _)| known.ct_eq(&digest))
        .map(|(_, why)| *why);
    let decoy = snapshot
        .decoys
        .get_key_value(&digest)
        .filter(|(known, _)| known.ct_eq(&digest));
    Err(ProxyError::InvalidClientKey(match (out_of_use, decoy) {
        (Some(OutOfUse::Revoked), _) => AuthFailure::Revoked,
        (Some(OutOfUse::Rotated), _) => AuthFailure::Rotated,
        (None, Some((_, name))) => AuthFailure::Decoy(name.clone()),
        (None, None) => AuthFailure::Unknown,
    }))
}

/// The token of an `Authorization: Bearer <token>` value: the scheme is
/// matched case-insensitively (RFC 9110 §11.1), the token trimmed; `None` for
/// another scheme, no token, or a value that is not visible ASCII. The one
/// bearer parser for the client and admin listeners.
pub fn bearer_token(value: &HeaderValue) -> Option<&str> {
    let text = value.to_str().ok()?.trim();
    let (scheme, token) = text.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// `Authorization: Bearer …` (OpenAI SDKs), else `x-api-key` (Anthropic SDK),
/// else `api-key` (Azure SDKs). An `Authorization` value in another scheme is
/// only reported when no other header carries a key.
fn presented_key(headers: &HeaderMap) -> Result<&str, AuthFailure> {
    let authorization = headers.get(http::header::AUTHORIZATION);
    if let Some(token) = authorization.and_then(bearer_token) {
        return Ok(token);
    }
    for name in ["x-api-key", "api-key"] {
        if let Some(value) = headers.get(name) {
            if value.as_bytes().trim_ascii().is_empty() {
                continue;
            }
            return value
                .to_str()
                .map(str::trim)
                .map_err(|_| AuthFailure::Malformed);
        }
    }
    match authorization {
        // A bare `Bearer` with nothing after it sent no key.
        Some(value) if !is_bare_bearer(value) => Err(AuthFailure::NoBearerScheme),
        _ => Err(AuthFailure::Missing),
    }
}

fn is_bare_bearer(value: &HeaderValue) -> bool {
    let text = value.as_bytes().trim_ascii();
    text.is_empty() || text.eq_ignore_ascii_case(b"bearer")
}

fn anonymous() -> Arc<ClientInfo> {
    static ANONYMOUS: OnceLock<Arc<ClientInfo>> = OnceLock::new();
    ANONYMOUS
        .get_or_init(|| {
            Arc::new(ClientInfo {
                name: Arc::from("anonymous"),
                digest: ClientKeyDigest([0; 32]),
                sticky: 0,
                limits: crate::usage::limits::ClientLimits::default(),
            })
        })
        .clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_str(value).unwrap());
        }
        map
    }

    fn failure(pairs: &[(&'static str, &str)]) -> AuthFailure {
        match authenticate(&headers(pairs), &Snapshot::default(), false) {
            Err(ProxyError::InvalidClientKey(why)) => why,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn bearer_scheme_is_case_insensitive_and_needs_a_token() {
        let token = |v: &str| bearer_token(&HeaderValue::from_str(v).unwrap()).map(str::to_owned);
        assert_eq!(token("Bearer abc").as_deref(), Some("abc"));
        assert_eq!(token("bearer  abc ").as_deref(), Some("abc"));
        assert_eq!(token("BEARER abc").as_deref(), Some("abc"));
        assert_eq!(token("Bearer"), None);
        assert_eq!(token("Bearer   "), None);
        assert_eq!(token("Token abc"), None);
        assert_eq!(token("abc"), None);
    }

    #[test]
    fn each_refusal_names_its_case() {
        let (key, _) = client_key::generate().unwrap();
        let key = key.expose();
        let bearer = format!("Bearer {key}");
        assert_eq!(failure(&[]), AuthFailure::Missing);
        assert_eq!(
            failure(&[("authorization", "Bearer")]),
            AuthFailure::Missing
        );
        assert_eq!(failure(&[("x-api-key", " ")]), AuthFailure::Missing);
        assert_eq!(
            failure(&[("authorization", key)]),
            AuthFailure::NoBearerScheme
        );
        assert_eq!(
            failure(&[("authorization", &format!("Token {key}"))]),
            AuthFailure::NoBearerScheme
        );
        assert_eq!(
            failure(&[("authorization", "Basic dXNlcjpwYXNz")]),
            AuthFailure::NoBearerScheme
        );
        assert_eq!(failure(&[("authorization", &bearer)]), AuthFailure::Unknown);
        assert_eq!(failure(&[("x-api-key", key)]), AuthFailure::Unknown);
        assert_eq!(failure(&[("api-key", key)]), AuthFailure::Unknown);
        // Another scheme in Authorization does not hide a key in x-api-key.
        assert_eq!(
            failure(&[("authorization", "Basic dXNlcjpwYXNz"), ("x-api-key", key)]),
            AuthFailure::Unknown
        );
        let cut = &key[..key.len() - 3];
        assert_eq!(
            failure(&[("authorization", &format!("Bearer {cut}"))]),
            AuthFailure::BadChecksum
        );
        assert_eq!(
            failure(&[("authorization", "Bearer hello-world")]),
            AuthFailure::Malformed
        );
        assert_eq!(failure(&[("api-key", "sk-xxx")]), AuthFailure::Malformed);
    }

    #[test]
    fn provider_keys_are_recognised_by_prefix() {
        let rest = "A1b2C3d4E5f6G7h8I9j0K1l2M3n4";
        for (prefix, provider) in [
            ("sk-ant-api03-", "Anthropic"),
            ("sk-or-v1-", "OpenRouter"),
            ("sk-proj-", "OpenAI"),
            ("sk-svcacct-", "OpenAI"),
            ("sk-", "OpenAI"),
            ("xai-", "xAI"),
            ("gsk_", "Groq"),
        ] {
            let presented = format!("Bearer {prefix}{rest}");
            assert_eq!(
                failure(&[("authorization", &presented)]),
                AuthFailure::ProviderKey(provider),
                "{prefix}"
            );
        }
    }

    #[test]
    fn live_revoked_and_rotated_keys_are_told_apart() {
        let (live, live_digest) = client_key::generate().unwrap();
        let (gone, gone_digest) = client_key::generate().unwrap();
        let mut snapshot = Snapshot::default();
        snapshot.clients.insert(
            live_digest,
            Arc::new(ClientInfo {
                name: Arc::from("app"),
                digest: live_digest,
                sticky: 0,
                limits: crate::usage::limits::ClientLimits::default(),
            }),
        );
        snapshot.out_of_use.insert(gone_digest, OutOfUse::Revoked);
        let (replaced, replaced_digest) = client_key::generate().unwrap();
        snapshot
            .out_of_use
            .insert(replaced_digest, OutOfUse::Rotated);
        let with = |key: &str| headers(&[("api-key", key)]);
        assert_eq!(
            &*authenticate(&with(live.expose()), &snapshot, false)
                .unwrap()
                .name,
            "app"
        );
        assert!(matches!(
            authenticate(&with(gone.expose()), &snapshot, false),
            Err(ProxyError::InvalidClientKey(AuthFailure::Revoked))
        ));
        assert!(matches!(
            authenticate(&with(replaced.expose()), &snapshot, false),
            Err(ProxyError::InvalidClientKey(AuthFailure::Rotated))
        ));
    }

    #[test]
    fn a_decoy_is_refused_and_named() {
        let (decoy, decoy_digest) = client_key::generate().unwrap();
        let (other, _) = client_key::generate().unwrap();
        let mut snapshot = Snapshot::default();
        snapshot
            .decoys
            .insert(decoy_digest, Arc::from("old-env-file"));
        let refusal =
            |key: &str| match authenticate(&headers(&[("x-api-key", key)]), &snapshot, true) {
                Err(ProxyError::InvalidClientKey(why)) => why,
                other => panic!("expected a refusal, got {other:?}"),
            };
        assert_eq!(
            refusal(decoy.expose()),
            AuthFailure::Decoy(Arc::from("old-env-file"))
        );
        assert_eq!(refusal(other.expose()), AuthFailure::Unknown);
    }
}
