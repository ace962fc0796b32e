//! The keys the ops tests add: numbered secrets, one provider.

use super::add::NewKey;
use crate::vault::document::{Document, KeyState};
use crate::vault::secret::Secret;

pub(super) fn secret(n: u8) -> Secret {
    Secret::new(format!("sk-test-{n:02}-0000000000000000"))
}

pub(super) fn key<'a>(id: &str, secret: &'a Secret, state: KeyState) -> NewKey<'a> {
    NewKey {
        id: id.to_owned(),
        provider: "openai",
        secret,
        label: None,
        state,
    }
}

pub(super) fn states(document: &Document) -> Vec<(String, &'static str)> {
    document
        .keys
        .iter()
        .map(|k| (k.id.clone(), k.state.as_str()))
        .collect()
}
