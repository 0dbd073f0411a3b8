//! The network side of the node: the libp2p swarm and mDNS (`crates/net`) running the
//! messaging engine (`crates/core`) through `instaconnect_net::driver`.
//!
//! [`run`] derives the libp2p identity from the account, starts the swarm on the configured
//! addresses, dials the configured peers, starts the relay links (two ephemeral identities,
//! see `instaconnect_net::driver::RelayLinks`) for the configured relays, starts the engine on
//! a handle to the same sled database, publishes the engine's events to the control API's stream, and on shutdown lets
//! the driver commit, then closes the swarm (mDNS goodbye, connections closed).

use std::sync::Arc;

use anyhow::{Context, Result};
use instaconnect_core::book::Book;
use instaconnect_core::engine::{AttachmentLimits, Engine};
use instaconnect_net::{driver, NetConfig, NetIdentity, Role};
use instaconnect_store::Store;
use rand::RngCore;
use zeroize::Zeroizing;

use super::events::{Event, Events};
use super::shutdown::Shutdown;
use super::{Db, DriverSlot};
use crate::config::NetworkConfig;

/// What the node's config sets in its engine.
pub struct EngineSettings {
    pub limits: AttachmentLimits,
    pub live_interval_ms: u64,
}

/// Runs the network side of the node until shutdown. An error ends the whole daemon (exit 1).
pub async fn run(
    db: Db,
    blobs: Arc<instaconnect_store::DirBlobs>,
    config: NetworkConfig,
    settings: EngineSettings,
    events: Events,
    mut shutdown: Shutdown,
    slot: DriverSlot,
) -> Result<()> {
    let (store, seed) = {
        let guard = db.lock().unwrap_or_else(|p| p.into_inner());
        let keys = Book::new(&*guard).keys()?;
        let mut seed = Zeroizing::new([0u8; 32]);
        let secret = keys.identity.secret_bytes();
        seed.copy_from_slice(&secret[..32]);
        // A second handle on the same database for the engine (sled is shared and thread-safe).
        let store: Arc<dyn Store> = Arc::new(guard.clone());
        (store, seed)
    };
    let mut net_config = NetConfig::new(NetIdentity::Account { ed25519_seed: seed });
    if !config.listen.is_empty() {
        net_config.listen = config.listen.clone();
    }
    net_config.mdns = config.mdns;
    net_config.role = Role::Device;
    let (net, net_events) = instaconnect_net::start(net_config)
        .await
        .context("cannot start the network")?;
    for addr in net.listen_addrs().await {
        println!("listening on {addr}/p2p/{}", net.local_peer_id());
    }
    for peer in &config.peers {
        if let Err(e) = net.dial(peer).await {
            tracing::warn!("cannot dial {peer}: {e}");
        }
    }
    // Relays are reached over two links of their own, each with an ephemeral identity: the
    // account's identity never connects to a relay.
    let links = driver::RelayLinks::start(&config.relays)
        .await
        .context("cannot start the relay links")?;
    if !config.relays.is_empty() {
        tracing::info!(relays = config.relays.len(), "relays configured");
    }
    let mut rng_seed = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut rng_seed);
    let mut engine = Engine::new(store, rng_seed)
        .context("cannot start the messaging engine")?
        .with_blobs(blobs)
        .with_live_interval(settings.live_interval_ms);
    engine
        .set_attachment_limits(settings.limits)
        .context("cannot set the attachment limits")?;
    let (handle, task) =
        driver::spawn_with_relays(engine, net.clone(), net_events, links, shutdown.watch());
    let mut user_events = handle.subscribe();
    let _ = slot.set(handle);
    let forward = tokio::spawn(async move {
        loop {
            match user_events.recv().await {
                Ok(e) => events.publish(Event::Engine(e)),
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!("event forwarder lagged by {n}");
                }
                Err(_) => break,
            }
        }
    });
    tracing::info!(mdns = config.mdns, "network running");
    shutdown.wait().await;
    // The driver sees the same signal, commits what it holds and stops.
    let _ = task.await;
    net.shutdown().await;
    forward.abort();
    Ok(())
}
