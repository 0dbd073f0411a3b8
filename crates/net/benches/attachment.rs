//! Attachment throughput between two nodes on 127.0.0.1 (issue 6), beside iperf3 TCP on
//! loopback and single-core ChaCha20-Poly1305 sealing, in the same run.
//!
//! Run: `scripts/bench-attachment [SIZE_MIB]` (default 1024 MiB), which installs iperf3 if
//! missing and runs `cargo bench -p instaconnect-net --bench attachment -- ARGS`.
//!
//! Two nodes in one process (see `common/pair.rs`): A stores a file of SIZE MiB in its
//! attachment store (not timed), seals it for its manifest (timed apart: `send` does this
//! before anything goes out), and sends it; the time runs from the `SendAttachment` command
//! until B's engine reports the attachment complete — every chunk fetched in parts, checked
//! (hash and tag), written to B's attachment store, and the whole file's hash checked. Then
//! both files are compared (BLAKE3), untimed. Baselines: `iperf3 -c 127.0.0.1` for 5 s (TCP,
//! one stream, on this machine's loopback) and `seal_chunk` over 1 MiB chunks on one core
//! (ChaCha20-Poly1305 plus one copy). Target: at least 250 MB/s. The benchmark prints; it
//! never asserts a speed.

use std::path::PathBuf;
use std::process::{Command as Process, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use instaconnect_core::engine::{seal_attachment, AttachmentMeta, Command, Event};
use instaconnect_crypto::{chunk_layout, seal_chunk, AttachmentKey};
use instaconnect_store::Blobs;
use instaconnect_wire::proto::AttachmentKind;
use tokio::sync::broadcast::error::RecvError;

#[path = "common/pair.rs"]
mod pair;
use pair::{link, must, Node, PHONE_B};

const MIB: u64 = 1024 * 1024;
/// Longest wait for the transfer.
const TRANSFER_TIMEOUT: Duration = Duration::from_secs(1800);

const USAGE: &str = "usage: attachment [SIZE_MIB] [--iperf3 PATH]
  SIZE_MIB   size of the file sent (default 1024)
  --iperf3   iperf3 binary for the TCP baseline (default: iperf3 on PATH; skipped if absent)";

fn usage_error(msg: &str) -> ! {
    eprintln!("attachment: {msg}\n{USAGE}");
    std::process::exit(2)
}

fn megabytes_per_s(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / 1e6 / d.as_secs_f64().max(1e-9)
}

/// A file that does not compress, written in pieces.
fn fill(blobs: &dyn Blobs, id: &[u8; 16], size: u64) {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut piece = vec![0u8; (8 * MIB) as usize];
    let mut at = 0;
    while at < size {
        let n = (size - at).min(piece.len() as u64) as usize;
        for w in piece[..n].chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let b = x.to_le_bytes();
            w.copy_from_slice(&b[..w.len()]);
        }
        must("write the file", blobs.write_at(id, at, &piece[..n]));
        at += n as u64;
    }
    must("sync the file", blobs.sync(id));
}

fn hash_of(blobs: &dyn Blobs, id: &[u8; 16], size: u64) -> blake3::Hash {
    let mut h = blake3::Hasher::new();
    let mut at = 0;
    while at < size {
        let n = (size - at).min(8 * MIB) as usize;
        h.update(&must("read the file", blobs.read_at(id, at, n)));
        at += n as u64;
    }
    h.finalize()
}

/// MB/s of `seal_chunk` over 1 MiB chunks on this thread, for about a second.
fn aead_rate() -> f64 {
    let layout = must("layout", chunk_layout(1024 * MIB));
    let key = AttachmentKey::generate(&mut rand::rngs::OsRng);
    let chunk = vec![7u8; layout.chunk_size as usize];
    let start = Instant::now();
    let mut bytes = 0u64;
    let mut i = 0;
    while start.elapsed() < Duration::from_secs(1) {
        let sealed = must("seal", seal_chunk(&key, &layout, i % 1000, &chunk));
        bytes += chunk.len() as u64;
        i += 1;
        std::hint::black_box(sealed);
    }
    megabytes_per_s(bytes, start.elapsed())
}

/// iperf3 TCP on 127.0.0.1 for 5 s, one stream: MB/s received, or why it did not run.
fn iperf3_rate(bin: &PathBuf) -> Result<f64, String> {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
        l.local_addr().map_err(|e| e.to_string())?.port()
    };
    let port = port.to_string();
    let mut server = Process::new(bin)
        .args(["-s", "-1", "-B", "127.0.0.1", "-p", &port])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("{}: {e}", bin.display()))?;
    let mut rate = Err("iperf3 client failed".to_string());
    for _ in 0..50 {
        let o = Process::new(bin)
            .args(["-c", "127.0.0.1", "-p", &port, "-t", "5", "-J"])
            .output()
            .map_err(|e| e.to_string())?;
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_default();
        if let Some(bps) = v["end"]["sum_received"]["bits_per_second"].as_f64() {
            rate = Ok(bps / 8.0 / 1e6);
            break;
        }
        rate = Err(v["error"]
            .as_str()
            .unwrap_or("no rate in its output")
            .to_string());
        // The server may not be listening yet.
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = server.kill();
    let _ = server.wait();
    rate
}

