//! Locations and forwarding between engines wired in memory, on virtual time: one-off and live
//! locations (updates at the interval, replaced while the contact is away, ended by expiry or
//! `location stop`, refused by the `location` privacy setting), positions for `nearby` as the
//! other side's privacy allows, and forwarded texts, locations and attachments.

mod common;

use common::*;
use instaconnect_core::engine::{
    seal_attachment, AttachmentMeta, Command, EngineError, Event, DEFAULT_LIVE_INTERVAL_MS,
};
use instaconnect_core::geo::parse_lat_lon;
use instaconnect_store::Blobs;
use instaconnect_wire::proto::{AttachmentKind, Location};
use instaconnect_wire::records::{Direction, LocationRecord};
use rand::SeedableRng;

const MINUTE: u64 = 60_000;

fn at(s: &str) -> Location {
    parse_lat_lon(s).unwrap()
}

fn linked_pair() -> Mesh {
    let mut m = Mesh::new(&[ASHA, RAVI, MEERA]);
    m.connect(0, 1);
    m.befriend(0, 1);
    m
}

fn allow_location(m: &Mesh, i: usize, level: &str) {
    m.book(i).set_privacy("location", level).unwrap();
}

fn id_bytes(hex: &str) -> [u8; 16] {
    let v: Vec<u8> = (0..32)
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect();
    v.try_into().unwrap()
}

fn record(m: &Mesh, i: usize, id: &str) -> LocationRecord {
    m.nodes[i]
        .engine
        .store()
        .location(&id_bytes(id))
        .unwrap()
        .expect("a location record")
}

fn set_position(m: &mut Mesh, i: usize, s: &str) {
    m.command(i, Command::SetPosition { location: at(s) });
}

fn share_live(m: &mut Mesh, from: usize, to: usize, minutes: u64) -> String {
    let phone = m.nodes[to].phone.clone();
    m.command(
        from,
        Command::SendLocation {
            to: phone,
            location: None,
            live_ms: Some(minutes * MINUTE),
        },
    )
    .unwrap()
}

/// Moves virtual time to `t`, firing every timer due on the way, in order. A timer that stays
/// due (a share that never ends) fails the test instead of hanging it.
fn run_until(m: &mut Mesh, t: u64) {
    let mut steps = 0;
    while let Some(next) = m
        .nodes
        .iter()
        .filter_map(|n| n.engine.poll_timeout())
        .min()
        .filter(|&n| n <= t)
    {
        steps += 1;
        assert!(steps < 10_000, "timers keep firing at {next}");
        m.now = m.now.max(next);
        let now = m.now;
        for n in &mut m.nodes {
            n.engine.handle_timeout(now);
        }
        m.run();
    }
    m.now = m.now.max(t);
}

fn ended(m: &Mesh, i: usize, id: &str) -> Vec<bool> {
    m.nodes[i]
        .events
        .iter()
        .filter_map(|e| match e {
            Event::LocationEnded { id: x, stopped, .. } if x == id => Some(*stopped),
            _ => None,
        })
        .collect()
}

#[test]
fn a_one_off_location_shows_on_both_sides() {
    let mut m = linked_pair();
    let ravi = m.nodes[1].phone.clone();
    // Explicit one-off locations go to contacts whatever the `location` setting (default
    // nobody): the user picked the place and the person.
    let id = m
        .command(
            0,
            Command::SendLocation {
                to: ravi,
                location: Some(at("52.52,13.405")),
                live_ms: None,
            },
        )
        .unwrap();
    let h = m.history(1, 0);
    assert_eq!(texts(&h), ["📍 52.52000, 13.40500"]);
    let r = record(&m, 1, &id);
    assert_eq!(r.direction, Direction::Incoming);
    assert_eq!(
        (r.location.lat_e7, r.location.lon_e7),
        (525_200_000, 134_050_000)
    );
    assert!(!r.is_live(m.now));
    assert_eq!(record(&m, 0, &id).direction, Direction::Outgoing);
    assert_eq!(
        states(&m.history(0, 1)),
        [instaconnect_wire::records::DeliveryState::Delivered]
    );
    assert!(
        m.nodes[0].engine.poll_timeout().is_none(),
        "nothing to time"
    );
}

