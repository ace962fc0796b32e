//! Per-client limits shared by every replica (docs/design.md §10, §14): one
//! Lua script admits a request against rpm, tpm, the token budget and the
//! dollar budget and holds its estimate (reserve), another charges what the
//! answer cost when the response ends (settle). Both run atomically in
//! Redis, so N replicas admit exactly what one would: no
//! check-then-increment race.
//!
//! - Idempotent per request id: a reservation is a member of the client's
//!   `holds` sorted set (`id|tokens|micros`, scored by its expiry);
//!   reserving it again admits without counting twice, and a settle runs
//!   once (a `settled` marker).
//! - A budget with a period keeps its spend under the window's first second
//!   (`spent:{start}`, `spent_usd:{start}`), expiring after the window: the
//!   next window starts at zero in every replica at once. A lifetime
//!   budget keeps `spent` and `spent_usd`. The first replica to touch a
//!   window seeds it with what its ledger says was spent in it.
//! - A hold expires after [`HOLD_TTL`] if its replica died before settling,
//!   so a dead replica cannot pin a budget. A late settle still charges.
//! - Keys carry the client in a hash tag (`keygate:{app}:…`), so a Redis
//!   Cluster keeps one client's keys in one slot.
//!
//! Only clients with a limit pay the round trip; the local
//! [`Limits`](crate::usage::limits::Limits) keeps counting every request,
//! so when Redis is away each replica goes on with its own limits.

use std::sync::Arc;
use std::time::Duration;

use super::Cluster;
use crate::usage::limits::{
    Charge, ClientLimits, Estimate, LimitError, Reservation, SharedReservation,
};

/// How long a reservation holds its tokens if it is never settled.
pub const HOLD_TTL: Duration = Duration::from_secs(600);

const RESERVE: &str = r#"
local rpm, tpm, budget = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local est, member, now, ttl = tonumber(ARGV[4]), ARGV[5], tonumber(ARGV[6]), tonumber(ARGV[7])
local budget_usd, est_usd, keep = tonumber(ARGV[9]), tonumber(ARGV[10]), tonumber(ARGV[12])
if redis.call('ZSCORE', KEYS[4], member) then return 0 end
if rpm >= 0 and tonumber(redis.call('GET', KEYS[1]) or '0') >= rpm then return 1 end
local used = tonumber(redis.call('GET', KEYS[2]) or '0')
if tpm >= 0 and used > 0 and used + est > tpm then return 2 end
if redis.call('SETNX', KEYS[3], ARGV[8]) == 1 and keep > 0 then redis.call('PEXPIRE', KEYS[3], keep) end
if redis.call('SETNX', KEYS[5], ARGV[11]) == 1 and keep > 0 then redis.call('PEXPIRE', KEYS[5], keep) end
redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', now)
if budget >= 0 or budget_usd >= 0 then
  local held, held_usd = 0, 0
  for _, m in ipairs(redis.call('ZRANGE', KEYS[4], 0, -1)) do
    local t, u = string.match(m, '|(%d+)|(%d+)$')
    if not t then t, u = string.match(m, '|(%d+)$'), 0 end
    held = held + tonumber(t)
    held_usd = held_usd + tonumber(u)
  end
  if budget >= 0 and tonumber(redis.call('GET', KEYS[3])) + held + est > budget then return 3 end
  if budget_usd >= 0 and tonumber(redis.call('GET', KEYS[5])) + held_usd + est_usd > budget_usd then return 3 end
end
redis.call('INCR', KEYS[1])
redis.call('PEXPIRE', KEYS[1], 120000)
redis.call('INCRBY', KEYS[2], est)
redis.call('PEXPIRE', KEYS[2], 120000)
redis.call('ZADD', KEYS[4], now + ttl, member)
redis.call('PEXPIRE', KEYS[4], ttl * 2)
return 0
"#;

/// The scripts, hashed once (`Script::new` hashes its source; EVALSHA then
/// sends only the hash, loading the script the first time a server lacks it).
static RESERVE_SCRIPT: std::sync::LazyLock<redis::Script> =
    std::sync::LazyLock::new(|| redis::Script::new(RESERVE));
static SETTLE_SCRIPT: std::sync::LazyLock<redis::Script> =
    std::sync::LazyLock::new(|| redis::Script::new(SETTLE));

const SETTLE: &str = r#"
redis.call('ZREM', KEYS[3], ARGV[1])
if not redis.call('SET', KEYS[4], '1', 'NX', 'PX', 3600000) then return 0 end
if redis.call('EXISTS', KEYS[2]) == 1 then redis.call('INCRBY', KEYS[2], ARGV[3]) end
if redis.call('EXISTS', KEYS[5]) == 1 then redis.call('INCRBY', KEYS[5], ARGV[4]) end
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('INCRBY', KEYS[1], tonumber(ARGV[3]) - tonumber(ARGV[2]))
end
return 1
"#;

/// The part of a reservation that lives in Redis.
#[derive(Debug)]
pub struct SharedHold {
    cluster: Arc<Cluster>,
    client: Arc<str>,
    id: String,
    estimate: Estimate,
    minute: u64,
    window: u64,
}

