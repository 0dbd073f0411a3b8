//! The network shell: a libp2p swarm and mDNS discovery (through `mdns-sd`) behind a small,
//! bounded, async API. Nothing libp2p-typed crosses this boundary: peers are base58 PeerId
//! strings (`12D3KooW…`), addresses are multiaddr strings, payloads are opaque `Vec<u8>` frames
//! that `core` encodes.
//!
//! # API
//!
//! ```text
//! start(NetConfig) -> (NetHandle, mpsc::Receiver<NetEvent>)   spawns the network task on the
//!                                                              current tokio runtime; returns once
//!                                                              every listener has an address
//! NetHandle (Clone):
//!   local_peer_id()                 our PeerId string
//!   dial(addr)                      connect to a multiaddr (with or without /p2p/<id>)
//!   dial_peer(peer, addrs)          connect to a peer, trying these addresses, unless it is
//!                                     connected or being dialled already
//!   add_address(peer, addr)         remember an address for a peer; `request` dials it if needed
//!   request(peer, frame)            -> RequestId; the answer arrives as NetEvent::Response or
//!                                     NetEvent::RequestFailed with that id
//!   respond(InboundId, frame)       answer a NetEvent::Request
//!   disconnect(peer)                close every connection to a peer
//!   listen_addrs()                  current listen multiaddrs
//!   shutdown()                      unregister mDNS (goodbye), stop listening, close connections
//! ```
//!
//! The task stops when `shutdown` is called, when every `NetHandle` is dropped, or when the
//! event receiver is dropped.
//!
//! # Protocols
//!
//! TCP (Noise + Yamux) and QUIC v1; identify (protocol version [`IDENTIFY_PROTOCOL_VERSION`]),
//! ping, connection limits, and request-response on [`MSG_PROTOCOL`]: one frame per request
//! and one per response, each `u32` big-endian length followed by that many bytes, at most
//! [`MAX_FRAME_BYTES`]. The receiver refuses a larger announced length before allocating (it
//! discards at most [`MAX_DRAIN_BYTES`] of the body, for at most [`DRAIN_TIMEOUT`], so the
//! sender is not left blocked), closes that one stream — the sender sees
//! [`NetEvent::RequestFailed`] — and reports [`NetEvent::InboundFailed`]; the connection keeps
//! serving. A truncated request is refused the same way. A peer that sends
//! [`MAX_BAD_FRAMES_PER_PEER`] bad frames within [`BAD_FRAME_WINDOW`] is disconnected and
//! reported as [`NetEvent::Misbehaving`].
//!
//! # Identity
//!
//! [`NetIdentity::Account`] derives the libp2p keypair from the account's 32-byte Ed25519 seed,
//! so the PeerId equals `instaconnect_crypto::IdentityKey::peer_id()`. [`NetIdentity::Ephemeral`]
//! uses a fresh random keypair (for relay deposits that must not reveal the account).
//!
//! # Discovery
//!
//! With `mdns: true` the node advertises the DNS-SD service [`MDNS_SERVICE_TYPE`] whose instance
//! name is the PeerId (public anyway) and whose TXT record holds only `v` (protocol version),
//! `peer` (PeerId) and `role` (`device`/`relay`) — never a phone number, name or picture — on
//! the port of our first TCP listener. It browses the same type; a resolved service of another
//! peer becomes [`NetEvent::Discovered`] with `/ip4/A/tcp/P` (and, except link-local,
//! `/ip6/A/tcp/P`) addresses that are also added to the swarm, so `request(peer, ..)` dials them.
//! A removed or expired service becomes [`NetEvent::Lost`].
//!
//! Interface selection: `mdns-sd` binds every interface that is up, loopback included, and
//! joins the multicast group on each one that allows it; the advertised service uses
//! `enable_addr_auto()`, so each interface announces only its own addresses (loopback announces
//! 127.0.0.1). Inside a network namespace whose only interface is `lo` with multicast on, or
//! that has a veth pair, discovery works without configuration.
//!
//! # Bounds
//!
//! Every queue and map that the network can grow has a named bound: the event channel
//! ([`EVENT_CHANNEL_CAPACITY`]) and command channel ([`COMMAND_CHANNEL_CAPACITY`]) are bounded
//! and give the caller backpressure — when the caller stops reading events, the task stops
//! polling the swarm (but still serves commands, so awaiting a handle method never deadlocks
//! against a full event channel). Pending inbound requests ([`MAX_PENDING_INBOUND`]; the oldest
//! is dropped beyond it), pending outbound requests ([`MAX_PENDING_OUTBOUND`]; `request` fails
//! with [`NetError::Busy`] beyond it), connections ([`MAX_ESTABLISHED_TOTAL`],
//! [`MAX_ESTABLISHED_PER_PEER`], [`MAX_PENDING_INCOMING`], [`MAX_PENDING_OUTGOING`]), streams
//! per connection ([`MAX_STREAMS_PER_CONNECTION`], [`MAX_CONCURRENT_REQUEST_STREAMS`]) and
//! discovered services ([`MAX_DISCOVERED_SERVICES`]) are all capped.

