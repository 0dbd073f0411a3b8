//! Store-and-forward in the simulated world: the product's relays (strategy `relays`) and the
//! carry buffers of flooding and spray-and-wait, both behind the engine's own mailbox outputs.
//!
//! - **Relays.** Each relay is the real sans-IO [`Relay`] on a [`MemRelayStore`], with an
//!   identity from the seed. Relays are internet infrastructure: every device that is up (not
//!   churned offline, not crashed) has a connection to every relay (its owner link; the
//!   depositor link shares it for the bandwidth model), with `routing.relay_latency` (default
//!   `link.latency`), the link's bandwidth per direction and its loss. Requests, answers and
//!   notifications are frames on that connection; a request whose frame or answer is lost, or
//!   whose answer would come after `link.request_timeout`, fails at that deadline, and a
//!   connection that closes fails its requests at once. TTL expiry runs on the relay's timer
//!   in virtual time.
//! - **Carry buffers** (flooding, spray-and-wait). One virtual relay identity, reachable by
//!   every device at all times because it runs on the device itself: the engine's mailbox
//!   requests to it are answered locally (no frames) — `Create` records which device owns the
//!   mailbox, `Deposit` puts the sealed envelope into the depositing device's carry buffer (a
//!   *bundle*) and answers with a receipt signed by the virtual identity, `Fetch`/`Delete` read
//!   and empty the device's own inbox. Bundles move only over device-to-device connections, as
//!   frames with the link's latency, bandwidth and loss: to the mailbox owner (delivery: it lands
//!   in the owner's inbox and its engine gets `MailboxNotify`), or, as copies, to other devices
//!   (flooding: to every device not holding it; spray-and-wait: half the remaining copies while
//!   more than one is left, then only to the owner).

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::sync::Arc;

use instaconnect_core::engine::{Input, Link as MailLink};
use instaconnect_core::relay::{Relay, RelayConfig, RelayOutput};
use instaconnect_crypto::{envelope_hash, sign_receipt, Identity};
use instaconnect_store::MemRelayStore;
use instaconnect_wire::mailbox::{
    DepositItem, DepositedItem, MailboxId, MailboxRequest, MailboxResponse, Receipted, Refusal,
    RefusedItem, StoredEnvelope, MAX_BATCH,
};

use super::{norm, Ev, Link, World, EPOCH_MS};
use crate::scenario::{Scenario, Strategy};

/// Bytes a bundle transfer adds to the envelope (mailbox id, bundle id, copies, hops).
pub const BUNDLE_HEADER_BYTES: usize = 48;
/// Bytes of a `Notified` answer to a relay's notification (a postcard enum tag and version).
const NOTIFIED_BYTES: usize = 4;

/// The Ed25519 seed of relay `r`.
fn relay_seed(seed: u64, r: u32) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    h.update(b"instaconnect-sim/relay/v1\0");
    h.update(&seed.to_le_bytes());
    h.update(&r.to_le_bytes());
    *h.finalize().as_bytes()
}

/// The Ed25519 seed of the carry buffers' virtual relay.
fn carrier_seed(seed: u64) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    h.update(b"instaconnect-sim/carry-relay/v1\0");
    h.update(&seed.to_le_bytes());
    *h.finalize().as_bytes()
}

/// The client key relay-side for device `node` in its `incarnation`th life on `link` (its
/// ephemeral transport identity).
fn client_key(node: u32, incarnation: u32, link: MailLink) -> String {
    let l = match link {
        MailLink::Owner => 'o',
        MailLink::Depositor => 'd',
    };
    format!("{node}.{incarnation}.{l}")
}

fn parse_client(client: &str) -> Option<(u32, u32)> {
    let mut it = client.split('.');
    Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
}

pub(super) struct SimRelay {
    pub relay: Relay,
    pub peer: String,
    timer_gen: u64,
}

/// A request to a relay waiting for its answer.
pub(super) struct RelayPending {
    node: u32,
    incarnation: u32,
    r: u32,
    tag: u64,
    deadline: u64,
}

/// One sealed envelope travelling in carry buffers.
struct Bundle {
    mailbox: MailboxId,
    dest: u32,
    envelope: Arc<[u8]>,
    created_ms: u64,
    /// The workload message it carries, when the sender's receipt said so.
    msg: Option<u32>,
    /// Carry buffers holding it.
    holders: u32,
}

#[derive(Clone, Copy)]
struct Held {
    copies: u32,
    hops: u32,
}

