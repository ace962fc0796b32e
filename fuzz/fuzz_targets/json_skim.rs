//! The request-body reader: `json_skim::skim` and `json_skim::chat_fields`
//! (skim, else serde's slow path) against serde_json's reading of the same
//! bytes, and the usage-option rewrite built on them (`meter::ask_for_usage`).
//!
//! Checked for every input: when the skim answers, `chat_fields` answers the
//! same (the slow path only runs when the skim cannot judge). When serde_json
//! reads the input as a JSON object, `chat_fields` answers, and each field
//! (`model`, `stream`, `stream_options`, `max_tokens`,
//! `max_completion_tokens`, `max_output_tokens`) is exactly serde's value of
//! that key (the last of repeated keys, escaped keys decoded); the model
//! routed on is serde's string; and the rewrite happens exactly when serde
//! reads a stream (`"stream": true`) whose `stream_options` is absent or an
//! object without `"include_usage": true`, giving a body serde reads as the
//! original plus that option. On bytes serde refuses nothing is claimed
//! beyond not panicking: the upstream refuses them too.

#![no_main]

use keygate::json_skim::{chat_fields, skim, ChatFields};
use libfuzzer_sys::fuzz_target;
use serde_json::{Map, Value};

fn named<'a>(fields: &ChatFields<'a>) -> [(&'static str, Option<&'a [u8]>); 6] {
    [
        ("model", fields.model),
        ("stream", fields.stream),
        ("stream_options", fields.stream_options),
        ("max_tokens", fields.max_tokens),
        ("max_completion_tokens", fields.max_completion_tokens),
        ("max_output_tokens", fields.max_output_tokens),
    ]
}

fn check(data: &[u8], fields: &ChatFields<'_>, object: &Map<String, Value>) {
    for (name, raw) in named(fields) {
        let ours = raw.map(|raw| {
            serde_json::from_slice::<Value>(raw).unwrap_or_else(|e| {
                panic!(
                    "{name}: raw text {:?} is not one JSON value ({e}) in {:?}",
                    String::from_utf8_lossy(raw),
                    String::from_utf8_lossy(data)
                )
            })
        });
        assert_eq!(
            ours.as_ref(),
            object.get(name),
            "{name} of {:?} (checked by serde: {})",
            String::from_utf8_lossy(data),
            fields.checked
        );
    }
    let model = keygate::proxy::route::model_of(Some(fields));
    assert_eq!(
        model.as_deref(),
        object.get("model").and_then(Value::as_str),
        "model of {:?}",
        String::from_utf8_lossy(data)
    );
}

fn check_rewrite(data: &[u8], fields: &ChatFields<'_>, object: &Map<String, Value>) {
    let rewritten = keygate::usage::meter::ask_for_usage(data, fields);
    let options = object.get("stream_options");
    let wants = object.get("stream") == Some(&Value::Bool(true))
        && match options {
            None => true,
            Some(Value::Object(options)) => {
                options.get("include_usage") != Some(&Value::Bool(true))
            }
            Some(_) => false,
        };
    let Some(rewritten) = rewritten else {
        assert!(!wants, "not rewritten: {:?}", String::from_utf8_lossy(data));
        return;
    };
    assert!(
        wants,
        "rewritten needlessly: {:?}",
        String::from_utf8_lossy(data)
    );
    let got: Value = serde_json::from_slice(&rewritten).unwrap_or_else(|e| {
        panic!(
            "the rewrite of {:?} is not JSON ({e}): {:?}",
            String::from_utf8_lossy(data),
            String::from_utf8_lossy(&rewritten)
        )
    });
    let mut want = object.clone();
    let options = want
        .entry("stream_options")
        .or_insert_with(|| Value::Object(Map::new()));
    if let Value::Object(options) = options {
        options.insert("include_usage".into(), Value::Bool(true));
    }
    assert_eq!(
        got,
        Value::Object(want),
        "the rewrite of {:?}: {:?}",
        String::from_utf8_lossy(data),
        String::from_utf8_lossy(&rewritten)
    );
}

fuzz_target!(|data: &[u8]| {
    let fast = skim(data);
    let full = chat_fields(data);
    if let Some(fast) = fast {
        assert_eq!(
            full,
            Some(fast),
            "the skim answered, so chat_fields must answer the same"
        );
    }
    let Ok(Value::Object(object)) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    let fields = full.unwrap_or_else(|| {
        panic!(
            "serde reads a JSON object, chat_fields nothing: {:?}",
            String::from_utf8_lossy(data)
        )
    });
    check(data, &fields, &object);
    check_rewrite(data, &fields, &object);
});
