//! `keygate::config::Config::from_toml` on arbitrary text. Never panics; a
//! config it accepts satisfies the invariants `Config::validate` promises.

#![no_main]

use keygate::config::Config;
use libfuzzer_sys::fuzz_target;

fn check(text: &str) {
    let config = match Config::from_toml(text) {
        Ok(config) => config,
        Err(err) => {
            let _ = err.to_string();
            return;
        }
    };
    let server = &config.server;
    assert!(server.max_connections >= 1);
    assert!(server.retry_buffer <= server.max_request_body);
    assert_eq!(server.tls_cert.is_some(), server.tls_key.is_some());
    assert!(config.providers.contains_key(&config.routing.default));
    for (name, provider) in &config.providers {
        assert_eq!(&provider.name, name);
        assert!(provider.prefix.starts_with('/') && provider.prefix.len() >= 2);
        assert_ne!(provider.prefix, "/v1");
        assert!(!provider.prefix.ends_with('/'));
    }
    for (_, provider) in &config.routing.models {
        assert!(config.providers.contains_key(provider));
    }
    assert!(config
        .routing
        .models
        .windows(2)
        .all(|w| w[0].0.len() >= w[1].0.len()));
    let _ = format!("{config:?}");
}

fuzz_target!(|data: &[u8]| {
    match std::str::from_utf8(data) {
        Ok(text) => check(text),
        Err(_) => check(&String::from_utf8_lossy(data)),
    }
});
