//! Key lifecycle transitions on the vault document (docs/design.md §5), pure: the
//! caller runs them inside one `Vault::update`, so each is one atomic write.
//!
//! ```text
//! add/rotate ─► pending ──verify 2xx──► current ──next rotation──► previous ──grace over──► retired (secret wiped)
//!                  └─verify 401/403─► rejected (secret wiped, reason kept)
//! rollback: current ⇄ previous in one write      revoke: any ─► revoked (refused for the last usable key without --force)
//! burn: the replacement pending ─► current and the burnt key ─► revoked, in one write, no grace
//! ```
//!
//! A key keygate minted owes the provider a delete the moment it leaves use
//! (retired, rejected, revoked); any key can be made to owe one
//! ([`owe_at_provider`]). What is owed is recorded on the key
//! (`at_provider`) and settled by `keys::cleanup`.
//!
//! The rooms, top to bottom: `add` (a new key), `revoke` (out of use early:
//! revoke, burn, the provider's delete), `rotation` (promote, reject,
//! rollback, the end of grace), `state` (one key's state change and what
//! leaving use costs), `error`.

mod add;
mod error;
mod revoke;
mod rotation;
mod state;
#[cfg(test)]
mod test_keys;

pub use self::add::{add, add_now, new_key_id, upstream_secret, NewKey};
pub use self::error::OpError;
pub use self::revoke::{burn, owe_at_provider, revoke, settle_at_provider, Burnt};
pub use self::rotation::{expire_grace, mark_verified, promote, reject, rollback, Promotion};
