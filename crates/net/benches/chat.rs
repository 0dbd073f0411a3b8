//! Two InstaConnect nodes chatting over 127.0.0.1 TCP, beside a mosquitto broker measured in
//! the same run (issue 4's benchmark).
//!
//! Run: `scripts/bench-chat [MESSAGES] [--seconds S] [--rate R] [--max-undelivered U]`, which
//! installs mosquitto when missing and runs `cargo bench -p instaconnect-net --bench chat --
//! ARGS` (`--help` lists every option). Plain program, no harness: it prints a table and
//! asserts nothing about time. `RUST_LOG=instaconnect_net=debug` shows what the nodes log.
//!
//! What is measured, for us and for mosquitto alike, after a warm-up of [`WARMUP`] messages:
//! - Throughput: MESSAGES (20,000) texts of 1 KiB from A to B, end-to-end encrypted and stored
//!   durably by B (one flush per batch) before its ack, with up to WINDOW (512) `Send`
//!   commands outstanding. Timed from the first command until A has seen `Delivered` for every
//!   one, and until B has seen `MessageReceived` for every one. Baseline: MESSAGES QoS 1
//!   publishes of 1 KiB until the subscriber (persistent session, QoS 1) has received them all.
//! - Latency at a fixed rate (1,000/s for 10 s): one `Send` (or publish) per tick, timed from
//!   its tick until the receiver has it. Both ends live in this process, so one monotonic
//!   clock serves both; the text carries a sequence number to match them.
//!
//! Each node, and each MQTT client, runs on its own single-worker tokio runtime (its own OS
//! thread), as it would in its own process; the coordinator that issues commands and
//! timestamps events runs on the main thread (a current-thread runtime). Events are waited
//! for, never slept on: a run ends when everything arrived or when nothing new arrived for
//! [`STALL_TIMEOUT`], and is then reported as stalled with what it reached (and what A's and
//! B's stores still hold). If an event subscriber lags, the count is redone from the store.
//! If a stalled run left A disconnected, the next run dials B again first (A's engine does not
//! redial a peer it cannot discover, and mDNS is off here).
//!
//! `--max-undelivered U` makes the benchmark hold back its next `Send` while U of its texts are
//! undelivered, which caps what the engine has in flight (its own cap is
//! `MAX_INFLIGHT_PER_PEER`); latency still counts from the scheduled send.
//!
//! The broker is a `mosquitto` process started here on a free port of 127.0.0.1 with a
//! temporary config (persistence on, in a temporary directory; no limit on queued messages, so
//! none is dropped; the engine's in-flight window for the broker and both clients) and killed at
//! the end; a system broker, if any, is left alone. Note that mosquitto keeps its queue in
//! memory and writes its persistence file only every `autosave_interval` (30 min) and at exit,
//! while B flushes to disk before every ack.

use std::collections::HashSet;
use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::stream::{FuturesUnordered, StreamExt};
use instaconnect_core::engine::{Command, Event, MAX_INFLIGHT_PER_PEER};
use instaconnect_store::Store;
use instaconnect_wire::records::{DeliveryState, Direction};
use rumqttc::{AsyncClient, Event as MqttEvent, MqttOptions, Packet, QoS};
use tokio::runtime::Runtime;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::time::MissedTickBehavior;

/// Every text and payload is exactly this long.
const TEXT_BYTES: usize = 1024;
const TOPIC: &str = "instaconnect/bench";
const SUB_ID: &str = "instaconnect-bench-sub";
const PUB_ID: &str = "instaconnect-bench-pub";
/// Messages sent (and waited for) before measuring, on both systems.
const WARMUP: usize = 500;
/// The engine's in-flight window per peer; the MQTT publisher and the broker get the same.
const MQTT_INFLIGHT: u16 = MAX_INFLIGHT_PER_PEER as u16;
/// A run in which nothing arrives for this long is reported as stalled.
const STALL_TIMEOUT: Duration = Duration::from_secs(30);
const DEFAULT_MOSQUITTO: &str = "/usr/sbin/mosquitto";

// ----- arguments ----------------------------------------------------------------------------

struct Args {
    messages: usize,
    seconds: u64,
    rate: u64,
    window: usize,
    /// Hold back new sends while this many of ours are not yet delivered (0: never).
    max_undelivered: usize,
    mosquitto: PathBuf,
}

