//! The client of a provider's management API (docs/design.md §12): sends the
//! calls `providers::management` describes, as the holder of the management
//! credential, with one timeout per call, and turns every failure into a
//! [`ManagementError`] that names the provider, what was being done, the
//! status and what it means.
//!
//! The management credential goes in one header to the management API and
//! nowhere else; neither it nor a created key ever appears in an error, which
//! carries the provider's message scrubbed of both.

use std::time::Duration;

use crate::config::{AdminApi, Provider};
use crate::keys::trace::ManagementCallTrace;
use crate::net::outbound_body::OutboundBody;
use crate::net::upstream::Upstream;
use crate::providers::management::{Call, KeyUsageReport, Listed, Listing, ManagementKind};
use crate::providers::ProviderError;
use crate::vault::secret::Secret;

/// How long one management API call may take.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(15);

/// Answers longer than this are not read.
const MAX_BODY: usize = 256 * 1024;

/// At most this many pages of a listing are read.
const MAX_PAGES: usize = 50;

/// Why a management API call did not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum ManagementError {
    /// No `[providers.NAME.admin]` table.
    #[error("[providers.{0}.admin] is not configured: add it (with the project or team id its management API needs; docs/vault-and-config.md) so keygate knows its management API")]
    NotConfigured(String),
    /// The kind's management API cannot do this.
    #[error("{provider} (kind {kind}) cannot {action} through its management API")]
    Unsupported {
        /// Provider name.
        provider: String,
        /// Its kind.
        kind: &'static str,
        /// What was asked.
        action: String,
    },
    /// The management API answered with an error.
    #[error("the {provider} management API refused to {action}: HTTP {status}{}: {meaning}", message.as_ref().map(|m| format!(" — the provider said: \"{m}\"")).unwrap_or_default())]
    Status {
        /// Provider name.
        provider: String,
        /// What was asked.
        action: String,
        /// Its status.
        status: u16,
        /// The provider's message, scrubbed.
        message: Option<String>,
        /// What the status means and what to do.
        meaning: &'static str,
    },
    /// No answer in time.
    #[error("the {provider} management API at {url} did not answer within {timeout:?} when asked to {action}")]
    Timeout {
        /// Provider name.
        provider: String,
        /// What was asked.
        action: String,
        /// The management API.
        url: String,
        /// The bound.
        timeout: Duration,
    },
    /// No connection.
    #[error("cannot reach the {provider} management API at {url}: {detail}")]
    Network {
        /// Provider name.
        provider: String,
        /// The management API.
        url: String,
        /// The cause (hosts and socket errors only).
        detail: String,
    },
    /// The credential may not list the keys.
    #[error("the {provider} management API refused to list its keys (HTTP 403): the management credential lacks the permission to list API keys; it needs {permission}")]
    ListForbidden {
        /// Provider name.
        provider: String,
        /// What it needs, in the provider's words.
        permission: &'static str,
    },
    /// A listing failed after some pages were read.
    #[error("the {provider} management API failed on page {page} of its key list, after {read} keys were read: {source}; nothing was done")]
    PartialList {
        /// Provider name.
        provider: String,
        /// The page that failed (1-based).
        page: usize,
        /// Keys read before it.
        read: usize,
        /// What went wrong.
        source: Box<ManagementError>,
    },
    /// A 2xx whose body is not the documented shape.
    #[error("the {provider} management API answered {status} to \"{action}\" without {expected}; check [providers.{provider}.admin] url")]
    Malformed {
        /// Provider name.
        provider: String,
        /// What was asked.
        action: String,
        /// Its status.
        status: u16,
        /// The fields looked for.
        expected: &'static str,
    },
}

impl ManagementError {
    /// True when the call may have taken effect at the provider although no
    /// answer says so (a timeout or a dropped connection).
    pub fn outcome_unknown(&self) -> bool {
        matches!(
            self,
            ManagementError::Timeout { .. } | ManagementError::Network { .. }
        )
    }
}

fn meaning(status: u16) -> &'static str {
    match status {
        401 => "the management credential is invalid or revoked; store a working one with `keygate admin-key set`",
        403 => "the management credential may not manage keys here; give it write access to API keys (and check the project / team id)",
        404 => "no such project / team / key, or the URL is wrong; check [providers.NAME.admin]",
        429 => "rate limited by the management API; try again in a minute",
        500..=599 => "the provider's management API failed; try again later",
        _ => "the request was not accepted",
    }
}

/// What a removal found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Removed {
    /// Deleted (or disabled) now.
    Now,
    /// The provider no longer has it (deleted before, by keygate or a person).
    AlreadyGone,
}

/// A key the provider just created.
pub struct Created {
    /// The new inference key.
    pub secret: Secret,
    /// The provider's id for it (not a secret).
    pub provider_id: String,
}

