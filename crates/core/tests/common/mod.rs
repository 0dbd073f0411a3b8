//! The in-memory mesh the engine tests share: engines (and relays) wired together with
//! virtual time and faults on demand.
#![allow(dead_code)]

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use instaconnect_core::book::Book;
use instaconnect_core::engine::{Command, Engine, Event, Input, Link, Output};
use instaconnect_core::phone::Phone;
use instaconnect_core::relay::{Relay, RelayConfig, RelayOutput};
use instaconnect_crypto::Identity;
use instaconnect_store::relay::MemRelayStore;
use instaconnect_store::{MemBlobs, MemStore, Store};
use instaconnect_wire::mailbox::MailboxRequest;
use instaconnect_wire::records::{DeliveryState, MessageRecord};

pub struct Node {
    pub engine: Engine,
    pub phone: String,
    pub events: Vec<Event>,
    /// Where the node's attachments live.
    pub blobs: Arc<MemBlobs>,
}

/// What the in-memory network does with the next request frames.
#[derive(Clone, Copy, PartialEq)]
pub enum Fault {
    /// Deliver as usual (to place a fault after some requests).
    Pass,
    /// Deliver nothing: the request fails.
    DropRequest,
    /// Deliver the request but lose the response.
    DropResponse,
}

pub struct Mesh {
    pub nodes: Vec<Node>,
    pub now: u64,
    pub links: HashSet<(usize, usize)>,
    /// Channel id -> (requester, tag, responder).
    pub channels: HashMap<u64, (usize, u64, usize)>,
    pub next_channel: u64,
    /// Faults applied to the next requests from node i to node j, in order.
    pub faults: HashMap<(usize, usize), VecDeque<Fault>>,
    /// Requests in flight: (from, to, tag, frame).
    pub wire: VecDeque<(usize, usize, u64, Vec<u8>)>,
    /// Requests sent so far, per (from, to).
    pub requests: HashMap<(usize, usize), usize>,
    pub relays: Vec<MeshRelay>,
    /// Mailbox requests in flight: (from node, to relay, tag, frame, link).
    pub relay_wire: VecDeque<(usize, usize, u64, Vec<u8>, Link)>,
    /// Owner links up: (node, relay).
    pub owner_links: HashSet<(usize, usize)>,
    /// Mailbox requests wait on the wire (unanswered) while set.
    pub hold_relay_wire: bool,
}

/// A relay in the mesh: the real sans-IO relay over an in-memory store.
pub struct MeshRelay {
    pub relay: Relay,
    pub peer: String,
    /// Unreachable: every request to it fails.
    pub down: bool,
}

/// The client key a relay sees for node `i`'s link (its ephemeral identity).
fn client_key(i: usize, link: Link) -> String {
    format!("{i}-{link:?}")
}

pub fn account(phone: &str, name: &str) -> Arc<dyn Store> {
    let store: Arc<dyn Store> = Arc::new(MemStore::new());
    Book::new(store.as_ref())
        .create_account(&Phone::parse(phone, None).unwrap(), name, None, 1)
        .unwrap();
    store
}

impl Mesh {
    pub fn new(people: &[(&str, &str)]) -> Mesh {
        let nodes = people
            .iter()
            .enumerate()
            .map(|(i, (phone, name))| {
                let blobs = Arc::new(MemBlobs::new());
                Node {
                    engine: Engine::new(account(phone, name), [i as u8 + 1; 32])
                        .unwrap()
                        .with_blobs(blobs.clone()),
                    phone: phone.to_string(),
                    events: Vec::new(),
                    blobs,
                }
            })
            .collect();
        Mesh {
            nodes,
            now: 1_000_000,
            links: HashSet::new(),
            channels: HashMap::new(),
            next_channel: 1,
            faults: HashMap::new(),
            wire: VecDeque::new(),
            requests: HashMap::new(),
            relays: Vec::new(),
            relay_wire: VecDeque::new(),
            owner_links: HashSet::new(),
            hold_relay_wire: false,
        }
    }

    /// Adds a relay with default limits; returns its index.
    pub fn add_relay(&mut self) -> usize {
        self.add_relay_with(RelayConfig::default())
    }

    /// Adds a relay with these limits; returns its index.
    pub fn add_relay_with(&mut self, config: RelayConfig) -> usize {
        let r = self.relays.len();
        let identity = Identity::from_secret_bytes(&[r as u8 + 100; 32]).unwrap();
        let peer = identity.public().peer_id();
        let relay = Relay::new(Arc::new(MemRelayStore::new()), identity, config);
        self.relays.push(MeshRelay {
            relay,
            peer,
            down: false,
        });
        r
    }

