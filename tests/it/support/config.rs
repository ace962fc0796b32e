//! The TOML config a test runs keygate with (docs/design.md §3): both listeners on
//! `127.0.0.1:0`, vault, master key and ledger inside the test's tempdir, one
//! `[providers.NAME]` table per mock, and any tweak a test needs.

use std::path::Path;

/// One provider table of the config, as ordered `key = toml value` pairs.
#[derive(Clone, Debug)]
struct ProviderCfg {
    name: String,
    settings: Vec<(String, String)>,
}

/// The TOML config a test runs keygate with; see docs/design.md §3.
#[derive(Clone, Debug)]
pub struct KeygateBuilder {
    server: Vec<(String, String)>,
    providers: Vec<ProviderCfg>,
    routing: Vec<(String, String)>,
    extra: String,
}

fn quoted(s: &str) -> String {
    toml_string(s)
}

/// A TOML basic string.
/// The HTTP version mock providers see: HTTP/2 in the run with
/// `KEYGATE_TEST_UPSTREAM_HTTP=h2`, else HTTP/1.1.
pub fn upstream_version() -> http::Version {
    match std::env::var("KEYGATE_TEST_UPSTREAM_HTTP").as_deref() {
        Ok("h2") => http::Version::HTTP_2,
        _ => http::Version::HTTP_11,
    }
}

pub fn toml_string(s: &str) -> String {
    serde_json::Value::String(s.to_string()).to_string()
}

impl Default for KeygateBuilder {
    fn default() -> Self {
        KeygateBuilder::new()
    }
}

impl KeygateBuilder {
    /// Both listeners on `127.0.0.1:0`, no providers, `routing.default = "openai"`,
    /// `routing.models = { "grok-" = "xai" }`.
    pub fn new() -> KeygateBuilder {
        KeygateBuilder {
            server: vec![
                ("listen".into(), quoted("127.0.0.1:0")),
                ("admin_listen".into(), quoted("127.0.0.1:0")),
            ],
            providers: Vec::new(),
            routing: vec![
                ("default".into(), quoted("openai")),
                ("models".into(), r#"{ "grok-" = "xai" }"#.into()),
            ],
            extra: String::new(),
        }
    }

    /// Add (or replace) `[providers.NAME]` with `base_url`, `auth`, `prefix = "/NAME"`
    /// (and `http = "…"` from `KEYGATE_TEST_UPSTREAM_HTTP`, which `.ci/run`
    /// sets to `h2` for a second run of the core proxy tests).
    pub fn provider(mut self, name: &str, base_url: &str, auth: &str) -> KeygateBuilder {
        self.providers.retain(|p| p.name != name);
        let mut settings = vec![
            ("base_url".into(), quoted(base_url)),
            ("auth".into(), quoted(auth)),
            ("prefix".into(), quoted(&format!("/{name}"))),
        ];
        if let Ok(http) = std::env::var("KEYGATE_TEST_UPSTREAM_HTTP") {
            settings.push(("http".into(), quoted(&http)));
        }
        self.providers.push(ProviderCfg {
            name: name.to_string(),
            settings,
        });
        self
    }

    /// Set one provider key to a TOML value (`provider_set("xai", "auth", "\"x-api-key\"")`).
    pub fn provider_set(mut self, name: &str, key: &str, toml_value: &str) -> KeygateBuilder {
        let p = self
            .providers
            .iter_mut()
            .find(|p| p.name == name)
            .unwrap_or_else(|| panic!("no provider {name} in the test config"));
        set(&mut p.settings, key, toml_value);
        self
    }

    /// Remove one provider key (to make the config invalid on purpose).
    pub fn provider_unset(mut self, name: &str, key: &str) -> KeygateBuilder {
        if let Some(p) = self.providers.iter_mut().find(|p| p.name == name) {
            p.settings.retain(|(k, _)| k != key);
        }
        self
    }

    /// Append `path` to a provider's `base_url` (an API whose base names its
    /// version, as Gemini's `…/v1beta/openai`).
    pub fn provider_base_path(mut self, name: &str, path: &str) -> KeygateBuilder {
        if let Some(p) = self.providers.iter_mut().find(|p| p.name == name) {
            if let Some((_, v)) = p.settings.iter_mut().find(|(k, _)| k == "base_url") {
                let url: String = serde_json::from_str(v).expect("base_url is a TOML string");
                *v = quoted(&format!("{url}{path}"));
            }
        }
        self
    }

    /// The `auth` of a provider, as configured.
    pub fn provider_auth(&self, name: &str) -> Option<String> {
        let p = self.providers.iter().find(|p| p.name == name)?;
        let (_, v) = p.settings.iter().find(|(k, _)| k == "auth")?;
        serde_json::from_str(v).ok()
    }

    /// Set one `[server]` key to a TOML value (`server("max_request_body", "\"1KiB\"")`).
    pub fn server(mut self, key: &str, toml_value: &str) -> KeygateBuilder {
        set(&mut self.server, key, toml_value);
        self
    }

    /// Set one `[routing]` key to a TOML value.
    pub fn routing(mut self, key: &str, toml_value: &str) -> KeygateBuilder {
        set(&mut self.routing, key, toml_value);
        self
    }

    /// Append raw TOML (new tables) at the end of the file.
    pub fn extra(mut self, toml: &str) -> KeygateBuilder {
        self.extra.push('\n');
        self.extra.push_str(toml);
        self.extra.push('\n');
        self
    }

    pub(super) fn render(&self, dir: &Path) -> String {
        let mut s = String::from("[server]\n");
        for (k, v) in &self.server {
            s.push_str(&format!("{k} = {v}\n"));
        }
        let p = |name: &str| quoted(&dir.join(name).display().to_string());
        s.push_str(&format!(
            "\n[vault]\npath = {}\nmaster_key_file = {}\n",
            p("keygate.vault"),
            p("master.key")
        ));
        s.push_str(&format!("\n[metering]\ndb = {}\n", p("usage.sqlite")));
        for prov in &self.providers {
            s.push_str(&format!("\n[providers.{}]\n", prov.name));
            for (k, v) in &prov.settings {
                s.push_str(&format!("{k} = {v}\n"));
            }
        }
        s.push_str("\n[routing]\n");
        for (k, v) in &self.routing {
            s.push_str(&format!("{k} = {v}\n"));
        }
        s.push_str(&self.extra);
        s
    }
}

fn set(list: &mut Vec<(String, String)>, key: &str, value: &str) {
    match list.iter_mut().find(|(k, _)| k == key) {
        Some(entry) => entry.1 = value.to_string(),
        None => list.push((key.to_string(), value.to_string())),
    }
}
