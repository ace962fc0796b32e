//! The inventory (docs/keys.md "Every key at the provider", docs/design.md
//! §15): against a management mock that pages and answers as OpenAI's Admin
//! API does, every key at the provider reads right — managed (minted, and
//! added by hand), orphan (a mint killed between create and record, with
//! the crash-injection hook), unmanaged — over several pages; an unmanaged
//! key is deleted, a managed one in use refused with the provider
//! unchanged; a credential without the list permission, and a 500 on page
//! two, fail the command naming what happened, acting on nothing.

use crate::support::keygate::Out;
use crate::support::keys::{key_list, key_row};
use crate::support::management::{minting_keygate, Api, Calls, Management, OPENAI_ADMIN};
use crate::support::{Keygate, OPENAI_KEY};

/// A key someone made by hand in the console and never gave keygate (obviously fake).
const LAPTOP_KEY: &str = "sk-test-laptop-Gq7Wd2Lx9Zr4Bn6Tk1Yv";

const MINT: &[&str] = &[
    "key",
    "rotate",
    "openai",
    "--mint",
    "--grace",
    "1h",
    "--propagation-wait",
    "5s",
];

/// A keygate whose openai keys are: the hand-added current [`OPENAI_KEY`]
/// (demoted by a minted rotation), a minted current key, an orphan left by
/// a mint killed after `created`, and an unmanaged key made in the console.
async fn world() -> (Keygate, Management, crate::support::Mock) {
    let management = Management::start(Api::OpenAi, OPENAI_ADMIN).await;
    let (kg, inference) = minting_keygate(&management).await;
    management.seed("made by hand", "key_hand_1", OPENAI_KEY);
    kg.register_secret(LAPTOP_KEY);
    management.seed("laptop", "key_laptop", LAPTOP_KEY);
    kg.run(MINT).assert_ok("key rotate --mint");
    let out = kg.run_with(MINT, None, &[("KEYGATE_TEST_CRASH_AT", "created")]);
    assert_eq!(out.code, None, "the mint was to be killed: {}", out.stderr);
    for key in management.created() {
        kg.register_secret(&key.secret);
    }
    (kg, management, inference)
}

