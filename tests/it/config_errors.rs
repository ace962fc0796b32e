//! Configuration errors (docs/design.md §3): exit code 2 and a message naming the
//! offending key, before anything is served.

use crate::support::config::toml_string;
use crate::support::keygate::Out;
use crate::support::{Keygate, KeygateBuilder};

/// Run `serve` against a broken config; it must exit 2 naming `needle`.
fn assert_config_error(builder: &KeygateBuilder, env: &[(&str, &str)], needle: &str) -> Out {
    let kg = Keygate::new(builder);
    let out = kg.run_with(&["serve"], None, env);
    out.assert_code(2, "serve with a broken config");
    assert!(
        out.stderr.contains(needle),
        "the error must name `{needle}`; stderr:\n{}",
        out.stderr
    );
    assert!(
        !out.stdout.contains("listener on"),
        "nothing may be served with a broken config: {}",
        out.stdout
    );
    out
}

fn base() -> KeygateBuilder {
    KeygateBuilder::new()
        .provider("openai", "http://127.0.0.1:9", "bearer")
        .provider("xai", "http://127.0.0.1:9", "bearer")
}

#[test]
fn unknown_key_is_exit_2_naming_the_key() {
    assert_config_error(&base().server("lisen", "\"127.0.0.1:0\""), &[], "lisen");
}

#[test]
fn bad_duration_is_exit_2_naming_the_key() {
    assert_config_error(
        &base().server("header_timeout", "\"ten parsecs\""),
        &[],
        "header_timeout",
    );
}

#[test]
fn bad_size_is_exit_2_naming_the_key() {
    assert_config_error(
        &base().server("max_request_body", "\"lots\""),
        &[],
        "max_request_body",
    );
}

#[test]
fn provider_without_base_url_is_exit_2_naming_the_provider() {
    let b = base()
        .provider("vllm", "http://127.0.0.1:9", "bearer")
        .provider_unset("vllm", "base_url");
    assert_config_error(&b, &[], "vllm");
}

#[test]
fn unknown_default_route_is_exit_2_naming_it() {
    assert_config_error(&base().routing("default", "\"nope\""), &[], "nope");
}

#[test]
fn environment_override_is_applied_and_checked() {
    assert_config_error(&base(), &[("KEYGATE_ROUTING__DEFAULT", "nope")], "nope");
}

#[test]
fn unknown_command_line_flag_is_exit_2() {
    let kg = Keygate::new(&base());
    let out = kg.run(&["serve", "--no-such-flag"]);
    out.assert_code(2, "serve --no-such-flag");
    assert!(
        out.stderr.contains("--no-such-flag"),
        "stderr: {}",
        out.stderr
    );
}

#[test]
fn errors_name_the_key_in_its_file_or_the_environment_variable() {
    let out = assert_config_error(
        &base().server("listne", "\"127.0.0.1:0\""),
        &[],
        "`server.listne` in ",
    );
    assert!(!out.stderr.contains("default.server"), "{}", out.stderr);
    let out = assert_config_error(
        &base(),
        &[("KEYGATE_SERVER__LISTN", "127.0.0.1:0")],
        "environment variable KEYGATE_SERVER__LISTN",
    );
    assert!(!out.stderr.contains("serde_json"), "{}", out.stderr);
}

#[test]
fn unknown_upstream_protocol_is_exit_2_naming_the_key() {
    assert_config_error(
        &base().provider_set("openai", "http", "\"h3\""),
        &[],
        "http",
    );
}

#[test]
fn an_upstream_ca_file_that_is_missing_or_holds_no_certificate_is_exit_2_naming_the_key() {
    let dir = tempfile::tempdir().expect("temp dir");
    let missing = dir.path().join("missing.pem");
    let out = assert_config_error(
        &base().server("upstream_ca_file", &toml_string(&missing.to_string_lossy())),
        &[],
        "upstream_ca_file",
    );
    assert!(out.stderr.contains("missing.pem"), "{}", out.stderr);
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "not a certificate\n").expect("write");
    let out = assert_config_error(
        &base().server("upstream_ca_file", &toml_string(&garbage.to_string_lossy())),
        &[],
        "upstream_ca_file",
    );
    assert!(out.stderr.contains("no PEM certificate"), "{}", out.stderr);
}