#[test]
fn live_location_updates_at_the_interval_then_stops_after_expiry() {
    let mut m = linked_pair();
    allow_location(&m, 0, "contacts");
    set_position(&mut m, 0, "52.52,13.405");
    let start = m.now;
    let id = share_live(&mut m, 0, 1, 2);
    assert!(record(&m, 1, &id).is_live(m.now));
    assert_eq!(m.nodes[1].engine.live_shares().len(), 0);
    assert_eq!(m.nodes[0].engine.live_shares().len(), 1);

    // The first interval: the position moved, and the receiver's one location follows it.
    set_position(&mut m, 0, "52.53,13.41");
    run_until(&mut m, start + DEFAULT_LIVE_INTERVAL_MS);
    let r = record(&m, 1, &id);
    assert_eq!((r.updates, r.location.lat_e7), (1, 525_300_000));
    assert!(m.nodes[1].events.iter().any(
        |e| matches!(e, Event::LocationUpdated { id: x, location, .. } if *x == id && location.lat_e7 == 525_300_000)
    ));
    assert_eq!(m.history(1, 0).len(), 1, "updates are no new messages");

    // Until the end: an update per interval (30 s, 60 s, 90 s; 120 s is the end).
    run_until(&mut m, start + 2 * MINUTE - 1);
    assert_eq!(record(&m, 1, &id).updates, 3);
    let sent = m.requests[&(0, 1)];
    run_until(&mut m, start + 2 * MINUTE);
    assert_eq!(ended(&m, 0, &id), [false], "the sender sees it end");
    assert_eq!(
        ended(&m, 1, &id),
        [false],
        "the receiver marks it ended on its own"
    );
    assert!(!record(&m, 1, &id).is_live(m.now));
    assert!(m.nodes[0].engine.live_shares().is_empty());

    // Nothing more goes out, however long we wait and whatever the position does.
    set_position(&mut m, 0, "48.8566,2.3522");
    run_until(&mut m, start + 60 * MINUTE);
    assert_eq!(m.requests[&(0, 1)], sent, "no update after the end");
    assert_eq!(record(&m, 0, &id).updates, 3);
    assert_eq!(record(&m, 1, &id).updates, 3);
    assert_eq!(record(&m, 1, &id).location.lat_e7, 525_300_000);
    assert!(m.nodes[0].engine.poll_timeout().is_none());
    assert!(m.nodes[1].engine.poll_timeout().is_none());
}

#[test]
fn location_stop_ends_a_live_location_on_both_sides() {
    let mut m = linked_pair();
    allow_location(&m, 0, "contacts");
    set_position(&mut m, 0, "12.9716,77.5946");
    let start = m.now;
    let id = share_live(&mut m, 0, 1, 60);
    run_until(&mut m, start + 2 * DEFAULT_LIVE_INTERVAL_MS);
    assert_eq!(record(&m, 1, &id).updates, 2);

    let stopped = m.command(0, Command::StopLocation { to: None });
    assert_eq!(stopped.as_deref(), Some("1"));
    let r = record(&m, 1, &id);
    assert!(r.stopped, "the receiver marks it ended");
    assert!(!r.is_live(m.now));
    assert_eq!(ended(&m, 1, &id), [true]);
    assert_eq!(ended(&m, 0, &id), [true]);
    assert!(record(&m, 0, &id).stopped);

    let sent = m.requests[&(0, 1)];
    run_until(&mut m, start + 120 * MINUTE);
    assert_eq!(m.requests[&(0, 1)], sent, "no update after the stop");
    assert_eq!(record(&m, 1, &id).updates, 3, "two positions and the stop");
    assert_eq!(ended(&m, 1, &id), [true], "no second end at the expiry");
    // Stopping again finds nothing running.
    assert_eq!(
        m.command(0, Command::StopLocation { to: None }).as_deref(),
        Some("0")
    );
}

