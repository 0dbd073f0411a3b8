//! Property tests over the public API: ordering, tampering and replays.

mod common;

use std::collections::HashSet;

use common::{connected_pair, Peer};
use instaconnect_crypto::{open_envelope, CryptoError, Session};
use proptest::prelude::*;

fn config() -> ProptestConfig {
    // Each case generates keys and runs full sessions; keep debug builds quick. Set
    // PROPTEST_CASES for a longer soak.
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64);
    ProptestConfig {
        cases,
        ..ProptestConfig::default()
    }
}

/// Envelopes in flight with the plaintext each should decrypt to.
type Flight = Vec<(Vec<u8>, Vec<u8>)>;

/// Build a scenario: Alice sends `first` messages (pre-key, one chain); Bob gets one of them,
/// replies, Alice reads the reply and sends `second` more (new ratchet chain). Returns the
/// peers, the envelopes still in flight and their plaintexts.
fn two_chain_traffic(first: usize, second: usize, early: usize) -> (Peer, Peer, Flight) {
    let mut alice = Peer::new();
    let mut bob = Peer::new();
    let link = bob.card().to_invite_link();
    alice.add_contact(&link);
    let bob_keys = bob.keys.clone();
    let alice_keys = alice.keys.clone();
    let mut flight: Flight = (0..first)
        .map(|i| {
            let pt = format!("first chain #{i}").into_bytes();
            (alice.send(&bob_keys, &pt), pt)
        })
        .collect();
    let (env, pt) = flight.remove(early % first);
    assert_eq!(&bob.receive(&env).unwrap().bytes[..], &pt[..]);
    let reply = bob.send(&alice_keys, b"reply");
    assert_eq!(&alice.receive(&reply).unwrap().bytes[..], b"reply");
    for i in 0..second {
        let pt = format!("second chain #{i}").into_bytes();
        flight.push((alice.send(&bob_keys, &pt), pt));
    }
    (alice, bob, flight)
}

proptest! {
    #![proptest_config(config())]

    /// Whatever the order, and even with every envelope delivered twice, each message is
    /// decrypted exactly once and every repeat is reported as a duplicate.
    #[test]
    fn any_order_decrypts_exactly_once(
        first in 1usize..12,
        second in 0usize..12,
        early in 0usize..12,
        order in Just((0..46usize).collect::<Vec<_>>()).prop_shuffle(),
        dup_mask in any::<u64>(),
    ) {
        let (_alice, mut bob, flight) = two_chain_traffic(first, second, early);
        let n = flight.len();
        let mut deliveries: Vec<usize> = order.into_iter().filter(|&i| i < n).collect();
        // deliver a subset a second time, interleaved
        for i in 0..n {
            if dup_mask & (1 << i) != 0 {
                let pos = (dup_mask.rotate_left(i as u32) as usize) % (deliveries.len() + 1);
                deliveries.insert(pos, i);
            }
        }
        let mut got = HashSet::new();
        for i in deliveries {
            let (env, pt) = &flight[i];
            match bob.receive(env) {
                Ok(r) => {
                    prop_assert_eq!(&r.bytes[..], &pt[..]);
                    prop_assert!(got.insert(i), "message {} decrypted twice", i);
                }
                Err(CryptoError::Duplicate { .. }) => prop_assert!(got.contains(&i)),
                Err(e) => prop_assert!(false, "unexpected error {:?}", e),
            }
        }
        prop_assert_eq!(got.len(), n);
    }

    /// At the ratchet layer alone (no replay guard), a delivered message cannot be decrypted
    /// again, in any order.
    #[test]
    fn ratchet_messages_decrypt_once(order in Just((0..20usize).collect::<Vec<_>>()).prop_shuffle()) {
        let (mut alice, mut bob) = connected_pair();
        let bob_id = bob.public();
        let msgs: Vec<Vec<u8>> = (0..20)
            .map(|i| alice.sessions.get_mut(&bob_id).unwrap().encrypt(&[i as u8; 33]).unwrap())
            .collect();
        let s = bob.sessions.get_mut(&alice.public()).unwrap();
        for &i in &order {
            prop_assert_eq!(&s.decrypt(&msgs[i]).unwrap()[..], &[i as u8; 33][..]);
        }
        for &i in &order {
            prop_assert!(s.decrypt(&msgs[i]).is_err());
        }
    }

    /// Flipping any single bit of a sealed envelope makes opening fail with a typed error.
    #[test]
    fn any_flipped_envelope_bit_fails(len in 0usize..2000, bit in any::<proptest::sample::Index>()) {
        let (mut alice, bob) = connected_pair();
        let bob_keys = bob.keys.clone();
        let payload = vec![0x5a; len];
        let env = alice.send(&bob_keys, &payload);
        let mut bad = env.clone();
        let b = bit.index(bad.len() * 8);
        bad[b / 8] ^= 1 << (b % 8);
        prop_assert!(open_envelope(&bob.dev, &bad).is_err());
        // the untouched envelope still opens
        prop_assert!(open_envelope(&bob.dev, &env).is_ok());
    }

    /// Flipping any single bit of a ratchet message (pre-key or normal) fails cleanly and
    /// leaves the session able to decrypt the genuine message.
    #[test]
    fn any_flipped_ratchet_bit_fails(prekey in any::<bool>(), bit in any::<proptest::sample::Index>()) {
        let mut alice = Peer::new();
        let mut bob = Peer::new();
        let link = bob.card().to_invite_link();
        alice.add_contact(&link);
        let bob_id = bob.public();
        let alice_keys = alice.keys.clone();
        let first = alice.sessions.get_mut(&bob_id).unwrap().encrypt(b"first").unwrap();
        let (mut sb, _) = Session::inbound(&mut bob.dev, &alice_keys, &first).unwrap();
        if !prekey {
            let r = sb.encrypt(b"ack").unwrap();
            alice.sessions.get_mut(&bob_id).unwrap().decrypt(&r).unwrap();
        }
        let msg = alice.sessions.get_mut(&bob_id).unwrap().encrypt(b"the genuine message").unwrap();
        prop_assert_eq!(Session::is_prekey_message(&msg), prekey);
        let mut bad = msg.clone();
        let b = bit.index(bad.len() * 8);
        bad[b / 8] ^= 1 << (b % 8);
        prop_assert!(sb.decrypt_from(&alice_keys, &bad).is_err());
        // nor can the altered message start a fresh session
        let mut bob2 = instaconnect_crypto::Device::from_pickle_bytes(&bob.dev.to_pickle_bytes()).unwrap();
        prop_assert!(Session::inbound(&mut bob2, &alice_keys, &bad).is_err());
        prop_assert_eq!(&sb.decrypt_from(&alice_keys, &msg).unwrap()[..], b"the genuine message");
    }

    /// A replayed envelope (same bytes, any time later within the window) is a duplicate.
    #[test]
    fn replayed_envelope_is_duplicate(n in 1usize..8, replay in any::<proptest::sample::Index>()) {
        let (mut alice, mut bob) = connected_pair();
        let bob_keys = bob.keys.clone();
        let envs: Vec<Vec<u8>> = (0..n).map(|i| alice.send(&bob_keys, &[i as u8; 10])).collect();
        for e in &envs {
            bob.receive(e).unwrap();
        }
        let r = &envs[replay.index(n)];
        prop_assert!(matches!(bob.receive(r), Err(CryptoError::Duplicate { .. })), "replay not reported as duplicate");
        // the replay guard survives a restart (persisted with postcard)
        let saved = postcard::to_allocvec(&bob.guard).unwrap();
        bob.guard = postcard::from_bytes(&saved).unwrap();
        prop_assert!(matches!(bob.receive(r), Err(CryptoError::Duplicate { .. })), "replay not reported as duplicate");
    }
}