    /// Node `i`'s owner link to relay `r` comes up or goes down.
    pub fn relay_link(&mut self, i: usize, r: usize, up: bool) {
        if up {
            self.owner_links.insert((i, r));
        } else {
            self.owner_links.remove(&(i, r));
            self.relays[r]
                .relay
                .disconnected(&client_key(i, Link::Owner));
        }
        let now = self.now;
        let relay = self.relays[r].peer.clone();
        self.nodes[i].engine.handle_input(
            now,
            Input::Relay {
                relay,
                addrs: vec![format!("/memory/{r}")],
                up,
            },
        );
        self.run();
    }

    /// Envelopes relay `r` holds.
    pub fn held(&self, r: usize) -> u64 {
        self.relays[r].relay.store().totals().unwrap().envelopes
    }

    /// Delivers one mailbox request to its relay and the relay's answers back.
    pub fn relay_step(&mut self, i: usize, r: usize, tag: u64, frame: Vec<u8>, link: Link) {
        let now = self.now;
        let relay_peer = self.relays[r].peer.clone();
        let cut = link == Link::Owner && !self.owner_links.contains(&(i, r));
        if self.relays[r].down || cut {
            self.nodes[i].engine.handle_input(
                now,
                Input::MailboxFailed {
                    relay: relay_peer,
                    tag,
                    error: "unreachable".into(),
                },
            );
            return;
        }
        let channel = self.next_channel;
        self.next_channel += 1;
        let relay = &mut self.relays[r].relay;
        relay.handle_request(now, &client_key(i, link), channel, &frame);
        relay.commit().unwrap();
        let mut outs = Vec::new();
        while let Some(o) = relay.poll_output() {
            outs.push(o);
        }
        for o in outs {
            match o {
                RelayOutput::Respond { frame, .. } => self.nodes[i].engine.handle_input(
                    now,
                    Input::MailboxResponse {
                        relay: relay_peer.clone(),
                        tag,
                        frame,
                    },
                ),
                RelayOutput::Notify { client, frame } => {
                    let j: usize = client.split('-').next().unwrap().parse().unwrap();
                    if let Ok(MailboxRequest::Notify { mailbox }) = MailboxRequest::decode(&frame) {
                        self.nodes[j].engine.handle_input(
                            now,
                            Input::MailboxNotify {
                                relay: relay_peer.clone(),
                                mailbox,
                            },
                        );
                    }
                }
            }
        }
    }

    pub fn id(&self, i: usize) -> String {
        self.nodes[i].engine.peer_id()
    }

    pub fn index(&self, peer: &str) -> usize {
        self.nodes
            .iter()
            .position(|n| n.engine.peer_id() == peer)
            .expect("known peer")
    }

