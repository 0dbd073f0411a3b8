//! Engines and real sans-IO relays wired in memory: mailboxes per contact, deposits while a
//! contact cannot be reached, fetching, dedupe across paths, order, end-to-end acks, and the
//! relays emptied afterwards.

mod common;

use common::*;
use instaconnect_core::engine::{Input, Link, Output};
use instaconnect_wire::mailbox::MailboxRequest;
use instaconnect_wire::records::{DeliveryState, Direction};

/// Asha and Ravi, contacts of each other, both connected to two relays with their mailboxes
/// announced; then apart (no direct connection).
fn apart_with_two_relays() -> Mesh {
    let mut m = Mesh::new(&[ASHA, RAVI]);
    m.connect(0, 1);
    m.befriend(0, 1);
    let (r0, r1) = (m.add_relay(), m.add_relay());
    for i in 0..2 {
        for r in [r0, r1] {
            m.relay_link(i, r, true);
        }
    }
    for i in 0..2 {
        let relays: Vec<String> = m.nodes[i]
            .engine
            .mailbox_relays()
            .into_iter()
            .map(|(r, _)| r)
            .collect();
        let mut want = vec![m.relays[r0].peer.clone(), m.relays[r1].peer.clone()];
        want.sort();
        assert_eq!(
            relays, want,
            "node {i} keeps links to where its mailboxes are"
        );
        let boxes = m.nodes[i].engine.store().contact_mailboxes().unwrap();
        assert_eq!(boxes.len(), 1, "node {i} knows its contact's mailboxes");
        assert_eq!(boxes[0].boxes.len(), 2, "one on each relay");
        assert_eq!(m.nodes[i].engine.store().own_mailboxes().unwrap().len(), 2);
    }
    m.disconnect(0, 1);
    m
}

fn texts_from(m: &Mesh, i: usize, with: usize) -> Vec<String> {
    m.history(i, with)
        .into_iter()
        .filter(|h| h.direction == Direction::Incoming)
        .map(|h| h.text)
        .collect()
}

#[test]
fn texts_for_an_offline_contact_go_through_both_relays_arrive_once_in_order_and_leave_the_relays() {
    let mut m = apart_with_two_relays();
    // Ravi is offline: his relay links are down.
    m.relay_link(1, 0, false);
    m.relay_link(1, 1, false);
    let sent: Vec<String> = (0..100).map(|i| format!("message {i}")).collect();
    for t in &sent {
        send(&mut m, 0, 1, t);
    }
    assert!(
        states(&m.history(0, 1))
            .iter()
            .all(|s| *s == DeliveryState::Relayed { relays: 2 }),
        "every text accepted by both relays: {:?}",
        states(&m.history(0, 1))
    );
    assert_eq!((m.held(0), m.held(1)), (100, 100));
    assert!(texts_from(&m, 1, 0).is_empty());

    // Ravi comes back: both relays notify nothing (he was away), so he fetches on connecting.
    m.relay_link(1, 0, true);
    m.relay_link(1, 1, true);
    assert_eq!(texts_from(&m, 1, 0), sent, "all 100, once each, in order");
    assert!(
        states(&m.history(0, 1))
            .iter()
            .all(|s| *s == DeliveryState::Delivered),
        "Asha sees them delivered through her own mailboxes: {:?}",
        states(&m.history(0, 1))
    );
    assert_eq!(
        (m.held(0), m.held(1)),
        (0, 0),
        "the relays hold nothing afterwards"
    );
    assert!(m.nodes[0].engine.store().deposits().unwrap().is_empty());
    assert!(m.nodes[0].engine.store().outbox().unwrap().is_empty());
}

#[test]
fn a_contact_online_at_its_relays_is_told_at_once_and_texts_are_not_duplicated_by_a_direct_path() {
    let mut m = apart_with_two_relays();
    let a = send(&mut m, 0, 1, "through the relays");
    // Ravi is subscribed: the relay's notification made him fetch right away.
    assert_eq!(texts_from(&m, 1, 0), vec!["through the relays"]);
    assert_eq!(m.history(0, 1)[0].state, DeliveryState::Delivered);
    // Asha sends while apart and they meet before Ravi's links tell him: the direct path and
    // the relayed copy race; he keeps one.
    m.relay_link(1, 0, false);
    m.relay_link(1, 1, false);
    send(&mut m, 0, 1, "raced");
    m.connect(0, 1);
    assert_eq!(texts_from(&m, 1, 0), vec!["through the relays", "raced"]);
    m.relay_link(1, 0, true);
    m.relay_link(1, 1, true);
    assert_eq!(
        texts_from(&m, 1, 0),
        vec!["through the relays", "raced"],
        "the relayed copy of a text that came directly is dropped"
    );
    assert_eq!((m.held(0), m.held(1)), (0, 0));
    assert!(!a.is_empty());
}