mod behaviour;
mod codec;
pub mod driver;
pub mod mailbox_client;
mod mdns;
mod task;

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use libp2p::{Multiaddr, PeerId};
use tokio::sync::{mpsc, oneshot};
use zeroize::Zeroizing;

pub use codec::{DRAIN_TIMEOUT, MAX_DRAIN_BYTES, MAX_FRAME_BYTES, MAX_MAILBOX_FRAME_BYTES};

/// Protocol id of the request-response protocol carrying engine frames.
pub const MSG_PROTOCOL: &str = "/instaconnect/msg/1";
/// The mailbox protocol between devices and relays.
pub const MAILBOX_PROTOCOL: &str = instaconnect_wire::mailbox::MAILBOX_PROTOCOL;
/// Protocol version announced by identify.
pub const IDENTIFY_PROTOCOL_VERSION: &str = "/instaconnect/1.0.0";
/// DNS-SD service type advertised and browsed over mDNS.
pub const MDNS_SERVICE_TYPE: &str = "_instaconnect._udp.local.";
/// Default protocol version advertised in the mDNS TXT record (`v`).
pub const DEFAULT_PROTOCOL_VERSION: u16 = 1;

/// Capacity of the event channel to the caller.
pub const EVENT_CHANNEL_CAPACITY: usize = 256;
/// Capacity of the command channel from `NetHandle`s to the network task.
pub const COMMAND_CHANNEL_CAPACITY: usize = 64;
/// Events the task buffers while the event channel is full before it stops polling the network.
pub const MAX_BUFFERED_EVENTS: usize = 64;
/// Inbound requests awaiting `respond`; beyond it the oldest is dropped (the peer sees a failure).
pub const MAX_PENDING_INBOUND: usize = 1024;
/// Outbound requests awaiting a response; beyond it `request` fails with [`NetError::Busy`].
pub const MAX_PENDING_OUTBOUND: usize = 1024;
/// How long a request may wait for its response (both directions).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Concurrent request-response streams per connection, both directions together. Inbound
/// streams beyond it are dropped, so it must exceed twice the engine's in-flight window
/// (`instaconnect_core::engine::MAX_INFLIGHT_PER_PEER`, 32) with room for control requests.
pub const MAX_CONCURRENT_REQUEST_STREAMS: usize = 160;
/// Concurrent multiplexed streams per connection (Yamux and QUIC).
pub const MAX_STREAMS_PER_CONNECTION: usize = 256;
/// Inbound streams negotiating their protocol at once, per connection (a full in-flight
/// window from the peer arrives at once).
pub const MAX_NEGOTIATING_INBOUND_STREAMS: usize = 128;
/// Established connections in total.
pub const MAX_ESTABLISHED_TOTAL: u32 = 256;
/// Established connections per peer (TCP and QUIC, and simultaneous dials, need more than one).
pub const MAX_ESTABLISHED_PER_PEER: u32 = 4;
/// Incoming connections still in the handshake.
pub const MAX_PENDING_INCOMING: u32 = 32;
/// Outgoing dials still in progress.
pub const MAX_PENDING_OUTGOING: u32 = 64;
/// A connection with no open streams is closed after this long.
pub const IDLE_CONNECTION_TIMEOUT: Duration = Duration::from_secs(60);
/// Bad (oversize or malformed) frames a peer may send within [`BAD_FRAME_WINDOW`].
pub const MAX_BAD_FRAMES_PER_PEER: u32 = 16;
/// Window over which bad frames are counted.
pub const BAD_FRAME_WINDOW: Duration = Duration::from_secs(60);
/// Peers whose bad frames are being counted.
pub const MAX_TRACKED_PEERS: usize = 1024;
/// mDNS services tracked (so that their removal can be reported).
pub const MAX_DISCOVERED_SERVICES: usize = 256;
/// Addresses taken from one resolved mDNS service.
pub const MAX_ADDRS_PER_SERVICE: usize = 8;
/// How long `start` waits for the listeners to come up.
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(5);
/// How long `shutdown` waits for connections to close and the mDNS goodbye to go out.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// Which libp2p identity the node uses.
pub enum NetIdentity {
    /// The account's Ed25519 key: the 32-byte seed (secret key).
    Account { ed25519_seed: Zeroizing<[u8; 32]> },
    /// A fresh random Ed25519 key, unlinkable to the account.
    Ephemeral,
}

