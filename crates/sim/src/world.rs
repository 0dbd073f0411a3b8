//! The discrete-event core: a virtual clock, an event queue ordered by (time, sequence), devices
//! each running a real [`Engine`] on its own [`MemStore`], links from the mobility model, and
//! frames carried with latency, bandwidth and loss.
//!
//! Determinism: every random choice of the simulator comes from ChaCha streams derived from the
//! seed (one per purpose, so changing churn does not reshuffle the workload); frame loss is a
//! hash of (seed, link, direction, frame number on that link), so it does not depend on the
//! order in which independent links are served. Outputs an engine releases in one batch are
//! stable-sorted by destination device before they are carried out, so the engine's internal
//! hash-map order never reaches the event queue. Peer ids (random keys from the OS RNG) never
//! reach an output: devices are known by index.

use std::cmp::Ordering;
use std::collections::{BTreeSet, BinaryHeap, HashMap, HashSet};
use std::sync::Arc;

use instaconnect_core::book::Book;
use instaconnect_core::engine::{
    Command, Engine, Event, Input, Output, MAX_HELD_PER_CONVERSATION, MAX_PEERS,
    MAX_PENDING_OUTPUTS,
};
use instaconnect_core::phone::Phone;
use instaconnect_store::{MemStore, Op, Store};
use instaconnect_wire::mailbox::MailboxId;
use instaconnect_wire::records::{AccountRecord, DeliveryState, Direction};
use instaconnect_wire::SecretBytes;
use rand::seq::index::sample;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;

use crate::error::SimError;
use crate::mobility::{grid_positions, pairs_in_range, RandomWaypoint};
use crate::scenario::{Mobility, Pairing, Scenario, SizeDist, Strategy, MAX_MESSAGES};

mod relaying;
use relaying::Mail;

/// The wall-clock time virtual time 0 stands for, as the engines see it (2026-01-01 UTC).
pub const EPOCH_MS: u64 = 1_767_225_600_000;
/// Most events waiting in the queue at once; beyond it the run stops with an error.
pub const MAX_QUEUED_EVENTS: usize = 50_000_000;
/// Most exchange rounds to link two devices before setup gives up.
pub const MAX_LINKING_ROUNDS: usize = 1_000;
/// Most invariant violations listed in an error (the count is always given).
pub const MAX_VIOLATIONS_LISTED: usize = 20;

/// One message of the workload.
#[derive(Clone, Debug)]
pub struct Msg {
    pub from: u32,
    pub to: u32,
    pub created_ms: u64,
    pub size: u32,
    /// When the recipient's device showed it (first time).
    pub delivered_ms: Option<u64>,
    /// When the sender saw it delivered (the end-to-end ack).
    pub acked_ms: Option<u64>,
    /// Not handed to the engine: the sender's buffer was full or the engine refused it.
    pub dropped: bool,
    /// Hops of the copy the recipient showed: 1 direct, 2 through a relay, the number of
    /// device-to-device transfers through carry buffers.
    pub hops: Option<u32>,
    id: Option<[u8; 16]>,
}

/// Counters of a run, all deterministic.
#[derive(Clone, Debug, Default)]
pub struct Counters {
    pub events: u64,
    pub frames_sent: u64,
    pub bytes_sent: u64,
    pub frames_lost: u64,
    pub requests_failed: u64,
    pub link_ups: u64,
    pub duplicates: u64,
    pub dropped_buffer_full: u64,
    pub send_errors: u64,
    pub skipped_device_down: u64,
    pub engine_problems: u64,
    pub timer_spins: u64,
    pub restarts: u64,
    pub contacts_linked: u64,
    pub peak_outstanding: u32,
    /// Most devices one engine kept in its peer table: read at the end of the run, and at every
    /// new connection of a device that could have passed `MAX_PEERS` by then.
    pub peak_engine_peers: u32,
    /// Most outputs one engine released in one commit.
    pub peak_outputs_per_commit: u32,
    /// Most bytes held by relays (or all carry buffers) at once.
    pub peak_relay_storage: u64,
    /// Most bytes one device's carry buffer held (flooding, spray-and-wait).
    pub peak_carry_buffer: u64,
    /// Envelopes dropped from full carry buffers, and expired ones.
    pub carry_dropped: u64,
    pub carry_expired: u64,
}

/// The buffer bounds every run checks, against the peaks it observed. Each bound is the
/// engine's or the scenario's own constant; a peak above it is a violation.
pub fn bound_violations(c: &Counters, outbox_messages: u32) -> Vec<String> {
    let mut v = Vec::new();
    if c.peak_outstanding > outbox_messages {
        v.push(format!(
            "a device held {} undelivered messages; buffers.outbox_messages is {outbox_messages}",
            c.peak_outstanding
        ));
    }
    if c.peak_engine_peers as usize > MAX_PEERS {
        v.push(format!(
            "an engine kept {} peers; its bound MAX_PEERS is {MAX_PEERS}",
            c.peak_engine_peers
        ));
    }
    if c.peak_outputs_per_commit as usize > MAX_PENDING_OUTPUTS {
        v.push(format!(
            "an engine released {} outputs in one commit; its bound MAX_PENDING_OUTPUTS is {MAX_PENDING_OUTPUTS}",
            c.peak_outputs_per_commit
        ));
    }
    v
}

/// What a finished run hands to the report.
pub struct Outcome {
    pub msgs: Vec<Msg>,
    pub counters: Counters,
    pub violations: Vec<String>,
    pub violation_count: usize,
}

enum Ev {
    Trace(usize),
    Meeting,
    MeetingEnd {
        a: u32,
        b: u32,
        until: u64,
    },
    Tick,
    Churn {
        node: u32,
    },
    Partition {
        index: usize,
        active: bool,
    },
    Crash {
        index: usize,
    },
    Restart {
        node: u32,
    },
    Workload,
    Timer {
        node: u32,
        gen: u64,
    },
    ArriveRequest {
        rid: u64,
        frame: Vec<u8>,
    },
    ArriveResponse {
        rid: u64,
        frame: Vec<u8>,
    },
    Timeout {
        rid: u64,
    },
    Fail {
        node: u32,
        incarnation: u32,
        peer: String,
        tag: u64,
    },
    Sever {
        a: u32,
        b: u32,
    },
    /// A mailbox request to the carry buffers' virtual relay, answered on the device.
    MailLocal {
        node: u32,
        incarnation: u32,
        tag: u64,
        frame: Vec<u8>,
    },
    /// A mailbox request that could not be sent (no connection to that relay).
    MailFail {
        node: u32,
        incarnation: u32,
        relay: String,
        tag: u64,
    },
    RelayArrive {
        rid: u64,
        owner: bool,
        frame: Vec<u8>,
    },
    RelayAnswer {
        rid: u64,
        frame: Vec<u8>,
    },
    RelayTimeout {
        rid: u64,
    },
    RelayNotify {
        node: u32,
        incarnation: u32,
        r: u32,
        mailbox: MailboxId,
    },
    RelayTimer {
        r: u32,
        gen: u64,
    },
    /// A device offers what it carries on its connections.
    Offer {
        node: u32,
    },
    BundleArrive {
        from: u32,
        to: u32,
        link_id: u64,
        bid: u64,
        copies: u32,
        hops: u32,
    },
}

struct Scheduled {
    at: u64,
    seq: u64,
    ev: Ev,
}

