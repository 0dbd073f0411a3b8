//! Engines wired together in memory with virtual time: linking, ordering, retries after loss,
//! dedupe, receipts on and off, presence, privacy filtering, blocking and bad frames.

mod common;

use common::*;
use instaconnect_core::book::Book;
use instaconnect_core::engine::{
    Command, Engine, Event, Input, Output, GAP_TIMEOUT_MS, MAX_BAD_FRAMES,
    MAX_INFLIGHT_REQUESTS_PER_PEER, MAX_PEERS,
};
use instaconnect_core::phone::Phone;
use instaconnect_wire::proto::{Request, MAX_BATCH_ITEMS};
use instaconnect_wire::records::{DeliveryState, Direction};
use std::collections::VecDeque;
#[test]
fn once_linked_the_accepters_texts_go_in_batches_not_sealed_envelopes() {
    let mut m = Mesh::new(&[ASHA, RAVI]);
    m.connect(0, 1);
    m.befriend(0, 1);
    // Ravi accepted: his session is answered by Asha's `Linked`, so his first text needs no
    // envelope.
    let now = m.now;
    let to = m.nodes[0].phone.clone();
    m.nodes[1]
        .engine
        .command(
            now,
            Command::Send {
                to,
                text: "first".into(),
            },
        )
        .unwrap();
    m.nodes[1].engine.commit().unwrap();
    let mut kinds = Vec::new();
    while let Some(o) = m.nodes[1].engine.poll_output() {
        if let Output::Request { frame, .. } = &o {
            kinds.push(match Request::decode(frame).unwrap() {
                Request::Batch(_) => "batch",
                Request::Envelope(_) => "envelope",
                _ => "other",
            });
        }
        m.route(1, o);
    }
    assert_eq!(kinds, vec!["batch"]);
    m.run();
    assert_eq!(texts(&m.history(0, 1)), vec!["first"]);
}

#[test]
fn linked_contacts_chat_both_ways_in_order_with_delivered_states() {
    let mut m = Mesh::new(&[ASHA, RAVI]);
    m.connect(0, 1);
    m.befriend(0, 1);
    for t in ["one", "two", "three"] {
        send(&mut m, 0, 1, t);
    }
    send(&mut m, 1, 0, "back");
    let at_ravi = m.history(1, 0);
    assert_eq!(texts(&at_ravi), vec!["one", "two", "three", "back"]);
    assert_eq!(at_ravi[0].direction, Direction::Incoming);
    let at_asha = m.history(0, 1);
    assert_eq!(texts(&at_asha), vec!["one", "two", "three", "back"]);
    assert_eq!(
        states(&at_asha)[..3],
        [DeliveryState::Delivered; 3],
        "each text was acked end to end"
    );
    assert!(m.nodes[0].engine.store().outbox().unwrap().is_empty());
    assert_eq!(
        m.nodes[1]
            .engine
            .store()
            .conversation(ASHA.0)
            .unwrap()
            .unwrap()
            .unread,
        3
    );
}

/// Queues texts from `from` to `to` and releases the requests they make, without delivering
/// anything.
fn queue_texts(m: &mut Mesh, from: usize, to: usize, texts: &[String]) {
    let phone = m.nodes[to].phone.clone();
    let now = m.now;
    for t in texts {
        m.nodes[from]
            .engine
            .command(
                now,
                Command::Send {
                    to: phone.clone(),
                    text: t.clone(),
                },
            )
            .unwrap();
        m.nodes[from].engine.commit().unwrap();
        while let Some(o) = m.nodes[from].engine.poll_output() {
            m.route(from, o);
        }
    }
}