/// One mailbox's contents on its owner's device: seq -> (envelope, deposited at ms).
type Inbox = BTreeMap<u64, (Arc<[u8]>, u64)>;

/// A relay's answer to a request (if it gave one) and its notifications, as (client, frame).
type RelayAnswer = (Option<Vec<u8>>, Vec<(String, Vec<u8>)>);

/// An answer given at once while contacts are linked, and the notifications, as (device,
/// relay peer, mailbox).
type SetupAnswer = (Option<Vec<u8>>, Vec<(u32, String, MailboxId)>);

#[derive(Default)]
struct Carrier {
    held: BTreeMap<u64, Held>,
    /// Bundle ids in the order they came (ids no longer held are skipped).
    order: VecDeque<u64>,
    bytes: u64,
    /// The device's own mailboxes' contents: mailbox -> seq -> (envelope, deposited at ms).
    inbox: BTreeMap<MailboxId, Inbox>,
    /// Bundles delivered to this device as their destination.
    received: HashSet<u64>,
    next_seq: u64,
}

/// Everything store-and-forward of a world.
#[derive(Default)]
pub(super) struct Mail {
    pub relays: Vec<SimRelay>,
    by_peer: BTreeMap<String, u32>,
    /// (device, relay) connections.
    pub links: BTreeMap<(u32, u32), Link>,
    pub pendings: BTreeMap<u64, RelayPending>,
    /// The carry buffers' virtual relay (flooding, spray-and-wait).
    virt: Option<(Identity, String)>,
    owners: BTreeMap<MailboxId, u32>,
    carriers: Vec<Carrier>,
    bundles: BTreeMap<u64, Bundle>,
    next_bundle: u64,
    /// Hops of the first copy of a workload message that reached its recipient's inbox.
    pub carried_hops: BTreeMap<u32, u32>,
    /// Set while a deposit's receipt is being handed to the engine (ties the bundle to the
    /// message id of the engine's `Relayed` event).
    pub deposit_ctx: Option<u64>,
    /// Most bytes held in relays (or carry buffers) at once, in all.
    pub peak_storage: u64,
    /// Most bytes one carry buffer held.
    pub peak_carry: u64,
    carried_bytes: u64,
    /// Bundles dropped from full carry buffers, and expired ones.
    pub carry_dropped: u64,
    pub carry_expired: u64,
}

impl Mail {
    pub(super) fn new(sc: &Scenario, seed: u64, devices: u32) -> Mail {
        let mut m = Mail::default();
        match sc.routing.strategy {
            Strategy::Relays => {
                let config = RelayConfig {
                    ttl_ms: sc.routing.relay_ttl_ms(),
                    ..RelayConfig::default()
                };
                for r in 0..sc.nodes.relays {
                    // A 32-byte seed is always a valid Ed25519 secret.
                    let Ok(identity) = Identity::from_secret_bytes(&relay_seed(seed, r)) else {
                        continue;
                    };
                    let peer = identity.public().peer_id();
                    m.by_peer.insert(peer.clone(), r);
                    m.relays.push(SimRelay {
                        relay: Relay::new(Arc::new(MemRelayStore::new()), identity, config.clone()),
                        peer,
                        timer_gen: 0,
                    });
                }
            }
            Strategy::Flooding | Strategy::SprayAndWait => {
                if let Ok(identity) = Identity::from_secret_bytes(&carrier_seed(seed)) {
                    let peer = identity.public().peer_id();
                    m.virt = Some((identity, peer));
                }
                m.carriers = (0..devices).map(|_| Carrier::default()).collect();
            }
            Strategy::Direct => {}
        }
        m
    }

    /// The relays every engine is told of, as (peer id, addresses).
    pub(super) fn known_relays(&self) -> Vec<(String, Vec<String>)> {
        let mut v: Vec<(String, Vec<String>)> = self
            .relays
            .iter()
            .enumerate()
            .map(|(r, x)| (x.peer.clone(), vec![format!("/sim/relay/{r}")]))
            .collect();
        if let Some((_, peer)) = &self.virt {
            v.push((peer.clone(), vec!["/sim/carry".to_string()]));
        }
        v
    }

    pub(super) fn relay_index(&self, peer: &str) -> Option<u32> {
        self.by_peer.get(peer).copied()
    }

    pub(super) fn is_virtual(&self, peer: &str) -> bool {
        self.virt.as_ref().is_some_and(|(_, p)| p == peer)
    }

    pub(super) fn virtual_peer(&self) -> Option<String> {
        self.virt.as_ref().map(|(_, p)| p.clone())
    }

