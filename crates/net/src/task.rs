//! The network task: owns the swarm and the mDNS daemon, serves commands, reports events.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use futures::StreamExt;
use libp2p::multiaddr::Protocol;
use libp2p::request_response::{
    self as rr, InboundFailure, InboundRequestId, OutboundRequestId, ResponseChannel,
};
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::swarm::SwarmEvent;
use libp2p::{identify, Multiaddr, PeerId, Swarm};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tracing::{debug, info, trace, warn};

use crate::behaviour::{build_swarm, keypair, Behaviour, BehaviourEvent};
use crate::codec::InboundRequest;
use crate::mdns::{Mdns, MdnsEvent};
use crate::{
    Command, InboundId, NetConfig, NetError, NetEvent, NetHandle, Proto, RequestId,
    BAD_FRAME_WINDOW, COMMAND_CHANNEL_CAPACITY, EVENT_CHANNEL_CAPACITY, MAX_BAD_FRAMES_PER_PEER,
    MAX_BUFFERED_EVENTS, MAX_FRAME_BYTES, MAX_PENDING_INBOUND, MAX_PENDING_OUTBOUND,
    MAX_TRACKED_PEERS, SHUTDOWN_GRACE, STARTUP_TIMEOUT,
};

struct PendingInbound {
    peer: PeerId,
    protocol: Proto,
    request_id: InboundRequestId,
    channel: ResponseChannel<Vec<u8>>,
}

struct BadFrames {
    window_start: Instant,
    count: u32,
}

pub(crate) struct NetTask {
    swarm: Swarm<Behaviour>,
    cmd_rx: mpsc::Receiver<Command>,
    events_tx: mpsc::Sender<NetEvent>,
    /// Events waiting for room in the event channel; the swarm is not polled while this holds
    /// [`MAX_BUFFERED_EVENTS`] or more (one swarm event adds at most two).
    buffered: VecDeque<NetEvent>,
    mdns: Option<Mdns>,
    listeners: Vec<libp2p::core::transport::ListenerId>,
    /// Inbound requests awaiting `respond`, oldest first (ids increase).
    inbound: BTreeMap<u64, PendingInbound>,
    inbound_index: HashMap<(Proto, InboundRequestId), u64>,
    next_inbound: u64,
    outbound: HashMap<(Proto, OutboundRequestId), RequestId>,
    next_outbound: u64,
    bad_frames: HashMap<PeerId, BadFrames>,
}

pub(crate) async fn start(
    cfg: NetConfig,
) -> Result<(NetHandle, mpsc::Receiver<NetEvent>), NetError> {
    let keypair = keypair(&cfg.identity)?;
    let local_peer = keypair.public().to_peer_id();
    let mut swarm = build_swarm(keypair)?;

    let mut listeners = Vec::with_capacity(cfg.listen.len());
    for addr in &cfg.listen {
        let ma: Multiaddr = addr
            .parse()
            .map_err(|_| NetError::InvalidAddress(addr.clone()))?;
        let id = swarm.listen_on(ma).map_err(|e| NetError::Listen {
            addr: addr.clone(),
            reason: e.to_string(),
        })?;
        listeners.push((id, addr.clone()));
    }

    let (cmd_tx, cmd_rx) = mpsc::channel(COMMAND_CHANNEL_CAPACITY);
    let (events_tx, events_rx) = mpsc::channel(EVENT_CHANNEL_CAPACITY);
    let mut task = NetTask {
        swarm,
        cmd_rx,
        events_tx,
        buffered: VecDeque::new(),
        mdns: None,
        listeners: listeners.iter().map(|(id, _)| *id).collect(),
        inbound: BTreeMap::new(),
        inbound_index: HashMap::new(),
        next_inbound: 0,
        outbound: HashMap::new(),
        next_outbound: 0,
        bad_frames: HashMap::new(),
    };
    task.await_listeners(listeners).await?;

    if cfg.mdns {
        let tcp_port = task.swarm.listeners().find_map(tcp_port);
        task.mdns = Some(Mdns::start(
            local_peer,
            cfg.role,
            cfg.protocol_version,
            tcp_port,
        )?);
    }

    info!(peer = %local_peer, "network started");
    tokio::spawn(task.run());
    let handle = NetHandle {
        local_peer_id: Arc::from(local_peer.to_base58()),
        cmd_tx,
    };
    Ok((handle, events_rx))
}