impl PartialEq for Scheduled {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Scheduled {
    // BinaryHeap is a max-heap: the earliest (time, seq) must compare greatest.
    fn cmp(&self, o: &Self) -> Ordering {
        (o.at, o.seq).cmp(&(self.at, self.seq))
    }
}

struct Node {
    phone: String,
    peer: String,
    store: Arc<dyn Store>,
    /// None while crashed.
    engine: Option<Engine>,
    incarnation: u32,
    online: bool,
    timer_gen: u64,
    timer_at: Option<u64>,
    last_timer_fire: Option<u64>,
    /// Devices in radio contact (or meeting, or linked by the trace).
    contacts: BTreeSet<u32>,
    /// Devices with a live connection.
    links: BTreeSet<u32>,
    /// Workload partners (linked as contacts before the run).
    partners: Vec<u32>,
    /// Messages handed to the engine and not yet acknowledged.
    outstanding: u32,
    /// Distinct devices this device connected to during the run.
    met: HashSet<u32>,
}

struct Link {
    id: u64,
    /// Per direction (0: low index to high), when the transmitter is free, in microseconds.
    busy_us: [u64; 2],
    /// Frames sent per direction (the loss hash input).
    sent: [u64; 2],
    /// Requests on this link waiting for their response.
    inflight: BTreeSet<u64>,
    /// Carried envelopes sent on this connection, with the direction.
    offered: HashSet<(u64, u8)>,
}

struct Pending {
    requester: u32,
    responder: u32,
    tag: u64,
    deadline: u64,
}

pub struct World<'a> {
    sc: &'a Scenario,
    seed: u64,
    now: u64,
    end: u64,
    seq: u64,
    queue: BinaryHeap<Scheduled>,
    overloaded: bool,
    nodes: Vec<Node>,
    by_peer: HashMap<String, u32>,
    links: HashMap<(u32, u32), Link>,
    next_link_id: u64,
    pendings: HashMap<u64, Pending>,
    next_rid: u64,
    severed: HashSet<(u32, u32)>,
    active_partitions: Vec<usize>,
    meetings: HashMap<(u32, u32), u64>,
    next_meeting: f64,
    rwp: Option<RandomWaypoint>,
    prev_pairs: Vec<(u32, u32)>,
    rng_mob: ChaCha20Rng,
    rng_work: ChaCha20Rng,
    rng_churn: ChaCha20Rng,
    msgs: Vec<Msg>,
    by_id: HashMap<[u8; 16], u32>,
    pair_pool: Vec<(u32, u32)>,
    c: Counters,
    violations: Vec<String>,
    violation_count: usize,
    mail: Mail,
    /// (device, relay) pairs whose engine was last told the relay is up.
    relay_up: BTreeSet<(u32, u32)>,
    /// Set while a mailbox answer is handed to an engine (what it shows came through relays).
    via_mailbox: bool,
}

fn norm(a: u32, b: u32) -> (u32, u32) {
    (a.min(b), a.max(b))
}

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = x;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A uniform number in [0, 1) from (seed, link, direction, frame number).
fn loss_draw(seed: u64, link: u64, dir: usize, k: u64) -> f64 {
    let h = splitmix(splitmix(splitmix(seed) ^ link) ^ (k << 1 | dir as u64));
    (h >> 11) as f64 / (1u64 << 53) as f64
}

/// The engine seed of device `node` in its `incarnation`th life.
fn engine_seed(seed: u64, node: u32, incarnation: u32) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    h.update(b"instaconnect-sim/engine-seed/v1\0");
    h.update(&seed.to_le_bytes());
    h.update(&node.to_le_bytes());
    h.update(&incarnation.to_le_bytes());
    *h.finalize().as_bytes()
}

/// The Ed25519 identity seed of device `node`.
fn identity_seed(seed: u64, node: u32) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    h.update(b"instaconnect-sim/identity/v1\0");
    h.update(&seed.to_le_bytes());
    h.update(&node.to_le_bytes());
    *h.finalize().as_bytes()
}

/// A ChaCha stream of the simulator for one purpose.
fn stream(seed: u64, purpose: u64) -> ChaCha20Rng {
    let mut r = ChaCha20Rng::seed_from_u64(seed);
    r.set_stream(purpose);
    r
}

/// An exponential variate with this mean.
fn exp_sample(rng: &mut ChaCha20Rng, mean: f64) -> f64 {
    let u: f64 = rng.gen();
    -(1.0 - u).ln() * mean
}

/// The E.164 number of device `i` (Indian mobile numbers, valid for libphonenumber).
pub fn phone_of(i: u32) -> String {
    format!("+91{}", 9_810_000_000u64 + i as u64)
}

fn hex_id(s: &str) -> Option<[u8; 16]> {
    if s.len() != 32 || !s.is_ascii() {
        return None;
    }
    let mut id = [0u8; 16];
    for (k, b) in id.iter_mut().enumerate() {
        *b = u8::from_str_radix(&s[2 * k..2 * k + 2], 16).ok()?;
    }
    Some(id)
}

/// A device's engine and what linking needs of it, moved out of the world while a worker
/// thread links it with another.
struct Side {
    index: u32,
    phone: String,
    peer: String,
    store: Arc<dyn Store>,
    engine: Engine,
}

fn link_err(seed: u64, node: u32, message: impl std::fmt::Display) -> SimError {
    SimError::Setup {
        seed,
        node,
        message: message.to_string(),
    }
}

/// Makes `a` and `b` contacts through the real protocol (request, accept, profile) over a
/// temporary always-up link at virtual time 0, before the measured run.
fn befriend(
    seed: u64,
    a: &mut Side,
    b: &mut Side,
    mut mail: Option<(&mut Mail, &Scenario)>,
) -> Result<(), SimError> {
    let t = EPOCH_MS;
    let phone_b = Phone::parse(&b.phone, None).map_err(|e| link_err(seed, a.index, e))?;
    Book::new(a.store.as_ref())
        .add_contact(&phone_b, None, t)
        .map_err(|e| link_err(seed, a.index, e))?;
    a.engine.handle_input(
        t,
        Input::Connected {
            peer: b.peer.clone(),
        },
    );
    b.engine.handle_input(
        t,
        Input::Connected {
            peer: a.peer.clone(),
        },
    );
    a.engine
        .command(
            t,
            Command::RequestContact {
                phone: phone_b.as_str().to_string(),
                peer: b.peer.clone(),
            },
        )
        .map_err(|e| link_err(seed, a.index, e))?;
    settle_pair(seed, a, b, mail.as_mut().map(|(m, s)| (&mut **m, *s)))?;
    a.engine.handle_input(
        t,
        Input::Disconnected {
            peer: b.peer.clone(),
        },
    );
    b.engine.handle_input(
        t,
        Input::Disconnected {
            peer: a.peer.clone(),
        },
    );
    settle_pair(seed, a, b, mail.as_mut().map(|(m, s)| (&mut **m, *s)))?;
    for (x, y) in [(&*a, &*b), (&*b, &*a)] {
        let linked = x
            .store
            .contact(&y.phone)
            .ok()
            .flatten()
            .is_some_and(|c| c.card.is_some());
        let idle = x.store.outbox().is_ok_and(|o| o.is_empty());
        if !linked || !idle {
            return Err(link_err(
                seed,
                x.index,
                format!(
                    "linking with device {} did not complete (linked {linked}, outbox empty {idle})",
                    y.index
                ),
            ));
        }
    }
    Ok(())
}