    /// Relay `r` handles `frame` from `client` at virtual `now`: its answer for `channel` and
    /// the notifications it sends, as (client, frame).
    pub(super) fn relay_request(
        &mut self,
        r: u32,
        now: u64,
        client: &str,
        channel: u64,
        frame: &[u8],
    ) -> RelayAnswer {
        let relay = &mut self.relays[r as usize].relay;
        relay.handle_request(EPOCH_MS + now, client, channel, frame);
        // A store failure of the in-memory relay store cannot happen; if it did, the relay
        // keeps its answers and the request times out.
        let _ = relay.commit();
        let mut answer = None;
        let mut notes = Vec::new();
        while let Some(o) = relay.poll_output() {
            match o {
                RelayOutput::Respond { channel: c, frame } if c == channel => answer = Some(frame),
                RelayOutput::Respond { .. } => {}
                RelayOutput::Notify { client, frame } => notes.push((client, frame)),
            }
        }
        self.note_relay_storage();
        (answer, notes)
    }

    fn note_relay_storage(&mut self) {
        let total: u64 = self
            .relays
            .iter()
            .filter_map(|r| r.relay.store().totals().ok())
            .map(|t| t.bytes)
            .sum();
        self.peak_storage = self.peak_storage.max(total);
    }

    /// The carry buffers' virtual relay answers device `node`'s request locally. Returns the
    /// answer and the bundle a deposit created.
    pub(super) fn virtual_request(
        &mut self,
        sc: &Scenario,
        node: u32,
        now: u64,
        frame: &[u8],
    ) -> (Vec<u8>, Option<u64>) {
        // Taken out while the request changes the buffers, put back below.
        let Some((identity, peer)) = self.virt.take() else {
            return (Vec::new(), None);
        };
        let at = EPOCH_MS + now;
        let receipt = |what| {
            sign_receipt(&identity, at, what)
                .map(MailboxResponse::Receipt)
                .unwrap_or(MailboxResponse::Refused(Refusal::Unavailable))
        };
        let mut created = None;
        let response = match MailboxRequest::decode(frame) {
            Err(_) => MailboxResponse::Malformed,
            Ok(MailboxRequest::Create { mailbox, .. }) => {
                self.owners.entry(mailbox).or_insert(node);
                receipt(Receipted::Created { mailbox })
            }
            Ok(MailboxRequest::Subscribe { .. }) => MailboxResponse::Subscribed,
            Ok(MailboxRequest::Fetch {
                mailbox,
                after,
                limit,
                ..
            }) => {
                let limit = (limit as usize).min(MAX_BATCH);
                let boxed = self
                    .carriers
                    .get(node as usize)
                    .and_then(|c| c.inbox.get(&mailbox));
                let mut items: Vec<StoredEnvelope> = Vec::new();
                let mut more = false;
                if let Some(b) = boxed {
                    for (&seq, (env, at)) in b.range(after.saturating_add(1)..) {
                        if items.len() == limit {
                            more = true;
                            break;
                        }
                        items.push(StoredEnvelope {
                            seq,
                            deposited_at_ms: *at,
                            envelope: env.to_vec(),
                        });
                    }
                }
                MailboxResponse::Envelopes { items, more }
            }
            Ok(MailboxRequest::Delete { mailbox, seqs, .. }) => {
                if let Some(b) = self
                    .carriers
                    .get_mut(node as usize)
                    .and_then(|c| c.inbox.get_mut(&mailbox))
                {
                    for s in &seqs {
                        b.remove(s);
                    }
                }
                receipt(Receipted::Deleted { mailbox, seqs })
            }
            Ok(MailboxRequest::Deposit {
                mailbox, envelope, ..
            }) => match self.owners.get(&mailbox).copied() {
                None => MailboxResponse::Refused(Refusal::UnknownMailbox),
                Some(dest) => {
                    let hash = envelope_hash(&envelope);
                    let bid = self.new_bundle(sc, node, now, mailbox, dest, envelope);
                    created = Some(bid);
                    receipt(Receipted::Deposited {
                        mailbox,
                        seq: bid,
                        envelope_hash: hash,
                    })
                }
            },
            // Engines here deposit one envelope a request (`set_deposit_batch_limit(1)`), so a
            // bundle is one message; any further item is refused.
            Ok(MailboxRequest::DepositBatch { mut items }) if !items.is_empty() => {
                let rest = items.split_off(1);
                let DepositItem {
                    mailbox, envelope, ..
                } = items.remove(0);
                let mut refused: Vec<RefusedItem> = (1..=rest.len() as u32)
                    .map(|index| RefusedItem {
                        index,
                        why: Refusal::TooMany,
                    })
                    .collect();
                let stored = match self.owners.get(&mailbox).copied() {
                    None => {
                        refused.insert(
                            0,
                            RefusedItem {
                                index: 0,
                                why: Refusal::UnknownMailbox,
                            },
                        );
                        Vec::new()
                    }
                    Some(dest) => {
                        let hash = envelope_hash(&envelope);
                        let bid = self.new_bundle(sc, node, now, mailbox, dest, envelope);
                        created = Some(bid);
                        vec![DepositedItem {
                            index: 0,
                            mailbox,
                            seq: bid,
                            envelope_hash: hash,
                        }]
                    }
                };
                sign_receipt(&identity, at, Receipted::DepositedBatch { items: stored })
                    .map(|receipt| MailboxResponse::Deposits { receipt, refused })
                    .unwrap_or(MailboxResponse::Refused(Refusal::Unavailable))
            }
            // Purges (account deletion) are not part of the simulated workload.
            Ok(_) => MailboxResponse::Refused(Refusal::Unavailable),
        };
        let bytes = response
            .encode()
            .or_else(|_| MailboxResponse::Malformed.encode())
            .unwrap_or_default();
        self.virt = Some((identity, peer));
        (bytes, created)
    }

