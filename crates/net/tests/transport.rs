//! Two or more nodes on 127.0.0.1 with explicit addresses (mDNS off).

mod common;

use common::raw::{frame, unframe, RawEvent, RawPeer};
use common::{connected_to, first_addr, loopback_config, tcp_node, wait_for};
use instaconnect_net::{
    start, NetError, NetEvent, NetHandle, NetIdentity, RequestId, IDENTIFY_PROTOCOL_VERSION,
    MAX_BAD_FRAMES_PER_PEER, MAX_CONCURRENT_REQUEST_STREAMS, MAX_FRAME_BYTES,
};
use tokio::sync::mpsc::Receiver;

type Node = (NetHandle, Receiver<NetEvent>);

/// Payload with a recognisable pattern.
fn payload(len: usize, salt: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31) ^ salt)
        .collect()
}

/// `from` sends `req` to `to`, which answers `resp`; asserts both arrive intact.
async fn round_trip(from: &mut Node, to: &mut Node, req: Vec<u8>, resp: Vec<u8>) {
    let to_peer = to.0.local_peer_id().to_string();
    let from_peer = from.0.local_peer_id().to_string();
    let id = from.0.request(&to_peer, req.clone()).await.unwrap();

    let (peer, frame, channel) = wait_for(&mut to.1, "Request", |ev| match ev {
        NetEvent::Request {
            peer,
            frame,
            channel,
        } => Some((peer.clone(), frame.clone(), *channel)),
        _ => None,
    })
    .await;
    assert_eq!(peer, from_peer);
    assert_eq!(frame, req, "request bytes arrive unchanged");
    to.0.respond(channel, resp.clone()).await.unwrap();
    // A second answer to the same request is refused.
    assert!(matches!(
        to.0.respond(channel, vec![1]).await,
        Err(NetError::UnknownInbound(c)) if c == channel
    ));

    let (peer, frame) = wait_response(&mut from.1, id).await;
    assert_eq!(peer, to_peer);
    assert_eq!(frame, resp, "response bytes arrive unchanged");
}

async fn wait_response(rx: &mut Receiver<NetEvent>, id: RequestId) -> (String, Vec<u8>) {
    wait_for(rx, "Response", |ev| match ev {
        NetEvent::Response { id: i, peer, frame } if *i == id => {
            Some((peer.clone(), frame.clone()))
        }
        NetEvent::RequestFailed { id: i, error, .. } if *i == id => {
            panic!("request failed: {error}")
        }
        _ => None,
    })
    .await
}

async fn connect(dialer: &mut Node, listener: &mut Node, addr: &str) {
    dialer.0.dial(addr).await.unwrap();
    let l = listener.0.local_peer_id().to_string();
    let d = dialer.0.local_peer_id().to_string();
    connected_to(&mut dialer.1, &l).await;
    connected_to(&mut listener.1, &d).await;
}

#[tokio::test]
async fn tcp_round_trips_both_directions() {
    let mut a = tcp_node().await;
    let mut b = tcp_node().await;
    let a_addr = first_addr(&a.0).await;
    assert!(a_addr.starts_with("/ip4/127.0.0.1/tcp/"), "{a_addr}");
    // B dials A (with /p2p/ suffix, as a user would paste it).
    let with_p2p = format!("{a_addr}/p2p/{}", a.0.local_peer_id());
    connect(&mut b, &mut a, &with_p2p).await;

    // A asks B over the connection B opened; then B asks A.
    round_trip(
        &mut a,
        &mut b,
        b"hello from A".to_vec(),
        b"hi A, B here".to_vec(),
    )
    .await;
    round_trip(&mut b, &mut a, payload(10_000, 7), payload(3, 9)).await;
    // Empty frames and frames of exactly the limit pass.
    round_trip(&mut a, &mut b, Vec::new(), payload(MAX_FRAME_BYTES, 1)).await;
    round_trip(&mut b, &mut a, payload(MAX_FRAME_BYTES, 2), Vec::new()).await;
}

#[tokio::test]
async fn quic_round_trip() {
    let quic = ["/ip4/127.0.0.1/udp/0/quic-v1"];
    let mut a = start(loopback_config(NetIdentity::Ephemeral, &quic))
        .await
        .unwrap();
    let mut b = start(loopback_config(NetIdentity::Ephemeral, &quic))
        .await
        .unwrap();
    let a_addr = first_addr(&a.0).await;
    assert!(a_addr.contains("/quic-v1"), "{a_addr}");
    connect(&mut b, &mut a, &a_addr).await;
    round_trip(&mut b, &mut a, payload(70_000, 3), b"ok".to_vec()).await;
    round_trip(&mut a, &mut b, b"and back".to_vec(), payload(5, 5)).await;
}

