//! Groups between engines wired in memory: invitations, messages to every member, membership
//! changes that re-key, per-member delivery and read states, and admins' authority.

mod common;

use common::*;
use instaconnect_core::engine::{Command, Event};
use instaconnect_crypto::GroupReceiver;
use instaconnect_wire::proto::Payload;
use instaconnect_wire::records::{DeliveryState, GroupId, MessageRecord, OutboxPayload, Role};

const NEIL: (&str, &str) = ("+919812340003", "Neil");
const ZOYA: (&str, &str) = ("+919812340004", "Zoya");

/// Five devices all in reach of each other; Asha (0) knows the four others as contacts, and
/// they do not know each other.
fn five() -> Mesh {
    let mut m = Mesh::new(&[ASHA, RAVI, MEERA, NEIL, ZOYA]);
    for a in 0..5 {
        for b in a + 1..5 {
            m.connect(a, b);
        }
    }
    for b in 1..5 {
        m.befriend(0, b);
    }
    m
}

fn phones(m: &Mesh, who: &[usize]) -> Vec<String> {
    who.iter().map(|&i| m.nodes[i].phone.clone()).collect()
}

/// Asha creates a group of `members` and sends it; each of them accepts.
fn group_of(m: &mut Mesh, members: &[usize]) -> GroupId {
    let list = phones(m, members);
    let g = m
        .book(0)
        .create_group("Trip", &list, None, GroupId([7; 16]), 5)
        .unwrap();
    m.command(0, Command::GroupChanged { group: g.id });
    for &i in members {
        assert!(
            m.nodes[i]
                .events
                .iter()
                .any(|e| matches!(e, Event::GroupInvite { name, members: 5, .. } if name == "Trip")
                    || matches!(e, Event::GroupInvite { name, .. } if name == "Trip" && members.len() != 4)),
            "node {i} is invited: {:?}",
            m.nodes[i].events
        );
        answer(m, i, g.id, true);
    }
    g.id
}

/// A message id from the hex a command returns.
fn msg_id(hex: &str) -> [u8; 16] {
    let bytes: Vec<u8> = (0..16)
        .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap())
        .collect();
    bytes.try_into().unwrap()
}

fn answer(m: &mut Mesh, i: usize, group: GroupId, accept: bool) {
    m.command(i, Command::AnswerGroup { group, accept });
}

fn send_group(m: &mut Mesh, i: usize, group: GroupId, text: &str) -> String {
    m.command(
        i,
        Command::SendGroup {
            group,
            text: text.into(),
        },
    )
    .unwrap()
}

fn group_history(m: &Mesh, i: usize, group: GroupId) -> Vec<MessageRecord> {
    m.nodes[i]
        .engine
        .store()
        .messages(&group.conversation(), 0)
        .unwrap()
}

fn shows(m: &Mesh, i: usize, group: GroupId, text: &str) -> bool {
    group_history(m, i, group).iter().any(|r| r.text == text)
}