/// Carries frames between `a` and `b` instantly until both are quiet; `b` accepts `a`'s
/// contact request.
fn settle_pair(
    seed: u64,
    a: &mut Side,
    b: &mut Side,
    mut mail: Option<(&mut Mail, &Scenario)>,
) -> Result<(), SimError> {
    let t = EPOCH_MS;
    let (a_index, a_peer) = (a.index, a.peer.clone());
    let mut channels: HashMap<u64, (u32, u64)> = HashMap::new();
    let mut next_channel = 1u64;
    for _ in 0..MAX_LINKING_ROUNDS {
        let mut moved = false;
        for turn in 0..2 {
            let (x, y) = if turn == 0 {
                (&mut *a, &mut *b)
            } else {
                (&mut *b, &mut *a)
            };
            x.engine.commit().map_err(|e| link_err(seed, x.index, e))?;
            let mut outs = Vec::new();
            while let Some(o) = x.engine.poll_output() {
                outs.push(o);
            }
            for o in outs {
                moved = true;
                match o {
                    Output::Request { peer, tag, frame } if peer == y.peer => {
                        let channel = next_channel;
                        next_channel += 1;
                        channels.insert(channel, (x.index, tag));
                        y.engine.handle_input(
                            t,
                            Input::Request {
                                peer: x.peer.clone(),
                                frame,
                                channel,
                            },
                        );
                    }
                    Output::Respond { channel, frame } => {
                        if let Some((req, tag)) = channels.remove(&channel) {
                            // The requester is the other side of the pair.
                            debug_assert_eq!(req, y.index);
                            y.engine.handle_input(
                                t,
                                Input::Response {
                                    peer: x.peer.clone(),
                                    tag,
                                    frame,
                                },
                            );
                        }
                    }
                    Output::Event(Event::ContactRequest { peer, .. })
                        if x.index != a_index && peer == a_peer =>
                    {
                        x.engine
                            .command(t, Command::AcceptContact { peer })
                            .map_err(|e| link_err(seed, x.index, e))?;
                    }
                    Output::Event(Event::Problem { message }) => {
                        return Err(link_err(seed, x.index, message));
                    }
                    Output::Mailbox {
                        relay,
                        link,
                        tag,
                        frame,
                        ..
                    } if mail.is_some() => {
                        let Some((m, sc)) = mail.as_mut() else {
                            continue;
                        };
                        let (answer, notes) =
                            World::answer_now(m, sc, x.index, &relay, link, &frame);
                        let input = match answer {
                            Some(frame) => Input::MailboxResponse {
                                relay: relay.clone(),
                                tag,
                                frame,
                            },
                            None => Input::MailboxFailed {
                                relay: relay.clone(),
                                tag,
                                error: "unknown relay".into(),
                            },
                        };
                        x.engine.handle_input(t, input);
                        for (j, relay, mailbox) in notes {
                            let input = Input::MailboxNotify { relay, mailbox };
                            if j == x.index {
                                x.engine.handle_input(t, input);
                            } else if j == y.index {
                                y.engine.handle_input(t, input);
                            }
                        }
                    }
                    Output::Event(_) => {}
                    other => {
                        return Err(link_err(
                            seed,
                            x.index,
                            format!("unexpected output while linking: {other:?}"),
                        ))
                    }
                }
            }
        }
        if !moved {
            return Ok(());
        }
    }
    Err(link_err(seed, a.index, "linking did not settle"))
}

impl<'a> World<'a> {
    /// Creates every device, links workload partners as contacts, and schedules the run.
    pub fn new(sc: &'a Scenario, seed: u64) -> Result<World<'a>, SimError> {
        let threads = std::thread::available_parallelism().map_or(1, |t| t.get());
        Self::with_threads(sc, seed, threads)
    }

    /// [`World::new`] linking contacts on `threads` worker threads (the result is the same
    /// for any count).
    pub fn with_threads(
        sc: &'a Scenario,
        seed: u64,
        threads: usize,
    ) -> Result<World<'a>, SimError> {
        let n = sc.nodes.devices;
        let mut w = World {
            sc,
            seed,
            now: 0,
            end: sc.duration.ms(),
            seq: 0,
            queue: BinaryHeap::new(),
            overloaded: false,
            nodes: Vec::with_capacity(n as usize),
            by_peer: HashMap::with_capacity(n as usize),
            links: HashMap::new(),
            next_link_id: 0,
            pendings: HashMap::new(),
            next_rid: 1,
            severed: HashSet::new(),
            active_partitions: Vec::new(),
            meetings: HashMap::new(),
            next_meeting: 0.0,
            rwp: None,
            prev_pairs: Vec::new(),
            rng_mob: stream(seed, 1),
            rng_work: stream(seed, 2),
            rng_churn: stream(seed, 3),
            msgs: Vec::new(),
            by_id: HashMap::new(),
            pair_pool: Vec::new(),
            c: Counters::default(),
            violations: Vec::new(),
            violation_count: 0,
            mail: Mail::new(sc, seed, n),
            relay_up: BTreeSet::new(),
            via_mailbox: false,
        };
        for i in 0..n {
            w.create_device(i)?;
        }
        w.relays_known()?;
        let edges = w.contact_graph();
        for &(a, b) in &edges {
            w.nodes[a as usize].partners.push(b);
            w.nodes[b as usize].partners.push(a);
        }
        for node in &mut w.nodes {
            node.partners.sort_unstable();
        }
        w.link_all(&edges, threads.max(1))?;
        if sc.workload.pairing == Pairing::Distinct {
            w.pair_pool = edges.into_iter().collect();
        }
        w.start();
        Ok(w)
    }

    fn setup_err(&self, node: u32, message: impl std::fmt::Display) -> SimError {
        SimError::Setup {
            seed: self.seed,
            node,
            message: message.to_string(),
        }
    }

    fn create_device(&mut self, i: u32) -> Result<(), SimError> {
        let phone = phone_of(i);
        let parsed = Phone::parse(&phone, None).map_err(|e| self.setup_err(i, e))?;
        let store: Arc<dyn Store> = Arc::new(MemStore::new());
        let book = Book::new(store.as_ref());
        let account = book
            .create_account(&parsed, &format!("Device {i}"), None, EPOCH_MS)
            .map_err(|e| self.setup_err(i, e))?;
        // The identity (and so the peer id) comes from the seed, so anything ordered by peer
        // id replays too. The Olm device keys still come from the OS RNG inside vodozemac;
        // no output depends on their bytes.
        store
            .apply(vec![Op::PutAccount(AccountRecord {
                identity_secret: SecretBytes::new(identity_seed(self.seed, i).to_vec()),
                ..account
            })])
            .map_err(|e| self.setup_err(i, e))?;
        if !self.sc.nodes.share_presence {
            book.set_privacy("online", "nobody")
                .map_err(|e| self.setup_err(i, e))?;
        }
        let mut engine = Engine::new(store.clone(), engine_seed(self.seed, i, 0))
            .map_err(|e| self.setup_err(i, e))?;
        if self.sc.routing.strategy.carries() {
            // A carry buffer's bundle is one deposit: one envelope a request.
            engine.set_deposit_batch_limit(1);
        }
        let peer = engine.peer_id();
        self.by_peer.insert(peer.clone(), i);
        self.nodes.push(Node {
            phone,
            peer,
            store,
            engine: Some(engine),
            incarnation: 0,
            online: true,
            timer_gen: 0,
            timer_at: None,
            last_timer_fire: None,
            contacts: BTreeSet::new(),
            links: BTreeSet::new(),
            partners: Vec::new(),
            outstanding: 0,
            met: HashSet::new(),
        });
        Ok(())
    }

    /// Each device draws `workload.contacts` partners uniformly; the graph is their union.
    fn contact_graph(&mut self) -> BTreeSet<(u32, u32)> {
        let n = self.sc.nodes.devices;
        let mut edges = BTreeSet::new();
        if n < 2 {
            return edges;
        }
        let k = self.sc.workload.contacts.min(n - 1);
        for i in 0..n {
            if k == n - 1 {
                for j in i + 1..n {
                    edges.insert((i, j));
                }
                continue;
            }
            for j in sample(&mut self.rng_work, (n - 1) as usize, k as usize) {
                let j = j as u32;
                let j = if j >= i { j + 1 } else { j };
                edges.insert(norm(i, j));
            }
        }
        edges
    }