#[tokio::test]
async fn request_dials_a_known_address() {
    let mut a = tcp_node().await;
    let mut b = tcp_node().await;
    let b_addr = first_addr(&b.0).await;
    let b_peer = b.0.local_peer_id().to_string();
    a.0.add_address(&b_peer, &b_addr).await.unwrap();
    // No explicit dial: the request itself connects.
    round_trip(&mut a, &mut b, b"knock knock".to_vec(), b"who".to_vec()).await;
}

#[tokio::test]
async fn request_to_unreachable_peer_fails() {
    let (a, mut a_rx) = tcp_node().await;
    let (other, _other_rx) = tcp_node().await;
    let gone = other.local_peer_id().to_string();
    other.shutdown().await;
    // Known address, nobody listening any more.
    a.add_address(&gone, "/ip4/127.0.0.1/tcp/1").await.unwrap();
    let id = a.request(&gone, b"anyone?".to_vec()).await.unwrap();
    let (peer, _error) = wait_for(&mut a_rx, "RequestFailed", |ev| match ev {
        NetEvent::RequestFailed { id: i, peer, error } if *i == id => {
            Some((peer.clone(), error.clone()))
        }
        NetEvent::Response { id: i, .. } if *i == id => panic!("unexpected response"),
        _ => None,
    })
    .await;
    assert_eq!(peer, gone);
}

#[tokio::test]
async fn invalid_input_is_rejected_without_panicking() {
    let (a, _rx) = tcp_node().await;
    assert!(matches!(
        a.dial("not a multiaddr").await,
        Err(NetError::InvalidAddress(_))
    ));
    assert!(matches!(
        a.request("not-a-peer", vec![1]).await,
        Err(NetError::InvalidPeerId(_))
    ));
    assert!(matches!(
        a.disconnect("12D3KooW").await,
        Err(NetError::InvalidPeerId(_))
    ));
    let err = start(loopback_config(
        NetIdentity::Ephemeral,
        &["/ip4/127.0.0.1/tcp/0/garbage"],
    ))
    .await;
    assert!(err.is_err());
}

/// Test 2a: our own API refuses to send an oversize frame at all.
#[tokio::test]
async fn oversize_frame_is_refused_by_the_sender_api() {
    let (a, _a_rx) = tcp_node().await;
    let (b, _b_rx) = tcp_node().await;
    let err = a
        .request(b.local_peer_id(), vec![0; MAX_FRAME_BYTES + 1])
        .await;
    assert!(
        matches!(err, Err(NetError::FrameTooLarge { len, max }) if len == MAX_FRAME_BYTES + 1 && max == MAX_FRAME_BYTES),
        "{err:?}"
    );
}

