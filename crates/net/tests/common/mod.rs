//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::time::Duration;

use instaconnect_net::{start, NetConfig, NetEvent, NetHandle, NetIdentity, Role};
use tokio::sync::mpsc::Receiver;

/// Upper bound for any single awaited event; generous for a loaded 2-core CI machine.
pub const EVENT_TIMEOUT: Duration = Duration::from_secs(10);

pub fn loopback_config(identity: NetIdentity, listen: &[&str]) -> NetConfig {
    NetConfig {
        identity,
        listen: listen.iter().map(|s| s.to_string()).collect(),
        mdns: false,
        role: Role::Device,
        protocol_version: 1,
    }
}

/// A node with an ephemeral identity listening on 127.0.0.1 TCP, mDNS off.
pub async fn tcp_node() -> (NetHandle, Receiver<NetEvent>) {
    start(loopback_config(
        NetIdentity::Ephemeral,
        &["/ip4/127.0.0.1/tcp/0"],
    ))
    .await
    .expect("start node")
}

/// Waits (bounded by [`EVENT_TIMEOUT`]) for the first event `f` accepts, skipping others.
pub async fn wait_for<T>(
    rx: &mut Receiver<NetEvent>,
    what: &str,
    mut f: impl FnMut(&NetEvent) -> Option<T>,
) -> T {
    let fut = async {
        loop {
            match rx.recv().await {
                Some(ev) => {
                    if let Some(t) = f(&ev) {
                        return t;
                    }
                }
                None => panic!("event channel closed while waiting for {what}"),
            }
        }
    };
    tokio::time::timeout(EVENT_TIMEOUT, fut)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

/// The first listen address of a node, as reported by `listen_addrs`.
pub async fn first_addr(h: &NetHandle) -> String {
    h.listen_addrs()
        .await
        .into_iter()
        .next()
        .expect("node has a listen address")
}

/// Waits until `rx` reports a connection to `peer`.
pub async fn connected_to(rx: &mut Receiver<NetEvent>, peer: &str) -> String {
    wait_for(rx, "Connected", |ev| match ev {
        NetEvent::Connected { peer: p, addr } if p == peer => Some(addr.clone()),
        _ => None,
    })
    .await
}
pub mod raw;
