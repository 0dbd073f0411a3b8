//! Attachments between engines wired in memory: a file arrives byte-identical and checked,
//! a transfer that stops resumes from the chunks it is missing (also after a restart), damaged
//! chunks are refused, and chunks are served only to the recipient. Through relays: a photo
//! sent while its recipient is offline arrives through its mailboxes, a chunk damaged at a
//! relay is left there again, a full mailbox only delays the rest, and size limits hold.

mod common;

use std::collections::VecDeque;
use std::sync::Arc;

use common::*;
use instaconnect_core::engine::{
    seal_attachment, AttachmentLimits, AttachmentMeta, Command, Engine, EngineError, Event, Input,
    Output, MAX_BAD_CHUNKS, MAX_FAILED_PARTS,
};
use instaconnect_core::relay::RelayConfig;
use instaconnect_store::relay::RelayOp;
use instaconnect_store::Blobs;
use instaconnect_wire::proto::{AttachmentKind, Request, Response};
use instaconnect_wire::records::DeliveryState;
use rand::SeedableRng;

/// A file that is not all one byte, so misplaced chunks would show.
fn file(len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).rotate_left(7) as u8)
        .collect()
}

/// Node `from` puts `bytes` in its blob store under a new id and seals it: the command that
/// sends it to `to`.
fn prepare_file(m: &mut Mesh, from: usize, to: usize, bytes: &[u8], caption: &str) -> Command {
    let id = [0xa0 + m.nodes[from].events.len() as u8; 16];
    m.nodes[from].blobs.write_at(&id, 0, bytes).unwrap();
    let meta = AttachmentMeta {
        kind: AttachmentKind::Photo,
        name: "beach.png".into(),
        mime: "image/png".into(),
        width: Some(640),
        height: Some(480),
        duration_ms: None,
        thumbnail: Some(vec![1, 2, 3]),
        caption: Some(caption.into()),
    };
    let mut rng = rand_chacha::ChaCha20Rng::from_seed([from as u8; 32]);
    let manifest = seal_attachment(m.nodes[from].blobs.as_ref(), &id, meta, &mut rng).unwrap();
    let to_phone = m.nodes[to].phone.clone();
    Command::SendAttachment {
        to: to_phone,
        id,
        manifest: Box::new(manifest),
    }
}

/// Node `from` puts `bytes` in its blob store under a new id, seals it and sends it to `to`.
fn send_file(m: &mut Mesh, from: usize, to: usize, bytes: &[u8], caption: &str) -> [u8; 16] {
    let cmd = prepare_file(m, from, to, bytes, caption);
    let Command::SendAttachment { id, .. } = cmd else {
        unreachable!()
    };
    m.command(from, cmd);
    id
}

fn received(m: &Mesh, i: usize, id: &[u8; 16], len: usize) -> Vec<u8> {
    m.nodes[i].blobs.read_at(id, 0, len).unwrap()
}

fn linked_pair() -> Mesh {
    let mut m = Mesh::new(&[ASHA, RAVI, MEERA]);
    m.connect(0, 1);
    m.befriend(0, 1);
    m
}

#[test]
fn a_photo_arrives_byte_identical_with_its_caption_and_details() {
    let mut m = linked_pair();
    send(&mut m, 0, 1, "before");
    let photo = file(300_000);
    let id = send_file(&mut m, 0, 1, &photo, "the beach");
    send(&mut m, 0, 1, "after");

    assert_eq!(received(&m, 1, &id, photo.len()), photo);
    let record = m.nodes[1].engine.store().attachment(&id).unwrap().unwrap();
    assert!(record.complete);
    assert_eq!(record.stored(), 7, "300,000 bytes are 7 chunks of 48 KiB");
    assert_eq!(
        (record.manifest.name.as_str(), record.manifest.width),
        ("beach.png", Some(640))
    );
    assert_eq!(
        texts(&m.history(1, 0)),
        vec!["before", "the beach", "after"],
        "in the order sent, the photo shown with its caption"
    );
    assert_eq!(states(&m.history(0, 1)), vec![DeliveryState::Delivered; 3]);
    let events = &m.nodes[1].events;
    assert!(events.iter().any(|e| matches!(e,
        Event::AttachmentReceived { name, size: 300_000, .. } if name == "beach.png")));
    let progress = events
        .iter()
        .filter(|e| matches!(e, Event::AttachmentProgress { total: 7, .. }))
        .count();
    assert_eq!(progress, 6, "a progress event per chunk before the last");
    // Ravi told Asha he has it all: nothing is kept for relays.
    assert!(delivered(&m, 0, &id));
    assert!(m.nodes[0].engine.store().uploads().unwrap().is_empty());
    let sent = m.nodes[0]
        .events
        .iter()
        .filter(|e| {
            matches!(
                e,
                Event::AttachmentSendProgress {
                    total: 7,
                    relayed: false,
                    ..
                }
            )
        })
        .count();
    assert_eq!(sent, 7, "the sender sees each chunk go");
}

