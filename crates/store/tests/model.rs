//! The sled store and the in-memory store, driven by the same random operations, must agree with
//! a plain model after every batch and after the sled database is closed and reopened.

use instaconnect_store::{MemStore, Op, SledStore, Store};
use instaconnect_wire::proto::{
    AttachmentKind, AttachmentManifest, GroupCard, GroupState, GroupStateMember, MailboxAddress,
};
use instaconnect_wire::records::*;
use instaconnect_wire::SecretBytes;
use proptest::prelude::*;

fn phone() -> impl Strategy<Value = String> {
    // A small domain so that puts, overwrites and removes hit the same keys.
    (0u8..6).prop_map(|i| format!("+9198123456{i:02}"))
}

fn visibility() -> impl Strategy<Value = Visibility> {
    prop_oneof![
        Just(Visibility::Everyone),
        Just(Visibility::Contacts),
        Just(Visibility::Nobody)
    ]
}

fn group_id() -> impl Strategy<Value = GroupId> {
    (0u8..4).prop_map(|i| GroupId([i; 16]))
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (phone(), any::<u64>()).prop_map(|(phone, t)| Op::PutAccount(AccountRecord {
            phone,
            identity_secret: SecretBytes::new(vec![7; 32]),
            device_pickle: SecretBytes::new(vec![9; 40]),
            created_at_ms: t,
        })),
        (".{0,12}", ".{0,12}", any::<u64>()).prop_map(|(name, status, t)| Op::PutProfile(
            Profile {
                name,
                status,
                picture: None,
                updated_at_ms: t
            }
        )),
        (proptest::option::of("[A-Z]{2}"), visibility(), visibility()).prop_map(
            |(region, a, b)| Op::PutSettings(Settings {
                region,
                privacy: Privacy {
                    phone: a,
                    receipts: b,
                    ..Privacy::default()
                }
            })
        ),
        (
            phone(),
            proptest::option::of("[a-z]{1,8}"),
            any::<u64>(),
            proptest::option::of("[ab]")
        )
            .prop_map(|(phone, name, t, peer_id)| {
                Op::PutContact(ContactRecord {
                    phone,
                    name,
                    peer_id,
                    identity_key: if t % 2 == 0 {
                        Some([t as u8; 32])
                    } else {
                        None
                    },
                    card: if t % 3 == 0 {
                        Some(vec![1, 2, 3])
                    } else {
                        None
                    },
                    added_at_ms: t,
                    updated_at_ms: t,
                })
            }),
        phone().prop_map(Op::RemoveContact),
        (phone(), any::<u64>())
            .prop_map(|(phone, since_ms)| Op::PutBlock(BlockRecord { phone, since_ms })),
        phone().prop_map(Op::RemoveBlock),
        (
            group_id(),
            "[a-z]{1,8}",
            proptest::collection::vec(phone(), 0..4),
            any::<bool>()
        )
            .prop_map(|(id, name, ms, left)| Op::PutGroup(GroupRecord {
                id,
                name,
                members: ms
                    .into_iter()
                    .map(|phone| GroupMember {
                        phone,
                        role: Role::Member
                    })
                    .collect(),
                created_at_ms: 1,
                updated_at_ms: 2,
                left,
            })),
        group_id().prop_map(Op::RemoveGroup),
        (phone(), 0u64..4, 0u8..6, any::<bool>(), ".{0,10}").prop_map(
            |(peer, seq, id, out, text)| {
                Op::PutMessage(MessageRecord {
                    id: [id; 16],
                    peer,
                    seq,
                    direction: if out {
                        Direction::Outgoing
                    } else {
                        Direction::Incoming
                    },
                    text,
                    sent_at_ms: 5,
                    stored_at_ms: 6,
                    state: DeliveryState::Queued,
                })
            }
        ),
        (phone(), 0u64..9, 0u32..3).prop_map(|(peer, next_seq, unread)| Op::PutConversation(
            ConversationRecord {
                peer,
                next_seq,
                unread,
                last_activity_ms: 1,
                sent_n: next_seq,
                shown_n: 2,
            }
        )),
        (phone(), 0u64..4, 0u8..6).prop_map(|(peer, n, id)| Op::PutHeld(HeldMessage {
            n,
            message: MessageRecord {
                id: [id; 16],
                peer,
                seq: 0,
                direction: Direction::Incoming,
                text: "held".into(),
                sent_at_ms: 5,
                stored_at_ms: 6,
                state: DeliveryState::Delivered,
            },
        })),
        (phone(), 0u64..4).prop_map(|(peer, n)| Op::RemoveHeld { peer, n }),
        (0u8..6, 0u32..3).prop_map(|(id, attempts)| Op::PutOutbox(OutboxEntry {
            id: [id; 16],
            peer_id: "12D3KooWpeer".into(),
            payload: OutboxPayload::Payload(vec![id; 8]),
            attempts,
            next_attempt_ms: 9,
        })),
        (0u8..6).prop_map(|id| Op::RemoveOutbox([id; 16])),
        ("[ab]", any::<u8>()).prop_map(|(peer_id, b)| Op::PutSession {
            peer_id,
            pickle: SecretBytes::new(vec![b; 4])
        }),
        ("[ab]", any::<u8>()).prop_map(|(peer_id, b)| Op::PutContactRequest(
            ContactRequestRecord {
                peer_id,
                card: vec![b],
                received_at_ms: 3
            }
        )),
        "[ab]".prop_map(Op::RemoveContactRequest),
        any::<u8>().prop_map(|b| Op::PutReplay(SecretBytes::new(vec![b; 3]))),
        (0u8..6).prop_map(|id| Op::MarkSeen([id; 16])),
    ]
    .boxed()
    .prop_union(relay_op().boxed())
    .or(location_op().boxed())
}

