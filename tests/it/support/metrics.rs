//! The one reader of keygate's `/metrics` page (Prometheus text exposition
//! format 0.0.4) that every test uses: [`samples`] parses a page into
//! [`Sample`]s, [`metric_value`] sums the samples of one metric that carry
//! the given labels.
//!
//! Small on purpose, but it reads the format properly rather than by substring:
//! label values may hold escaped quotes (`\"`), backslashes and newlines, and
//! commas and braces; values may be `+Inf`, `-Inf`, `NaN` or exponent floats
//! (`1.5e-3`); a trailing timestamp is allowed. A line it cannot read panics,
//! so a malformed page fails the test that reads it.
//!
//! Not the `prometheus-parse` crate: it pulls chrono and regex into the
//! dev-dependency tree, a build cost these 2-core test machines pay on every
//! fresh build, for the ~100 lines below.

/// One sample line: `name{labels} value [timestamp]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    /// In the order the page lists them, unescaped.
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

impl Sample {
    /// The value of label `name`, if the sample has it.
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Whether the sample carries every `(label, value)` of `want`.
    pub fn has(&self, want: &[(&str, &str)]) -> bool {
        want.iter().all(|(k, v)| self.label(k) == Some(*v))
    }
}

/// Every sample on `page` (comments, `# HELP` / `# TYPE` and blank lines
/// skipped); panics on a line that is not a valid sample.
pub fn samples(page: &str) -> Vec<Sample> {
    page.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| parse_line(l).unwrap_or_else(|e| panic!("unparsable metric line ({e}): {l}")))
        .collect()
}

/// The sum of the samples of exactly `name` (a histogram's `_bucket`, `_sum`
/// and `_count` are other names) whose labels include every `labels` pair;
/// `None` when there is none.
pub fn metric_value(page: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples(page)
        .iter()
        .filter(|s| s.name == name && s.has(labels))
        .map(|s| s.value)
        .reduce(|a, b| a + b)
}

fn parse_line(line: &str) -> Result<Sample, &'static str> {
    let name_end = line
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .unwrap_or(line.len());
    let name = &line[..name_end];
    if name.is_empty() || name.starts_with(|c: char| c.is_ascii_digit()) {
        return Err("no metric name");
    }
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(after) = rest.strip_prefix('{') {
        rest = parse_labels(after, &mut labels)?;
    }
    if !rest.starts_with([' ', '\t']) {
        return Err("no space before the value");
    }
    let mut fields = rest.split_ascii_whitespace();
    let value = fields.next().ok_or("no value")?;
    let value = parse_value(value).ok_or("bad value")?;
    if let Some(ts) = fields.next() {
        ts.parse::<i64>().map_err(|_| "bad timestamp")?;
    }
    if fields.next().is_some() {
        return Err("text after the timestamp");
    }
    Ok(Sample {
        name: name.to_string(),
        labels,
        value,
    })
}

/// Parses `a="x",b="y"}` (the text after `{`) into `out`; returns what follows `}`.
fn parse_labels<'a>(
    mut rest: &'a str,
    out: &mut Vec<(String, String)>,
) -> Result<&'a str, &'static str> {
    loop {
        rest = rest.trim_start();
        if let Some(after) = rest.strip_prefix('}') {
            return Ok(after);
        }
        let eq = rest.find('=').ok_or("label without `=`")?;
        let name = rest[..eq].trim();
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err("bad label name");
        }
        rest = rest[eq + 1..]
            .trim_start()
            .strip_prefix('"')
            .ok_or("label value not quoted")?;
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let close = loop {
            match chars.next().ok_or("unterminated label value")? {
                (i, '"') => break i,
                (_, '\\') => match chars.next().ok_or("unterminated escape")?.1 {
                    'n' => value.push('\n'),
                    c @ ('\\' | '"') => value.push(c),
                    _ => return Err("unknown escape in a label value"),
                },
                (_, c) => value.push(c),
            }
        };
        out.push((name.to_string(), value));
        rest = rest[close + 1..].trim_start();
        if let Some(after) = rest.strip_prefix(',') {
            rest = after;
        } else if !rest.starts_with('}') {
            return Err("labels not separated by `,`");
        }
    }
}

/// A sample value: a Go-style float, `+Inf`, `-Inf` or `NaN`.
fn parse_value(text: &str) -> Option<f64> {
    match text {
        "+Inf" | "Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        _ if text.contains(|c: char| c.is_ascii_alphabetic() && c != 'e' && c != 'E') => None,
        _ => text.parse().ok(),
    }
}