const USAGE: &str = "usage: chat [MESSAGES] [--messages N] [--seconds S] [--rate R] \
[--window W] [--max-undelivered U] [--mosquitto PATH]
  MESSAGES   texts for the throughput run (default 20000)
  --seconds  length of the fixed-rate latency run (default 10)
  --rate     messages per second in the latency run (default 1000)
  --window   Send commands outstanding at once in the throughput run (default 512)
  --max-undelivered  hold back our next Send while U texts are not yet delivered (default 0:
             never; latency still counts from the scheduled send)
  --mosquitto  broker binary (default $MOSQUITTO or /usr/sbin/mosquitto)";

fn parse_args() -> Args {
    let mut a = Args {
        messages: 20_000,
        seconds: 10,
        rate: 1_000,
        window: 512,
        max_undelivered: 0,
        mosquitto: std::env::var_os("MOSQUITTO")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_MOSQUITTO)),
    };
    fn number<T: std::str::FromStr>(flag: &str, v: Option<String>) -> T {
        match v.as_deref().map(str::parse) {
            Some(Ok(n)) => n,
            _ => usage_error(&format!("{flag} needs a number")),
        }
    }
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            // `cargo bench` passes `--bench` to every bench target.
            "--bench" => {}
            "--messages" | "-n" => a.messages = number(&arg, it.next()),
            "--seconds" => a.seconds = number(&arg, it.next()),
            "--rate" => a.rate = number(&arg, it.next()),
            "--window" => a.window = number(&arg, it.next()),
            "--max-undelivered" => a.max_undelivered = number(&arg, it.next()),
            "--mosquitto" => {
                a.mosquitto = PathBuf::from(
                    it.next()
                        .unwrap_or_else(|| usage_error("--mosquitto needs a path")),
                )
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            s => match s.parse() {
                Ok(n) => a.messages = n,
                Err(_) => usage_error(&format!("unknown argument {s:?}")),
            },
        }
    }
    if a.messages == 0 || a.seconds == 0 || a.rate == 0 || a.window == 0 {
        usage_error("counts must be positive");
    }
    a
}

fn usage_error(msg: &str) -> ! {
    eprintln!("chat: {msg}\n{USAGE}");
    std::process::exit(2)
}

// ----- texts ----------------------------------------------------------------------------------

/// `TAG SEQ ` then filler, exactly [`TEXT_BYTES`] long.
fn text(tag: &str, seq: usize) -> String {
    let mut s = format!("{tag} {seq:08} ");
    while s.len() < TEXT_BYTES {
        s.push(char::from(b'a' + (s.len() % 26) as u8));
    }
    s
}

fn seq_of(tag: &str, s: &str) -> Option<usize> {
    s.strip_prefix(tag)?
        .strip_prefix(' ')?
        .get(..8)?
        .parse()
        .ok()
}