#[test]
fn an_interrupted_transfer_resumes_where_it_stopped_even_after_a_restart() {
    let mut m = linked_pair();
    // After four chunks the receiver's requests keep failing: a failure is asked again, but
    // after MAX_FAILED_PARTS in a row the transfer waits for the next connection.
    let mut faults = VecDeque::from([Fault::Pass; 4]);
    faults.extend([Fault::DropRequest; 2 * MAX_FAILED_PARTS as usize]);
    m.faults.insert((1, 0), faults);
    let photo = file(1_000_000);
    let id = send_file(&mut m, 0, 1, &photo, "big");
    let record = m.nodes[1].engine.store().attachment(&id).unwrap().unwrap();
    let kept = record.stored();
    assert!(!record.complete);
    assert_eq!(kept, 4, "stopped after four chunks");
    m.faults.clear();

    // The receiver restarts (same database and files) and its sender comes back.
    m.disconnect(0, 1);
    let store = m.nodes[1].engine.store().clone();
    let blobs: Arc<dyn Blobs> = m.nodes[1].blobs.clone();
    m.nodes[1].engine = Engine::new(store, [42; 32]).unwrap().with_blobs(blobs);
    let before = m.requests.get(&(1, 0)).copied().unwrap_or(0);
    m.connect(0, 1);
    m.run();
    assert_eq!(received(&m, 1, &id, photo.len()), photo);
    assert!(
        m.nodes[1]
            .engine
            .store()
            .attachment(&id)
            .unwrap()
            .unwrap()
            .complete
    );
    let asked = m.requests[&(1, 0)] - before;
    assert!(
        asked < 21,
        "only the missing chunks were fetched again: {asked} requests for {} missing",
        21 - kept
    );
}

#[test]
fn a_file_changed_after_sending_is_refused_chunk_by_chunk_and_fetched_once_restored() {
    let mut m = linked_pair();
    let photo = file(500_000);
    // The sender's copy is damaged before the receiver fetches it.
    m.disconnect(0, 1);
    let id = send_file(&mut m, 0, 1, &photo, "changed");
    let mut damaged = photo.clone();
    for b in damaged.iter_mut().step_by(1000) {
        *b ^= 0xff;
    }
    m.nodes[0].blobs.write_at(&id, 0, &damaged).unwrap();
    m.connect(0, 1);
    m.run();
    let record = m.nodes[1].engine.store().attachment(&id).unwrap().unwrap();
    assert_eq!(record.stored(), 0, "no damaged chunk was stored");
    assert!(
        m.nodes[1].events.iter().any(|e| matches!(e,
            Event::Problem { message } if message.contains("damaged"))),
        "the user is told after {MAX_BAD_CHUNKS} bad chunks"
    );

    m.nodes[0].blobs.write_at(&id, 0, &photo).unwrap();
    m.disconnect(0, 1);
    m.connect(0, 1);
    m.run();
    assert_eq!(received(&m, 1, &id, photo.len()), photo);
}

#[test]
fn chunks_are_served_only_to_the_device_they_were_sent_to() {
    let mut m = linked_pair();
    m.connect(0, 2);
    m.befriend(0, 2);
    let id = send_file(&mut m, 0, 1, &file(10_000), "for Ravi");
    let frame = Request::Chunk {
        id,
        index: 0,
        offset: 0,
        len: 10_016,
    }
    .encode()
    .unwrap();
    let now = m.now;
    let ask = |m: &mut Mesh, who: usize, channel: u64| {
        let peer = m.id(who);
        m.nodes[0].engine.handle_input(
            now,
            Input::Request {
                peer,
                frame: frame.clone(),
                channel,
            },
        );
        m.nodes[0].engine.commit().unwrap();
        let mut answer = None;
        while let Some(o) = m.nodes[0].engine.poll_output() {
            if let Output::Respond { channel: c, frame } = o {
                if c == channel {
                    answer = Some(Response::decode(&frame).unwrap());
                }
            }
        }
        answer.expect("an answer")
    };
    assert_eq!(
        ask(&mut m, 2, 901),
        Response::NotNow,
        "Meera is not the recipient"
    );
    assert!(matches!(ask(&mut m, 1, 902), Response::Chunk(c) if c.len() == 10_016));
}

