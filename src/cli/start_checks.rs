//! What `keygate serve` checks before it serves, one function per check:
//! `serve` calls them and stops at the first failure, `doctor` calls the same
//! ones and reports each, so `doctor` cannot pass a setup `serve` refuses.
//!
//! The vault's own check — a copy older than a generation already served —
//! is `Vault::check_not_rolled_back`, which `serve`'s first reload
//! (`control::reload`) and [`vault`] both call. Never puts a secret in a message.

use super::{CliError, Context};
use crate::config::Config;
use crate::events::notify::Receiver;
use crate::vault::secret::Secret;
use crate::vault::{Kek, Loaded};

/// The fewest characters an admin token may have.
const MIN_ADMIN_TOKEN: usize = 16;

/// The admin token, refused (exit 2) when it is short enough to guess.
pub(super) fn admin_token(
    token: Option<Secret>,
    token_env: &str,
) -> Result<Option<Secret>, CliError> {
    if let Some(token) = &token {
        let length = token.expose().chars().count();
        if length < MIN_ADMIN_TOKEN {
            return Err(CliError::Usage(format!(
                "{token_env} is {length} characters: an admin token must have at least {MIN_ADMIN_TOKEN} (make one with `openssl rand -hex 24`)"
            )));
        }
    }
    Ok(token)
}

/// The vault, opened with the master key, and not an older copy than one a
/// server already served (restored from a backup: it would bring back
/// revoked client keys).
pub(super) fn vault(context: &Context, kek: &Kek) -> Result<Loaded, CliError> {
    let vault = context.vault();
    let loaded = vault.load(kek)?;
    vault.check_not_rolled_back(loaded.generation)?;
    Ok(loaded)
}

/// The `[[notify]]` receivers with their signing keys, from `env`: a
/// `secret_env` that is not set stops the start.
pub(super) fn notify_receivers(
    config: &Config,
    env: &[(String, String)],
) -> Result<Vec<Receiver>, CliError> {
    config
        .notify
        .iter()
        .map(|target| {
            let signing_key = match &target.secret_env {
                None => None,
                Some(name) => match env.iter().find(|(k, v)| k == name && !v.is_empty()) {
                    Some((_, value)) => Some(Secret::new(value.clone())),
                    None => {
                        return Err(CliError::Runtime(format!(
                            "[[notify]] {}: secret_env names {name}, which is not set: set it to the receiver's signing key, or remove secret_env",
                            target.name
                        )))
                    }
                },
            };
            Ok(Receiver {
                target: target.clone(),
                signing_key,
            })
        })
        .collect()
}

/// The inbound TLS certificate and key load (when `[server] tls_cert` is set).
pub(super) fn tls(config: &Config) -> Result<(), CliError> {
    crate::net::listeners::check_tls(&config.server).map_err(|e| CliError::Runtime(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_short_admin_token_is_a_usage_error_naming_the_variable() {
        let short = admin_token(Some(Secret::new("x".repeat(15))), "KG_TOKEN").unwrap_err();
        assert_eq!(short.exit_code(), 2);
        assert!(short.to_string().contains("KG_TOKEN is 15 characters"));
        assert!(admin_token(Some(Secret::new("x".repeat(16))), "KG_TOKEN").is_ok());
        assert!(admin_token(None, "KG_TOKEN").unwrap().is_none());
    }

    #[test]
    fn a_signing_key_must_be_in_the_environment_given() {
        let config = Config::from_toml(
            "[[notify]]\nurl = \"https://hooks.example.com/k\"\nsecret_env = \"KG_SIGN\"\n",
        )
        .unwrap();
        let Err(missing) = notify_receivers(&config, &[]) else {
            panic!("a receiver without its signing key");
        };
        let missing = missing.to_string();
        assert!(missing.contains("KG_SIGN, which is not set"), "{missing}");
        let env = [("KG_SIGN".to_owned(), "s".repeat(32))];
        assert_eq!(notify_receivers(&config, &env).unwrap().len(), 1);
    }
}
