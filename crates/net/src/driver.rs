//! The loop that runs a sans-IO [`Engine`] on the network.
//!
//! It feeds the engine the network's events, the user's commands and timer ticks, each with
//! the wall clock, and carries out the outputs: requests and responses through [`NetHandle`],
//! events to subscribers. This is the only place where the engine meets time and IO.
//!
//! Group commit: after every batch of inputs the driver prepares a commit
//! ([`Engine::prepare_commit`]), sends the requests it released at once, and flushes the store
//! on a blocking thread while it goes on with the next inputs. When a flush completes, the
//! responses (acks) and events it covers are released, and the commands it covers are answered.
//! One flush runs at a time ([`MAX_CONCURRENT_FLUSHES`]); the next covers everything that came
//! in the meantime, so flushes grow with the load instead of multiplying. Only acks and user
//! commands need a flush (see [`Engine::prepare_commit`]).
//!
//! Relay links ([`RelayLinks`]): two more libp2p nodes, each with its own ephemeral identity,
//! no listener and no mDNS, carry the engine's [`Output::Mailbox`] requests: the *owner* link
//! reads our mailboxes (and hears the relays' notifications), the *depositor* link leaves
//! envelopes in contacts' mailboxes. Nothing goes to a relay with the account's identity, and
//! a relay cannot tie the two links together by their identity. The owner link is kept
//! connected to every known relay (from `--relay`, the config, or mDNS with role `relay`):
//! dialled at start and redialled with exponential backoff ([`REDIAL_BASE`] doubling to
//! [`REDIAL_MAX`], with jitter); while it is up, an empty subscription every
//! [`OWNER_KEEPALIVE`] keeps the connection from being closed as idle. The engine hears
//! [`Input::Relay`] `up: true` once the owner link is connected and `up: false` when it drops.
//! A mailbox request that cannot be sent comes back at once as [`Input::MailboxFailed`] with
//! its tag; one that fails later comes back the same way from the network.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use instaconnect_core::engine::{Command, Engine, Event, Input, Link, Output, PeerView};
use instaconnect_wire::mailbox::{MailboxRequest, MailboxResponse};
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::{
    parse_relay_addr, start, InboundId, NetConfig, NetError, NetEvent, NetHandle, NetIdentity,
    RequestId, Role,
};

/// Commands waiting for the driver.
pub const DRIVER_COMMAND_CAPACITY: usize = 64;
/// User events buffered per subscriber; a slower subscriber is told it lagged.
pub const USER_EVENT_CAPACITY: usize = 1024;
/// Inputs handled under one commit (one flush) at most.
pub const MAX_BATCH: usize = 256;
/// Longest sleep when no retry is due, so presence and discovery stay fresh.
pub const IDLE_TICK: Duration = Duration::from_secs(30);
/// Store flushes running at once; a further commit waits for one of them (and so covers
/// everything that came in the meantime: fewer, larger flushes under load).
pub const MAX_CONCURRENT_FLUSHES: usize = 1;
/// First delay before redialling a relay's owner link after it dropped or a dial failed.
pub const REDIAL_BASE: Duration = Duration::from_secs(1);
/// Longest delay between redials of a relay.
pub const REDIAL_MAX: Duration = Duration::from_secs(60);
/// An owner link that stayed up this long starts its next redial at [`REDIAL_BASE`] again.
pub const STABLE_LINK: Duration = Duration::from_secs(30);
/// A dial that has not ended after this long counts as failed.
pub const DIAL_TIMEOUT: Duration = Duration::from_secs(30);
/// How often an idle owner link sends an empty subscription, which keeps the connection open
/// (connections without streams close after [`crate::IDLE_CONNECTION_TIMEOUT`], on either side).
pub const OWNER_KEEPALIVE: Duration = Duration::from_secs(25);
/// Relays the device keeps links to (configured and discovered together); further ones seen
/// over mDNS are ignored.
pub const MAX_RELAYS: usize = 64;
/// Addresses remembered per relay.
pub const MAX_ADDRS_PER_RELAY: usize = 8;
/// (link, relay, address) triples already handed to a link's swarm; cleared when full.
pub const MAX_KNOWN_RELAY_ADDRS: usize = 4096;

/// The device's two ephemeral relay links and the relays it knows from its configuration.
/// Start it with [`RelayLinks::start`] and hand it to [`spawn_with_relays`].
pub struct RelayLinks {
    owner: NetHandle,
    owner_events: mpsc::Receiver<NetEvent>,
    depositor: NetHandle,
    depositor_events: mpsc::Receiver<NetEvent>,
    /// Relay peer id -> its configured addresses, in the order given.
    configured: Vec<(String, Vec<String>)>,
}