#[test]
fn a_group_of_five_reaches_every_member_and_a_removed_member_cannot_read_what_follows() {
    let mut m = five();
    let g = group_of(&mut m, &[1, 2, 3, 4]);

    // Every member's message reaches the four others, also members who are not each other's
    // contacts (they learnt each other's cards from the admin).
    for i in 0..5 {
        let text = format!("hello from {i}");
        send_group(&mut m, i, g, &text);
        for j in 0..5 {
            assert!(shows(&m, j, g, &text), "node {j} shows {text:?}");
        }
    }
    let mine = group_history(&m, 0, g);
    assert_eq!(mine.last().unwrap().state, DeliveryState::Delivered);
    let rec = m.nodes[2]
        .engine
        .store()
        .group_message(&mine[0].id)
        .unwrap()
        .unwrap();
    assert_eq!(rec.sender, m.nodes[0].phone, "Meera knows who sent it");

    // What Zoya's device holds of the group before she is removed: every sender key she was
    // ever given.
    let zoya_keys = m.nodes[4]
        .engine
        .store()
        .group_sync(&g)
        .unwrap()
        .unwrap()
        .keys;
    assert!(zoya_keys.iter().any(|k| k.phone == m.nodes[0].phone));

    let zoya = m.nodes[4].phone.clone();
    m.book(0)
        .remove_members(&g.to_hex(), &[zoya], None, 9)
        .unwrap();
    m.command(0, Command::GroupChanged { group: g });
    assert!(
        m.nodes[4]
            .events
            .iter()
            .any(|e| matches!(e, Event::GroupChanged { what, .. } if what == "you were removed")),
        "Zoya is told: {:?}",
        m.nodes[4].events
    );
    assert!(m.nodes[4].engine.store().group(&g).unwrap().unwrap().left);

    // The next message, caught on its way to Ravi (Asha is cut off for a moment).
    for b in 1..5 {
        m.disconnect(0, b);
    }
    send_group(&mut m, 0, g, "after the removal");
    let ciphertext = m.nodes[0]
        .engine
        .store()
        .outbox()
        .unwrap()
        .into_iter()
        .find_map(|e| match e.payload {
            OutboxPayload::Payload(p) => match Payload::decode(&p) {
                Ok(Payload::GroupMessage { ciphertext, .. }) => Some(ciphertext),
                _ => None,
            },
            _ => None,
        })
        .expect("the group message is queued");
    let asha_key = m.nodes[0].engine.store().account().unwrap().unwrap();
    let _ = asha_key;
    for k in &zoya_keys {
        let mut r = GroupReceiver::from_pickle_bytes(k.pickle.expose()).unwrap();
        assert!(
            r.decrypt(&ciphertext).is_err(),
            "a key Zoya held opens the message sent after her removal"
        );
    }
    for b in 1..5 {
        m.connect(0, b);
    }
    for j in 0..4 {
        assert!(shows(&m, j, g, "after the removal"), "node {j} shows it");
    }
    assert!(
        !shows(&m, 4, g, "after the removal"),
        "Zoya's device never shows it"
    );
    // Nothing went to Zoya's device at all, and the others' keys open it.
    let ravi_keys = m.nodes[1]
        .engine
        .store()
        .group_sync(&g)
        .unwrap()
        .unwrap()
        .keys;
    assert!(ravi_keys.iter().any(|k| {
        GroupReceiver::from_pickle_bytes(k.pickle.expose())
            .unwrap()
            .session_id()
            == instaconnect_crypto::group_message_session_id(&ciphertext).unwrap()
    }));

    // Zoya can no longer send to the group.
    assert!(m.nodes[4]
        .engine
        .command(
            m.now,
            Command::SendGroup {
                group: g,
                text: "still here?".into()
            }
        )
        .is_err());
}

#[test]
fn each_members_delivery_and_read_state_is_tracked() {
    let mut m = five();
    let g = group_of(&mut m, &[1, 2]);
    m.disconnect(0, 2);
    let id = send_group(&mut m, 0, g, "dinner at eight?");
    let rec = |m: &Mesh| {
        let id = msg_id(&id);
        m.nodes[0]
            .engine
            .store()
            .group_message(&id)
            .unwrap()
            .unwrap()
    };
    let state_of = |m: &Mesh, i: usize| {
        let p = m.nodes[i].phone.clone();
        rec(m).states.into_iter().find(|(x, _)| *x == p).unwrap().1
    };
    assert_eq!(state_of(&m, 1), DeliveryState::Delivered);
    assert!(
        state_of(&m, 2) < DeliveryState::Delivered,
        "Meera is out of reach"
    );
    assert!(group_history(&m, 0, g)[0].state < DeliveryState::Delivered);

    m.command(1, Command::MarkGroupRead { group: g });
    assert_eq!(state_of(&m, 1), DeliveryState::Read);

    m.connect(0, 2);
    assert_eq!(state_of(&m, 2), DeliveryState::Delivered);
    assert_eq!(group_history(&m, 0, g)[0].state, DeliveryState::Delivered);
}

#[test]
fn a_declined_invitation_leaves_nothing_behind_and_the_others_see_it() {
    let mut m = five();
    let list = phones(&m, &[1, 2]);
    let g = m
        .book(0)
        .create_group("Book club", &list, None, GroupId([9; 16]), 5)
        .unwrap()
        .id;
    m.command(0, Command::GroupChanged { group: g });
    answer(&mut m, 1, g, true);
    answer(&mut m, 2, g, false);
    assert!(m.nodes[2].engine.store().group(&g).unwrap().is_none());
    assert!(
        m.nodes[2]
            .engine
            .store()
            .contact(&m.nodes[1].phone)
            .unwrap()
            .is_none(),
        "declining makes no contacts of the members"
    );
    let members = m.nodes[0]
        .engine
        .store()
        .group(&g)
        .unwrap()
        .unwrap()
        .members;
    assert!(!members.iter().any(|x| x.phone == m.nodes[2].phone));
    assert!(m.nodes[0]
        .events
        .iter()
        .any(|e| matches!(e, Event::GroupChanged { what, .. } if what.ends_with("left"))));
    // Ravi, who accepted, reaches Asha; nothing goes to Meera.
    send_group(&mut m, 1, g, "just us then");
    assert!(shows(&m, 0, g, "just us then"));
    assert!(group_history(&m, 2, g).is_empty());
}