    pub fn book(&self, i: usize) -> Book<'_> {
        Book::new(self.nodes[i].engine.store().as_ref())
    }

    pub fn linked(&self, a: usize, b: usize) -> bool {
        self.links.contains(&(a.min(b), a.max(b)))
    }

    pub fn connect(&mut self, a: usize, b: usize) {
        self.links.insert((a.min(b), a.max(b)));
        let (ida, idb) = (self.id(a), self.id(b));
        let now = self.now;
        self.nodes[a]
            .engine
            .handle_input(now, Input::Connected { peer: idb });
        self.nodes[b]
            .engine
            .handle_input(now, Input::Connected { peer: ida });
        self.run();
    }

    pub fn disconnect(&mut self, a: usize, b: usize) {
        self.links.remove(&(a.min(b), a.max(b)));
        let (ida, idb) = (self.id(a), self.id(b));
        let now = self.now;
        self.nodes[a]
            .engine
            .handle_input(now, Input::Disconnected { peer: idb });
        self.nodes[b]
            .engine
            .handle_input(now, Input::Disconnected { peer: ida });
        self.run();
    }

    pub fn command(&mut self, i: usize, cmd: Command) -> Option<String> {
        let now = self.now;
        let r = self.nodes[i].engine.command(now, cmd).unwrap();
        self.run();
        r
    }

    /// Delivers everything until nothing moves.
    pub fn run(&mut self) {
        for _ in 0..100_000 {
            let mut moved = false;
            for i in 0..self.nodes.len() {
                self.nodes[i].engine.commit().unwrap();
                while let Some(o) = self.nodes[i].engine.poll_output() {
                    moved = true;
                    self.route(i, o);
                }
            }
            if let Some((from, to, tag, frame)) = self.wire.pop_front() {
                moved = true;
                let fault = self.faults.get_mut(&(from, to)).and_then(|q| q.pop_front());
                let (idf, idt) = (self.id(from), self.id(to));
                let now = self.now;
                if !self.linked(from, to) || fault == Some(Fault::DropRequest) {
                    self.nodes[from].engine.handle_input(
                        now,
                        Input::RequestFailed {
                            peer: idt,
                            tag,
                            error: "unreachable".into(),
                        },
                    );
                } else {
                    let channel = self.next_channel;
                    self.next_channel += 1;
                    if fault != Some(Fault::DropResponse) {
                        self.channels.insert(channel, (from, tag, to));
                    } else {
                        // The response will be lost: the requester sees a failure.
                        self.nodes[from].engine.handle_input(
                            now,
                            Input::RequestFailed {
                                peer: idt.clone(),
                                tag,
                                error: "response lost".into(),
                            },
                        );
                    }
                    self.nodes[to].engine.handle_input(
                        now,
                        Input::Request {
                            peer: idf,
                            frame,
                            channel,
                        },
                    );
                }
            }
            let next = if self.hold_relay_wire {
                None
            } else {
                self.relay_wire.pop_front()
            };
            if let Some((i, r, tag, frame, link)) = next {
                moved = true;
                self.relay_step(i, r, tag, frame, link);
            }
            if !moved {
                return;
            }
        }
        panic!("the mesh did not settle");
    }

    pub fn route(&mut self, i: usize, o: Output) {
        let now = self.now;
        match o {
            Output::Request { peer, tag, frame } => {
                let to = self.index(&peer);
                *self.requests.entry((i, to)).or_default() += 1;
                self.wire.push_back((i, to, tag, frame));
            }
            Output::Respond { channel, frame } => {
                if let Some((requester, tag, responder)) = self.channels.remove(&channel) {
                    let peer = self.id(responder);
                    self.nodes[requester]
                        .engine
                        .handle_input(now, Input::Response { peer, tag, frame });
                }
            }
            Output::Disconnect { peer } => {
                let j = self.index(&peer);
                self.disconnect(i, j);
            }
            Output::Event(e) => self.nodes[i].events.push(e),
            Output::Mailbox {
                relay,
                link,
                tag,
                frame,
                ..
            } => {
                let r = self
                    .relays
                    .iter()
                    .position(|x| x.peer == relay)
                    .expect("known relay");
                self.relay_wire.push_back((i, r, tag, frame, link));
            }
        }
    }

    /// Advances virtual time to the next retry of any engine and runs it.
    pub fn advance(&mut self) -> bool {
        let next = self
            .nodes
            .iter()
            .filter_map(|n| n.engine.poll_timeout())
            .min();
        match next {
            Some(t) => {
                self.now = self.now.max(t);
                let now = self.now;
                for n in &mut self.nodes {
                    n.engine.handle_timeout(now);
                }
                self.run();
                true
            }
            None => false,
        }
    }

    pub fn history(&self, i: usize, with: usize) -> Vec<MessageRecord> {
        self.nodes[i]
            .engine
            .store()
            .messages(&self.nodes[with].phone, 0)
            .unwrap()
    }

    /// Makes a and b contacts of each other through request and accept.
    pub fn befriend(&mut self, a: usize, b: usize) {
        let phone_b = self.nodes[b].phone.clone();
        self.book(a)
            .add_contact(&Phone::parse(&phone_b, None).unwrap(), Some("friend"), 2)
            .unwrap();
        let idb = self.id(b);
        self.command(
            a,
            Command::RequestContact {
                phone: phone_b,
                peer: idb.clone(),
            },
        );
        let ida = self.id(a);
        assert!(
            self.nodes[b]
                .events
                .iter()
                .any(|e| matches!(e, Event::ContactRequest { peer, .. } if *peer == ida)),
            "b sees a's contact request: {:?}",
            self.nodes[b].events
        );
        self.command(b, Command::AcceptContact { peer: ida });
        assert!(
            self.nodes[a]
                .events
                .iter()
                .any(|e| matches!(e, Event::ContactAccepted { peer, .. } if *peer == idb)),
            "a sees b's acceptance: {:?}",
            self.nodes[a].events
        );
    }
}

pub fn texts(h: &[MessageRecord]) -> Vec<&str> {
    h.iter().map(|m| m.text.as_str()).collect()
}

pub fn states(h: &[MessageRecord]) -> Vec<DeliveryState> {
    h.iter().map(|m| m.state).collect()
}

pub const ASHA: (&str, &str) = ("+919812345678", "Asha");
pub const RAVI: (&str, &str) = ("+919812340001", "Ravi");
pub const MEERA: (&str, &str) = ("+919812340002", "Meera");

pub fn send(m: &mut Mesh, from: usize, to: usize, text: &str) -> String {
    let phone = m.nodes[to].phone.clone();
    m.command(
        from,
        Command::Send {
            to: phone,
            text: text.into(),
        },
    )
    .unwrap()
}
