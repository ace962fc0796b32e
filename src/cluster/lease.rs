//! The auto-rotation lease shared by every replica (docs/design.md §10,
//! §12): `SET key token NX PX ttl`, released by a script that deletes it only
//! while it still holds this replica's token, so a replica whose lease
//! expired never frees another's.

use std::sync::Arc;
use std::time::Duration;

use super::Cluster;

/// The lease key auto-rotation takes.
pub const AUTO_ROTATE: &str = "keygate:lease:auto-rotate";

const RELEASE: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"#;

/// What asking for the lease found.
pub enum Taken {
    /// This replica holds it until [`Lease::release`] or `ttl`.
    Held(Lease),
    /// Another replica holds it.
    Elsewhere,
    /// Redis did not answer: decide without it.
    Unknown,
}

/// A held lease.
pub struct Lease {
    cluster: Arc<Cluster>,
    name: &'static str,
    token: String,
}

/// Takes `name` for `ttl` if no replica holds it.
pub async fn take(cluster: &Arc<Cluster>, name: &'static str, ttl: Duration) -> Taken {
    let token = cluster.request_id();
    let answer = cluster
        .call("lease", |mut connection| {
            let token = token.clone();
            async move {
                redis::cmd("SET")
                    .arg(name)
                    .arg(token)
                    .arg("NX")
                    .arg("PX")
                    .arg(ttl.as_millis() as u64)
                    .query_async::<Option<String>>(&mut connection)
                    .await
            }
        })
        .await;
    match answer {
        Some(Some(_)) => Taken::Held(Lease {
            cluster: cluster.clone(),
            name,
            token,
        }),
        Some(None) => Taken::Elsewhere,
        None => Taken::Unknown,
    }
}

impl Lease {
    /// Gives the lease back (it also lapses by itself after its ttl).
    pub async fn release(self) {
        let (name, token) = (self.name, self.token);
        self.cluster
            .call("lease", |mut connection| async move {
                redis::Script::new(RELEASE)
                    .key(name)
                    .arg(token)
                    .invoke_async::<i64>(&mut connection)
                    .await
            })
            .await;
    }
}
