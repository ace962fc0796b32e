//! The usual test world, built in one call: mocks, a keygate pointing at
//! them with keys and a client in its vault, and `keygate serve` running.

use super::client::Req;
use super::mock::{AuthStyle, Mock};
use super::{eventually, Keygate, KeygateBuilder, Server, OPENAI_KEY, RELOAD_WAIT, XAI_KEY};

/// The usual test world: two recording mocks (openai with [`OPENAI_KEY`], xai with
/// [`XAI_KEY`]), a keygate configured for them with both keys in its vault, one
/// client `app`, and `keygate serve` running. Fields drop in order: the server
/// stops first, then the leak check runs.
pub struct Env {
    pub server: Server,
    pub kg: Keygate,
    pub openai: Mock,
    pub xai: Mock,
    pub client_key: String,
}

type Tweak = Box<dyn FnOnce(KeygateBuilder) -> KeygateBuilder>;

/// How to build an [`Env`]: config tweaks, and which providers get no key.
#[derive(Default)]
pub struct EnvSetup {
    tweaks: Vec<Tweak>,
    no_key: Vec<String>,
    extra_keys: Vec<(String, String, Vec<String>)>,
    serve_env: Vec<(String, String)>,
}

impl Env {
    /// The standard world.
    pub async fn start() -> Env {
        Env::setup().start().await
    }

    pub fn setup() -> EnvSetup {
        EnvSetup::default()
    }
}

impl EnvSetup {
    /// Change the config after the providers point at the mocks.
    pub fn config(mut self, f: impl FnOnce(KeygateBuilder) -> KeygateBuilder + 'static) -> Self {
        self.tweaks.push(Box::new(f));
        self
    }

    /// Also add this upstream key (after the standard ones) with these `key add` flags.
    pub fn key(mut self, provider: &str, secret: &str, flags: &[&str]) -> Self {
        self.extra_keys.push((
            provider.to_string(),
            secret.to_string(),
            flags.iter().map(|f| f.to_string()).collect(),
        ));
        self
    }

    /// Start `keygate serve` with this extra environment variable
    /// (e.g. `KEYGATE_ADMIN_TOKEN`); the CLI commands do not get it.
    pub fn serve_env(mut self, key: &str, value: &str) -> Self {
        self.serve_env.push((key.to_string(), value.to_string()));
        self
    }

    /// Put no key for this provider in the vault.
    pub fn no_key(mut self, provider: &str) -> Self {
        self.no_key.push(provider.to_string());
        self
    }

    pub async fn start(self) -> Env {
        let openai = Mock::start(&[OPENAI_KEY], AuthStyle::Bearer).await;
        let xai = Mock::start(&[XAI_KEY], AuthStyle::Bearer).await;
        let mut b = KeygateBuilder::new()
            .provider("openai", &openai.url(), "bearer")
            .provider("xai", &xai.url(), "bearer");
        for t in self.tweaks {
            b = t(b);
        }
        for (name, mock) in [("openai", &openai), ("xai", &xai)] {
            if let Some(auth) = b.provider_auth(name) {
                mock.set_auth(AuthStyle::from_config(&auth));
            }
        }
        let kg = Keygate::new(&b);
        kg.vault_init();
        for (name, key) in [("openai", OPENAI_KEY), ("xai", XAI_KEY)] {
            if !self.no_key.iter().any(|n| n == name) {
                kg.add_key(name, key);
            }
        }
        for (provider, secret, flags) in &self.extra_keys {
            let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
            kg.add_key_with(provider, secret, &flags);
        }
        let client_key = kg.add_client("app");
        let serve_env: Vec<(&str, &str)> = self
            .serve_env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let server = kg.serve_with(&serve_env);
        Env {
            server,
            kg,
            openai,
            xai,
            client_key,
        }
    }
}

impl Env {
    /// A chat completion request with this model, authenticated as client `app`.
    pub fn chat(&self, model: &str) -> Req {
        self.chat_with(&super::chat_body(model))
    }

    /// The same request with `"stream": true`.
    pub fn chat_stream(&self, model: &str) -> Req {
        let mut body = super::chat_body(model);
        body["stream"] = serde_json::json!(true);
        self.chat_with(&body)
    }

    /// Waits (bounded by [`RELOAD_WAIT`]) until the server serves the vault
    /// file's generation: every CLI write so far is live. Panics naming `what`.
    pub async fn wait_until_live(&self, what: &str) {
        let live = eventually(RELOAD_WAIT, || async {
            let file = self.kg.vault_file_generation()?;
            (self.server.vault_generation().await == file).then_some(())
        })
        .await;
        assert!(
            live.is_some(),
            "after {what}, the server did not serve the vault file's generation {:?} within {RELOAD_WAIT:?}",
            self.kg.vault_file_generation()
        );
    }

    fn chat_with(&self, body: &serde_json::Value) -> Req {
        Req::post("/v1/chat/completions")
            .bearer(&self.client_key)
            .json(body)
    }
}
