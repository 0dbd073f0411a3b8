//! Throughput of sealed envelopes and ratchet messages at 1 KiB, beside raw X25519 and
//! ChaCha20-Poly1305 measured in the same run (the ceiling).
//!
//! Run: `cargo bench -p instaconnect-crypto` (release profile). Plain program, no harness.
//! Each figure is the median of several timed rounds; machines are shared and noisy, so
//! compare the ratios rather than the absolute numbers.

use std::hint::black_box;
use std::time::{Duration, Instant};

use chacha20poly1305::aead::{AeadInOut, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Nonce};
use instaconnect_crypto::{
    open_envelope, seal_envelope, CardDisplay, Device, EnvelopeContent, GroupReceiver, GroupSender,
    Identity, MessageId, PayloadKind, Session, BUCKET_1K, DEFAULT_CARD_TTL_MS, NOISE_X_OVERHEAD,
    SEALED_HEADER_LEN,
};

const KIB: usize = 1024;
const ROUNDS: usize = 5;
const ROUND_TIME: Duration = Duration::from_millis(300);
const NOW: u64 = 1_700_000_000_000;

/// Median ops/s of `op` over `ROUNDS` rounds of about `ROUND_TIME` each.
fn rate(mut op: impl FnMut()) -> f64 {
    for _ in 0..10 {
        op();
    }
    let mut rates: Vec<f64> = (0..ROUNDS)
        .map(|_| {
            let start = Instant::now();
            let mut n = 0u64;
            while start.elapsed() < ROUND_TIME {
                for _ in 0..16 {
                    op();
                }
                n += 16;
            }
            n as f64 / start.elapsed().as_secs_f64()
        })
        .collect();
    rates.sort_by(f64::total_cmp);
    rates[ROUNDS / 2]
}

/// Median ops/s for an operation that consumes prepared inputs (e.g. decrypting messages
/// that can each be decrypted once): `prepare(n)` builds the inputs for `n` operations
/// untimed, `run` performs all `n` and is timed.
fn rate_batched<S>(
    batch: usize,
    mut prepare: impl FnMut(usize) -> S,
    mut run: impl FnMut(S),
) -> f64 {
    let mut rates: Vec<f64> = (0..ROUNDS)
        .map(|_| {
            let inputs = prepare(batch);
            let start = Instant::now();
            run(inputs);
            batch as f64 / start.elapsed().as_secs_f64()
        })
        .collect();
    rates.sort_by(f64::total_cmp);
    rates[ROUNDS / 2]
}