#[test]
fn a_burst_goes_many_texts_to_a_request_and_arrives_complete_and_in_order() {
    let mut m = Mesh::new(&[ASHA, RAVI]);
    m.connect(0, 1);
    m.befriend(0, 1);
    let before = m.requests.get(&(0, 1)).copied().unwrap_or(0);
    let burst: Vec<String> = (0..600).map(|i| format!("text {i}")).collect();
    queue_texts(&mut m, 0, 1, &burst);
    m.run();
    let got = m.history(1, 0);
    assert_eq!(
        texts(&got),
        burst.iter().map(String::as_str).collect::<Vec<_>>()
    );
    assert!(states(&m.history(0, 1))
        .iter()
        .all(|s| *s == DeliveryState::Delivered));
    let requests = m.requests[&(0, 1)] - before;
    // The first few go one by one while the rest are queued behind them; then full batches.
    assert!(
        requests <= MAX_INFLIGHT_REQUESTS_PER_PEER + 600usize.div_ceil(MAX_BATCH_ITEMS),
        "600 texts took {requests} requests; they should share them"
    );
}

#[test]
fn requests_taken_in_reverse_order_still_decrypt_and_show_in_sent_order() {
    let mut m = Mesh::new(&[ASHA, RAVI]);
    m.connect(0, 1);
    m.befriend(0, 1);
    let sent: Vec<String> = (1..=12).map(|i| format!("t{i}")).collect();
    // One at a time: each makes its own request, several are in flight at once.
    queue_texts(&mut m, 0, 1, &sent);
    assert!(m.wire.len() >= 2, "several requests in flight");
    m.wire.make_contiguous().reverse();
    m.run();
    while m.history(1, 0).len() < sent.len() && m.advance() {}
    assert_eq!(
        texts(&m.history(1, 0)),
        sent.iter().map(String::as_str).collect::<Vec<_>>()
    );
    assert!(
        !m.nodes[1]
            .events
            .iter()
            .any(|e| matches!(e, Event::Problem { .. })),
        "nothing failed to decrypt: {:?}",
        m.nodes[1].events
    );
}

