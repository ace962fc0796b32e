//! Writes the committed seed corpora under `fuzz/corpus/<target>/seed-*`.
//!
//! Run from `fuzz/`: `cargo run --example gen_seeds`. Vaults and client keys
//! come from keygate's own API (`Vault::create`, `client_key::generate`), so the
//! seeds change on every run (fresh nonces and keys); re-run only to refresh.

// A seed writer fails loudly on a broken setup: that is its error handling.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use keygate::vault::secret::Secret;
use keygate::vault::document::{ClientRecord, Document, KeyState, UpstreamKey};
use keygate::vault::{Kek, Vault};
use keygate_fuzz::{kek, seal_raw};

fn corpus(target: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn put(target: &str, name: &str, bytes: &[u8]) {
    std::fs::write(corpus(target).join(format!("seed-{name}")), bytes).unwrap();
}

fn document() -> Document {
    let secret = Secret::new("sk-test-fake-not-a-real-key-0000000000ABCD".to_owned());
    let mut doc = Document::default();
    doc.keys.push(UpstreamKey {
        id: "key_3f9a1c20".into(),
        provider: "openai".into(),
        label: Some("prod".into()),
        fingerprint: secret.fingerprint(),
        secret: Some(secret),
        state: KeyState::Current,
        created: 1_700_000_000,
        state_changed: 1_700_000_000,
        last_verified: Some(1_700_000_100),
        reason: None,
        grace_until: None,
    });
    doc.keys.push(UpstreamKey {
        id: "key_00c0ffee".into(),
        provider: "xai".into(),
        label: None,
        fingerprint: "xai…WXYZ".into(),
        secret: None,
        state: KeyState::Retired,
        created: 1_600_000_000,
        state_changed: 1_650_000_000,
        last_verified: None,
        reason: Some("grace over".into()),
        grace_until: Some(1_650_000_000),
    });
    let (_, digest) = keygate::vault::client_key::generate().unwrap();
    doc.clients.push(ClientRecord {
        name: "team-a".into(),
        key_sha256: digest.to_hex(),
        limits: keygate::vault::document::ClientLimits {
            rpm: Some(60),
            tpm: Some(100_000),
            budget_tokens: None,
        },
        created: 1_700_000_000,
        revoked: None,
        old_key: None,
    });
    doc
}

fn vault_seeds() {
    let dir = std::env::temp_dir().join(format!("keygate-seeds-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let raw = Vault::new(dir.join("raw.vault"));
    raw.create(&kek(), &document()).unwrap();
    let real = std::fs::read(raw.path()).unwrap();
    assert!(raw.load(&kek()).is_ok());
    put("vault_open", "real.vault", &real);
    for len in [0, 7, 8, 11, 12, 57, 117, 144, 145, real.len() - 1] {
        put("vault_open", &format!("real-truncated-{len}.vault"), &real[..len]);
    }
    // The same header claiming a passphrase at the largest accepted Argon2
    // costs: with a raw key this must be refused before any derivation.
    let mut argon = real.clone();
    argon[20] = 1;
    argon[21..25].copy_from_slice(&(1024u32 * 1024).to_be_bytes());
    argon[25..29].copy_from_slice(&10u32.to_be_bytes());
    argon[29..33].copy_from_slice(&16u32.to_be_bytes());
    put("vault_open", "argon2-max-header.vault", &argon);
    // A vault really written under a passphrase (Argon2 at the write costs, once).
    let pass = Vault::new(dir.join("pass.vault"));
    pass.create(
        &Kek::Passphrase(Secret::new("correct horse battery staple".into())),
        &Document::default(),
    )
    .unwrap();
    put("vault_open", "passphrase.vault", &std::fs::read(pass.path()).unwrap());
    // The harness's own sealing must produce what keygate opens.
    let json = serde_json::to_vec(&document()).unwrap();
    let sealed = seal_raw(3, &json);
    let check = Vault::new(dir.join("sealed.vault"));
    keygate_fuzz_write(check.path(), &sealed);
    let loaded = check.load(&kek()).expect("seal_raw output opens");
    assert_eq!(loaded.generation, 3);
    put("vault_open", "harness-sealed.vault", &sealed);
    std::fs::remove_dir_all(&dir).unwrap();

    put("vault_document", "full.json", &json);
    put("vault_document", "empty-object.json", b"{}");
    put(
        "vault_document",
        "short-secret.json",
        br#"{"keys":[{"id":"k","provider":"p","secret":"abc","fingerprint":"","state":"pending","created":0,"state_changed":0}],"clients":[]}"#,
    );
    put("vault_document", "not-json.json", b"KGVAULT\0");
}

fn keygate_fuzz_write(path: &Path, bytes: &[u8]) {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .unwrap();
    file.write_all(bytes).unwrap();
}

/// An `sse_tap` input: control byte, chunk lengths, body.
fn tap_input(ctl: u8, plan: &[u8], body: &[u8]) -> Vec<u8> {
    assert_eq!(usize::from(ctl & 0x0f), plan.len());
    let mut out = vec![ctl];
    out.extend_from_slice(plan);
    out.extend_from_slice(body);
    out
}

fn sse_seeds() {
    // CRLF, a comment, a multi-byte character split by the chunking, usage-only chunk.
    let stream: &[u8] = b"data: {\"choices\":[{\"delta\":{\"content\":\"h\xc3\xa9\"}}],\"usage\":null}\r\n\r\n: ping\n\ndata: {\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":4,\"total_tokens\":7}}\n\ndata: [DONE]\n\n";
    put("sse_tap", "crlf-comment-utf8.sse", &tap_input(0x03, &[41, 0, 1], stream));
    // Lone CR line endings, multi-line data, no space after the colon, a field
    // that is not data, a usage object without total_tokens, an unterminated tail.
    let stream: &[u8] = b"event: x\rdata:{\"choices\":[],\r data: \"usage\": {\"input_tokens\":5,\"output_tokens\":7}}\r\rdata: {\"choices\": [ ], \"usage\":{\"prompt_tokens\":1}}\n\ndata: tail";
    put("sse_tap", "cr-multiline-tail.sse", &tap_input(0x02, &[9, 1], stream));
    // A stream like the benchmark's, one chunk.
    let mut bench = Vec::new();
    for n in 0..3 {
        bench.extend_from_slice(format!("data: {{\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"token {n} \"}},\"finish_reason\":null}}],\"usage\":null}}\n\n").as_bytes());
    }
    bench.extend_from_slice(b"data: {\"id\":\"chatcmpl-1\",\"choices\":[],\"usage\":{\"prompt_tokens\":20,\"completion_tokens\":2000,\"total_tokens\":2020}}\n\ndata: [DONE]\n\n");
    put("sse_tap", "bench-like.sse", &tap_input(0x00, &[], &bench));
    // JSON and opaque bodies.
    let json: &[u8] = br#"{"id":"x","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"hi"}}],"usage":{"prompt_tokens":12,"completion_tokens":30,"total_tokens":42}}"#;
    put("sse_tap", "json-body.json", &tap_input(0xF2, &[10, 20], json));
    put(
        "sse_tap",
        "responses-api.json",
        &tap_input(
            0xF0,
            &[],
            br#"{"type":"response.completed","response":{"usage":{"input_tokens":5,"output_tokens":7}}}"#,
        ),
    );
    // Anthropic's stream: input (and cache reads) in message_start, the
    // cumulative output in the last message_delta; the counts merge.
    let anthropic: &[u8] = b"event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"content\":[],\"usage\":{\"input_tokens\":25,\"cache_creation_input_tokens\":0,\"cache_read_input_tokens\":8,\"output_tokens\":1}}}\n\nevent: ping\ndata: {\"type\": \"ping\"}\n\nevent: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hi\"}}\n\nevent: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":15}}\n\nevent: message_stop\ndata: {\"type\":\"message_stop\"}\n\n";
    put("sse_tap", "anthropic-stream.sse", &tap_input(0x02, &[30, 7], anthropic));
    put("sse_tap", "opaque.bin", &tap_input(0xE1, &[3], b"data: x\n\n\xff\x00"));
}

fn client_key_seeds() {
    let (key, _) = keygate::vault::client_key::generate().unwrap();
    let key = key.expose().to_owned();
    put("client_key", "valid.txt", key.as_bytes());
    let mut typo = key.clone().into_bytes();
    let last = typo.len() - 1;
    typo[last] = if typo[last] == b'A' { b'B' } else { b'A' };
    put("client_key", "bad-checksum.txt", &typo);
    put("client_key", "truncated.txt", &key.as_bytes()[..44]);
    put("client_key", "bearer.txt", format!("Bearer {key}").as_bytes());
    put("client_key", "prefix-only.txt", b"kg_");
    put("client_key", "non-alnum.txt", b"kg_0123456789abcdefghijklmnopqrstuvwxyz-_+/=ABCD");
    put("client_key", "multibyte.txt", "kg_ééééééééééééééééééééé".as_bytes());
    put("client_key", "sk-key.txt", b"sk-test-fake-not-a-real-key-0000000000AB");
}

fn config_seeds() {
    put("config", "default.toml", keygate::config::DEFAULT_TOML.as_bytes());
    put("config", "empty.toml", b"");
    put(
        "config",
        "overrides.toml",
        br#"[server]
listen = "0.0.0.0:9000"
max_request_body = 1048576
retry_buffer = "64MiB"
tls_cert = ""

[providers.anthropic]
base_url = "https://api.anthropic.com/v1/"
auth = "x-api-key"

[routing]
default = "anthropic"
models = { "claude-" = "anthropic", "gpt-" = "openai", "gpt-4o" = "openai" }
"#,
    );
    put(
        "config",
        "invalid.toml",
        b"[server]\nmax_connections = 0\nheader_timeout = \"10 fortnights\"\n[routing]\ndefault = \"nope\"\n",
    );
}

fn main() {
    vault_seeds();
    sse_seeds();
    client_key_seeds();
    config_seeds();
    println!("seeds written under {}", corpus("").display());
}
