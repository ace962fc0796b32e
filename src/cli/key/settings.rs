//! `keygate key set KEY_ID [--weight N] [--max-in-flight N]`: a key's place
//! in its provider's pool (docs/design.md §17), kept in the vault so every
//! replica schedules the same way; a running server takes it at its next
//! reload (within a second).

use clap::Args;

use crate::cli::{CliError, Context};

/// `key set` options.
#[derive(Debug, Args)]
pub struct SetArgs {
    /// Key id (`key_…`).
    key_id: String,
    /// Shares of new clients this key takes in its pool (default 1).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1000))]
    weight: Option<u32>,
    /// The most requests keygate keeps open on this key at once; 0 removes the limit.
    #[arg(long, value_name = "N")]
    max_in_flight: Option<u32>,
}

pub(super) fn run(context: &Context, args: SetArgs) -> Result<(), CliError> {
    if args.weight.is_none() && args.max_in_flight.is_none() {
        return Err(CliError::Usage(
            "nothing to set: give --weight N and/or --max-in-flight N".to_owned(),
        ));
    }
    let kek = context.kek()?;
    let (weight, max_in_flight) = context.vault().update(&kek, |document| {
        let key = document
            .keys
            .iter_mut()
            .find(|k| k.id == args.key_id)
            .ok_or_else(|| {
                CliError::Usage(format!(
                    "no key {} in the vault (see `keygate key list`)",
                    args.key_id
                ))
            })?;
        if let Some(weight) = args.weight {
            key.weight = (weight != 1).then_some(weight);
        }
        if let Some(max) = args.max_in_flight {
            key.max_in_flight = (max != 0).then_some(max);
        }
        Ok::<_, CliError>((key.weight.unwrap_or(1), key.max_in_flight))
    })?;
    say!(
        "keygate: {}: weight {weight}, max in flight {}",
        args.key_id,
        max_in_flight.map_or_else(|| "unlimited".to_owned(), |n| n.to_string())
    );
    Ok(())
}
