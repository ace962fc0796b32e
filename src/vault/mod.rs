//! The vault: one encrypted file holding every upstream key and client record.
//!
//! This room opens, creates, updates and rekeys that file (docs/design.md §6): envelope
//! encryption ([`crypto`]) over a byte layout ([`format`]), written only whole
//! and atomically under an advisory lock ([`file`]). The master key's sources
//! live in [`master`].
//!
//! It must never modify the file when reading (a wrong key or a tampered file
//! leaves it byte-for-byte untouched), never lose a concurrent writer's change
//! (every write re-reads under the lock), and never put a key, a passphrase or
//! document contents into an error or a log line.

pub mod client_key;
pub mod client_record;
pub mod document;

mod crypto;
mod file;
pub mod fingerprint_mac;
pub use file::WriteLock;
mod format;
pub mod master;
mod readers;
pub mod secret;
pub mod served;

use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

pub use format::Header;
pub use master::{Kek, MasterKey, MasterKeySources};
pub use served::ServedRecord;

/// A vault file on disk. Holds the path only; every call reads the file fresh.
#[derive(Debug, Clone)]
pub struct Vault {
    path: PathBuf,
    /// The highest generation a server served: writes on an older copy are refused.
    served: Option<ServedRecord>,
}

/// A decrypted vault, as returned by [`Vault::load`].
#[derive(Debug)]
pub struct Loaded {
    /// The decrypted document.
    pub document: document::Document,
    /// The file's generation; a server never goes back to a lower one.
    pub generation: u64,
    /// Names the master key the file is written under.
    pub kek_id: [u8; 8],
    /// The file or its directory is not writable (e.g. a read-only Kubernetes
    /// Secret mount): serve it, but do not try to change it.
    pub read_only: bool,
    /// This vault's `fingerprint_mac` key, to name a reported secret.
    pub fingerprint_key: fingerprint_mac::FingerprintKey,
}