/// Test 2b: a peer not running our code sends an oversize frame; the receiver refuses it
/// (sender sees a failure, receiver reports InboundFailed), and the same connection then
/// serves a normal request. A frame that only *announces* a huge length is refused too.
#[tokio::test]
async fn oversize_frame_from_the_wire_is_refused_and_the_connection_still_serves() {
    let (a, mut a_rx) = tcp_node().await;
    let a_peer = a.local_peer_id().to_string();
    let mut raw = RawPeer::spawn();
    let raw_peer = raw.peer_id.to_string();
    raw.dial(&first_addr(&a).await).await;
    connected_to(&mut a_rx, &raw_peer).await;

    // A real oversize frame: prefix + MAX_FRAME_BYTES + 1 bytes.
    let outcome = raw
        .request(&a_peer, frame(&payload(MAX_FRAME_BYTES + 1, 4)))
        .await;
    let error = wait_for(&mut a_rx, "InboundFailed", |ev| match ev {
        NetEvent::InboundFailed { peer, error } if *peer == raw_peer => Some(error.clone()),
        NetEvent::Request { .. } => panic!("oversize frame was delivered"),
        NetEvent::Disconnected { .. } => panic!("connection dropped"),
        _ => None,
    })
    .await;
    assert!(error.contains("exceeds"), "{error}");
    let sender_saw = tokio::time::timeout(common::EVENT_TIMEOUT, outcome)
        .await
        .unwrap()
        .unwrap();
    assert!(
        sender_saw.is_err(),
        "sender must see a failure, got {sender_saw:?}"
    );

    // A lying header (claims 1 GiB, sends nothing more) is refused at once.
    let outcome = raw
        .request(&a_peer, (1u32 << 30).to_be_bytes().to_vec())
        .await;
    wait_for(&mut a_rx, "InboundFailed", |ev| match ev {
        NetEvent::InboundFailed { peer, .. } if *peer == raw_peer => Some(()),
        NetEvent::Request { .. } => panic!("lying frame was delivered"),
        NetEvent::Disconnected { .. } => panic!("connection dropped"),
        _ => None,
    })
    .await;
    assert!(tokio::time::timeout(common::EVENT_TIMEOUT, outcome)
        .await
        .unwrap()
        .unwrap()
        .is_err());

    // The same connection still serves a normal request.
    let outcome = raw.request(&a_peer, frame(b"still there?")).await;
    let channel = wait_for(&mut a_rx, "Request", |ev| match ev {
        NetEvent::Request {
            peer,
            frame,
            channel,
        } if *peer == raw_peer => {
            assert_eq!(frame, b"still there?");
            Some(*channel)
        }
        NetEvent::Disconnected { .. } => panic!("connection dropped"),
        _ => None,
    })
    .await;
    a.respond(channel, b"yes".to_vec()).await.unwrap();
    let resp = tokio::time::timeout(common::EVENT_TIMEOUT, outcome)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(unframe(&resp), b"yes");
    // The raw peer's one connection was never closed.
    while let Ok(ev) = raw.events.try_recv() {
        assert!(!matches!(ev, RawEvent::Closed(_)), "connection closed");
    }
}

#[tokio::test]
async fn peer_sending_bad_frames_is_disconnected_as_misbehaving() {
    let (a, mut a_rx) = tcp_node().await;
    let a_peer = a.local_peer_id().to_string();
    let mut raw = RawPeer::spawn();
    let raw_peer = raw.peer_id.to_string();
    raw.dial(&first_addr(&a).await).await;
    connected_to(&mut a_rx, &raw_peer).await;

    let mut outcomes = Vec::new();
    for _ in 0..MAX_BAD_FRAMES_PER_PEER {
        outcomes.push(raw.request(&a_peer, u32::MAX.to_be_bytes().to_vec()).await);
    }
    let mut failures = 0;
    wait_for(&mut a_rx, "Misbehaving", |ev| match ev {
        NetEvent::InboundFailed { peer, .. } if *peer == raw_peer => {
            failures += 1;
            None
        }
        NetEvent::Misbehaving { peer } if *peer == raw_peer => Some(()),
        _ => None,
    })
    .await;
    assert_eq!(failures, MAX_BAD_FRAMES_PER_PEER);
    wait_for(&mut a_rx, "Disconnected", |ev| match ev {
        NetEvent::Disconnected { peer } if *peer == raw_peer => Some(()),
        _ => None,
    })
    .await;
    raw.wait_for("Closed", |ev| {
        matches!(ev, RawEvent::Closed(_)).then_some(())
    })
    .await;
}

#[tokio::test]
async fn standard_libp2p_peer_can_identify_and_ping() {
    let (a, mut a_rx) = tcp_node().await;
    let a_peer = a.local_peer_id().to_string();
    let mut raw = RawPeer::spawn();
    raw.dial(&first_addr(&a).await).await;
    connected_to(&mut a_rx, &raw.peer_id.to_string()).await;
    let (protocol, agent) = raw
        .wait_for("Identified", |ev| match ev {
            RawEvent::Identified {
                peer,
                protocol_version,
                agent_version,
            } if peer.to_string() == a_peer => {
                Some((protocol_version.clone(), agent_version.clone()))
            }
            _ => None,
        })
        .await;
    assert_eq!(protocol, IDENTIFY_PROTOCOL_VERSION);
    assert!(agent.starts_with("instaconnect/"), "{agent}");
    raw.wait_for("Pong", |ev| {
        matches!(ev, RawEvent::Pong(p) if p.to_string() == a_peer).then_some(())
    })
    .await;
}

