//! `instaconnect run`: the node in the foreground.
//!
//! Start: build the config (defaults ← `--config` file ← flags; bad values exit 2), set up
//! logging on stderr, open the database (it stays open, so the node is the only process using
//! it), bind the control API on 127.0.0.1, write `<home>/control.json`, print `peer id: …` and
//! `control api: http://127.0.0.1:PORT` on stdout, start the network ([`network::run`]).
//!
//! Stop (SIGINT or SIGTERM, or the network failing): stop accepting control requests and let
//! those in flight finish (at most [`SHUTDOWN_GRACE`]), stop the network, remove the control
//! file, close the database (sled flushes), exit 0 (1 if the network failed).

pub mod control;
pub mod events;
mod network;
pub(crate) mod shutdown;

use std::future::IntoFuture;
use std::io::IsTerminal;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, Context};
use instaconnect_core::book::Book;
use instaconnect_store::SledStore;
use tracing_subscriber::EnvFilter;

use crate::cli::RunArgs;
use crate::config::{LogConfig, LogFormat, NodeConfig};
use crate::control_file::{ControlFile, ControlInfo};
use crate::home::Home;
use crate::{usage, Failure};

/// The node's open database. The lock makes each command (and later each engine step) see and
/// write the store alone, as separate CLI processes did.
pub type Db = Arc<Mutex<SledStore>>;
/// The engine's driver, set once the network has started.
pub type DriverSlot = Arc<std::sync::OnceLock<instaconnect_net::driver::DriverHandle>>;

/// How long shutdown waits for control requests in flight, and then for the network.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// Async worker threads (commands run on tokio's blocking pool).
const WORKER_THREADS: usize = 2;

pub fn run(home: &Home, args: RunArgs) -> Result<(), Failure> {
    let config = NodeConfig::build(&args)?;
    init_logging(&config.log)?;
    let store = home.open_existing()?;
    let peer_id = Book::new(&store).keys()?.identity.public().peer_id();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(WORKER_THREADS)
        .thread_name("instaconnect")
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let result = runtime.block_on(serve(home, config, store, peer_id));
    runtime.shutdown_timeout(SHUTDOWN_GRACE);
    result
}

pub(crate) fn init_logging(log: &LogConfig) -> Result<(), Failure> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(v) if !v.trim().is_empty() => {
            EnvFilter::try_new(&v).map_err(|e| usage(anyhow!("invalid RUST_LOG {v:?}: {e}")))?
        }
        _ => EnvFilter::try_new(&log.level)
            .map_err(|e| usage(anyhow!("invalid log.level {:?}: {e}", log.level)))?,
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let installed = match log.format {
        LogFormat::Text => builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
    installed.map_err(|e| Failure::Failed(anyhow!("cannot set up logging: {e}")))
}

/// A fresh 256-bit bearer token, hex.
fn new_token() -> String {
    use rand::RngCore;
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

async fn serve(
    home: &Home,
    config: NodeConfig,
    store: SledStore,
    peer_id: String,
) -> Result<(), Failure> {
    // Handlers first, so a signal that arrives once we are reachable is never fatal.
    let mut signals = Signals::new().context("cannot install signal handlers")?;
    let (trigger, shutdown) = shutdown::channel();

    let port = config.control.port;
    let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, port))
        .await
        .with_context(|| format!("cannot listen on 127.0.0.1:{port} for the control API"))?;
    let port = listener
        .local_addr()
        .context("cannot read the control API's address")?
        .port();
    let token = new_token();
    let control_file = ControlFile::create(
        home.control_path(),
        &ControlInfo {
            port,
            token: token.clone(),
            pid: std::process::id(),
        },
    )?;

    let db: Db = Arc::new(Mutex::new(store));
    let events = events::Events::new();
    let driver: DriverSlot = Arc::new(std::sync::OnceLock::new());
    let api = Arc::new(control::Api::new(
        token,
        peer_id.clone(),
        home.clone(),
        db.clone(),
        events.clone(),
        shutdown.clone(),
        driver.clone(),
    ));
    let server = tokio::spawn(
        axum::serve(listener, control::router(api))
            .with_graceful_shutdown(shutdown.clone().wait_owned())
            .into_future(),
    );
    let blobs = home.blobs()?;
    let mut network = tokio::spawn(network::run(
        db.clone(),
        blobs,
        config.network.clone(),
        network::EngineSettings {
            limits: config.attachments.limits(),
            live_interval_ms: config.location.live_interval_ms,
        },
        events,
        shutdown.clone(),
        driver,
    ));

    println!("peer id: {peer_id}");
    println!("control api: http://127.0.0.1:{port}");
    tracing::info!(
        %peer_id,
        control = %format!("127.0.0.1:{port}"),
        home = %home.dir.display(),
        "node running"
    );

    let network_ended = tokio::select! {
        name = signals.recv() => {
            tracing::info!("{name} received, shutting down");
            None
        }
        ended = &mut network => Some(ended),
    };
    trigger.fire();

    match tokio::time::timeout(SHUTDOWN_GRACE, server).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => tracing::warn!("control API stopped with an error: {e}"),
        Ok(Err(e)) => tracing::warn!("control API task failed: {e}"),
        Err(_) => tracing::warn!(
            "control requests still running after {}s; stopping anyway",
            SHUTDOWN_GRACE.as_secs()
        ),
    }
    let network_result = match network_ended {
        Some(ended) => ended,
        None => match tokio::time::timeout(SHUTDOWN_GRACE, network).await {
            Ok(ended) => ended,
            Err(_) => Ok(Err(anyhow!(
                "the network did not stop within {}s",
                SHUTDOWN_GRACE.as_secs()
            ))),
        },
    };

    // Remove the control file while we still hold the database: from now on the CLI opens
    // the database itself (after we close it) instead of calling us.
    drop(control_file);
    match Arc::try_unwrap(db) {
        Ok(store) => drop(store.into_inner().unwrap_or_else(|p| p.into_inner())),
        Err(_) => tracing::warn!("the database is still in use at exit; sled flushes on exit"),
    }

    match network_result {
        Ok(Ok(())) => {
            tracing::info!("stopped");
            Ok(())
        }
        Ok(Err(e)) => Err(Failure::Failed(e.context("the network failed"))),
        Err(e) => Err(Failure::Failed(anyhow!("the network task failed: {e}"))),
    }
}

/// SIGINT (Ctrl-C) and SIGTERM, registered as soon as this is built.
pub(crate) struct Signals {
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
}

impl Signals {
    pub(crate) fn new() -> std::io::Result<Signals> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Ok(Signals {
                interrupt: signal(SignalKind::interrupt())?,
                terminate: signal(SignalKind::terminate())?,
            })
        }
        #[cfg(not(unix))]
        Ok(Signals {})
    }

    /// Waits for a signal; returns its name.
    pub(crate) async fn recv(&mut self) -> &'static str {
        #[cfg(unix)]
        {
            tokio::select! {
                _ = self.interrupt.recv() => "SIGINT",
                _ = self.terminate.recv() => "SIGTERM",
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
            "Ctrl-C"
        }
    }
}
