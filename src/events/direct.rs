//! The CLI's sink: a command that rotates, burns or deletes a key writes its
//! events straight to the outbox (opened on the first event), where the
//! server's delivery loops find them — the same file or database the server
//! uses, so `keygate key burn` notifies like `POST /admin/.../burn` does.
//! A command with no server running leaves them pending for the next one.

use std::sync::Mutex;

use super::outbox::{Incoming, Outbox};
use super::{Event, EventSink};
use crate::config::{LedgerDb, NotifyTarget};

/// Writes each event to the outbox as it is raised.
pub struct DirectSink {
    db: LedgerDb,
    targets: Vec<NotifyTarget>,
    outbox: Mutex<Option<Outbox>>,
}

impl DirectSink {
    /// A sink for the outbox beside the ledger `db`, delivering to `targets`.
    pub fn new(db: &LedgerDb, targets: &[NotifyTarget]) -> DirectSink {
        DirectSink {
            db: db.clone(),
            targets: targets.to_vec(),
            outbox: Mutex::new(None),
        }
    }
}

impl EventSink for DirectSink {
    fn put(&self, event: Event) {
        let mut outbox = self.outbox.lock().unwrap_or_else(|p| p.into_inner());
        if outbox.is_none() {
            match Outbox::open(&self.db) {
                Ok(opened) => *outbox = Some(opened),
                Err(error) => {
                    tracing::warn!(event = event.kind.as_str(), event_id = %event.id, "event {} ({}) not recorded: {error}", event.kind.as_str(), event.id);
                    return;
                }
            }
        }
        let incoming = Incoming {
            event: &event,
            targets: self
                .targets
                .iter()
                .filter(|t| t.wants(event.kind))
                .map(|t| t.name.as_str())
                .collect(),
        };
        let written = match outbox.as_mut() {
            Some(outbox) => outbox.put(&[incoming]),
            None => return,
        };
        if let Err(error) = written {
            tracing::warn!(event = event.kind.as_str(), event_id = %event.id, "event {} ({}) not recorded: {error}", event.kind.as_str(), event.id);
        }
    }
}