    /// Links every pair of `edges` as contacts. Pairs are split into rounds in which no device
    /// appears twice (a greedy edge colouring, in sorted edge order: each pair takes the first
    /// round free at both ends), and the pairs of a round are linked on worker threads. Every
    /// engine goes through its own pairs in round order whatever the thread count or timing, and
    /// an engine's state depends only on its own inputs, so the result is the same on any
    /// machine. The first error (in round and pair order) is returned.
    fn link_all(&mut self, edges: &BTreeSet<(u32, u32)>, threads: usize) -> Result<(), SimError> {
        let n = self.nodes.len();
        let mut used: Vec<Vec<u64>> = vec![Vec::new(); n];
        let mut rounds: Vec<Vec<(u32, u32)>> = Vec::new();
        for &(a, b) in edges {
            let (ua, ub) = (&used[a as usize], &used[b as usize]);
            let mut word = 0;
            let round = loop {
                let taken = ua.get(word).copied().unwrap_or(0) | ub.get(word).copied().unwrap_or(0);
                if taken != u64::MAX {
                    break word * 64 + (!taken).trailing_zeros() as usize;
                }
                word += 1;
            };
            for x in [a, b] {
                let u = &mut used[x as usize];
                if u.len() <= round / 64 {
                    u.resize(round / 64 + 1, 0);
                }
                u[round / 64] |= 1 << (round % 64);
            }
            if rounds.len() <= round {
                rounds.resize_with(round + 1, Vec::new);
            }
            rounds[round].push((a, b));
        }
        let seed = self.seed;
        let sc = self.sc;
        // Store-and-forward answers mailbox requests from shared relays (or the owner table of
        // the carry buffers): the pairs are then linked one at a time, in the same order.
        let shared = sc.routing.strategy.stores_and_forwards();
        let threads = if shared { 1 } else { threads };
        for round in rounds {
            let mut jobs: Vec<(Side, Side)> = Vec::with_capacity(round.len());
            for &(a, b) in &round {
                let sa = self.take_side(a)?;
                let sb = self.take_side(b)?;
                jobs.push((sa, sb));
            }
            let chunk = jobs.len().div_ceil(threads).max(1);
            let results: Vec<Result<(), SimError>> = if shared {
                let mail = &mut self.mail;
                jobs.iter_mut()
                    .map(|(a, b)| befriend(seed, a, b, Some((&mut *mail, sc))))
                    .collect()
            } else if threads == 1 || jobs.len() < 2 {
                jobs.iter_mut()
                    .map(|(a, b)| befriend(seed, a, b, None))
                    .collect()
            } else {
                std::thread::scope(|scope| {
                    let handles: Vec<_> = jobs
                        .chunks_mut(chunk)
                        .map(|part| {
                            scope.spawn(move || {
                                part.iter_mut()
                                    .map(|(a, b)| befriend(seed, a, b, None))
                                    .collect::<Vec<_>>()
                            })
                        })
                        .collect();
                    handles
                        .into_iter()
                        .flat_map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
                        .collect()
                })
            };
            for (a, b) in jobs {
                self.nodes[a.index as usize].engine = Some(a.engine);
                self.nodes[b.index as usize].engine = Some(b.engine);
            }
            for r in results {
                r?;
                self.c.contacts_linked += 1;
            }
        }
        Ok(())
    }

    /// Tells every engine of the relays (or of the carry buffers' virtual relay) before
    /// contacts are linked, so linking opens and announces mailboxes.
    fn relays_known(&mut self) -> Result<(), SimError> {
        let relays = self.mail.known_relays();
        if relays.is_empty() {
            return Ok(());
        }
        let t = EPOCH_MS;
        for i in 0..self.nodes.len() as u32 {
            let Some(engine) = self.nodes[i as usize].engine.as_mut() else {
                continue;
            };
            for (r, (relay, addrs)) in relays.iter().enumerate() {
                engine.handle_input(
                    t,
                    Input::Relay {
                        relay: relay.clone(),
                        addrs: addrs.clone(),
                        up: true,
                    },
                );
                if self.mail.relay_index(relay).is_some() {
                    self.relay_up.insert((i, r as u32));
                }
            }
            engine.commit().map_err(|e| link_err(self.seed, i, e))?;
            while let Some(o) = engine.poll_output() {
                match o {
                    Output::Event(Event::Problem { message }) => {
                        return Err(link_err(self.seed, i, message))
                    }
                    Output::Event(_) => {}
                    other => {
                        return Err(link_err(
                            self.seed,
                            i,
                            format!("unexpected output when told of relays: {other:?}"),
                        ))
                    }
                }
            }
        }
        Ok(())
    }

    fn take_side(&mut self, i: u32) -> Result<Side, SimError> {
        let node = &mut self.nodes[i as usize];
        let engine = node.engine.take().ok_or_else(|| SimError::Setup {
            seed: self.seed,
            node: i,
            message: "no engine while linking".into(),
        })?;
        Ok(Side {
            index: i,
            phone: node.phone.clone(),
            peer: node.peer.clone(),
            store: node.store.clone(),
            engine,
        })
    }

    // ----- scheduling -------------------------------------------------------------------------

    fn schedule(&mut self, at: u64, ev: Ev) {
        if at > self.end {
            return;
        }
        if self.queue.len() >= MAX_QUEUED_EVENTS {
            self.overloaded = true;
            return;
        }
        self.seq += 1;
        self.queue.push(Scheduled {
            at: at.max(self.now),
            seq: self.seq,
            ev,
        });
    }

    /// Schedules the run's first events and applies the state at time 0.
    fn start(&mut self) {
        let sc = self.sc;
        let n = sc.nodes.devices;
        if let Some(ch) = &sc.churn {
            let (up, down) = (ch.mean_up.ms() as f64, ch.mean_down.ms() as f64);
            for i in 0..n {
                // Stationary start: up with probability up / (up + down), residual times
                // exponential (memoryless).
                let online = self.rng_churn.gen::<f64>() < up / (up + down);
                self.nodes[i as usize].online = online;
                let mean = if online { up } else { down };
                let at = exp_sample(&mut self.rng_churn, mean).round() as u64;
                self.schedule(at, Ev::Churn { node: i });
            }
        }
        if sc.routing.strategy == Strategy::Relays {
            self.start_relays();
        }
        for (index, p) in sc.faults.partitions.iter().enumerate() {
            self.schedule(
                p.start.ms(),
                Ev::Partition {
                    index,
                    active: true,
                },
            );
            self.schedule(
                p.end.ms(),
                Ev::Partition {
                    index,
                    active: false,
                },
            );
        }
        for (index, c) in sc.faults.crashes.iter().enumerate() {
            self.schedule(c.at.ms(), Ev::Crash { index });
        }
        self.schedule_workload(sc.workload.start.ms() as f64);
        match &sc.mobility {
            Mobility::StaticGrid { area } => {
                let pos = grid_positions(n, *area);
                for (a, b) in pairs_in_range(&pos, *area, sc.radio.range) {
                    self.set_contact(a, b, true);
                }
            }
            Mobility::RandomWaypoint {
                area,
                speed,
                pause,
                tick,
            } => {
                let rwp = RandomWaypoint::new(
                    n,
                    *area,
                    *speed,
                    [pause[0].ms(), pause[1].ms()],
                    &mut self.rng_mob,
                );
                let pairs = pairs_in_range(&rwp.pos, *area, sc.radio.range);
                self.rwp = Some(rwp);
                for &(a, b) in &pairs {
                    self.set_contact(a, b, true);
                }
                self.prev_pairs = pairs;
                self.schedule(tick.ms(), Ev::Tick);
            }
            Mobility::RandomMeetings { .. } => {
                self.next_meeting = 0.0;
                self.schedule_meeting();
            }
            Mobility::Trace { events, .. } => {
                if let Some(e) = events.first() {
                    self.schedule(e.at_ms, Ev::Trace(0));
                }
            }
        }
    }

    fn schedule_workload(&mut self, from_ms: f64) {
        let sc = self.sc;
        let w = &sc.workload;
        let total_per_ms = w.rate_per_hour * self.sc.nodes.devices as f64 / 3_600_000.0;
        if total_per_ms <= 0.0 || self.msgs.len() as u64 >= MAX_MESSAGES {
            return;
        }
        let at = from_ms + exp_sample(&mut self.rng_work, 1.0 / total_per_ms);
        if at < self.sc.workload_stop().ms() as f64 {
            self.schedule(at.round() as u64, Ev::Workload);
        }
    }

