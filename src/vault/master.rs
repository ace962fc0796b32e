//! The master key: what it is, where it comes from, and its file.
//!
//! Exactly one source is used (docs/design.md §6): `KEYGATE_MASTER_KEY`, then
//! `KEYGATE_PASSPHRASE`, then the master key file. The environment is read by
//! the caller and passed in, so tests never touch the process environment.
//! Nothing here may print, log or format key bytes or a passphrase: `Debug`
//! shows only which kind of key it is, and errors name sources, never values.

use std::fmt;
use std::path::PathBuf;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use zeroize::Zeroizing;

use super::{file, VaultError};
use crate::vault::secret::Secret;

/// A 32-byte master key (the KEK when not using a passphrase). Zeroized on
/// drop; `Debug` prints `MasterKey(…)` only.
#[derive(Clone)]
pub struct MasterKey(Zeroizing<[u8; 32]>);

impl MasterKey {
    /// 32 fresh bytes from the operating system's RNG.
    ///
    /// # Panics
    /// If the OS RNG fails, as `rand::rngs::OsRng` does: there is no safe way to
    /// go on making keys without it.
    pub fn generate() -> Self {
        let mut bytes = Zeroizing::new([0u8; 32]);
        if let Err(err) = getrandom::getrandom(bytes.as_mut()) {
            panic!("the operating system's random number generator failed: {err}");
        }
        MasterKey(bytes)
    }

    /// Parses standard base64 (as `openssl rand -base64 32` prints), ignoring
    /// surrounding whitespace. It must decode to exactly 32 bytes.
    pub fn from_base64(text: &str) -> Result<Self, VaultError> {
        let invalid = |problem: String| VaultError::InvalidMasterKey {
            origin: "the given value".to_owned(),
            detail: format!(
                "{problem}; a master key is standard base64 of exactly 32 bytes \
                 (make one with `openssl rand -base64 32`)"
            ),
        };
        // The decoder's own error names the offending character; leave it out.
        let decoded = Zeroizing::new(
            STANDARD
                .decode(text.trim())
                .map_err(|_| invalid("it is not valid base64".to_owned()))?,
        );
        if decoded.len() != 32 {
            let n = decoded.len();
            return Err(invalid(format!("it decodes to {n} bytes, not 32")));
        }
        let mut bytes = Zeroizing::new([0u8; 32]);
        bytes.copy_from_slice(&decoded);
        Ok(MasterKey(bytes))
    }

    /// The key as standard base64, wrapped so it cannot leak through `Debug`.
    pub fn to_base64(&self) -> Secret {
        Secret::new(STANDARD.encode(self.0.as_ref()))
    }

    pub(super) fn bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MasterKey(…)")
    }
}

/// The key-encryption key's source: a raw master key or a passphrase that
/// Argon2id stretches with the salt and costs stored in the vault header.
#[derive(Clone)]
pub enum Kek {
    /// `KEYGATE_MASTER_KEY` or the master key file.
    Raw(MasterKey),
    /// `KEYGATE_PASSPHRASE`.
    Passphrase(Secret),
}

impl fmt::Debug for Kek {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Not even the Secret's fingerprint: it shows 7 characters of a passphrase.
        match self {
            Kek::Raw(_) => f.write_str("Kek::Raw(MasterKey(…))"),
            Kek::Passphrase(_) => f.write_str("Kek::Passphrase(…)"),
        }
    }
}

/// Where the master key may come from. The caller fills in the environment
/// values; `file` is `vault.master_key_file` from config.
pub struct MasterKeySources {
    /// The value of `KEYGATE_MASTER_KEY`, if set.
    pub env_master_key: Option<Secret>,
    /// The value of `KEYGATE_PASSPHRASE`, if set.
    pub env_passphrase: Option<Secret>,
    /// The master key file.
    pub file: PathBuf,
}

impl fmt::Debug for MasterKeySources {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let set = |v: &Option<Secret>| if v.is_some() { "set" } else { "unset" };
        f.debug_struct("MasterKeySources")
            .field("env_master_key", &set(&self.env_master_key))
            .field("env_passphrase", &set(&self.env_passphrase))
            .field("file", &self.file)
            .finish()
    }
}

