//! The shutdown signal every part of the daemon watches (after mini-redis's `Shutdown`).

use tokio::sync::watch;

/// Fires once; every clone sees it.
pub struct Trigger(watch::Sender<bool>);

/// A handle that waits for shutdown. Cheap to clone.
#[derive(Clone)]
pub struct Shutdown(watch::Receiver<bool>);

pub fn channel() -> (Trigger, Shutdown) {
    let (tx, rx) = watch::channel(false);
    (Trigger(tx), Shutdown(rx))
}

impl Trigger {
    pub fn fire(&self) {
        self.0.send_replace(true);
    }
}

impl Shutdown {
    /// Resolves once shutdown has started (at once if it already has, or if the trigger is gone).
    pub async fn wait(&mut self) {
        let _ = self.0.wait_for(|fired| *fired).await;
    }

    /// The underlying watch channel (true once shutdown has started).
    pub fn watch(&self) -> watch::Receiver<bool> {
        self.0.clone()
    }

    /// Owned form of [`Shutdown::wait`], for APIs that take a `'static` future.
    pub async fn wait_owned(mut self) {
        self.wait().await
    }
}
