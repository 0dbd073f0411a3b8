//! The relay database on disk behaves exactly like its in-memory model under random batches,
//! including its deletion-hash and expiry indexes, and keeps acknowledged writes across reopen.

use instaconnect_store::relay::MailboxId;
use instaconnect_store::{MemRelayStore, RelayOp, RelayStore, SledRelayStore};
use instaconnect_wire::records::{MailboxRecord, RelayEnvelope, RelayTotals};
use proptest::prelude::*;

fn mailbox() -> impl Strategy<Value = MailboxId> {
    (0u8..3).prop_map(|i| [i; 32])
}

fn op() -> impl Strategy<Value = RelayOp> {
    prop_oneof![
        (mailbox(), 0u64..5).prop_map(|(m, n)| RelayOp::PutMailbox(
            m,
            MailboxRecord {
                created_at_ms: 1,
                next_seq: n,
                count: n,
                bytes: n * 10,
            }
        )),
        mailbox().prop_map(RelayOp::RemoveMailbox),
        (mailbox(), 0u64..6, 0u8..3, 0u64..4, 0usize..40).prop_map(|(m, seq, h, at, len)| {
            RelayOp::PutEnvelope {
                mailbox: m,
                seq,
                envelope: RelayEnvelope {
                    deposited_at_ms: at * 700,
                    deletion_hash: [h; 32],
                    envelope: vec![h; len],
                },
            }
        }),
        // With the hash it was put with, mostly (both stores trust the caller's hash).
        (mailbox(), 0u64..6, 0u8..4).prop_map(|(m, seq, h)| RelayOp::RemoveEnvelope {
            mailbox: m,
            seq,
            deletion_hash: [h; 32]
        }),
        (0u64..5, mailbox()).prop_map(|(b, m)| RelayOp::RemoveExpiryMark {
            bucket_ms: b * 1_000,
            mailbox: m
        }),
        (0u64..9).prop_map(|n| RelayOp::PutTotals(RelayTotals {
            mailboxes: n,
            envelopes: n,
            bytes: n
        })),
    ]
}

fn snapshot(s: &dyn RelayStore) -> String {
    let mut out = format!("{:?}", s.totals().unwrap());
    for i in 0u8..3 {
        let m = [i; 32];
        out.push_str(&format!("\n{:?}", s.mailbox(&m).unwrap()));
        out.push_str(&format!("\n{:?}", s.envelopes(&m, 0, 100).unwrap()));
        out.push_str(&format!("\n{:?}", s.envelopes(&m, 2, 2).unwrap()));
        out.push_str(&format!(
            "\n{:?}",
            s.envelope_metas(&m, 0, u64::MAX, 100).unwrap()
        ));
        out.push_str(&format!("\n{:?}", s.envelope_metas(&m, 1, 4, 2).unwrap()));
    }
    for h in 0u8..4 {
        out.push_str(&format!("\n{:?}", s.by_deletion_hash(&[h; 32]).unwrap()));
    }
    out.push_str(&format!("\n{:?}", s.expiry_marks(100).unwrap()));
    out.push_str(&format!("\n{:?}", s.expiry_marks(2).unwrap()));
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]
    #[test]
    fn sled_relay_store_matches_model(batches in proptest::collection::vec((proptest::collection::vec(op(), 0..6), any::<bool>()), 1..10)) {
        let dir = tempfile::tempdir().unwrap();
        let model = MemRelayStore::new();
        {
            let sled = SledRelayStore::open(dir.path()).unwrap();
            for (batch, deferred) in &batches {
                // Deferred batches wait in memory for a later flush; reads see them at once.
                if *deferred {
                    sled.apply_deferred(batch.clone()).unwrap();
                } else {
                    sled.apply(batch.clone()).unwrap();
                }
                model.apply(batch.clone()).unwrap();
                prop_assert_eq!(snapshot(&sled), snapshot(&model));
            }
            sled.flush().unwrap();
        }
        let reopened = SledRelayStore::open(dir.path()).unwrap();
        prop_assert_eq!(snapshot(&reopened), snapshot(&model));
    }
}

#[test]
fn a_device_database_is_not_taken_for_a_relay_database() {
    let dir = tempfile::tempdir().unwrap();
    {
        let _device = instaconnect_store::SledStore::open(dir.path()).unwrap();
    }
    let err = SledRelayStore::open(dir.path()).err().expect("refused");
    assert!(err.to_string().contains("no schema version"), "{err}");
}