impl MasterKeySources {
    /// The configured KEK, or `Ok(None)` when no environment value is set and
    /// the file does not exist (a first start: the caller may generate one).
    /// Precedence: `KEYGATE_MASTER_KEY`, `KEYGATE_PASSPHRASE`, the file.
    pub fn resolve(&self) -> Result<Option<Kek>, VaultError> {
        match (&self.env_master_key, &self.env_passphrase) {
            (Some(_), Some(_)) => Err(VaultError::ConflictingMasterKeySources),
            (Some(text), None) => MasterKey::from_base64(text.expose())
                .map(|key| Some(Kek::Raw(key)))
                .map_err(|err| err.with_origin("KEYGATE_MASTER_KEY")),
            (None, Some(passphrase)) if passphrase.is_blank() => {
                Err(VaultError::InvalidMasterKey {
                    origin: "KEYGATE_PASSPHRASE".to_owned(),
                    detail: "it is empty; set it to the vault's passphrase, or unset it".to_owned(),
                })
            }
            (None, Some(passphrase)) => Ok(Some(Kek::Passphrase(passphrase.clone()))),
            (None, None) => {
                let Some(bytes) = file::read_private(&self.file, "master key file")? else {
                    return Ok(None);
                };
                let text =
                    std::str::from_utf8(&bytes).map_err(|_| VaultError::InvalidMasterKey {
                        origin: self.file.display().to_string(),
                        detail:
                            "it is not text; it should hold the base64 master key and a newline"
                                .to_owned(),
                    })?;
                MasterKey::from_base64(text)
                    .map(|key| Some(Kek::Raw(key)))
                    .map_err(|err| err.with_origin(&self.file.display().to_string()))
            }
        }
    }

    /// Writes a new master key file (base64 and a newline), mode 0600,
    /// creating missing parent directories with mode 0700. Never overwrites.
    pub fn write_file(&self, key: &MasterKey) -> Result<(), VaultError> {
        file::write_new(&self.file, "master key file", &Self::contents(key))
    }

    /// Replaces the master key file atomically (temp file, fsync, rename,
    /// fsync the directory), for `vault rekey`.
    pub fn replace_file(&self, key: &MasterKey) -> Result<(), VaultError> {
        file::create_private_dirs(&self.file)?;
        file::write_atomic(&self.file, &Self::contents(key))
    }

    fn contents(key: &MasterKey) -> Zeroizing<Vec<u8>> {
        let text = key.to_base64();
        let mut out = Zeroizing::new(Vec::with_capacity(text.expose().len() + 1));
        out.extend_from_slice(text.expose().as_bytes());
        out.push(b'\n');
        out
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn sources(dir: &tempfile::TempDir) -> MasterKeySources {
        MasterKeySources {
            env_master_key: None,
            env_passphrase: None,
            file: dir.path().join("keys/master.key"),
        }
    }

    #[test]
    fn base64_round_trip_and_length_check() {
        let key = MasterKey::generate();
        let again = MasterKey::from_base64(&format!("  {}\n", key.to_base64().expose())).unwrap();
        assert_eq!(key.bytes(), again.bytes());
        assert_ne!(key.bytes(), MasterKey::generate().bytes());
        let short = STANDARD.encode([7u8; 31]);
        let err = MasterKey::from_base64(&short).unwrap_err().to_string();
        assert!(err.contains("31 bytes"), "{err}");
        assert!(!err.contains(&short), "{err}");
    }

    #[test]
    fn debug_never_shows_key_or_passphrase() {
        let key = MasterKey::generate();
        let b64 = key.to_base64().expose().to_owned();
        let passphrase = "correct horse battery staple";
        for text in [
            format!("{key:?}"),
            format!("{:?}", Kek::Raw(key.clone())),
            format!("{:?}", Kek::Passphrase(Secret::new(passphrase.to_owned()))),
        ] {
            assert!(!text.contains(&b64) && !text.contains(&b64[..8]), "{text}");
            assert!(!text.contains("horse") && !text.contains("cor"), "{text}");
        }
        assert_eq!(format!("{key:?}"), "MasterKey(…)");
    }

    #[test]
    fn resolve_rejects_two_env_sources_and_bad_base64() {
        let dir = tempfile::tempdir().unwrap();
        let mut src = sources(&dir);
        src.env_master_key = Some(MasterKey::generate().to_base64());
        src.env_passphrase = Some(Secret::new("a passphrase".to_owned()));
        let err = src.resolve().unwrap_err().to_string();
        assert!(err.contains("KEYGATE_MASTER_KEY") && err.contains("KEYGATE_PASSPHRASE"));
        assert!(err.contains("exactly one"), "{err}");

        src.env_passphrase = None;
        src.env_master_key = Some(Secret::new("not base64 at all!".to_owned()));
        let err = src.resolve().unwrap_err().to_string();
        assert!(
            err.contains("KEYGATE_MASTER_KEY") && err.contains("base64"),
            "{err}"
        );
        assert!(!err.contains("not base64 at all"), "{err}");

        src.env_master_key = None;
        src.env_passphrase = Some(Secret::new("  ".to_owned()));
        assert!(src.resolve().is_err());
    }

    #[test]
    fn resolve_without_any_source_is_none_and_env_wins_over_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut src = sources(&dir);
        assert!(src.resolve().unwrap().is_none());
        src.write_file(&MasterKey::generate()).unwrap();
        let env_key = MasterKey::generate();
        src.env_master_key = Some(env_key.to_base64());
        match src.resolve().unwrap() {
            Some(Kek::Raw(k)) => assert_eq!(k.bytes(), env_key.bytes()),
            other => panic!("expected the env key, got {other:?}"),
        }
        src.env_master_key = None;
        src.env_passphrase = Some(Secret::new("pass phrase".to_owned()));
        assert!(matches!(src.resolve().unwrap(), Some(Kek::Passphrase(_))));
    }

