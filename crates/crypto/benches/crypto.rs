//! Throughput of sealed envelopes and ratchet messages at 1 KiB, beside raw X25519 and
//! ChaCha20-Poly1305 measured in the same run (the ceiling).
//!
//! Run: `cargo bench -p instaconnect-crypto` (release profile). Plain program, no harness.
//! Every operation is timed in each of `ROUNDS` interleaved rounds (so load changes on a
//! shared machine hit all rows alike) and the median round is reported. Compare the ratios
//! rather than the absolute numbers.

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
const ROUNDS: usize = 7;
const ROUND_TIME: Duration = Duration::from_millis(250);
const NOW: u64 = 1_700_000_000_000;
/// Messages prepared per round for operations that consume their input (decryption).
const OLM_BATCH: usize = 4_000;
/// Below `GROUP_SEEN_INDEX_CAPACITY`, so the receiver's replay window never evicts.
const MEGOLM_BATCH: usize = 4_000;

/// One timed round of a repeatable operation: ops/s over about `ROUND_TIME`.
fn round(op: &mut dyn FnMut()) -> f64 {
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < ROUND_TIME {
        for _ in 0..16 {
            op();
        }
        n += 16;
    }
    n as f64 / start.elapsed().as_secs_f64()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn must<T, E: std::fmt::Display>(r: Result<T, E>) -> T {
    r.unwrap_or_else(|e| panic!("benchmark setup failed: {e}"))
}

fn main() {
    // ---- raw ceiling -------------------------------------------------------------------
    let mut k = [0x11u8; 32];
    let u = x25519_dalek::X25519_BASEPOINT_BYTES;
    let mut x25519 = || k = x25519_dalek::x25519(black_box(k), black_box(u));
    let aead = must(ChaCha20Poly1305::new_from_slice(&[7u8; 32]).map_err(|_| "key length"));
    let nonce = Nonce::from([0u8; 12]);
    let mut buf = vec![0x42u8; KIB];
    let mut chacha_seal = || {
        black_box(
            aead.encrypt_inout_detached(&nonce, b"", buf.as_mut_slice().into())
                .ok(),
        );
    };
    let mut ct = vec![0x42u8; KIB];
    let tag = must(
        aead.encrypt_inout_detached(&nonce, b"", ct.as_mut_slice().into())
            .map_err(|_| "seal"),
    );
    let mut scratch = vec![0u8; KIB];
    let mut chacha_open = || {
        scratch.copy_from_slice(&ct);
        black_box(
            aead.decrypt_inout_detached(&nonce, b"", scratch.as_mut_slice().into(), &tag)
                .ok(),
        );
    };

    // ---- envelopes ---------------------------------------------------------------------
    let (alice_id, alice_dev) = (Identity::generate(), Device::generate());
    let (bob_id, mut bob_dev) = (Identity::generate(), Device::generate());
    let alice_keys = alice_dev.signed_keys(&alice_id);
    let bob_keys = bob_dev.signed_keys(&bob_id);
    // the largest payload that fits a 1 KiB envelope
    let payload_1k_env = BUCKET_1K - 1 - NOISE_X_OVERHEAD - SEALED_HEADER_LEN;
    let content = EnvelopeContent {
        message_id: MessageId([9; 16]),
        timestamp_ms: NOW,
        kind: PayloadKind::Pairwise,
        payload: vec![0x33; payload_1k_env],
    };
    let env = must(seal_envelope(&alice_dev, &alice_keys, &bob_keys, &content));
    assert_eq!(env.len(), BUCKET_1K);
    let mut seal = || {
        black_box(seal_envelope(&alice_dev, &alice_keys, &bob_keys, &content).ok());
    };

    // ---- pairwise ratchet (Olm) --------------------------------------------------------
    let card =
        must(bob_dev.contact_card(&bob_id, CardDisplay::default(), NOW, DEFAULT_CARD_TTL_MS));
    let mut sa = must(Session::outbound(&alice_dev, &card, NOW));
    let first = must(sa.encrypt(b"hi"));
    let (mut sb, _) = must(Session::inbound(&mut bob_dev, &alice_keys, &first));
    must(sa.decrypt(&must(sb.encrypt(b"ack"))));
    let mut open = || {
        black_box(open_envelope(&bob_dev, &env).ok());
    };
    let pt = vec![0x55u8; KIB];

    // ---- group (Megolm) ----------------------------------------------------------------
    let mut gs = must(GroupSender::new(b"bench", NOW));

    let names = [
        "raw X25519 scalar multiplication",
        "raw ChaCha20-Poly1305 seal, 1 KiB",
        "raw ChaCha20-Poly1305 open, 1 KiB",
        "envelope seal, 1 KiB envelope",
        "envelope open (+ sender auth), 1 KiB envelope",
        "Olm ratchet encrypt, 1 KiB",
        "Olm ratchet decrypt, 1 KiB",
        "Megolm group encrypt, 1 KiB",
        "Megolm group decrypt, 1 KiB",
    ];
    let mut samples: Vec<Vec<f64>> = vec![Vec::new(); names.len()];
    for r in 0..=ROUNDS {
        let mut this = [0f64; 9];
        this[0] = round(&mut x25519);
        this[1] = round(&mut chacha_seal);
        this[2] = round(&mut chacha_open);
        this[3] = round(&mut seal);
        this[4] = round(&mut open);
        // Olm: encrypt a batch (timed), then decrypt it in order (timed)
        let start = Instant::now();
        let msgs: Vec<Vec<u8>> = (0..OLM_BATCH).map(|_| must(sa.encrypt(&pt))).collect();
        this[5] = OLM_BATCH as f64 / start.elapsed().as_secs_f64();
        let start = Instant::now();
        for m in &msgs {
            black_box(must(sb.decrypt(m)));
        }
        this[6] = OLM_BATCH as f64 / start.elapsed().as_secs_f64();
        // Megolm: fresh session each round, keys shared, then encrypt and decrypt a batch
        gs.rotate(NOW);
        let mut gr = must(GroupReceiver::from_key_share(
            alice_id.public(),
            &gs.key_share(),
        ));
        let start = Instant::now();
        let msgs: Vec<Vec<u8>> = (0..MEGOLM_BATCH).map(|_| gs.encrypt(&pt)).collect();
        this[7] = MEGOLM_BATCH as f64 / start.elapsed().as_secs_f64();
        let start = Instant::now();
        for m in &msgs {
            black_box(must(gr.decrypt(m)));
        }
        this[8] = MEGOLM_BATCH as f64 / start.elapsed().as_secs_f64();
        if r > 0 {
            // round 0 is a warm-up
            for (s, v) in samples.iter_mut().zip(this) {
                s.push(v);
            }
        }
    }
    let rates: Vec<f64> = samples.into_iter().map(median).collect();

    // ---- report ------------------------------------------------------------------------
    // Ceiling per operation, from the raw rates of the same run:
    //   seal = 3 X25519 (ephemeral key, es, ss) + ChaCha20-Poly1305 over 1 KiB
    //   open = 2 X25519 (es, ss)                + ChaCha20-Poly1305 over 1 KiB
    //   ratchet / group encrypt, decrypt = ChaCha20-Poly1305 over 1 KiB (symmetric only)
    let (x, cs, co) = (rates[0], rates[1], rates[2]);
    let seal_ceiling = 1.0 / (3.0 / x + 1.0 / cs);
    let open_ceiling = 1.0 / (2.0 / x + 1.0 / co);
    let ceilings = [
        None,
        None,
        None,
        Some(seal_ceiling),
        Some(open_ceiling),
        Some(cs),
        Some(co),
        Some(cs),
        Some(co),
    ];
    println!("instaconnect-crypto benchmark (median of {ROUNDS} interleaved rounds)");
    println!();
    println!("| operation | ops/s | ceiling ops/s | ratio to ceiling |");
    println!("|---|---:|---:|---:|");
    for ((name, ops), ceiling) in names.iter().zip(&rates).zip(ceilings) {
        match ceiling {
            Some(c) => println!("| {name} | {ops:.0} | {c:.0} | {:.3} |", ops / c),
            None => println!("| {name} | {ops:.0} | — | — |"),
        }
    }
    println!();
    println!("Ceilings: envelope seal = 3 X25519 + ChaCha20-Poly1305(1 KiB); envelope open = 2 X25519 + ChaCha20-Poly1305(1 KiB); ratchet rows = ChaCha20-Poly1305(1 KiB).");
    println!("1 KiB envelope = {payload_1k_env}-byte ratchet payload + {SEALED_HEADER_LEN}-byte sealed header + {NOISE_X_OVERHEAD}-byte Noise X overhead + 1 version byte.");
    println!("Seal also verifies the recipient's device-key signatures (2 Ed25519 verifies), open the sender's; Olm uses AES-256-CBC + HMAC-SHA-256 with per-message HKDF and Megolm adds an Ed25519 signature per message, so their ratios sit well below 1 by design.");
}