impl fmt::Debug for NetIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NetIdentity::Account { .. } => f.write_str("Account { ed25519_seed: <redacted> }"),
            NetIdentity::Ephemeral => f.write_str("Ephemeral"),
        }
    }
}

/// What a node advertises itself as over mDNS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    Device,
    Relay,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Device => "device",
            Role::Relay => "relay",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = NetError;
    fn from_str(s: &str) -> Result<Role, NetError> {
        match s {
            "device" => Ok(Role::Device),
            "relay" => Ok(Role::Relay),
            other => Err(NetError::InvalidRole(other.to_string())),
        }
    }
}

/// Configuration of [`start`].
#[derive(Debug)]
pub struct NetConfig {
    pub identity: NetIdentity,
    /// Multiaddrs to listen on.
    pub listen: Vec<String>,
    /// Advertise and browse over mDNS.
    pub mdns: bool,
    pub role: Role,
    /// Advertised in the mDNS TXT record as `v`.
    pub protocol_version: u16,
}

impl NetConfig {
    /// Listen on all IPv4 interfaces, TCP and QUIC, on ephemeral ports; mDNS on; device role.
    pub fn new(identity: NetIdentity) -> NetConfig {
        NetConfig {
            identity,
            listen: vec![
                "/ip4/0.0.0.0/tcp/0".to_string(),
                "/ip4/0.0.0.0/udp/0/quic-v1".to_string(),
            ],
            mdns: true,
            role: Role::Device,
            protocol_version: DEFAULT_PROTOCOL_VERSION,
        }
    }
}

/// Id of an outbound request, echoed in [`NetEvent::Response`] / [`NetEvent::RequestFailed`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestId(u64);

impl RequestId {
    pub fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "out#{}", self.0)
    }
}

/// Handle on an inbound request awaiting [`NetHandle::respond`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct InboundId(u64);

impl InboundId {
    pub fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for InboundId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "in#{}", self.0)
    }
}

/// What the network reports to the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetEvent {
    /// A listener got an address (one per interface for `0.0.0.0`).
    Listening { addr: String },
    /// mDNS resolved another node's service; `addrs` are dialable and already known to the swarm.
    Discovered {
        peer: String,
        role: Role,
        version: u16,
        addrs: Vec<String>,
    },
    /// That node's mDNS service was removed (goodbye) or expired.
    Lost { peer: String },
    /// First connection to a peer established.
    Connected { peer: String, addr: String },
    /// Last connection to a peer closed.
    Disconnected { peer: String },
    /// An outgoing connection attempt failed (`peer` is known when we dialled a PeerId).
    DialFailed { peer: Option<String>, error: String },
    /// A peer sent a request; answer it with [`NetHandle::respond`] before [`REQUEST_TIMEOUT`].
    Request {
        peer: String,
        frame: Vec<u8>,
        channel: InboundId,
    },
    /// The response to our request `id`.
    Response {
        id: RequestId,
        peer: String,
        frame: Vec<u8>,
    },
    /// Our request `id` failed (dial failure, timeout, connection closed, refused frame, ...).
    RequestFailed {
        id: RequestId,
        peer: String,
        error: String,
    },
    /// A peer sent a request on `/instaconnect/mailbox/1`; answer it with
    /// [`NetHandle::respond`] like any other.
    MailboxRequest {
        peer: String,
        frame: Vec<u8>,
        channel: InboundId,
    },
    /// A peer's request could not be received or answered (e.g. oversize or truncated frame).
    InboundFailed { peer: String, error: String },
    /// The peer sent too many bad frames; it has been disconnected.
    Misbehaving { peer: String },
}

