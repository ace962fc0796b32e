//! Key health shared by every replica (docs/design.md §10): when this
//! replica finds a key rejected or out of credit, it says so on the Redis
//! channel [`CHANNEL`]; every replica that hears it marks the key the same
//! way at once (so no other replica sends it), and still probes it on its
//! own before restoring it. The request path only queues the news (no await,
//! no Redis call); this room publishes and listens.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use serde::{Deserialize, Serialize};

use super::Cluster;
use crate::keys::key_events::KeyNews;
use crate::shutdown::Shutdown;

/// The pub/sub channel.
pub const CHANNEL: &str = "keygate:key-health";

/// The prefix of the keys that keep recent news until its cooldown ends.
const KEPT: &str = "keygate:key-health:";

/// What one replica found about a key.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct News {
    /// The replica that found it.
    #[serde(default)]
    pub from: String,
    /// Key id (not a secret).
    pub key_id: String,
    /// `true`: out of credit; `false`: rejected.
    pub exhausted: bool,
    /// How long it rests.
    pub cooldown_ms: u64,
    /// `true`: at its rate limit at the provider until `cooldown_ms` (§17),
    /// not rejected; absent in older replicas' news.
    #[serde(default)]
    pub limited: bool,
}

impl Cluster {
    /// Queues `news` for every other replica (never blocks).
    pub fn announce(&self, mut news: News) {
        news.from.clone_from(&self.instance);
        let _ = self.news.send(news);
    }
}

impl KeyNews for Cluster {
    fn announce(&self, key_id: &str, exhausted: bool, cooldown: Duration) {
        Cluster::announce(
            self,
            News {
                from: String::new(),
                key_id: key_id.to_owned(),
                exhausted,
                cooldown_ms: u64::try_from(cooldown.as_millis()).unwrap_or(u64::MAX),
                limited: false,
            },
        );
    }

    fn announce_limit(&self, key_id: &str, rest: Duration) {
        Cluster::announce(
            self,
            News {
                from: String::new(),
                key_id: key_id.to_owned(),
                exhausted: false,
                cooldown_ms: u64::try_from(rest.as_millis()).unwrap_or(u64::MAX),
                limited: true,
            },
        );
    }
}

/// What this replica does with another's news (marks the key here).
pub type OnNews = Arc<dyn Fn(&News) + Send + Sync>;

/// Publishes this replica's news and applies the others', until `shutdown`.
pub(super) async fn exchange(
    cluster: Arc<Cluster>,
    on_news: OnNews,
    mut news: tokio::sync::mpsc::UnboundedReceiver<News>,
    mut shutdown: Shutdown,
) {
    let listener = tokio::spawn(listen(cluster.clone(), on_news, shutdown.clone()));
    loop {
        let next = tokio::select! {
            next = news.recv() => next,
            _ = shutdown.requested() => None,
        };
        let Some(next) = next else {
            break;
        };
        let Ok(message) = serde_json::to_string(&next) else {
            continue;
        };
        let kept = format!("{KEPT}{}", next.key_id);
        let ttl = next.cooldown_ms.max(1);
        cluster
            .call("publish", |mut connection| async move {
                redis::pipe()
                    .cmd("SET")
                    .arg(kept)
                    .arg(&message)
                    .arg("PX")
                    .arg(ttl)
                    .ignore()
                    .cmd("PUBLISH")
                    .arg(CHANNEL)
                    .arg(&message)
                    .ignore()
                    .query_async::<()>(&mut connection)
                    .await
            })
            .await;
    }
    listener.abort();
}

/// Subscribes (again after each failure, once a second) and applies news.
async fn listen(cluster: Arc<Cluster>, on_news: OnNews, mut shutdown: Shutdown) {
    loop {
        match cluster.client.get_async_pubsub().await {
            Ok(mut pubsub) => {
                if pubsub.subscribe(CHANNEL).await.is_ok() {
                    catch_up(&cluster, &on_news).await;
                    cluster
                        .subscribed
                        .store(true, std::sync::atomic::Ordering::Relaxed);
                    let mut messages = pubsub.on_message();
                    loop {
                        let message = tokio::select! {
                            m = messages.next() => m,
                            _ = shutdown.requested() => return,
                        };
                        let Some(message) = message else {
                            break;
                        };
                        let Ok(text) = message.get_payload::<String>() else {
                            continue;
                        };
                        if let Ok(news) = serde_json::from_str::<News>(&text) {
                            if news.from != cluster.instance {
                                on_news(&news);
                            }
                        }
                    }
                }
                cluster
                    .subscribed
                    .store(false, std::sync::atomic::Ordering::Relaxed);
                cluster.failed("subscribe", "the subscription ended");
            }
            Err(error) => cluster.failed("subscribe", &format!("{:?}", error.kind())),
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = shutdown.requested() => return,
        }
    }
}

/// Applies the news other replicas kept while this one was not listening.
async fn catch_up(cluster: &Cluster, on_news: &OnNews) {
    let mut cursor = 0u64;
    loop {
        let page = cluster
            .call("subscribe", |mut connection| async move {
                let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(format!("{KEPT}*"))
                    .arg("COUNT")
                    .arg(100)
                    .query_async(&mut connection)
                    .await?;
                let mut kept = Vec::new();
                for key in keys {
                    let (text, ttl): (Option<String>, i64) = redis::pipe()
                        .cmd("GET")
                        .arg(&key)
                        .cmd("PTTL")
                        .arg(&key)
                        .query_async(&mut connection)
                        .await?;
                    kept.extend(text.map(|t| (t, ttl)));
                }
                Ok((next, kept))
            })
            .await;
        let Some((next, kept)) = page else {
            return;
        };
        for (text, ttl) in kept {
            if let Ok(mut news) = serde_json::from_str::<News>(&text) {
                if news.from != cluster.instance && ttl > 0 {
                    news.cooldown_ms = u64::try_from(ttl).unwrap_or(0);
                    on_news(&news);
                }
            }
        }
        if next == 0 {
            return;
        }
        cursor = next;
    }
}
