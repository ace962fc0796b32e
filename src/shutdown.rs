//! Shutdown as a value passed down: one `watch` channel, set once on
//! SIGTERM/SIGINT; listeners stop accepting, connections drain, background
//! tasks return.

use tokio::sync::watch;

/// The receiving side, cloned into every task that must stop.
#[derive(Clone)]
pub struct Shutdown(watch::Receiver<bool>);

/// The sending side, held by whoever decides to stop.
pub struct Trigger(watch::Sender<bool>);

/// A new trigger and its receiver.
pub fn channel() -> (Trigger, Shutdown) {
    let (tx, rx) = watch::channel(false);
    (Trigger(tx), Shutdown(rx))
}

impl Trigger {
    /// Asks every holder of the matching [`Shutdown`] to stop.
    pub fn stop(&self) {
        let _ = self.0.send(true);
    }
}

impl Shutdown {
    /// Resolves once shutdown was requested (or the trigger is gone).
    pub async fn requested(&mut self) {
        let _ = self.0.wait_for(|stop| *stop).await;
    }
}