#[test]
fn updates_for_a_contact_who_is_away_are_replaced_not_piled_up() {
    let mut m = linked_pair();
    allow_location(&m, 0, "everyone");
    set_position(&mut m, 0, "10,10");
    let start = m.now;
    let id = share_live(&mut m, 0, 1, 30);
    m.disconnect(0, 1);
    for k in 1..=6u32 {
        set_position(&mut m, 0, &format!("10.{k},10"));
        run_until(&mut m, start + u64::from(k) * DEFAULT_LIVE_INTERVAL_MS);
    }
    let waiting = m.nodes[0].engine.store().outbox().unwrap().len();
    assert_eq!(waiting, 1, "one update waits, the latest");
    m.connect(0, 1);
    let r = record(&m, 1, &id);
    assert_eq!((r.updates, r.location.lat_e7), (6, 106_000_000));
}

#[test]
fn the_location_privacy_setting_governs_live_locations() {
    let mut m = linked_pair();
    let ravi = m.nodes[1].phone.clone();
    set_position(&mut m, 0, "52.52,13.405");
    // Default: nobody. A live location is refused, with how to allow it; nothing is stored.
    let refused = m.nodes[0].engine.command(
        m.now,
        Command::SendLocation {
            to: ravi.clone(),
            location: None,
            live_ms: Some(15 * MINUTE),
        },
    );
    match refused {
        Err(EngineError::Location(why)) => {
            assert!(why.contains("privacy set location contacts"), "{why}")
        }
        other => panic!("{other:?}"),
    }
    m.run();
    assert!(m.history(0, 1).is_empty());
    assert!(m.history(1, 0).is_empty());
    assert!(m.nodes[0].engine.poll_timeout().is_none());

    // Out of bounds, whatever the setting.
    allow_location(&m, 0, "contacts");
    for minutes in [0, 481] {
        let r = m.nodes[0].engine.command(
            m.now,
            Command::SendLocation {
                to: ravi.clone(),
                location: None,
                live_ms: Some(minutes * MINUTE),
            },
        );
        assert!(matches!(r, Err(EngineError::Location(_))), "{minutes}");
    }

    // Allowed, then turned off meanwhile: the next update is a stop instead.
    let start = m.now;
    let id = share_live(&mut m, 0, 1, 60);
    allow_location(&m, 0, "nobody");
    run_until(&mut m, start + DEFAULT_LIVE_INTERVAL_MS);
    let r = record(&m, 1, &id);
    assert!(r.stopped);
    assert_eq!(
        r.location.lat_e7, 525_200_000,
        "no position after the change"
    );
    assert!(m.nodes[0].engine.live_shares().is_empty());
}

#[test]
fn nearby_positions_follow_the_other_sides_privacy() {
    let mut m = Mesh::new(&[ASHA, RAVI]);
    set_position(&mut m, 0, "52.52,13.405");
    set_position(&mut m, 1, "48.8566,2.3522");
    allow_location(&m, 1, "contacts");
    m.connect(0, 1);
    let ravi = m.id(1);
    let seen = |m: &Mesh| {
        m.nodes[0]
            .engine
            .peers()
            .into_iter()
            .find(|p| p.peer == ravi)
            .and_then(|p| p.location)
    };
    assert_eq!(seen(&m), None, "contacts only, and we are not one yet");
    m.befriend(0, 1);
    m.command(0, Command::RefreshNearby);
    let there = seen(&m).expect("a contact sees it");
    assert_eq!(there.lat_e7, 488_566_000);
    let d = instaconnect_core::geo::distance_m(&at("52.52,13.405"), &there);
    assert!((d - 878_000.0).abs() < 2_000.0);

    allow_location(&m, 1, "nobody");
    m.command(0, Command::RefreshNearby);
    assert_eq!(seen(&m), None);
}

