//! The price table: what a million tokens cost, per provider kind and model
//! (docs/clients-and-usage.md "Cost and dollar budgets", docs/design.md §14).
//!
//! Rows come from the table shipped in the binary (`config/prices.toml`,
//! each row with its source and date) and from `[prices."KIND/MODEL"]` (or
//! `"PROVIDER/MODEL"`, for one configured provider) in the config, which
//! override or add. A model matches its exact name, else the longest listed
//! prefix: `gpt-4o-mini` covers `gpt-4o-mini-2024-07-18`.
//!
//! Prices are kept as integer micro-dollars per million tokens, so the cost
//! of an answer — in integer micro-dollars — is exact arithmetic, rounded
//! once.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::shapes::Usage;

/// The embedded table.
pub const EMBEDDED_TOML: &str = include_str!("../../config/prices.toml");

/// One row as written, in dollars per million tokens.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPrice {
    /// Input tokens.
    pub input: f64,
    /// Input tokens read from the provider's prompt cache (default: `input`).
    #[serde(default)]
    pub cached_input: Option<f64>,
    /// Output tokens (reasoning tokens included).
    pub output: f64,
    /// Input tokens written to the prompt cache (Anthropic; default: `input`).
    #[serde(default)]
    pub cache_write: Option<f64>,
    /// Where the numbers come from.
    #[serde(default)]
    pub source: Option<String>,
    /// When that source said so.
    #[serde(default)]
    pub date: Option<String>,
}

#[derive(Deserialize)]
struct RawTable {
    prices: BTreeMap<String, RawPrice>,
}

/// One price, in micro-dollars per million tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Price {
    /// Input.
    pub input: u64,
    /// Cached input.
    pub cached_input: u64,
    /// Output.
    pub output: u64,
    /// Cache writes.
    pub cache_write: u64,
}

impl Price {
    /// What `usage` costs, in micro-dollars (rounded half up, once).
    pub fn cost_micros(&self, usage: &Usage) -> u64 {
        let fresh = usage
            .prompt
            .saturating_sub(usage.cached)
            .saturating_sub(usage.cache_write);
        let per_million = u128::from(fresh) * u128::from(self.input)
            + u128::from(usage.cached) * u128::from(self.cached_input)
            + u128::from(usage.cache_write) * u128::from(self.cache_write)
            + u128::from(usage.completion) * u128::from(self.output);
        u64::try_from((per_million + 500_000) / 1_000_000).unwrap_or(u64::MAX)
    }

    /// The most `input` prompt tokens and `output` completion tokens could
    /// cost (uncached input), in micro-dollars, rounded up.
    pub fn most_micros(&self, input: u64, output: u64) -> u64 {
        let per_million = u128::from(input) * u128::from(self.input.max(self.cache_write))
            + u128::from(output) * u128::from(self.output);
        u64::try_from(per_million.div_ceil(1_000_000)).unwrap_or(u64::MAX)
    }
}

/// A row and where it came from.
#[derive(Debug, Clone)]
pub struct PriceRow {
    /// `KIND/MODEL` or `PROVIDER/MODEL`, as written.
    pub key: String,
    /// The price.
    pub price: Price,
    /// As written (dollars), for `keygate prices`.
    pub raw: RawPrice,
    /// `embedded` or the config file's name.
    pub origin: String,
}

/// Every row, by namespace (a kind or a provider name), then model.
#[derive(Debug, Clone, Default)]
pub struct PriceTable {
    rows: BTreeMap<String, BTreeMap<String, PriceRow>>,
}

/// Micro-dollars per million of a price in dollars per million.
fn micros(dollars: f64, key: &str, field: &str) -> Result<u64, String> {
    if !dollars.is_finite() || !(0.0..=1_000_000.0).contains(&dollars) {
        return Err(format!(
            "prices.\"{key}\".{field} must be a number of dollars per million tokens between 0 and 1000000"
        ));
    }
    Ok((dollars * 1e6).round() as u64)
}

impl PriceTable {
    /// The embedded table, then `overrides` (from `origin`) on top.
    pub fn load(
        overrides: &BTreeMap<String, RawPrice>,
        origin: &str,
    ) -> Result<PriceTable, String> {
        let embedded: RawTable = toml_from_str(EMBEDDED_TOML)
            .map_err(|e| format!("the embedded price table is malformed: {e}"))?;
        let mut table = PriceTable::default();
        for (key, raw) in embedded.prices {
            table.insert(key, raw, "embedded")?;
        }
        for (key, raw) in overrides {
            table.insert(key.clone(), raw.clone(), origin)?;
        }
        Ok(table)
    }

    fn insert(&mut self, key: String, raw: RawPrice, origin: &str) -> Result<(), String> {
        let Some((space, model)) = key
            .split_once('/')
            .filter(|(s, m)| !s.is_empty() && !m.is_empty())
        else {
            return Err(format!(
                "prices.\"{key}\": name a row \"KIND/MODEL\" or \"PROVIDER/MODEL\" (e.g. \"openai/gpt-4o-mini\")"
            ));
        };
        let price = Price {
            input: micros(raw.input, &key, "input")?,
            cached_input: micros(raw.cached_input.unwrap_or(raw.input), &key, "cached_input")?,
            output: micros(raw.output, &key, "output")?,
            cache_write: micros(raw.cache_write.unwrap_or(raw.input), &key, "cache_write")?,
        };
        let row = PriceRow {
            key: key.clone(),
            price,
            raw,
            origin: origin.to_owned(),
        };
        self.rows
            .entry(space.to_owned())
            .or_default()
            .insert(model.to_owned(), row);
        Ok(())
    }