impl std::fmt::Debug for RelayLinks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayLinks")
            .field("configured", &self.configured)
            .finish_non_exhaustive()
    }
}

impl RelayLinks {
    /// Starts the owner and the depositor link (two ephemeral identities, no listener, no
    /// mDNS) for the relays `relays`: multiaddrs each ending in `/p2p/<relay peer id>` (several
    /// may name the same relay). A malformed address is [`NetError::InvalidAddress`], one
    /// without the peer id [`NetError::RelayWithoutPeerId`].
    pub async fn start(relays: &[String]) -> Result<RelayLinks, NetError> {
        let mut configured: Vec<(String, Vec<String>)> = Vec::new();
        for a in relays {
            let (peer, addr) = parse_relay_addr(a)?;
            let full = configured.len() >= MAX_RELAYS;
            match configured.iter_mut().find(|(p, _)| *p == peer) {
                Some((_, addrs)) if !addrs.contains(&addr) && addrs.len() < MAX_ADDRS_PER_RELAY => {
                    addrs.push(addr)
                }
                Some(_) => {}
                None if !full => configured.push((peer, vec![addr])),
                None => {}
            }
        }
        let ephemeral = || {
            let mut cfg = NetConfig::new(NetIdentity::Ephemeral);
            cfg.listen = Vec::new();
            cfg.mdns = false;
            cfg.role = Role::Device;
            cfg
        };
        let (owner, owner_events) = start(ephemeral()).await?;
        let (depositor, depositor_events) = start(ephemeral()).await?;
        Ok(RelayLinks {
            owner,
            owner_events,
            depositor,
            depositor_events,
            configured,
        })
    }

    /// The owner link's (ephemeral) peer id.
    pub fn owner_peer_id(&self) -> &str {
        self.owner.local_peer_id()
    }

    /// The depositor link's (ephemeral) peer id.
    pub fn depositor_peer_id(&self) -> &str {
        self.depositor.local_peer_id()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    #[error("the node is shutting down")]
    Stopped,
    #[error("{0}")]
    Engine(String),
}

type CommandResult = Result<Option<String>, String>;
type CommandReply = oneshot::Sender<CommandResult>;

enum Request {
    Engine(Command, CommandReply),
    Peers(oneshot::Sender<Vec<PeerView>>),
}

/// How the rest of the node talks to the running engine.
#[derive(Clone)]
pub struct DriverHandle {
    tx: mpsc::Sender<Request>,
    events: broadcast::Sender<Event>,
}

impl DriverHandle {
    /// Runs a user command; returns the new message id for `Send`. The command's effects are
    /// durable when this returns.
    pub async fn command(&self, cmd: Command) -> Result<Option<String>, DriverError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Request::Engine(cmd, tx))
            .await
            .map_err(|_| DriverError::Stopped)?;
        rx.await
            .map_err(|_| DriverError::Stopped)?
            .map_err(DriverError::Engine)
    }

    /// The devices seen or connected.
    pub async fn peers(&self) -> Result<Vec<PeerView>, DriverError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Request::Peers(tx))
            .await
            .map_err(|_| DriverError::Stopped)?;
        rx.await.map_err(|_| DriverError::Stopped)
    }

    /// A live stream of the engine's user events.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Starts the driver task without relay links (every mailbox request fails at once). It stops
/// when `shutdown` becomes true or the network's event stream ends, after a final commit.
pub fn spawn(
    engine: Engine,
    net: NetHandle,
    net_events: mpsc::Receiver<NetEvent>,
    shutdown: watch::Receiver<bool>,
) -> (DriverHandle, JoinHandle<()>) {
    spawn_inner(engine, net, net_events, None, shutdown)
}

/// [`spawn`] with relay links: mailbox requests go to relays, the owner link is kept up to
/// every known relay. The links are shut down when the driver stops.
pub fn spawn_with_relays(
    engine: Engine,
    net: NetHandle,
    net_events: mpsc::Receiver<NetEvent>,
    links: RelayLinks,
    shutdown: watch::Receiver<bool>,
) -> (DriverHandle, JoinHandle<()>) {
    spawn_inner(engine, net, net_events, Some(links), shutdown)
}

