//! Shutdown as a value passed down: one cancellation token, cancelled once on
//! SIGTERM/SIGINT; listeners stop accepting, connections drain, background
//! tasks return.

use tokio_util::sync::CancellationToken;

/// The receiving side, cloned into every task that must stop.
#[derive(Clone)]
pub struct Shutdown(CancellationToken);

/// The sending side, held by whoever decides to stop. Dropping it stops
/// everything too, so a failed start never leaves tasks waiting.
pub struct Trigger(CancellationToken);

/// A new trigger and its receiver.
pub fn channel() -> (Trigger, Shutdown) {
    let token = CancellationToken::new();
    (Trigger(token.clone()), Shutdown(token))
}

impl Trigger {
    /// Asks every holder of the matching [`Shutdown`] to stop.
    pub fn stop(&self) {
        self.0.cancel();
    }
}

impl Drop for Trigger {
    fn drop(&mut self) {
        self.0.cancel();
    }
}

impl Shutdown {
    /// Resolves once shutdown was requested (or the trigger is gone).
    pub async fn requested(&mut self) {
        self.0.cancelled().await;
    }
}