    /// The row pricing `model` at provider `provider` (of price list
    /// `kind`): the provider's own rows first, then the kind's; in each, the
    /// exact name, else the longest listed prefix.
    pub fn find(&self, provider: &str, kind: &str, model: &str) -> Option<&PriceRow> {
        [provider, kind].into_iter().find_map(|space| {
            let rows = self.rows.get(space)?;
            rows.get(model).or_else(|| {
                rows.iter()
                    .filter(|(listed, _)| model.starts_with(listed.as_str()))
                    .max_by_key(|(listed, _)| listed.len())
                    .map(|(_, row)| row)
            })
        })
    }

    /// Every row, by key, for `keygate prices` (only those of `space` when given).
    pub fn rows(&self, space: Option<&str>) -> Vec<&PriceRow> {
        self.rows
            .iter()
            .filter(|(s, _)| space.is_none_or(|wanted| wanted == s.as_str()))
            .flat_map(|(_, rows)| rows.values())
            .collect()
    }
}

/// TOML through figment's parser (already in the tree; no second TOML crate).
fn toml_from_str<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, String> {
    use figment::providers::{Format, Toml};
    figment::Figment::from(Toml::string(text))
        .extract()
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(extra: &[(&str, f64, Option<f64>, f64)]) -> PriceTable {
        let overrides = extra
            .iter()
            .map(|(key, input, cached, output)| {
                (
                    (*key).to_owned(),
                    RawPrice {
                        input: *input,
                        cached_input: *cached,
                        output: *output,
                        cache_write: None,
                        source: None,
                        date: None,
                    },
                )
            })
            .collect();
        PriceTable::load(&overrides, "keygate.toml").unwrap()
    }

    #[test]
    fn the_embedded_table_loads_and_every_row_says_where_it_came_from() {
        let table = table(&[]);
        let rows = table.rows(None);
        assert!(rows.len() >= 20, "{}", rows.len());
        for row in rows {
            assert!(
                row.raw
                    .source
                    .as_deref()
                    .is_some_and(|s| s.starts_with("https://")),
                "{}",
                row.key
            );
            assert!(
                row.raw.date.as_deref().is_some_and(|d| d.len() == 10),
                "{}",
                row.key
            );
        }
    }

    #[test]
    fn exact_name_else_the_longest_prefix_provider_rows_first() {
        let table = table(&[
            ("testkind/m", 1.0, None, 2.0),
            ("testkind/m-mini", 0.5, None, 1.0),
            ("myproxy/m", 9.0, None, 9.0),
            ("testkind/v4.1", 3.0, None, 3.0),
        ]);
        assert_eq!(
            table
                .find("p", "testkind", "v4.1-nano")
                .map(|r| r.price.input),
            Some(3_000_000)
        );
        // Read as the config is: a dot in a quoted model name is part of the name.
        let config = crate::config::Config::from_toml(
            "[prices.\"openai/gpt-9.1\"]\ninput = 1.5\noutput = 6\n",
        )
        .unwrap();
        let row = config
            .prices
            .find("openai", "openai", "gpt-9.1-mini")
            .unwrap();
        assert_eq!(
            (row.price.input, row.price.cached_input, row.origin.as_str()),
            (1_500_000, 1_500_000, "inline TOML")
        );
        let input = |provider, model| {
            table
                .find(provider, "testkind", model)
                .map(|r| r.price.input)
        };
        assert_eq!(input("p", "m"), Some(1_000_000));
        assert_eq!(input("p", "m-mini-2024-07-18"), Some(500_000));
        assert_eq!(input("p", "m-2024"), Some(1_000_000));
        assert_eq!(input("p", "other"), None);
        assert_eq!(input("myproxy", "m-2024"), Some(9_000_000));
    }

    #[test]
    fn cost_is_usage_times_price_with_cached_tokens_at_their_price() {
        let price = Price {
            input: 2_500_000, // $2.50 / 1M
            cached_input: 1_250_000,
            output: 10_000_000, // $10 / 1M
            cache_write: 3_125_000,
        };
        let usage = crate::usage::shapes::find(br#"{"usage":{"prompt_tokens":2006,"completion_tokens":300,"prompt_tokens_details":{"cached_tokens":1920}}}"#).usage.unwrap();
        // 86 × 2.5 + 1920 × 1.25 + 300 × 10 = 215 + 2400 + 3000 = 5615 µ$.
        assert_eq!(price.cost_micros(&usage), 5615);
        let anthropic = crate::usage::shapes::find(br#"{"usage":{"input_tokens":6,"cache_creation_input_tokens":500,"cache_read_input_tokens":1500,"output_tokens":3}}"#).usage.unwrap();
        // 6 × 2.5 + 1500 × 1.25 + 500 × 3.125 + 3 × 10 = 15 + 1875 + 1562.5 + 30 → 3483 (half up).
        assert_eq!(price.cost_micros(&anthropic), 3483);
        assert_eq!(price.most_micros(1000, 100), 3125 + 1000);
    }

    #[test]
    fn bad_rows_are_refused_naming_them() {
        let bad = |key: &str, input: f64| {
            let overrides = BTreeMap::from([(
                key.to_owned(),
                RawPrice {
                    input,
                    cached_input: None,
                    output: 1.0,
                    cache_write: None,
                    source: None,
                    date: None,
                },
            )]);
            PriceTable::load(&overrides, "x").unwrap_err()
        };
        assert!(bad("gpt-4o", 1.0).contains("KIND/MODEL"));
        assert!(bad("openai/gpt-4o", -1.0).contains("prices.\"openai/gpt-4o\".input"));
        assert!(bad("openai/gpt-4o", f64::NAN).contains("between 0 and"));
    }
}