fn spawn_inner(
    engine: Engine,
    net: NetHandle,
    net_events: mpsc::Receiver<NetEvent>,
    links: Option<RelayLinks>,
    shutdown: watch::Receiver<bool>,
) -> (DriverHandle, JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(DRIVER_COMMAND_CAPACITY);
    let (events, _) = broadcast::channel(USER_EVENT_CAPACITY);
    let handle = DriverHandle {
        tx,
        events: events.clone(),
    };
    let (relays, owner_events, depositor_events) = match links {
        Some(l) => {
            let mut relays = Relays::new(l.owner, l.depositor);
            let now = Instant::now();
            for (peer, addrs) in l.configured {
                relays.add(peer, addrs, Source::Configured, now);
            }
            // Relays that hold our mailboxes stay linked even when the configuration no longer
            // names them: what contacts leave there must still be fetched.
            for (peer, addrs) in engine.mailbox_relays() {
                relays.add(peer, addrs, Source::Configured, now);
            }
            (Some(relays), Some(l.owner_events), Some(l.depositor_events))
        }
        None => (None, None, None),
    };
    let driver = Driver {
        engine,
        net,
        relays,
        events,
        requests: HashMap::new(),
        inbound: HashMap::new(),
        flushes: tokio::task::JoinSet::new(),
        unflushed: None,
        committed: 0,
        replies: VecDeque::new(),
        newest: 0,
    };
    let task = tokio::spawn(driver.run(
        net_events,
        LinkEvents {
            owner: owner_events,
            depositor: depositor_events,
        },
        rx,
        shutdown,
    ));
    (handle, task)
}

struct Driver {
    engine: Engine,
    net: NetHandle,
    /// The relay links, if the node has them.
    relays: Option<Relays>,
    events: broadcast::Sender<Event>,
    /// Our outbound requests: the network's id -> the engine's tag.
    requests: HashMap<RequestId, u64>,
    /// Inbound requests waiting for the engine's answer, by channel number.
    inbound: HashMap<u64, InboundId>,
    /// Store flushes running, each with the commit ticket it makes durable.
    flushes: tokio::task::JoinSet<(u64, Result<(), String>)>,
    /// The newest ticket prepared whose flush has not started (all flush slots were busy).
    unflushed: Option<u64>,
    /// Every ticket up to this one is durable.
    committed: u64,
    /// Commands answered once the ticket that covers them is durable, in ticket order.
    replies: VecDeque<(u64, CommandReply, CommandResult)>,
    /// The newest ticket handed out.
    newest: u64,
}

impl Driver {
    async fn run(
        mut self,
        mut net_events: mpsc::Receiver<NetEvent>,
        mut links: LinkEvents,
        mut commands: mpsc::Receiver<Request>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        loop {
            let sleep = match self.engine.poll_timeout() {
                Some(at) => Duration::from_millis(at.saturating_sub(now_ms())).min(IDLE_TICK),
                None => IDLE_TICK,
            };
            let link_timer = self.relays.as_ref().and_then(Relays::next_timer);
            // Timer ticks also make the lazy writes (delivery states, backoff) durable.
            let mut durable = false;
            tokio::select! {
                biased;
                _ = shutdown.changed() => {
                    if *shutdown.borrow() {
                        break;
                    }
                }
                Some(done) = self.flushes.join_next(), if !self.flushes.is_empty() => {
                    self.flushed(done);
                }
                ev = net_events.recv() => {
                    let Some(ev) = ev else { break };
                    self.net_event(ev);
                    // Take whatever else is ready under the same commit.
                    for _ in 1..MAX_BATCH {
                        match net_events.try_recv() {
                            Ok(ev) => self.net_event(ev),
                            Err(_) => break,
                        }
                    }
                }
                ev = recv_link(&mut links.owner) => {
                    self.link_event(Link::Owner, ev).await;
                    for _ in 1..MAX_BATCH {
                        match links.owner.as_mut().map(mpsc::Receiver::try_recv) {
                            Some(Ok(ev)) => self.link_event(Link::Owner, Some(ev)).await,
                            _ => break,
                        }
                    }
                }
                ev = recv_link(&mut links.depositor) => {
                    self.link_event(Link::Depositor, ev).await;
                    for _ in 1..MAX_BATCH {
                        match links.depositor.as_mut().map(mpsc::Receiver::try_recv) {
                            Some(Ok(ev)) => self.link_event(Link::Depositor, Some(ev)).await,
                            _ => break,
                        }
                    }
                }
                _ = sleep_until(link_timer) => {
                    self.link_timers().await;
                }
                req = commands.recv() => {
                    let Some(req) = req else { break };
                    // Commands waiting together share one commit, and each caller hears back
                    // only once its command's effects are durable.
                    let mut replies = Vec::new();
                    self.request(req, &mut replies);
                    for _ in 1..MAX_BATCH {
                        match commands.try_recv() {
                            Ok(req) => self.request(req, &mut replies),
                            Err(_) => break,
                        }
                    }
                    self.commit(true).await;
                    // Whatever the commands read or wrote is durable with the newest ticket.
                    let ticket = self.newest;
                    for (reply, result) in replies {
                        self.replies.push_back((ticket, reply, result));
                    }
                    self.answer();
                }
                _ = tokio::time::sleep(sleep) => {
                    self.engine.handle_timeout(now_ms());
                    durable = true;
                }
            }
            self.commit(durable).await;
        }
        // Let the running flushes end, then make everything durable and carry it out.
        while let Some(done) = self.flushes.join_next().await {
            self.flushed(done);
        }
        loop {
            if let Err(e) = self.engine.commit() {
                tracing::error!(error = %e, "store commit failed; outputs held back");
                break;
            }
            let mut any = false;
            while let Some(out) = self.engine.poll_output() {
                any = true;
                self.carry_out(out).await;
            }
            if !any {
                break;
            }
        }
        self.committed = u64::MAX;
        self.answer();
        if let Some(r) = &self.relays {
            r.owner.shutdown().await;
            r.depositor.shutdown().await;
        }
    }

