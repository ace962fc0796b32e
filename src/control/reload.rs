//! The single writer of the snapshot: loads the vault, builds a [`Snapshot`],
//! publishes it in one store — at start, whenever the vault or master key file
//! changes (polled every 250 ms: one `stat` each, and it sees a Kubernetes
//! `..data` symlink swap because `stat` follows the link), and on SIGHUP.
//!
//! Prepare, then publish: a reload that fails (tampered, truncated, wrong key,
//! older generation) publishes nothing, so the last good snapshot keeps serving.
//! Logs key ids and generations, never a secret.

use std::sync::Arc;
use std::time::SystemTime;

use arc_swap::ArcSwap;

use crate::config::Config;
use crate::control::metrics::Metrics;
use crate::control::snapshot::Snapshot;
use crate::vault::{Kek, MasterKeySources, Vault, VaultError};

/// Why a reload published nothing.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The vault could not be read or decrypted.
    #[error(transparent)]
    Vault(#[from] VaultError),
    /// The file on disk is older than what is served (a replayed or restored copy).
    #[error("vault on disk has generation {found}, older than the generation {serving} being served; refusing to go back (restore the newer file, or restart keygate to accept it)")]
    Regressed {
        /// Generation found on disk.
        found: u64,
        /// Generation being served.
        serving: u64,
    },
    /// `--accept-vault-generation` named another generation than the vault has.
    #[error("--accept-vault-generation {accepted} was given, but the vault has generation {found}: nothing was accepted; pass the vault's own generation ({found}) to serve it")]
    AcceptMismatch {
        /// What the operator accepted.
        accepted: u64,
        /// What the vault has.
        found: u64,
    },
}

/// How the last reload that found something to do went (status page,
/// `GET /admin/status`). A check that found the vault unchanged is not one.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ReloadOutcome {
    /// Unix seconds.
    pub at: u64,
    /// `ok` or `error`.
    pub result: &'static str,
    /// The generation served after it.
    pub generation: u64,
    /// Why nothing was published (the same words as the log line; no secret).
    pub error: Option<String>,
    /// How long it took, from reading the file to publishing, in milliseconds.
    pub took_ms: u64,
}

/// Identity of a file's current content, cheap to compare.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp(Option<(SystemTime, u64, u64)>);

fn stamp(path: &std::path::Path) -> Stamp {
    use std::os::unix::fs::MetadataExt;
    Stamp(std::fs::metadata(path).ok().map(|m| {
        (
            m.modified().unwrap_or(SystemTime::UNIX_EPOCH),
            m.len(),
            m.ino(),
        )
    }))
}

/// Watches the vault and reloads it.
pub struct VaultWatch {
    vault: Vault,
    master: MasterKeySources,
    kek: Kek,
    seen: (Stamp, Stamp),
    generation: u64,
    /// `serve --accept-vault-generation N`: the operator chose to serve an
    /// older vault; checked and recorded on the first load.
    accept: Option<u64>,
    last: Option<ReloadOutcome>,
}

impl VaultWatch {
    /// A watch over `vault`, decrypting with `kek` (re-read from `master` when a
    /// rekey makes it stale).
    pub fn new(vault: Vault, master: MasterKeySources, kek: Kek) -> Self {
        VaultWatch {
            vault,
            master,
            kek,
            seen: (Stamp(None), Stamp(None)),
            generation: 0,
            accept: None,
            last: None,
        }
    }

    /// Serve generation `generation` even though a newer one was served before.
    pub fn accept_generation(mut self, generation: Option<u64>) -> Self {
        self.accept = generation;
        self
    }

    /// How the last reload that published or failed went.
    pub fn last_reload(&self) -> Option<&ReloadOutcome> {
        self.last.as_ref()
    }

    /// The vault file.
    pub fn vault(&self) -> &Vault {
        &self.vault
    }

    /// The master key currently in use.
    pub fn kek(&self) -> &Kek {
        &self.kek
    }

