//! Upstream keys: the ring a request picks from, their runtime health, and
//! their lifecycle in the vault — states and transitions ([`ops`]), the
//! rotation service shared by the CLI and the admin API ([`rotate`]), keys
//! keygate creates at the provider ([`mint`]), and
//! verification against the provider ([`verify`]).

pub mod health;
pub mod health_report;
pub mod mint;
pub mod ops;
pub mod ring;
pub mod rotate;
pub mod verify;

pub use ring::{auth_header, KeyRing, Pick, RingKey, Rings, ECHO_WINDOW};