/// Locations, the device's position and forwarded marks.
fn location_op() -> impl Strategy<Value = Op> {
    let place =
        (-900i32..=900, -1800i32..=1800, any::<Option<u64>>()).prop_map(|(lat, lon, until)| {
            instaconnect_wire::proto::Location {
                lat_e7: lat * 1_000_000,
                lon_e7: lon * 1_000_000,
                accuracy_m: None,
                live_until_ms: until,
            }
        });
    prop_oneof![
        (0u8..6, phone(), place.clone(), any::<u64>(), any::<bool>()).prop_map(
            |(id, peer, location, updates, stopped)| Op::PutLocation(LocationRecord {
                id: [id; 16],
                peer,
                direction: Direction::Outgoing,
                location,
                updated_at_ms: 5,
                updates,
                stopped,
            })
        ),
        (place, any::<u64>()).prop_map(|(location, set_at_ms)| Op::PutPosition(PositionRecord {
            location,
            set_at_ms
        })),
        (0u8..6).prop_map(|id| Op::MarkForwarded([id; 16])),
    ]
}

/// Mailboxes and deposits (the device side of relays).
fn relay_op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (phone(), 0u8..4, any::<bool>()).prop_map(|(phone, m, created)| Op::PutOwnMailbox(
            OwnMailbox {
                phone,
                relay: format!("relay{m}"),
                addrs: vec![format!("/ip4/127.0.0.1/tcp/{m}")],
                key: SecretBytes::new(vec![m; 32]),
                mailbox: [m; 32],
                created,
            }
        )),
        (0u8..4).prop_map(|m| Op::RemoveOwnMailbox([m; 32])),
        (phone(), 0u8..3).prop_map(|(phone, n)| Op::PutContactMailboxes(ContactMailboxes {
            phone,
            boxes: (0..n)
                .map(|m| MailboxAddress {
                    relay: format!("relay{m}"),
                    addrs: Vec::new(),
                    mailbox: [m; 32],
                })
                .collect(),
        })),
        (0u8..6, 0u8..3, any::<u64>()).prop_map(|(id, m, seq)| Op::PutDeposit(DepositRecord {
            id: [id; 16],
            relay: format!("relay{m}"),
            addrs: Vec::new(),
            mailbox: [m; 32],
            seq,
        })),
        (0u8..6, 0u8..3).prop_map(|(id, m)| Op::RemoveDeposit([id; 16], [m; 32])),
        (0u8..6, phone(), any::<u8>(), any::<bool>()).prop_map(|(id, peer, have, complete)| {
            Op::PutAttachment(AttachmentRecord {
                id: [id; 16],
                peer,
                direction: Direction::Incoming,
                manifest: AttachmentManifest {
                    kind: AttachmentKind::File,
                    name: format!("f{id}"),
                    mime: "application/octet-stream".into(),
                    size: 10,
                    chunk_size: 49_152,
                    chunks: vec![[id; 32]],
                    key: SecretBytes::new(vec![id; 32]),
                    plaintext_hash: [have; 32],
                    width: None,
                    height: None,
                    duration_ms: None,
                    thumbnail: None,
                    caption: None,
                },
                have: vec![have],
                complete,
            })
        }),
        (0u8..6).prop_map(|id| Op::RemoveAttachment([id; 16])),
        (group_id(), any::<u64>(), phone(), any::<bool>()).prop_map(|(id, version, p, inv)| {
            Op::PutGroupSync(GroupSyncRecord {
                id,
                state: GroupState {
                    id: id.0,
                    version,
                    name: format!("g{version}"),
                    members: vec![GroupStateMember {
                        phone: p.clone(),
                        admin: true,
                    }],
                    joined: vec![p.clone()],
                },
                invited_by: inv.then(|| p.clone()),
                sender: Some(SecretBytes::new(vec![1, 2, 3])),
                sender_members: vec![p.clone()],
                shared_with: Vec::new(),
                keys: vec![GroupKeyRecord {
                    phone: p.clone(),
                    session_id: [id.0[0]; 32],
                    pickle: SecretBytes::new(vec![4; 8]),
                }],
                waiting: vec![WaitingGroupMessage {
                    from: p.clone(),
                    id: [5; 16],
                    sent_at_ms: version,
                    ciphertext: vec![6; 4],
                }],
                cards: vec![GroupCard {
                    phone: p,
                    card: vec![7; 3],
                }],
            })
        }),
        group_id().prop_map(Op::RemoveGroupSync),
        (0u8..6, group_id(), phone()).prop_map(|(id, group, sender)| {
            Op::PutGroupMessage(GroupMessageRecord {
                id: [id; 16],
                group,
                sender: sender.clone(),
                states: vec![(sender, DeliveryState::Read)],
            })
        }),
        (0u8..6, phone(), any::<u8>()).prop_map(|(id, peer, held)| Op::PutUpload(UploadRecord {
            id: [id; 16],
            peer,
            held: vec![held],
        })),
        (0u8..6).prop_map(|id| Op::RemoveUpload([id; 16])),
    ]
}

