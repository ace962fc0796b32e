//! What `keygate scan` prints: a table for people, one JSON array, or SARIF
//! 2.1.0 for code-scanning upload (one rule per kind of key, one result per
//! finding). Keys only masked, in every form.

use serde_json::{json, Value};

use super::found::Location;
use super::Finding;
use crate::providers::Kind;

/// The rule id of keygate's own client keys.
const CLIENT_RULE: &str = "keygate-client-key";

/// The table: location, whose key and what, masked key, reading.
pub fn table(findings: &[Finding], skipped: usize) {
    if findings.is_empty() {
        println!("(no key found)");
    }
    let rows: Vec<[String; 4]> = findings
        .iter()
        .map(|f| {
            [
                f.hit.location.display(),
                format!("{} {}", f.hit.found.provider, f.hit.found.what),
                f.masked.clone(),
                f.reading(),
            ]
        })
        .collect();
    let width = |i: usize| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0);
    let (w0, w1, w2) = (width(0), width(1), width(2));
    for [location, what, masked, reading] in &rows {
        println!("{location:<w0$}  {what:<w1$}  {masked:<w2$}  {reading}");
    }
    if skipped > 0 {
        println!("({skipped} binary, oversized or unreadable file(s) skipped)");
    }
}

/// One JSON array.
pub fn json(findings: &[Finding]) {
    let rows: Vec<Value> = findings
        .iter()
        .map(|f| {
            let mut row = json!({
                "location": f.hit.location.display(),
                "provider": f.hit.found.provider,
                "kind": f.hit.found.kind,
                "what": f.hit.found.what,
                "key": f.masked,
                "reading": f.reading(),
                "usable": f.usable(),
                "verified": f.liveness.map(super::verify::Liveness::as_str),
                "imported_as": f.imported,
            });
            if let Some((path, line, column)) = f.hit.location.in_file() {
                row["path"] = json!(path);
                row["line"] = json!(line);
                row["column"] = json!(column);
            }
            if let Some(commit) = f.hit.location.commit() {
                row["commit"] = json!(commit);
            }
            if let Location::Env { variable } = &f.hit.location {
                row["variable"] = json!(variable);
            }
            row
        })
        .collect();
    println!("{}", Value::Array(rows));
}

/// The rule a finding falls under: its kind's, or keygate's client keys'.
fn rule_id(finding: &Finding) -> String {
    finding
        .hit
        .found
        .kind
        .map_or_else(|| CLIENT_RULE.to_owned(), |kind| format!("{kind}-key"))
}

/// Every rule: one per kind whose keys have a known shape, and client keys.
fn rules() -> Vec<(String, String)> {
    let mut rules: Vec<(String, String)> = Kind::all()
        .filter(|k| !k.exact_formats().is_empty())
        .map(|k| {
            (
                format!("{}-key", k.as_str()),
                format!("{} API key", k.display_name()),
            )
        })
        .collect();
    rules.push((CLIENT_RULE.to_owned(), "keygate client key".to_owned()));
    rules
}

/// SARIF 2.1.0: one run, one rule per kind, one result per finding.
pub fn sarif(findings: &[Finding]) {
    let rules = rules();
    let results: Vec<Value> = findings
        .iter()
        .map(|f| {
            let rule = rule_id(f);
            let index = rules.iter().position(|(id, _)| *id == rule);
            let message = format!(
                "{} {} {}: {}",
                f.hit.found.provider,
                f.hit.found.what,
                f.masked,
                f.reading()
            );
            let mut result = json!({
                "ruleId": rule,
                "level": if f.usable() { "error" } else { "note" },
                "message": { "text": message },
            });
            if let Some(index) = index {
                result["ruleIndex"] = json!(index);
            }
            match (&f.hit.location, f.hit.location.in_file()) {
                (_, Some((path, line, column))) => {
                    result["locations"] = json!([physical(path, line, column)]);
                }
                (Location::Env { variable }, None) => {
                    result["locations"] = json!([{
                        "logicalLocations": [{ "name": variable, "kind": "variable" }]
                    }]);
                }
                _ => {}
            }
            if let Some(commit) = f.hit.location.commit() {
                result["properties"] = json!({ "commit": commit });
            }
            result
        })
        .collect();
    let rules: Vec<Value> = rules
        .iter()
        .map(|(id, name)| {
            json!({
                "id": id,
                "name": id,
                "shortDescription": { "text": format!("{name} in the clear") },
                "fullDescription": { "text": format!("{name} found in the clear. If it is in use, take it out of the file and out of use: `keygate key burn KEY_ID` or `keygate client revoke NAME`.") },
                "defaultConfiguration": { "level": "error" },
            })
        })
        .collect();
    let log = json!({
        "$schema": "https://json.schemastore.org/sarif-2.1.0.json",
        "version": "2.1.0",
        "runs": [{
            "tool": { "driver": {
                "name": "keygate",
                "version": env!("CARGO_PKG_VERSION"),
                "rules": rules,
            }},
            "results": results,
        }],
    });
    println!("{log}");
}

/// A SARIF physical location; the path as a relative URI reference.
fn physical(path: &str, line: usize, column: usize) -> Value {
    json!({
        "physicalLocation": {
            "artifactLocation": { "uri": uri(path) },
            "region": { "startLine": line, "startColumn": column },
        }
    })
}

/// `path` as a URI reference: `/` separators, `./` dropped, everything
/// outside the unreserved set and `/` percent-encoded.
fn uri(path: &str) -> String {
    let path = path.strip_prefix("./").unwrap_or(path).replace('\\', "/");
    let mut out = String::with_capacity(path.len());
    for byte in path.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~/".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_become_uri_references() {
        assert_eq!(uri("./src/a b.rs"), "src/a%20b.rs");
        assert_eq!(uri("config/é.toml"), "config/%C3%A9.toml");
    }
}
