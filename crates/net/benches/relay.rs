//! The relay daemon beside mosquitto in the same run (issue 5's benchmark).
//!
//! Run: `scripts/bench-relay [--deposits N] [--hold M] [--cycles C] [--window W] [--batch B]
//! [--batch-window K]`, which builds
//! the release `instaconnect`, installs mosquitto when missing and runs `cargo bench -p
//! instaconnect-net --bench relay -- ARGS`. Plain program, no harness: it prints a table and
//! asserts nothing about time.
//!
//! What is measured:
//! - Deposit rate: N (20,000) sealed envelopes of 1 KiB (a pool of 256 really sealed with
//!   `crypto::seal_envelope`, deposited in turn) from one ephemeral client to a real
//!   `instaconnect relay` process on 127.0.0.1, as a device deposits what it has queued:
//!   `DepositBatch` requests of B (256) envelopes, K (4) requests in flight; an envelope
//!   counts once the batch's signed receipt arrived (the relay sends it only after the flush)
//!   and was checked for it (`crypto::check_batch_receipt`: relay, mailbox, envelope hash).
//!   Baseline: N QoS 1 publishes of 1 KiB to mosquitto, W (128) in flight, until every PUBACK
//!   arrived, while the persistent-session QoS 1 subscriber is offline. (MQTT has no batch:
//!   the issue compares envelopes per second.)
//! - Drain: the mailbox owner reconnects and fetches every envelope (`FetchPage`, 900 a page,
//!   which fits the frame, 8 requests in flight) and deletes each fetched page
//!   (`DeleteRange`, owner-signed); timed until the last delete's receipt. Baseline: the
//!   subscriber reconnects and receives (and PUBACKs) the N queued messages.
//! - Memory: the relay's RSS (VmRSS, and its peak VmHWM) once M (100,000) envelopes are held.
//! - Disk: after C (100,000) deposit+delete cycles on top of the M held, the size on disk of
//!   the relay's database against the live data (M × 1 KiB).
//!
//! `--hold 1000000 --cycles 1000000` are the sizes (several minutes).

#[path = "common/mosquitto.rs"]
mod mosquitto;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use instaconnect_crypto::{
    check_batch_receipt, deletion_hash, envelope_hash, seal_envelope, Device, EnvelopeContent,
    Identity, IdentityKey, MailboxKey, MessageId, PayloadKind,
};
use instaconnect_net::mailbox_client::{owner_auth, MailboxClient};
use instaconnect_net::RequestId;
use instaconnect_wire::mailbox::{
    DepositItem, MailboxRequest, MailboxResponse, OwnerOp, MAX_DELETE_SPAN, MAX_DEPOSIT_ITEMS,
};
use mosquitto::Broker;
use rumqttc::{AsyncClient, Event as MqttEvent, MqttOptions, Packet, QoS};

const ENVELOPE_BYTES: usize = 1024;
const POOL: usize = 256;
const TOPIC: &str = "instaconnect/relay-bench";
const SUB_ID: &str = "instaconnect-relay-bench-sub";
const PUB_ID: &str = "instaconnect-relay-bench-pub";
const DRAIN_WINDOW: usize = 8;
/// Envelopes asked for per `FetchPage`: as many 1 KiB envelopes as fit the frame.
const PAGE: u32 = 900;
const TIMEOUT: Duration = Duration::from_secs(60);
const DEFAULT_MOSQUITTO: &str = "/usr/sbin/mosquitto";

const USAGE: &str = "usage: relay [--deposits N] [--hold M] [--cycles C] [--window W] \
[--batch B] [--batch-window K] [--mosquitto PATH] [--relay-bin PATH]
  --deposits   envelopes deposited and drained, and messages through mosquitto (default 20000)
  --hold       envelopes held when the relay's RSS is read (default 100000; the issue: 1000000)
  --cycles     deposit+delete cycles before disk use is read (default 100000; the issue: 1000000)
  --window     mosquitto publishes in flight (default 128)
  --batch      envelopes per relay deposit request (default 256, at most 900: the frame)
  --batch-window  relay deposit requests in flight (default 4)
  --mosquitto  broker binary (default $MOSQUITTO or /usr/sbin/mosquitto)
  --relay-bin  instaconnect binary (default $INSTACONNECT_BIN, else target/release/instaconnect)";

