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

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use instaconnect_core::engine::{Command, Engine, Event, Input, Output, PeerView};
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::{InboundId, NetEvent, NetHandle, RequestId};

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

/// Starts the driver task. It stops when `shutdown` becomes true or the network's event
/// stream ends, after a final commit.
pub fn spawn(
    engine: Engine,
    net: NetHandle,
    net_events: mpsc::Receiver<NetEvent>,
    shutdown: watch::Receiver<bool>,
) -> (DriverHandle, JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(DRIVER_COMMAND_CAPACITY);
    let (events, _) = broadcast::channel(USER_EVENT_CAPACITY);
    let handle = DriverHandle {
        tx,
        events: events.clone(),
    };
    let driver = Driver {
        engine,
        net,
        events,
        requests: HashMap::new(),
        inbound: HashMap::new(),
        flushes: tokio::task::JoinSet::new(),
        unflushed: None,
        committed: 0,
        replies: VecDeque::new(),
        newest: 0,
    };
    let task = tokio::spawn(driver.run(net_events, rx, shutdown));
    (handle, task)
}

struct Driver {
    engine: Engine,
    net: NetHandle,
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
        mut commands: mpsc::Receiver<Request>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        loop {
            let sleep = match self.engine.poll_timeout() {
                Some(at) => Duration::from_millis(at.saturating_sub(now_ms())).min(IDLE_TICK),
                None => IDLE_TICK,
            };
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
            NetEvent::Discovered { peer, addrs, .. } => Input::Discovered { peer, addrs },
            NetEvent::Lost { peer } => Input::Lost { peer },
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
            Output::Mailbox { relay, tag, .. } => self.engine.handle_input(
                now_ms(),
                Input::MailboxFailed {
                    relay,
                    tag,
                    error: "no relay links yet".into(),
                },
            ),
            Output::Event(e) => {
                let _ = self.events.send(e);
            }
        }
    }
}