    fn schedule_meeting(&mut self) {
        let sc = self.sc;
        let Mobility::RandomMeetings { rate_per_hour, .. } = &sc.mobility else {
            return;
        };
        let n = self.sc.nodes.devices as f64;
        let pairs = n * (n - 1.0) / 2.0;
        if pairs < 1.0 {
            return;
        }
        // Superposition of the pairs' Poisson processes, each meeting assigned to a uniform
        // pair: exactly a Poisson process of rate `rate_per_hour` for every pair.
        let per_ms = rate_per_hour * pairs / 3_600_000.0;
        self.next_meeting += exp_sample(&mut self.rng_mob, 1.0 / per_ms);
        self.schedule(self.next_meeting.round() as u64, Ev::Meeting);
    }

    // ----- the run ----------------------------------------------------------------------------

    /// Runs to the end of the scenario; `progress` gets the fraction of virtual time done.
    pub fn run(mut self, progress: &mut dyn FnMut(f64)) -> Result<Outcome, SimError> {
        let mut next_report = 0.0f64;
        while let Some(s) = self.queue.pop() {
            if s.at > self.end {
                break;
            }
            self.now = s.at;
            self.c.events += 1;
            self.handle(s.ev)?;
            if self.overloaded {
                return Err(SimError::Overloaded {
                    seed: self.seed,
                    limit: MAX_QUEUED_EVENTS,
                    at_ms: self.now,
                });
            }
            let frac = self.now as f64 / self.end as f64;
            if frac >= next_report {
                progress(frac.min(1.0));
                next_report = frac + 0.001;
            }
        }
        self.now = self.end;
        progress(1.0);
        self.check_invariants();
        // Freeing thousands of engines (millions of small allocations: 7% of a city slice's
        // run) goes on beside the report instead of before it; nothing in it reaches an output.
        let nodes = std::mem::take(&mut self.nodes);
        let _ = std::thread::Builder::new()
            .name("sim-free".into())
            .spawn(move || drop(nodes));
        Ok(Outcome {
            msgs: self.msgs,
            counters: self.c,
            violations: self.violations,
            violation_count: self.violation_count,
        })
    }

    fn handle(&mut self, ev: Ev) -> Result<(), SimError> {
        match ev {
            Ev::Trace(i) => {
                let sc = self.sc;
                if let Mobility::Trace { events, .. } = &sc.mobility {
                    let e = events[i];
                    self.set_contact(e.a, e.b, e.up);
                    if let Some(next) = events.get(i + 1) {
                        self.schedule(next.at_ms, Ev::Trace(i + 1));
                    }
                }
            }
            Ev::Meeting => self.meeting(),
            Ev::MeetingEnd { a, b, until } => {
                if self.meetings.get(&(a, b)) == Some(&until) {
                    self.meetings.remove(&(a, b));
                    self.set_contact(a, b, false);
                }
            }
            Ev::Tick => self.tick(),
            Ev::Churn { node } => self.churn(node),
            Ev::Partition { index, active } => {
                if active {
                    self.active_partitions.push(index);
                } else {
                    self.active_partitions.retain(|&i| i != index);
                }
                self.refresh_all();
            }
            Ev::Crash { index } => self.crash(index),
            Ev::Restart { node } => self.restart(node)?,
            Ev::Workload => self.workload(),
            Ev::Timer { node, gen } => {
                let now = EPOCH_MS + self.now;
                let n = &mut self.nodes[node as usize];
                if n.timer_gen != gen {
                    return Ok(());
                }
                if let Some(e) = n.engine.as_mut() {
                    n.timer_at = None;
                    n.last_timer_fire = Some(self.now);
                    e.handle_timeout(now);
                    self.flush(node);
                }
            }
            Ev::ArriveRequest { rid, frame } => {
                if let Some(p) = self.pendings.get(&rid) {
                    let (req, resp) = (p.requester, p.responder);
                    let peer = self.nodes[req as usize].peer.clone();
                    self.input(
                        resp,
                        Input::Request {
                            peer,
                            frame,
                            channel: rid,
                        },
                    );
                }
            }
            Ev::ArriveResponse { rid, frame } => {
                if let Some(p) = self.take_pending(rid) {
                    let peer = self.nodes[p.responder as usize].peer.clone();
                    self.input(
                        p.requester,
                        Input::Response {
                            peer,
                            tag: p.tag,
                            frame,
                        },
                    );
                }
            }
            Ev::Timeout { rid } => {
                if let Some(p) = self.take_pending(rid) {
                    self.c.requests_failed += 1;
                    let peer = self.nodes[p.responder as usize].peer.clone();
                    self.input(
                        p.requester,
                        Input::RequestFailed {
                            peer,
                            tag: p.tag,
                            error: "timeout".into(),
                        },
                    );
                }
            }
            Ev::Fail {
                node,
                incarnation,
                peer,
                tag,
            } => {
                if self.nodes[node as usize].incarnation == incarnation {
                    self.c.requests_failed += 1;
                    self.input(
                        node,
                        Input::RequestFailed {
                            peer,
                            tag,
                            error: "not connected".into(),
                        },
                    );
                }
            }
            Ev::Sever { a, b } => {
                if self.links.contains_key(&(a, b)) {
                    self.severed.insert((a, b));
                    self.link_down(a, b);
                }
            }
            Ev::MailLocal {
                node,
                incarnation,
                tag,
                frame,
            } => self.mail_local(node, incarnation, tag, frame),
            Ev::MailFail {
                node,
                incarnation,
                relay,
                tag,
            } => self.mail_fail(node, incarnation, relay, tag),
            Ev::RelayArrive { rid, owner, frame } => self.relay_arrive(rid, owner, frame),
            Ev::RelayAnswer { rid, frame } => self.relay_answer(rid, frame),
            Ev::RelayTimeout { rid } => self.relay_timeout(rid),
            Ev::RelayNotify {
                node,
                incarnation,
                r,
                mailbox,
            } => self.relay_notify(node, incarnation, r, mailbox),
            Ev::RelayTimer { r, gen } => self.relay_timer(r, gen),
            Ev::Offer { node } => self.offer(node, None),
            Ev::BundleArrive {
                from,
                to,
                link_id,
                bid,
                copies,
                hops,
            } => self.bundle_arrive(from, to, link_id, bid, copies, hops),
        }
        Ok(())
    }

    fn take_pending(&mut self, rid: u64) -> Option<Pending> {
        let p = self.pendings.remove(&rid)?;
        if let Some(l) = self.links.get_mut(&norm(p.requester, p.responder)) {
            l.inflight.remove(&rid);
        }
        Some(p)
    }

    fn meeting(&mut self) {
        let sc = self.sc;
        let n = sc.nodes.devices;
        let Mobility::RandomMeetings {
            meeting_duration, ..
        } = &sc.mobility
        else {
            return;
        };
        let a = self.rng_mob.gen_range(0..n);
        let mut b = self.rng_mob.gen_range(0..n - 1);
        if b >= a {
            b += 1;
        }
        let key = norm(a, b);
        let until = self.now + meeting_duration.ms();
        if self.meetings.insert(key, until).is_none() {
            self.set_contact(key.0, key.1, true);
        }
        self.schedule(
            until,
            Ev::MeetingEnd {
                a: key.0,
                b: key.1,
                until,
            },
        );
        self.schedule_meeting();
    }

    fn tick(&mut self) {
        let sc = self.sc;
        let Mobility::RandomWaypoint { area, tick, .. } = &sc.mobility else {
            return;
        };
        let Some(rwp) = self.rwp.as_mut() else {
            return;
        };
        rwp.step(self.now, tick.ms(), &mut self.rng_mob);
        let pairs = pairs_in_range(&rwp.pos, *area, self.sc.radio.range);
        let prev = std::mem::take(&mut self.prev_pairs);
        // Both lists are sorted: a merge gives the pairs that left and came into range.
        let (mut i, mut j) = (0, 0);
        let (mut downs, mut ups) = (Vec::new(), Vec::new());
        while i < prev.len() || j < pairs.len() {
            match (prev.get(i), pairs.get(j)) {
                (Some(p), Some(q)) if p == q => {
                    i += 1;
                    j += 1;
                }
                (Some(p), Some(q)) if p < q => {
                    downs.push(*p);
                    i += 1;
                }
                (Some(p), None) => {
                    downs.push(*p);
                    i += 1;
                }
                (_, Some(q)) => {
                    ups.push(*q);
                    j += 1;
                }
                (None, None) => break,
            }
        }
        for (a, b) in downs {
            self.set_contact(a, b, false);
        }
        for (a, b) in ups {
            self.set_contact(a, b, true);
        }
        self.prev_pairs = pairs;
        self.schedule(self.now + tick.ms(), Ev::Tick);
    }

