//! `keygate scan --verify` and `--import PROVIDER`: each unknown provider
//! key asked of its provider through the same request as `key verify`
//! (at most one call per second per provider, so a scan of a big history
//! is not a burst the provider flags), and each live one of the import
//! provider's kind added to the vault as a pool member — from there
//! `key burn` can retire it at the provider.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::Finding;
use crate::cli::{upstream_runtime, CliError, Context};
use crate::config::Provider;
use crate::keys::verify::{self, Verdict};
use crate::keys::{ops, rotate};
use crate::vault::document::KeyState;

/// What the provider said of an unknown key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Liveness {
    /// It works (or works once its account has credit again).
    Live,
    /// The provider rejects it.
    Dead,
    /// No certain answer (rate limit, 5xx, network, no provider of its kind).
    Inconclusive,
}

impl Liveness {
    /// `live`, `dead`, `inconclusive`.
    pub fn as_str(self) -> &'static str {
        match self {
            Liveness::Live => "live",
            Liveness::Dead => "dead",
            Liveness::Inconclusive => "inconclusive",
        }
    }
}

/// The least time between two calls to one provider.
const SPACING: Duration = Duration::from_secs(1);

/// Verifies every unknown provider key of `findings` (one call per distinct
/// key) and, with `import`, adds the live ones of that provider's kind.
pub fn run(
    context: &Context,
    findings: &mut [Finding],
    import: Option<&str>,
) -> Result<(), CliError> {
    let import = import.map(|name| context.provider(name)).transpose()?;
    let (runtime, upstream) = upstream_runtime(context)?;
    let mut last_call: HashMap<String, Instant> = HashMap::new();
    let mut answers: HashMap<String, Liveness> = HashMap::new();
    for finding in findings.iter_mut() {
        let Some(kind) = finding.hit.found.kind.filter(|_| finding.reading.is_none()) else {
            continue;
        };
        let key = finding.hit.key.expose().to_owned();
        let liveness = match answers.get(&key) {
            Some(known) => *known,
            None => {
                // The import provider for its kind, else the first configured
                // provider of the key's kind.
                let provider = import.filter(|p| p.kind.as_str() == kind).or_else(|| {
                    context
                        .config
                        .providers
                        .values()
                        .find(|p| p.kind.as_str() == kind)
                });
                let liveness = match provider {
                    None => Liveness::Inconclusive,
                    Some(provider) => {
                        if let Some(at) = last_call.get(&provider.name) {
                            std::thread::sleep(SPACING.saturating_sub(at.elapsed()));
                        }
                        last_call.insert(provider.name.clone(), Instant::now());
                        ask(&runtime, &upstream, provider, finding)
                    }
                };
                answers.insert(key, liveness);
                liveness
            }
        };
        finding.liveness = Some(liveness);
    }
    if let Some(provider) = import {
        add_live(context, findings, provider)?;
    }
    Ok(())
}

fn ask(
    runtime: &tokio::runtime::Runtime,
    upstream: &crate::net::upstream::Upstream,
    provider: &Provider,
    finding: &Finding,
) -> Liveness {
    let check = runtime.block_on(verify::verify(
        upstream,
        provider,
        &finding.hit.key,
        rotate::VERIFY_TIMEOUT,
    ));
    match check.verdict {
        Verdict::Ok | Verdict::Exhausted => Liveness::Live,
        Verdict::Rejected => Liveness::Dead,
        Verdict::Inconclusive => Liveness::Inconclusive,
    }
}

/// Adds each live unknown key of `provider`'s kind to the vault as a
/// current key (a pool member), once per distinct key.
fn add_live(
    context: &Context,
    findings: &mut [Finding],
    provider: &Provider,
) -> Result<(), CliError> {
    let kek = context.kek()?;
    let vault = context.vault();
    let mut imported: HashMap<String, String> = HashMap::new();
    for finding in findings.iter_mut() {
        if finding.liveness != Some(Liveness::Live)
            || finding.hit.found.kind != Some(provider.kind.as_str())
        {
            continue;
        }
        let key = finding.hit.key.expose().to_owned();
        if let Some(id) = imported.get(&key) {
            finding.imported = Some(id.clone());
            continue;
        }
        let secret = ops::upstream_secret(&key).map_err(|e| CliError::Usage(e.to_string()))?;
        let id = ops::new_key_id().map_err(|e| CliError::Runtime(e.to_string()))?;
        let label = format!(
            "imported by keygate scan from {}",
            finding.hit.location.display()
        );
        let id = vault.update(&kek, |document| {
            let new = ops::NewKey {
                id,
                provider: &provider.name,
                secret: &secret,
                label: Some(label),
                state: KeyState::Current,
            };
            ops::add_now(document, new).map_err(|e| CliError::Runtime(e.to_string()))
        })?;
        eprintln!(
            "keygate: imported {} as {id} into {} (retire it at the provider with `keygate key burn {id}`)",
            finding.masked, provider.name
        );
        imported.insert(key, id.clone());
        finding.imported = Some(id);
    }
    Ok(())
}