/// Errors of this crate.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("invalid multiaddr {0:?}")]
    InvalidAddress(String),
    #[error("invalid peer id {0:?}")]
    InvalidPeerId(String),
    #[error("the relay address {0:?} must end in /p2p/<the relay's peer id>, e.g. /ip4/192.168.1.7/tcp/4001/p2p/12D3KooW...")]
    RelayWithoutPeerId(String),
    #[error("invalid role {0:?} (expected device or relay)")]
    InvalidRole(String),
    #[error("invalid identity key: {0}")]
    InvalidIdentity(String),
    #[error("transport setup failed: {0}")]
    Transport(String),
    #[error("cannot listen on {addr}: {reason}")]
    Listen { addr: String, reason: String },
    #[error("dial failed: {0}")]
    Dial(String),
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    FrameTooLarge { len: usize, max: usize },
    #[error("no pending inbound request {0} (answered, timed out, or dropped)")]
    UnknownInbound(InboundId),
    #[error("the peer is no longer waiting for this response")]
    ResponseClosed,
    #[error("too many requests in flight")]
    Busy,
    #[error("mDNS: {0}")]
    Mdns(String),
    #[error("the network task has stopped")]
    Closed,
}

/// Commands from handles to the network task.
/// Which request-response protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Proto {
    Msg,
    Mailbox,
}

pub(crate) enum Command {
    Dial {
        addr: Multiaddr,
        reply: oneshot::Sender<Result<(), NetError>>,
    },
    DialPeer {
        peer: PeerId,
        addrs: Vec<Multiaddr>,
        reply: oneshot::Sender<Result<(), NetError>>,
    },
    AddAddress {
        peer: PeerId,
        addr: Multiaddr,
        reply: oneshot::Sender<Result<(), NetError>>,
    },
    Request {
        peer: PeerId,
        frame: Vec<u8>,
        protocol: Proto,
        reply: oneshot::Sender<Result<RequestId, NetError>>,
    },
    Respond {
        id: InboundId,
        frame: Vec<u8>,
        reply: oneshot::Sender<Result<(), NetError>>,
    },
    Disconnect {
        peer: PeerId,
        reply: oneshot::Sender<Result<(), NetError>>,
    },
    ListenAddrs {
        reply: oneshot::Sender<Vec<String>>,
    },
    Shutdown {
        reply: oneshot::Sender<()>,
    },
}

/// Cheap, cloneable handle on the running network task.
#[derive(Clone)]
pub struct NetHandle {
    local_peer_id: Arc<str>,
    cmd_tx: mpsc::Sender<Command>,
}

impl fmt::Debug for NetHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NetHandle")
            .field("local_peer_id", &self.local_peer_id)
            .finish_non_exhaustive()
    }
}

fn parse_peer(peer: &str) -> Result<PeerId, NetError> {
    PeerId::from_str(peer).map_err(|_| NetError::InvalidPeerId(peer.to_string()))
}

fn parse_addr(addr: &str) -> Result<Multiaddr, NetError> {
    Multiaddr::from_str(addr).map_err(|_| NetError::InvalidAddress(addr.to_string()))
}

fn check_frame(frame: &[u8], max: usize) -> Result<(), NetError> {
    if frame.len() > max {
        return Err(NetError::FrameTooLarge {
            len: frame.len(),
            max,
        });
    }
    Ok(())
}

impl NetHandle {
    /// Our PeerId (base58).
    pub fn local_peer_id(&self) -> &str {
        &self.local_peer_id
    }

    async fn call<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, NetError> {
        let (reply, rx) = oneshot::channel();
        self.cmd_tx
            .send(make(reply))
            .await
            .map_err(|_| NetError::Closed)?;
        rx.await.map_err(|_| NetError::Closed)
    }

    /// Dials a multiaddr (`/ip4/…/tcp/…`, `/ip4/…/udp/…/quic-v1`, optionally ending in
    /// `/p2p/<peer>`). Returns once the dial has started; the outcome arrives as
    /// [`NetEvent::Connected`] or [`NetEvent::DialFailed`].
    pub async fn dial(&self, addr: &str) -> Result<(), NetError> {
        let addr = parse_addr(addr)?;
        self.call(|reply| Command::Dial { addr, reply }).await?
    }

    /// Dials `peer` on `addrs` (each with or without `/p2p/<peer>`; an address naming another
    /// peer is an error), unless it is connected or being dialled already (then
    /// [`NetError::Dial`]). The outcome arrives as [`NetEvent::Connected`] or
    /// [`NetEvent::DialFailed`] (once, when every address failed).
    pub async fn dial_peer(&self, peer: &str, addrs: &[String]) -> Result<(), NetError> {
        let peer = parse_peer(peer)?;
        let addrs = addrs
            .iter()
            .map(|a| parse_addr(a))
            .collect::<Result<Vec<_>, _>>()?;
        self.call(|reply| Command::DialPeer { peer, addrs, reply })
            .await?
    }