struct Args {
    deposits: usize,
    hold: usize,
    cycles: usize,
    window: usize,
    batch: usize,
    batch_window: usize,
    mosquitto: PathBuf,
    relay_bin: PathBuf,
}

fn usage_error(msg: &str) -> ! {
    eprintln!("relay: {msg}\n{USAGE}");
    std::process::exit(2)
}

fn must<T, E: std::fmt::Display>(what: &str, r: Result<T, E>) -> T {
    r.unwrap_or_else(|e| panic!("benchmark failed: {what}: {e}"))
}

fn parse_args() -> Args {
    let exe = std::env::current_exe().unwrap_or_default();
    // target/release/deps/relay-HASH -> target/release/instaconnect
    let default_bin = exe
        .parent()
        .and_then(Path::parent)
        .map(|d| d.join("instaconnect"))
        .unwrap_or_default();
    let mut a = Args {
        deposits: 20_000,
        hold: 100_000,
        cycles: 100_000,
        window: 128,
        batch: 256,
        batch_window: 4,
        mosquitto: std::env::var_os("MOSQUITTO")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_MOSQUITTO)),
        relay_bin: std::env::var_os("INSTACONNECT_BIN")
            .map(PathBuf::from)
            .unwrap_or(default_bin),
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut num = |name: &str| -> usize {
            it.next()
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| usage_error(&format!("{name} needs a number")))
        };
        match arg.as_str() {
            "--deposits" => a.deposits = num("--deposits"),
            "--hold" => a.hold = num("--hold"),
            "--cycles" => a.cycles = num("--cycles"),
            "--window" => a.window = num("--window").clamp(1, 150),
            "--batch" => a.batch = num("--batch").clamp(1, 900.min(MAX_DEPOSIT_ITEMS)),
            "--batch-window" => a.batch_window = num("--batch-window").clamp(1, 64),
            "--mosquitto" => {
                a.mosquitto = PathBuf::from(
                    it.next()
                        .unwrap_or_else(|| usage_error("--mosquitto needs a path")),
                )
            }
            "--relay-bin" => {
                a.relay_bin = PathBuf::from(
                    it.next()
                        .unwrap_or_else(|| usage_error("--relay-bin needs a path")),
                )
            }
            "--bench" => {}
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0)
            }
            other => usage_error(&format!("unknown argument {other:?}")),
        }
    }
    if a.deposits == 0 {
        usage_error("--deposits must be at least 1");
    }
    a
}

/// 256 envelopes of 1 KiB, each really sealed to a recipient device.
fn sealed_pool() -> Vec<Vec<u8>> {
    let sender = Identity::generate();
    let device = Device::generate();
    let keys = device.signed_keys(&sender);
    let recipient = Identity::generate();
    let rdevice = Device::generate();
    let rkeys = rdevice.signed_keys(&recipient);
    (0..POOL)
        .map(|i| {
            let e = must(
                "seal",
                seal_envelope(
                    &device,
                    &keys,
                    &rkeys,
                    &EnvelopeContent {
                        message_id: MessageId([i as u8; 16]),
                        timestamp_ms: 1,
                        kind: PayloadKind::Pairwise,
                        payload: format!("benchmark message {i}").into_bytes(),
                    },
                ),
            );
            assert_eq!(e.len(), ENVELOPE_BYTES, "the smallest bucket is 1 KiB");
            e
        })
        .collect()
}

// ----- the relay process ------------------------------------------------------------------------

