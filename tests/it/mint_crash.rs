//! Crash safety of the minted rotation (docs/design.md §12; docs/keys.md
//! "Crash safety"): `keygate key rotate --mint` killed with SIGKILL right
//! after each of its steps — created at the provider, recorded in the vault,
//! verified, promoted, deleted at the provider — 20 runs at each (a run
//! that resumes an interrupted one completes instead), then run
//! once more, always converges: exactly one current key, minted and working,
//! no orphan left at the provider, the hand-added key never deleted there.
//! The kill comes from the debug build's crash points
//! (`KEYGATE_TEST_CRASH_AT`), which SIGKILL the process as `kill -9` would.

use crate::support::keys::key_list;
use crate::support::management::{minting_keygate, Api, Management, OPENAI_ADMIN};
use crate::support::{Keygate, OPENAI_KEY};

/// Kills per step.
const RUNS: usize = 20;

const ROTATE: &[&str] = &[
    "key",
    "rotate",
    "openai",
    "--mint",
    "--grace",
    "0s",
    "--propagation-wait",
    "5s",
];

/// Registers the keys created since the first `registered` as secrets (the
/// leak check searches every capture for each); returns the new count.
fn register_new(kg: &Keygate, management: &Management, registered: usize) -> usize {
    let created = management.created();
    for key in &created[registered..] {
        kg.register_secret(&key.secret);
    }
    created.len()
}

fn assert_converged(kg: &Keygate, management: &Management, after: &str) {
    let list = key_list(kg);
    let current: Vec<_> = list.iter().filter(|k| k["state"] == "current").collect();
    assert_eq!(
        current.len(),
        1,
        "after {after}: one current key: {list:#?}"
    );
    let current = current[0];
    let current_id = current["minted"]["provider_id"]
        .as_str()
        .unwrap_or_else(|| panic!("after {after}: the current key is not minted: {current}"));
    assert!(
        list.iter().all(|k| k["state"] != "pending"),
        "after {after}: a pending key was left: {list:#?}"
    );
    assert!(
        list.iter().all(|k| k["state"] == "current"
            || k["at_provider"].is_null()
            || k["at_provider"]["pending"] == false),
        "after {after}: a delete is still owed: {list:#?}"
    );
    let live_minted: Vec<_> = management.live().into_iter().filter(|k| k.minted).collect();
    assert_eq!(
        live_minted
            .iter()
            .map(|k| k.provider_id.as_str())
            .collect::<Vec<_>>(),
        vec![current_id],
        "after {after}: the provider holds exactly the current minted key (no orphan)"
    );
    assert!(
        management
            .live()
            .iter()
            .any(|k| k.provider_id == "key_hand_1"),
        "after {after}: the hand-added key was deleted at the provider"
    );
    // No key lost: the current key works.
    kg.run(&["key", "verify", "openai"])
        .assert_ok(&format!("key verify after {after}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_minted_rotation_killed_after_any_step_converges_on_one_minted_key() {
    let management = Management::start(Api::OpenAi, OPENAI_ADMIN).await;
    let (kg, _inference) = minting_keygate(&management).await;
    management.seed("made by hand", "key_hand_1", OPENAI_KEY);
    let mut registered = 0;
    for step in ["created", "recorded", "verified", "promoted", "deleted"] {
        let mut killed = 0;
        for run in 0..RUNS {
            let out = kg.run_with(ROTATE, None, &[("KEYGATE_TEST_CRASH_AT", step)]);
            registered = register_new(&kg, &management, registered);
            // A run that resumes a pending key does not pass `created` or
            // `recorded` again: it completes, and the next one is killed.
            match out.code {
                None => killed += 1,
                Some(0) => {}
                Some(code) => panic!(
                    "run {run} (kill after `{step}`) failed with {code}: {}\n{}",
                    out.stdout, out.stderr
                ),
            }
        }
        assert!(
            killed >= RUNS / 2,
            "only {killed} of {RUNS} runs were killed after `{step}`"
        );
        let out = kg.run(ROTATE);
        registered = register_new(&kg, &management, registered);
        out.assert_ok(&format!("rotate --mint after {RUNS} kills after `{step}`"));
        assert_converged(&kg, &management, &format!("kills after `{step}`"));
    }
    // Orphans were really made and really cleared.
    let created = management.created();
    assert!(created.len() > RUNS, "{}", created.len());
}
