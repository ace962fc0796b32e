//! The network: client [`listeners`] (h1/h2, TLS, timeouts, drain), the
//! [`head_guard`] every HTTP/1 request head passes first, and the
//! [`upstream`] connection pool, with its HTTP/2 half [`upstream_h2`], and
//! the [`outbound_body`] they send.

pub mod content_coding;
pub mod head_guard;
pub mod listeners;
pub mod outbound_body;
pub mod upstream;
pub mod upstream_h2;