// ----- through relays --------------------------------------------------------------------------

/// Asha and Ravi, contacts of each other, both linked to relays with these limits (mailboxes
/// opened and announced); then apart (no direct connection).
fn apart_with_relays(configs: &[RelayConfig]) -> Mesh {
    let mut m = Mesh::new(&[ASHA, RAVI]);
    m.connect(0, 1);
    m.befriend(0, 1);
    let relays: Vec<usize> = configs
        .iter()
        .map(|c| m.add_relay_with(c.clone()))
        .collect();
    for i in 0..2 {
        for &r in &relays {
            m.relay_link(i, r, true);
        }
    }
    for i in 0..2 {
        let boxes = m.nodes[i].engine.store().contact_mailboxes().unwrap();
        assert_eq!(boxes[0].boxes.len(), relays.len().min(2), "node {i}");
    }
    m.disconnect(0, 1);
    m
}

/// Node `i`'s links to every relay go up or down.
fn relays_reachable(m: &mut Mesh, i: usize, up: bool) {
    for r in 0..m.relays.len() {
        m.relay_link(i, r, up);
    }
}

fn held_in_all(m: &Mesh) -> u64 {
    (0..m.relays.len()).map(|r| m.held(r)).sum()
}

fn complete(m: &Mesh, i: usize, id: &[u8; 16]) -> bool {
    m.nodes[i]
        .engine
        .store()
        .attachment(id)
        .unwrap()
        .is_some_and(|a| a.complete)
}

fn delivered(m: &Mesh, i: usize, id: &[u8; 16]) -> bool {
    let hex: String = id.iter().map(|b| format!("{b:02x}")).collect();
    m.nodes[i]
        .events
        .iter()
        .any(|e| matches!(e, Event::AttachmentDelivered { id, .. } if *id == hex))
}

fn problems(m: &Mesh, i: usize, needle: &str) -> usize {
    m.nodes[i]
        .events
        .iter()
        .filter(|e| matches!(e, Event::Problem { message } if message.contains(needle)))
        .count()
}

#[test]
fn a_photo_sent_while_the_recipient_is_offline_arrives_through_relays_byte_identical() {
    let mut m = apart_with_relays(&[RelayConfig::default(), RelayConfig::default()]);
    relays_reachable(&mut m, 1, false);
    let asked = m.requests.get(&(1, 0)).copied();
    let photo = file(300_000);
    let id = send_file(&mut m, 0, 1, &photo, "from the beach");

    // The manifest in both of Ravi's mailboxes, each of the 7 chunks in one of them.
    assert_eq!(held_in_all(&m), 2 + 7);
    let uploads = m.nodes[0].engine.store().uploads().unwrap();
    assert_eq!(uploads.len(), 1);
    assert_eq!(uploads[0].count(), 7, "every chunk receipted by a relay");
    let last_progress = m.nodes[0].events.iter().rev().find_map(|e| match e {
        Event::AttachmentSendProgress {
            sent,
            total,
            relayed: true,
            ..
        } => Some((*sent, *total)),
        _ => None,
    });
    assert_eq!(last_progress, Some((7, 7)));
    assert!(m.history(1, 0).is_empty(), "Ravi is offline");

    // Ravi comes back online (his relays, not Asha: she is never reachable directly).
    relays_reachable(&mut m, 1, true);
    assert_eq!(received(&m, 1, &id, photo.len()), photo);
    assert!(complete(&m, 1, &id));
    assert_eq!(texts(&m.history(1, 0)), vec!["from the beach"]);
    assert!(m.nodes[1].events.iter().any(|e| matches!(e,
        Event::AttachmentReceived { name, size: 300_000, .. } if name == "beach.png")));
    assert_eq!(
        m.requests.get(&(1, 0)).copied(),
        asked,
        "nothing was asked of Asha's device"
    );
    // Ravi told Asha (through her mailboxes) he has it all: her upload is over, and the
    // relays hold nothing any more.
    assert!(delivered(&m, 0, &id));
    assert!(m.nodes[0].engine.store().uploads().unwrap().is_empty());
    assert_eq!(held_in_all(&m), 0);
    assert!(m.nodes[1].engine.store().outbox().unwrap().is_empty());
}