struct RelayProc {
    child: Child,
    addr: String,
    /// host:port of its `/metrics`.
    metrics: String,
    data: PathBuf,
    _dir: tempfile::TempDir,
}

impl RelayProc {
    fn start(bin: &Path) -> RelayProc {
        let dir = must("temp dir", tempfile::tempdir());
        let config = dir.path().join("relay.toml");
        must(
            "write relay.toml",
            std::fs::write(
                &config,
                "[limits]\nmailbox_max_envelopes = 100000000\nmailbox_max_bytes = 1099511627776\n\
                 total_max_bytes = 1099511627776\nrate_burst = 1000000000\n\
                 rate_per_second = 1000000000\n\
                 [per_ip]\nrate_burst = 1000000000\nrate_per_second = 1000000000\n\
                 [log]\nlevel = \"warn\"\n",
            ),
        );
        let data = dir.path().join("data");
        let mut child = must(
            &format!("start {}", bin.display()),
            Command::new(bin)
                .arg("relay")
                .arg("--config")
                .arg(&config)
                .arg("--data-dir")
                .arg(&data)
                .args([
                    "--no-mdns",
                    "--listen",
                    "/ip4/127.0.0.1/tcp/0",
                    "--metrics",
                    "127.0.0.1:0",
                ])
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn(),
        );
        let stdout = must("relay stdout", child.stdout.take().ok_or("not piped"));
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut addr = None;
            let mut metrics = None;
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(a) = line.strip_prefix("listening on ") {
                    addr.get_or_insert_with(|| a.to_string());
                }
                if let Some(m) = line
                    .strip_prefix("metrics: http://")
                    .and_then(|m| m.strip_suffix("/metrics"))
                {
                    metrics = Some(m.to_string());
                }
                if line == "relay ready" {
                    let _ = tx.send(addr.take().zip(metrics.take()));
                }
            }
        });
        let (addr, metrics) = rx
            .recv_timeout(TIMEOUT)
            .ok()
            .flatten()
            .unwrap_or_else(|| panic!("benchmark failed: the relay did not start"));
        RelayProc {
            child,
            addr,
            metrics,
            data,
            _dir: dir,
        }
    }

    /// (VmRSS, VmHWM) in bytes.
    fn rss(&self) -> (u64, u64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
                .unwrap_or(0)
                * 1024
        };
        (field("VmRSS:"), field("VmHWM:"))
    }

    /// (commits, answers released by them) from `/metrics`: group-commit sizes.
    fn commits(&self) -> (u64, u64) {
        use std::io::{Read, Write};
        let mut body = String::new();
        let mut s = must(
            "connect to /metrics",
            std::net::TcpStream::connect(&self.metrics),
        );
        must(
            "ask /metrics",
            write!(s, "GET /metrics HTTP/1.0\r\nHost: {}\r\n\r\n", self.metrics),
        );
        must("read /metrics", s.read_to_string(&mut body));
        let get = |name: &str| {
            body.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
                .unwrap_or(0)
        };
        (
            get("instaconnect_relay_commits_total"),
            get("instaconnect_relay_committed_outputs_total"),
        )
    }

    /// Bytes the database takes on disk (allocated blocks).
    fn disk(&self) -> u64 {
        fn walk(p: &Path) -> u64 {
            use std::os::unix::fs::MetadataExt;
            let Ok(meta) = std::fs::metadata(p) else {
                return 0;
            };
            if meta.is_dir() {
                std::fs::read_dir(p)
                    .map(|rd| rd.flatten().map(|e| walk(&e.path())).sum())
                    .unwrap_or(0)
            } else {
                meta.blocks() * 512
            }
        }
        walk(&self.data.join("relay-db"))
    }
}

impl Drop for RelayProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ----- relay phases -----------------------------------------------------------------------------

/// A deposited item as its receipt must name it: (mailbox, envelope hash).
type Sent = ([u8; 32], [u8; 32]);