fn tcp_port(addr: &Multiaddr) -> Option<u16> {
    addr.iter().find_map(|p| match p {
        Protocol::Tcp(port) if port != 0 => Some(port),
        _ => None,
    })
}

/// `addr` without a trailing `/p2p/<peer>`, and that peer.
fn split_p2p(addr: &Multiaddr) -> (Multiaddr, Option<PeerId>) {
    let mut addr = addr.clone();
    match addr.pop() {
        Some(Protocol::P2p(peer)) => (addr, Some(peer)),
        Some(other) => {
            addr.push(other);
            (addr, None)
        }
        None => (addr, None),
    }
}

fn reply_to<T>(reply: oneshot::Sender<T>, value: T) {
    // The caller may have given up waiting (its future dropped); nothing to do then.
    let _ = reply.send(value);
}

impl NetTask {
    /// Polls the swarm until every listener reports an address, failing on a listener error.
    async fn await_listeners(
        &mut self,
        listeners: Vec<(libp2p::core::transport::ListenerId, String)>,
    ) -> Result<(), NetError> {
        let mut waiting: HashMap<_, String> = listeners.into_iter().collect();
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        while !waiting.is_empty() {
            let ev = tokio::time::timeout_at(deadline, self.swarm.select_next_some())
                .await
                .map_err(|_| NetError::Listen {
                    addr: waiting.values().cloned().collect::<Vec<_>>().join(", "),
                    reason: "no listen address within the startup timeout".to_string(),
                })?;
            match &ev {
                SwarmEvent::NewListenAddr { listener_id, .. } => {
                    waiting.remove(listener_id);
                }
                SwarmEvent::ListenerClosed {
                    listener_id,
                    reason,
                    ..
                } => {
                    if let Some(addr) = waiting.remove(listener_id) {
                        let reason = match reason {
                            Ok(()) => "closed".to_string(),
                            Err(e) => e.to_string(),
                        };
                        return Err(NetError::Listen { addr, reason });
                    }
                }
                SwarmEvent::ListenerError { listener_id, error } => {
                    if let Some(addr) = waiting.remove(listener_id) {
                        return Err(NetError::Listen {
                            addr,
                            reason: error.to_string(),
                        });
                    }
                }
                _ => {}
            }
            self.on_swarm_event(ev);
        }
        Ok(())
    }

    async fn run(mut self) {
        let shutdown_reply = loop {
            let can_poll = self.buffered.len() < MAX_BUFFERED_EVENTS;
            // An owned permit does not borrow `self` while the other branches' handlers run.
            let events_tx = self.events_tx.clone();
            tokio::select! {
                permit = events_tx.reserve_owned(), if !self.buffered.is_empty() => match permit {
                    Ok(permit) => {
                        if let Some(ev) = self.buffered.pop_front() {
                            permit.send(ev);
                        }
                    }
                    Err(_) => break None,
                },
                () = self.events_tx.closed() => {
                    debug!("event receiver dropped");
                    break None;
                }
                cmd = self.cmd_rx.recv() => match cmd {
                    Some(Command::Shutdown { reply }) => break Some(reply),
                    Some(cmd) => self.on_command(cmd),
                    None => {
                        debug!("all handles dropped");
                        break None;
                    }
                },
                ev = self.swarm.select_next_some(), if can_poll => self.on_swarm_event(ev),
                ev = next_mdns(&mut self.mdns), if can_poll => self.on_mdns_event(ev),
            }
        };
        self.shutdown().await;
        if let Some(reply) = shutdown_reply {
            reply_to(reply, ());
        }
    }

    async fn shutdown(mut self) {
        info!("network shutting down");
        if let Some(mdns) = self.mdns.take() {
            mdns.shutdown().await;
        }
        for id in std::mem::take(&mut self.listeners) {
            self.swarm.remove_listener(id);
        }
        let peers: Vec<PeerId> = self.swarm.connected_peers().copied().collect();
        for peer in peers {
            let _ = self.swarm.disconnect_peer_id(peer);
        }
        // Drop pending inbound channels: their peers see the stream close.
        self.inbound.clear();
        self.inbound_index.clear();
        let deadline = Instant::now() + SHUTDOWN_GRACE;
        while self.swarm.connected_peers().next().is_some() {
            match tokio::time::timeout_at(deadline, self.swarm.select_next_some()).await {
                Ok(ev) => self.on_swarm_event(ev),
                Err(_) => {
                    warn!("connections still open after the shutdown grace period");
                    break;
                }
            }
        }
        // Best effort: hand over what fits without waiting.
        while let Some(ev) = self.buffered.pop_front() {
            if self.events_tx.try_send(ev).is_err() {
                break;
            }
        }
    }