fn snapshot(s: &dyn Store) -> String {
    let mut out = format!(
        "{:?}\n{:?}\n{:?}\n{:?}\n{:?}\n{:?}\n{:?}\n{:?}\n{:?}\n{:?}",
        s.account().unwrap(),
        s.profile().unwrap(),
        s.settings().unwrap(),
        s.contacts().unwrap(),
        s.blocks().unwrap(),
        s.groups().unwrap(),
        s.conversations().unwrap(),
        s.outbox().unwrap(),
        s.contact_requests().unwrap(),
        s.replay().unwrap(),
    );
    out.push_str(&format!("\n{:?}", s.held().unwrap()));
    out.push_str(&format!("\n{:?}", s.own_mailboxes().unwrap()));
    out.push_str(&format!("\n{:?}", s.contact_mailboxes().unwrap()));
    out.push_str(&format!("\n{:?}", s.deposits().unwrap()));
    out.push_str(&format!("\n{:?}", s.attachments().unwrap()));
    out.push_str(&format!("\n{:?}", s.uploads().unwrap()));
    out.push_str(&format!("\n{:?}", s.locations().unwrap()));
    out.push_str(&format!("\n{:?}", s.position().unwrap()));
    for i in 0u8..6 {
        let p = format!("+9198123456{i:02}");
        out.push_str(&format!("\n{:?}", s.messages(&p, 0).unwrap()));
        out.push_str(&format!("\n{:?}", s.messages(&p, 2).unwrap()));
        out.push_str(&format!("\n{:?}", s.message(&[i; 16]).unwrap()));
        out.push_str(&format!("\n{:?}", s.seen(&[i; 16]).unwrap()));
        out.push_str(&format!("\n{:?}", s.attachment(&[i; 16]).unwrap()));
        out.push_str(&format!("\n{:?}", s.group_message(&[i; 16]).unwrap()));
        out.push_str(&format!("\n{:?}", s.location(&[i; 16]).unwrap()));
        out.push_str(&format!("\n{:?}", s.forwarded(&[i; 16]).unwrap()));
    }
    for i in 0u8..4 {
        out.push_str(&format!("\n{:?}", s.group_sync(&GroupId([i; 16])).unwrap()));
    }
    for p in ["a", "b"] {
        out.push_str(&format!("\n{:?}", s.session(p).unwrap()));
        out.push_str(&format!("\n{:?}", s.contact_by_peer(p).unwrap()));
    }
    out
}

