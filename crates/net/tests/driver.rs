//! Two engines over real libp2p on 127.0.0.1: link by request and accept, chat both ways,
//! see delivered and read states. Waits for events with a timeout; never sleeps.

mod common;

use std::sync::Arc;
use std::time::Duration;

use instaconnect_core::book::Book;
use instaconnect_core::engine::{Command, Engine, Event};
use instaconnect_core::phone::Phone;
use instaconnect_net::driver::{self, DriverHandle};
use instaconnect_net::{start, NetIdentity};
use instaconnect_store::{MemStore, Store};
use instaconnect_wire::records::DeliveryState;
use tokio::sync::{broadcast, watch};
use zeroize::Zeroizing;

const TIMEOUT: Duration = Duration::from_secs(20);

struct Node {
    store: Arc<dyn Store>,
    handle: DriverHandle,
    events: broadcast::Receiver<Event>,
    peer: String,
    net: instaconnect_net::NetHandle,
}

async fn node(phone: &str, name: &str, seed: u8, stop: &watch::Receiver<bool>) -> Node {
    let store: Arc<dyn Store> = Arc::new(MemStore::new());
    let account = Book::new(store.as_ref())
        .create_account(&Phone::parse(phone, None).unwrap(), name, None, 1)
        .unwrap();
    let mut seed_bytes = Zeroizing::new([0u8; 32]);
    seed_bytes.copy_from_slice(account.identity_secret.expose());
    let (net, net_events) = start(common::loopback_config(
        NetIdentity::Account {
            ed25519_seed: seed_bytes,
        },
        &["/ip4/127.0.0.1/tcp/0"],
    ))
    .await
    .unwrap();
    let engine = Engine::new(store.clone(), [seed; 32]).unwrap();
    let peer = engine.peer_id();
    assert_eq!(
        peer,
        net.local_peer_id(),
        "the node's PeerId is the account's"
    );
    let (handle, _task) = driver::spawn(engine, net.clone(), net_events, stop.clone());
    let events = handle.subscribe();
    Node {
        store,
        handle,
        events,
        peer,
        net,
    }
}

async fn wait(
    rx: &mut broadcast::Receiver<Event>,
    what: &str,
    f: impl Fn(&Event) -> bool,
) -> Event {
    let fut = async {
        loop {
            match rx.recv().await {
                Ok(e) if f(&e) => return e,
                Ok(_) => {}
                Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(e) => panic!("event stream ended waiting for {what}: {e}"),
            }
        }
    };
    tokio::time::timeout(TIMEOUT, fut)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_engines_link_and_chat_over_libp2p() {
    let (_stop_tx, stop) = watch::channel(false);
    let mut asha = node("+919812345678", "Asha", 1, &stop).await;
    let mut ravi = node("+919812340001", "Ravi", 2, &stop).await;

    // Asha knows Ravi's number and dials his address (as `run --peer` does).
    Book::new(asha.store.as_ref())
        .add_contact(
            &Phone::parse("+919812340001", None).unwrap(),
            Some("Ravi"),
            2,
        )
        .unwrap();
    let addr = common::first_addr(&ravi.net).await;
    asha.net
        .dial(&format!("{addr}/p2p/{}", ravi.peer))
        .await
        .unwrap();
    asha.handle
        .command(Command::RequestContact {
            phone: "+919812340001".into(),
            peer: ravi.peer.clone(),
        })
        .await
        .unwrap();

    let asha_peer = asha.peer.clone();
    wait(
        &mut ravi.events,
        "the contact request",
        |e| matches!(e, Event::ContactRequest { peer, .. } if *peer == asha_peer),
    )
    .await;
    ravi.handle
        .command(Command::AcceptContact {
            peer: asha.peer.clone(),
        })
        .await
        .unwrap();
    wait(&mut asha.events, "the acceptance", |e| {
        matches!(e, Event::ContactAccepted { .. })
    })
    .await;

    let id = asha
        .handle
        .command(Command::Send {
            to: "+919812340001".into(),
            text: "hello over libp2p".into(),
        })
        .await
        .unwrap()
        .unwrap();
    let got = wait(&mut ravi.events, "the message", |e| {
        matches!(e, Event::MessageReceived { .. })
    })
    .await;
    assert!(
        matches!(got, Event::MessageReceived { ref text, ref from, .. }
        if text == "hello over libp2p" && from == "+919812345678")
    );
    let delivered = id.clone();
    wait(&mut asha.events, "delivered", |e| {
        matches!(e, Event::StateChanged { id, state: DeliveryState::Delivered, .. } if *id == delivered)
    })
    .await;

    ravi.handle
        .command(Command::MarkRead {
            contact: "+919812345678".into(),
        })
        .await
        .unwrap();
    wait(
        &mut asha.events,
        "read",
        |e| matches!(e, Event::StateChanged { id: i, state: DeliveryState::Read, .. } if *i == id),
    )
    .await;

    ravi.handle
        .command(Command::Send {
            to: "+919812345678".into(),
            text: "hi Asha".into(),
        })
        .await
        .unwrap();
    wait(
        &mut asha.events,
        "the reply",
        |e| matches!(e, Event::MessageReceived { text, .. } if text == "hi Asha"),
    )
    .await;
    let history = asha.store.messages("+919812340001", 0).unwrap();
    let texts: Vec<&str> = history.iter().map(|m| m.text.as_str()).collect();
    assert_eq!(texts, vec!["hello over libp2p", "hi Asha"]);

    // Each side sees the other's profile as its privacy allows (phone: contacts only).
    let peers = ravi.handle.peers().await.unwrap();
    let seen = peers.iter().find(|p| p.peer == asha.peer).unwrap();
    assert!(seen.connected);
}