#[test]
fn a_chunk_damaged_in_a_mailbox_is_refused_and_left_there_again_by_the_sender() {
    let mut m = apart_with_relays(&[RelayConfig::default(), RelayConfig::default()]);
    relays_reachable(&mut m, 1, false);
    let photo = file(300_000);
    let id = send_file(&mut m, 0, 1, &photo, "damaged on the way");

    // The relay's disk flips a byte of the last envelope in Ravi's mailbox there (a chunk:
    // the manifest went first).
    let relay_peer = m.relays[0].peer.clone();
    let mailbox = m.nodes[1]
        .engine
        .store()
        .own_mailboxes()
        .unwrap()
        .into_iter()
        .find(|b| b.relay == relay_peer)
        .unwrap()
        .mailbox;
    let store = m.relays[0].relay.store().clone();
    let held = store.envelopes(&mailbox, 0, 100).unwrap();
    assert!(held.len() >= 2, "the manifest and chunks");
    let (seq, mut env) = held.last().cloned().unwrap();
    let mid = env.envelope.len() / 2;
    env.envelope[mid] ^= 0x40;
    store
        .apply(vec![RelayOp::PutEnvelope {
            mailbox,
            seq,
            envelope: env,
        }])
        .unwrap();

    relays_reachable(&mut m, 1, true);
    assert!(
        problems(&m, 1, "could not be opened") >= 1,
        "{:?}",
        m.nodes[1].events
    );
    // Ravi told Asha what he lacks; she left it again; he took it.
    assert_eq!(received(&m, 1, &id, photo.len()), photo);
    assert!(complete(&m, 1, &id));
    assert!(delivered(&m, 0, &id));
    assert!(m.nodes[0].engine.store().uploads().unwrap().is_empty());
    assert_eq!(held_in_all(&m), 0);
}

#[test]
fn size_limits_refuse_at_send_and_at_the_receiver() {
    let mut m = linked_pair();
    let small = AttachmentLimits {
        direct_max_bytes: 100_000,
        relay_max_bytes: 100_000,
    };
    m.nodes[0].engine.set_attachment_limits(small).unwrap();
    let cmd = prepare_file(&mut m, 0, 1, &file(300_000), "too big");
    let now = m.now;
    let err = m.nodes[0].engine.command(now, cmd).unwrap_err();
    assert!(
        matches!(
            err,
            EngineError::AttachmentTooLarge {
                size: 300_000,
                limit: 100_000
            }
        ),
        "{err}"
    );
    assert!(m.history(0, 1).is_empty(), "nothing was queued");

    // Ravi takes at most 100,000 bytes: the manifest is kept and shown, its bytes not fetched.
    m.nodes[0]
        .engine
        .set_attachment_limits(AttachmentLimits::default())
        .unwrap();
    m.nodes[1].engine.set_attachment_limits(small).unwrap();
    let id = send_file(&mut m, 0, 1, &file(300_000), "too big for Ravi");
    assert_eq!(texts(&m.history(1, 0)), vec!["too big for Ravi"]);
    assert!(m.nodes[1].events.iter().any(|e| matches!(
        e,
        Event::AttachmentRefused {
            size: 300_000,
            limit: 100_000,
            relayed: false,
            ..
        }
    )));
    let record = m.nodes[1].engine.store().attachment(&id).unwrap().unwrap();
    assert_eq!((record.stored(), record.complete), (0, false));
    let chunk_asks = m.requests.get(&(1, 0)).copied().unwrap_or(0);
    // One small file within the limit still comes.
    let ok = send_file(&mut m, 0, 1, &file(50_000), "fits");
    assert!(complete(&m, 1, &ok));
    assert!(m.requests[&(1, 0)] > chunk_asks);
    assert!(!complete(&m, 1, &id), "the large one is still not fetched");
}