    fn churn(&mut self, node: u32) {
        let sc = self.sc;
        let Some(ch) = &sc.churn else { return };
        let n = &mut self.nodes[node as usize];
        n.online = !n.online;
        let mean = if n.online { ch.mean_up } else { ch.mean_down }.ms() as f64;
        let at = self.now + exp_sample(&mut self.rng_churn, mean).round() as u64;
        self.schedule(at, Ev::Churn { node });
        self.refresh_node(node);
        self.refresh_relays(node);
    }

    fn crash(&mut self, index: usize) {
        let sc = self.sc;
        let c = &sc.faults.crashes[index];
        let node = c.node;
        let n = &mut self.nodes[node as usize];
        if n.engine.is_none() {
            return;
        }
        // The process dies: in-memory state is gone, the store (flushed at every commit) stays.
        n.engine = None;
        let old_incarnation = n.incarnation;
        n.incarnation += 1;
        n.timer_gen += 1;
        n.timer_at = None;
        let peers: Vec<u32> = n.links.iter().copied().collect();
        for b in peers {
            let (x, y) = norm(node, b);
            self.link_down(x, y);
        }
        self.relays_crashed(node, old_incarnation);
        if let Some(r) = c.restart_after {
            self.schedule(self.now + r.ms(), Ev::Restart { node });
        }
    }

    fn restart(&mut self, node: u32) -> Result<(), SimError> {
        let n = &self.nodes[node as usize];
        if n.engine.is_some() {
            return Ok(());
        }
        let mut engine = Engine::new(n.store.clone(), engine_seed(self.seed, node, n.incarnation))
            .map_err(|e| self.setup_err(node, format!("restart at {} ms: {e}", self.now)))?;
        if self.sc.routing.strategy.carries() {
            engine.set_deposit_batch_limit(1);
        }
        self.nodes[node as usize].engine = Some(engine);
        self.c.restarts += 1;
        if let Some(relay) = self.mail.virtual_peer() {
            // The carry buffers run on the device: the new process reaches them at once.
            self.input(
                node,
                Input::Relay {
                    relay,
                    addrs: vec!["/sim/carry".into()],
                    up: true,
                },
            );
        }
        self.refresh_node(node);
        self.refresh_relays(node);
        self.flush(node);
        Ok(())
    }

    fn workload(&mut self) {
        let n = self.sc.nodes.devices;
        self.schedule_workload(self.now as f64);
        let (from, to) = match self.sc.workload.pairing {
            Pairing::Random => {
                let from = self.rng_work.gen_range(0..n);
                let partners = &self.nodes[from as usize].partners;
                if partners.is_empty() {
                    return;
                }
                (from, partners[self.rng_work.gen_range(0..partners.len())])
            }
            Pairing::Distinct => {
                if self.pair_pool.is_empty() {
                    return;
                }
                let k = self.rng_work.gen_range(0..self.pair_pool.len());
                let (a, b) = self.pair_pool.swap_remove(k);
                if self.rng_work.gen::<bool>() {
                    (b, a)
                } else {
                    (a, b)
                }
            }
        };
        let size = match self.sc.workload.size {
            SizeDist::Fixed { bytes } => bytes,
            SizeDist::Uniform { min, max } => self.rng_work.gen_range(min..=max),
        };
        if self.nodes[from as usize].engine.is_none() {
            // A crashed device's user cannot write.
            self.c.skipped_device_down += 1;
            return;
        }
        let index = self.msgs.len() as u32;
        self.msgs.push(Msg {
            from,
            to,
            created_ms: self.now,
            size,
            delivered_ms: None,
            acked_ms: None,
            dropped: false,
            hops: None,
            id: None,
        });
        if self.nodes[from as usize].outstanding >= self.sc.buffers.outbox_messages {
            self.c.dropped_buffer_full += 1;
            self.msgs[index as usize].dropped = true;
            return;
        }
        let cmd = Command::Send {
            to: self.nodes[to as usize].phone.clone(),
            text: "x".repeat(size as usize),
        };
        let now = EPOCH_MS + self.now;
        let Some(engine) = self.nodes[from as usize].engine.as_mut() else {
            return;
        };
        match engine.command(now, cmd) {
            Ok(Some(hex)) => match hex_id(&hex) {
                Some(id) => {
                    self.msgs[index as usize].id = Some(id);
                    self.by_id.insert(id, index);
                    let node = &mut self.nodes[from as usize];
                    node.outstanding += 1;
                    self.c.peak_outstanding = self.c.peak_outstanding.max(node.outstanding);
                }
                None => self.violation(format!("device {from}: unreadable message id {hex:?}")),
            },
            Ok(None) | Err(_) => {
                self.c.send_errors += 1;
                self.msgs[index as usize].dropped = true;
            }
        }
        self.flush(from);
    }

    // ----- links ------------------------------------------------------------------------------

    fn set_contact(&mut self, a: u32, b: u32, up: bool) {
        let (a, b) = norm(a, b);
        if up {
            self.nodes[a as usize].contacts.insert(b);
            self.nodes[b as usize].contacts.insert(a);
        } else {
            self.nodes[a as usize].contacts.remove(&b);
            self.nodes[b as usize].contacts.remove(&a);
            self.severed.remove(&(a, b));
        }
        self.refresh(a, b);
    }

    fn usable(&self, i: u32) -> bool {
        let n = &self.nodes[i as usize];
        n.online && n.engine.is_some()
    }

    fn partitioned(&self, a: u32, b: u32) -> bool {
        let n = self.sc.nodes.devices;
        self.active_partitions.iter().any(|&i| {
            let p = &self.sc.faults.partitions[i];
            p.group_of(a, n) != p.group_of(b, n)
        })
    }

    /// Brings the connection between `a` < `b` in line with contact, device and fault state.
    fn refresh(&mut self, a: u32, b: u32) {
        let want = self.nodes[a as usize].contacts.contains(&b)
            && self.usable(a)
            && self.usable(b)
            && !self.partitioned(a, b)
            && !self.severed.contains(&(a, b));
        let have = self.links.contains_key(&(a, b));
        if want && !have {
            self.link_up(a, b);
        } else if !want && have {
            self.link_down(a, b);
        }
    }

    fn refresh_node(&mut self, i: u32) {
        let others: Vec<u32> = self.nodes[i as usize].contacts.iter().copied().collect();
        for j in others {
            let (a, b) = norm(i, j);
            self.refresh(a, b);
        }
    }

    fn refresh_all(&mut self) {
        for a in 0..self.sc.nodes.devices {
            let others: Vec<u32> = self.nodes[a as usize]
                .contacts
                .range(a + 1..)
                .copied()
                .collect();
            for b in others {
                self.refresh(a, b);
            }
        }
    }

    fn link_up(&mut self, a: u32, b: u32) {
        self.next_link_id += 1;
        self.links.insert(
            (a, b),
            Link {
                id: self.next_link_id,
                busy_us: [0; 2],
                sent: [0; 2],
                inflight: BTreeSet::new(),
                offered: HashSet::new(),
            },
        );
        self.nodes[a as usize].links.insert(b);
        self.nodes[b as usize].links.insert(a);
        self.c.link_ups += 1;
        let (pa, pb) = (
            self.nodes[a as usize].peer.clone(),
            self.nodes[b as usize].peer.clone(),
        );
        self.input(a, Input::Connected { peer: pb });
        self.input(b, Input::Connected { peer: pa });
        if self.sc.routing.strategy.carries() {
            // Carriers exchange envelopes once both engines took the connection in.
            self.schedule(self.now, Ev::Offer { node: a });
            self.schedule(self.now, Ev::Offer { node: b });
        }
        // A new connection is what grows an engine's peer table. It holds at most the devices
        // it was linked with before the run plus the distinct devices it connected to since, so
        // it can only pass MAX_PEERS after meeting that many; from then on its size is read.
        for (i, j) in [(a, b), (b, a)] {
            let n = &mut self.nodes[i as usize];
            n.met.insert(j);
            if n.met.len() + n.partners.len() > MAX_PEERS {
                if let Some(e) = n.engine.as_ref() {
                    self.c.peak_engine_peers = self.c.peak_engine_peers.max(e.peer_count() as u32);
                }
            }
        }
    }

