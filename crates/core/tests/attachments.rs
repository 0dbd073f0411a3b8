//! Attachments between engines wired in memory: a file arrives byte-identical and checked,
//! a transfer that stops resumes from the chunks it is missing (also after a restart), damaged
//! chunks are refused, and chunks are served only to the recipient.

mod common;

use std::collections::VecDeque;
use std::sync::Arc;

use common::*;
use instaconnect_core::engine::{
    seal_attachment, AttachmentMeta, Command, Engine, Event, Input, Output, MAX_BAD_CHUNKS,
    MAX_FAILED_PARTS,
};
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

/// Node `from` puts `bytes` in its blob store under a new id, seals it and sends it to `to`.
fn send_file(m: &mut Mesh, from: usize, to: usize, bytes: &[u8], caption: &str) -> [u8; 16] {
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
    m.command(
        from,
        Command::SendAttachment {
            to: to_phone,
            id,
            manifest: Box::new(manifest),
        },
    );
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
