//! Keys keygate deletes at the provider (docs/design.md §12; docs/keys.md
//! "Keys keygate creates for you"): a minted key whose grace ended is deleted
//! there by the running server within 5 s (OpenAI, xAI, OpenRouter), and by
//! the next CLI write when no server runs; a hand-added key is never deleted;
//! a failing delete is retried and listed as `retired (delete pending)` until
//! it succeeds; a management API that times out or fails half-way leaves
//! nothing unrecorded — the orphan it may have created is found by name and
//! deleted by the next `rotate --mint`.

use std::time::{Duration, Instant};

use crate::support::keygate::Out;
use crate::support::keys::{key_list, key_row};
use crate::support::management::{
    admin_table, minting_keygate, set_admin, Api, Calls, Management, OPENAI_ADMIN,
    OPENROUTER_ADMIN, XAI_ADMIN,
};
use crate::support::metrics::metric_value;
use crate::support::mock::Mock;
use crate::support::provider_answers::Flavor;
use crate::support::{eventually, Env, Keygate, OPENAI_KEY, XAI_KEY};

/// `keygate key rotate PROVIDER --mint …` with short test timings.
fn rotate_mint(kg: &Keygate, provider: &str, extra: &[&str]) -> Out {
    let mut args = vec![
        "key",
        "rotate",
        provider,
        "--mint",
        "--propagation-wait",
        "5s",
    ];
    args.extend_from_slice(extra);
    kg.run(&args)
}

/// Registers every key the mock created as a secret (the leak check looks for them).
fn register_created(kg: &Keygate, management: &Management) {
    for key in management.created() {
        kg.register_secret(&key.secret);
    }
}