/// How deposits go: `batch` envelopes a request, `window` requests in flight.
#[derive(Clone, Copy)]
struct Depositing {
    batch: usize,
    window: usize,
}

/// Deposits `n` envelopes in batches; returns the seqs in the receipts, each checked.
async fn deposit_n(
    c: &mut MailboxClient,
    relay: &IdentityKey,
    mailbox: [u8; 32],
    pool: &[Vec<u8>],
    n: usize,
    how: Depositing,
) -> Vec<u64> {
    let hashes: Vec<[u8; 32]> = pool.iter().map(|e| envelope_hash(e)).collect();
    let mut seqs = Vec::with_capacity(n);
    // Request -> (mailbox, envelope hash) of each item, for its receipt.
    let mut in_flight: HashMap<RequestId, Vec<Sent>> = HashMap::new();
    let mut sent = 0;
    while seqs.len() < n {
        while sent < n && in_flight.len() < how.window {
            let k = how.batch.min(n - sent);
            let mut items = Vec::with_capacity(k);
            let mut expect = Vec::with_capacity(k);
            for i in sent..sent + k {
                items.push(DepositItem {
                    mailbox,
                    envelope: pool[i % pool.len()].clone(),
                    deletion_hash: deletion_hash(&[(i % 251) as u8; 32]),
                });
                expect.push((mailbox, hashes[i % pool.len()]));
            }
            let id = must(
                "send",
                c.send(&MailboxRequest::DepositBatch { items }).await,
            );
            in_flight.insert(id, expect);
            sent += k;
        }
        let (id, answer) = must(
            "answer",
            must(
                "answer",
                tokio::time::timeout(TIMEOUT, c.next_answer()).await,
            ),
        );
        let Some(expect) = in_flight.remove(&id) else {
            continue;
        };
        match must("deposit", answer) {
            MailboxResponse::Deposits { receipt, refused } if refused.is_empty() => {
                for seq in must("receipt", check_batch_receipt(&receipt, relay, &expect)) {
                    seqs.push(seq.unwrap_or_else(|| panic!("benchmark failed: not stored")));
                }
            }
            other => panic!("benchmark failed: deposit answered {other:?}"),
        }
    }
    seqs
}

/// Deletes the envelopes `first..=last` with range deletes, `window` in flight.
async fn delete_all(c: &mut MailboxClient, key: &MailboxKey, first: u64, last: u64, window: usize) {
    let mut after = first - 1;
    let mut in_flight = 0;
    loop {
        while in_flight < window && after < last {
            let through = (after + MAX_DELETE_SPAN).min(last);
            let auth = must(
                "sign",
                owner_auth(key, OwnerOp::DeleteRange { after, through }),
            );
            let req = MailboxRequest::DeleteRange {
                mailbox: key.id(),
                after,
                through,
                auth,
            };
            must("send", c.send(&req).await);
            in_flight += 1;
            after = through;
        }
        if in_flight == 0 {
            return;
        }
        let (_, answer) = must(
            "answer",
            must(
                "answer",
                tokio::time::timeout(TIMEOUT, c.next_answer()).await,
            ),
        );
        in_flight -= 1;
        match must("delete", answer) {
            MailboxResponse::Receipt(_) => {}
            other => panic!("benchmark failed: delete answered {other:?}"),
        }
    }
}