    /// A deposit into the carry buffer of `node`: a new bundle, held there.
    fn new_bundle(
        &mut self,
        sc: &Scenario,
        node: u32,
        now: u64,
        mailbox: MailboxId,
        dest: u32,
        envelope: Vec<u8>,
    ) -> u64 {
        let bid = self.next_bundle;
        self.next_bundle += 1;
        self.bundles.insert(
            bid,
            Bundle {
                mailbox,
                dest,
                envelope: envelope.into(),
                created_ms: now,
                msg: None,
                holders: 0,
            },
        );
        let copies = match sc.routing.strategy {
            Strategy::SprayAndWait => sc.routing.copies.unwrap_or(1),
            _ => u32::MAX,
        };
        self.hold(sc, node, bid, Held { copies, hops: 0 });
        bid
    }

    /// Ties bundle `bid` to workload message `msg`.
    pub(super) fn bundle_is(&mut self, bid: u64, msg: u32) {
        if let Some(b) = self.bundles.get_mut(&bid) {
            b.msg = Some(msg);
        }
    }

    /// Puts bundle `bid` into `node`'s carry buffer, dropping the oldest beyond the bounds.
    fn hold(&mut self, sc: &Scenario, node: u32, bid: u64, h: Held) {
        let Some(len) = self.bundles.get(&bid).map(|b| b.envelope.len() as u64) else {
            return;
        };
        let c = &mut self.carriers[node as usize];
        if c.held.insert(bid, h).is_some() {
            return;
        }
        c.order.push_back(bid);
        c.bytes += len;
        self.carried_bytes += len;
        if let Some(b) = self.bundles.get_mut(&bid) {
            b.holders += 1;
        }
        let (max_n, max_b) = (
            sc.buffers.carry_envelopes() as usize,
            sc.buffers.carry_bytes(),
        );
        loop {
            let c = &self.carriers[node as usize];
            if c.held.len() <= max_n && c.bytes <= max_b {
                break;
            }
            let Some(old) = self.carriers[node as usize].order.pop_front() else {
                break;
            };
            if self.unhold(node, old) {
                self.carry_dropped += 1;
            }
        }
        let c = &self.carriers[node as usize];
        self.peak_carry = self.peak_carry.max(c.bytes);
        self.peak_storage = self.peak_storage.max(self.carried_bytes);
    }

    /// Removes bundle `bid` from `node`'s carry buffer; false if it did not hold it.
    fn unhold(&mut self, node: u32, bid: u64) -> bool {
        let c = &mut self.carriers[node as usize];
        if c.held.remove(&bid).is_none() {
            return false;
        }
        let len = self
            .bundles
            .get(&bid)
            .map_or(0, |b| b.envelope.len() as u64);
        c.bytes -= len;
        self.carried_bytes -= len;
        if c.order.len() > 2 * c.held.len() + 16 {
            let held = &c.held;
            c.order.retain(|b| held.contains_key(b));
        }
        if let Some(b) = self.bundles.get_mut(&bid) {
            b.holders -= 1;
            if b.holders == 0 {
                self.bundles.remove(&bid);
            }
        }
        true
    }