fn main() {
    let mut size_mib = 1024u64;
    let mut iperf3 = PathBuf::from("iperf3");
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--bench" => {}
            "--iperf3" => {
                iperf3 = PathBuf::from(
                    args.next()
                        .unwrap_or_else(|| usage_error("--iperf3 needs a path")),
                )
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                return;
            }
            s => match s.parse() {
                Ok(n) if n > 0 => size_mib = n,
                _ => usage_error(&format!("unknown argument {s:?}")),
            },
        }
    }
    let size = size_mib * MIB;
    let load_before = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();

    eprintln!("baselines ...");
    let aead = aead_rate();
    let tcp = iperf3_rate(&iperf3);

    eprintln!("starting two nodes ...");
    let mut a = Node::start("node-a", pair::PHONE_A, "A", 1);
    let mut b = Node::start("node-b", PHONE_B, "B", 2);
    let main_rt = must(
        "tokio runtime",
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
    );
    main_rt.block_on(link(&mut a, &mut b));

    eprintln!("writing and sealing a {size_mib} MiB file ...");
    let id = [0x5a; 16];
    fill(a.blobs.as_ref(), &id, size);
    let meta = AttachmentMeta {
        kind: AttachmentKind::File,
        name: "big.bin".into(),
        mime: "application/octet-stream".into(),
        width: None,
        height: None,
        duration_ms: None,
        thumbnail: None,
        caption: None,
    };
    let sealing = Instant::now();
    let blobs: Arc<dyn Blobs> = a.blobs.clone();
    let manifest = must(
        "seal",
        seal_attachment(blobs.as_ref(), &id, meta, &mut rand::rngs::OsRng),
    );
    let sealing = sealing.elapsed();

    eprintln!("sending ...");
    let started = Instant::now();
    let hex: String = id.iter().map(|x| format!("{x:02x}")).collect();
    must(
        "send",
        main_rt.block_on(a.handle.command(Command::SendAttachment {
            to: PHONE_B.to_string(),
            id,
            manifest: Box::new(manifest),
        })),
    );
    let events = &mut b.events;
    let done = main_rt.block_on(async {
        tokio::time::timeout(TRANSFER_TIMEOUT, async {
            loop {
                match events.recv().await {
                    Ok(Event::AttachmentReceived { id: got, .. }) if got == hex => return,
                    Ok(Event::Problem { message }) => eprintln!("B: {message}"),
                    Ok(_) | Err(RecvError::Lagged(_)) => {}
                    Err(RecvError::Closed) => panic!("benchmark failed: B's events ended"),
                }
            }
        })
        .await
    });
    let took = started.elapsed();
    must(
        "the transfer within the timeout",
        done.map_err(|_| "timed out"),
    );
    let same = hash_of(a.blobs.as_ref(), &id, size) == hash_of(b.blobs.as_ref(), &id, size);
    let load_after = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    main_rt.block_on(a.close());
    main_rt.block_on(b.close());

    let ours = megabytes_per_s(size, took);
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "\nattachment benchmark: {size_mib} MiB file, two nodes on 127.0.0.1; {cpus} CPUs, load average {} before, {} after\n",
        load_before.split_whitespace().next().unwrap_or("?"),
        load_after.split_whitespace().next().unwrap_or("?"),
    );
    println!("| measure | MB/s | ours / it | target |");
    println!("|---|---:|---:|---|");
    let verdict = if ours >= 250.0 { "met" } else { "NOT met" };
    println!(
        "| InstaConnect transfer, send until B has checked the whole file ({:.1} s; files identical: {same}) | {ours:.0} | 1.00 | ≥ 250 MB/s: {verdict} |",
        took.as_secs_f64()
    );
    match tcp {
        Ok(t) => println!(
            "| iperf3 TCP, 127.0.0.1, 1 stream, 5 s | {t:.0} | {:.2} | |",
            ours / t
        ),
        Err(e) => println!("| iperf3 TCP: not run ({e}) | — | — | |"),
    }
    println!(
        "| ChaCha20-Poly1305 sealing of 1 MiB chunks, one core | {aead:.0} | {:.2} | |",
        ours / aead
    );
    println!(
        "| sealing for the manifest before sending (one pass, not in the transfer time; {:.1} s) | {:.0} | | |",
        sealing.as_secs_f64(),
        megabytes_per_s(size, sealing)
    );
    if !same {
        println!("\nbenchmark failed: the received file differs from the sent one");
        std::process::exit(1);
    }
}
