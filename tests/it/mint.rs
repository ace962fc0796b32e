//! Keys keygate creates at the provider (docs/design.md §2 `key rotate
//! --mint`, §12; docs/keys.md "Keys keygate creates for you"): against mock
//! management APIs with the providers' real paths and answer shapes, the
//! minted key is created, recorded with the provider's id, verified (waiting
//! while it propagates), promoted, and carries traffic; the old key stays as
//! the fallback. A failing management API gives a clear error naming the
//! provider and status, exit 1, and nothing promoted. The management
//! credential is registered as a secret, so the leak check searches every
//! capture for it.

use std::time::Duration;

use crate::support::keygate::Out;
use crate::support::keys::{key_list, key_of, key_row};
use crate::support::management::{
    admin_table, set_admin, Api, Management, OPENAI_ADMIN, OPENROUTER_ADMIN, XAI_ADMIN,
};
use crate::support::mock::{closed_port_url, Mock};
use crate::support::provider_answers::Flavor;
use crate::support::{Env, Keygate, KeygateBuilder, OPENAI_KEY, XAI_KEY};

/// `keygate key rotate PROVIDER --mint …` with a short propagation wait.
fn rotate_mint(kg: &Keygate, provider: &str, extra: &[&str]) -> Out {
    let mut args = vec![
        "key",
        "rotate",
        provider,
        "--mint",
        "--propagation-wait",
        "10s",
    ];
    args.extend_from_slice(extra);
    kg.run(&args)
}

async fn minted_key_carries_traffic(api: Api, provider: &str, admin: &str) {
    let management = Management::start(api, admin).await;
    let table = admin_table(provider, api, &management.url());
    // OpenRouter plays the `openai` provider of the usual world, as kind openrouter.
    let env = Env::setup()
        .config(move |b| {
            let b = b.extra(&table);
            match api {
                Api::OpenRouter => b.provider_set("openai", "kind", "\"openrouter\""),
                _ => b,
            }
        })
        .start()
        .await;
    if api == Api::OpenRouter {
        env.openai.set_flavor(Flavor::OpenRouter);
    }
    let (inference, old, model): (&Mock, &str, &str) = match api {
        Api::Xai => (&env.xai, XAI_KEY, "grok-3"),
        _ => (&env.openai, OPENAI_KEY, "gpt-4o"),
    };
    management.connect(inference.key_adder());
    // Like a real new key: the inference API accepts it only after a moment,
    // so the first verification is refused and keygate must wait it out.
    management.set_propagation(Duration::from_millis(800));
    set_admin(&env.kg, provider, admin);

    let out = rotate_mint(&env.kg, provider, &["--grace", "1h"]);
    let created = management.created();
    for key in &created {
        env.kg.register_secret(&key.secret);
    }
    out.assert_ok("key rotate --mint");
    assert_eq!(created.len(), 1, "exactly one key created: {created:?}");
    let minted = &created[0];
    assert!(
        minted.name.starts_with(&format!("keygate-{provider}-")),
        "{minted:?}"
    );
    assert!(out.stdout.contains(&minted.provider_id), "{}", out.stdout);
    assert!(
        out.stdout.contains("does not work yet"),
        "no wait reported: {}",
        out.stdout
    );
    let call = management.server.last();
    assert_eq!(
        call.header("authorization"),
        Some(format!("Bearer {admin}"))
    );
    assert_eq!(call.json()["name"], minted.name.as_str());

    let list = key_list(&env.kg);
    let new_row = key_row(&list, provider, &minted.secret);
    assert_eq!(new_row["state"], "current", "{list:#?}");
    assert_eq!(
        new_row["minted"]["provider_id"],
        minted.provider_id.as_str()
    );
    assert_eq!(new_row["minted"]["name"], minted.name.as_str());
    assert!(new_row["last_verified"].as_u64().is_some(), "{new_row}");
    let old_row = key_row(&list, provider, old);
    assert_eq!(old_row["state"], "previous", "{list:#?}");
    assert!(
        old_row["minted"].is_null(),
        "a hand-added key is not minted: {old_row}"
    );
    let admins = env.kg.run(&["admin-key", "list", "--json"]);
    assert!(
        !admins.stdout.contains("\"last_used\":null"),
        "{}",
        admins.stdout
    );

    env.wait_until_live("key rotate --mint").await;
    let resp = env.server.send(env.chat(model)).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(
        key_of(&inference.last()),
        minted.secret,
        "the minted key carries traffic"
    );
    for seen in env
        .openai
        .requests()
        .iter()
        .chain(env.xai.requests().iter())
    {
        assert!(
            !seen.everything().contains(admin),
            "the management credential reached an inference upstream: {}",
            seen.uri
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_mint_creates_a_service_account_key_that_carries_traffic() {
    minted_key_carries_traffic(Api::OpenAi, "openai", OPENAI_ADMIN).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xai_mint_creates_an_api_key_that_carries_traffic() {
    minted_key_carries_traffic(Api::Xai, "xai", XAI_ADMIN).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openrouter_mint_provisions_a_key_that_carries_traffic() {
    minted_key_carries_traffic(Api::OpenRouter, "openai", OPENROUTER_ADMIN).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_management_api_is_named_and_nothing_is_promoted() {
    let management = Management::start(Api::OpenAi, OPENAI_ADMIN).await;
    let builder = KeygateBuilder::new()
        .provider("openai", &closed_port_url(), "bearer")
        .extra(&admin_table("openai", Api::OpenAi, &management.url()));
    let kg = Keygate::new(&builder);
    kg.vault_init();
    kg.add_key("openai", OPENAI_KEY);
    set_admin(&kg, "openai", OPENAI_ADMIN);
    let before = key_list(&kg);
    for status in [401, 403, 429, 500] {
        management.fail_with(status);
        let out = rotate_mint(&kg, "openai", &[]);
        out.assert_code(1, "key rotate --mint against a failing management API");
        assert!(
            out.stderr.contains("openai management API")
                && out.stderr.contains(&format!("HTTP {status}")),
            "status {status}: {}",
            out.stderr
        );
        let after = key_list(&kg);
        assert_eq!(
            after.len(),
            before.len(),
            "nothing staged on {status}: {after:#?}"
        );
        assert_eq!(key_row(&after, "openai", OPENAI_KEY)["state"], "current");
    }
    // 401 echoed the credential whole: the error shows it masked, never in clear
    // (and the leak check at drop searches every capture for it).
    assert!(management.created().is_empty());
}

#[test]
fn without_credential_or_admin_table_nothing_is_asked_of_the_provider() {
    let kg = Keygate::new(
        &KeygateBuilder::new()
            .provider("openai", &closed_port_url(), "bearer")
            .provider("xai", &closed_port_url(), "bearer")
            .extra(&admin_table("openai", Api::OpenAi, &closed_port_url())),
    );
    kg.vault_init();
    kg.add_key("openai", OPENAI_KEY);
    let out = rotate_mint(&kg, "openai", &[]);
    out.assert_code(2, "--mint without admin-key set");
    assert!(
        out.stderr.contains("keygate admin-key set openai"),
        "{}",
        out.stderr
    );
    let out = rotate_mint(&kg, "xai", &[]);
    out.assert_code(2, "--mint without [providers.xai.admin]");
    assert!(
        out.stderr.contains("[providers.xai.admin]"),
        "{}",
        out.stderr
    );
    assert_eq!(key_list(&kg).len(), 1);
}