fn main() {
    // ---- raw ceiling -------------------------------------------------------------------
    let mut k = [0x11u8; 32];
    let u = x25519_dalek::X25519_BASEPOINT_BYTES;
    let x25519 = rate(|| {
        k = x25519_dalek::x25519(black_box(k), black_box(u));
    });
    let aead = ChaCha20Poly1305::new_from_slice(&[7u8; 32]).unwrap_or_else(|_| unreachable!());
    let nonce = Nonce::from([0u8; 12]);
    let mut buf = vec![0x42u8; KIB];
    let chacha_seal = rate(|| {
        let tag = aead.encrypt_inout_detached(&nonce, b"", buf.as_mut_slice().into());
        black_box(tag.ok());
    });
    let mut ct = vec![0x42u8; KIB];
    let tag = aead
        .encrypt_inout_detached(&nonce, b"", ct.as_mut_slice().into())
        .ok();
    let tag = tag.unwrap_or_default();
    let chacha_open = rate(|| {
        let mut b = ct.clone();
        black_box(
            aead.decrypt_inout_detached(&nonce, b"", b.as_mut_slice().into(), &tag)
                .ok(),
        );
    });

    // ---- envelopes ---------------------------------------------------------------------
    let (alice_id, alice_dev) = (Identity::generate(), Device::generate());
    let (bob_id, mut bob_dev) = (Identity::generate(), Device::generate());
    let alice_keys = alice_dev.signed_keys(&alice_id);
    let bob_keys = bob_dev.signed_keys(&bob_id);
    // the largest payload that fits a 1 KiB envelope
    let payload_1k_env = BUCKET_1K - 1 - NOISE_X_OVERHEAD - SEALED_HEADER_LEN;
    let content = |id: u64, len: usize| EnvelopeContent {
        message_id: MessageId(u128::from(id).to_be_bytes()),
        timestamp_ms: NOW,
        kind: PayloadKind::Pairwise,
        payload: vec![0x33; len],
    };
    let c = content(1, payload_1k_env);
    let seal = rate(|| {
        black_box(seal_envelope(&alice_dev, &alice_keys, &bob_keys, &c).ok());
    });
    let env = seal_envelope(&alice_dev, &alice_keys, &bob_keys, &c).unwrap_or_default();
    assert_eq!(env.len(), BUCKET_1K);
    let open = rate(|| {
        black_box(open_envelope(&bob_dev, &env).ok());
    });

    // ---- pairwise ratchet (Olm) --------------------------------------------------------
    let card = bob_dev
        .contact_card(&bob_id, CardDisplay::default(), NOW, DEFAULT_CARD_TTL_MS)
        .unwrap_or_else(|e| panic!("{e}"));
    let mut sa = Session::outbound(&alice_dev, &card, NOW).unwrap_or_else(|e| panic!("{e}"));
    let first = sa.encrypt(b"hi").unwrap_or_default();
    let (mut sb, _) =
        Session::inbound(&mut bob_dev, &alice_keys, &first).unwrap_or_else(|e| panic!("{e}"));
    let _ = sa.decrypt(&sb.encrypt(b"ack").unwrap_or_default());
    let pt = vec![0x55u8; KIB];
    let olm_encrypt = rate(|| {
        black_box(sa.encrypt(&pt).ok());
    });
    let olm_decrypt = rate_batched(
        20_000,
        |n| {
            (0..n)
                .map(|_| sa.encrypt(&pt).unwrap_or_default())
                .collect::<Vec<_>>()
        },
        |msgs| {
            for m in msgs {
                black_box(sb.decrypt(&m).ok());
            }
        },
    );

    // ---- group (Megolm) ----------------------------------------------------------------
    let mut gs = GroupSender::new(b"bench", NOW).unwrap_or_else(|e| panic!("{e}"));
    let megolm_encrypt = rate(|| {
        black_box(gs.encrypt(&pt));
    });
    let mut gs2 = GroupSender::new(b"bench", NOW).unwrap_or_else(|e| panic!("{e}"));
    let megolm_decrypt = rate_batched(
        4_000,
        |n| {
            // a fresh session per round keeps the receiver's replay window small
            gs2.rotate(NOW);
            let gr = GroupReceiver::from_key_share(alice_id.public(), &gs2.key_share())
                .unwrap_or_else(|e| panic!("{e}"));
            (gr, (0..n).map(|_| gs2.encrypt(&pt)).collect::<Vec<_>>())
        },
        |(mut gr, msgs)| {
            for m in msgs {
                black_box(gr.decrypt(&m).ok());
            }
        },
    );

    // ---- report ------------------------------------------------------------------------
    // Ceiling per operation, from the raw rates above:
    //   seal  = 3 X25519 (ephemeral key, es, ss) + ChaCha20-Poly1305 over 1 KiB
    //   open  = 2 X25519 (es, ss)                + ChaCha20-Poly1305 over 1 KiB
    //   ratchet / group encrypt, decrypt = ChaCha20-Poly1305 over 1 KiB (symmetric only)
    let t_x = 1.0 / x25519;
    let (t_cs, t_co) = (1.0 / chacha_seal, 1.0 / chacha_open);
    let seal_ceiling = 1.0 / (3.0 * t_x + t_cs);
    let open_ceiling = 1.0 / (2.0 * t_x + t_co);
    let rows: [(&str, f64, Option<f64>); 11] = [
        ("raw X25519 scalar multiplication", x25519, None),
        ("raw ChaCha20-Poly1305 seal, 1 KiB", chacha_seal, None),
        ("raw ChaCha20-Poly1305 open, 1 KiB", chacha_open, None),
        (
            "ceiling: envelope seal (3 X25519 + AEAD 1 KiB)",
            seal_ceiling,
            None,
        ),
        (
            "ceiling: envelope open (2 X25519 + AEAD 1 KiB)",
            open_ceiling,
            None,
        ),
        ("envelope seal, 1 KiB envelope", seal, Some(seal_ceiling)),
        (
            "envelope open (+ sender auth), 1 KiB envelope",
            open,
            Some(open_ceiling),
        ),
        ("Olm ratchet encrypt, 1 KiB", olm_encrypt, Some(chacha_seal)),
        ("Olm ratchet decrypt, 1 KiB", olm_decrypt, Some(chacha_open)),
        (
            "Megolm group encrypt, 1 KiB",
            megolm_encrypt,
            Some(chacha_seal),
        ),
        (
            "Megolm group decrypt, 1 KiB",
            megolm_decrypt,
            Some(chacha_open),
        ),
    ];
    println!("instaconnect-crypto benchmark (median of {ROUNDS} rounds)");
    println!();
    println!("| operation | ops/s | ratio to ceiling |");
    println!("|---|---:|---:|");
    for (name, ops, ceiling) in rows {
        let ratio = ceiling.map_or_else(|| "—".to_string(), |c| format!("{:.3}", ops / c));
        println!("| {name} | {ops:.0} | {ratio} |");
    }
    println!();
    println!("1 KiB envelope = {payload_1k_env}-byte ratchet payload + {SEALED_HEADER_LEN}-byte sealed header + {NOISE_X_OVERHEAD}-byte Noise X overhead + 1 version byte.");
    println!("seal also verifies the recipient's device-key signatures (2 Ed25519), open the sender's (2 Ed25519); Olm uses AES-256-CBC + HMAC-SHA-256 and Megolm adds an Ed25519 signature, so their ratios sit below 1 by design.");
}