#[test]
fn a_relay_that_is_down_leaves_the_text_accepted_by_the_other_one() {
    let mut m = apart_with_two_relays();
    m.relay_link(1, 0, false);
    m.relay_link(1, 1, false);
    m.relays[1].down = true;
    send(&mut m, 0, 1, "one relay is enough");
    assert_eq!(
        m.history(0, 1)[0].state,
        DeliveryState::Relayed { relays: 1 }
    );
    m.relay_link(1, 0, true);
    assert_eq!(texts_from(&m, 1, 0), vec!["one relay is enough"]);
    assert_eq!(m.history(0, 1)[0].state, DeliveryState::Delivered);
}

#[test]
fn with_every_relay_down_texts_stay_queued_and_go_when_one_is_back() {
    let mut m = apart_with_two_relays();
    m.relay_link(1, 0, false);
    m.relay_link(1, 1, false);
    m.relays[0].down = true;
    m.relays[1].down = true;
    send(&mut m, 0, 1, "later");
    assert_eq!(m.history(0, 1)[0].state, DeliveryState::Queued);
    m.relays[0].down = false;
    // The retry timer brings it to the relay that is back.
    assert!(m.advance());
    assert_eq!(
        m.history(0, 1)[0].state,
        DeliveryState::Relayed { relays: 1 }
    );
    m.relay_link(1, 0, true);
    assert_eq!(texts_from(&m, 1, 0), vec!["later"]);
}

#[test]
fn garbage_in_a_mailbox_is_dropped_and_deleted_without_harm() {
    let mut m = apart_with_two_relays();
    m.relay_link(1, 0, false);
    m.relay_link(1, 1, false);
    let mailbox = m.nodes[0].engine.store().contact_mailboxes().unwrap()[0].boxes[0].mailbox;
    // Anyone who learns a mailbox id can deposit: a stranger leaves junk.
    let junk = MailboxRequest::Deposit {
        mailbox,
        envelope: vec![0xee; 1024],
        deletion_hash: [1; 32],
    }
    .encode()
    .unwrap();
    let r = m
        .relays
        .iter()
        .position(|x| {
            m.nodes[0].engine.store().contact_mailboxes().unwrap()[0].boxes[0].relay == x.peer
        })
        .unwrap();
    m.relays[r]
        .relay
        .handle_request(m.now, "stranger", 1, &junk);
    m.relays[r].relay.commit().unwrap();
    while m.relays[r].relay.poll_output().is_some() {}
    assert_eq!(m.held(r), 1);
    m.relay_link(1, r, true);
    assert_eq!(m.held(r), 0, "fetched, found unreadable, deleted");
    assert!(texts_from(&m, 1, 0).is_empty());
    m.relay_link(1, 1 - r, true);
    send(&mut m, 0, 1, "still works");
    assert_eq!(texts_from(&m, 1, 0), vec!["still works"]);
}

#[test]
fn deletes_and_end_to_end_acks_of_fetched_texts_wait_for_the_flush() {
    let mut m = apart_with_two_relays();
    m.relay_link(1, 0, false);
    m.relay_link(1, 1, false);
    send(&mut m, 0, 1, "durable first");
    // Ravi's link comes up; he fetches. Drive him by hand to see what leaves before his flush.
    let now = m.now;
    let relay = m.relays[0].peer.clone();
    m.owner_links.insert((1, 0));
    m.nodes[1].engine.handle_input(
        now,
        Input::Relay {
            relay,
            addrs: vec!["/memory/0".into()],
            up: true,
        },
    );
    let mut fetched = false;
    for _ in 0..10 {
        let ticket = m.nodes[1].engine.prepare_commit(false).unwrap();
        let mut outs = Vec::new();
        while let Some(o) = m.nodes[1].engine.poll_output() {
            outs.push(o);
        }
        if fetched {
            // The fetch answer was taken: nothing that deletes or acknowledges may be out yet.
            assert!(
                ticket.is_some(),
                "what was stored needs a flush before its acks"
            );
            for o in &outs {
                if let Output::Mailbox { frame, .. } = o {
                    assert!(
                        !matches!(
                            MailboxRequest::decode(frame),
                            Ok(MailboxRequest::Delete { .. })
                        ),
                        "a delete left before the flush"
                    );
                }
                assert!(
                    !matches!(
                        o,
                        Output::Mailbox {
                            link: Link::Depositor,
                            ..
                        }
                    ),
                    "an ack left before the flush"
                );
            }
            m.nodes[1].engine.committed(ticket.unwrap());
            let after: Vec<Output> =
                std::iter::from_fn(|| m.nodes[1].engine.poll_output()).collect();
            assert!(
                after
                    .iter()
                    .any(|o| matches!(o, Output::Mailbox { frame, .. }
                    if matches!(MailboxRequest::decode(frame), Ok(MailboxRequest::Delete { .. })))),
                "the delete goes once flushed: {after:?}"
            );
            for o in after {
                m.route(1, o);
            }
            m.run();
            break;
        }
        if let Some(t) = ticket {
            m.nodes[1].engine.committed(t);
            while let Some(o) = m.nodes[1].engine.poll_output() {
                outs.push(o);
            }
        }
        for o in outs {
            let is_fetch = matches!(&o, Output::Mailbox { frame, .. }
                if matches!(MailboxRequest::decode(frame), Ok(MailboxRequest::Fetch { .. })));
            m.route(1, o);
            if is_fetch {
                // Deliver just the fetch and its answer.
                let (i, r, tag, frame, link) = m.relay_wire.pop_back().unwrap();
                m.relay_step(i, r, tag, frame, link);
                fetched = true;
            }
        }
    }
    assert!(fetched, "Ravi fetched his mailbox");
    assert_eq!(texts_from(&m, 1, 0), vec!["durable first"]);
    assert_eq!(m.history(0, 1)[0].state, DeliveryState::Delivered);
}

