//! The metering world: a running keygate with recording mocks for openai and
//! xai, several named clients, the admin token and a short flush interval —
//! the setup the usage, limits and skim-bypass tests share — and its ways to
//! read usage back (`keygate usage --json`, `GET /admin/usage`, `/metrics`).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::client::send_h1;
use super::keygate::tail;
use super::mock::AuthStyle;
use super::usage::{rows, Row, Totals};
use super::{chat_body, Keygate, KeygateBuilder, Mock, Req, Server, OPENAI_KEY, XAI_KEY};

/// The admin token every [`World`] serves with (obviously fake; registered as a secret).
pub const ADMIN_TOKEN: &str = "adm-test-Rk4Lp8Vn2Xc6Bm0Qs3Wd7Yf";

/// The flush interval a [`World`] uses unless a test sets another.
pub const FLUSH: Duration = Duration::from_millis(200);

/// How long a test waits for counters to reach the ledger (many flush intervals).
pub const LEDGER_WAIT: Duration = Duration::from_secs(5);

/// How to build a [`World`].
pub struct Opts<'a> {
    /// Clients to create (`client add NAME`), in order.
    pub clients: &'a [&'a str],
    /// `client limits NAME FLAGS...`, run before `serve`.
    pub limits: &'a [(&'a str, &'a [&'a str])],
    /// Extra environment for `serve` (config overrides such as
    /// `KEYGATE_METERING__FLUSH_INTERVAL`); replaces the defaults of the same name.
    pub env: &'a [(&'a str, &'a str)],
    /// Point provider `openai` here instead of at the recording mock.
    pub openai_url: Option<String>,
}

impl Default for Opts<'_> {
    fn default() -> Self {
        Opts {
            clients: &["app"],
            limits: &[],
            env: &[],
            openai_url: None,
        }
    }
}

/// A running keygate with recording mocks for openai and xai (both keys in the
/// vault), named clients, `KEYGATE_ADMIN_TOKEN` set and `flush_interval` 200 ms.
/// Fields drop in order: the server stops first, then the leak check runs.
pub struct World {
    pub server: Server,
    pub kg: Keygate,
    pub openai: Mock,
    pub xai: Mock,
    /// Client name → its `kg_` key.
    pub keys: BTreeMap<String, String>,
    serve_env: Vec<(String, String)>,
}

impl World {
    pub async fn start(opts: Opts<'_>) -> World {
        let openai = Mock::start(&[OPENAI_KEY], AuthStyle::Bearer).await;
        let xai = Mock::start(&[XAI_KEY], AuthStyle::Bearer).await;
        let openai_url = opts.openai_url.clone().unwrap_or_else(|| openai.url());
        let kg = Keygate::new(
            &KeygateBuilder::new()
                .provider("openai", &openai_url, "bearer")
                .provider("xai", &xai.url(), "bearer"),
        );
        kg.register_secret(ADMIN_TOKEN);
        kg.vault_init();
        kg.add_key("openai", OPENAI_KEY);
        kg.add_key("xai", XAI_KEY);
        let mut keys = BTreeMap::new();
        for name in opts.clients {
            keys.insert(name.to_string(), kg.add_client(name));
        }
        for (name, flags) in opts.limits {
            let mut args = vec!["client", "limits", name];
            args.extend_from_slice(flags);
            kg.run(&args).assert_ok("client limits");
        }
        let mut serve_env: Vec<(String, String)> = vec![
            ("KEYGATE_ADMIN_TOKEN".into(), ADMIN_TOKEN.into()),
            (
                "KEYGATE_METERING__FLUSH_INTERVAL".into(),
                format!("{}ms", FLUSH.as_millis()),
            ),
        ];
        for (k, v) in opts.env {
            serve_env.retain(|(name, _)| name != k);
            serve_env.push((k.to_string(), v.to_string()));
        }
        let server = serve(&kg, &serve_env);
        World {
            server,
            kg,
            openai,
            xai,
            keys,
            serve_env,
        }
    }

    /// Start `keygate serve` again (after the previous one exited or was killed).
    pub fn restart(&mut self) {
        self.server = serve(&self.kg, &self.serve_env);
    }

    /// The `kg_` key of a client.
    pub fn key(&self, client: &str) -> &str {
        self.keys
            .get(client)
            .unwrap_or_else(|| panic!("no client {client} in this world"))
    }

    /// A non-streaming chat completion request as `client`.
    pub fn chat(&self, client: &str, model: &str) -> Req {
        Req::post("/v1/chat/completions")
            .bearer(self.key(client))
            .json(&chat_body(model))
    }

    /// A streaming chat completion request as `client`; `include_usage` is the
    /// client's own `stream_options.include_usage` (`None`: no `stream_options`).
    pub fn stream(&self, client: &str, model: &str, include_usage: Option<bool>) -> Req {
        Req::post("/v1/chat/completions")
            .bearer(self.key(client))
            .json(&stream_body(model, include_usage))
    }

    /// `keygate usage --json ARGS...`, parsed.
    pub fn usage_cli(&self, args: &[&str]) -> Value {
        let mut all = vec!["usage", "--json"];
        all.extend_from_slice(args);
        let out = self.kg.run(&all);
        out.assert_ok("usage --json");
        serde_json::from_str(out.stdout.trim()).unwrap_or_else(|e| {
            panic!(
                "`keygate usage --json` did not print JSON ({e}):\n{}",
                out.stdout
            )
        })
    }

    /// The ledger's rows (all clients, last 7 days) as a map.
    pub fn ledger(&self) -> BTreeMap<Row, Totals> {
        rows(&self.usage_cli(&[]))
    }

    /// Poll the ledger until `done` holds (bounded by [`LEDGER_WAIT`]); the last rows.
    pub async fn ledger_until(
        &self,
        what: &str,
        done: impl Fn(&BTreeMap<Row, Totals>) -> bool,
    ) -> BTreeMap<Row, Totals> {
        let deadline = Instant::now() + LEDGER_WAIT;
        loop {
            let rows = self.ledger();
            if done(&rows) {
                return rows;
            }
            assert!(
                Instant::now() < deadline,
                "the ledger never showed {what} within {LEDGER_WAIT:?} (flush_interval {FLUSH:?}); last rows:\n{rows:#?}\n--- serve stderr\n{}",
                tail(&self.server.stderr())
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `GET /admin/usage?QUERY` with the admin token; the JSON it returned.
    pub async fn admin_usage(&self, query: &str) -> Value {
        let path = format!("/admin/usage?{query}");
        let resp = send_h1(self.server.admin, Req::get(&path).bearer(ADMIN_TOKEN)).await;
        self.server
            .record(&format!("admin GET {path}"), resp.everything());
        assert_eq!(resp.status, 200, "GET {path}: {}", resp.text());
        resp.json()
    }

    /// The `/metrics` page.
    pub async fn metrics(&self) -> String {
        let resp = self.server.admin_get("/metrics").await;
        assert_eq!(resp.status, 200, "{}", resp.text());
        resp.text()
    }
}

fn serve(kg: &Keygate, env: &[(String, String)]) -> Server {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    kg.serve_with(&env)
}

/// A streaming chat body; see [`World::stream`].
pub fn stream_body(model: &str, include_usage: Option<bool>) -> Value {
    let mut body = json!({
        "model": model,
        "messages": [{"role": "user", "content": "Count to four."}],
        "stream": true,
    });
    if let Some(include) = include_usage {
        body["stream_options"] = json!({"include_usage": include});
    }
    body
}