fn check_point_reads(s: &dyn Store, model: &MemStore) {
    for i in 0u8..6 {
        let p = format!("+9198123456{i:02}");
        assert_eq!(s.contact(&p).unwrap(), model.contact(&p).unwrap());
        assert_eq!(s.block(&p).unwrap(), model.block(&p).unwrap());
    }
    for i in 0u8..4 {
        let id = GroupId([i; 16]);
        assert_eq!(s.group(&id).unwrap(), model.group(&id).unwrap());
    }
}

/// Opens a store just closed in this process: sled's IO threads may still hold the file lock
/// for a moment after the last handle is dropped, so wait for it (bounded).
fn reopen(path: &std::path::Path) -> SledStore {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match SledStore::open(path) {
            Err(instaconnect_store::StoreError::Locked { .. })
                if std::time::Instant::now() < deadline =>
            {
                std::thread::yield_now()
            }
            r => return r.unwrap(),
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]
    #[test]
    fn sled_store_matches_model(
        batches in proptest::collection::vec(
            (proptest::collection::vec(op(), 0..5), any::<bool>()),
            1..12,
        )
    ) {
        let dir = tempfile::tempdir().unwrap();
        let model = MemStore::new();
        {
            let sled = SledStore::open(dir.path()).unwrap();
            // Deferred batches are read back from memory before they reach sled; flushed ones
            // from sled.
            for (batch, flush) in &batches {
                if *flush {
                    sled.apply(batch.clone()).unwrap();
                } else {
                    sled.apply_deferred(batch.clone()).unwrap();
                }
                model.apply(batch.clone()).unwrap();
                prop_assert_eq!(snapshot(&sled), snapshot(&model));
                check_point_reads(&sled, &model);
            }
            sled.flush().unwrap();
        }
        // Everything applied survives a close and reopen.
        let reopened = reopen(dir.path());
        prop_assert_eq!(snapshot(&reopened), snapshot(&model));
    }
}

#[test]
fn newer_schema_is_refused_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = SledStore::open(dir.path()).unwrap();
        s.apply(vec![Op::PutProfile(Profile {
            name: "Asha".into(),
            ..Profile::default()
        })])
        .unwrap();
        s.force_schema_version(instaconnect_wire::SCHEMA_VERSION + 1)
            .unwrap();
    }
    let err = SledStore::open(dir.path())
        .err()
        .expect("newer schema must be refused");
    let msg = err.to_string();
    assert!(msg.contains("newer than this build supports"), "{msg}");
    // Still the newer version and the old data: opening wrote nothing.
    let db = sled::open(dir.path()).unwrap();
    let v: u32 = instaconnect_wire::decode(&db.get(b"meta/schema").unwrap().unwrap()).unwrap();
    assert_eq!(v, instaconnect_wire::SCHEMA_VERSION + 1);
    assert!(db.get(b"profile").unwrap().is_some());
}

#[test]
fn a_foreign_sled_database_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = sled::open(dir.path()).unwrap();
        db.insert(b"something", b"else").unwrap();
        db.flush().unwrap();
    }
    let err = SledStore::open(dir.path()).err().expect("must refuse");
    assert!(err.to_string().contains("no schema version"), "{err}");
}

#[test]
fn a_corrupt_record_is_an_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = SledStore::open(dir.path()).unwrap();
        drop(s);
        let db = sled::open(dir.path()).unwrap();
        db.insert(b"contact/+919812345600", &[0xff, 0xff, 0xff][..])
            .unwrap();
        db.flush().unwrap();
    }
    let s = SledStore::open(dir.path()).unwrap();
    let err = s.contacts().unwrap_err();
    assert!(
        err.to_string()
            .contains("corrupt record contact/+919812345600"),
        "{err}"
    );
}

#[test]
fn schema_version_is_recorded_on_create() {
    let dir = tempfile::tempdir().unwrap();
    let s = SledStore::open(dir.path()).unwrap();
    assert_eq!(
        s.schema_version().unwrap(),
        instaconnect_wire::SCHEMA_VERSION
    );
}