#[test]
fn deposits_in_flight_set_no_busy_timer_and_the_rest_follow_their_answers() {
    let mut m = apart_with_two_relays();
    m.relay_link(1, 0, false);
    m.relay_link(1, 1, false);
    m.hold_relay_wire = true;
    let sent: Vec<String> = (0..100).map(|i| format!("held {i}")).collect();
    for t in &sent {
        send(&mut m, 0, 1, t);
    }
    let waiting = m.relay_wire.len();
    assert!(
        waiting > 0 && waiting < 2 * sent.len(),
        "a bounded number of deposits go at once: {waiting}"
    );
    if let Some(t) = m.nodes[0].engine.poll_timeout() {
        assert!(t > m.now, "a timer at {t} while it is {}: busy loop", m.now);
    }
    m.hold_relay_wire = false;
    m.run();
    assert!(states(&m.history(0, 1))
        .iter()
        .all(|s| *s == DeliveryState::Relayed { relays: 2 }));
    m.relay_link(1, 0, true);
    m.relay_link(1, 1, true);
    assert_eq!(texts_from(&m, 1, 0), sent);
}

#[test]
fn an_offline_sender_tries_no_relay_and_deposits_as_soon_as_a_link_is_back() {
    let mut m = apart_with_two_relays();
    m.relay_link(1, 0, false);
    m.relay_link(1, 1, false);
    // Asha loses her relay links too: she is offline.
    m.relay_link(0, 0, false);
    m.relay_link(0, 1, false);
    send(&mut m, 0, 1, "written offline");
    assert!(m.relay_wire.is_empty());
    assert_eq!(m.history(0, 1)[0].state, DeliveryState::Queued);
    assert_eq!(m.nodes[0].engine.poll_timeout(), None, "no retry timer");
    // One link back: the text goes at once, with no timer.
    m.relay_link(0, 0, true);
    assert_eq!(
        m.history(0, 1)[0].state,
        DeliveryState::Relayed { relays: 2 }
    );
}

#[test]
fn what_waits_for_a_contact_goes_to_each_of_its_mailboxes_as_one_batch() {
    let mut m = apart_with_two_relays();
    m.relay_link(1, 0, false);
    m.relay_link(1, 1, false);
    // Asha is offline: every relay she knows is out of reach, so nothing goes yet.
    m.relay_link(0, 0, false);
    m.relay_link(0, 1, false);
    let sent: Vec<String> = (0..40).map(|i| format!("queued {i}")).collect();
    for t in &sent {
        send(&mut m, 0, 1, t);
    }
    assert!(states(&m.history(0, 1))
        .iter()
        .all(|s| *s == DeliveryState::Queued));
    m.hold_relay_wire = true;
    m.relay_link(0, 0, true);
    let batches: Vec<usize> = m
        .relay_wire
        .iter()
        .filter(|w| w.4 == Link::Depositor)
        .map(|w| match MailboxRequest::decode(&w.3) {
            Ok(MailboxRequest::DepositBatch { items }) => items.len(),
            other => panic!("a deposit that is not a batch: {other:?}"),
        })
        .collect();
    assert_eq!(
        batches,
        vec![40, 40],
        "one request per mailbox, all 40 in it"
    );
    m.hold_relay_wire = false;
    m.run();
    assert!(
        states(&m.history(0, 1))
            .iter()
            .all(|s| *s == DeliveryState::Relayed { relays: 2 }),
        "each text checked in its batch receipt: {:?}",
        states(&m.history(0, 1))
    );
    assert_eq!(m.nodes[0].engine.store().deposits().unwrap().len(), 80);
    m.relay_link(1, 0, true);
    m.relay_link(1, 1, true);
    assert_eq!(texts_from(&m, 1, 0), sent);
    // Ravi's acknowledgements wait for Asha in her mailbox on the other relay too.
    m.relay_link(0, 1, true);
    assert!(states(&m.history(0, 1))
        .iter()
        .all(|s| *s == DeliveryState::Delivered));
    assert_eq!((m.held(0), m.held(1)), (0, 0));
}