    /// Prepares a commit of what the inputs so far did, sends the requests it released, and
    /// starts its flush (or leaves it for the next free slot). Repeats while carrying out the
    /// outputs produces more.
    async fn commit(&mut self, durable: bool) {
        loop {
            match self.engine.prepare_commit(durable) {
                Ok(Some(ticket)) => {
                    self.newest = ticket;
                    self.unflushed = Some(ticket);
                    self.start_flush();
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::error!(error = %e, "store write failed; outputs held back");
                    return;
                }
            }
            let mut any = false;
            while let Some(out) = self.engine.poll_output() {
                any = true;
                self.carry_out(out).await;
            }
            if !any {
                return;
            }
        }
    }

    /// Starts the flush of the newest prepared ticket if a slot is free.
    fn start_flush(&mut self) {
        if self.flushes.len() >= MAX_CONCURRENT_FLUSHES {
            return;
        }
        let Some(ticket) = self.unflushed.take() else {
            return;
        };
        let store = self.engine.store().clone();
        self.flushes
            .spawn_blocking(move || (ticket, store.flush().map_err(|e| e.to_string())));
    }

    /// A flush ended: release what it covers, answer the commands it covers, and start the
    /// next one.
    fn flushed(&mut self, done: Result<(u64, Result<(), String>), tokio::task::JoinError>) {
        match done {
            Ok((ticket, Ok(()))) => {
                self.engine.committed(ticket);
                self.committed = self.committed.max(ticket);
            }
            Ok((ticket, Err(e))) => {
                tracing::error!(error = %e, "store flush failed; outputs held back");
                // The commands it covered are not durable: tell their callers.
                while self.replies.front().is_some_and(|(t, _, _)| *t <= ticket) {
                    if let Some((_, reply, _)) = self.replies.pop_front() {
                        let _ = reply.send(Err(format!("cannot store: {e}")));
                    }
                }
            }
            Err(e) => tracing::error!(error = %e, "store flush task failed"),
        }
        self.answer();
        self.start_flush();
    }

    /// Answers the commands whose effects are durable.
    fn answer(&mut self) {
        while self
            .replies
            .front()
            .is_some_and(|(t, _, _)| *t <= self.committed)
        {
            if let Some((_, reply, result)) = self.replies.pop_front() {
                let _ = reply.send(result);
            }
        }
    }

    fn request(&mut self, req: Request, replies: &mut Vec<(CommandReply, CommandResult)>) {
        match req {
            Request::Engine(cmd, reply) => {
                let result = self
                    .engine
                    .command(now_ms(), cmd)
                    .map_err(|e| e.to_string());
                replies.push((reply, result));
            }
            Request::Peers(reply) => {
                let _ = reply.send(self.engine.peers());
            }
        }
    }

