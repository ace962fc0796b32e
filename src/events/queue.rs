//! The server's path from a raise to the outbox: a bounded queue a raise
//! never waits on, drained by one writer task in batches. When the outbox
//! cannot be written (a full disk, PostgreSQL away) the writer keeps what it
//! drained and tries again each second, holding at most the queue's
//! capacity again; beyond that the oldest are dropped, counted in
//! `keygate_events_dropped_total` and logged with their type and id — memory
//! stays bounded whatever the outbox does.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus::{IntCounter, IntCounterVec};
use tokio::sync::{mpsc, Notify};

use super::outbox::{Incoming, Outbox};
use super::{Event, EventSink};
use crate::config::NotifyTarget;
use crate::shutdown::Shutdown;

/// Events waiting for the writer, at most.
pub const CAPACITY: usize = 10_000;

/// The server's sink.
pub struct EventQueue {
    tx: mpsc::Sender<Event>,
    raised: IntCounterVec,
    dropped: IntCounter,
}

impl EventQueue {
    /// A queue and the receiver its writer drains. `raised` is
    /// `keygate_events_total{type}`, `dropped` `keygate_events_dropped_total`.
    pub fn new(
        raised: IntCounterVec,
        dropped: IntCounter,
    ) -> (Arc<EventQueue>, mpsc::Receiver<Event>) {
        let (tx, rx) = mpsc::channel(CAPACITY);
        let queue = EventQueue {
            tx,
            raised,
            dropped,
        };
        (Arc::new(queue), rx)
    }
}

impl EventSink for EventQueue {
    fn put(&self, event: Event) {
        self.raised.with_label_values(&[event.kind.as_str()]).inc();
        tracing::info!(event = event.kind.as_str(), event_id = %event.id, "event {} ({})", event.kind.as_str(), event.id);
        if let Err(error) = self.tx.try_send(event) {
            let event = match error {
                mpsc::error::TrySendError::Full(event)
                | mpsc::error::TrySendError::Closed(event) => event,
            };
            self.dropped.inc();
            tracing::warn!(event = event.kind.as_str(), event_id = %event.id, "events queue full (the outbox is not keeping up): event {} ({}) is dropped", event.kind.as_str(), event.id);
        }
    }
}

/// Writes queued events to the outbox until `stop`, then what is left.
/// `wake` tells the delivery loops there is something new.
pub async fn write(
    mut rx: mpsc::Receiver<Event>,
    outbox: Arc<Mutex<Outbox>>,
    targets: Arc<[NotifyTarget]>,
    dropped: IntCounter,
    wake: Arc<Notify>,
    mut stop: Shutdown,
) {
    let mut pending: VecDeque<Event> = VecDeque::new();
    let mut batch = Vec::with_capacity(256);
    loop {
        let stopping = tokio::select! {
            got = rx.recv_many(&mut batch, 256) => got == 0,
            _ = stop.requested() => true,
            _ = tokio::time::sleep(Duration::from_secs(1)), if !pending.is_empty() => false,
        };
        if stopping {
            while let Ok(event) = rx.try_recv() {
                batch.push(event);
            }
        }
        pending.extend(batch.drain(..));
        while pending.len() > CAPACITY {
            if let Some(event) = pending.pop_front() {
                dropped.inc();
                tracing::warn!(event = event.kind.as_str(), event_id = %event.id, "the events outbox has not been writable for a while: event {} ({}) is dropped", event.kind.as_str(), event.id);
            }
        }
        if !pending.is_empty() {
            let to_write: Vec<Event> = pending.iter().cloned().collect();
            let outbox = outbox.clone();
            let targets = targets.clone();
            let written = tokio::task::spawn_blocking(move || {
                let incoming: Vec<Incoming<'_>> = to_write
                    .iter()
                    .map(|event| Incoming {
                        event,
                        targets: targets
                            .iter()
                            .filter(|t| t.wants(event.kind))
                            .map(|t| t.name.as_str())
                            .collect(),
                    })
                    .collect();
                outbox
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .put(&incoming)
            })
            .await;
            match written {
                Ok(Ok(())) => {
                    pending.clear();
                    wake.notify_waiters();
                }
                Ok(Err(error)) => tracing::warn!(
                    waiting = pending.len(),
                    "events outbox write failed, will retry: {error}"
                ),
                Err(_) => tracing::warn!("events outbox writer panicked; will retry"),
            }
        }
        if stopping {
            return;
        }
    }
}