#[test]
fn a_member_who_makes_itself_admin_changes_nothing_for_the_others() {
    let mut m = five();
    let g = group_of(&mut m, &[1, 2]);
    let ravi = m.nodes[1].phone.clone();
    // Ravi edits his own group record to make himself admin: his device refuses to send it,
    // since the state the members share does not make him admin.
    let store = m.nodes[1].engine.store().clone();
    let mut rec = store.group(&g).unwrap().unwrap();
    for x in &mut rec.members {
        if x.phone == ravi {
            x.role = Role::Admin;
        }
    }
    rec.name = "Ravi's group".into();
    store
        .apply(vec![instaconnect_store::Op::PutGroup(rec)])
        .unwrap();
    let now = m.now;
    assert!(m.nodes[1]
        .engine
        .command(now, Command::GroupChanged { group: g })
        .is_err());
    // He forges the shared state too: now it goes out, and the others ignore it.
    let mut sync = store.group_sync(&g).unwrap().unwrap();
    for x in &mut sync.state.members {
        if x.phone == ravi {
            x.admin = true;
        }
    }
    store
        .apply(vec![instaconnect_store::Op::PutGroupSync(sync)])
        .unwrap();
    m.command(1, Command::GroupChanged { group: g });
    for i in [0, 2] {
        assert_eq!(
            m.nodes[i].engine.store().group(&g).unwrap().unwrap().name,
            "Trip"
        );
        assert!(!m.nodes[i]
            .engine
            .store()
            .group(&g)
            .unwrap()
            .unwrap()
            .members
            .iter()
            .any(|x| x.phone == ravi && x.role == Role::Admin));
    }
    // A real admin's rename reaches the others.
    m.book(0).rename_group(&g.to_hex(), "Goa trip", 9).unwrap();
    m.command(0, Command::GroupChanged { group: g });
    assert_eq!(
        m.nodes[2].engine.store().group(&g).unwrap().unwrap().name,
        "Goa trip"
    );
    assert!(m.nodes[2]
        .events
        .iter()
        .any(|e| matches!(e, Event::GroupChanged { name, .. } if name == "Goa trip")));
}

#[test]
fn a_member_who_leaves_is_dropped_everywhere_and_gets_nothing_more() {
    let mut m = five();
    let g = group_of(&mut m, &[1, 2, 3]);
    m.book(3).leave_group(&g.to_hex(), 9).unwrap();
    m.command(3, Command::LeaveGroup { group: g });
    for i in [0, 1, 2] {
        let members = m.nodes[i]
            .engine
            .store()
            .group(&g)
            .unwrap()
            .unwrap()
            .members;
        assert_eq!(members.len(), 3, "node {i} dropped Neil");
    }
    send_group(&mut m, 1, g, "bye Neil");
    assert!(shows(&m, 0, g, "bye Neil") && shows(&m, 2, g, "bye Neil"));
    assert!(!shows(&m, 3, g, "bye Neil"));
}

#[test]
fn group_messages_reach_members_who_are_away_through_their_mailboxes() {
    let mut m = Mesh::new(&[ASHA, RAVI, MEERA]);
    for (a, b) in [(0, 1), (0, 2), (1, 2)] {
        m.connect(a, b);
    }
    m.befriend(0, 1);
    m.befriend(0, 2);
    let r = m.add_relay();
    for i in 0..3 {
        m.relay_link(i, r, true);
    }
    let g = group_of(&mut m, &[1, 2]);
    // Ravi and Meera met through the group: each has a mailbox for the other.
    let boxes = m.nodes[1].engine.store().contact_mailboxes().unwrap();
    assert!(
        boxes.iter().any(|b| b.phone == m.nodes[2].phone),
        "Ravi knows Meera's mailboxes: {boxes:?}"
    );
    // Nobody is in direct reach any more, and Meera is offline.
    for (a, b) in [(0, 1), (0, 2), (1, 2)] {
        m.disconnect(a, b);
    }
    m.relay_link(2, r, false);
    let id = send_group(&mut m, 1, g, "the train leaves at six");
    assert!(
        shows(&m, 0, g, "the train leaves at six"),
        "Asha fetched hers"
    );
    assert!(!shows(&m, 2, g, "the train leaves at six"));
    let states = |m: &Mesh| {
        let id = msg_id(&id);
        m.nodes[1]
            .engine
            .store()
            .group_message(&id)
            .unwrap()
            .unwrap()
            .states
    };
    let meera = m.nodes[2].phone.clone();
    let asha = m.nodes[0].phone.clone();
    let s = states(&m);
    assert!(
        s.contains(&(asha.clone(), DeliveryState::Delivered)),
        "{s:?}"
    );
    assert!(
        s.contains(&(meera.clone(), DeliveryState::Relayed { relays: 1 })),
        "{s:?}"
    );

    m.relay_link(2, r, true);
    assert!(
        shows(&m, 2, g, "the train leaves at six"),
        "Meera fetched hers"
    );
    let s = states(&m);
    assert!(s.contains(&(meera, DeliveryState::Delivered)), "{s:?}");
    assert_eq!(
        group_history(&m, 1, g).last().unwrap().state,
        DeliveryState::Delivered
    );
}