    fn net_event(&mut self, ev: NetEvent) {
        let now = now_ms();
        let input = match ev {
            NetEvent::Discovered {
                peer,
                addrs,
                role: Role::Relay,
                ..
            } => {
                // A relay is not a device to chat with: only the relay links use it.
                if let Some(r) = &mut self.relays {
                    r.add(peer, addrs, Source::Mdns, Instant::now());
                }
                return;
            }
            NetEvent::Discovered { peer, addrs, .. } => Input::Discovered { peer, addrs },
            NetEvent::Lost { peer } => {
                if let Some(r) = &mut self.relays {
                    if let Some(went_down) = r.lost(&peer) {
                        if went_down {
                            self.engine.handle_input(
                                now,
                                Input::Relay {
                                    relay: peer,
                                    addrs: Vec::new(),
                                    up: false,
                                },
                            );
                        }
                        return;
                    }
                }
                Input::Lost { peer }
            }
            NetEvent::Connected { peer, .. } => Input::Connected { peer },
            NetEvent::Disconnected { peer } => Input::Disconnected { peer },
            NetEvent::Request {
                peer,
                frame,
                channel,
            } => {
                self.inbound.insert(channel.get(), channel);
                Input::Request {
                    peer,
                    frame,
                    channel: channel.get(),
                }
            }
            NetEvent::Response { id, peer, frame } => match self.requests.remove(&id) {
                Some(tag) => Input::Response { peer, tag, frame },
                None => return,
            },
            NetEvent::RequestFailed { id, peer, error } => match self.requests.remove(&id) {
                Some(tag) => Input::RequestFailed { peer, tag, error },
                None => return,
            },
            NetEvent::MailboxRequest { channel, .. } => {
                // Devices take no mailbox requests yet (relay notifications come with the
                // device's mailbox client): answer, so the stream does not wait for a timeout.
                let frame = instaconnect_wire::mailbox::MailboxResponse::Malformed
                    .encode()
                    .unwrap_or_default();
                let net = self.net.clone();
                tokio::spawn(async move {
                    let _ = net.respond(channel, frame).await;
                });
                return;
            }
            NetEvent::Misbehaving { peer } => {
                let _ = self.events.send(Event::Misbehaving { peer });
                return;
            }
            NetEvent::Listening { .. }
            | NetEvent::DialFailed { .. }
            | NetEvent::InboundFailed { .. } => return,
        };
        self.engine.handle_input(now, input);
    }

    async fn carry_out(&mut self, out: Output) {
        match out {
            Output::Request { peer, tag, frame } => match self.net.request(&peer, frame).await {
                Ok(id) => {
                    self.requests.insert(id, tag);
                }
                Err(e) => self.engine.handle_input(
                    now_ms(),
                    Input::RequestFailed {
                        peer,
                        tag,
                        error: e.to_string(),
                    },
                ),
            },
            Output::Respond { channel, frame } => {
                if let Some(id) = self.inbound.remove(&channel) {
                    if let Err(e) = self.net.respond(id, frame).await {
                        tracing::debug!(error = %e, "response not sent");
                    }
                }
            }
            Output::Disconnect { peer } => {
                let _ = self.net.disconnect(&peer).await;
            }
            Output::Mailbox {
                relay,
                addrs,
                link,
                tag,
                frame,
            } => {
                let sent = match &mut self.relays {
                    Some(r) => r.send(link, &relay, &addrs, tag, frame).await,
                    None => Err("this node has no relay links".to_string()),
                };
                if let Err(error) = sent {
                    tracing::debug!(%relay, %error, "mailbox request not sent");
                    self.engine
                        .handle_input(now_ms(), Input::MailboxFailed { relay, tag, error });
                }
            }
            Output::Event(e) => {
                let _ = self.events.send(e);
            }
        }
    }
}