    fn link_down(&mut self, a: u32, b: u32) {
        let Some(link) = self.links.remove(&(a, b)) else {
            return;
        };
        self.nodes[a as usize].links.remove(&b);
        self.nodes[b as usize].links.remove(&a);
        // Requests on a closed connection fail at their requester (if it is still alive).
        for rid in link.inflight {
            if let Some(p) = self.pendings.remove(&rid) {
                if self.nodes[p.requester as usize].engine.is_some() {
                    self.c.requests_failed += 1;
                    let peer = self.nodes[p.responder as usize].peer.clone();
                    self.input(
                        p.requester,
                        Input::RequestFailed {
                            peer,
                            tag: p.tag,
                            error: "connection closed".into(),
                        },
                    );
                }
            }
        }
        let (pa, pb) = (
            self.nodes[a as usize].peer.clone(),
            self.nodes[b as usize].peer.clone(),
        );
        self.input(a, Input::Disconnected { peer: pb });
        self.input(b, Input::Disconnected { peer: pa });
    }

    /// Puts a frame of `bytes` on the link from `from` to `to`: when it arrives (ms) and
    /// whether it is lost. None if there is no link.
    fn transmit(&mut self, from: u32, to: u32, bytes: usize) -> Option<(u64, bool)> {
        let key = norm(from, to);
        let dir = usize::from(from > to);
        let bw = self.sc.link.bandwidth.0 as u128;
        let (loss, latency) = (self.sc.link.loss, self.sc.link.latency.ms());
        let link = self.links.get_mut(&key)?;
        let (arrival, lost) =
            Self::on_link(self.now, self.seed, loss, bw, latency, link, dir, bytes);
        Some(self.count_frame(bytes, arrival, lost))
    }

    /// Counts a frame of `bytes` that was sent (and maybe lost); passes its fate through.
    fn count_frame(&mut self, bytes: usize, arrival: u64, lost: bool) -> (u64, bool) {
        self.c.frames_sent += 1;
        self.c.bytes_sent += bytes as u64;
        if lost {
            self.c.frames_lost += 1;
        }
        (arrival, lost)
    }

    /// A frame of `bytes` on `link` in direction `dir` at `now`: when it arrives (ms) and
    /// whether it is lost.
    #[allow(clippy::too_many_arguments)]
    fn on_link(
        now: u64,
        seed: u64,
        loss: f64,
        bw: u128,
        latency: u64,
        link: &mut Link,
        dir: usize,
        bytes: usize,
    ) -> (u64, bool) {
        let tx_us = ((bytes as u128 * 8 * 1_000_000).div_ceil(bw)) as u64;
        let start = (now * 1000).max(link.busy_us[dir]);
        let done = start + tx_us;
        link.busy_us[dir] = done;
        let k = link.sent[dir];
        link.sent[dir] += 1;
        let lost = loss > 0.0 && loss_draw(seed, link.id, dir, k) < loss;
        (done.div_ceil(1000) + latency, lost)
    }

    // ----- engines ----------------------------------------------------------------------------

    fn input(&mut self, i: u32, input: Input) {
        let now = EPOCH_MS + self.now;
        if let Some(e) = self.nodes[i as usize].engine.as_mut() {
            e.handle_input(now, input);
            self.flush(i);
        }
    }

    /// Commits device `i`, carries out what it released, and re-arms its timer.
    fn flush(&mut self, i: u32) {
        let Some(engine) = self.nodes[i as usize].engine.as_mut() else {
            return;
        };
        if engine.commit().is_err() {
            self.c.engine_problems += 1;
        }
        let mut outs = Vec::new();
        while let Some(o) = engine.poll_output() {
            outs.push(o);
        }
        let next = engine.poll_timeout();
        self.c.peak_outputs_per_commit = self.c.peak_outputs_per_commit.max(outs.len() as u32);
        // Frames to different devices travel independent links: order them by destination
        // (stable, so each link keeps the engine's order) to keep the engine's hash-map
        // iteration order out of the run.
        let mut keyed: Vec<(u32, Output)> = outs
            .into_iter()
            .map(|o| {
                let k = match &o {
                    Output::Request { peer, .. } | Output::Disconnect { peer } => {
                        self.by_peer.get(peer).copied().unwrap_or(u32::MAX - 1)
                    }
                    Output::Respond { channel, .. } => self
                        .pendings
                        .get(channel)
                        .map_or(u32::MAX - 1, |p| p.requester),
                    // Relays' connections are independent of the devices'.
                    Output::Mailbox { relay, .. } => self
                        .mail
                        .relay_index(relay)
                        .map_or(u32::MAX - 1, |r| self.sc.nodes.devices.saturating_add(r)),
                    Output::Event(_) => u32::MAX,
                };
                (k, o)
            })
            .collect();
        keyed.sort_by_key(|(k, _)| *k);
        for (_, o) in keyed {
            self.route(i, o);
        }
        self.arm_timer(i, next);
    }

    fn arm_timer(&mut self, i: u32, next: Option<u64>) {
        let now = self.now;
        let n = &mut self.nodes[i as usize];
        let next = next.map(|t| {
            let t = t.saturating_sub(EPOCH_MS);
            if t <= now && n.last_timer_fire == Some(now) {
                // The engine asks again for a time it was just given: step past it.
                self.c.timer_spins += 1;
                now + 1
            } else {
                t.max(now)
            }
        });
        if next == n.timer_at {
            return;
        }
        n.timer_gen += 1;
        n.timer_at = next;
        let gen = n.timer_gen;
        if let Some(at) = next {
            self.schedule(at, Ev::Timer { node: i, gen });
        }
    }

    fn route(&mut self, i: u32, o: Output) {
        match o {
            Output::Mailbox {
                relay,
                link,
                tag,
                frame,
                ..
            } => self.route_mailbox(i, relay, link, tag, frame),
            Output::Request { peer, tag, frame } => {
                let j = self.by_peer.get(&peer).copied();
                let linked = j.is_some_and(|j| self.links.contains_key(&norm(i, j)));
                let (Some(j), true) = (j, linked) else {
                    let incarnation = self.nodes[i as usize].incarnation;
                    self.schedule(
                        self.now,
                        Ev::Fail {
                            node: i,
                            incarnation,
                            peer,
                            tag,
                        },
                    );
                    return;
                };
                let Some((arrival, lost)) = self.transmit(i, j, frame.len()) else {
                    return;
                };
                let rid = self.next_rid;
                self.next_rid += 1;
                let deadline = self.now + self.sc.link.request_timeout.ms();
                self.pendings.insert(
                    rid,
                    Pending {
                        requester: i,
                        responder: j,
                        tag,
                        deadline,
                    },
                );
                if let Some(l) = self.links.get_mut(&norm(i, j)) {
                    l.inflight.insert(rid);
                }
                if lost {
                    self.schedule(deadline, Ev::Timeout { rid });
                } else {
                    self.schedule(arrival, Ev::ArriveRequest { rid, frame });
                }
            }
            Output::Respond { channel, frame } => {
                let Some(p) = self.pendings.get(&channel) else {
                    return;
                };
                if p.responder != i {
                    return;
                }
                let (to, deadline) = (p.requester, p.deadline);
                let Some((arrival, lost)) = self.transmit(i, to, frame.len()) else {
                    return;
                };
                if lost || arrival > deadline {
                    self.schedule(deadline, Ev::Timeout { rid: channel });
                } else {
                    self.schedule(
                        arrival,
                        Ev::ArriveResponse {
                            rid: channel,
                            frame,
                        },
                    );
                }
            }
            Output::Disconnect { peer } => {
                if let Some(&j) = self.by_peer.get(&peer) {
                    let (a, b) = norm(i, j);
                    self.schedule(self.now, Ev::Sever { a, b });
                }
            }
            Output::Event(e) => self.on_event(i, e),
        }
    }

