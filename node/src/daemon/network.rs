//! ┌─────────────────────────────────────────────────────────────────────────────────────────┐
//! │ THE NETWORK NODE STARTS HERE.                                                           │
//! └─────────────────────────────────────────────────────────────────────────────────────────┘
//!
//! [`run`] gets the open database, the network part of the config, the event publisher and the
//! shutdown signal. With the local-network issue it will:
//! 1. derive the libp2p identity from the account (`Book::keys`), call
//!    `instaconnect_net::start(NetConfig { listen, mdns, .. })` and dial `config.peers`;
//! 2. run the `core` engine loop: feed it net events, timers and `now`, carry out its outputs,
//!    apply its store writes under the `Db` lock, publish its user events to `events`;
//! 3. on shutdown, call `NetHandle::shutdown()` (mDNS goodbye, close connections) and return.
//!
//! Until then it only logs what it would do and waits for shutdown, so the daemon and its
//! control API work already.

use anyhow::Result;

use super::events::Events;
use super::shutdown::Shutdown;
use super::Db;
use crate::config::NetworkConfig;

/// Runs the network side of the node until shutdown. An error ends the whole daemon (exit 1).
pub async fn run(
    db: Db,
    config: NetworkConfig,
    events: Events,
    mut shutdown: Shutdown,
) -> Result<()> {
    let _ = (&db, &events);
    tracing::info!(
        listen = ?config.listen,
        peers = ?config.peers,
        mdns = config.mdns,
        "network layer not built yet: serving the control API only"
    );
    shutdown.wait().await;
    Ok(())
}