#[test]
fn texts_overtaking_a_lost_one_are_held_until_it_arrives_then_shown_in_sent_order() {
    let mut m = Mesh::new(&[ASHA, RAVI]);
    m.connect(0, 1);
    m.befriend(0, 1);
    m.faults
        .insert((0, 1), VecDeque::from([Fault::DropRequest]));
    send(&mut m, 0, 1, "one");
    send(&mut m, 0, 1, "two");
    send(&mut m, 0, 1, "three");
    // "two" and "three" are stored (and acked) but wait behind the lost "one".
    assert_eq!(
        states(&m.history(0, 1)),
        vec![
            DeliveryState::Sent,
            DeliveryState::Delivered,
            DeliveryState::Delivered
        ]
    );
    assert!(m.history(1, 0).is_empty());
    assert!(m.advance(), "the lost text is retried");
    assert_eq!(texts(&m.history(1, 0)), vec!["one", "two", "three"]);
    let shown: Vec<&str> = m.nodes[1]
        .events
        .iter()
        .filter_map(|e| match e {
            Event::MessageReceived { text, .. } => Some(text.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(shown, vec!["one", "two", "three"], "announced in order too");
}

#[test]
fn a_gap_that_never_fills_is_given_up_on_and_the_late_text_still_arrives_once() {
    let mut m = Mesh::new(&[ASHA, RAVI]);
    m.connect(0, 1);
    m.befriend(0, 1);
    // "one" and every retry of it is lost; "two" gets through.
    let mut faults = VecDeque::from([Fault::DropRequest]);
    m.faults.insert((0, 1), faults.clone());
    send(&mut m, 0, 1, "one");
    send(&mut m, 0, 1, "two");
    let start = m.now;
    for round in 0.. {
        if !m.history(1, 0).is_empty() {
            break;
        }
        faults.push_back(Fault::DropRequest);
        m.faults.insert((0, 1), faults.clone());
        assert!(m.advance());
        assert!(round < 100, "the gap is given up on");
    }
    assert!(m.now - start >= GAP_TIMEOUT_MS, "held for the gap timeout");
    assert_eq!(texts(&m.history(1, 0)), vec!["two"]);
    m.faults.clear();
    for round in 0.. {
        if m.history(0, 1)[0].state == DeliveryState::Delivered {
            break;
        }
        assert!(m.advance());
        assert!(round < 10, "the late text is retried");
    }
    assert_eq!(texts(&m.history(1, 0)), vec!["two", "one"]);
}

#[test]
fn restarted_engines_resume_their_outbox_and_held_texts_from_the_store() {
    let mut m = Mesh::new(&[ASHA, RAVI]);
    m.connect(0, 1);
    m.befriend(0, 1);
    m.faults
        .insert((0, 1), VecDeque::from([Fault::DropRequest]));
    send(&mut m, 0, 1, "one");
    send(&mut m, 0, 1, "two");
    assert!(m.history(1, 0).is_empty());
    m.disconnect(0, 1);
    send(&mut m, 0, 1, "three");
    for (i, n) in m.nodes.iter_mut().enumerate() {
        let store = n.engine.store().clone();
        n.engine = Engine::new(store, [i as u8 + 9; 32]).unwrap();
    }
    m.connect(0, 1);
    assert_eq!(texts(&m.history(1, 0)), vec!["one", "two", "three"]);
    assert_eq!(states(&m.history(0, 1)), vec![DeliveryState::Delivered; 3]);
    assert!(m.nodes[1].engine.store().held().unwrap().is_empty());
}

#[test]
fn a_text_waiting_for_the_contact_to_accept_sets_no_busy_timer_and_goes_once_linked() {
    let mut m = Mesh::new(&[ASHA, RAVI]);
    m.connect(0, 1);
    m.book(0)
        .add_contact(&Phone::parse(RAVI.0, None).unwrap(), Some("Ravi"), 2)
        .unwrap();
    let ravi = m.id(1);
    m.command(
        0,
        Command::RequestContact {
            phone: RAVI.0.into(),
            peer: ravi,
        },
    );
    send(&mut m, 0, 1, "waiting for you");
    assert_eq!(states(&m.history(0, 1)), vec![DeliveryState::Queued]);
    // A timer due now that does nothing would spin the node's loop.
    let now = m.now;
    assert!(m.nodes[0].engine.poll_timeout().is_none_or(|t| t > now));
    let asha = m.id(0);
    m.command(1, Command::AcceptContact { peer: asha });
    assert_eq!(texts(&m.history(1, 0)), vec!["waiting for you"]);
    assert_eq!(states(&m.history(0, 1)), vec![DeliveryState::Delivered]);
}

#[test]
fn messages_queued_while_apart_arrive_after_reconnecting() {
    let mut m = Mesh::new(&[ASHA, RAVI]);
    m.connect(0, 1);
    m.befriend(0, 1);
    m.disconnect(0, 1);
    send(&mut m, 0, 1, "are you there?");
    send(&mut m, 0, 1, "hello?");
    assert_eq!(states(&m.history(0, 1)), vec![DeliveryState::Queued; 2]);
    assert!(m.history(1, 0).is_empty());
    m.connect(0, 1);
    assert_eq!(texts(&m.history(1, 0)), vec!["are you there?", "hello?"]);
    assert_eq!(states(&m.history(0, 1)), vec![DeliveryState::Delivered; 2]);
}

#[test]
fn lost_requests_are_retried_with_backoff_and_lost_acks_never_duplicate() {
    let mut m = Mesh::new(&[ASHA, RAVI]);
    m.connect(0, 1);
    m.befriend(0, 1);
    m.faults.insert(
        (0, 1),
        VecDeque::from([Fault::DropRequest, Fault::DropRequest, Fault::DropResponse]),
    );
    send(&mut m, 0, 1, "persistent");
    // First attempt dropped: still in flight from the sender's point of view.
    assert_eq!(states(&m.history(0, 1)), vec![DeliveryState::Sent]);
    let start = m.now;
    let mut rounds = 0;
    while m.history(0, 1)[0].state != DeliveryState::Delivered {
        assert!(m.advance(), "a retry is always scheduled");
        rounds += 1;
        assert!(rounds < 10);
    }
    assert!(m.now - start >= 1_000, "retries back off");
    // Received exactly once although the third attempt's ack was lost after it was stored.
    assert_eq!(texts(&m.history(1, 0)), vec!["persistent"]);
}

#[test]
fn read_receipts_follow_the_readers_privacy() {
    let mut m = Mesh::new(&[ASHA, RAVI, MEERA]);
    m.connect(0, 1);
    m.connect(0, 2);
    m.befriend(0, 1);
    m.befriend(0, 2);
    m.book(2).set_privacy("receipts", "nobody").unwrap();
    send(&mut m, 0, 1, "to ravi");
    send(&mut m, 0, 2, "to meera");
    m.command(
        1,
        Command::MarkRead {
            contact: ASHA.0.into(),
        },
    );
    m.command(
        2,
        Command::MarkRead {
            contact: ASHA.0.into(),
        },
    );
    assert_eq!(states(&m.history(0, 1)), vec![DeliveryState::Read]);
    assert_eq!(
        states(&m.history(0, 2)),
        vec![DeliveryState::Delivered],
        "meera turned receipts off"
    );
    // Both readers see their own copy as read.
    assert_eq!(states(&m.history(1, 0)), vec![DeliveryState::Read]);
    assert_eq!(states(&m.history(2, 0)), vec![DeliveryState::Read]);
}

#[test]
fn presence_is_shown_only_as_privacy_allows() {
    let mut m = Mesh::new(&[ASHA, RAVI, MEERA]);
    m.connect(0, 1);
    m.connect(0, 2);
    m.befriend(0, 1);
    m.befriend(0, 2);
    m.book(2).set_privacy("online", "nobody").unwrap();
    m.disconnect(0, 1);
    m.disconnect(0, 2);
    m.nodes[0].events.clear();
    m.connect(0, 1);
    m.connect(0, 2);
    let (ravi, meera) = (m.id(1), m.id(2));
    let online: Vec<&String> = m.nodes[0]
        .events
        .iter()
        .filter_map(|e| match e {
            Event::Presence { peer, online: true } => Some(peer),
            _ => None,
        })
        .collect();
    assert_eq!(online, vec![&ravi], "meera hides her online status");
    let peers = m.nodes[0].engine.peers();
    assert!(peers.iter().any(|p| p.peer == ravi && p.online));
    assert!(peers
        .iter()
        .any(|p| p.peer == meera && !p.online && p.connected));
    // "Last seen" comes only from presence: Ravi's is kept after he leaves, Meera has none.
    let at = m.now;
    m.disconnect(0, 1);
    m.disconnect(0, 2);
    let peers = m.nodes[0].engine.peers();
    assert!(peers
        .iter()
        .any(|p| p.peer == ravi && !p.online && p.last_online_ms == Some(at)));
    assert!(peers
        .iter()
        .any(|p| p.peer == meera && p.last_online_ms.is_none()));
}

#[test]
fn profile_replies_are_filtered_by_privacy_and_empty_for_blocked_peers() {
    let mut m = Mesh::new(&[ASHA, RAVI, MEERA]);
    m.connect(0, 1);
    m.connect(0, 2);
    m.connect(1, 2);
    m.befriend(0, 1);
    m.book(0)
        .set_profile(None, Some("at the library"), None, 3)
        .unwrap();
    m.book(0).set_privacy("status", "contacts").unwrap();
    let asha = m.id(0);
    // Ravi is a contact: he sees the phone (contacts) and status (contacts).
    m.command(1, Command::RequestProfile { peer: asha.clone() });
    m.command(2, Command::RequestProfile { peer: asha.clone() });
    let profile_seen = |n: &Node| {
        n.events
            .iter()
            .rev()
            .find_map(|e| match e {
                Event::Profile { peer, profile } if *peer == asha => Some(profile.clone()),
                _ => None,
            })
            .expect("a profile reply")
    };
    let by_ravi = profile_seen(&m.nodes[1]);
    assert_eq!(by_ravi.phone.as_deref(), Some(ASHA.0));
    assert_eq!(by_ravi.name.as_deref(), Some("Asha"));
    assert_eq!(by_ravi.status.as_deref(), Some("at the library"));
    // Meera is not a contact: name only (everyone), no phone, no status.
    let by_meera = profile_seen(&m.nodes[2]);
    assert_eq!(by_meera.phone, None);
    assert_eq!(by_meera.name.as_deref(), Some("Asha"));
    assert_eq!(by_meera.status, None);
    // Blocked: nothing at all.
    m.book(0).block(RAVI.0, None, 4).unwrap();
    m.command(1, Command::RequestProfile { peer: asha.clone() });
    assert_eq!(profile_seen(&m.nodes[1]), Default::default());
}

#[test]
fn a_blocked_senders_messages_are_dropped_and_never_delivered() {
    let mut m = Mesh::new(&[ASHA, RAVI]);
    m.connect(0, 1);
    m.befriend(0, 1);
    m.book(1).block(ASHA.0, None, 5).unwrap();
    send(&mut m, 0, 1, "let me in");
    assert!(m.history(1, 0).is_empty(), "nothing stored at the blocker");
    assert_eq!(states(&m.history(0, 1)), vec![DeliveryState::Sent]);
    assert!(m.nodes[1]
        .events
        .iter()
        .all(|e| !matches!(e, Event::MessageReceived { .. })));
    // Unblocking lets the retry through.
    m.book(1).unblock(ASHA.0, None).unwrap();
    while m.history(0, 1)[0].state != DeliveryState::Delivered {
        assert!(m.advance());
    }
    assert_eq!(texts(&m.history(1, 0)), vec!["let me in"]);
}

#[test]
fn contact_requests_from_blocked_numbers_are_not_shown() {
    let mut m = Mesh::new(&[ASHA, RAVI]);
    m.connect(0, 1);
    m.book(1).block(ASHA.0, None, 5).unwrap();
    m.book(0)
        .add_contact(&Phone::parse(RAVI.0, None).unwrap(), None, 2)
        .unwrap();
    let ravi = m.id(1);
    m.command(
        0,
        Command::RequestContact {
            phone: RAVI.0.into(),
            peer: ravi,
        },
    );
    assert!(m.nodes[1]
        .events
        .iter()
        .all(|e| !matches!(e, Event::ContactRequest { .. })));
    assert!(m.nodes[1]
        .engine
        .store()
        .contact_requests()
        .unwrap()
        .is_empty());
}

#[test]
fn a_peer_sending_garbage_is_disconnected_after_a_bounded_number_of_frames() {
    let mut m = Mesh::new(&[ASHA, RAVI]);
    m.connect(0, 1);
    let ravi = m.id(1);
    let now = m.now;
    for c in 0..MAX_BAD_FRAMES as u64 {
        m.nodes[0].engine.handle_input(
            now,
            Input::Request {
                peer: ravi.clone(),
                frame: vec![1, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
                channel: 10_000 + c,
            },
        );
    }
    m.nodes[0].engine.commit().unwrap();
    let mut outs = Vec::new();
    while let Some(o) = m.nodes[0].engine.poll_output() {
        outs.push(o);
    }
    let malformed = instaconnect_wire::proto::Response::Malformed
        .encode()
        .unwrap();
    let responses = outs
        .iter()
        .filter(|o| matches!(o, Output::Respond { frame, .. } if *frame == malformed))
        .count();
    assert_eq!(
        responses, MAX_BAD_FRAMES as usize,
        "every bad frame gets an error"
    );
    assert!(outs.contains(&Output::Disconnect { peer: ravi.clone() }));
    assert!(outs.contains(&Output::Event(Event::Misbehaving { peer: ravi })));
}

#[test]
fn another_protocol_version_is_an_event_not_a_crash() {
    let mut m = Mesh::new(&[ASHA, RAVI]);
    let ravi = m.id(1);
    let mut frame = instaconnect_wire::encode(&9u16).unwrap();
    frame.extend_from_slice(b"future stuff");
    m.nodes[0].engine.handle_input(
        m.now,
        Input::Request {
            peer: ravi.clone(),
            frame,
            channel: 1,
        },
    );
    m.nodes[0].engine.commit().unwrap();
    let mut outs = Vec::new();
    while let Some(o) = m.nodes[0].engine.poll_output() {
        outs.push(o);
    }
    assert!(outs.contains(&Output::Event(Event::UnsupportedVersion {
        peer: ravi,
        version: 9
    })));
    let expected = instaconnect_wire::proto::Response::UnsupportedVersion { supported: 1 }
        .encode()
        .unwrap();
    assert!(outs
        .iter()
        .any(|o| matches!(o, Output::Respond { frame, .. } if *frame == expected)));
}

/// Asha and Ravi linked, with a text from Asha to Ravi queued and nothing committed since.
fn linked_with_unsent_text(text: &str) -> Mesh {
    let mut m = Mesh::new(&[ASHA, RAVI]);
    m.connect(0, 1);
    m.befriend(0, 1);
    let now = m.now;
    m.nodes[0]
        .engine
        .command(
            now,
            Command::Send {
                to: RAVI.0.into(),
                text: text.into(),
            },
        )
        .unwrap();
    m
}

#[test]
fn nothing_is_released_before_the_store_is_flushed() {
    // An engine whose outputs were not committed has released nothing.
    let mut m = linked_with_unsent_text("x");
    assert!(m.nodes[0].engine.poll_output().is_none());
    m.nodes[0].engine.commit().unwrap();
    assert!(matches!(
        m.nodes[0].engine.poll_output(),
        Some(Output::Request { .. })
    ));
}

#[test]
fn sending_checks_its_input() {
    let mut m = Mesh::new(&[ASHA, RAVI]);
    let now = m.now;
    let e = &mut m.nodes[0].engine;
    let err = |r: Result<Option<String>, instaconnect_core::engine::EngineError>| {
        r.unwrap_err().to_string()
    };
    assert!(err(e.command(
        now,
        Command::Send {
            to: RAVI.0.into(),
            text: "hi".into()
        }
    ))
    .contains("is not a contact"));
    Book::new(e.store().as_ref())
        .add_contact(&Phone::parse(RAVI.0, None).unwrap(), None, 2)
        .unwrap();
    assert!(err(e.command(
        now,
        Command::Send {
            to: RAVI.0.into(),
            text: "hi".into()
        }
    ))
    .contains("not linked to a device"));
    assert!(err(e.command(
        now,
        Command::Send {
            to: RAVI.0.into(),
            text: "  ".into()
        }
    ))
    .contains("empty"));
    let long = "x".repeat(instaconnect_wire::proto::MAX_TEXT_BYTES + 1);
    assert!(err(e.command(
        now,
        Command::Send {
            to: RAVI.0.into(),
            text: long
        }
    ))
    .contains("too long"));
}

#[test]
fn a_request_and_the_text_shown_go_before_the_flush_but_the_ack_waits_for_it() {
    let mut m = linked_with_unsent_text("before the flush");
    let now = m.now;
    let sender_ticket = m.nodes[0].engine.prepare_commit(true).unwrap();
    assert!(
        sender_ticket.is_some(),
        "the queued text is a write to flush"
    );
    let Some(Output::Request { frame, .. }) = m.nodes[0].engine.poll_output() else {
        panic!("the request is released before the sender's flush");
    };
    let asha = m.id(0);
    m.nodes[1].engine.handle_input(
        now,
        Input::Request {
            peer: asha,
            frame,
            channel: 77,
        },
    );
    let ticket = m.nodes[1].engine.prepare_commit(true).unwrap().unwrap();
    let mut shown = false;
    while let Some(o) = m.nodes[1].engine.poll_output() {
        match o {
            Output::Respond { .. } => panic!("an ack before the receiver's flush"),
            Output::Event(Event::MessageReceived { text, .. }) => {
                shown = text == "before the flush"
            }
            _ => {}
        }
    }
    assert!(shown, "the text is shown as soon as it is stored");
    assert_eq!(texts(&m.history(1, 0)), vec!["before the flush"]);
    m.nodes[1].engine.store().flush().unwrap();
    m.nodes[1].engine.committed(ticket);
    let mut acked = false;
    while let Some(o) = m.nodes[1].engine.poll_output() {
        acked |= matches!(o, Output::Respond { channel: 77, .. });
    }
    assert!(acked, "the ack is released once committed");
}

#[test]
fn a_crowd_of_strangers_never_grows_the_peer_table_past_its_bound_and_keeps_who_is_connected() {
    let mut e = Engine::new(account(ASHA.0, ASHA.1), [7; 32]).unwrap();
    e.handle_input(
        1,
        Input::Connected {
            peer: "friend".into(),
        },
    );
    for i in 0..(MAX_PEERS as u64 + 500) {
        e.handle_input(
            2 + i,
            Input::Discovered {
                peer: format!("stranger-{i:05}"),
                addrs: Vec::new(),
            },
        );
        e.commit().unwrap();
        while e.poll_output().is_some() {}
    }
    let peers = e.peers();
    assert!(peers.len() <= MAX_PEERS, "{} peers kept", peers.len());
    assert!(
        peers.iter().any(|p| p.peer == "friend"),
        "the connected one stays"
    );
    let newest = format!("stranger-{:05}", MAX_PEERS as u64 + 499);
    assert_eq!(peers[0].peer, newest, "the most recently seen first");
    assert!(
        !peers.iter().any(|p| p.peer == "stranger-00000"),
        "the longest unseen went first"
    );
}

#[test]
fn two_people_who_add_and_accept_each_other_at_once_still_read_each_other() {
    let mut m = Mesh::new(&[ASHA, RAVI]);
    m.connect(0, 1);
    for (a, b) in [(0, 1), (1, 0)] {
        let phone = m.nodes[b].phone.clone();
        m.book(a)
            .add_contact(&Phone::parse(&phone, None).unwrap(), None, 2)
            .unwrap();
        let peer = m.id(b);
        m.command(a, Command::RequestContact { phone, peer });
    }
    // Both accept before either acceptance arrives: each starts a session of its own.
    let now = m.now;
    for (a, b) in [(0, 1), (1, 0)] {
        let peer = m.id(b);
        m.nodes[a]
            .engine
            .command(now, Command::AcceptContact { peer })
            .unwrap();
    }
    m.run();
    send(&mut m, 0, 1, "hello from Asha");
    send(&mut m, 1, 0, "hello from Ravi");
    send(&mut m, 0, 1, "and again");
    assert_eq!(
        texts(&m.history(1, 0))
            .into_iter()
            .filter(|t| t.starts_with("hello from Asha") || *t == "and again")
            .collect::<Vec<_>>(),
        vec!["hello from Asha", "and again"]
    );
    assert!(texts(&m.history(0, 1)).contains(&"hello from Ravi"));
    assert!(states(&m.history(0, 1))
        .iter()
        .zip(m.history(0, 1))
        .filter(|(_, h)| h.direction == Direction::Outgoing)
        .all(|(s, _)| *s == DeliveryState::Delivered));
}