#[tokio::test]
async fn flooding_peer_does_not_stop_the_node_serving_others() {
    let mut a = tcp_node().await;
    let mut b = tcp_node().await;
    let a_peer = a.0.local_peer_id().to_string();
    let a_addr = first_addr(&a.0).await;
    let mut raw = RawPeer::spawn();
    let raw_peer = raw.peer_id.to_string();
    raw.dial(&a_addr).await;
    connected_to(&mut a.1, &raw_peer).await;
    raw.wait_for("Connected", |ev| {
        matches!(ev, RawEvent::Connected(_)).then_some(())
    })
    .await;

    // 300 requests the engine never answers, all at once on one connection.
    let mut flood = Vec::new();
    for i in 0..300u32 {
        flood.push(raw.request(&a_peer, frame(&i.to_be_bytes())).await);
    }
    connect(&mut b, &mut a, &a_addr).await;

    // B is served while the flood is pending.
    let b_peer = b.0.local_peer_id().to_string();
    let id = b.0.request(&a_peer, b"me too".to_vec()).await.unwrap();
    let mut from_raw = 0usize;
    let channel = wait_for(&mut a.1, "B's request", |ev| match ev {
        NetEvent::Request { peer, .. } if *peer == raw_peer => {
            from_raw += 1;
            None
        }
        NetEvent::Request { peer, channel, .. } if *peer == b_peer => Some(*channel),
        _ => None,
    })
    .await;
    a.0.respond(channel, b"served".to_vec()).await.unwrap();
    let (_, frame) = wait_response(&mut b.1, id).await;
    assert_eq!(frame, b"served");
    assert!(
        from_raw <= MAX_CONCURRENT_REQUEST_STREAMS,
        "{from_raw} concurrent requests from one connection reached the engine"
    );
    drop(flood);
}

#[tokio::test]
async fn shutdown_disconnects_peers_and_stops_the_handle() {
    let mut a = tcp_node().await;
    let mut b = tcp_node().await;
    let a_addr = first_addr(&a.0).await;
    connect(&mut b, &mut a, &a_addr).await;
    let a_peer = a.0.local_peer_id().to_string();
    let b_peer = b.0.local_peer_id().to_string();

    a.0.shutdown().await;
    wait_for(&mut b.1, "Disconnected", |ev| match ev {
        NetEvent::Disconnected { peer } if *peer == a_peer => Some(()),
        _ => None,
    })
    .await;
    assert!(matches!(
        a.0.request(&b_peer, vec![1]).await,
        Err(NetError::Closed)
    ));
    assert!(a.0.listen_addrs().await.is_empty());
    a.0.shutdown().await; // idempotent
                          // The event stream ends.
    tokio::time::timeout(common::EVENT_TIMEOUT, async {
        while a.1.recv().await.is_some() {}
    })
    .await
    .expect("event stream ends after shutdown");
}

#[tokio::test]
async fn the_mailbox_protocol_carries_larger_frames_on_its_own_streams() {
    use instaconnect_net::MAX_MAILBOX_FRAME_BYTES;
    let mut a = tcp_node().await;
    let mut b = tcp_node().await;
    let b_addr = first_addr(&b.0).await;
    connect(&mut a, &mut b, &b_addr).await;
    let b_peer = b.0.local_peer_id().to_string();
    let a_peer = a.0.local_peer_id().to_string();

    // Above the message protocol's limit, within the mailbox protocol's.
    let big = payload(MAX_FRAME_BYTES * 2, 3);
    assert!(matches!(
        a.0.request(&b_peer, big.clone()).await,
        Err(NetError::FrameTooLarge { .. })
    ));
    let id = a.0.mailbox_request(&b_peer, big.clone()).await.unwrap();
    let (peer, frame, channel) = wait_for(&mut b.1, "MailboxRequest", |ev| match ev {
        NetEvent::MailboxRequest {
            peer,
            frame,
            channel,
        } => Some((peer.clone(), frame.clone(), *channel)),
        NetEvent::Request { .. } => panic!("a mailbox frame arrived as a message request"),
        _ => None,
    })
    .await;
    assert_eq!((peer, frame), (a_peer, big));
    let answer = payload(MAX_MAILBOX_FRAME_BYTES, 4);
    b.0.respond(channel, answer.clone()).await.unwrap();
    let (_, got) = wait_response(&mut a.1, id).await;
    assert_eq!(got, answer);
    assert!(matches!(
        a.0.mailbox_request(&b_peer, vec![0; MAX_MAILBOX_FRAME_BYTES + 1])
            .await,
        Err(NetError::FrameTooLarge { .. })
    ));
}