#[test]
fn forwarded_texts_locations_and_attachments_show_as_forwarded() {
    let mut m = Mesh::new(&[ASHA, RAVI, MEERA]);
    m.connect(0, 1);
    m.connect(0, 2);
    m.befriend(0, 1);
    m.befriend(0, 2);
    let meera = m.nodes[2].phone.clone();
    send(&mut m, 1, 0, "the talk moved to room 4");
    let text_id = m.history(0, 1)[0].id;
    allow_location(&m, 1, "contacts");
    set_position(&mut m, 1, "12.9716,77.5946");
    let live = share_live(&mut m, 1, 0, 30);

    let fwd = m
        .command(
            0,
            Command::Forward {
                id: text_id,
                to: meera.clone(),
                attachment: None,
            },
        )
        .unwrap();
    let fwd_loc = m
        .command(
            0,
            Command::Forward {
                id: id_bytes(&live),
                to: meera.clone(),
                attachment: None,
            },
        )
        .unwrap();

    let h = m.history(2, 0);
    assert_eq!(
        texts(&h),
        ["the talk moved to room 4", "📍 12.97160, 77.59460"]
    );
    let store2 = m.nodes[2].engine.store();
    assert!(h.iter().all(|x| store2.forwarded(&x.id).unwrap()));
    assert!(m.nodes[0]
        .engine
        .store()
        .forwarded(&id_bytes(&fwd))
        .unwrap());
    assert!(!m.nodes[0].engine.store().forwarded(&text_id).unwrap());
    // A live location is forwarded as the place it showed: not live.
    let r = record(&m, 2, &fwd_loc);
    assert_eq!(r.location.live_until_ms, None);
    assert!(!r.is_live(m.now));

    // An attachment: its file is copied and sealed afresh, and arrives whole.
    let bytes: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    let photo = [0xa1; 16];
    m.nodes[1].blobs.write_at(&photo, 0, &bytes).unwrap();
    let meta = AttachmentMeta {
        kind: AttachmentKind::Photo,
        name: "board.png".into(),
        mime: "image/png".into(),
        width: None,
        height: None,
        duration_ms: None,
        thumbnail: None,
        caption: Some("the board".into()),
    };
    let mut rng = rand_chacha::ChaCha20Rng::from_seed([7; 32]);
    let manifest = seal_attachment(m.nodes[1].blobs.as_ref(), &photo, meta, &mut rng).unwrap();
    let asha = m.nodes[0].phone.clone();
    m.command(
        1,
        Command::SendAttachment {
            to: asha,
            id: photo,
            manifest: Box::new(manifest.clone()),
        },
    );
    assert!(
        m.nodes[0]
            .engine
            .store()
            .attachment(&photo)
            .unwrap()
            .unwrap()
            .complete
    );
    // Without a fresh copy, the engine refuses.
    let no_copy = m.nodes[0].engine.command(
        m.now,
        Command::Forward {
            id: photo,
            to: meera.clone(),
            attachment: None,
        },
    );
    assert!(
        matches!(no_copy, Err(EngineError::Forward(_))),
        "{no_copy:?}"
    );
    let copy = [0xb2; 16];
    m.nodes[0].blobs.write_at(&copy, 0, &bytes).unwrap();
    let meta = AttachmentMeta {
        kind: manifest.kind,
        name: manifest.name.clone(),
        mime: manifest.mime.clone(),
        width: None,
        height: None,
        duration_ms: None,
        thumbnail: None,
        caption: manifest.caption.clone(),
    };
    let resealed = seal_attachment(m.nodes[0].blobs.as_ref(), &copy, meta, &mut rng).unwrap();
    assert_ne!(resealed.key.expose(), manifest.key.expose(), "a fresh key");
    m.command(
        0,
        Command::Forward {
            id: photo,
            to: meera,
            attachment: Some(Box::new((copy, resealed))),
        },
    );
    let got = m.nodes[2]
        .engine
        .store()
        .attachment(&copy)
        .unwrap()
        .unwrap();
    assert!(got.complete);
    assert_eq!(
        m.nodes[2].blobs.read_at(&copy, 0, bytes.len()).unwrap(),
        bytes
    );
    assert!(m.nodes[2].engine.store().forwarded(&copy).unwrap());
    assert_eq!(m.history(2, 0).last().unwrap().text, "the board");

    // Unknown ids are a clear error.
    let meera = m.nodes[2].phone.clone();
    let unknown = m.nodes[0].engine.command(
        m.now,
        Command::Forward {
            id: [9; 16],
            to: meera,
            attachment: None,
        },
    );
    assert!(matches!(unknown, Err(EngineError::UnknownMessage(_))));
}