    #[test]
    fn key_file_is_0600_never_overwritten_and_replaced_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let src = sources(&dir);
        let first = MasterKey::generate();
        src.write_file(&first).unwrap();
        let mode = std::fs::metadata(&src.file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let parent = std::fs::metadata(src.file.parent().unwrap()).unwrap();
        assert_eq!(parent.permissions().mode() & 0o777, 0o700);
        let text = std::fs::read_to_string(&src.file).unwrap();
        assert_eq!(text, format!("{}\n", first.to_base64().expose()));

        let err = src.write_file(&MasterKey::generate()).unwrap_err();
        assert!(matches!(err, VaultError::AlreadyExists { .. }), "{err}");
        assert_eq!(std::fs::read_to_string(&src.file).unwrap(), text);

        let second = MasterKey::generate();
        src.replace_file(&second).unwrap();
        match src.resolve().unwrap() {
            Some(Kek::Raw(k)) => assert_eq!(k.bytes(), second.bytes()),
            other => panic!("expected the file key, got {other:?}"),
        }
        let mode = std::fs::metadata(&src.file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let leftovers = std::fs::read_dir(src.file.parent().unwrap())
            .unwrap()
            .count();
        assert_eq!(leftovers, 1, "temp file left behind");
    }

    #[test]
    fn a_key_file_others_can_read_is_refused_with_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let src = sources(&dir);
        src.write_file(&MasterKey::generate()).unwrap();
        std::fs::set_permissions(&src.file, std::fs::Permissions::from_mode(0o604)).unwrap();
        let err = src.resolve().unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, VaultError::InsecureMode { .. }), "{text}");
        assert!(
            text.contains("0604") && text.contains("others") && text.contains("chmod 600"),
            "{text}"
        );
    }

    #[test]
    fn a_key_file_readable_by_keygates_own_group_is_used_by_no_other() {
        let dir = tempfile::tempdir().unwrap();
        let src = sources(&dir);
        src.write_file(&MasterKey::generate()).unwrap();
        // Kubernetes' Secret file with fsGroup: group-readable, the group
        // one this process runs in (the one it created the file with).
        std::fs::set_permissions(&src.file, std::fs::Permissions::from_mode(0o440)).unwrap();
        assert!(matches!(src.resolve().unwrap(), Some(Kek::Raw(_))));
        if crate::file_owner::running_as_root() {
            std::os::unix::fs::chown(&src.file, None, Some(4_000_000_125)).unwrap();
            let text = src.resolve().unwrap_err().to_string();
            assert!(
                text.contains("0440") && text.contains("group 4000000125"),
                "{text}"
            );
        }
    }
}
