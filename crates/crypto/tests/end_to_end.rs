//! The whole stack through the public API: invite, session, envelope, restart.

mod common;

use common::{connected_pair, Peer};
use instaconnect_crypto::{safety_number, Device, ReplayGuard, Session};

#[test]
fn sealed_envelope_contains_neither_sender_identity_nor_plaintext() {
    let (mut alice, bob) = connected_pair();
    let plaintext = b"the eagle lands at noon; bring the photos and the voice note".repeat(4);
    let env = alice.send(&bob.keys.clone(), &plaintext);
    let contains = |needle: &[u8]| env.windows(needle.len()).any(|w| w == needle);
    assert!(!contains(&alice.public().to_bytes()));
    assert!(!contains(&alice.keys.envelope));
    assert!(!contains(&alice.keys.curve25519));
    assert!(!contains(&alice.keys.ed25519));
    assert!(!contains(&plaintext[..16]));
    assert!(!contains(alice.public().peer_id().as_bytes()));
    assert_eq!(env.len(), instaconnect_crypto::BUCKET_1K);
}

#[test]
fn conversation_survives_restart_of_both_sides() {
    let (mut alice, mut bob) = connected_pair();
    let (a_id, b_id) = (alice.public(), bob.public());
    let (a_keys, b_keys) = (alice.keys.clone(), bob.keys.clone());
    let in_flight = alice.send(&b_keys, b"sent before the restart");

    // persist everything, drop, restore
    let a_dev = alice.dev.to_pickle_bytes();
    let a_sess = alice.sessions[&b_id].to_pickle_bytes();
    let b_dev = bob.dev.to_pickle_bytes();
    let b_sess = bob.sessions[&a_id].to_pickle_bytes();
    let b_guard = postcard::to_allocvec(&bob.guard).unwrap();
    drop((alice.dev, bob.dev));
    alice.dev = Device::from_pickle_bytes(&a_dev).unwrap();
    alice
        .sessions
        .insert(b_id, Session::from_pickle_bytes(&a_sess).unwrap());
    bob.dev = Device::from_pickle_bytes(&b_dev).unwrap();
    bob.sessions
        .insert(a_id, Session::from_pickle_bytes(&b_sess).unwrap());
    bob.guard = postcard::from_bytes::<ReplayGuard>(&b_guard).unwrap();

    assert_eq!(
        &bob.receive(&in_flight).unwrap().bytes[..],
        b"sent before the restart"
    );
    let r = bob.send(&a_keys, b"and after");
    assert_eq!(&alice.receive(&r).unwrap().bytes[..], b"and after");
    assert_eq!(alice.keys, alice.dev.signed_keys(&alice.id));
}

#[test]
fn both_sides_compute_the_same_safety_number() {
    let (alice, bob) = connected_pair();
    let card_identity = bob.keys.identity;
    let on_alice = safety_number(&alice.public(), &card_identity);
    let on_bob = safety_number(&bob.public(), &alice.keys.identity);
    assert_eq!(on_alice, on_bob);
    assert_ne!(
        on_alice,
        safety_number(&alice.public(), &Peer::new().public())
    );
}