/// Fetches everything in the mailbox (seqs `first..first+n`, PAGE a page, DRAIN_WINDOW
/// requests in flight) and deletes each fetched page with a range delete. Returns envelopes
/// received.
async fn drain(c: &mut MailboxClient, key: &MailboxKey, first: u64, n: usize) -> usize {
    let mut next_after = first - 1;
    let end = first - 1 + n as u64;
    // Fetch -> the `after` it asked from.
    let mut fetches: HashMap<RequestId, u64> = HashMap::new();
    let mut deletes = 0usize;
    let mut got = 0usize;
    loop {
        while next_after < end && fetches.len() + deletes < DRAIN_WINDOW {
            let auth = must(
                "sign",
                owner_auth(
                    key,
                    OwnerOp::FetchPage {
                        after: next_after,
                        limit: PAGE,
                    },
                ),
            );
            let req = MailboxRequest::FetchPage {
                mailbox: key.id(),
                after: next_after,
                limit: PAGE,
                auth,
            };
            fetches.insert(must("send", c.send(&req).await), next_after);
            next_after += u64::from(PAGE);
        }
        if fetches.is_empty() && deletes == 0 {
            return got;
        }
        let (id, answer) = must(
            "answer",
            must(
                "answer",
                tokio::time::timeout(TIMEOUT, c.next_answer()).await,
            ),
        );
        let asked = fetches.remove(&id);
        match (must("drain", answer), asked) {
            (MailboxResponse::Envelopes { items, .. }, Some(after)) => {
                let want = u64::from(PAGE).min(end - after);
                assert_eq!(
                    items.len() as u64,
                    want,
                    "benchmark failed: a short page (the pipelined fetches assume full ones)"
                );
                got += items.len();
                if let Some(last) = items.last() {
                    let through = last.seq;
                    let auth = must(
                        "sign",
                        owner_auth(key, OwnerOp::DeleteRange { after, through }),
                    );
                    let req = MailboxRequest::DeleteRange {
                        mailbox: key.id(),
                        after,
                        through,
                        auth,
                    };
                    must("send", c.send(&req).await);
                    deletes += 1;
                }
            }
            (MailboxResponse::Receipt(_), None) => deletes -= 1,
            (other, _) => panic!("benchmark failed: drain answered {other:?}"),
        }
    }
}

struct RelayResults {
    /// (commits, answers they released) during the deposit and the drain phases.
    deposit_commits: (u64, u64),
    drain_commits: (u64, u64),
    deposit_s: f64,
    drain_s: f64,
    drained: usize,
    rss: (u64, u64),
    disk: u64,
    live: u64,
    hold_s: f64,
    churn_s: f64,
}

async fn relay_phases(args: &Args, pool: &[Vec<u8>]) -> RelayResults {
    let relay = RelayProc::start(&args.relay_bin);
    let key = MailboxKey::generate();
    let mut c = must("connect", MailboxClient::connect(&relay.addr).await);
    let relay_key = must(
        "relay key",
        c.create(&key)
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| IdentityKey::from_bytes(&r.relay).map_err(|e| e.to_string())),
    );
    let how = Depositing {
        batch: args.batch,
        window: args.batch_window,
    };
    let before = relay.commits();
    let t = Instant::now();
    let seqs = deposit_n(&mut c, &relay_key, key.id(), pool, args.deposits, how).await;
    let deposit_s = t.elapsed().as_secs_f64();
    let after = relay.commits();
    let deposit_commits = (after.0 - before.0, after.1 - before.1);
    c.close().await;

    // The owner comes back on a new connection and drains.
    let mut owner = must("connect", MailboxClient::connect(&relay.addr).await);
    let first = seqs.iter().copied().min().unwrap_or(1);
    let t = Instant::now();
    let drained = drain(&mut owner, &key, first, args.deposits).await;
    let drain_s = t.elapsed().as_secs_f64();
    let drain_commits = {
        let now = relay.commits();
        (now.0 - after.0, now.1 - after.1)
    };

    // Hold M.
    let held = MailboxKey::generate();
    must("create", owner.create(&held).await);
    let t = Instant::now();
    deposit_n(&mut owner, &relay_key, held.id(), pool, args.hold, how).await;
    let hold_s = t.elapsed().as_secs_f64();
    let rss = relay.rss();

    // Churn C deposit+delete cycles in another mailbox, in rounds of 4,096.
    let churn = MailboxKey::generate();
    must("create", owner.create(&churn).await);
    let t = Instant::now();
    let mut done = 0;
    while done < args.cycles {
        let n = (args.cycles - done).min(4_096);
        let seqs = deposit_n(&mut owner, &relay_key, churn.id(), pool, n, how).await;
        let (first, last) = (seqs.iter().min(), seqs.iter().max());
        if let (Some(&first), Some(&last)) = (first, last) {
            assert_eq!(
                last - first + 1,
                n as u64,
                "benchmark failed: seqs not consecutive"
            );
            delete_all(&mut owner, &churn, first, last, DRAIN_WINDOW).await;
        }
        done += n;
    }
    let churn_s = t.elapsed().as_secs_f64();
    let disk = relay.disk();
    owner.close().await;
    RelayResults {
        deposit_commits,
        drain_commits,
        deposit_s,
        drain_s,
        drained,
        rss,
        disk,
        live: (args.hold * ENVELOPE_BYTES) as u64,
        hold_s,
        churn_s,
    }
}

