//! A plain rust-libp2p peer that is not built on `instaconnect-net`: it speaks identify, ping
//! and `/instaconnect/msg/1` with a codec that sends request bytes verbatim, so tests can put
//! arbitrary (oversize, lying, truncated) frames on the wire.

use std::collections::HashMap;
use std::io;
use std::time::Duration;

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, StreamExt};
use libp2p::request_response::{self as rr, OutboundRequestId, ProtocolSupport};
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{identify, noise, ping, tcp, yamux, Multiaddr, PeerId, StreamProtocol};
use tokio::sync::{mpsc, oneshot};

/// Most bytes the raw peer reads as a response.
const RAW_READ_LIMIT: u64 = 1 << 20;

#[derive(Debug, Clone, Copy, Default)]
pub struct RawCodec;

async fn read_all<T: AsyncRead + Unpin + Send>(io: &mut T) -> io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    io.take(RAW_READ_LIMIT).read_to_end(&mut buf).await?;
    Ok(buf)
}

impl rr::Codec for RawCodec {
    type Protocol = StreamProtocol;
    type Request = Vec<u8>;
    type Response = Vec<u8>;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Vec<u8>>
    where
        T: AsyncRead + Unpin + Send,
    {
        read_all(io).await
    }
    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Vec<u8>>
    where
        T: AsyncRead + Unpin + Send,
    {
        let bytes = read_all(io).await?;
        if bytes.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "empty response",
            ));
        }
        Ok(bytes)
    }
    async fn write_request<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        r: Vec<u8>,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        io.write_all(&r).await?;
        io.flush().await
    }
    async fn write_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        r: Vec<u8>,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        io.write_all(&r).await?;
        io.flush().await
    }
}

#[derive(NetworkBehaviour)]
struct RawBehaviour {
    identify: identify::Behaviour,
    ping: ping::Behaviour,
    rr: rr::Behaviour<RawCodec>,
}

/// What the raw peer observed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RawEvent {
    Connected(PeerId),
    Closed(PeerId),
    Identified {
        peer: PeerId,
        protocol_version: String,
        agent_version: String,
    },
    Pong(PeerId),
}

enum RawCmd {
    Dial(Multiaddr),
    Request(PeerId, Vec<u8>, oneshot::Sender<Result<Vec<u8>, String>>),
}

pub struct RawPeer {
    pub peer_id: PeerId,
    cmd: mpsc::Sender<RawCmd>,
    pub events: mpsc::Receiver<RawEvent>,
}

/// `payload` with our length prefix: a well-formed frame.
pub fn frame(payload: &[u8]) -> Vec<u8> {
    let mut out = u32::try_from(payload.len()).unwrap().to_be_bytes().to_vec();
    out.extend_from_slice(payload);
    out
}

/// Decodes a well-formed frame received by the raw peer.
pub fn unframe(bytes: &[u8]) -> Vec<u8> {
    assert!(bytes.len() >= 4, "short response {bytes:?}");
    let len = u32::from_be_bytes(bytes[..4].try_into().unwrap()) as usize;
    assert_eq!(bytes.len(), 4 + len, "response length prefix");
    bytes[4..].to_vec()
}