fn key(client: &str, what: &str) -> String {
    format!("keygate:{{{client}}}:{what}")
}

/// The keys of the budgets' spend in `window` (0: lifetime).
fn spent_keys(client: &str, window: u64) -> [String; 2] {
    if window == 0 {
        [key(client, "spent"), key(client, "spent_usd")]
    } else {
        [
            key(client, &format!("spent:{window}")),
            key(client, &format!("spent_usd:{window}")),
        ]
    }
}

impl SharedReservation for SharedHold {
    /// Charges what the answer cost (its real usage, or the estimate when
    /// it reported none) in Redis, off the request path.
    fn settle(self: Box<Self>, charge: Charge) {
        let hold = *self;
        tokio::spawn(async move {
            let member = format!(
                "{}|{}|{}",
                hold.id, hold.estimate.tokens, hold.estimate.micros
            );
            let c = &hold.client;
            let [spent, spent_usd] = spent_keys(c, hold.window);
            let keys = [
                key(c, &format!("tpm:{}", hold.minute)),
                spent,
                key(c, "holds"),
                key(c, &format!("settled:{}", hold.id)),
                spent_usd,
            ];
            hold.cluster
                .call("settle", |mut connection| async move {
                    SETTLE_SCRIPT
                        .key(&keys[..])
                        .arg(&member)
                        .arg(hold.estimate.tokens)
                        .arg(charge.tokens)
                        .arg(charge.micros)
                        .invoke_async::<i64>(&mut connection)
                        .await
                })
                .await;
        });
    }
}

/// Admits `reservation` (already admitted by this replica's own limits)
/// against the shared limits of `client`. Refused: the local reservation is
/// undone and the client gets the same 429 as from local limits. Redis
/// away: the local decision stands. `spent_before`: what this replica's
/// ledger says was spent in the reservation's budget window (tokens,
/// micro-dollars), the window's seed.
pub async fn reserve(
    cluster: &Arc<Cluster>,
    mut reservation: Reservation,
    client: &Arc<str>,
    limits: ClientLimits,
    spent_before: (u64, u64),
    now_ms: u64,
) -> Result<Reservation, LimitError> {
    let estimate = reservation.reserved();
    let window = reservation.window();
    let minute = now_ms / 60_000;
    let id = cluster.request_id();
    let member = format!("{id}|{}|{}", estimate.tokens, estimate.micros);
    let [spent, spent_usd] = spent_keys(client, window);
    let keys = [
        key(client, &format!("rpm:{minute}")),
        key(client, &format!("tpm:{minute}")),
        spent,
        key(client, "holds"),
        spent_usd,
    ];
    let now = now_ms / 1000;
    // A window's spend outlives it by the hold time (late settles land in
    // it), then goes; a lifetime's stays.
    let keep_ms = match limits.budget_period {
        Some(period) if window > 0 => period
            .window_end(now)
            .saturating_sub(now)
            .saturating_mul(1000)
            .saturating_add(2 * HOLD_TTL.as_millis() as u64),
        _ => 0,
    };
    let limit = |v: Option<u64>| v.map_or(-1, |v| i64::try_from(v).unwrap_or(i64::MAX));
    let verdict = cluster
        .call("reserve", |mut connection| async move {
            RESERVE_SCRIPT
                .key(&keys[..])
                .arg(limit(limits.rpm.map(u64::from)))
                .arg(limit(limits.tpm))
                .arg(limit(limits.budget_tokens))
                .arg(estimate.tokens)
                .arg(&member)
                .arg(now_ms)
                .arg(HOLD_TTL.as_millis() as u64)
                .arg(spent_before.0)
                .arg(limit(limits.budget_usd_micros))
                .arg(estimate.micros)
                .arg(spent_before.1)
                .arg(keep_ms)
                .invoke_async::<i64>(&mut connection)
                .await
        })
        .await;
    let retry_after = Duration::from_secs(60 - (now_ms / 1000) % 60);
    match verdict {
        None => Ok(reservation),
        Some(0) => {
            reservation.share(Box::new(SharedHold {
                cluster: cluster.clone(),
                client: client.clone(),
                id,
                estimate,
                minute,
                window,
            }));
            Ok(reservation)
        }
        Some(3) => {
            let crossed_here = reservation.crossed.is_some();
            reservation.cancel();
            Err(LimitError::BudgetExceeded {
                client: client.to_string(),
                remaining_usd_micros: limits.budget_usd_micros.map(|_| 0),
                retry_after: limits
                    .budget_period
                    .map(|p| Duration::from_secs(p.window_end(now).saturating_sub(now).max(1))),
                // The fleet's budget is spent though this replica's was not:
                // told at most once per window by the event's own id.
                first: !crossed_here,
                window,
            })
        }
        Some(_) => {
            reservation.cancel();
            Err(LimitError::RateLimited {
                client: client.to_string(),
                retry_after,
            })
        }
    }
}