// ----- mosquitto ------------------------------------------------------------------------------

/// Runs an MQTT client's event loop on this runtime; `on` sees every incoming packet and says
/// when to stop.
fn spawn_loop(
    mut events: rumqttc::EventLoop,
    mut on: impl FnMut(&Packet) -> bool + Send + 'static,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            match events.poll().await {
                Ok(MqttEvent::Incoming(p)) => {
                    if on(&p) {
                        return;
                    }
                }
                Ok(_) => {}
                // The broker closing at the end of a phase ends the loop; a failure
                // mid-phase shows up as the phase's timeout.
                Err(e) => {
                    eprintln!("mqtt client stopped: {e}");
                    return;
                }
            }
        }
    })
}

fn options(id: &str, port: u16, window: usize) -> MqttOptions {
    let mut o = MqttOptions::new(id, "127.0.0.1", port);
    o.set_clean_session(false)
        .set_keep_alive(Duration::from_secs(30))
        .set_inflight(window as u16)
        .set_max_packet_size(64 * 1024, 64 * 1024);
    o
}

/// (publish seconds, drain seconds, messages drained).
async fn mosquitto_phases(args: &Args, broker: &Broker) -> (f64, f64, usize) {
    // The subscriber's persistent session, then it goes offline.
    let (sub, events) = AsyncClient::new(options(SUB_ID, broker.port, args.window), 64);
    let (tx, rx) = tokio::sync::oneshot::channel();
    let mut tx = Some(tx);
    let task = spawn_loop(events, move |p| {
        if let Packet::SubAck(_) = p {
            if let Some(t) = tx.take() {
                let _ = t.send(());
            }
            return true;
        }
        false
    });
    must("subscribe", sub.subscribe(TOPIC, QoS::AtLeastOnce).await);
    must(
        "suback",
        must("suback", tokio::time::timeout(TIMEOUT, rx).await),
    );
    let _ = task.await;
    drop(sub);

    // The publisher: N QoS 1 publishes of 1 KiB, timed until the last PUBACK.
    let n = args.deposits;
    let (publisher, events) =
        AsyncClient::new(options(PUB_ID, broker.port, args.window), args.window);
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    let mut done_tx = Some(done_tx);
    let mut acks = 0;
    let _pub_task = spawn_loop(events, move |p| {
        if let Packet::PubAck(_) = p {
            acks += 1;
            if acks == n {
                if let Some(t) = done_tx.take() {
                    let _ = t.send(());
                }
            }
        }
        false
    });
    let payload = vec![0x5au8; ENVELOPE_BYTES];
    let t = Instant::now();
    for _ in 0..n {
        must(
            "publish",
            publisher
                .publish(TOPIC, QoS::AtLeastOnce, false, payload.clone())
                .await,
        );
    }
    must(
        "pubacks",
        must("pubacks", tokio::time::timeout(TIMEOUT * 10, done_rx).await),
    );
    let publish_s = t.elapsed().as_secs_f64();

    // The subscriber reconnects and drains.
    let t = Instant::now();
    let (sub, events) = AsyncClient::new(options(SUB_ID, broker.port, args.window), 64);
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    let mut done_tx = Some(done_tx);
    let mut got = 0;
    let task = spawn_loop(events, move |p| {
        if let Packet::Publish(_) = p {
            got += 1;
            if got == n {
                if let Some(t) = done_tx.take() {
                    let _ = t.send(got);
                }
                return true;
            }
        }
        false
    });
    let drained = must(
        "drain",
        must("drain", tokio::time::timeout(TIMEOUT * 10, done_rx).await),
    );
    let drain_s = t.elapsed().as_secs_f64();
    task.abort();
    drop(sub);
    (publish_s, drain_s, drained)
}