fn inventory(kg: &Keygate, args: &[&str]) -> Vec<serde_json::Value> {
    let mut all = vec!["key", "inventory", "openai", "--json"];
    all.extend_from_slice(args);
    let out = kg.run(&all);
    out.assert_ok("key inventory --json");
    serde_json::from_str::<serde_json::Value>(out.stdout.trim())
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

fn row<'a>(rows: &'a [serde_json::Value], provider_key_id: &str) -> &'a serde_json::Value {
    rows.iter()
        .find(|r| r["provider_key_id"] == provider_key_id)
        .unwrap_or_else(|| panic!("no {provider_key_id} in {rows:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_key_at_the_provider_reads_managed_orphan_or_unmanaged_over_several_pages() {
    let (kg, management, _inference) = world().await;
    management.page_size(1);
    let rows = inventory(&kg, &["--unused-for", "30d"]);
    assert_eq!(rows.len(), 4, "{rows:?}");
    let pages = management
        .server
        .requests()
        .iter()
        .filter(|s| s.uri.contains("/api_keys"))
        .count();
    assert!(pages >= 4, "read over {pages} pages");
    let list = key_list(&kg);
    let hand = key_row(&list, "openai", OPENAI_KEY);
    let hand_row = row(&rows, "key_hand_1");
    assert_eq!(
        (hand_row["reading"].as_str(), hand_row["key_id"].as_str()),
        (Some("managed"), hand["id"].as_str())
    );
    assert_eq!(hand_row["state"], "previous");
    let created = management.created();
    let (minted, orphan) = (&created[0], &created[1]);
    let minted_row = row(&rows, &format!("key_{}", minted.provider_id));
    assert_eq!(minted_row["reading"], "managed");
    assert_eq!(minted_row["state"], "current");
    assert_eq!(
        row(&rows, &format!("key_{}", orphan.provider_id))["reading"],
        "orphan"
    );
    let laptop = row(&rows, "key_laptop");
    assert_eq!(laptop["reading"], "unmanaged");
    assert_eq!(laptop["owner"], "user First Last");
    // Last used in 2024: idle for 30 days.
    assert_eq!(laptop["idle"], true);
    assert_eq!(
        laptop["shows"],
        format!("…{}", &LAPTOP_KEY[LAPTOP_KEY.len() - 4..])
    );

    let text = kg.run(&["key", "inventory", "openai"]);
    text.assert_ok("key inventory");
    for expected in [
        "managed key_",
        "(current)",
        "orphan",
        "unmanaged",
        "4 keys: 2 managed, 1 orphan, 1 unmanaged",
    ] {
        assert!(
            text.stdout.contains(expected),
            "{expected}: {}",
            text.stdout
        );
    }
    // The leak check (when `kg` drops) finds no key and no MAC in any of it.
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unmanaged_key_is_deleted_and_a_managed_one_in_use_refused() {
    let (kg, management, _inference) = world().await;
    let minted = management.created()[0].clone();
    let refused = kg.run(&[
        "key",
        "inventory",
        "openai",
        "--delete",
        &format!("key_{}", minted.provider_id),
        "--yes",
    ]);
    refused.assert_code(2, "deleting a managed key in use");
    assert!(
        refused.stderr.contains("still in use") && refused.stderr.contains("--at-provider"),
        "{}",
        refused.stderr
    );
    assert!(management.removals().is_empty(), "the provider was changed");

    let unconfirmed = kg.run_with(
        &["key", "inventory", "openai", "--delete", "key_laptop"],
        Some("no\n"),
        &[],
    );
    unconfirmed.assert_code(2, "an unconfirmed delete");
    assert!(!management.is_deleted("key_laptop"));
    let deleted = kg.run(&[
        "key",
        "inventory",
        "openai",
        "--delete",
        "key_laptop",
        "--yes",
    ]);
    deleted.assert_ok("inventory --delete an unmanaged key");
    assert!(
        deleted.stdout.contains("key_laptop at openai: deleted"),
        "{}",
        deleted.stdout
    );
    assert!(management.is_deleted("key_laptop"));
    // The orphan goes with its service account.
    let orphan = management.created()[1].clone();
    kg.run(&[
        "key",
        "inventory",
        "openai",
        "--delete",
        &format!("key_{}", orphan.provider_id),
        "--yes",
    ])
    .assert_ok("inventory --delete an orphan");
    assert!(management.is_deleted(&orphan.provider_id));
    let rows = inventory(&kg, &[]);
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert!(rows.iter().all(|r| r["reading"] == "managed"), "{rows:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_permission_and_a_failure_on_page_two_act_on_nothing() {
    let (kg, management, _inference) = world().await;
    management.fail(Calls::Lists, 403);
    let out: Out = kg.run(&["key", "inventory", "openai"]);
    out.assert_code(1, "inventory without the list permission");
    assert!(
        out.stderr.contains("lacks the permission to list API keys")
            && out.stderr.contains("Admin API key"),
        "{}",
        out.stderr
    );
    management.heal();
    management.page_size(1);
    management.fail(Calls::LaterPages, 500);
    let out = kg.run(&[
        "key",
        "inventory",
        "openai",
        "--delete",
        "key_laptop",
        "--yes",
    ]);
    out.assert_code(1, "inventory with a 500 on page two");
    assert!(
        out.stderr
            .contains("failed on page 2 of its key list, after 1 keys were read"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("nothing was done"), "{}", out.stderr);
    assert!(
        !management.is_deleted("key_laptop"),
        "a failed listing acted"
    );
    assert!(management.removals().is_empty());
}

/// The admin token of the serve test (obviously fake).
const ADMIN_TOKEN: &str = "adm-test-Kq5Zx8Wd3Hn2Lp7Rv";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_takes_the_inventory_and_tells_when_unmanaged_keys_change() {
    let (kg, management, _inference) = world().await;
    kg.register_secret(ADMIN_TOKEN);
    let server = kg.serve_with(&[
        ("KEYGATE_KEYS__INVENTORY_INTERVAL", "500ms"),
        ("KEYGATE_ADMIN_TOKEN", ADMIN_TOKEN),
    ]);
    let admin = |path: &'static str| {
        let server = &server;
        async move {
            server
                .send_admin(crate::support::Req::get(path).bearer(ADMIN_TOKEN))
                .await
                .json()
        }
    };
    let counts = crate::support::eventually(std::time::Duration::from_secs(10), || async {
        let providers = admin("/admin/providers").await;
        let openai = providers
            .as_array()?
            .iter()
            .find(|p| p["name"] == "openai")?
            .clone();
        (!openai["inventory"].is_null()).then_some(openai["inventory"].clone())
    })
    .await
    .expect("serve never took the inventory");
    assert_eq!(
        (
            counts["managed"].as_u64(),
            counts["orphan"].as_u64(),
            counts["unmanaged"].as_u64()
        ),
        (Some(2), Some(1), Some(1)),
        "{counts}"
    );
    let rows = admin("/admin/inventory").await;
    assert_eq!(rows.as_array().unwrap().len(), 4, "{rows}");
    // The unmanaged key goes: the change is told too.
    kg.run(&[
        "key",
        "inventory",
        "openai",
        "--delete",
        "key_laptop",
        "--yes",
    ])
    .assert_ok("inventory --delete");
    let events = crate::support::eventually(std::time::Duration::from_secs(10), || async {
        let out = kg.run(&["events", "--type", "unmanaged_keys_found", "--json"]);
        let events: Vec<serde_json::Value> = serde_json::from_str(out.stdout.trim()).ok()?;
        (events.len() >= 2).then_some(events)
    })
    .await
    .expect("no unmanaged_keys_found for the change");
    // Newest first: none left, after the one found.
    assert_eq!(events[0]["count"], 0);
    assert_eq!(events[1]["count"], 1);
    assert_eq!(
        events[1]["provider_key_ids"],
        serde_json::json!(["key_laptop"])
    );
    // doctor names the orphan, with what to do.
    let doctor = kg.run(&["doctor"]);
    assert!(
        doctor.stdout.contains("inventory") && doctor.stdout.contains("1 orphan"),
        "{}",
        doctor.stdout
    );
    drop(server);
    drop(management);
}