impl Driver {
    /// An event of one of the relay links.
    async fn link_event(&mut self, link: Link, ev: Option<NetEvent>) {
        let (Some(ev), Some(relays)) = (ev, self.relays.as_mut()) else {
            return;
        };
        let now = now_ms();
        let input = match ev {
            NetEvent::Connected { peer, .. } if link == Link::Owner => {
                match relays.connected(&peer, Instant::now()) {
                    Some(addrs) => Input::Relay {
                        relay: peer,
                        addrs,
                        up: true,
                    },
                    None => return,
                }
            }
            NetEvent::Disconnected { peer } if link == Link::Owner => {
                match relays.disconnected(&peer, Instant::now()) {
                    Some(addrs) => Input::Relay {
                        relay: peer,
                        addrs,
                        up: false,
                    },
                    None => return,
                }
            }
            NetEvent::DialFailed {
                peer: Some(peer),
                error,
            } if link == Link::Owner => {
                relays.dial_failed(&peer, &error, Instant::now());
                return;
            }
            NetEvent::Response { id, peer, frame } => match relays.answered(link, id) {
                Some((relay, tag)) => {
                    debug_assert_eq!(relay, peer);
                    Input::MailboxResponse { relay, tag, frame }
                }
                None => return,
            },
            NetEvent::RequestFailed { id, error, .. } => match relays.answered(link, id) {
                Some((relay, tag)) => Input::MailboxFailed { relay, tag, error },
                None => return,
            },
            NetEvent::MailboxRequest {
                peer,
                frame,
                channel,
            } => {
                // Only a known relay, on the owner link, may tell us of new envelopes.
                let notify = match MailboxRequest::decode(&frame) {
                    Ok(MailboxRequest::Notify { mailbox })
                        if link == Link::Owner && relays.is_known(&peer) =>
                    {
                        Some(mailbox)
                    }
                    _ => None,
                };
                let answer = if notify.is_some() {
                    MailboxResponse::Notified
                } else {
                    MailboxResponse::Malformed
                };
                let handle = relays.handle(link).clone();
                let frame = answer.encode().unwrap_or_default();
                tokio::spawn(async move {
                    let _ = handle.respond(channel, frame).await;
                });
                match notify {
                    Some(mailbox) => Input::MailboxNotify {
                        relay: peer,
                        mailbox,
                    },
                    None => return,
                }
            }
            _ => return,
        };
        self.engine.handle_input(now, input);
    }

    /// Dials the relays whose redial time has come, and keeps the idle owner links open.
    async fn link_timers(&mut self) {
        let Some(relays) = self.relays.as_mut() else {
            return;
        };
        let now = Instant::now();
        let mut to_dial = Vec::new();
        let mut to_ping = Vec::new();
        for (peer, r) in relays.known.iter_mut() {
            match r.state {
                LinkState::Waiting(at) if at <= now => to_dial.push(peer.clone()),
                LinkState::Dialing(deadline) if deadline <= now => {
                    // Never heard back: count it as failed and try again later.
                    r.failures = r.failures.saturating_add(1);
                    r.state = LinkState::Waiting(now + redial_delay(r.failures));
                }
                LinkState::Up { keepalive, .. } if keepalive <= now => {
                    to_ping.push(peer.clone());
                }
                _ => {}
            }
        }
        for peer in to_dial {
            relays.dial(&peer, now).await;
        }
        for peer in to_ping {
            relays.keepalive(&peer, now).await;
        }
    }
}

/// The relay links' event streams (taken out of the driver, like the main network's).
struct LinkEvents {
    owner: Option<mpsc::Receiver<NetEvent>>,
    depositor: Option<mpsc::Receiver<NetEvent>>,
}