impl RawPeer {
    pub fn spawn() -> RawPeer {
        let mut swarm = libp2p::SwarmBuilder::with_new_identity()
            .with_tokio()
            .with_tcp(
                tcp::Config::default(),
                noise::Config::new,
                yamux::Config::default,
            )
            .unwrap()
            .with_behaviour(|key| RawBehaviour {
                identify: identify::Behaviour::new(identify::Config::new(
                    "/some-other-app/1".to_string(),
                    key.public(),
                )),
                ping: ping::Behaviour::new(
                    ping::Config::new().with_interval(Duration::from_millis(200)),
                ),
                rr: rr::Behaviour::with_codec(
                    RawCodec,
                    [(
                        StreamProtocol::new(instaconnect_net::MSG_PROTOCOL),
                        ProtocolSupport::Full,
                    )],
                    // Longer than the tests wait, so a refusal must arrive by itself.
                    rr::Config::default()
                        .with_max_concurrent_streams(1000)
                        .with_request_timeout(Duration::from_secs(30)),
                ),
            })
            .unwrap()
            .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
            .build();
        let peer_id = *swarm.local_peer_id();
        let (cmd_tx, mut cmd_rx) = mpsc::channel::<RawCmd>(1024);
        let (ev_tx, ev_rx) = mpsc::channel(1024);
        tokio::spawn(async move {
            let mut pending: HashMap<OutboundRequestId, oneshot::Sender<Result<Vec<u8>, String>>> =
                HashMap::new();
            loop {
                tokio::select! {
                    cmd = cmd_rx.recv() => match cmd {
                        None => break,
                        Some(RawCmd::Dial(addr)) => swarm.dial(addr).unwrap(),
                        Some(RawCmd::Request(peer, bytes, reply)) => {
                            let id = swarm.behaviour_mut().rr.send_request(&peer, bytes);
                            pending.insert(id, reply);
                        }
                    },
                    ev = swarm.select_next_some() => {
                        let out = match ev {
                            SwarmEvent::ConnectionEstablished { peer_id, .. } => Some(RawEvent::Connected(peer_id)),
                            SwarmEvent::ConnectionClosed { peer_id, .. } => Some(RawEvent::Closed(peer_id)),
                            SwarmEvent::Behaviour(RawBehaviourEvent::Identify(identify::Event::Received { peer_id, info, .. })) => {
                                Some(RawEvent::Identified {
                                    peer: peer_id,
                                    protocol_version: info.protocol_version,
                                    agent_version: info.agent_version,
                                })
                            }
                            SwarmEvent::Behaviour(RawBehaviourEvent::Ping(ping::Event { peer, result: Ok(_), .. })) => Some(RawEvent::Pong(peer)),
                            SwarmEvent::Behaviour(RawBehaviourEvent::Rr(rr::Event::Message {
                                message: rr::Message::Response { request_id, response }, ..
                            })) => {
                                if let Some(tx) = pending.remove(&request_id) {
                                    let _ = tx.send(Ok(response));
                                }
                                None
                            }
                            SwarmEvent::Behaviour(RawBehaviourEvent::Rr(rr::Event::OutboundFailure { request_id, error, .. })) => {
                                if let Some(tx) = pending.remove(&request_id) {
                                    let _ = tx.send(Err(error.to_string()));
                                }
                                None
                            }
                            _ => None,
                        };
                        if let Some(out) = out {
                            let _ = ev_tx.try_send(out);
                        }
                    }
                }
            }
        });
        RawPeer {
            peer_id,
            cmd: cmd_tx,
            events: ev_rx,
        }
    }

    pub async fn dial(&self, addr: &str) {
        self.cmd
            .send(RawCmd::Dial(addr.parse().unwrap()))
            .await
            .unwrap();
    }

    /// Sends `bytes` verbatim as one request; resolves to the raw response or the failure.
    pub async fn request(
        &self,
        peer: &str,
        bytes: Vec<u8>,
    ) -> oneshot::Receiver<Result<Vec<u8>, String>> {
        let (tx, rx) = oneshot::channel();
        self.cmd
            .send(RawCmd::Request(peer.parse().unwrap(), bytes, tx))
            .await
            .unwrap();
        rx
    }

    /// Waits (bounded) for the first event `f` accepts.
    pub async fn wait_for<T>(
        &mut self,
        what: &str,
        mut f: impl FnMut(&RawEvent) -> Option<T>,
    ) -> T {
        let fut = async {
            loop {
                let ev = self.events.recv().await.expect("raw peer stopped");
                if let Some(t) = f(&ev) {
                    return t;
                }
            }
        };
        tokio::time::timeout(super::EVENT_TIMEOUT, fut)
            .await
            .unwrap_or_else(|_| panic!("raw peer timed out waiting for {what}"))
    }
}
