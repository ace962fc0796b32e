//! How config values are written: humantime durations, sizes (`8MiB` or
//! bytes), paths, secrets named in the config (a Redis URL with a password),
//! and where the ledger lives — each a serde `deserialize_with` reader whose
//! error names what a good value looks like.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use super::sections::LedgerDb;

pub(super) fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(d)?;
    humantime::parse_duration(&text).map_err(|e| {
        serde::de::Error::custom(format!(
            "`{text}` is not a duration ({e}); write e.g. \"30s\", \"10m\", \"24h\""
        ))
    })
}

pub(super) fn optional_duration<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<Duration>, D::Error> {
    duration(d).map(Some)
}

/// A secret in the config (`cluster.redis_url`): read as text, kept as a
/// [`Secret`](crate::vault::secret::Secret) so `Debug` never shows it.
pub(super) fn secret<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<crate::vault::secret::Secret>, D::Error> {
    Ok(Some(crate::vault::secret::Secret::new(
        String::deserialize(d)?,
    )))
}

#[derive(Deserialize)]
#[serde(untagged)]
enum SizeValue {
    Bytes(u64),
    Text(String),
}

pub(super) fn size<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    match SizeValue::deserialize(d)? {
        SizeValue::Bytes(n) => Ok(n),
        SizeValue::Text(text) => text
            .parse::<bytesize::ByteSize>()
            .map(|b| b.as_u64())
            .map_err(|e| {
                serde::de::Error::custom(format!(
                    "`{text}` is not a size ({e}); write bytes or e.g. \"8MiB\""
                ))
            }),
    }
}

pub(super) fn opt_path<'de, D: Deserializer<'de>>(d: D) -> Result<Option<PathBuf>, D::Error> {
    Ok(Option::<String>::deserialize(d)?
        .filter(|s| !s.is_empty())
        .map(PathBuf::from))
}

pub(super) fn ledger_db<'de, D: Deserializer<'de>>(d: D) -> Result<LedgerDb, D::Error> {
    let text = String::deserialize(d)?;
    let Some(rest) = text
        .strip_prefix("postgres://")
        .or_else(|| text.strip_prefix("postgresql://"))
    else {
        return Ok(LedgerDb::Sqlite(PathBuf::from(text)));
    };
    // What follows the last `@` is the host; what precedes it is a credential.
    let host = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
    let host = host.split('?').next().unwrap_or_default();
    if host.is_empty() || host.starts_with('/') {
        return Err(serde::de::Error::custom(
            "metering.db: a postgres:// URL needs a host (postgres://USER:PASSWORD@HOST:PORT/DB)",
        ));
    }
    Ok(LedgerDb::Postgres {
        endpoint: format!("postgres://{host}"),
        url: crate::vault::secret::Secret::new(text),
    })
}