#[test]
fn a_member_linked_after_the_group_was_made_is_invited_then() {
    // Meera is in Asha's address book but her device is not linked yet.
    let mut m = Mesh::new(&[ASHA, RAVI, MEERA]);
    for (a, b) in [(0, 1), (0, 2), (1, 2)] {
        m.connect(a, b);
    }
    m.befriend(0, 1);
    let meera = m.nodes[2].phone.clone();
    m.book(0)
        .add_contact(
            &instaconnect_core::phone::Phone::parse(&meera, None).unwrap(),
            Some("Meera"),
            3,
        )
        .unwrap();
    let list = phones(&m, &[1, 2]);
    let g = m
        .book(0)
        .create_group("Later", &list, None, GroupId([3; 16]), 5)
        .unwrap()
        .id;
    let note = m.command(0, Command::GroupChanged { group: g });
    assert!(
        note.unwrap().contains(&meera),
        "the admin is told who was not reached"
    );
    assert!(!m.nodes[2]
        .events
        .iter()
        .any(|e| matches!(e, Event::GroupInvite { .. })));
    // Linking her device now brings the invitation.
    let idm = m.id(2);
    m.command(
        0,
        Command::RequestContact {
            phone: meera,
            peer: idm,
        },
    );
    let ida = m.id(0);
    m.command(2, Command::AcceptContact { peer: ida });
    assert!(m.nodes[2]
        .events
        .iter()
        .any(|e| matches!(e, Event::GroupInvite { name, .. } if name == "Later")));
    answer(&mut m, 1, g, true);
    answer(&mut m, 2, g, true);
    send_group(&mut m, 2, g, "made it");
    assert!(shows(&m, 0, g, "made it") && shows(&m, 1, g, "made it"));
}

#[test]
fn a_photo_sent_to_a_group_reaches_every_member_byte_identical_and_only_members_may_fetch_it() {
    use instaconnect_core::engine::{seal_attachment, AttachmentMeta};
    use instaconnect_store::Blobs;
    use instaconnect_wire::proto::{AttachmentKind, Request, Response};
    use rand::SeedableRng;

    let mut m = five();
    let g = group_of(&mut m, &[1, 2, 3]);
    let bytes: Vec<u8> = (0..200_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8)
        .collect();
    let id = [0x5a; 16];
    m.nodes[1].blobs.write_at(&id, 0, &bytes).unwrap();
    let meta = AttachmentMeta {
        kind: AttachmentKind::Photo,
        name: "beach.png".into(),
        mime: "image/png".into(),
        width: Some(640),
        height: Some(480),
        duration_ms: None,
        thumbnail: None,
        caption: Some("the beach".into()),
    };
    let mut rng = rand_chacha::ChaCha20Rng::from_seed([9; 32]);
    let manifest = seal_attachment(m.nodes[1].blobs.as_ref(), &id, meta, &mut rng).unwrap();
    m.command(
        1,
        Command::SendGroupAttachment {
            group: g,
            id,
            manifest: Box::new(manifest),
        },
    );
    for i in [0, 2, 3] {
        let rec = m.nodes[i].engine.store().attachment(&id).unwrap().unwrap();
        assert!(rec.complete, "node {i} has all of it");
        assert_eq!(
            m.nodes[i].blobs.read_at(&id, 0, bytes.len()).unwrap(),
            bytes
        );
        assert!(shows(&m, i, g, "the beach"), "node {i} shows the caption");
    }
    // Zoya is no member: Ravi's device does not hand her a chunk, even with the id.
    assert!(m.nodes[4].engine.store().attachment(&id).unwrap().is_none());
    let frame = Request::Chunk {
        id,
        index: 0,
        offset: 0,
        len: 1024,
    }
    .encode()
    .unwrap();
    let now = m.now;
    let zoya = m.id(4);
    m.nodes[1].engine.handle_input(
        now,
        instaconnect_core::engine::Input::Request {
            peer: zoya,
            frame,
            channel: 77,
        },
    );
    m.nodes[1].engine.commit().unwrap();
    let mut answer = None;
    while let Some(o) = m.nodes[1].engine.poll_output() {
        if let instaconnect_core::engine::Output::Respond { channel: 77, frame } = o {
            answer = Some(Response::decode(&frame).unwrap());
        }
    }
    assert_eq!(answer, Some(Response::NotNow));
}
