//! `instaconnect relay`: a headless store-and-forward relay in the foreground.
//!
//! Start: build the config (defaults ← `--config` file ← flags; bad values exit 2), set up
//! logging on stderr, create the data dir (0700), load or make the relay's identity key
//! (`relay-identity`, 0600: it signs receipts and is the libp2p identity, so the peer id
//! names the key receipts are checked against), open the envelope database (`relay-db`, its
//! own sled database), start the network with role `relay`, serve `/metrics` on loopback,
//! print `peer id: …`, one `listening on …/p2p/…` line per address, `metrics: http://…/metrics`
//! and finally `relay ready`, then run [`driver::Driver`].
//!
//! Stop (SIGINT or SIGTERM): the loop commits and answers what it holds, the network says
//! goodbye (mDNS) and closes, `/metrics` stops, the database is flushed, exit 0.
//!
//! What it logs: counts, errors and (at debug) the network's connection events, whose peer
//! ids are the clients' ephemeral transport identities. Never envelopes, mailbox ids or keys,
//! deletion hashes or secrets.

mod config;
mod driver;
mod metrics;

use std::future::IntoFuture;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context};
use instaconnect_core::relay::Relay;
use instaconnect_crypto::Identity;
use instaconnect_net::{NetConfig, NetIdentity, Role, DEFAULT_PROTOCOL_VERSION};
use instaconnect_store::{RelayStore, SledRelayStore};
use zeroize::Zeroizing;

use crate::cli::RelayArgs;
use crate::daemon::Signals;
use crate::{usage, Failure};
pub use config::RelayFileConfig;

/// How long shutdown waits for the loop, then the network, then `/metrics`.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// Async worker threads.
const WORKER_THREADS: usize = 2;
/// The identity key's file in the data dir.
pub const IDENTITY_FILE: &str = "relay-identity";
/// The envelope database's directory in the data dir.
pub const DB_DIR: &str = "relay-db";

pub fn run(args: RelayArgs) -> Result<(), Failure> {
    let config = RelayFileConfig::build(&args)?;
    crate::daemon::init_logging(&config.log)?;
    let dir = config.data_dir()?;
    crate::home::create_private_dir(&dir)?;
    let identity = load_or_create_identity(&dir.join(IDENTITY_FILE))?;
    let store = SledRelayStore::open(&dir.join(DB_DIR))?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(WORKER_THREADS)
        .thread_name("instaconnect-relay")
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let result = runtime.block_on(serve(config, identity, store));
    runtime.shutdown_timeout(SHUTDOWN_GRACE);
    result
}

/// Reads the relay's 32-byte Ed25519 seed, or makes one and writes it (0600, then renamed
/// into place and synced, so a crash never leaves half a key).
fn load_or_create_identity(path: &Path) -> Result<Identity, Failure> {
    match std::fs::read(path) {
        Ok(bytes) => {
            let bytes = Zeroizing::new(bytes);
            Identity::from_secret_bytes(&bytes).map_err(|e| {
                Failure::Failed(anyhow!(
                    "the relay identity {} is damaged: {e}",
                    path.display()
                ))
            })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let identity = Identity::generate();
            let tmp = path.with_extension("tmp");
            let mut opts = std::fs::OpenOptions::new();
            opts.write(true).create(true).truncate(true);
            #[cfg(unix)]
            {
                use std::os::unix::fs::OpenOptionsExt;
                opts.mode(0o600);
            }
            let write = || -> std::io::Result<()> {
                let mut f = opts.open(&tmp)?;
                f.write_all(&identity.secret_bytes())?;
                f.sync_all()?;
                std::fs::rename(&tmp, path)?;
                if let Some(parent) = path.parent() {
                    std::fs::File::open(parent)?.sync_all()?;
                }
                Ok(())
            };
            write().with_context(|| format!("cannot write {}", path.display()))?;
            Ok(identity)
        }
        Err(e) => Err(Failure::Failed(anyhow!(
            "cannot read {}: {e}",
            path.display()
        ))),
    }
}

async fn serve(
    config: RelayFileConfig,
    identity: Identity,
    store: SledRelayStore,
) -> Result<(), Failure> {
    let mut signals = Signals::new().context("cannot install signal handlers")?;
    let (trigger, shutdown) = crate::daemon::shutdown::channel();

    let seed: Zeroizing<[u8; 32]> = Zeroizing::new(
        identity
            .secret_bytes()
            .as_slice()
            .try_into()
            .map_err(|_| anyhow!("the relay identity is not 32 bytes"))?,
    );
    let mut net_config = NetConfig::new(NetIdentity::Account { ed25519_seed: seed });
    net_config.listen = config.network.listen.clone();
    net_config.mdns = config.network.mdns;
    net_config.role = Role::Relay;
    net_config.protocol_version = DEFAULT_PROTOCOL_VERSION;
    let (net, net_events) = instaconnect_net::start(net_config)
        .await
        .map_err(|e| usage(anyhow!("cannot start the network: {e}")))?;
    let peer_id = net.local_peer_id().to_string();

    let store: Arc<dyn RelayStore> = Arc::new(store);
    let shared = Arc::new(driver::Shared::default());
    let metrics_server = if config.metrics.enabled {
        let addr = config::metrics_addr(&config.metrics.listen)
            .map_err(|e| usage(anyhow!("metrics.listen: {e}")))?;
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr} for /metrics"))?;
        let addr = listener
            .local_addr()
            .context("cannot read the metrics address")?;
        let router = metrics::router(metrics::MetricsState {
            shared: shared.clone(),
            store: store.clone(),
        });
        let server = tokio::spawn(
            axum::serve(listener, router)
                .with_graceful_shutdown(shutdown.clone().wait_owned())
                .into_future(),
        );
        Some((addr, server))
    } else {
        None
    };

    let relay = Relay::new(store.clone(), identity, config.limits.clone());
    let driver = driver::Driver::new(relay, net.clone(), config.per_ip, shared);
    let mut looping = tokio::spawn(driver.run(net_events, shutdown.watch()));

    println!("peer id: {peer_id}");
    for addr in net.listen_addrs().await {
        println!("listening on {addr}/p2p/{peer_id}");
    }
    if let Some((addr, _)) = &metrics_server {
        println!("metrics: http://{addr}/metrics");
    }
    println!("relay ready");
    let _ = std::io::stdout().flush();
    tracing::info!(
        %peer_id,
        mdns = config.network.mdns,
        ttl_ms = config.limits.ttl_ms,
        "relay running"
    );

    let loop_ended = tokio::select! {
        name = signals.recv() => {
            tracing::info!("{name} received, shutting down");
            false
        }
        _ = &mut looping => true,
    };
    trigger.fire();
    if !loop_ended && tokio::time::timeout(SHUTDOWN_GRACE, looping).await.is_err() {
        tracing::warn!("the relay loop did not stop in time");
    }
    net.shutdown().await;
    if let Some((_, server)) = metrics_server {
        if tokio::time::timeout(SHUTDOWN_GRACE, server).await.is_err() {
            tracing::warn!("/metrics did not stop in time");
        }
    }
    store.flush()?;
    if loop_ended {
        return Err(Failure::Failed(anyhow!("the network stopped unexpectedly")));
    }
    tracing::info!("stopped");
    Ok(())
}