    /// Bytes the largest carry buffer holds now, and the bound.
    pub(super) fn carry_bound_violations(&self, sc: &Scenario) -> Vec<String> {
        let mut v = Vec::new();
        for (i, c) in self.carriers.iter().enumerate() {
            if c.held.len() > sc.buffers.carry_envelopes() as usize
                || c.bytes > sc.buffers.carry_bytes()
            {
                v.push(format!(
                    "device {i} carries {} envelopes, {} bytes; buffers.carry_envelopes is {}, carry_bytes {}",
                    c.held.len(),
                    c.bytes,
                    sc.buffers.carry_envelopes(),
                    sc.buffers.carry_bytes()
                ));
            }
        }
        if self.peak_carry > sc.buffers.carry_bytes() {
            v.push(format!(
                "a carry buffer held {} bytes; buffers.carry_bytes is {}",
                self.peak_carry,
                sc.buffers.carry_bytes()
            ));
        }
        for (r, x) in self.relays.iter().enumerate() {
            if let Ok(t) = x.relay.store().totals() {
                if t.bytes > RelayConfig::default().total_max_bytes {
                    v.push(format!(
                        "relay {r} holds {} bytes, above its quota",
                        t.bytes
                    ));
                }
            }
        }
        v
    }
}

impl World<'_> {
    // ----- setup ------------------------------------------------------------------------------

    /// Answers a mailbox request at once (contact linking, before the run): the response for
    /// the requester and the notifications, as (device, relay peer, mailbox).
    pub(super) fn answer_now(
        mail: &mut Mail,
        sc: &Scenario,
        node: u32,
        relay: &str,
        link: MailLink,
        frame: &[u8],
    ) -> SetupAnswer {
        if mail.is_virtual(relay) {
            let (answer, _) = mail.virtual_request(sc, node, 0, frame);
            return (Some(answer), Vec::new());
        }
        let Some(r) = mail.relay_index(relay) else {
            return (None, Vec::new());
        };
        let (answer, notes) = mail.relay_request(r, 0, &client_key(node, 0, link), 0, frame);
        let notes = notes
            .into_iter()
            .filter_map(|(client, f)| {
                let (j, _) = parse_client(&client)?;
                match MailboxRequest::decode(&f) {
                    Ok(MailboxRequest::Notify { mailbox }) => Some((j, relay.to_string(), mailbox)),
                    _ => None,
                }
            })
            .collect();
        (answer, notes)
    }

    /// At the start of the run: devices that are not up lose their relay connections (they
    /// were up while contacts were linked); the others keep them.
    pub(super) fn start_relays(&mut self) {
        for i in 0..self.sc.nodes.devices {
            self.refresh_relays(i);
        }
    }

    // ----- relay connections --------------------------------------------------------------------

    /// Brings device `i`'s relay connections in line with its state: up while it is up.
    pub(super) fn refresh_relays(&mut self, i: u32) {
        let want = self.usable(i);
        for r in 0..self.mail.relays.len() as u32 {
            let have = self.mail.links.contains_key(&(i, r));
            // Devices start with their relays up (from linking): the first refresh of a device
            // that is down takes them down.
            let engine_thinks = self.relay_up.contains(&(i, r));
            if want && !have {
                self.next_link_id += 1;
                self.mail.links.insert(
                    (i, r),
                    Link {
                        id: self.next_link_id,
                        busy_us: [0; 2],
                        sent: [0; 2],
                        inflight: Default::default(),
                        offered: Default::default(),
                    },
                );
                if !engine_thinks {
                    self.relay_up.insert((i, r));
                    let (relay, addrs) = self.relay_addr(r);
                    self.input(
                        i,
                        Input::Relay {
                            relay,
                            addrs,
                            up: true,
                        },
                    );
                }
            } else if !want && (have || engine_thinks) {
                let link = self.mail.links.remove(&(i, r));
                self.relay_up.remove(&(i, r));
                let incarnation = self.nodes[i as usize].incarnation;
                let owner = client_key(i, incarnation, MailLink::Owner);
                self.mail.relays[r as usize].relay.disconnected(&owner);
                let peer = self.mail.relays[r as usize].peer.clone();
                for rid in link.map(|l| l.inflight).unwrap_or_default() {
                    if let Some(p) = self.mail.pendings.remove(&rid) {
                        self.c.requests_failed += 1;
                        self.input(
                            p.node,
                            Input::MailboxFailed {
                                relay: peer.clone(),
                                tag: p.tag,
                                error: "connection closed".into(),
                            },
                        );
                    }
                }
                self.input(
                    i,
                    Input::Relay {
                        relay: peer,
                        addrs: Vec::new(),
                        up: false,
                    },
                );
            }
        }
    }

    fn relay_addr(&self, r: u32) -> (String, Vec<String>) {
        (
            self.mail.relays[r as usize].peer.clone(),
            vec![format!("/sim/relay/{r}")],
        )
    }

    /// A crashed device's relay connections close (its engine is gone); its process's
    /// ephemeral identities die with it.
    pub(super) fn relays_crashed(&mut self, i: u32, old_incarnation: u32) {
        for r in 0..self.mail.relays.len() as u32 {
            self.relay_up.remove(&(i, r));
            let owner = client_key(i, old_incarnation, MailLink::Owner);
            self.mail.relays[r as usize].relay.disconnected(&owner);
            if let Some(l) = self.mail.links.remove(&(i, r)) {
                for rid in l.inflight {
                    self.mail.pendings.remove(&rid);
                }
            }
        }
    }

    /// Puts a frame of `bytes` on device `i`'s connection to relay `r`; `up`: from the device.
    fn relay_transmit(&mut self, i: u32, r: u32, up: bool, bytes: usize) -> Option<(u64, bool)> {
        let bw = self.sc.link.bandwidth.0 as u128;
        let latency = self
            .sc
            .routing
            .relay_latency
            .unwrap_or(self.sc.link.latency)
            .ms();
        let loss = self.sc.link.loss;
        let link = self.mail.links.get_mut(&(i, r))?;
        let dir = usize::from(!up);
        let (arrival, lost) =
            Self::on_link(self.now, self.seed, loss, bw, latency, link, dir, bytes);
        Some(self.count_frame(bytes, arrival, lost))
    }

    // ----- mailbox requests -------------------------------------------------------------------

    /// Carries out device `i`'s `Output::Mailbox`.
    pub(super) fn route_mailbox(
        &mut self,
        i: u32,
        relay: String,
        link: MailLink,
        tag: u64,
        frame: Vec<u8>,
    ) {
        let incarnation = self.nodes[i as usize].incarnation;
        if self.mail.is_virtual(&relay) {
            self.schedule(
                self.now,
                Ev::MailLocal {
                    node: i,
                    incarnation,
                    tag,
                    frame,
                },
            );
            return;
        }
        let Some(r) = self
            .mail
            .relay_index(&relay)
            .filter(|r| self.mail.links.contains_key(&(i, *r)))
        else {
            self.schedule(
                self.now,
                Ev::MailFail {
                    node: i,
                    incarnation,
                    relay,
                    tag,
                },
            );
            return;
        };
        let Some((arrival, lost)) = self.relay_transmit(i, r, true, frame.len()) else {
            return;
        };
        let rid = self.next_rid;
        self.next_rid += 1;
        let deadline = self.now + self.sc.link.request_timeout.ms();
        self.mail.pendings.insert(
            rid,
            RelayPending {
                node: i,
                incarnation,
                r,
                tag,
                deadline,
            },
        );
        if let Some(l) = self.mail.links.get_mut(&(i, r)) {
            l.inflight.insert(rid);
        }
        if lost {
            self.schedule(deadline, Ev::RelayTimeout { rid });
        } else {
            self.schedule(
                arrival,
                Ev::RelayArrive {
                    rid,
                    owner: link == MailLink::Owner,
                    frame,
                },
            );
        }
    }

    pub(super) fn mail_local(&mut self, node: u32, incarnation: u32, tag: u64, frame: Vec<u8>) {
        if self.nodes[node as usize].incarnation != incarnation {
            return;
        }
        let sc = self.sc;
        let (answer, created) = self.mail.virtual_request(sc, node, self.now, &frame);
        let Some(relay) = self.mail.virtual_peer() else {
            return;
        };
        self.mail.deposit_ctx = created;
        self.via_mailbox = true;
        self.input(
            node,
            Input::MailboxResponse {
                relay,
                tag,
                frame: answer,
            },
        );
        self.via_mailbox = false;
        self.mail.deposit_ctx = None;
        if created.is_some() {
            self.offer(node, created);
        }
    }

    pub(super) fn mail_fail(&mut self, node: u32, incarnation: u32, relay: String, tag: u64) {
        if self.nodes[node as usize].incarnation == incarnation {
            self.c.requests_failed += 1;
            self.input(
                node,
                Input::MailboxFailed {
                    relay,
                    tag,
                    error: "not connected".into(),
                },
            );
        }
    }

    pub(super) fn relay_arrive(&mut self, rid: u64, owner: bool, frame: Vec<u8>) {
        let Some(p) = self.mail.pendings.get(&rid) else {
            return;
        };
        let (i, inc, r, deadline) = (p.node, p.incarnation, p.r, p.deadline);
        let link = if owner {
            MailLink::Owner
        } else {
            MailLink::Depositor
        };
        let (answer, notes) =
            self.mail
                .relay_request(r, self.now, &client_key(i, inc, link), rid, &frame);
        if let Some(answer) = answer {
            match self.relay_transmit(i, r, false, answer.len()) {
                Some((arrival, false)) if arrival <= deadline => {
                    self.schedule(arrival, Ev::RelayAnswer { rid, frame: answer })
                }
                Some(_) => self.schedule(deadline, Ev::RelayTimeout { rid }),
                None => {}
            }
        }
        for (client, f) in notes {
            let Some((j, jinc)) = parse_client(&client) else {
                continue;
            };
            let Ok(MailboxRequest::Notify { mailbox }) = MailboxRequest::decode(&f) else {
                continue;
            };
            if self.nodes.get(j as usize).map(|n| n.incarnation) != Some(jinc) {
                continue;
            }
            if let Some((arrival, false)) = self.relay_transmit(j, r, false, f.len()) {
                // The device's shell answers the notification itself.
                self.relay_transmit(j, r, true, NOTIFIED_BYTES);
                self.schedule(
                    arrival,
                    Ev::RelayNotify {
                        node: j,
                        incarnation: jinc,
                        r,
                        mailbox,
                    },
                );
            }
        }
        self.arm_relay_timer(r);
    }

    fn take_relay_pending(&mut self, rid: u64) -> Option<RelayPending> {
        let p = self.mail.pendings.remove(&rid)?;
        if let Some(l) = self.mail.links.get_mut(&(p.node, p.r)) {
            l.inflight.remove(&rid);
        }
        Some(p)
    }

    pub(super) fn relay_answer(&mut self, rid: u64, frame: Vec<u8>) {
        let Some(p) = self.take_relay_pending(rid) else {
            return;
        };
        let relay = self.mail.relays[p.r as usize].peer.clone();
        self.via_mailbox = true;
        self.input(
            p.node,
            Input::MailboxResponse {
                relay,
                tag: p.tag,
                frame,
            },
        );
        self.via_mailbox = false;
    }

    pub(super) fn relay_timeout(&mut self, rid: u64) {
        let Some(p) = self.take_relay_pending(rid) else {
            return;
        };
        self.c.requests_failed += 1;
        let relay = self.mail.relays[p.r as usize].peer.clone();
        self.input(
            p.node,
            Input::MailboxFailed {
                relay,
                tag: p.tag,
                error: "timeout".into(),
            },
        );
    }

    pub(super) fn relay_notify(&mut self, node: u32, incarnation: u32, r: u32, mailbox: MailboxId) {
        if self.nodes[node as usize].incarnation != incarnation
            || !self.mail.links.contains_key(&(node, r))
        {
            return;
        }
        let relay = self.mail.relays[r as usize].peer.clone();
        self.input(node, Input::MailboxNotify { relay, mailbox });
    }

    /// Re-arms relay `r`'s expiry timer (none while it holds nothing).
    pub(super) fn arm_relay_timer(&mut self, r: u32) {
        let x = &mut self.mail.relays[r as usize];
        x.timer_gen += 1;
        let gen = x.timer_gen;
        let empty = x.relay.store().totals().map_or(true, |t| t.envelopes == 0);
        if empty {
            return;
        }
        let at = x
            .relay
            .poll_timeout(EPOCH_MS + self.now)
            .saturating_sub(EPOCH_MS);
        self.schedule(at.max(self.now + 1), Ev::RelayTimer { r, gen });
    }

    pub(super) fn relay_timer(&mut self, r: u32, gen: u64) {
        let x = &mut self.mail.relays[r as usize];
        if x.timer_gen != gen {
            return;
        }
        let _ = x.relay.handle_timeout(EPOCH_MS + self.now);
        self.mail.note_relay_storage();
        self.arm_relay_timer(r);
    }

    // ----- carry buffers ------------------------------------------------------------------------

    /// Offers what `node` carries (or only bundle `only`) on each of its connections.
    pub(super) fn offer(&mut self, node: u32, only: Option<u64>) {
        if !self.sc.routing.strategy.carries() {
            return;
        }
        let peers: Vec<u32> = self.nodes[node as usize].links.iter().copied().collect();
        for j in peers {
            self.exchange(node, j, only);
        }
    }

    /// Sends `from`'s bundles (or only bundle `only`) that `to` should get over their
    /// connection (each bundle once per connection and direction).
    pub(super) fn exchange(&mut self, from: u32, to: u32, only: Option<u64>) {
        let key = norm(from, to);
        let dir = usize::from(from > to);
        let Some(link_id) = self.links.get(&key).map(|l| l.id) else {
            return;
        };
        let ttl = self.sc.workload.ttl.map(|t| t.ms());
        let spray = self.sc.routing.strategy == Strategy::SprayAndWait;
        let c = &self.mail.carriers[from as usize];
        let held: Vec<(u64, Held)> = match only {
            Some(b) => c.held.get(&b).map(|h| (b, *h)).into_iter().collect(),
            None => c.held.iter().map(|(b, h)| (*b, *h)).collect(),
        };
        for (bid, h) in held {
            let Some(b) = self.mail.bundles.get(&bid) else {
                continue;
            };
            if ttl.is_some_and(|t| self.now >= b.created_ms + t) {
                self.mail.unhold(from, bid);
                self.mail.carry_expired += 1;
                continue;
            }
            let (dest, len) = (b.dest, b.envelope.len());
            let to_c = &self.mail.carriers[to as usize];
            let give = if dest == to {
                if to_c.received.contains(&bid) {
                    // The recipient has it (it says so when they meet): nothing left to do.
                    self.mail.unhold(from, bid);
                    continue;
                }
                h.copies
            } else if to_c.held.contains_key(&bid) || (spray && h.copies <= 1) {
                continue;
            } else if spray {
                h.copies / 2
            } else {
                u32::MAX
            };
            let Some(link) = self.links.get_mut(&key) else {
                return;
            };
            if !link.offered.insert((bid, dir as u8)) {
                continue;
            }
            let Some((arrival, lost)) = self.transmit(from, to, len + BUNDLE_HEADER_BYTES) else {
                return;
            };
            if lost {
                continue;
            }
            if spray && dest != to {
                if let Some(x) = self.mail.carriers[from as usize].held.get_mut(&bid) {
                    x.copies -= give;
                }
            }
            self.schedule(
                arrival,
                Ev::BundleArrive {
                    from,
                    to,
                    link_id,
                    bid,
                    copies: give,
                    hops: h.hops + 1,
                },
            );
        }
    }

    pub(super) fn bundle_arrive(
        &mut self,
        from: u32,
        to: u32,
        link_id: u64,
        bid: u64,
        copies: u32,
        hops: u32,
    ) {
        let spray = self.sc.routing.strategy == Strategy::SprayAndWait;
        let alive = self
            .links
            .get(&norm(from, to))
            .is_some_and(|l| l.id == link_id);
        let Some(b) = self.mail.bundles.get(&bid) else {
            return;
        };
        let (dest, mailbox, env, msg) = (b.dest, b.mailbox, b.envelope.clone(), b.msg);
        if !alive {
            // The connection closed while the frame was under way: the copies stay with the
            // sender.
            if spray && dest != to {
                if let Some(x) = self.mail.carriers[from as usize].held.get_mut(&bid) {
                    x.copies += copies;
                }
            }
            return;
        }
        if dest == to {
            self.mail.unhold(from, bid);
            let c = &mut self.mail.carriers[to as usize];
            if !c.received.insert(bid) {
                return;
            }
            c.next_seq += 1;
            let seq = c.next_seq;
            c.inbox
                .entry(mailbox)
                .or_default()
                .insert(seq, (env, EPOCH_MS + self.now));
            if let Some(k) = msg {
                self.mail.carried_hops.entry(k).or_insert(hops);
            }
            if let Some(relay) = self.mail.virtual_peer() {
                self.input(to, Input::MailboxNotify { relay, mailbox });
            }
            return;
        }
        if self.mail.carriers[to as usize].held.contains_key(&bid)
            || self.mail.carriers[to as usize].received.contains(&bid)
        {
            return;
        }
        let sc = self.sc;
        self.mail.hold(sc, to, bid, Held { copies, hops });
        self.offer(to, Some(bid));
    }
}