    /// The master key file, when the key came from it and it is gone (the
    /// server goes on with the key it holds; a restart could not).
    pub fn master_key_file_missing(&self) -> Option<&std::path::Path> {
        let from_env = self.master.env_master_key.is_some() || self.master.env_passphrase.is_some();
        (!from_env && !self.master.file.exists()).then_some(self.master.file.as_path())
    }

    /// True when the vault or master key file changed since the last reload.
    pub fn changed(&self) -> bool {
        (stamp(self.vault.path()), stamp(&self.master.file)) != self.seen
    }

    /// Loads the vault and publishes it into `published` if it is newer than
    /// what is served; counts `keygate_vault_reloads_total` by result.
    /// Returns whether a new generation was published.
    pub fn reload(
        &mut self,
        config: &Config,
        published: &ArcSwap<Snapshot>,
        metrics: &Metrics,
    ) -> Result<bool, ReloadError> {
        let started = std::time::Instant::now();
        let result = self.load_and_publish(config, published, metrics);
        let took_ms = started.elapsed().as_millis() as u64;
        let label = match &result {
            Ok(true) => "ok",
            Ok(false) => return result,
            Err(_) => "error",
        };
        metrics.vault_reloads.with_label_values(&[label]).inc();
        self.last = Some(ReloadOutcome {
            at: crate::unix_now(),
            result: label,
            generation: self.generation,
            error: result.as_ref().err().map(ToString::to_string),
            took_ms,
        });

        result
    }

    fn load_and_publish(
        &mut self,
        config: &Config,
        published: &ArcSwap<Snapshot>,
        metrics: &Metrics,
    ) -> Result<bool, ReloadError> {
        let started = std::time::Instant::now();
        self.seen = (stamp(self.vault.path()), stamp(&self.master.file));
        let loaded = match self.vault.load(&self.kek) {
            Err(VaultError::WrongMasterKey { .. }) => {
                // Re-keyed under a master key we do not hold yet: re-read its source.
                let Some(kek) = self.master.resolve()? else {
                    return Err(self.vault.load(&self.kek).err().map_or(
                        ReloadError::Regressed {
                            found: 0,
                            serving: self.generation,
                        },
                        ReloadError::Vault,
                    ));
                };
                let loaded = self.vault.load(&kek)?;
                self.kek = kek;
                loaded
            }
            other => other?,
        };
        if let Some(accepted) = self.accept.take() {
            if accepted != loaded.generation {
                return Err(ReloadError::AcceptMismatch {
                    accepted,
                    found: loaded.generation,
                });
            }
            if let Some(record) = self.vault.served_record() {
                record.accept(accepted)?;
                tracing::warn!(
                    generation = accepted,
                    "serving vault generation {accepted} on the operator's word (--accept-vault-generation); recorded"
                );
            }
        }
        if loaded.generation < self.generation {
            return Err(ReloadError::Regressed {
                found: loaded.generation,
                serving: self.generation,
            });
        }
        // Across restarts too: never below what this server ever served.
        self.vault.check_not_rolled_back(loaded.generation)?;
        let now = crate::unix_now();
        let serving = published.load_full();
        let expired = serving.next_expiry.is_some_and(|t| t <= now);
        if loaded.generation == self.generation && !expired {
            return Ok(false);
        }
        let snapshot = Snapshot::build(
            config,
            &loaded.document,
            loaded.generation,
            now,
            Some(&serving),
        );
        metrics.observe_keys(
            config,
            &loaded.document,
            (serving.generation > 0).then_some(&serving.rings),
            &snapshot.rings,
            now,
        );
        let usable: usize = snapshot.rings.values().map(|r| r.len()).sum();
        tracing::info!(
            generation = loaded.generation,
            clients = snapshot.clients.len(),
            usable_keys = usable,
            read_only = loaded.read_only,
            took_ms = started.elapsed().as_millis() as u64,
            "vault loaded"
        );
        published.store(Arc::new(snapshot));
        self.generation = loaded.generation;
        if let Some(record) = self.vault.served_record() {
            if let Err(error) = record.record(loaded.generation) {
                tracing::warn!(
                    generation = loaded.generation,
                    "cannot record the served vault generation, so a restart could not refuse an older vault copy: {error}"
                );
            }
        }
        Ok(true)
    }
}