    fn on_event(&mut self, i: u32, e: Event) {
        match e {
            Event::MessageReceived { from, id, .. } => {
                let Some(k) = hex_id(&id).and_then(|b| self.by_id.get(&b).copied()) else {
                    self.violation(format!(
                        "device {i} showed a message the workload never sent ({id})"
                    ));
                    return;
                };
                let m = &mut self.msgs[k as usize];
                if m.to != i || self.nodes[m.from as usize].phone != from {
                    let (mf, mt) = (m.from, m.to);
                    self.violation(format!(
                        "message {k} from device {mf} to {mt} was shown at device {i} as from {from}"
                    ));
                    return;
                }
                if m.delivered_ms.is_none() {
                    m.delivered_ms = Some(self.now);
                    m.hops = Some(if !self.via_mailbox {
                        1
                    } else if self.sc.routing.strategy.carries() {
                        self.mail.carried_hops.get(&k).copied().unwrap_or(1)
                    } else {
                        2
                    });
                } else {
                    self.c.duplicates += 1;
                }
            }
            Event::StateChanged { id, state, .. } => {
                if let (Some(bid), DeliveryState::Relayed { .. }) = (self.mail.deposit_ctx, &state)
                {
                    if let Some(k) = hex_id(&id).and_then(|b| self.by_id.get(&b).copied()) {
                        self.mail.bundle_is(bid, k);
                    }
                }
                if state < DeliveryState::Delivered {
                    return;
                }
                let Some(k) = hex_id(&id).and_then(|b| self.by_id.get(&b).copied()) else {
                    return;
                };
                let m = &mut self.msgs[k as usize];
                if m.acked_ms.is_none() && m.from == i {
                    m.acked_ms = Some(self.now);
                    let n = &mut self.nodes[i as usize];
                    n.outstanding = n.outstanding.saturating_sub(1);
                }
            }
            Event::Problem { .. } => self.c.engine_problems += 1,
            _ => {}
        }
    }

    fn violation(&mut self, v: String) {
        self.violation_count += 1;
        if self.violations.len() < MAX_VIOLATIONS_LISTED {
            self.violations.push(v);
        }
    }

    // ----- end of run -------------------------------------------------------------------------

    /// Every message its sender saw delivered is in its recipient's store exactly once (shown
    /// in the conversation, or held behind a gap); no buffer bound was exceeded: the outbox
    /// bound (during the run and in the store at the end), texts held behind a gap per
    /// conversation (at the end), the engines' peer tables (at every connection) and outputs
    /// per commit (at every commit).
    fn check_invariants(&mut self) {
        let mut counts: HashMap<[u8; 16], u32> = HashMap::new();
        let mut problems = Vec::new();
        let peers = self
            .nodes
            .iter()
            .filter_map(|n| n.engine.as_ref())
            .map(|e| e.peer_count() as u32)
            .max()
            .unwrap_or(0);
        self.c.peak_engine_peers = self.c.peak_engine_peers.max(peers);
        for (r, node) in self.nodes.iter().enumerate() {
            for &p in &node.partners {
                let phone = &self.nodes[p as usize].phone;
                match node.store.messages(phone, 0) {
                    Ok(list) => {
                        for m in list {
                            if m.direction == Direction::Incoming {
                                *counts.entry(m.id).or_default() += 1;
                            }
                        }
                    }
                    Err(e) => problems.push(format!("device {r}: reading history: {e}")),
                }
            }
            match node.store.held() {
                Ok(held) => {
                    let mut per_conv: HashMap<&str, usize> = HashMap::new();
                    for h in &held {
                        *counts.entry(h.message.id).or_default() += 1;
                        *per_conv.entry(h.message.peer.as_str()).or_default() += 1;
                    }
                    if per_conv.values().any(|&c| c > MAX_HELD_PER_CONVERSATION) {
                        problems.push(format!(
                            "device {r} holds more than {MAX_HELD_PER_CONVERSATION} texts of one conversation"
                        ));
                    }
                }
                Err(e) => problems.push(format!("device {r}: reading held texts: {e}")),
            }
            match node.store.outbox() {
                Ok(out) => {
                    let texts = out
                        .iter()
                        .filter(|e| node.store.message(&e.id).ok().flatten().is_some())
                        .count();
                    if texts > self.sc.buffers.outbox_messages as usize {
                        problems.push(format!(
                            "device {r} has {texts} messages queued; buffers.outbox_messages is {}",
                            self.sc.buffers.outbox_messages
                        ));
                    }
                }
                Err(e) => problems.push(format!("device {r}: reading outbox: {e}")),
            }
        }
        problems.extend(bound_violations(&self.c, self.sc.buffers.outbox_messages));
        problems.extend(self.mail.carry_bound_violations(self.sc));
        self.c.peak_relay_storage = self.mail.peak_storage;
        self.c.peak_carry_buffer = self.mail.peak_carry;
        self.c.carry_dropped = self.mail.carry_dropped;
        self.c.carry_expired = self.mail.carry_expired;
        for (k, m) in self.msgs.iter().enumerate() {
            let Some(id) = m.id else { continue };
            let seen = counts.get(&id).copied().unwrap_or(0);
            if (m.acked_ms.is_some() || m.delivered_ms.is_some()) && seen != 1 {
                problems.push(format!(
                    "message {k} from device {} to {} ({}) is in the recipient's store {seen} times",
                    m.from,
                    m.to,
                    if m.acked_ms.is_some() {
                        "acknowledged"
                    } else {
                        "shown"
                    }
                ));
            } else if seen > 1 {
                problems.push(format!(
                    "message {k} is in device {}'s store {seen} times",
                    m.to
                ));
            }
        }
        for p in problems {
            self.violation(p);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peak_above_a_buffer_bound_is_a_violation_and_one_at_it_is_not() {
        let at = Counters {
            peak_outstanding: 10,
            peak_engine_peers: MAX_PEERS as u32,
            peak_outputs_per_commit: MAX_PENDING_OUTPUTS as u32,
            ..Counters::default()
        };
        assert!(bound_violations(&at, 10).is_empty());
        let over = Counters {
            peak_outstanding: 11,
            peak_engine_peers: MAX_PEERS as u32 + 1,
            peak_outputs_per_commit: MAX_PENDING_OUTPUTS as u32 + 1,
            ..Counters::default()
        };
        let v = bound_violations(&over, 10);
        assert_eq!(v.len(), 3, "{v:?}");
        assert!(v[0].contains("11 undelivered") && v[0].contains("buffers.outbox_messages is 10"));
        assert!(v[1].contains("MAX_PEERS"));
        assert!(v[2].contains("MAX_PENDING_OUTPUTS"));
    }

    #[test]
    fn linking_on_several_threads_gives_the_same_run_as_on_one() {
        let sc = Scenario::from_toml_str(
            r#"
duration = "10m"
[nodes]
devices = 12
[mobility]
kind = "static_grid"
area = [60.0, 60.0]
[radio]
range = 25.0
[link]
loss = 0.05
[workload]
rate_per_hour = 60.0
contacts = 4
"#,
            std::path::Path::new("."),
        )
        .unwrap();
        let run = |threads| {
            let w = World::with_threads(&sc, 3, threads).unwrap();
            let linked = w.c.contacts_linked;
            let out = w.run(&mut |_| {}).unwrap();
            let r = crate::report::build(&sc, 3, out);
            (linked, r.csv(), serde_json::to_string(&r.summary).unwrap())
        };
        let one = run(1);
        assert!(one.0 >= 24, "every device linked 4 partners: {}", one.0);
        assert_eq!(one, run(3));
    }
}