    fn emit(&mut self, ev: NetEvent) {
        trace!(?ev, "event");
        self.buffered.push_back(ev);
    }

    fn on_command(&mut self, cmd: Command) {
        match cmd {
            Command::Dial { addr, reply } => {
                let (bare, peer) = split_p2p(&addr);
                if let Some(peer) = peer {
                    self.swarm.add_peer_address(peer, bare);
                }
                let res = self
                    .swarm
                    .dial(addr)
                    .map_err(|e| NetError::Dial(e.to_string()));
                reply_to(reply, res);
            }
            Command::DialPeer { peer, addrs, reply } => {
                let mut bare = Vec::with_capacity(addrs.len());
                let mut res = Ok(());
                for addr in addrs {
                    match split_p2p(&addr) {
                        (_, Some(other)) if other != peer => {
                            res = Err(NetError::InvalidAddress(addr.to_string()));
                        }
                        (a, _) => bare.push(a),
                    }
                }
                if res.is_ok() {
                    let opts = DialOpts::peer_id(peer)
                        .addresses(bare)
                        .condition(PeerCondition::DisconnectedAndNotDialing)
                        .build();
                    res = self
                        .swarm
                        .dial(opts)
                        .map_err(|e| NetError::Dial(e.to_string()));
                }
                reply_to(reply, res);
            }
            Command::AddAddress { peer, addr, reply } => {
                let (bare, in_addr) = split_p2p(&addr);
                let res = match in_addr {
                    Some(other) if other != peer => Err(NetError::InvalidAddress(addr.to_string())),
                    _ => {
                        self.swarm.add_peer_address(peer, bare);
                        Ok(())
                    }
                };
                reply_to(reply, res);
            }
            Command::Request {
                peer,
                frame,
                protocol,
                reply,
            } => {
                let res = if self.outbound.len() >= MAX_PENDING_OUTBOUND {
                    Err(NetError::Busy)
                } else {
                    let b = self.swarm.behaviour_mut();
                    let rr = match protocol {
                        Proto::Msg => &mut b.rr,
                        Proto::Mailbox => &mut b.mailbox,
                    };
                    let rr_id = rr.send_request(&peer, InboundRequest::Frame(frame));
                    let id = RequestId(self.next_outbound);
                    self.next_outbound += 1;
                    self.outbound.insert((protocol, rr_id), id);
                    Ok(id)
                };
                reply_to(reply, res);
            }
            Command::Respond { id, frame, reply } => {
                let res = match self.inbound.remove(&id.0) {
                    None => Err(NetError::UnknownInbound(id)),
                    Some(pending)
                        if pending.protocol == Proto::Msg && frame.len() > MAX_FRAME_BYTES =>
                    {
                        self.inbound_index
                            .remove(&(pending.protocol, pending.request_id));
                        Err(NetError::FrameTooLarge {
                            len: frame.len(),
                            max: MAX_FRAME_BYTES,
                        })
                    }
                    Some(pending) => {
                        self.inbound_index
                            .remove(&(pending.protocol, pending.request_id));
                        let b = self.swarm.behaviour_mut();
                        let rr = match pending.protocol {
                            Proto::Msg => &mut b.rr,
                            Proto::Mailbox => &mut b.mailbox,
                        };
                        rr.send_response(pending.channel, frame)
                            .map_err(|_| NetError::ResponseClosed)
                    }
                };
                reply_to(reply, res);
            }
            Command::Disconnect { peer, reply } => {
                if self.swarm.disconnect_peer_id(peer).is_ok() {
                    debug!(%peer, "disconnecting on request");
                }
                reply_to(reply, Ok(()));
            }
            Command::ListenAddrs { reply } => {
                let addrs = self.swarm.listeners().map(|a| a.to_string()).collect();
                reply_to(reply, addrs);
            }
            Command::Shutdown { reply } => {
                // Handled in `run`; unreachable in practice, but answer anyway.
                reply_to(reply, ());
            }
        }
    }