fn flip(msg: &[u8], bit: usize) -> Vec<u8> {
    let mut bad = msg.to_vec();
    bad[bit / 8] ^= 1 << (bit % 8);
    bad
}

/// Exhaustive companion of the property above: every single-bit flip of a pre-key message,
/// a normal message and a group message is refused (vodozemac alone would accept some,
/// e.g. the ignored top bit of an X25519 key or a renumbered protobuf field).
#[test]
fn every_bit_of_every_message_kind_matters() {
    let mut alice = Peer::new();
    let mut bob = Peer::new();
    let link = bob.card().to_invite_link();
    alice.add_contact(&link);
    let bob_id = bob.public();
    let alice_keys = alice.keys.clone();
    let sa = alice.sessions.get_mut(&bob_id).unwrap();
    let pre = sa.encrypt(b"pre-key message").unwrap();
    for bit in 0..pre.len() * 8 {
        let bad = flip(&pre, bit);
        assert!(
            Session::inbound(&mut bob.dev, &alice_keys, &bad).is_err(),
            "pre-key bit {bit}"
        );
    }
    let (mut sb, _) = Session::inbound(&mut bob.dev, &alice_keys, &pre).unwrap();
    let pre2 = sa.encrypt(b"second pre-key message").unwrap();
    for bit in 0..pre2.len() * 8 {
        assert!(
            sb.decrypt(&flip(&pre2, bit)).is_err(),
            "pre-key on session, bit {bit}"
        );
    }
    sa.decrypt(&sb.encrypt(b"ack").unwrap()).unwrap();
    let normal = sa.encrypt(b"normal message").unwrap();
    for bit in 0..normal.len() * 8 {
        assert!(sb.decrypt(&flip(&normal, bit)).is_err(), "normal bit {bit}");
    }
    assert_eq!(&sb.decrypt(&pre2).unwrap()[..], b"second pre-key message");
    assert_eq!(&sb.decrypt(&normal).unwrap()[..], b"normal message");

    let mut gs = instaconnect_crypto::GroupSender::new(b"g", 0).unwrap();
    let mut gr =
        instaconnect_crypto::GroupReceiver::from_key_share(alice.public(), &gs.key_share())
            .unwrap();
    let gm = gs.encrypt(b"group message");
    for bit in 0..gm.len() * 8 {
        assert!(gr.decrypt(&flip(&gm, bit)).is_err(), "group bit {bit}");
    }
    assert_eq!(&gr.decrypt(&gm).unwrap().plaintext[..], b"group message");
}