#[test]
fn chunks_over_the_receivers_relay_limit_are_dropped_and_the_direct_path_brings_the_file() {
    let mut m = apart_with_relays(&[RelayConfig::default()]);
    m.nodes[1]
        .engine
        .set_attachment_limits(AttachmentLimits {
            direct_max_bytes: 1 << 30,
            relay_max_bytes: 100_000,
        })
        .unwrap();
    relays_reachable(&mut m, 1, false);
    let photo = file(300_000);
    let id = send_file(&mut m, 0, 1, &photo, "large");
    relays_reachable(&mut m, 1, true);
    assert!(m.nodes[1].events.iter().any(|e| matches!(
        e,
        Event::AttachmentRefused {
            limit: 100_000,
            relayed: true,
            ..
        }
    )));
    let record = m.nodes[1].engine.store().attachment(&id).unwrap().unwrap();
    assert_eq!(record.stored(), 0, "no relayed chunk was taken");
    assert_eq!(held_in_all(&m), 0, "but each left the relay");

    m.connect(0, 1);
    assert_eq!(received(&m, 1, &id, photo.len()), photo);
    assert!(delivered(&m, 0, &id));
    assert!(m.nodes[0].engine.store().uploads().unwrap().is_empty());
}

#[test]
fn a_full_mailbox_refuses_chunks_and_the_upload_resumes_after_a_restart_once_there_is_room() {
    let tight = RelayConfig {
        mailbox_max_envelopes: 4,
        ..RelayConfig::default()
    };
    let mut m = apart_with_relays(&[tight]);
    relays_reachable(&mut m, 1, false);
    let asked = m.requests.get(&(1, 0)).copied();
    let photo = file(300_000);
    let id = send_file(&mut m, 0, 1, &photo, "a bit at a time");
    assert_eq!(held_in_all(&m), 4, "the manifest and 3 chunks fit");
    assert_eq!(problems(&m, 0, "is full"), 1, "{:?}", m.nodes[0].events);
    let uploads = m.nodes[0].engine.store().uploads().unwrap();
    assert_eq!(uploads[0].count(), 3);

    // Asha restarts: what the relay holds is remembered.
    let store = m.nodes[0].engine.store().clone();
    let blobs: Arc<dyn Blobs> = m.nodes[0].blobs.clone();
    m.nodes[0].engine = Engine::new(store, [43; 32]).unwrap().with_blobs(blobs);
    relays_reachable(&mut m, 0, true);
    assert_eq!(held_in_all(&m), 4, "nothing fits yet, nothing is lost");

    // Ravi reads his mailbox; Asha's retries fill it again as it empties.
    relays_reachable(&mut m, 1, true);
    for _ in 0..100 {
        if complete(&m, 1, &id) && delivered(&m, 0, &id) {
            break;
        }
        assert!(m.advance(), "something is due until it is done");
    }
    assert_eq!(received(&m, 1, &id, photo.len()), photo);
    assert!(delivered(&m, 0, &id));
    assert!(m.nodes[0].engine.store().uploads().unwrap().is_empty());
    assert_eq!(
        m.requests.get(&(1, 0)).copied(),
        asked,
        "all through the relay"
    );
}

#[test]
fn a_direct_transfer_cut_short_goes_on_through_relays_without_the_chunks_already_there() {
    let mut m = apart_with_relays(&[RelayConfig::default(), RelayConfig::default()]);
    m.connect(0, 1);
    // Ravi fetches three chunks directly, then his requests stop getting through.
    let mut faults = VecDeque::from([Fault::Pass; 3]);
    faults.extend([Fault::DropRequest; 2 * MAX_FAILED_PARTS as usize]);
    m.faults.insert((1, 0), faults);
    let photo = file(300_000);
    let id = send_file(&mut m, 0, 1, &photo, "cut short");
    let record = m.nodes[1].engine.store().attachment(&id).unwrap().unwrap();
    assert_eq!((record.stored(), record.complete), (3, false));
    assert_eq!(
        held_in_all(&m),
        0,
        "nothing in relays while they are connected"
    );
    m.faults.clear();

    // They lose each other, and Ravi is offline for a while: the rest waits in his mailboxes.
    relays_reachable(&mut m, 1, false);
    m.disconnect(0, 1);
    for _ in 0..100 {
        let up = &m.nodes[0].engine.store().uploads().unwrap();
        if up.len() == 1 && up[0].count() == 7 {
            break;
        }
        assert!(m.advance(), "something is due until the upload is done");
    }
    assert_eq!(
        held_in_all(&m),
        4,
        "only the four chunks Ravi did not have went to the relays"
    );
    relays_reachable(&mut m, 1, true);
    assert_eq!(received(&m, 1, &id, photo.len()), photo);
    assert!(delivered(&m, 0, &id));
    assert!(m.nodes[0].engine.store().uploads().unwrap().is_empty());
    assert_eq!(held_in_all(&m), 0);
}
