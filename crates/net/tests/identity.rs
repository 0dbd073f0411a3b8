//! Test 3: the account identity gives the same PeerId as `instaconnect_crypto`.

mod common;

use common::{loopback_config, tcp_node};
use instaconnect_net::{start, NetIdentity};
use zeroize::Zeroizing;

async fn peer_id_of(seed: [u8; 32]) -> String {
    let cfg = loopback_config(
        NetIdentity::Account {
            ed25519_seed: Zeroizing::new(seed),
        },
        &["/ip4/127.0.0.1/tcp/0"],
    );
    let (h, _rx) = start(cfg).await.unwrap();
    let id = h.local_peer_id().to_string();
    h.shutdown().await;
    id
}

fn crypto_peer_id(seed: &[u8; 32]) -> String {
    instaconnect_crypto::Identity::from_secret_bytes(seed)
        .unwrap()
        .public()
        .peer_id()
}

#[tokio::test]
async fn account_identity_peer_id_equals_crypto_peer_id() {
    // libp2p's published Ed25519 test vector.
    let mut vector = [0u8; 32];
    let hex = "7e0830617c4a7de83925dfb2694556b12936c477a0e1feb2e148ec9da60fee7d";
    for (i, b) in vector.iter_mut().enumerate() {
        *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap();
    }
    let net = peer_id_of(vector).await;
    assert_eq!(net, "12D3KooWBtg3aaRMjxwedh83aGiUkwSxDwUZkzuJcfaqUmo7R3pq");
    assert_eq!(net, crypto_peer_id(&vector));

    // And a freshly generated account.
    let fresh = instaconnect_crypto::Identity::generate();
    let seed: [u8; 32] = fresh.secret_bytes()[..].try_into().unwrap();
    assert_eq!(peer_id_of(seed).await, fresh.public().peer_id());
}

#[tokio::test]
async fn ephemeral_identities_are_fresh() {
    let (a, _ra) = tcp_node().await;
    let (b, _rb) = tcp_node().await;
    assert_ne!(a.local_peer_id(), b.local_peer_id());
    assert!(a.local_peer_id().starts_with("12D3KooW"));
}
