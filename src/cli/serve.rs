//! `keygate serve`: first-start setup, then the server until SIGTERM/SIGINT.

use std::sync::Arc;

use super::{start_checks, vault::ensure_master_key, CliError, Context};
use crate::control::reload::{self, VaultWatch};
use crate::control::state::Shared;
use crate::usage::ledger::Ledger;
use crate::usage::limits::Limits;
use crate::vault::document::Document;
use crate::vault::secret::Secret;

/// Like `println!`, but a closed stdout (a supervisor that stopped reading)
/// must not take the server down: the line is dropped instead.
macro_rules! announce {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

/// Joins the other replicas through Redis, when `[cluster]` names one:
/// their news about keys is marked on this replica's rings.
fn start_cluster(shared: &Arc<Shared>, stopped: &crate::shutdown::Shutdown) {
    let Some(cluster) = shared.cluster.clone() else {
        return;
    };
    let for_news = shared.clone();
    let on_news: crate::cluster::key_health::OnNews = Arc::new(move |news| {
        let rings = &for_news.snapshot().rings;
        let rest = std::time::Duration::from_millis(news.cooldown_ms);
        if news.limited {
            for_news
                .key_events
                .apply_limit_news(rings, &news.key_id, rest);
        } else {
            for_news
                .key_events
                .apply_news(rings, &news.key_id, news.exhausted, rest);
        }
    });
    tokio::spawn(cluster.run(on_news, stopped.clone()));
}

/// Starts the events room: the outbox writer, one delivery loop per
/// `[[notify]]` receiver, and the hourly prune. Returns the writer and its
/// own trigger: it stops last, after the drain, so the drain's events are kept.
fn start_events(
    shared: &Arc<Shared>,
    receivers: Vec<crate::events::notify::Receiver>,
    stopped: &crate::shutdown::Shutdown,
) -> (tokio::task::JoinHandle<()>, crate::shutdown::Trigger) {
    use crate::events::{notify, queue};
    let wake = Arc::new(tokio::sync::Notify::new());
    let targets: Arc<[crate::config::NotifyTarget]> =
        receivers.iter().map(|r| r.target.clone()).collect();
    let delivering = notify::Delivering {
        outbox: shared.outbox.clone(),
        upstream: shared.upstream.clone(),
        settings: shared.config.events.clone(),
        deliveries: shared.metrics.events.deliveries.clone(),
        depth: shared.metrics.events.outbox_depth.clone(),
        wake: wake.clone(),
    };
    let names = targets.iter().map(|t| t.name.clone()).collect();
    tokio::spawn(notify::prune(delivering.clone(), names, stopped.clone()));
    for receiver in receivers {
        tokio::spawn(notify::deliver(
            receiver,
            delivering.clone(),
            stopped.clone(),
        ));
    }
    let (stop_writer, writer_stopped) = crate::shutdown::channel();
    let Some(receiver) = shared.take_event_receiver() else {
        return (tokio::spawn(async {}), stop_writer);
    };
    let writer = tokio::spawn(queue::write(
        receiver,
        shared.outbox.clone(),
        targets,
        shared.metrics.events.dropped.clone(),
        wake,
        writer_stopped,
    ));
    (writer, stop_writer)
}

pub(super) fn run(
    context: Context,
    admin_token: Option<Secret>,
    accept_vault_generation: Option<u64>,
    env: &[(String, String)],
) -> Result<(), CliError> {
    // What needs no vault is checked first, so a broken setup creates nothing.
    let receivers = start_checks::notify_receivers(&context.config, env)?;
    start_checks::tls(&context.config)?;
    let vault = context.vault();
    let kek = if vault.exists() {
        context.kek()?
    } else {
        let (kek, created_key) = ensure_master_key(&context.master)?;
        vault.create(&kek, &Document::default())?;
        announce!(
            "keygate: first start: created an empty vault at {}",
            vault.path().display()
        );
        if created_key {
            announce!(
                "keygate: created a new master key file at {} (mode 0600) — back it up",
                context.master.file.display()
            );
        }
        kek
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::Runtime(format!("cannot start the async runtime: {e}")))?;
    let Context { config, master } = context;
    let result = runtime.block_on(async move {
        let config = Arc::new(config);
        let mut ledger =
            Ledger::open(&config.metering.db).map_err(|e| CliError::Runtime(e.to_string()))?;
        let spent = crate::usage::limits::SpentBefore::new(
            ledger
                .client_totals()
                .map_err(|e| CliError::Runtime(e.to_string()))?,
            ledger
                .client_hours(crate::unix_now().saturating_sub(crate::usage::limits::HISTORY) / 3600)
                .map_err(|e| CliError::Runtime(e.to_string()))?,
        );
        let outbox = crate::events::outbox::Outbox::open(&config.metering.db)
            .map_err(|e| CliError::Runtime(e.to_string()))?;
        let vault_watch =
            VaultWatch::new(vault, master, kek).accept_generation(accept_vault_generation);
        let mut shared = Shared::new(
            config.clone(),
            vault_watch,
            admin_token,
            Limits::with_spent(spent),
            outbox,
        )?;
        shared.telemetry =
            crate::control::telemetry::Telemetry::start(&config.telemetry, &shared.upstream)
                .map_err(|e| CliError::Runtime(e.to_string()))?;
        let shared = Arc::new(shared);
        tokio::task::block_in_place(|| shared.reload()).map_err(|e| match e {
            reload::ReloadError::Vault(v) => CliError::Vault(v),
            other => CliError::Runtime(other.to_string()),
        })?;
        let bound = crate::net::listeners::bind(&config.server)
            .await
            .map_err(|e| CliError::Runtime(e.to_string()))?;
        let signals = shutdown_signals();
        announce!("keygate: client listener on {}", bound.client_addr);
        announce!("keygate: admin listener on {}", bound.admin_addr);
        tracing::info!(
            client = %bound.client_addr,
            admin = %bound.admin_addr,
            config = %config.source_name,
            "keygate serving"
        );
        first_steps(&config, &shared);

        let (stop, stopped) = crate::shutdown::channel();
        let reloader = tokio::spawn(crate::control::follow::run(shared.clone(), stopped.clone()));
        let upkeep = tokio::spawn(crate::control::key_upkeep::run(
            shared.clone(),
            stopped.clone(),
        ));
        start_cluster(&shared, &stopped);
        let watches = [
            tokio::spawn(crate::control::inventory_watch::run(
                shared.clone(),
                stopped.clone(),
            )),
            tokio::spawn(crate::control::reconcile_watch::run(
                shared.clone(),
                stopped.clone(),
            )),
        ];
        let (events_writer, stop_events_writer) = start_events(&shared, receivers, &stopped);
        // The ledger stops only after the drain, so its last flush sees every request.
        let (stop_ledger, ledger_stopped) = crate::shutdown::channel();
        let ledger_task = tokio::spawn(crate::usage::ledger::run(
            shared.meter.clone(),
            shared.key_meter.clone(),
            ledger,
            config.metering.flush_interval,
            ledger_stopped,
        ));
        tokio::spawn(async move {
            signals.await;
            tracing::info!("shutdown requested: no new connections, draining in-flight requests");
            stop.stop();
        });
        let client_shared = shared.clone();
        let admin_shared = shared.clone();
        crate::net::listeners::run(
            bound,
            &config.server,
            move |request| crate::proxy::handle(client_shared.clone(), request),
            move |request| crate::control::probes::handle(admin_shared.clone(), request),
            stopped,
        )
        .await
        .map_err(|e| CliError::Runtime(e.to_string()))?;
        let _ = reloader.await;
        let _ = upkeep.await;
        // A look at the providers under way ends before the runtime does
        // (its timers must not outlive it), within the grace.
        let grace = config.server.shutdown_grace;
        let _ = tokio::time::timeout(grace, futures_util::future::join_all(watches)).await;
        // Events raised during the drain reach the outbox before the exit.
        stop_events_writer.stop();
        let _ = tokio::time::timeout(config.server.shutdown_grace, events_writer).await;
        stop_ledger.stop();
        // The last flush gets the grace and no more: a ledger that does not
        // answer must not keep a stopping replica alive.
        if tokio::time::timeout(config.server.shutdown_grace, ledger_task)
            .await
            .is_err()
        {
            tracing::warn!(
                grace = ?config.server.shutdown_grace,
                "the usage ledger did not take the last flush within the shutdown grace; stopping without it"
            );
        }
        // The spans of the drain reach the collector, if it answers soon.
        if let Some(telemetry) = &shared.telemetry {
            telemetry.shutdown().await;
        }
        tracing::info!("keygate stopped");
        Ok(())
    });
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    result
}

/// On a vault with no upstream key every request is refused: say what
/// makes keygate useful, with the config file's absolute path.
fn first_steps(config: &crate::config::Config, shared: &Shared) {
    if shared
        .snapshot()
        .rings
        .values()
        .any(|ring| !ring.is_empty())
    {
        return;
    }
    let flag = std::fs::canonicalize(&config.source_name)
        .map(|p| format!(" --config {}", p.display()))
        .unwrap_or_default();
    let provider = &config.routing.default;
    announce!("keygate: the vault holds no upstream key yet, so every request is refused (and /readyz is 503). To make it useful, in another shell:");
    announce!("  printf '%s' \"$PROVIDER_API_KEY\" | keygate{flag} key add {provider}");
    announce!("  keygate{flag} client add my-app        # prints the kg_ key your app sends");
    announce!("keygate: a running server picks both up within a second (`keygate` is `cargo run --release --`, or `cargo install --path .`)");
}

/// Installs the SIGTERM/SIGINT handlers now (so a signal right after the
/// listener lines are printed drains instead of killing), resolving on the first.
fn shutdown_signals() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{signal, SignalKind};
    let handlers = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    );
    async move {
        let (Ok(mut term), Ok(mut int)) = handlers else {
            // Without handlers the process still stops on SIGTERM's default action.
            return std::future::pending().await;
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    }
}
