//! What replicas share through Redis (`[cluster] redis_url`, docs/design.md
//! §10): per-client limits and budgets ([`limits`]), key health
//! ([`key_health`]) and the auto-rotation lease ([`lease`]).
//!
//! One [`Cluster`] per process holds the redis crate's connection manager
//! (it reconnects by itself) and bounds every call by `[cluster] timeout`.
//! Redis down or slow never fails a request: the caller goes on with what
//! the replica knows alone, `keygate_cluster_errors_total{op}` counts it and
//! `/readyz` says so. It never makes a request wait for a Redis known to be
//! down either (a breaker): after one failed call every call answers "go on
//! alone" at once, and a single background probe (a ping, at once and then
//! each second) decides when the replica rejoins. The URL may carry a
//! password: it lives in a [`Secret`](crate::vault::secret::Secret) and
//! messages name the host only.

pub mod key_health;
pub mod lease;
pub mod limits;

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use redis::aio::ConnectionManager;

use crate::config::ClusterConfig;

/// This process's link to the shared Redis.
pub struct Cluster {
    client: redis::Client,
    connection: ArcSwapOption<ConnectionManager>,
    timeout: Duration,
    errors: prometheus::IntCounterVec,
    /// The breaker: true while the last call through Redis succeeded;
    /// false, calls do not try Redis and only the probe does.
    up: AtomicBool,
    /// Wakes the probe when a call fails, so a blip costs no more than it must.
    probe_now: tokio::sync::Notify,
    /// Listening to the key-health channel.
    subscribed: AtomicBool,
    /// `host:port/db` for messages, never the password.
    endpoint: String,
    /// Tells this process's own announcements apart from other replicas'.
    instance: String,
    /// Numbers this process's reservations (with `instance`: unique per request).
    sequence: AtomicU64,
    news: tokio::sync::mpsc::UnboundedSender<key_health::News>,
    news_rx: std::sync::Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<key_health::News>>>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

impl Cluster {
    /// The cluster link `config` asks for (`None` without `redis_url`). Does
    /// not connect yet ([`Cluster::run`] does, and keeps at it).
    pub fn new(
        config: &ClusterConfig,
        errors: prometheus::IntCounterVec,
    ) -> Result<Option<Arc<Cluster>>, String> {
        let Some(url) = &config.redis_url else {
            return Ok(None);
        };
        let client = redis::Client::open(url.expose()).map_err(|e| {
            format!(
                "cluster.redis_url ({}) is not usable: {:?}",
                config.redis_endpoint,
                e.kind()
            )
        })?;
        let mut id = [0u8; 4];
        getrandom::getrandom(&mut id)
            .map_err(|e| format!("the OS random number generator failed: {e}"))?;
        let (news, news_rx) = tokio::sync::mpsc::unbounded_channel();
        Ok(Some(Arc::new(Cluster {
            client,
            connection: ArcSwapOption::empty(),
            timeout: config.timeout,
            errors,
            up: AtomicBool::new(false),
            probe_now: tokio::sync::Notify::new(),
            subscribed: AtomicBool::new(false),
            endpoint: config.redis_endpoint.clone(),
            instance: hex::encode(id),
            sequence: AtomicU64::new(0),
            news,
            news_rx: std::sync::Mutex::new(Some(news_rx)),
        })))
    }

    /// Where Redis is, for messages and `/readyz`.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// True while the last Redis call succeeded.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// True while this replica hears other replicas' key-health news.
    pub fn is_subscribed(&self) -> bool {
        self.subscribed.load(Ordering::Relaxed)
    }

    /// A request id unique across replicas, for idempotent reservations.
    fn request_id(&self) -> String {
        let n = self.sequence.fetch_add(1, Ordering::Relaxed);
        format!("{}-{n}", self.instance)
    }

    /// Runs `call` on the shared connection within the timeout. `None`: Redis
    /// is down, slow or refused it, or is known to be down and was not
    /// tried (counted under `op` either way); go on alone.
    pub(crate) async fn call<T, F, Fut>(&self, op: &'static str, call: F) -> Option<T>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        if !self.is_up() {
            self.errors.with_label_values(&[op]).inc();
            return None;
        }
        self.attempt(op, call).await
    }

    /// [`Cluster::call`] without the breaker: the probe's way to Redis.
    async fn attempt<T, F, Fut>(&self, op: &'static str, call: F) -> Option<T>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        let Some(connection) = self.connection.load_full() else {
            self.failed(op, "not connected yet");
            return None;
        };
        match tokio::time::timeout(self.timeout, call((*connection).clone())).await {
            Ok(Ok(value)) => {
                if !self.up.swap(true, Ordering::Relaxed) {
                    tracing::info!(redis = %self.endpoint, "cluster: Redis answers again; limits and key health are shared");
                }
                Some(value)
            }
            Ok(Err(error)) => {
                self.failed(op, &format!("{:?}", error.kind()));
                None
            }
            Err(_) => {
                self.failed(op, &format!("no answer within {:?}", self.timeout));
                None
            }
        }
    }

    fn failed(&self, op: &'static str, why: &str) {
        self.errors.with_label_values(&[op]).inc();
        if self.up.swap(false, Ordering::Relaxed) {
            self.probe_now.notify_one();
            tracing::warn!(redis = %self.endpoint, op, "cluster: Redis failed ({why}); this replica goes on alone (limits per replica) until it answers again");
        }
    }

    /// Connects (retrying each second until Redis answers, then the
    /// connection manager reconnects by itself), and runs the key-health
    /// exchange until `shutdown`.
    pub async fn run(
        self: Arc<Self>,
        on_news: key_health::OnNews,
        mut shutdown: crate::shutdown::Shutdown,
    ) {
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Duration::from_secs(2))
            .set_response_timeout(self.timeout.max(Duration::from_millis(50)))
            .set_number_of_retries(2)
            .set_max_delay(1000);
        loop {
            let attempt = self
                .client
                .get_connection_manager_with_config(config.clone());
            tokio::select! {
                result = attempt => match result {
                    Ok(manager) => {
                        self.connection.store(Some(Arc::new(manager)));
                        self.up.store(true, Ordering::Relaxed);
                        tracing::info!(redis = %self.endpoint, "cluster: connected to Redis; limits, budgets and key health are shared");
                        break;
                    }
                    Err(error) => self.failed("connect", &format!("{:?}", error.kind())),
                },
                _ = shutdown.requested() => return,
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = shutdown.requested() => return,
            }
        }
        // The probe: a ping a second keeps `/readyz` true to what Redis does
        // now, also for a replica that has no limited traffic to notice it
        // by; right after a failed call it pings at once, and while Redis is
        // down it is the only thing that tries it (one ping at a time).
        let pinger = {
            let cluster = self.clone();
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        _ = cluster.probe_now.notified() => {}
                    }
                    cluster
                        .attempt("ping", |mut connection| async move {
                            redis::cmd("PING")
                                .query_async::<String>(&mut connection)
                                .await
                        })
                        .await;
                }
            })
        };
        let news = self.news_rx.lock().ok().and_then(|mut n| n.take());
        if let Some(news) = news {
            key_health::exchange(self.clone(), on_news, news, shutdown).await;
        }
        pinger.abort();
    }
}
