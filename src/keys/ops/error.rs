//! Why a key transition was refused ([`OpError`]): each message says what to
//! do instead.

/// A transition the document does not allow; says what to do instead.
#[derive(Debug, thiserror::Error)]
pub enum OpError {
    /// The key handed in is not a key alone.
    #[error(
        "the key is empty or contains spaces or control characters; paste only the key itself"
    )]
    MalformedSecret,
    /// No key with that id.
    #[error("no key {0} (see `keygate key list`)")]
    UnknownKey(String),
    /// Another rotation is half done.
    #[error("provider {provider} already has a pending key {id} from an unfinished rotation: finish it with `keygate key promote {id}` or drop it with `keygate key revoke {id}`")]
    PendingExists {
        /// Provider.
        provider: String,
        /// The pending key.
        id: String,
    },
    /// Several current keys and no `--replace`.
    #[error("provider {provider} has several current keys ({ids}); say which one the new key replaces with --replace KEY_ID")]
    AmbiguousReplace {
        /// Provider.
        provider: String,
        /// The current ids.
        ids: String,
    },
    /// `--replace` names a key that is not current.
    #[error("--replace {0}: that key is not a current key of this provider")]
    NotCurrent(String),
    /// The state does not allow it.
    #[error("key {id} is {state}; {what}")]
    WrongState {
        /// Key id.
        id: String,
        /// Its state.
        state: &'static str,
        /// What is allowed.
        what: &'static str,
    },
    /// Rollback without a fallback.
    #[error("provider {0} has no previous key to roll back to")]
    NoPrevious(String),
    /// Revoking the last usable key.
    #[error("key {id} is the last usable key of {provider}: revoking it stops all traffic to {provider}. Add or rotate in another key first, or pass --force")]
    LastUsableKey {
        /// Key id.
        id: String,
        /// Provider.
        provider: String,
    },
    /// The same secret is already stored.
    #[error("this key is already in the vault as {id} ({state})")]
    Duplicate {
        /// Existing id.
        id: String,
        /// Its state.
        state: &'static str,
    },
}
