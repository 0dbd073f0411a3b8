//! Two InstaConnect nodes in one process, each an account on its own sled store (and
//! attachment store) in a temporary directory, its network on 127.0.0.1 TCP (no mDNS) and its
//! driver on a single-worker runtime of its own (its own OS thread, as in two processes); and
//! linking them through the real protocol. Shared by the chat and attachment benchmarks.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use instaconnect_core::book::Book;
use instaconnect_core::engine::{Command, Engine, Event};
use instaconnect_core::phone::Phone;
use instaconnect_net::driver::{self, DriverHandle};
use instaconnect_net::{start, NetConfig, NetHandle, NetIdentity, Role, DEFAULT_PROTOCOL_VERSION};
use instaconnect_store::{DirBlobs, SledStore, Store};
use tokio::runtime::Runtime;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{broadcast, watch};
use zeroize::Zeroizing;

pub const PHONE_A: &str = "+919812345678";
pub const PHONE_B: &str = "+919812340001";
/// Bound on each setup step (start, link, connect, subscribe).
pub const SETUP_TIMEOUT: Duration = Duration::from_secs(30);

pub fn must<T, E: std::fmt::Display>(what: &str, r: Result<T, E>) -> T {
    r.unwrap_or_else(|e| panic!("benchmark failed: {what}: {e}"))
}

pub fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

pub fn single_worker(name: &str) -> Runtime {
    must(
        "tokio runtime",
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name(name)
            .enable_all()
            .build(),
    )
}

// ----- InstaConnect nodes ---------------------------------------------------------------------

pub struct Node {
    pub rt: Runtime,
    pub store: Arc<dyn Store>,
    /// Attachments' bytes, in the temporary directory.
    pub blobs: Arc<DirBlobs>,
    pub handle: DriverHandle,
    pub net: NetHandle,
    pub peer: String,
    pub events: broadcast::Receiver<Event>,
    pub stop: watch::Sender<bool>,
    _dir: tempfile::TempDir,
}

impl Node {
    /// An account on a fresh sled store, its network on 127.0.0.1 TCP (no mDNS) and its
    /// driver, all on a runtime of its own.
    pub fn start(thread: &str, phone: &str, name: &str, seed: u8) -> Node {
        let dir = must("temp dir", tempfile::tempdir());
        let store: Arc<dyn Store> = Arc::new(must("open sled", SledStore::open(dir.path())));
        let blobs = Arc::new(must("blobs", DirBlobs::open(&dir.path().join("media"))));
        let phone = must("phone", Phone::parse(phone, None));
        let account = must(
            "create account",
            Book::new(store.as_ref()).create_account(&phone, name, None, wall_ms()),
        );
        let mut ed25519_seed = Zeroizing::new([0u8; 32]);
        ed25519_seed.copy_from_slice(account.identity_secret.expose());
        let rt = single_worker(thread);
        let (stop, stop_rx) = watch::channel(false);
        let (net, handle, events) = rt.block_on(async {
            let (net, net_events) = must(
                "start network",
                start(NetConfig {
                    identity: NetIdentity::Account { ed25519_seed },
                    listen: vec!["/ip4/127.0.0.1/tcp/0".to_string()],
                    mdns: false,
                    role: Role::Device,
                    protocol_version: DEFAULT_PROTOCOL_VERSION,
                })
                .await,
            );
            let engine =
                must("engine", Engine::new(store.clone(), [seed; 32])).with_blobs(blobs.clone());
            let (handle, _task) = driver::spawn(engine, net.clone(), net_events, stop_rx);
            let events = handle.subscribe();
            (net, handle, events)
        });
        let peer = net.local_peer_id().to_string();
        Node {
            rt,
            store,
            blobs,
            handle,
            net,
            peer,
            events,
            stop,
            _dir: dir,
        }
    }

    pub async fn close(&self) {
        let _ = self.stop.send(true);
        self.net.shutdown().await;
    }
}

pub async fn wait_event(
    rx: &mut broadcast::Receiver<Event>,
    what: &str,
    f: impl Fn(&Event) -> bool,
) -> Event {
    let fut = async {
        loop {
            match rx.recv().await {
                Ok(e) if f(&e) => return e,
                Ok(_) | Err(RecvError::Lagged(_)) => {}
                Err(RecvError::Closed) => panic!("benchmark failed: events ended before {what}"),
            }
        }
    };
    must(
        &format!("waiting for {what}"),
        tokio::time::timeout(SETUP_TIMEOUT, fut).await,
    )
}

/// A adds B's number, dials B and asks; B accepts; A hears the acceptance.
pub async fn link(a: &mut Node, b: &mut Node) {
    let phone_b = must("phone", Phone::parse(PHONE_B, None));
    must(
        "add contact",
        Book::new(a.store.as_ref()).add_contact(&phone_b, Some("B"), wall_ms()),
    );
    let addr = b.net.listen_addrs().await.into_iter().next();
    let addr = must("B's listen address", addr.ok_or("none"));
    must("dial", a.net.dial(&format!("{addr}/p2p/{}", b.peer)).await);
    must(
        "request contact",
        a.handle
            .command(Command::RequestContact {
                phone: PHONE_B.to_string(),
                peer: b.peer.clone(),
            })
            .await,
    );
    let a_peer = a.peer.clone();
    wait_event(
        &mut b.events,
        "the contact request",
        |e| matches!(e, Event::ContactRequest { peer, .. } if *peer == a_peer),
    )
    .await;
    must(
        "accept contact",
        b.handle
            .command(Command::AcceptContact {
                peer: a.peer.clone(),
            })
            .await,
    );
    wait_event(&mut a.events, "the acceptance", |e| {
        matches!(e, Event::ContactAccepted { .. })
    })
    .await;
}