    /// Remembers `addr` for `peer`; a later `request` to that peer dials it if not connected.
    pub async fn add_address(&self, peer: &str, addr: &str) -> Result<(), NetError> {
        let peer = parse_peer(peer)?;
        let addr = parse_addr(addr)?;
        self.call(|reply| Command::AddAddress { peer, addr, reply })
            .await?
    }

    /// Sends one frame to `peer` (dialling a known address if needed). The response arrives
    /// as [`NetEvent::Response`] or [`NetEvent::RequestFailed`] carrying the returned id.
    pub async fn request(&self, peer: &str, frame: Vec<u8>) -> Result<RequestId, NetError> {
        let peer = parse_peer(peer)?;
        check_frame(&frame, MAX_FRAME_BYTES)?;
        self.call(|reply| Command::Request {
            peer,
            frame,
            protocol: Proto::Msg,
            reply,
        })
        .await?
    }

    /// Sends one frame on `/instaconnect/mailbox/1` (to a relay, or a relay's notification to
    /// a device); the answer arrives like [`NetHandle::request`]'s.
    pub async fn mailbox_request(&self, peer: &str, frame: Vec<u8>) -> Result<RequestId, NetError> {
        let peer = parse_peer(peer)?;
        check_frame(&frame, MAX_MAILBOX_FRAME_BYTES)?;
        self.call(|reply| Command::Request {
            peer,
            frame,
            protocol: Proto::Mailbox,
            reply,
        })
        .await?
    }

    /// Answers the inbound request `channel` with one frame (the limit of its protocol is
    /// checked when it is written).
    pub async fn respond(&self, channel: InboundId, frame: Vec<u8>) -> Result<(), NetError> {
        check_frame(&frame, MAX_MAILBOX_FRAME_BYTES)?;
        self.call(|reply| Command::Respond {
            id: channel,
            frame,
            reply,
        })
        .await?
    }

    /// Closes every connection to `peer` (no-op if not connected).
    pub async fn disconnect(&self, peer: &str) -> Result<(), NetError> {
        let peer = parse_peer(peer)?;
        self.call(|reply| Command::Disconnect { peer, reply })
            .await?
    }

    /// Current listen addresses (empty once the task has stopped).
    pub async fn listen_addrs(&self) -> Vec<String> {
        self.call(|reply| Command::ListenAddrs { reply })
            .await
            .unwrap_or_default()
    }

    /// Graceful stop: unregisters the mDNS service (sends the goodbye), stops listening,
    /// closes connections (waiting at most [`SHUTDOWN_GRACE`]), and ends the task. Returns
    /// when done; calling it again, or on a stopped task, returns at once.
    pub async fn shutdown(&self) {
        let _ = self.call(|reply| Command::Shutdown { reply }).await;
    }
}

/// Splits a relay's multiaddr, which must end in `/p2p/<peer id>`, into the relay's peer id
/// and the address (returned whole, as given).
pub fn parse_relay_addr(addr: &str) -> Result<(String, String), NetError> {
    let ma = parse_addr(addr)?;
    match ma.iter().last() {
        Some(libp2p::multiaddr::Protocol::P2p(peer)) if ma.iter().count() > 1 => {
            Ok((peer.to_base58(), addr.to_string()))
        }
        _ => Err(NetError::RelayWithoutPeerId(addr.to_string())),
    }
}

/// Starts the network on the current tokio runtime. Returns once every listener has an
/// address (or fails with [`NetError::Listen`]); the `Listening` events are the first events.
pub async fn start(cfg: NetConfig) -> Result<(NetHandle, mpsc::Receiver<NetEvent>), NetError> {
    task::start(cfg).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_relay_address_must_name_the_relay() {
        let peer = "12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN";
        let addr = format!("/ip4/127.0.0.1/tcp/4001/p2p/{peer}");
        assert_eq!(
            parse_relay_addr(&addr).unwrap(),
            (peer.to_string(), addr.clone())
        );
        let e = parse_relay_addr("/ip4/127.0.0.1/tcp/4001").unwrap_err();
        assert!(e.to_string().contains("must end in /p2p/"), "{e}");
        let e = parse_relay_addr(&format!("/p2p/{peer}")).unwrap_err();
        assert!(e.to_string().contains("must end in /p2p/"), "{e}");
        let e = parse_relay_addr("127.0.0.1:4001").unwrap_err();
        assert!(matches!(e, NetError::InvalidAddress(_)), "{e}");
    }
}