/// One provider's management API, as the holder of its credential.
pub struct ManagementApi<'a> {
    upstream: &'a Upstream,
    provider: &'a Provider,
    api: &'a AdminApi,
    kind: &'static dyn ManagementKind,
    admin: &'a Secret,
    /// Every other secret the vault holds: a provider's message may quote
    /// any of them (a still-live key in a failed DELETE's answer).
    held: Vec<Secret>,
    timeout: Duration,
}

impl<'a> ManagementApi<'a> {
    /// The management API of `provider` (its `[providers.NAME.admin]`), as `admin`.
    pub fn new(
        upstream: &'a Upstream,
        provider: &'a Provider,
        admin: &'a Secret,
    ) -> Result<ManagementApi<'a>, ManagementError> {
        let api = provider
            .admin
            .as_ref()
            .ok_or_else(|| ManagementError::NotConfigured(provider.name.clone()))?;
        let kind = provider
            .kind
            .management()
            .ok_or_else(|| ManagementError::Unsupported {
                provider: provider.name.clone(),
                kind: provider.kind.as_str(),
                action: "manage keys".to_owned(),
            })?;
        Ok(ManagementApi {
            upstream,
            provider,
            api,
            kind,
            admin,
            held: Vec::new(),
            timeout: CALL_TIMEOUT,
        })
    }

    /// The same API, scrubbing its answers of every secret `document` holds
    /// (inference keys and management credentials), not only its own.
    pub fn scrubbing(self, document: &crate::vault::document::Document) -> ManagementApi<'a> {
        let held = document
            .keys
            .iter()
            .filter_map(|k| k.secret.clone())
            .chain(document.admin_keys.iter().map(|a| a.secret.clone()))
            .collect();
        ManagementApi { held, ..self }
    }

    /// The same API with another bound on each call.
    pub fn with_timeout(self, timeout: Duration) -> ManagementApi<'a> {
        ManagementApi { timeout, ..self }
    }

    fn unsupported(&self, action: &str) -> ManagementError {
        ManagementError::Unsupported {
            provider: self.provider.name.clone(),
            kind: self.provider.kind.as_str(),
            action: action.to_owned(),
        }
    }

    /// Creates one inference key named `name`.
    pub async fn create(&self, name: &str) -> Result<Created, ManagementError> {
        let action = format!("create the key {name}");
        let (call, expected) = self
            .kind
            .create(self.api, name)
            .ok_or_else(|| self.unsupported("create keys"))?;
        let (status, body) = self.send(call, &action).await?;
        let malformed = || ManagementError::Malformed {
            provider: self.provider.name.clone(),
            action: action.clone(),
            status,
            expected,
        };
        let (secret, provider_id) = self.kind.read_created(&body).ok_or_else(malformed)?;
        let secret = crate::keys::ops::upstream_secret(&secret).map_err(|_| malformed())?;
        Ok(Created {
            secret,
            provider_id,
        })
    }

    /// Every entry of `listing`, all pages.
    pub async fn list(&self, listing: Listing) -> Result<Vec<Listed>, ManagementError> {
        let action = "list its keys";
        let mut entries = Vec::new();
        let mut after: Option<String> = None;
        for page in 1..=MAX_PAGES {
            let call = self
                .kind
                .list(self.api, listing, after.as_deref())
                .ok_or_else(|| self.unsupported(action))?;
            let (status, body) = match self.send(call, action).await {
                Ok(answer) => answer,
                Err(ManagementError::Status { status: 403, .. }) => {
                    return Err(ManagementError::ListForbidden {
                        provider: self.provider.name.clone(),
                        permission: self.kind.list_permission(),
                    })
                }
                Err(error) if page > 1 => {
                    return Err(ManagementError::PartialList {
                        provider: self.provider.name.clone(),
                        page,
                        read: entries.len(),
                        source: Box::new(error),
                    })
                }
                Err(error) => return Err(error),
            };
            let page = self
                .kind
                .read_list(listing, &body, entries.len())
                .ok_or_else(|| ManagementError::Malformed {
                    provider: self.provider.name.clone(),
                    action: action.to_owned(),
                    status,
                    expected: "the documented list of keys",
                })?;
            entries.extend(page.entries);
            match page.next {
                Some(next) if after.as_ref() != Some(&next) => after = Some(next),
                _ => break,
            }
        }
        Ok(entries)
    }

    /// What the provider reports each of its keys used over `[start, end)`
    /// (unix seconds, whole hours), summed per key over every bucket and
    /// page. `Unsupported` when the kind has no per-key usage API.
    pub async fn key_usage(
        &self,
        start: u64,
        end: u64,
    ) -> Result<Vec<KeyUsageReport>, ManagementError> {
        let action = "report usage per key";
        let mut totals: Vec<KeyUsageReport> = Vec::new();
        let mut page: Option<String> = None;
        for number in 1..=MAX_PAGES {
            let call = self
                .kind
                .key_usage(self.api, start, end, page.as_deref())
                .ok_or_else(|| self.unsupported(action))?;
            let (status, body) = match self.send(call, action).await {
                Ok(answer) => answer,
                Err(error) if number > 1 => {
                    return Err(ManagementError::PartialList {
                        provider: self.provider.name.clone(),
                        page: number,
                        read: totals.len(),
                        source: Box::new(error),
                    })
                }
                Err(error) => return Err(error),
            };
            let read =
                self.kind
                    .read_key_usage(&body)
                    .ok_or_else(|| ManagementError::Malformed {
                        provider: self.provider.name.clone(),
                        action: action.to_owned(),
                        status,
                        expected: "the documented usage report",
                    })?;
            for row in read.rows {
                match totals
                    .iter_mut()
                    .find(|t| t.provider_key_id == row.provider_key_id)
                {
                    Some(total) => {
                        total.requests = total.requests.zip(row.requests).map(|(a, b)| a + b);
                        total.input_tokens += row.input_tokens;
                        total.output_tokens += row.output_tokens;
                    }
                    None => totals.push(row),
                }
            }
            match read.next {
                Some(next) if page.as_ref() != Some(&next) => page = Some(next),
                _ => break,
            }
        }
        Ok(totals)
    }

    /// Deletes (Anthropic: disables) the key `id` of `listing`. A 404 means
    /// it is already gone, which is what was wanted.
    pub async fn remove(&self, listing: Listing, id: &str) -> Result<Removed, ManagementError> {
        let word = self.kind.removal_word();
        let action = format!(
            "{} {id}",
            if word == "disabled" {
                "disable"
            } else {
                "delete"
            }
        );
        let call = self
            .kind
            .remove(self.api, listing, id)
            .ok_or_else(|| self.unsupported("delete keys"))?;
        match self.send(call, &action).await {
            Ok(_) => Ok(Removed::Now),
            Err(ManagementError::Status { status: 404, .. }) => Ok(Removed::AlreadyGone),
            Err(error) => Err(error),
        }
    }

    /// Sends one call inside its span (`keygate.management_call`, a child of
    /// the rotation it is part of; docs/operations.md "Traces").
    async fn send(&self, call: Call, action: &str) -> Result<(u16, bytes::Bytes), ManagementError> {
        let url = self.api.url();
        let span = ManagementCallTrace::start(&self.provider.name, action, &call.method, &url);
        let result = self.exchange(call, action).await;
        let status = match &result {
            Ok((status, _)) | Err(ManagementError::Status { status, .. }) => Some(*status),
            Err(_) => None,
        };
        span.end(status, result.as_ref().err());
        result
    }

    /// Sends one call; a non-2xx answer is an error with the provider's
    /// message, scrubbed of the credential.
    async fn exchange(
        &self,
        call: Call,
        action: &str,
    ) -> Result<(u16, bytes::Bytes), ManagementError> {
        let url = self.api.url();
        let network = |detail: String| ManagementError::Network {
            provider: self.provider.name.clone(),
            url: url.clone(),
            detail,
        };
        let uri: http::Uri = format!("{url}{}", call.path)
            .parse()
            .map_err(|_| network("the management URL does not form a valid URI".to_owned()))?;
        let auth = self.kind.auth();
        let value = if auth.bearer {
            format!("Bearer {}", self.admin.expose())
        } else {
            self.admin.expose().to_owned()
        };
        let mut credential = http::HeaderValue::from_str(&value).map_err(|_| {
            network("the management credential is not a valid header value".to_owned())
        })?;
        credential.set_sensitive(true);
        let body = call.body.as_ref().map(|b| b.to_string().into());
        let mut request = http::Request::new(OutboundBody::Full(body));
        *request.method_mut() = call.method;
        *request.uri_mut() = uri;
        let headers = request.headers_mut();
        headers.insert(auth.header, credential);
        for (name, value) in auth.extra {
            headers.insert(*name, http::HeaderValue::from_static(value));
        }
        if call.body.is_some() {
            headers.insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/json"),
            );
        }
        let (status, body) = match self
            .upstream
            .exchange(request, MAX_BODY, self.timeout)
            .await
        {
            Some(Ok(answer)) => answer,
            Some(Err(error)) => return Err(network(error.detail())),
            None => {
                return Err(ManagementError::Timeout {
                    provider: self.provider.name.clone(),
                    action: action.to_owned(),
                    url,
                    timeout: self.timeout,
                })
            }
        };
        if !(200..300).contains(&status) {
            let error = ProviderError::parse(&body);
            let message = error.message.or(error.code).map(|m| {
                let secrets: Vec<&Secret> = std::iter::once(self.admin)
                    .chain(self.held.iter())
                    .collect();
                crate::keys::ring::mask_secrets(self.provider, &secrets, m)
            });
            return Err(ManagementError::Status {
                provider: self.provider.name.clone(),
                action: action.to_owned(),
                status,
                message,
                meaning: meaning(status),
            });
        }
        Ok((status, body))
    }
}