fn mib(b: u64) -> f64 {
    b as f64 / (1024.0 * 1024.0)
}

fn main() {
    let args = parse_args();
    if !args.relay_bin.exists() {
        usage_error(&format!(
            "{} does not exist: build it with `cargo build --release -p instaconnect` (scripts/bench-relay does)",
            args.relay_bin.display()
        ));
    }
    let rt = must(
        "runtime",
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build(),
    );
    let pool = sealed_pool();
    println!(
        "relay benchmark: {} deposits of 1 KiB sealed envelopes ({} a request, {} requests in flight; mosquitto: {} in flight), then {} held, {} deposit+delete cycles",
        args.deposits, args.batch, args.batch_window, args.window, args.hold, args.cycles
    );
    let r = rt.block_on(relay_phases(&args, &pool));
    let broker = Broker::start(&args.mosquitto, args.window as u16, "relay");
    let (m_pub, m_drain, m_drained) = rt.block_on(mosquitto_phases(&args, &broker));
    drop(broker);

    let n = args.deposits as f64;
    let dep = n / r.deposit_s;
    let drn = r.drained as f64 / r.drain_s;
    let mdep = n / m_pub;
    let mdrn = m_drained as f64 / m_drain;
    println!();
    println!("| measure | relay | mosquitto | relay / mosquitto | target |");
    println!("|---|---|---|---|---|");
    println!(
        "| deposits/s (acked after flush; mosquitto: PUBACK, no flush) | {dep:.0} | {mdep:.0} | {:.2} | ≥ 1.00 × mosquitto |",
        dep / mdep
    );
    println!(
        "| drain/s to a reconnecting owner (fetch + delete) | {drn:.0} | {mdrn:.0} | {:.2} | ≥ 100,000/s |",
        drn / mdrn
    );
    println!(
        "| RSS with {} envelopes held (peak) | {:.1} MiB ({:.1} MiB) | | | < 300 MiB |",
        args.hold,
        mib(r.rss.0),
        mib(r.rss.1)
    );
    let ratio = if r.live > 0 {
        r.disk as f64 / r.live as f64
    } else {
        f64::INFINITY
    };
    println!(
        "| disk after {} deposit+delete cycles, {} held | {:.1} MiB for {:.1} MiB live: {ratio:.2}× | | | < 3× live |",
        args.cycles,
        args.hold,
        mib(r.disk),
        mib(r.live)
    );
    println!();
    println!(
        "(drained {} of {}; holding {} took {:.1} s, {:.0}/s; {} cycles took {:.1} s)",
        r.drained,
        args.deposits,
        args.hold,
        r.hold_s,
        args.hold as f64 / r.hold_s.max(1e-9),
        args.cycles,
        r.churn_s
    );
    let per = |(commits, outputs): (u64, u64)| outputs as f64 / commits.max(1) as f64;
    println!(
        "(relay group commits: deposits {} commits, {:.1} answers each; drain {} commits, {:.1} answers each)",
        r.deposit_commits.0,
        per(r.deposit_commits),
        r.drain_commits.0,
        per(r.drain_commits)
    );
}