    fn on_mdns_event(&mut self, ev: MdnsEvent) {
        match ev {
            MdnsEvent::Discovered {
                peer,
                role,
                version,
                addrs,
            } => {
                info!(%peer, %role, version, ?addrs, "mDNS: discovered");
                for addr in &addrs {
                    self.swarm.add_peer_address(peer, addr.clone());
                }
                self.emit(NetEvent::Discovered {
                    peer: peer.to_base58(),
                    role,
                    version,
                    addrs: addrs.iter().map(|a| a.to_string()).collect(),
                });
            }
            MdnsEvent::Lost { peer } => {
                info!(%peer, "mDNS: lost");
                self.emit(NetEvent::Lost {
                    peer: peer.to_base58(),
                });
            }
        }
    }

    fn on_swarm_event(&mut self, ev: SwarmEvent<BehaviourEvent>) {
        match ev {
            SwarmEvent::NewListenAddr { address, .. } => {
                info!(%address, "listening");
                self.emit(NetEvent::Listening {
                    addr: address.to_string(),
                });
            }
            SwarmEvent::ConnectionEstablished {
                peer_id,
                endpoint,
                num_established,
                ..
            } => {
                debug!(peer = %peer_id, addr = %endpoint.get_remote_address(), "connection established");
                if num_established.get() == 1 {
                    self.emit(NetEvent::Connected {
                        peer: peer_id.to_base58(),
                        addr: endpoint.get_remote_address().to_string(),
                    });
                }
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                num_established,
                cause,
                ..
            } => {
                debug!(peer = %peer_id, ?cause, "connection closed");
                if num_established == 0 {
                    self.emit(NetEvent::Disconnected {
                        peer: peer_id.to_base58(),
                    });
                }
            }
            SwarmEvent::OutgoingConnectionError { peer_id, error, .. } => {
                debug!(peer = ?peer_id, %error, "dial failed");
                self.emit(NetEvent::DialFailed {
                    peer: peer_id.map(|p| p.to_base58()),
                    error: error.to_string(),
                });
            }
            SwarmEvent::IncomingConnectionError {
                send_back_addr,
                error,
                ..
            } => debug!(%send_back_addr, %error, "incoming connection failed"),
            SwarmEvent::ListenerError { error, .. } => warn!(%error, "listener error"),
            SwarmEvent::ListenerClosed {
                addresses, reason, ..
            } => debug!(?addresses, ?reason, "listener closed"),
            SwarmEvent::Behaviour(BehaviourEvent::Rr(ev)) => self.on_rr_event(Proto::Msg, ev),
            SwarmEvent::Behaviour(BehaviourEvent::Mailbox(ev)) => {
                self.on_rr_event(Proto::Mailbox, ev)
            }
            SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received {
                peer_id,
                info,
                ..
            })) => debug!(
                peer = %peer_id,
                protocol = %info.protocol_version,
                agent = %info.agent_version,
                "identified"
            ),
            SwarmEvent::Behaviour(BehaviourEvent::Identify(ev)) => trace!(?ev, "identify"),
            SwarmEvent::Behaviour(BehaviourEvent::Ping(ev)) => trace!(?ev, "ping"),
            SwarmEvent::Behaviour(BehaviourEvent::Limits(never)) => match never {},
            other => trace!(?other, "swarm event"),
        }
    }

    fn on_rr_event(&mut self, protocol: Proto, ev: rr::Event<InboundRequest, Vec<u8>>) {
        match ev {
            rr::Event::Message { peer, message, .. } => match message {
                rr::Message::Request {
                    request_id,
                    request: InboundRequest::Frame(frame),
                    channel,
                } => {
                    let id = self.track_inbound(peer, protocol, request_id, channel);
                    let peer = peer.to_base58();
                    self.emit(match protocol {
                        Proto::Msg => NetEvent::Request {
                            peer,
                            frame,
                            channel: id,
                        },
                        Proto::Mailbox => NetEvent::MailboxRequest {
                            peer,
                            frame,
                            channel: id,
                        },
                    });
                }
                rr::Message::Request {
                    request: InboundRequest::Refused(why),
                    channel,
                    ..
                } => {
                    // Dropping the channel closes the stream: the sender's request fails.
                    drop(channel);
                    self.on_bad_frame(peer, why);
                }
                rr::Message::Response {
                    request_id,
                    response,
                } => match self.outbound.remove(&(protocol, request_id)) {
                    Some(id) => self.emit(NetEvent::Response {
                        id,
                        peer: peer.to_base58(),
                        frame: response,
                    }),
                    None => debug!(%peer, "response to an unknown request"),
                },
            },
            rr::Event::OutboundFailure {
                peer,
                request_id,
                error,
                ..
            } => match self.outbound.remove(&(protocol, request_id)) {
                Some(id) => {
                    debug!(%peer, %id, %error, "request failed");
                    self.emit(NetEvent::RequestFailed {
                        id,
                        peer: peer.to_base58(),
                        error: error.to_string(),
                    });
                }
                None => debug!(%peer, %error, "unknown request failed"),
            },
            rr::Event::InboundFailure {
                peer,
                request_id,
                error,
                ..
            } => {
                if let Some(key) = self.inbound_index.remove(&(protocol, request_id)) {
                    self.inbound.remove(&key);
                }
                match error {
                    InboundFailure::Timeout
                    | InboundFailure::ConnectionClosed
                    | InboundFailure::Io(_) => {
                        self.emit(NetEvent::InboundFailed {
                            peer: peer.to_base58(),
                            error: error.to_string(),
                        });
                    }
                    // Our own doing (evicted or dropped channel) or a protocol we do not
                    // speak: nothing the engine can act on.
                    InboundFailure::ResponseOmission | InboundFailure::UnsupportedProtocols => {
                        debug!(%peer, %error, "inbound request failed")
                    }
                }
            }
            rr::Event::ResponseSent { .. } => {}
        }
    }

    fn track_inbound(
        &mut self,
        peer: PeerId,
        protocol: Proto,
        request_id: InboundRequestId,
        channel: ResponseChannel<Vec<u8>>,
    ) -> InboundId {
        if self.inbound.len() >= MAX_PENDING_INBOUND {
            if let Some((old, dropped)) = self.inbound.pop_first() {
                self.inbound_index
                    .remove(&(dropped.protocol, dropped.request_id));
                warn!(
                    peer = %dropped.peer,
                    id = %InboundId(old),
                    "too many unanswered inbound requests; dropping the oldest"
                );
            }
        }
        let key = self.next_inbound;
        self.next_inbound += 1;
        self.inbound_index.insert((protocol, request_id), key);
        self.inbound.insert(
            key,
            PendingInbound {
                peer,
                protocol,
                request_id,
                channel,
            },
        );
        InboundId(key)
    }

    /// Reports a failed inbound stream and counts it against the peer; too many within
    /// [`BAD_FRAME_WINDOW`] and the peer is disconnected.
    fn on_bad_frame(&mut self, peer: PeerId, error: String) {
        debug!(%peer, %error, "bad inbound frame");
        self.emit(NetEvent::InboundFailed {
            peer: peer.to_base58(),
            error,
        });
        let now = Instant::now();
        if !self.bad_frames.contains_key(&peer) && self.bad_frames.len() >= MAX_TRACKED_PEERS {
            self.bad_frames
                .retain(|_, b| now.duration_since(b.window_start) < BAD_FRAME_WINDOW);
            if self.bad_frames.len() >= MAX_TRACKED_PEERS {
                let oldest = self
                    .bad_frames
                    .iter()
                    .min_by_key(|(_, b)| b.window_start)
                    .map(|(p, _)| *p);
                if let Some(oldest) = oldest {
                    self.bad_frames.remove(&oldest);
                }
            }
        }
        let entry = self.bad_frames.entry(peer).or_insert(BadFrames {
            window_start: now,
            count: 0,
        });
        if now.duration_since(entry.window_start) >= BAD_FRAME_WINDOW {
            entry.window_start = now;
            entry.count = 0;
        }
        entry.count += 1;
        if entry.count >= MAX_BAD_FRAMES_PER_PEER {
            self.bad_frames.remove(&peer);
            warn!(%peer, "too many bad frames; disconnecting");
            let _ = self.swarm.disconnect_peer_id(peer);
            self.emit(NetEvent::Misbehaving {
                peer: peer.to_base58(),
            });
        }
    }
}

async fn next_mdns(mdns: &mut Option<Mdns>) -> MdnsEvent {
    match mdns {
        Some(m) => m.next().await,
        None => std::future::pending().await,
    }
}