async fn old_minted_key_is_deleted_after_its_grace(api: Api, provider: &str, admin: &str) {
    let management = Management::start(api, admin).await;
    let table = admin_table(provider, api, &management.url());
    let env = Env::setup()
        .config(move |b| {
            let b = b.extra(&table);
            match api {
                Api::OpenRouter => b.provider_set("openai", "kind", "\"openrouter\""),
                _ => b,
            }
        })
        .serve_env("KEYGATE_ADMIN_TOKEN", "adm-test-Qw3Er5Ty7Ui9Op1As2Df")
        .start()
        .await;
    env.kg.register_secret("adm-test-Qw3Er5Ty7Ui9Op1As2Df");
    if api == Api::OpenRouter {
        env.openai.set_flavor(Flavor::OpenRouter);
    }
    let (inference, hand_added): (&Mock, &str) = match api {
        Api::Xai => (&env.xai, XAI_KEY),
        _ => (&env.openai, OPENAI_KEY),
    };
    // The hand-added key exists at the provider too, made in its console:
    // deleting it by mistake would show here.
    management.seed("made by hand", "key_hand_1", hand_added);
    management.connect(inference.key_adder());
    set_admin(&env.kg, provider, admin);

    rotate_mint(&env.kg, provider, &["--grace", "0s"]).assert_ok("first rotate --mint");
    let out = rotate_mint(&env.kg, provider, &["--grace", "2s"]);
    let rotated_at = Instant::now();
    register_created(&env.kg, &management);
    out.assert_ok("second rotate --mint");
    let created = management.created();
    assert_eq!(created.len(), 2, "{created:?}");
    let (first, second) = (&created[0], &created[1]);
    assert!(
        !management.is_deleted(&first.provider_id),
        "deleted before its grace ended"
    );

    let deleted = eventually(Duration::from_secs(12), || async {
        management.is_deleted(&first.provider_id).then(Instant::now)
    })
    .await
    .unwrap_or_else(|| {
        panic!(
            "the old minted key was not deleted at the provider: {:#?}\n{}",
            management.created(),
            crate::support::keygate::tail(&env.server.stderr())
        )
    });
    let after = deleted.duration_since(rotated_at);
    assert!(
        after >= Duration::from_millis(1500) && after <= Duration::from_secs(7),
        "deleted {after:?} after a rotation with a 2 s grace (want within 5 s of the grace's end)"
    );
    assert!(!management.is_deleted(&second.provider_id));
    assert!(
        management
            .live()
            .iter()
            .any(|k| k.provider_id == "key_hand_1"),
        "the hand-added key was deleted at the provider"
    );
    assert!(
        management
            .removals()
            .iter()
            .all(|r| !r.uri.contains("key_hand_1")),
        "keygate asked to delete a key it did not mint"
    );

    // The provider has the DELETE; keygate records it in the vault just after.
    let list = eventually(Duration::from_secs(5), || async {
        let list = key_list(&env.kg);
        (key_row(&list, provider, &first.secret)["at_provider"]["pending"] == false).then_some(list)
    })
    .await
    .unwrap_or_else(|| key_list(&env.kg));
    let old = key_row(&list, provider, &first.secret);
    assert_eq!(old["state"], "retired", "{old}");
    assert_eq!(old["at_provider"]["pending"], false, "{old}");
    assert!(old["at_provider"]["done"].as_u64().is_some(), "{old}");
    let hand = key_row(&list, provider, hand_added);
    assert_eq!(hand["state"], "retired");
    assert!(
        hand["at_provider"].is_null(),
        "nothing owed for a hand-added key: {hand}"
    );
    let page = env.server.admin_get("/metrics").await.text();
    assert_eq!(
        metric_value(
            &page,
            "keygate_provider_deletes_total",
            &[("provider", provider), ("result", "ok")]
        ),
        Some(1.0),
        "{page}"
    );
    // The minted key carries traffic now.
    env.wait_until_live("the deletes").await;
    let model = if api == Api::Xai { "grok-3" } else { "gpt-4o" };
    let resp = env.server.send(env.chat(model)).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_old_minted_key_is_deleted_within_5s_of_its_grace() {
    old_minted_key_is_deleted_after_its_grace(Api::OpenAi, "openai", OPENAI_ADMIN).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xai_old_minted_key_is_deleted_within_5s_of_its_grace() {
    old_minted_key_is_deleted_after_its_grace(Api::Xai, "xai", XAI_ADMIN).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openrouter_old_minted_key_is_deleted_within_5s_of_its_grace() {
    old_minted_key_is_deleted_after_its_grace(Api::OpenRouter, "openai", OPENROUTER_ADMIN).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_server_the_next_cli_write_deletes_and_a_failed_delete_stays_pending() {
    let management = Management::start(Api::OpenAi, OPENAI_ADMIN).await;
    let (kg, _inference) = minting_keygate(&management).await;
    rotate_mint(&kg, "openai", &["--grace", "0s"]).assert_ok("rotate --mint 1");
    // The provider refuses deletes for now: the rotation still completes,
    // warns, and the old minted key is listed as delete pending.
    management.fail(Calls::Deletes, 500);
    let out = rotate_mint(&kg, "openai", &["--grace", "0s"]);
    register_created(&kg, &management);
    out.assert_ok("rotate --mint 2 with failing deletes");
    let first = management.created()[0].clone();
    assert!(
        out.stderr.contains("could not be removed at openai") && out.stderr.contains("HTTP 500"),
        "{}",
        out.stderr
    );
    let listing = kg.run(&["key", "list"]);
    listing.assert_ok("key list");
    assert!(
        listing.stdout.contains("retired (delete pending)"),
        "{}",
        listing.stdout
    );
    let row = key_row(&key_list(&kg), "openai", &first.secret);
    assert_eq!(row["at_provider"]["pending"], true, "{row}");
    assert_eq!(row["at_provider"]["attempts"], 1, "{row}");
    assert!(!management.is_deleted(&first.provider_id));

    // The provider works again: the next CLI write deletes it.
    management.heal();
    let out = rotate_mint(&kg, "openai", &["--grace", "0s"]);
    register_created(&kg, &management);
    out.assert_ok("rotate --mint 3");
    assert!(management.is_deleted(&first.provider_id), "{}", out.stdout);
    let created = management.created();
    assert!(
        management.is_deleted(&created[1].provider_id),
        "{}",
        out.stdout
    );
    let live: Vec<_> = created.iter().filter(|k| !k.deleted).collect();
    assert_eq!(live.len(), 1, "one live minted key: {created:#?}");
    let listing = kg.run(&["key", "list"]);
    assert!(
        !listing.stdout.contains("delete pending"),
        "{}",
        listing.stdout
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_delete_quoting_a_live_inference_key_shows_it_nowhere() {
    let management = Management::start(Api::OpenAi, OPENAI_ADMIN).await;
    let (kg, _inference) = minting_keygate(&management).await;
    rotate_mint(&kg, "openai", &["--grace", "0s"]).assert_ok("rotate --mint 1");
    let first = management.created()[0].clone();
    // The provider's failure names the key it could not delete — still a
    // working key, since the delete failed.
    management.fail(Calls::Deletes, 500);
    management.quote_in_failures(&first.secret);
    let out = rotate_mint(&kg, "openai", &["--grace", "0s"]);
    register_created(&kg, &management);
    out.assert_ok("rotate --mint 2 with failing deletes");
    assert!(out.stderr.contains("HTTP 500"), "{}", out.stderr);
    let listed = kg.run(&["key", "list", "--json"]);
    let leaks = crate::support::find_leaks(
        std::slice::from_ref(&first.secret),
        &[
            (
                "rotate output".to_owned(),
                format!("{}{}", out.stdout, out.stderr),
            ),
            ("key list --json".to_owned(), listed.stdout.clone()),
        ],
    );
    assert!(leaks.is_empty(), "{}", leaks.join("\n"));
    let row = key_row(&key_list(&kg), "openai", &first.secret);
    assert!(
        row["at_provider"]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("HTTP 500")),
        "{row}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_delete_is_retried_by_the_server_until_it_succeeds() {
    let management = Management::start(Api::OpenAi, OPENAI_ADMIN).await;
    let table = admin_table("openai", Api::OpenAi, &management.url());
    let env = Env::setup().config(move |b| b.extra(&table)).start().await;
    management.connect(env.openai.key_adder());
    set_admin(&env.kg, "openai", OPENAI_ADMIN);
    rotate_mint(&env.kg, "openai", &["--grace", "0s"]).assert_ok("rotate --mint 1");
    management.fail(Calls::Deletes, 503);
    rotate_mint(&env.kg, "openai", &["--grace", "0s"]).assert_ok("rotate --mint 2");
    register_created(&env.kg, &management);
    let first = management.created()[0].clone();
    // The server keeps trying (1 s, 2 s, … apart) and counts each failure.
    let failed = eventually(Duration::from_secs(8), || async {
        let page = env.server.admin_get("/metrics").await.text();
        metric_value(
            &page,
            "keygate_provider_deletes_total",
            &[("provider", "openai"), ("result", "failed")],
        )
        .filter(|v| *v >= 2.0)
    })
    .await;
    assert!(
        failed.is_some(),
        "the server did not retry the failing delete"
    );
    assert!(!management.is_deleted(&first.provider_id));
    management.heal();
    let deleted = eventually(Duration::from_secs(12), || async {
        management.is_deleted(&first.provider_id).then_some(())
    })
    .await;
    assert!(
        deleted.is_some(),
        "the retried delete never reached the provider"
    );
    let row = eventually(Duration::from_secs(3), || async {
        let row = key_row(&key_list(&env.kg), "openai", &first.secret);
        (row["at_provider"]["pending"] == false).then_some(row)
    })
    .await
    .expect("the delete was not recorded");
    assert!(
        row["at_provider"]["attempts"].as_u64().unwrap() >= 2,
        "{row}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_that_times_out_leaves_an_orphan_the_next_rotation_deletes() {
    let management = Management::start(Api::OpenAi, OPENAI_ADMIN).await;
    let (kg, _inference) = minting_keygate(&management).await;
    // The provider creates the key, but answers only after keygate gave up.
    management.hang(Calls::Creates, Duration::from_secs(2));
    let out = rotate_mint(&kg, "openai", &["--management-timeout", "500ms"]);
    out.assert_code(1, "rotate --mint against a management API that times out");
    assert!(
        out.stderr.contains("did not answer within 500ms")
            && out.stderr.contains("nothing was recorded in the vault")
            && out.stderr.contains("finds it by that name and deletes it"),
        "{}",
        out.stderr
    );
    assert_eq!(key_list(&kg).len(), 1, "nothing staged");
    let orphan = eventually(Duration::from_secs(5), || async {
        management.created().first().cloned()
    })
    .await
    .expect("the mock never created the key");
    kg.register_secret(&orphan.secret);
    management.heal();

    // A listing that fails stops the rotation before anything is created.
    management.fail(Calls::Lists, 500);
    let out = rotate_mint(&kg, "openai", &[]);
    out.assert_code(1, "rotate --mint when the listing fails");
    assert!(
        out.stderr.contains("refused to list its keys: HTTP 500"),
        "{}",
        out.stderr
    );
    assert_eq!(management.created().len(), 1);
    management.heal();

    let out = rotate_mint(&kg, "openai", &[]);
    register_created(&kg, &management);
    out.assert_ok("rotate --mint after the timeout");
    assert!(
        out.stdout.contains(&format!("deleted {}", orphan.name))
            && out.stdout.contains("never recorded it"),
        "{}",
        out.stdout
    );
    assert!(management.is_deleted(&orphan.provider_id));
    let created = management.created();
    assert_eq!(created.len(), 2, "{created:#?}");
    let live: Vec<_> = created.iter().filter(|k| !k.deleted).collect();
    assert_eq!(live.len(), 1, "exactly one live minted key: {created:#?}");
    let row = key_row(&key_list(&kg), "openai", &live[0].secret);
    assert_eq!(row["state"], "current");
}
