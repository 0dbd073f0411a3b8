//! The libp2p composition: transports, behaviours and their limits.

use std::convert::Infallible;

use libp2p::swarm::NetworkBehaviour;
use libp2p::{
    connection_limits, identify, identity, noise, ping, request_response, tcp, yamux, Swarm,
    SwarmBuilder,
};

use crate::codec::{FrameCodec, MAILBOX_STREAM_PROTOCOL, MSG_STREAM_PROTOCOL};
use crate::{
    NetError, NetIdentity, IDENTIFY_PROTOCOL_VERSION, IDLE_CONNECTION_TIMEOUT,
    MAX_CONCURRENT_REQUEST_STREAMS, MAX_ESTABLISHED_PER_PEER, MAX_ESTABLISHED_TOTAL,
    MAX_NEGOTIATING_INBOUND_STREAMS, MAX_PENDING_INCOMING, MAX_PENDING_OUTGOING,
    MAX_STREAMS_PER_CONNECTION, REQUEST_TIMEOUT,
};

#[derive(NetworkBehaviour)]
pub(crate) struct Behaviour {
    // First, so that it refuses a connection before the others set anything up for it.
    pub(crate) limits: connection_limits::Behaviour,
    pub(crate) identify: identify::Behaviour,
    pub(crate) ping: ping::Behaviour,
    pub(crate) rr: request_response::Behaviour<FrameCodec>,
    /// `/instaconnect/mailbox/1`: deposits, fetches and notifications between devices and relays.
    pub(crate) mailbox: request_response::Behaviour<FrameCodec>,
}

/// The libp2p keypair for `identity`.
pub(crate) fn keypair(identity: &NetIdentity) -> Result<identity::Keypair, NetError> {
    match identity {
        NetIdentity::Account { ed25519_seed } => {
            // `ed25519_from_bytes` zeroizes its input: hand it a zeroizing copy.
            let mut seed = ed25519_seed.clone();
            identity::Keypair::ed25519_from_bytes(&mut *seed)
                .map_err(|e| NetError::InvalidIdentity(e.to_string()))
        }
        NetIdentity::Ephemeral => Ok(identity::Keypair::generate_ed25519()),
    }
}

fn yamux_config() -> yamux::Config {
    let mut cfg = yamux::Config::default();
    cfg.set_max_num_streams(MAX_STREAMS_PER_CONNECTION);
    cfg
}

pub(crate) fn build_swarm(keypair: identity::Keypair) -> Result<Swarm<Behaviour>, NetError> {
    let limits = connection_limits::ConnectionLimits::default()
        .with_max_established(Some(MAX_ESTABLISHED_TOTAL))
        .with_max_established_per_peer(Some(MAX_ESTABLISHED_PER_PEER))
        .with_max_pending_incoming(Some(MAX_PENDING_INCOMING))
        .with_max_pending_outgoing(Some(MAX_PENDING_OUTGOING));

    let swarm = SwarmBuilder::with_existing_identity(keypair)
        .with_tokio()
        .with_tcp(
            tcp::Config::default().nodelay(true),
            noise::Config::new,
            yamux_config,
        )
        .map_err(|e| NetError::Transport(e.to_string()))?
        .with_quic_config(|mut cfg| {
            cfg.max_concurrent_stream_limit =
                u32::try_from(MAX_STREAMS_PER_CONNECTION).unwrap_or(u32::MAX);
            cfg
        })
        .with_behaviour(|key| Behaviour {
            limits: connection_limits::Behaviour::new(limits),
            identify: identify::Behaviour::new(
                identify::Config::new(IDENTIFY_PROTOCOL_VERSION.to_string(), key.public())
                    .with_agent_version(format!("instaconnect/{}", env!("CARGO_PKG_VERSION"))),
            ),
            ping: ping::Behaviour::default(),
            rr: request_response::Behaviour::with_codec(
                FrameCodec,
                [(MSG_STREAM_PROTOCOL, request_response::ProtocolSupport::Full)],
                request_response::Config::default()
                    .with_request_timeout(REQUEST_TIMEOUT)
                    .with_max_concurrent_streams(MAX_CONCURRENT_REQUEST_STREAMS),
            ),
            mailbox: request_response::Behaviour::with_codec(
                FrameCodec,
                [(
                    MAILBOX_STREAM_PROTOCOL,
                    request_response::ProtocolSupport::Full,
                )],
                request_response::Config::default()
                    .with_request_timeout(REQUEST_TIMEOUT)
                    .with_max_concurrent_streams(MAX_CONCURRENT_REQUEST_STREAMS),
            ),
        })
        .map_err(|e: Infallible| match e {})?
        .with_swarm_config(|cfg| {
            cfg.with_idle_connection_timeout(IDLE_CONNECTION_TIMEOUT)
                .with_max_negotiating_inbound_streams(MAX_NEGOTIATING_INBOUND_STREAMS)
        })
        .build();
    Ok(swarm)
}