/// Why a vault or master key operation failed. `Display` says what was wrong
/// and what to do next, and never contains a secret or document contents.
#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    /// A file system call failed.
    #[error("cannot {action} {what} {path}: {source}; check the path and that keygate's user may access it", path = .path.display())]
    Io {
        action: &'static str,
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    /// There is no vault file.
    #[error("no vault at {path}; create one with `keygate vault init` (or let `keygate serve` create it on first start), or fix vault.path in the config", path = .path.display())]
    NotFound { path: PathBuf },
    /// Creating a file that already exists.
    #[error("{what} {path} already exists; keygate never overwrites it — move it away first if you really mean to start over", path = .path.display())]
    AlreadyExists { what: &'static str, path: PathBuf },
    /// Someone other than keygate can read the file (`vault::readers`).
    #[error("{what} {path} has mode {mode:04o}, so {reader} can read it; keygate refuses to use it. Fix: chmod 600 {path}, or leave group read only to a group keygate runs in (on Kubernetes: the Secret volume's defaultMode: 0400 and the pod's fsGroup)", path = .path.display())]
    InsecureMode {
        what: &'static str,
        path: PathBuf,
        mode: u32,
        /// Who else, in words ("others", "group 1000, which …").
        reader: String,
    },
    /// A rewrite would hand another user's file to this process's user.
    #[error("{path} belongs to uid {uid} (gid {gid}) and this command runs as uid {me}: rewriting it would make it uid {me}'s, and the service running as uid {uid} could no longer open it. Nothing was written. Run the command as that user (e.g. `sudo -u '#{uid}' -g '#{gid}' keygate …`, or `docker exec`), or as root, which keeps the owner", path = .path.display())]
    Owner {
        path: PathBuf,
        uid: u32,
        gid: u32,
        me: u32,
    },
    /// A write was attempted on a vault that cannot be written.
    #[error("vault is read-only at {path}; it can be served but not changed here — make the file and its directory writable by keygate's user, or change the vault where it is writable (on Kubernetes, update the Secret)", path = .path.display())]
    ReadOnly { path: PathBuf },
    /// The key given is not the one the vault was written under.
    #[error("cannot decrypt vault: wrong master key for {path} (it was written with {}); check KEYGATE_MASTER_KEY, the master key file and KEYGATE_PASSPHRASE. The vault file was left untouched", if *.written_with_passphrase { "a passphrase, KEYGATE_PASSPHRASE" } else { "a raw master key, KEYGATE_MASTER_KEY or the master key file" }, path = .path.display())]
    WrongMasterKey {
        path: PathBuf,
        written_with_passphrase: bool,
    },
    /// The key is right but the file fails authentication, or is malformed.
    #[error("vault file modified or corrupted: {path}: {detail}; the file was left untouched — restore it from a backup", path = .path.display())]
    Corrupted { path: PathBuf, detail: String },
    /// A vault from a newer keygate.
    #[error("vault {path} uses format version {version}, but this keygate only reads version 1: this keygate is too old — upgrade it", path = .path.display())]
    UnsupportedVersion { path: PathBuf, version: u16 },
    /// The document decrypted but does not parse; `detail` holds no contents.
    #[error("vault {path} decrypted, but this keygate cannot read its document ({detail}); it may have been written by a newer keygate — upgrade keygate. The file was left untouched", path = .path.display())]
    Document { path: PathBuf, detail: String },
    /// A master key value (named by `origin`, never shown) is unusable.
    #[error("{origin} is not a usable master key: {detail}")]
    InvalidMasterKey { origin: String, detail: String },
    /// Both environment sources are set.
    #[error("both KEYGATE_MASTER_KEY and KEYGATE_PASSPHRASE are set, but exactly one master key source is allowed; unset one of them")]
    ConflictingMasterKeySources,
    /// The OS RNG failed.
    #[error("the operating system's random number generator failed ({cause}); nothing was written — retry, and check the system's entropy source")]
    Random { cause: getrandom::Error },
    /// The vault is older than one a server has already served: restored from
    /// an older copy, which would bring back revoked clients and retired keys.
    #[error("vault {path} has generation {found}, but keygate has already served generation {served} (recorded in {record}): this is an older copy of the vault (restored from a backup?), and it would bring back revoked client keys and retired upstream keys. Restore the newest vault file; or, to go back to this one on purpose, start `keygate serve --accept-vault-generation {found}` once (the choice is recorded)", path = .path.display(), record = .record.display())]
    RolledBack {
        path: PathBuf,
        found: u64,
        served: u64,
        record: PathBuf,
    },
    /// A cipher or KDF call failed (not an authentication failure).
    #[error("vault encryption failed: {detail}; nothing was written")]
    Crypto { detail: &'static str },
}

impl VaultError {
    /// Names where an invalid master key came from (an env var, a file path).
    pub(crate) fn with_origin(self, origin: &str) -> Self {
        match self {
            VaultError::InvalidMasterKey { detail, .. } => VaultError::InvalidMasterKey {
                origin: origin.to_owned(),
                detail,
            },
            other => other,
        }
    }
}

impl Vault {
    /// A vault at `path` (nothing is read yet).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Vault {
            path: path.into(),
            served: None,
        }
    }

    /// The same vault, refusing writes on a copy older than `record` says a
    /// server has served.
    pub fn with_served_record(mut self, record: ServedRecord) -> Self {
        self.served = Some(record);
        self
    }

    /// The served-generation record, if one is kept.
    pub fn served_record(&self) -> Option<&ServedRecord> {
        self.served.as_ref()
    }

    /// `Err(RolledBack)` when `generation` is older than the highest served.
    pub fn check_not_rolled_back(&self, generation: u64) -> Result<(), VaultError> {
        let Some(record) = &self.served else {
            return Ok(());
        };
        let served = record.highest()?;
        if generation < served {
            return Err(VaultError::RolledBack {
                path: self.path.clone(),
                found: generation,
                served,
                record: record.path().to_owned(),
            });
        }
        Ok(())
    }

    /// The vault file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// True when the vault file exists.
    pub fn exists(&self) -> bool {
        self.path.exists()
    }

    /// Creates a new vault (generation 1) holding `doc`, creating missing parent
    /// directories with mode 0700. Never overwrites: `AlreadyExists` if present.
    pub fn create(&self, kek: &Kek, doc: &document::Document) -> Result<(), VaultError> {
        file::create_private_dirs(&self.path)?;
        let _lock = file::lock(&self.path)?;
        // symlink_metadata: a dangling symlink is something we must not replace either.
        if self.path.symlink_metadata().is_ok() {
            return Err(VaultError::AlreadyExists {
                what: "vault",
                path: self.path.clone(),
            });
        }
        let source = crypto::fresh_source(kek)?;
        let derived = crypto::derive(kek, source)?.ok_or(VaultError::Crypto {
            detail: "key kind does not match its source",
        })?;
        let dek = crypto::Dek::generate()?;
        let bytes = crypto::seal(1, &derived, &dek, &self.serialise(doc)?)?;
        file::write_atomic(&self.path, &bytes)
    }

    /// Reads the file, checks its mode, and decrypts it.
    pub fn load(&self, kek: &Kek) -> Result<Loaded, VaultError> {
        let bytes = self.read()?;
        let opened = crypto::open(&self.path, &bytes, kek)?;
        Ok(Loaded {
            document: self.parse(&opened.plaintext)?,
            generation: opened.header.generation,
            kek_id: opened.header.kek_id,
            read_only: file::is_read_only(&self.path),
            fingerprint_key: opened.dek.fingerprint_key()?,
        })
    }

    /// Waits for and takes the rotation lease ([`file::rotation_lease`]).
    pub fn rotation_lease(&self) -> Result<file::WriteLock, VaultError> {
        file::rotation_lease(&self.path)
    }

    /// Takes the rotation lease if no one holds it.
    pub fn try_rotation_lease(&self) -> Result<Option<file::WriteLock>, VaultError> {
        file::try_rotation_lease(&self.path)
    }

    /// Reads only the header (no key needed): its generation and master key
    /// id, for diagnostics, the tests and the `vault_open` fuzz target.
    pub fn peek(&self) -> Result<Header, VaultError> {
        crypto::peek(&self.path, &self.read()?)
    }

    /// Read-modify-write under the lock: re-reads and decrypts the current
    /// file, calls `f`, and if `f` succeeds writes the result as generation + 1.
    /// If `f` fails nothing is written. Returns `f`'s value.
    pub fn update<T, E: From<VaultError>>(
        &self,
        kek: &Kek,
        f: impl FnOnce(&mut document::Document) -> Result<T, E>,
    ) -> Result<T, E> {
        self.ensure_writable()?;
        let _lock = file::lock(&self.path)?;
        file::remove_stale_temps(&self.path);
        let opened = crypto::open(&self.path, &self.read()?, kek)?;
        self.check_not_rolled_back(opened.header.generation)?;
        let mut doc = self.parse(&opened.plaintext)?;
        // Before `f`, so a key `f` wipes keeps the MAC of its secret (an older
        // vault's keys gain theirs here); after, for the keys `f` added.
        let fingerprints = opened.dek.fingerprint_key()?;
        fingerprints.fill_missing(&mut doc);
        let value = f(&mut doc)?;
        fingerprints.fill_missing(&mut doc);
        // Same KEK (the salt is kept) and same DEK; fresh nonces inside seal.
        let next = self.next_generation(opened.header.generation)?;
        let bytes = crypto::seal(next, &opened.kek, &opened.dek, &self.serialise(&doc)?)?;
        file::write_atomic(&self.path, &bytes)?;
        Ok(value)
    }

    /// Re-wraps the data key under `new` (a fresh salt for a passphrase) and
    /// bumps the generation, under the lock. The DEK is unchanged; the body is
    /// re-sealed with a fresh nonce only because its AAD covers the header.
    pub fn rekey(&self, old: &Kek, new: &Kek) -> Result<(), VaultError> {
        self.ensure_writable()?;
        let _lock = file::lock(&self.path)?;
        file::remove_stale_temps(&self.path);
        let opened = crypto::open(&self.path, &self.read()?, old)?;
        self.check_not_rolled_back(opened.header.generation)?;
        let derived =
            crypto::derive(new, crypto::fresh_source(new)?)?.ok_or(VaultError::Crypto {
                detail: "key kind does not match its source",
            })?;
        let next = self.next_generation(opened.header.generation)?;
        let bytes = crypto::seal(next, &derived, &opened.dek, &opened.plaintext)?;
        file::write_atomic(&self.path, &bytes)
    }

    fn read(&self) -> Result<Zeroizing<Vec<u8>>, VaultError> {
        file::read_private(&self.path, "vault file")?.ok_or_else(|| VaultError::NotFound {
            path: self.path.clone(),
        })
    }

    fn ensure_writable(&self) -> Result<(), VaultError> {
        if file::is_read_only(&self.path) {
            return Err(VaultError::ReadOnly {
                path: self.path.clone(),
            });
        }
        file::ensure_owner_kept(&self.path)
    }

    fn next_generation(&self, generation: u64) -> Result<u64, VaultError> {
        generation
            .checked_add(1)
            .ok_or_else(|| VaultError::Corrupted {
                path: self.path.clone(),
                detail: "the generation counter is at its maximum".to_owned(),
            })
    }

    fn parse(&self, plaintext: &[u8]) -> Result<document::Document, VaultError> {
        // serde_json's messages can quote values (secrets); keep only the position.
        serde_json::from_slice(plaintext).map_err(|e| VaultError::Document {
            path: self.path.clone(),
            detail: format!(
                "{:?} error at line {} column {}",
                e.classify(),
                e.line(),
                e.column()
            ),
        })
    }

    fn serialise(&self, doc: &document::Document) -> Result<Zeroizing<Vec<u8>>, VaultError> {
        serde_json::to_vec(doc)
            .map(Zeroizing::new)
            .map_err(|e| VaultError::Document {
                path: self.path.clone(),
                detail: format!("cannot serialise it: {:?} error", e.classify()),
            })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::document::{ClientRecord, Document};
    use super::*;
    use crate::vault::secret::Secret;
    use std::os::unix::fs::PermissionsExt;

    fn client(name: &str) -> ClientRecord {
        ClientRecord {
            name: name.to_owned(),
            key_sha256: "00".repeat(32),
            limits: document::ClientLimits::default(),
            created: 1,
            revoked: None,
            old_key: None,
            decoy: false,
        }
    }

    fn raw() -> Kek {
        Kek::Raw(MasterKey::generate())
    }

    fn passphrase(text: &str) -> Kek {
        Kek::Passphrase(Secret::new(text.to_owned()))
    }

    fn new_vault(dir: &tempfile::TempDir, kek: &Kek) -> Vault {
        let vault = Vault::new(dir.path().join("data/keygate.vault"));
        let doc = Document {
            clients: vec![client("first")],
            ..Document::default()
        };
        vault.create(kek, &doc).unwrap();
        vault
    }

    fn add(vault: &Vault, kek: &Kek, name: &str) {
        vault
            .update(kek, |doc| {
                doc.clients.push(client(name));
                Ok::<_, VaultError>(())
            })
            .unwrap();
    }

    fn assert_round_trip(kek: &Kek) {
        let dir = tempfile::tempdir().unwrap();
        let vault = new_vault(&dir, kek);
        let first = vault.load(kek).unwrap();
        assert_eq!(first.generation, 1);
        assert!(!first.read_only);
        assert_eq!(first.document.clients[0].name, "first");
        add(&vault, kek, "second");
        let second = vault.load(kek).unwrap();
        assert_eq!(second.generation, 2);
        assert_eq!(second.kek_id, first.kek_id, "update keeps the KEK");
        let names: Vec<_> = second
            .document
            .clients
            .iter()
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(names, ["first", "second"]);
        assert_eq!(
            vault.peek().unwrap(),
            Header {
                generation: 2,
                kek_id: first.kek_id
            }
        );
    }

    #[test]
    fn round_trip_with_a_raw_key() {
        assert_round_trip(&raw());
    }

    #[test]
    fn round_trip_with_a_passphrase() {
        assert_round_trip(&passphrase("correct horse battery staple"));
    }

    #[test]
    fn wrong_master_key_is_named_and_leaves_the_file_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let kek = raw();
        let vault = new_vault(&dir, &kek);
        let before = std::fs::read(vault.path()).unwrap();
        for wrong in [raw(), passphrase("some passphrase")] {
            let err = vault.load(&wrong).unwrap_err();
            let text = err.to_string();
            assert!(matches!(err, VaultError::WrongMasterKey { .. }), "{text}");
            assert!(
                text.contains("cannot decrypt vault: wrong master key"),
                "{text}"
            );
            assert!(text.contains("KEYGATE_MASTER_KEY") && text.contains("KEYGATE_PASSPHRASE"));
            assert!(vault.update(&wrong, |_| Ok::<_, VaultError>(())).is_err());
            assert!(vault.rekey(&wrong, &raw()).is_err());
        }
        assert_eq!(std::fs::read(vault.path()).unwrap(), before);
    }

    #[test]
    fn tampered_or_truncated_files_are_reported_and_left_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let kek = raw();
        let vault = new_vault(&dir, &kek);
        let good = std::fs::read(vault.path()).unwrap();
        let flip = |at: usize| {
            let mut bad = good.clone();
            bad[at] ^= 0x01;
            bad
        };
        let cases = [
            ("body", flip(good.len() - 20)),
            ("body tag", flip(good.len() - 1)),
            (
                "wrapped DEK",
                flip(format::DEK_AAD_LEN + format::NONCE_LEN + 3),
            ),
            ("DEK nonce", flip(format::DEK_AAD_LEN)),
            ("generation", flip(19)),
            ("magic", flip(0)),
            ("truncated", good[..good.len() - 1].to_vec()),
            ("truncated header", good[..40].to_vec()),
            ("empty", Vec::new()),
        ];
        for (what, bytes) in cases {
            std::fs::write(vault.path(), &bytes).unwrap();
            let err = vault.load(&kek).unwrap_err();
            let text = err.to_string();
            assert!(
                matches!(err, VaultError::Corrupted { .. }),
                "{what}: {text}"
            );
            assert!(
                text.contains("vault file modified or corrupted"),
                "{what}: {text}"
            );
            assert!(text.contains(&vault.path().display().to_string()), "{text}");
            assert!(
                vault.update(&kek, |_| Ok::<_, VaultError>(())).is_err(),
                "{what}"
            );
            assert_eq!(
                std::fs::read(vault.path()).unwrap(),
                bytes,
                "{what}: file changed"
            );
        }
    }

    #[test]
    fn vault_is_0600_and_a_0644_vault_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let kek = raw();
        let vault = new_vault(&dir, &kek);
        let mode = std::fs::metadata(vault.path())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let parent = std::fs::metadata(vault.path().parent().unwrap()).unwrap();
        assert_eq!(parent.permissions().mode() & 0o777, 0o700);
        add(&vault, &kek, "x");
        let mode = std::fs::metadata(vault.path())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "update keeps 0600");

        std::fs::set_permissions(vault.path(), std::fs::Permissions::from_mode(0o644)).unwrap();
        for err in [vault.load(&kek).unwrap_err(), vault.peek().unwrap_err()] {
            let text = err.to_string();
            assert!(text.contains("0644"), "{text}");
            assert!(
                text.contains(&format!("chmod 600 {}", vault.path().display())),
                "{text}"
            );
        }
    }

    #[test]
    fn create_never_overwrites_and_a_missing_vault_says_how_to_create_one() {
        let dir = tempfile::tempdir().unwrap();
        let kek = raw();
        let vault = Vault::new(dir.path().join("v"));
        assert!(!vault.exists());
        assert!(matches!(vault.load(&kek), Err(VaultError::NotFound { .. })));
        vault.create(&kek, &Document::default()).unwrap();
        assert!(vault.exists());
        let before = std::fs::read(vault.path()).unwrap();
        let err = vault.create(&raw(), &Document::default()).unwrap_err();
        assert!(matches!(err, VaultError::AlreadyExists { .. }), "{err}");
        assert_eq!(std::fs::read(vault.path()).unwrap(), before);
    }

    #[test]
    fn failing_update_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let kek = raw();
        let vault = new_vault(&dir, &kek);
        let before = std::fs::read(vault.path()).unwrap();
        let result: Result<(), VaultError> = vault.update(&kek, |doc| {
            doc.clients.clear();
            Err(VaultError::ConflictingMasterKeySources)
        });
        assert!(result.is_err());
        assert_eq!(std::fs::read(vault.path()).unwrap(), before);
    }

    #[test]
    fn rekey_moves_the_vault_to_the_new_key() {
        let dir = tempfile::tempdir().unwrap();
        let old = raw();
        let vault = new_vault(&dir, &old);
        let before = vault.load(&old).unwrap();
        for new in [passphrase("a brand new passphrase"), raw()] {
            let current = vault.load(&old).unwrap();
            vault.rekey(&old, &new).unwrap();
            let err = vault.load(&old).unwrap_err();
            assert!(matches!(err, VaultError::WrongMasterKey { .. }), "{err}");
            let after = vault.load(&new).unwrap();
            assert_eq!(after.generation, current.generation + 1);
            assert_ne!(after.kek_id, current.kek_id);
            let names: Vec<_> = after
                .document
                .clients
                .iter()
                .map(|c| c.name.clone())
                .collect();
            assert_eq!(names, ["first"]);
            assert_eq!(vault.peek().unwrap().kek_id, after.kek_id);
            vault.rekey(&new, &old).unwrap();
        }
        assert_eq!(vault.load(&old).unwrap().generation, before.generation + 4);
    }

    #[test]
    fn concurrent_updates_lose_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let kek = raw();
        let vault = new_vault(&dir, &kek);
        let threads = 8;
        std::thread::scope(|s| {
            for i in 0..threads {
                let (vault, kek) = (&vault, &kek);
                s.spawn(move || add(vault, kek, &format!("client-{i}")));
            }
        });
        let loaded = vault.load(&kek).unwrap();
        assert_eq!(loaded.document.clients.len(), threads + 1);
        assert_eq!(loaded.generation, threads as u64 + 1);
        let leftovers: Vec<_> = std::fs::read_dir(vault.path().parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains(".tmp."))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }

    #[test]
    fn a_read_only_vault_is_served_but_not_written() {
        let dir = tempfile::tempdir().unwrap();
        let kek = raw();
        let vault = new_vault(&dir, &kek);
        std::fs::set_permissions(vault.path(), std::fs::Permissions::from_mode(0o400)).unwrap();
        let loaded = vault.load(&kek).unwrap();
        assert!(loaded.read_only);
        let err = vault.update(&kek, |_| Ok::<_, VaultError>(())).unwrap_err();
        assert!(err.to_string().contains("vault is read-only at"), "{err}");
        assert!(vault.rekey(&kek, &raw()).is_err());
    }

    #[test]
    fn errors_never_contain_the_passphrase_or_document() {
        let dir = tempfile::tempdir().unwrap();
        let kek = passphrase("hunter2hunter2hunter2");
        let vault = new_vault(&dir, &kek);
        let errors = [
            vault
                .load(&passphrase("hunter3hunter3hunter3"))
                .unwrap_err(),
            vault.load(&raw()).unwrap_err(),
        ];
        for err in errors {
            let text = format!("{err} {err:?}");
            assert!(
                !text.contains("hunter") && !text.contains("first"),
                "{text}"
            );
        }
    }

    fn upstream(secret: &str) -> document::UpstreamKey {
        document::UpstreamKey::new(
            "key_1".to_owned(),
            "openai",
            &Secret::new(secret.to_owned()),
            None,
            document::KeyState::Current,
            1,
        )
    }

    fn mac_of(vault: &Vault, kek: &Kek) -> fingerprint_mac::FingerprintMac {
        let loaded = vault.load(kek).unwrap();
        loaded.document.keys[0].fingerprint_mac.clone().unwrap()
    }

    #[test]
    fn a_key_added_gets_its_fingerprint_mac_stable_across_writes_and_rekeys() {
        let dir = tempfile::tempdir().unwrap();
        let kek = raw();
        let vault = new_vault(&dir, &kek);
        let secret = "sk-test-fingerprint-mac-0000000000000001";
        vault
            .update(&kek, |doc| {
                doc.keys.push(upstream(secret));
                Ok::<_, VaultError>(())
            })
            .unwrap();
        let first = mac_of(&vault, &kek);
        let loaded = vault.load(&kek).unwrap();
        assert!(first.ct_eq(&loaded.fingerprint_key.mac(secret)));
        add(&vault, &kek, "second");
        assert_eq!(mac_of(&vault, &kek), first);
        let new = passphrase("another passphrase, long enough");
        vault.rekey(&kek, &new).unwrap();
        assert_eq!(mac_of(&vault, &new), first);
        // Kept once the secret is wiped.
        vault
            .update(&new, |doc| {
                doc.keys[0].secret = None;
                Ok::<_, VaultError>(())
            })
            .unwrap();
        assert_eq!(mac_of(&vault, &new), first);
        // Another vault (another data key): another MAC for the same secret.
        let other_dir = tempfile::tempdir().unwrap();
        let other = new_vault(&other_dir, &kek);
        other
            .update(&kek, |doc| {
                doc.keys.push(upstream(secret));
                Ok::<_, VaultError>(())
            })
            .unwrap();
        assert!(!mac_of(&other, &kek).ct_eq(&first));
    }

    #[test]
    fn a_vault_written_before_fingerprint_macs_gains_them_on_its_next_write() {
        let dir = tempfile::tempdir().unwrap();
        let kek = raw();
        let vault = Vault::new(dir.path().join("keygate.vault"));
        // The document of an older keygate: no `fingerprint_mac` anywhere.
        let secret = "sk-test-fingerprint-mac-0000000000000002";
        let old = format!(
            r#"{{"keys":[{{"id":"key_1","provider":"openai","label":null,"secret":"{secret}","fingerprint":"sk-…0002","state":"current","created":1,"state_changed":1}},{{"id":"key_2","provider":"openai","label":null,"secret":null,"fingerprint":"sk-…0003","state":"retired","created":1,"state_changed":2}}],"clients":[]}}"#
        );
        let document: Document = serde_json::from_str(&old).unwrap();
        vault.create(&kek, &document).unwrap();
        assert!(vault.load(&kek).unwrap().document.keys[0]
            .fingerprint_mac
            .is_none());
        // The write wipes the secret, yet the key keeps the MAC of it.
        vault
            .update(&kek, |doc| {
                doc.keys[0].secret = None;
                Ok::<_, VaultError>(())
            })
            .unwrap();
        let loaded = vault.load(&kek).unwrap();
        let mac = loaded.document.keys[0].fingerprint_mac.as_ref().unwrap();
        assert!(mac.ct_eq(&loaded.fingerprint_key.mac(secret)));
        // A key whose secret was wiped before cannot gain one.
        assert!(loaded.document.keys[1].fingerprint_mac.is_none());
        let text = format!("{:?} {:?}", loaded, loaded.document.keys[0].summary(2, 1));
        assert!(!text.contains(&mac_hex(mac)), "{text}");
    }

    fn mac_hex(mac: &fingerprint_mac::FingerprintMac) -> String {
        serde_json::to_value(mac)
            .unwrap()
            .as_str()
            .unwrap()
            .to_owned()
    }
}