#[test]
fn a_schema_1_database_is_migrated_without_losing_conversations() {
    let dir = tempfile::tempdir().unwrap();
    {
        // Written as schema 1 did: conversations without the sender-order counters.
        let db = sled::open(dir.path()).unwrap();
        db.insert(b"meta/schema", instaconnect_wire::encode(&1u32).unwrap())
            .unwrap();
        let conv = ("+919812340001".to_string(), 7u64, 2u32, 99u64);
        db.insert(
            b"conv/+919812340001",
            instaconnect_wire::encode(&conv).unwrap(),
        )
        .unwrap();
        let contact = ContactRecord {
            peer_id: Some("12D3KooWpeer".into()),
            ..ContactRecord::new("+919812340001", 1)
        };
        db.insert(
            b"contact/+919812340001",
            instaconnect_wire::encode(&contact).unwrap(),
        )
        .unwrap();
        db.flush().unwrap();
    }
    let s = SledStore::open(dir.path()).unwrap();
    assert_eq!(
        s.schema_version().unwrap(),
        instaconnect_wire::SCHEMA_VERSION
    );
    let c = s.conversation("+919812340001").unwrap().unwrap();
    assert_eq!((c.next_seq, c.unread, c.last_activity_ms), (7, 2, 99));
    assert_eq!((c.sent_n, c.shown_n), (0, 0));
    let linked = s.contact_by_peer("12D3KooWpeer").unwrap().unwrap();
    assert_eq!(linked.phone, "+919812340001");
}

#[test]
fn a_schema_2_outbox_is_migrated_keeping_its_order_and_sealed_frames() {
    #[derive(serde::Serialize)]
    struct OutboxEntryV2 {
        id: [u8; 16],
        peer_id: String,
        envelope: Vec<u8>,
        attempts: u32,
        next_attempt_ms: u64,
    }
    let phone = "+919812340001";
    let dir = tempfile::tempdir().unwrap();
    {
        let db = sled::open(dir.path()).unwrap();
        db.insert(b"meta/schema", instaconnect_wire::encode(&2u32).unwrap())
            .unwrap();
        let conv = ConversationRecord {
            peer: phone.into(),
            next_seq: 3,
            sent_n: 4,
            ..ConversationRecord::default()
        };
        db.insert(
            format!("conv/{phone}"),
            instaconnect_wire::encode(&conv).unwrap(),
        )
        .unwrap();
        // Two queued texts (seq 2 before seq 1 in key order of their ids), one sealed receipt.
        for (id, seq) in [([9u8; 16], 1u64), ([1u8; 16], 2u64)] {
            let m = MessageRecord {
                id,
                peer: phone.into(),
                seq,
                direction: Direction::Outgoing,
                text: format!("text {seq}"),
                sent_at_ms: 1,
                stored_at_ms: 1,
                state: DeliveryState::Queued,
            };
            let mut k = format!("msg/{phone}/").into_bytes();
            k.extend_from_slice(&seq.to_be_bytes());
            let mut ik = b"msgid/".to_vec();
            ik.extend_from_slice(&id);
            db.insert(&ik, k.clone()).unwrap();
            db.insert(k, instaconnect_wire::encode(&m).unwrap())
                .unwrap();
        }
        for (id, envelope) in [
            ([9u8; 16], vec![]),
            ([1u8; 16], vec![]),
            ([5u8; 16], vec![7u8; 40]),
        ] {
            let e = OutboxEntryV2 {
                id,
                peer_id: "12D3KooWpeer".into(),
                envelope,
                attempts: 2,
                next_attempt_ms: 77,
            };
            let mut k = b"outbox/".to_vec();
            k.extend_from_slice(&id);
            db.insert(k, instaconnect_wire::encode(&e).unwrap())
                .unwrap();
        }
        db.flush().unwrap();
    }
    let s = SledStore::open(dir.path()).unwrap();
    assert_eq!(s.schema_version().unwrap(), 3);
    let by_id = |id: [u8; 16]| {
        s.outbox()
            .unwrap()
            .into_iter()
            .find(|e| e.id == id)
            .unwrap()
    };
    // Numbered after the 4 already given out, in the conversation's order.
    assert_eq!(by_id([9; 16]).payload, OutboxPayload::Text { n: 5 });
    assert_eq!(by_id([1; 16]).payload, OutboxPayload::Text { n: 6 });
    assert_eq!(by_id([5; 16]).payload, OutboxPayload::Sealed(vec![7; 40]));
    assert_eq!(
        (by_id([1; 16]).attempts, by_id([1; 16]).next_attempt_ms),
        (2, 77)
    );
    assert_eq!(s.conversation(phone).unwrap().unwrap().sent_n, 6);
}