/// The next event of a link; never ready without links, and `None` once when its stream ends.
async fn recv_link(rx: &mut Option<mpsc::Receiver<NetEvent>>) -> Option<NetEvent> {
    match rx {
        Some(r) => {
            let ev = r.recv().await;
            if ev.is_none() {
                *rx = None;
            }
            ev
        }
        None => std::future::pending().await,
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// How long to wait before the next dial after `failures` failures in a row (at least one):
/// [`REDIAL_BASE`] doubling up to [`REDIAL_MAX`], times a random factor in [0.75, 1.25).
fn redial_delay(failures: u32) -> Duration {
    let exp = failures.saturating_sub(1).min(16);
    let base = REDIAL_BASE.saturating_mul(1u32 << exp).min(REDIAL_MAX);
    base.mul_f64(0.75 + rand::random::<f64>() / 2.0)
}

/// Where the device learnt of a relay.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Source {
    Configured,
    Mdns,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum LinkState {
    /// Not connected; dial at this time.
    Waiting(Instant),
    /// A dial is under way; it counts as failed after this time.
    Dialing(Instant),
    /// Connected since, and the next keepalive is due at.
    Up { since: Instant, keepalive: Instant },
}

#[derive(Debug)]
struct KnownRelay {
    configured: Vec<String>,
    /// Addresses from mDNS while the relay is advertised there.
    mdns: Option<Vec<String>>,
    state: LinkState,
    /// Dials failed (or links dropped early) in a row.
    failures: u32,
}

impl KnownRelay {
    fn addrs(&self) -> Vec<String> {
        let mut all = self.configured.clone();
        for a in self.mdns.iter().flatten() {
            if !all.contains(a) {
                all.push(a.clone());
            }
        }
        all
    }
}

/// The relay links: the two ephemeral nodes, the known relays, and requests in flight.
struct Relays {
    owner: NetHandle,
    depositor: NetHandle,
    known: HashMap<String, KnownRelay>,
    /// Mailbox requests in flight on each link: the network's id -> (relay, engine's tag).
    owner_requests: HashMap<RequestId, (String, u64)>,
    depositor_requests: HashMap<RequestId, (String, u64)>,
    /// Addresses already given to a link's swarm, so each is added once.
    known_addrs: HashSet<(bool, String, String)>,
}

impl Relays {
    fn new(owner: NetHandle, depositor: NetHandle) -> Relays {
        Relays {
            owner,
            depositor,
            known: HashMap::new(),
            owner_requests: HashMap::new(),
            depositor_requests: HashMap::new(),
            known_addrs: HashSet::new(),
        }
    }

    fn handle(&self, link: Link) -> &NetHandle {
        match link {
            Link::Owner => &self.owner,
            Link::Depositor => &self.depositor,
        }
    }

    fn is_known(&self, peer: &str) -> bool {
        self.known.contains_key(peer)
    }

    /// The earliest time a relay is to be dialled, a dial times out or a keepalive is due.
    fn next_timer(&self) -> Option<Instant> {
        self.known
            .values()
            .map(|r| match r.state {
                LinkState::Waiting(at) | LinkState::Dialing(at) => at,
                LinkState::Up { keepalive, .. } => keepalive,
            })
            .min()
    }

    /// Learns of a relay (or of more addresses of one); a new one is dialled at once.
    fn add(&mut self, peer: String, mut addrs: Vec<String>, source: Source, now: Instant) {
        addrs.truncate(MAX_ADDRS_PER_RELAY);
        if let Some(r) = self.known.get_mut(&peer) {
            match source {
                Source::Configured => {
                    for a in addrs {
                        if !r.configured.contains(&a) && r.configured.len() < MAX_ADDRS_PER_RELAY {
                            r.configured.push(a);
                        }
                    }
                }
                Source::Mdns => r.mdns = Some(addrs),
            }
            return;
        }
        if self.known.len() >= MAX_RELAYS {
            tracing::debug!(%peer, "too many relays known; ignoring one more");
            return;
        }
        let (configured, mdns) = match source {
            Source::Configured => (addrs, None),
            Source::Mdns => (Vec::new(), Some(addrs)),
        };
        tracing::info!(relay = %peer, ?source, "relay known");
        self.known.insert(
            peer,
            KnownRelay {
                configured,
                mdns,
                state: LinkState::Waiting(now),
                failures: 0,
            },
        );
    }

    /// mDNS lost `peer`. `None` if it is not a relay we learnt of over mDNS; else whether its
    /// owner link was up (and is now closed, the relay forgotten) — unless it is also
    /// configured, which keeps it (`Some(false)`).
    fn lost(&mut self, peer: &str) -> Option<bool> {
        let r = self.known.get_mut(peer)?;
        r.mdns.as_ref()?;
        r.mdns = None;
        if !r.configured.is_empty() {
            return Some(false);
        }
        let was_up = matches!(r.state, LinkState::Up { .. });
        self.known.remove(peer);
        tracing::info!(relay = %peer, "relay no longer seen over mDNS; link closed");
        let owner = self.owner.clone();
        let peer = peer.to_string();
        tokio::spawn(async move {
            let _ = owner.disconnect(&peer).await;
        });
        Some(was_up)
    }

    /// The owner link to `peer` connected: its addresses if it is a known relay that was not up.
    fn connected(&mut self, peer: &str, now: Instant) -> Option<Vec<String>> {
        let r = self.known.get_mut(peer)?;
        if matches!(r.state, LinkState::Up { .. }) {
            return None;
        }
        tracing::info!(relay = %peer, "relay link up");
        r.state = LinkState::Up {
            since: now,
            keepalive: now + OWNER_KEEPALIVE,
        };
        Some(r.addrs())
    }

    /// The owner link to `peer` dropped: its addresses if it was up; a redial is scheduled.
    fn disconnected(&mut self, peer: &str, now: Instant) -> Option<Vec<String>> {
        let r = self.known.get_mut(peer)?;
        let LinkState::Up { since, .. } = r.state else {
            return None;
        };
        r.failures = if now.duration_since(since) >= STABLE_LINK {
            1
        } else {
            r.failures.saturating_add(1)
        };
        let delay = redial_delay(r.failures);
        tracing::info!(relay = %peer, redial_in = ?delay, "relay link down");
        r.state = LinkState::Waiting(now + delay);
        Some(r.addrs())
    }

    fn dial_failed(&mut self, peer: &str, error: &str, now: Instant) {
        let Some(r) = self.known.get_mut(peer) else {
            return;
        };
        if !matches!(r.state, LinkState::Dialing(_)) {
            return;
        }
        r.failures = r.failures.saturating_add(1);
        let delay = redial_delay(r.failures);
        tracing::debug!(relay = %peer, %error, redial_in = ?delay, "relay dial failed");
        r.state = LinkState::Waiting(now + delay);
    }

    async fn dial(&mut self, peer: &str, now: Instant) {
        let Some(addrs) = self.known.get(peer).map(KnownRelay::addrs) else {
            return;
        };
        let res = self.owner.dial_peer(peer, &addrs).await;
        let Some(r) = self.known.get_mut(peer) else {
            return;
        };
        match res {
            Ok(()) => r.state = LinkState::Dialing(now + DIAL_TIMEOUT),
            Err(e) => {
                // Already connected or dialling (a request dials too): the events tell.
                r.failures = r.failures.saturating_add(1);
                let delay = redial_delay(r.failures);
                tracing::debug!(relay = %peer, error = %e, redial_in = ?delay, "relay dial not started");
                r.state = LinkState::Waiting(now + delay);
            }
        }
    }

    /// An empty subscription: the relay answers it without changing anything, and the stream
    /// keeps the connection from being closed as idle.
    async fn keepalive(&mut self, peer: &str, now: Instant) {
        let Some(r) = self.known.get_mut(peer) else {
            return;
        };
        if let LinkState::Up { since, .. } = r.state {
            r.state = LinkState::Up {
                since,
                keepalive: now + OWNER_KEEPALIVE,
            };
        }
        let frame = MailboxRequest::Subscribe {
            mailboxes: Vec::new(),
        }
        .encode();
        if let Ok(frame) = frame {
            if let Err(e) = self.owner.mailbox_request(peer, frame).await {
                tracing::debug!(relay = %peer, error = %e, "relay keepalive not sent");
            }
        }
    }

    /// Sends a mailbox request on `link` (dialling `addrs` if needed) and remembers its tag.
    async fn send(
        &mut self,
        link: Link,
        relay: &str,
        addrs: &[String],
        tag: u64,
        frame: Vec<u8>,
    ) -> Result<(), String> {
        let is_owner = link == Link::Owner;
        for a in addrs.iter().take(MAX_ADDRS_PER_RELAY) {
            let key = (is_owner, relay.to_string(), a.clone());
            if self.known_addrs.contains(&key) {
                continue;
            }
            if self.known_addrs.len() >= MAX_KNOWN_RELAY_ADDRS {
                self.known_addrs.clear();
            }
            match self.handle(link).add_address(relay, a).await {
                Ok(()) => {
                    self.known_addrs.insert(key);
                }
                Err(e) => tracing::debug!(%relay, addr = %a, error = %e, "relay address skipped"),
            }
        }
        let id = self
            .handle(link)
            .mailbox_request(relay, frame)
            .await
            .map_err(|e| e.to_string())?;
        let map = match link {
            Link::Owner => &mut self.owner_requests,
            Link::Depositor => &mut self.depositor_requests,
        };
        map.insert(id, (relay.to_string(), tag));
        Ok(())
    }

    /// The (relay, tag) of the request `id` on `link`, once.
    fn answered(&mut self, link: Link, id: RequestId) -> Option<(String, u64)> {
        match link {
            Link::Owner => self.owner_requests.remove(&id),
            Link::Depositor => self.depositor_requests.remove(&id),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redial_delays_double_from_one_second_to_a_minute_with_jitter() {
        for (failures, nominal) in [
            (1, 1.0),
            (2, 2.0),
            (3, 4.0),
            (6, 32.0),
            (7, 60.0),
            (40, 60.0),
        ] {
            let d = redial_delay(failures).as_secs_f64();
            assert!(
                d >= nominal * 0.75 && d < nominal * 1.25,
                "after {failures} failures: {d}s (nominal {nominal}s)"
            );
        }
    }
}