fn hex(id: &[u8; 16]) -> String {
    id.iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether the stored message with this hex id is one of the run's (a stalled run's late
/// deliveries must not count for the next one).
fn is_tagged(store: &dyn Store, id: &str, tag: &str) -> bool {
    let mut raw = [0u8; 16];
    if id.len() != 32 || !id.is_ascii() {
        return false;
    }
    for (i, b) in raw.iter_mut().enumerate() {
        match u8::from_str_radix(&id[2 * i..2 * i + 2], 16) {
            Ok(v) => *b = v,
            Err(_) => return false,
        }
    }
    matches!(store.message(&raw), Ok(Some(m)) if m.text.starts_with(tag))
}

/// How long a run of `n` messages may take to drain before it is reported incomplete.
fn drain_timeout(n: usize) -> Duration {
    Duration::from_secs(60) + Duration::from_millis(20 * n as u64)
}

/// Prints what a node reports that a user would be told of as trouble (never counted).
async fn monitor(name: &'static str, mut rx: broadcast::Receiver<Event>) {
    loop {
        match rx.recv().await {
            Ok(Event::Problem { message }) => eprintln!("{name}: problem: {message}"),
            Ok(Event::Presence {
                online: false,
                peer,
            }) => eprintln!("{name}: {peer} went offline"),
            Ok(Event::Misbehaving { peer }) => eprintln!("{name}: {peer} misbehaving"),
            Ok(_) | Err(RecvError::Lagged(_)) => {}
            Err(RecvError::Closed) => return,
        }
    }
}

/// What a node's state says about a run that did not finish.
async fn stall_report(name: &str, node: &Node) {
    let outbox = node.store.outbox().map(|o| o.len());
    let held = node.store.held().map(|h| h.len());
    let peers = node.handle.peers().await.unwrap_or_default();
    let links: Vec<String> = peers
        .iter()
        .map(|p| format!("{} connected={}", p.peer, p.connected))
        .collect();
    eprintln!(
        "{name}: outbox {outbox:?}, held back {held:?}, peers [{}]",
        links.join(", ")
    );
}

/// A's engine does not dial a peer again by itself when it cannot discover it (mDNS is off
/// here), so if an earlier run ended in a disconnection the benchmark dials again, as a
/// restarted `run --peer` would, and waits for B's presence.
async fn reconnect_if_needed(a: &Node, b: &Node) {
    let peers = a.handle.peers().await.unwrap_or_default();
    if peers.iter().any(|p| p.peer == b.peer && p.connected) {
        return;
    }
    eprintln!("A is no longer connected to B; dialing again");
    let mut rx = a.handle.subscribe();
    let Some(addr) = b.net.listen_addrs().await.into_iter().next() else {
        return;
    };
    if let Err(e) = a.net.dial(&format!("{addr}/p2p/{}", b.peer)).await {
        eprintln!("dial failed: {e}");
        return;
    }
    let online = async {
        loop {
            match rx.recv().await {
                Ok(Event::Presence { peer, online: true }) if peer == b.peer => return,
                Ok(_) | Err(RecvError::Lagged(_)) => {}
                Err(RecvError::Closed) => return,
            }
        }
    };
    if tokio::time::timeout(SETUP_TIMEOUT, online).await.is_err() {
        eprintln!("B did not come back online");
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Watch {
    /// A's `StateChanged{Delivered}` for texts with the run's tag.
    Delivered,
    /// B's `MessageReceived` for texts with the run's tag.
    Received,
}

/// What one observer follows.
struct Spec {
    watch: Watch,
    /// The run's texts start with this.
    tag: &'static str,
    want: usize,
    /// The node's store, to recount from after a lag.
    store: Arc<dyn Store>,
    /// The conversation (the other node's number).
    contact: &'static str,
    timeout: Duration,
}

/// What one side saw of a run.
struct Observed {
    /// When the last message came; `None` if not all came before the timeout.
    done: Option<Instant>,
    count: usize,
    /// When the latest new one came (the end of a run that stalled).
    last: Option<Instant>,
    /// Arrival by sequence number (`Received` only).
    at: Vec<Option<Instant>>,
    /// Events missed because this subscriber fell behind (recounted from the store).
    lagged: u64,
}

/// Follows one node's events until `want` messages of the run have been delivered or
/// received. If the subscriber lags (the broadcast channel overflows), it recounts from the
/// node's store, so the count stays right; only those arrival times are lost.
async fn observe(
    mut rx: broadcast::Receiver<Event>,
    spec: Spec,
    counter: Option<watch::Sender<usize>>,
) -> Observed {
    let Spec {
        watch,
        tag,
        want,
        store,
        contact,
        timeout,
    } = spec;
    let mut ids: HashSet<String> = HashSet::with_capacity(want);
    let mut at = vec![None; if watch == Watch::Received { want } else { 0 }];
    let mut lagged = 0;
    let mut done = None;
    let mut last = None;
    let deadline = tokio::time::Instant::now() + timeout;
    let mut progress = tokio::time::Instant::now();
    while ids.len() < want {
        let until = deadline.min(progress + STALL_TIMEOUT);
        let ev = match tokio::time::timeout_at(until, rx.recv()).await {
            Err(_) | Ok(Err(RecvError::Closed)) => break,
            Ok(Err(RecvError::Lagged(n))) => {
                lagged += n;
                progress = tokio::time::Instant::now();
                recount(store.as_ref(), contact, watch, tag, &mut ids);
                if let Some(c) = &counter {
                    c.send_replace(ids.len());
                }
                last = Some(Instant::now());
                if ids.len() >= want {
                    done = last;
                }
                continue;
            }
            Ok(Ok(ev)) => ev,
        };
        let now = Instant::now();
        let fresh = match (watch, ev) {
            (Watch::Received, Event::MessageReceived { id, text, .. }) => {
                match seq_of(tag, &text).filter(|s| *s < want) {
                    Some(seq) => {
                        at[seq].get_or_insert(now);
                        ids.insert(id)
                    }
                    None => false,
                }
            }
            (
                Watch::Delivered,
                Event::StateChanged {
                    id,
                    to,
                    state: DeliveryState::Delivered,
                },
            ) if to == contact && is_tagged(store.as_ref(), &id, tag) => ids.insert(id),
            _ => false,
        };
        if fresh {
            if let Some(c) = &counter {
                c.send_replace(ids.len());
            }
            last = Some(now);
            progress = tokio::time::Instant::now();
            if ids.len() == want {
                done = Some(now);
            }
        }
    }
    Observed {
        done,
        count: ids.len().min(want),
        last,
        at,
        lagged,
    }
}

fn recount(store: &dyn Store, contact: &str, watch: Watch, tag: &str, ids: &mut HashSet<String>) {
    let messages = must("read messages", store.messages(contact, 0));
    for m in messages {
        let counts = match watch {
            Watch::Received => m.direction == Direction::Incoming,
            Watch::Delivered => {
                m.direction == Direction::Outgoing && m.state >= DeliveryState::Delivered
            }
        };
        if counts && m.text.starts_with(tag) {
            ids.insert(hex(&m.id));
        }
    }
}

fn send_text(tag: &str, seq: usize) -> Command {
    Command::Send {
        to: PHONE_B.to_string(),
        text: text(tag, seq),
    }
}

/// Issues `n` operations with at most `window` outstanding.
async fn windowed<F, Fut>(n: usize, window: usize, mut issue: F)
where
    F: FnMut(usize) -> Fut,
    Fut: Future<Output = Result<(), String>>,
{
    let mut pending = FuturesUnordered::new();
    let mut next = 0;
    while next < n || !pending.is_empty() {
        while next < n && pending.len() < window {
            pending.push(issue(next));
            next += 1;
        }
        if let Some(Err(e)) = pending.next().await {
            panic!("benchmark failed: send: {e}");
        }
    }
}

/// Issues `m` operations at `rate` per second (catching up in bursts if the coordinator
/// falls behind); returns when each was issued.
async fn paced<F, Fut>(m: usize, rate: u64, mut issue: F) -> Vec<Instant>
where
    F: FnMut(usize) -> Fut,
    Fut: Future<Output = Result<(), String>>,
{
    let mut tick = tokio::time::interval(Duration::from_nanos(1_000_000_000 / rate));
    tick.set_missed_tick_behavior(MissedTickBehavior::Burst);
    let mut issued = Vec::with_capacity(m);
    let mut pending = FuturesUnordered::new();
    loop {
        tokio::select! {
            _ = tick.tick(), if issued.len() < m => {
                let seq = issued.len();
                issued.push(Instant::now());
                pending.push(issue(seq));
            }
            Some(r) = pending.next(), if !pending.is_empty() => {
                if let Err(e) = r {
                    panic!("benchmark failed: send: {e}");
                }
            }
            else => break,
        }
    }
    issued
}

/// How far a run got: how many arrived, and when the last of them did.
#[derive(Clone, Copy)]
struct Progress {
    count: usize,
    last: Duration,
}

struct Throughput {
    n: usize,
    /// Until every command (or publish) had returned.
    issued: Duration,
    /// The sender's end-to-end acks (ours only).
    acked: Option<Progress>,
    /// The receiver's arrivals.
    received: Option<Progress>,
    lagged: u64,
}

impl Progress {
    fn of(o: &Observed, start: Instant) -> Option<Progress> {
        o.last.map(|t| Progress {
            count: o.count,
            last: t - start,
        })
    }
    fn rate(self) -> f64 {
        self.count as f64 / self.last.as_secs_f64()
    }
}

impl Throughput {
    fn complete(&self, p: Option<Progress>) -> Option<f64> {
        p.filter(|p| p.count == self.n).map(Progress::rate)
    }
}

/// A run's two observers, started before its first send; `count` follows A's deliveries.
struct Observers {
    delivered: tokio::task::JoinHandle<Observed>,
    received: tokio::task::JoinHandle<Observed>,
    count: watch::Receiver<usize>,
}

impl Observers {
    fn start(a: &Node, b: &Node, tag: &'static str, n: usize, timeout: Duration) -> Observers {
        let (tx, count) = watch::channel(0);
        let delivered = tokio::spawn(observe(
            a.handle.subscribe(),
            Spec {
                watch: Watch::Delivered,
                tag,
                want: n,
                store: a.store.clone(),
                contact: PHONE_B,
                timeout,
            },
            Some(tx),
        ));
        let received = tokio::spawn(observe(
            b.handle.subscribe(),
            Spec {
                watch: Watch::Received,
                tag,
                want: n,
                store: b.store.clone(),
                contact: PHONE_A,
                timeout,
            },
            None,
        ));
        Observers {
            delivered,
            received,
            count,
        }
    }

    /// Sends text `seq` from A, first waiting (with `cap` > 0) until fewer than `cap` of the
    /// run's texts are undelivered.
    fn send(
        &self,
        a: &Node,
        tag: &'static str,
        seq: usize,
        cap: usize,
    ) -> impl Future<Output = Result<(), String>> {
        let h = a.handle.clone();
        let mut gate = self.count.clone();
        async move {
            if cap > 0 {
                // An error means the observer gave up (stalled run): send anyway.
                let _ = gate.wait_for(|delivered| seq < delivered + cap).await;
            }
            h.command(send_text(tag, seq))
                .await
                .map(drop)
                .map_err(|e| e.to_string())
        }
    }

    /// Waits for both observers; tells what the nodes hold if the run did not finish.
    async fn finish(self, a: &Node, b: &Node, tag: &str, n: usize) -> (Observed, Observed) {
        let delivered = must("observer", self.delivered.await);
        let received = must("observer", self.received.await);
        if delivered.done.is_none() || received.done.is_none() {
            eprintln!(
                "run {tag:?} incomplete: {} of {n} delivered, {} received",
                delivered.count, received.count
            );
            stall_report("A", a).await;
            stall_report("B", b).await;
        }
        (delivered, received)
    }
}

async fn ours_throughput(
    a: &Node,
    b: &Node,
    n: usize,
    args: &Args,
    tag: &'static str,
) -> Throughput {
    reconnect_if_needed(a, b).await;
    let obs = Observers::start(a, b, tag, n, drain_timeout(n));
    let start = Instant::now();
    windowed(n, args.window, |seq| {
        obs.send(a, tag, seq, args.max_undelivered)
    })
    .await;
    let issued = start.elapsed();
    let (delivered, received) = obs.finish(a, b, tag, n).await;
    Throughput {
        n,
        issued,
        acked: Progress::of(&delivered, start),
        received: Progress::of(&received, start),
        lagged: delivered.lagged + received.lagged,
    }
}

struct Latency {
    want: usize,
    /// Sorted.
    samples: Vec<Duration>,
    /// Messages issued per second, as achieved.
    issue_rate: f64,
    lagged: u64,
}

impl Latency {
    fn new(issued: &[Instant], arrived: &[Option<Instant>], lagged: u64) -> Latency {
        let mut samples: Vec<Duration> = issued
            .iter()
            .zip(arrived)
            .filter_map(|(i, a)| a.map(|a| a.saturating_duration_since(*i)))
            .collect();
        samples.sort();
        let issue_rate = match (issued.first(), issued.last()) {
            (Some(f), Some(l)) if issued.len() > 1 => {
                (issued.len() - 1) as f64 / l.duration_since(*f).as_secs_f64()
            }
            _ => 0.0,
        };
        Latency {
            want: issued.len(),
            samples,
            issue_rate,
            lagged,
        }
    }

    /// The `p`th percentile (nearest rank).
    fn pct(&self, p: f64) -> Option<Duration> {
        if self.samples.is_empty() {
            return None;
        }
        let rank = ((p / 100.0) * self.samples.len() as f64).ceil() as usize;
        Some(self.samples[rank.clamp(1, self.samples.len()) - 1])
    }
}

async fn ours_latency(a: &Node, b: &Node, args: &Args) -> Latency {
    let m = (args.rate * args.seconds) as usize;
    let tag = "lat";
    reconnect_if_needed(a, b).await;
    let obs = Observers::start(
        a,
        b,
        tag,
        m,
        Duration::from_secs(args.seconds) + drain_timeout(m),
    );
    // Latency counts from the scheduled send, including any wait at the gate.
    let issued = paced(m, args.rate, |seq| {
        obs.send(a, tag, seq, args.max_undelivered)
    })
    .await;
    let (delivered, received) = obs.finish(a, b, tag, m).await;
    Latency::new(&issued, &received.at, received.lagged + delivered.lagged)
}

// ----- mosquitto ------------------------------------------------------------------------------

#[path = "common/mosquitto.rs"]
mod mosquitto;
#[path = "common/pair.rs"]
mod pair;
use mosquitto::Broker;
use pair::{link, must, single_worker, Node, PHONE_A, PHONE_B, SETUP_TIMEOUT};

/// A message as the subscriber got it.
struct Arrival {
    tag: [u8; 3],
    seq: usize,
    at: Instant,
}

/// The publisher and the persistent-session subscriber, each on its own runtime.
struct Mqtt {
    publisher: AsyncClient,
    subscriber: AsyncClient,
    arrivals: mpsc::UnboundedReceiver<Arrival>,
    closing: Arc<AtomicBool>,
}

impl Mqtt {
    async fn connect(port: u16, pub_rt: &Runtime, sub_rt: &Runtime, window: usize) -> Mqtt {
        let closing = Arc::new(AtomicBool::new(false));

        // The subscriber: fixed client id, clean session off, QoS 1.
        let mut o = MqttOptions::new(SUB_ID, "127.0.0.1", port);
        o.set_clean_session(false)
            .set_keep_alive(Duration::from_secs(30))
            .set_inflight(MQTT_INFLIGHT);
        let (subscriber, mut events) = AsyncClient::new(o, 64);
        let (subscribed_tx, subscribed) = oneshot::channel();
        let (tx, arrivals) = mpsc::unbounded_channel();
        let stop = closing.clone();
        sub_rt.spawn(async move {
            let mut subscribed_tx = Some(subscribed_tx);
            loop {
                match events.poll().await {
                    Ok(MqttEvent::Incoming(Packet::Publish(p))) => {
                        let at = Instant::now();
                        let parsed = std::str::from_utf8(&p.payload).ok().and_then(|s| {
                            let tag: [u8; 3] = s.as_bytes().get(..3)?.try_into().ok()?;
                            let seq = seq_of(std::str::from_utf8(&tag).ok()?, s)?;
                            Some(Arrival { tag, seq, at })
                        });
                        if let Some(a) = parsed {
                            if tx.send(a).is_err() {
                                break;
                            }
                        }
                    }
                    Ok(MqttEvent::Incoming(Packet::SubAck(_))) => {
                        if let Some(s) = subscribed_tx.take() {
                            let _ = s.send(());
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        if !stop.load(Ordering::Relaxed) {
                            eprintln!("mqtt subscriber: {e}");
                        }
                        break;
                    }
                }
            }
        });
        must(
            "subscribe",
            subscriber.subscribe(TOPIC, QoS::AtLeastOnce).await,
        );
        must(
            "mqtt subscription",
            must(
                "mqtt subscription",
                tokio::time::timeout(SETUP_TIMEOUT, subscribed).await,
            ),
        );

        // The publisher: QoS 1, WINDOW requests queued at most.
        let mut o = MqttOptions::new(PUB_ID, "127.0.0.1", port);
        o.set_keep_alive(Duration::from_secs(30))
            .set_inflight(MQTT_INFLIGHT);
        let (publisher, mut events) = AsyncClient::new(o, window);
        let (connected_tx, connected) = oneshot::channel();
        let stop = closing.clone();
        pub_rt.spawn(async move {
            let mut connected_tx = Some(connected_tx);
            loop {
                match events.poll().await {
                    Ok(MqttEvent::Incoming(Packet::ConnAck(_))) => {
                        if let Some(c) = connected_tx.take() {
                            let _ = c.send(());
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        if !stop.load(Ordering::Relaxed) {
                            eprintln!("mqtt publisher: {e}");
                        }
                        break;
                    }
                }
            }
        });
        must(
            "mqtt publisher",
            must(
                "mqtt publisher",
                tokio::time::timeout(SETUP_TIMEOUT, connected).await,
            ),
        );
        Mqtt {
            publisher,
            subscriber,
            arrivals,
            closing,
        }
    }

    fn publish(&self, tag: &str, seq: usize) -> impl Future<Output = Result<(), String>> {
        let c = self.publisher.clone();
        let payload = text(tag, seq).into_bytes();
        async move {
            c.publish(TOPIC, QoS::AtLeastOnce, false, payload)
                .await
                .map_err(|e| e.to_string())
        }
    }

    /// Waits until the subscriber has `want` distinct messages tagged `tag` (or the timeout).
    async fn collect(&mut self, tag: &str, want: usize, timeout: Duration) -> Vec<Option<Instant>> {
        let mut at = vec![None; want];
        let mut got = 0;
        let deadline = tokio::time::Instant::now() + timeout;
        let mut progress = tokio::time::Instant::now();
        while got < want {
            let until = deadline.min(progress + STALL_TIMEOUT);
            match tokio::time::timeout_at(until, self.arrivals.recv()).await {
                Ok(Some(a)) => {
                    if a.tag == tag.as_bytes() && a.seq < want && at[a.seq].is_none() {
                        at[a.seq] = Some(a.at);
                        got += 1;
                        progress = tokio::time::Instant::now();
                    }
                }
                Ok(None) | Err(_) => break,
            }
        }
        at
    }

    async fn throughput(&mut self, n: usize, window: usize, tag: &str) -> Throughput {
        let start = Instant::now();
        windowed(n, window, |seq| self.publish(tag, seq)).await;
        let issued = start.elapsed();
        let at = self.collect(tag, n, drain_timeout(n)).await;
        let count = at.iter().flatten().count();
        let last = at.iter().flatten().max().copied();
        Throughput {
            n,
            issued,
            acked: None,
            received: last.map(|t| Progress {
                count,
                last: t - start,
            }),
            lagged: 0,
        }
    }

    async fn latency(&mut self, rate: u64, seconds: u64) -> Latency {
        let m = (rate * seconds) as usize;
        let issued = paced(m, rate, |seq| self.publish("lat", seq)).await;
        let at = self.collect("lat", m, drain_timeout(m)).await;
        Latency::new(&issued, &at, 0)
    }

    async fn close(&self) {
        self.closing.store(true, Ordering::Relaxed);
        let _ = self.publisher.disconnect().await;
        let _ = self.subscriber.disconnect().await;
    }
}

// ----- report ---------------------------------------------------------------------------------

fn thousands(v: f64) -> String {
    let s = format!("{:.0}", v);
    let (sign, digits) = s.split_at(usize::from(s.starts_with('-')));
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    format!("{sign}{out}")
}

fn ms_cell(d: Option<Duration>) -> String {
    d.map_or("—".to_string(), |d| {
        format!("{:.2}", d.as_secs_f64() * 1e3)
    })
}

fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}", a / b),
        _ => "—".to_string(),
    }
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "?".to_string())
}

struct Report {
    ours_tp: Throughput,
    mq_tp: Throughput,
    ours_lat: Latency,
    mq_lat: Latency,
}

fn progress_cell(n: usize, p: Option<Progress>) -> String {
    match p {
        Some(p) if p.count == n => thousands(p.rate()),
        Some(p) => format!(
            "≈{} (stalled at {} of {})",
            thousands(p.rate()),
            thousands(p.count as f64),
            thousands(n as f64)
        ),
        None => "nothing arrived".to_string(),
    }
}

fn print_report(args: &Args, r: &Report, load_before: &str, load_after: &str) {
    let ms = |d: Option<Duration>| d.map(|d| d.as_secs_f64() * 1e3);
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let met = |ok: bool| if ok { "met" } else { "NOT met" };
    // Partial runs count at the rate they kept until they stalled.
    let rate = |p: Option<Progress>| p.map(Progress::rate);
    let (ours_ack, ours_rx, mq_rx) = (
        rate(r.ours_tp.acked),
        rate(r.ours_tp.received),
        rate(r.mq_tp.received),
    );
    let issued = |t: &Throughput| t.n as f64 / t.issued.as_secs_f64();
    println!();
    println!(
        "chat benchmark: {} texts of {TEXT_BYTES} B (window {}{}), latency at {}/s for {} s; \
         {cpus} CPUs, load average {load_before} before, {load_after} after",
        thousands(args.messages as f64),
        args.window,
        if args.max_undelivered > 0 {
            format!(", at most {} undelivered", args.max_undelivered)
        } else {
            String::new()
        },
        thousands(args.rate as f64),
        args.seconds,
    );
    println!();
    println!("| measure | InstaConnect | mosquitto | ours / mosquitto | target |");
    println!("|---|---:|---:|---:|---|");
    println!(
        "| throughput, msgs/s: ours until A has every `Delivered` (B stored it, then acked), \
         mosquitto until the subscriber has every message | {} | {} | {} | ours ≥ mosquitto: {} |",
        progress_cell(r.ours_tp.n, r.ours_tp.acked),
        progress_cell(r.mq_tp.n, r.mq_tp.received),
        ratio(ours_ack, mq_rx),
        met(matches!(
            (r.ours_tp.complete(r.ours_tp.acked), r.mq_tp.complete(r.mq_tp.received)),
            (Some(o), Some(m)) if o >= m
        )),
    );
    println!(
        "| throughput, msgs/s: until the receiver has every message | {} | {} | {} | |",
        progress_cell(r.ours_tp.n, r.ours_tp.received),
        progress_cell(r.mq_tp.n, r.mq_tp.received),
        ratio(ours_rx, mq_rx),
    );
    println!(
        "| sender side alone, msgs/s: until every `Send` returned (stored at A) / every publish \
         was queued | {} | {} | {} | |",
        thousands(issued(&r.ours_tp)),
        thousands(issued(&r.mq_tp)),
        ratio(Some(issued(&r.ours_tp)), Some(issued(&r.mq_tp))),
    );
    for (name, p) in [("p50", 50.0), ("p99", 99.0), ("max", 100.0)] {
        let (o, m) = (r.ours_lat.pct(p), r.mq_lat.pct(p));
        let target = if name == "p99" {
            format!(
                "ours < 10 ms: {}",
                met(r.ours_lat.samples.len() == r.ours_lat.want
                    && o.is_some_and(|o| o < Duration::from_millis(10)))
            )
        } else {
            String::new()
        };
        println!(
            "| latency {name}, ms, at {}/s | {} | {} | {} | {target} |",
            thousands(args.rate as f64),
            ms_cell(o),
            ms_cell(m),
            ratio(ms(o), ms(m)),
        );
    }
    println!(
        "| latency run: sent per second; messages timed | {:.0}; {} of {} | {:.0}; {} of {} | | |",
        r.ours_lat.issue_rate,
        thousands(r.ours_lat.samples.len() as f64),
        thousands(r.ours_lat.want as f64),
        r.mq_lat.issue_rate,
        thousands(r.mq_lat.samples.len() as f64),
        thousands(r.mq_lat.want as f64),
    );
    println!();
    let secs = |p: Option<Progress>| {
        p.map_or("—".to_string(), |p| {
            format!(
                "{} by {:.2} s",
                thousands(p.count as f64),
                p.last.as_secs_f64()
            )
        })
    };
    for (name, t) in [("InstaConnect", &r.ours_tp), ("mosquitto", &r.mq_tp)] {
        println!(
            "{name} throughput run of {}: sent in {:.2} s; acked {}; received {}",
            thousands(t.n as f64),
            t.issued.as_secs_f64(),
            secs(t.acked),
            secs(t.received),
        );
    }
    if ours_rx.is_some_and(|o| o < args.rate as f64) {
        println!(
            "note: {}/s is more than the InstaConnect pair moves per second here, so its latency \
             run measures a growing queue",
            thousands(args.rate as f64)
        );
    }
    let lagged = r.ours_tp.lagged + r.ours_lat.lagged;
    if lagged > 0 {
        println!(
            "note: the event subscribers lagged by {lagged} events; counts were redone from the \
             stores, and those arrival times are missing from the latency samples"
        );
    }
}

fn main() {
    let args = parse_args();
    if !args.mosquitto.exists() {
        eprintln!(
            "chat: no mosquitto at {} (run scripts/bench-chat, which installs it, or pass \
             --mosquitto PATH)",
            args.mosquitto.display()
        );
        std::process::exit(2);
    }
    // RUST_LOG=instaconnect_net=debug (for example) shows what the nodes log, on stderr.
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .with_ansi(false)
            .init();
    }
    let load_before = loadavg();
    eprintln!("starting two nodes and mosquitto ...");
    let mut a = Node::start("node-a", PHONE_A, "Asha", 1);
    let mut b = Node::start("node-b", PHONE_B, "Ravi", 2);
    let broker = Broker::start(&args.mosquitto, MQTT_INFLIGHT, "chat");
    let pub_rt = single_worker("mqtt-pub");
    let sub_rt = single_worker("mqtt-sub");
    let main_rt = must(
        "tokio runtime",
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
    );
    let report = main_rt.block_on(async {
        tokio::spawn(monitor("A", a.handle.subscribe()));
        tokio::spawn(monitor("B", b.handle.subscribe()));
        must(
            "linking the nodes",
            tokio::time::timeout(SETUP_TIMEOUT, link(&mut a, &mut b)).await,
        );
        let mut mq = Mqtt::connect(broker.port, &pub_rt, &sub_rt, args.window).await;

        eprintln!("warming up ({WARMUP} messages each) ...");
        ours_throughput(&a, &b, WARMUP, &args, "wrm").await;
        mq.throughput(WARMUP, args.window, "wrm").await;

        eprintln!("throughput: InstaConnect, {} messages ...", args.messages);
        let ours_tp = ours_throughput(&a, &b, args.messages, &args, "tpt").await;
        eprintln!("throughput: mosquitto, {} messages ...", args.messages);
        let mq_tp = mq.throughput(args.messages, args.window, "tpt").await;

        eprintln!(
            "latency: InstaConnect, {}/s for {} s ...",
            args.rate, args.seconds
        );
        let ours_lat = ours_latency(&a, &b, &args).await;
        eprintln!(
            "latency: mosquitto, {}/s for {} s ...",
            args.rate, args.seconds
        );
        let mq_lat = mq.latency(args.rate, args.seconds).await;

        mq.close().await;
        a.close().await;
        b.close().await;
        Report {
            ours_tp,
            mq_tp,
            ours_lat,
            mq_lat,
        }
    });
    let load_after = loadavg();
    drop(main_rt);
    for rt in [pub_rt, sub_rt, a.rt, b.rt] {
        rt.shutdown_timeout(Duration::from_secs(2));
    }
    drop(broker);
    print_report(&args, &report, &load_before, &load_after);
}
