//! The relay's mailbox logic with an in-memory store and virtual time: deposits, fetches and
//! deletes with signed receipts; purges by deletion secret (a forged one deletes nothing);
//! owner signatures, freshness and replay; quotas, rate limits, size limits and expiry, each
//! refused without changing anything; notifications to subscribers.

use std::sync::Arc;

use instaconnect_core::relay::{Relay, RelayConfig, RelayOutput};
use instaconnect_crypto::{
    check_batch_receipt, deletion_hash, envelope_hash, verify_receipt, Identity, MailboxKey,
};
use instaconnect_store::{MemRelayStore, RelayStore};
use instaconnect_wire::mailbox::{
    DepositItem, MailboxRequest, MailboxResponse, OwnerOp, Receipted, Refusal, RefusedItem,
    StoredEnvelope,
};
use proptest::prelude::*;

const T0: u64 = 1_800_000_000_000;

struct Bench {
    relay: Relay,
    identity: instaconnect_crypto::IdentityKey,
    store: Arc<MemRelayStore>,
    now: u64,
    nonce: u8,
}

fn bench(config: RelayConfig) -> Bench {
    let store = Arc::new(MemRelayStore::new());
    let id = Identity::generate();
    let identity = id.public();
    Bench {
        relay: Relay::new(store.clone(), id, config),
        identity,
        store,
        now: T0,
        nonce: 0,
    }
}

impl Bench {
    fn send(&mut self, client: &str, r: &MailboxRequest) -> MailboxResponse {
        self.raw(client, &r.encode().unwrap())
    }

    fn raw(&mut self, client: &str, frame: &[u8]) -> MailboxResponse {
        self.relay.handle_request(self.now, client, 7, frame);
        assert!(
            self.relay.poll_output().is_none(),
            "nothing leaves before the commit"
        );
        self.relay.commit().unwrap();
        let mut answer = None;
        while let Some(o) = self.relay.poll_output() {
            if let RelayOutput::Respond { channel, frame } = o {
                assert_eq!(channel, 7);
                answer = Some(MailboxResponse::decode(&frame).unwrap());
            }
        }
        answer.expect("an answer")
    }

    fn auth(&mut self, key: &MailboxKey, op: OwnerOp<'_>) -> instaconnect_wire::mailbox::OwnerAuth {
        self.nonce += 1;
        key.authorize(op, self.now, [self.nonce; 16]).unwrap()
    }

    fn create(&mut self, key: &MailboxKey) {
        let auth = self.auth(key, OwnerOp::Create);
        let r = self.send(
            "owner",
            &MailboxRequest::Create {
                mailbox: key.id(),
                auth,
            },
        );
        self.receipt(r);
    }

    fn deposit(&mut self, key: &MailboxKey, body: &[u8], secret: [u8; 32]) -> MailboxResponse {
        self.send(
            "depositor",
            &MailboxRequest::Deposit {
                mailbox: key.id(),
                envelope: body.to_vec(),
                deletion_hash: deletion_hash(&secret),
            },
        )
    }

    fn fetch(&mut self, key: &MailboxKey) -> Vec<StoredEnvelope> {
        let auth = self.auth(
            key,
            OwnerOp::Fetch {
                after: 0,
                limit: 256,
            },
        );
        match self.send(
            "owner",
            &MailboxRequest::Fetch {
                mailbox: key.id(),
                after: 0,
                limit: 256,
                auth,
            },
        ) {
            MailboxResponse::Envelopes { items, .. } => items,
            other => panic!("fetch: {other:?}"),
        }
    }

    /// The answer must be a receipt from this relay with a valid signature.
    fn receipt(&self, r: MailboxResponse) -> Receipted {
        match r {
            MailboxResponse::Receipt(rc) => {
                verify_receipt(&rc, Some(&self.identity)).expect("a valid receipt");
                rc.what
            }
            other => panic!("expected a receipt, got {other:?}"),
        }
    }
}

fn refused(r: MailboxResponse) -> Refusal {
    match r {
        MailboxResponse::Refused(why) => why,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn deposit_fetch_delete_with_signed_receipts() {
    let mut b = bench(RelayConfig::default());
    let key = MailboxKey::generate();
    b.create(&key);
    for i in 0..3u8 {
        let r = b.deposit(&key, &[i; 100], [i; 32]);
        match b.receipt(r) {
            Receipted::Deposited { seq, mailbox, .. } => {
                assert_eq!(seq, u64::from(i) + 1);
                assert_eq!(mailbox, key.id());
            }
            other => panic!("{other:?}"),
        }
    }
    let got = b.fetch(&key);
    assert_eq!(got.len(), 3);
    assert_eq!(got[2].envelope, vec![2; 100]);
    let seqs = vec![got[0].seq, got[1].seq];
    let auth = b.auth(&key, OwnerOp::Delete { seqs: &seqs });
    let r = b.send(
        "owner",
        &MailboxRequest::Delete {
            mailbox: key.id(),
            seqs: seqs.clone(),
            auth,
        },
    );
    assert_eq!(
        b.receipt(r),
        Receipted::Deleted {
            mailbox: key.id(),
            seqs
        }
    );
    assert_eq!(b.fetch(&key).len(), 1);
    let t = b.store.totals().unwrap();
    assert_eq!((t.mailboxes, t.envelopes, t.bytes), (1, 1, 100));
}

#[test]
fn a_purge_needs_the_deletion_secret_and_a_forged_one_deletes_nothing() {
    let mut b = bench(RelayConfig::default());
    let key = MailboxKey::generate();
    b.create(&key);
    b.deposit(&key, b"sealed one", [1; 32]);
    b.deposit(&key, b"sealed two", [2; 32]);
    let forged = b.send(
        "thief",
        &MailboxRequest::Purge {
            secrets: vec![[9; 32]],
        },
    );
    b.receipt(forged);
    assert_eq!(b.fetch(&key).len(), 2, "a wrong secret purges nothing");
    let r = b.send(
        "depositor",
        &MailboxRequest::Purge {
            secrets: vec![[1; 32]],
        },
    );
    assert_eq!(
        b.receipt(r),
        Receipted::Purged {
            deletion_hashes: vec![deletion_hash(&[1; 32])]
        }
    );
    let left = b.fetch(&key);
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].envelope, b"sealed two");
}

#[test]
fn owner_requests_need_the_mailbox_key_a_fresh_time_and_a_new_nonce() {
    let mut b = bench(RelayConfig::default());
    let key = MailboxKey::generate();
    b.create(&key);
    b.deposit(&key, b"secret stuff", [1; 32]);
    let other = MailboxKey::generate();
    let auth = b.auth(
        &other,
        OwnerOp::Fetch {
            after: 0,
            limit: 10,
        },
    );
    let steal = MailboxRequest::Fetch {
        mailbox: key.id(),
        after: 0,
        limit: 10,
        auth,
    };
    assert_eq!(refused(b.send("thief", &steal)), Refusal::BadSignature);
    let auth = b.auth(&key, OwnerOp::PurgeMailbox);
    let purge = MailboxRequest::PurgeMailbox {
        mailbox: key.id(),
        auth,
    };
    let r = b.send("owner", &purge);
    b.receipt(r);
    // The same signed request again is a replay.
    assert_eq!(refused(b.send("thief", &purge)), Refusal::Stale);
    // A request signed long ago is stale.
    let old = key
        .authorize(OwnerOp::Create, T0 - 3_600_000, [200; 16])
        .unwrap();
    let r = b.send(
        "owner",
        &MailboxRequest::Create {
            mailbox: key.id(),
            auth: old,
        },
    );
    assert_eq!(refused(r), Refusal::Stale);
    // The purged mailbox is gone: deposits are refused.
    assert_eq!(
        refused(b.deposit(&key, b"late", [3; 32])),
        Refusal::UnknownMailbox
    );
    assert_eq!(b.store.totals().unwrap().envelopes, 0);
}

#[test]
fn quotas_and_size_limits_refuse_and_change_nothing() {
    let mut b = bench(RelayConfig {
        mailbox_max_envelopes: 2,
        mailbox_max_bytes: 1_000,
        total_max_bytes: 1_500,
        max_envelope_bytes: 800,
        ..RelayConfig::default()
    });
    let (k1, k2) = (MailboxKey::generate(), MailboxKey::generate());
    b.create(&k1);
    b.create(&k2);
    b.deposit(&k1, &[1; 10], [1; 32]);
    b.deposit(&k1, &[2; 10], [2; 32]);
    assert_eq!(
        refused(b.deposit(&k1, &[3; 10], [3; 32])),
        Refusal::MailboxFull
    );
    assert_eq!(
        refused(b.deposit(&k2, &[4; 801], [4; 32])),
        Refusal::TooLarge
    );
    b.deposit(&k2, &[5; 800], [5; 32]);
    let k3 = MailboxKey::generate();
    b.create(&k3);
    assert_eq!(
        refused(b.deposit(&k3, &[6; 700], [6; 32])),
        Refusal::DiskFull
    );
    let unknown = MailboxKey::generate();
    assert_eq!(
        refused(b.deposit(&unknown, &[7; 10], [7; 32])),
        Refusal::UnknownMailbox
    );
    assert_eq!(b.fetch(&k1).len(), 2);
    assert_eq!(b.fetch(&k2).len(), 1);
    let t = b.store.totals().unwrap();
    assert_eq!((t.envelopes, t.bytes), (3, 820));
    assert_eq!(b.relay.metrics().rejections["mailbox_full"], 1);
    assert_eq!(b.relay.metrics().rejections["disk_full"], 1);
}

#[test]
fn a_client_over_its_rate_is_refused_until_tokens_come_back() {
    let mut b = bench(RelayConfig {
        rate_burst: 3,
        rate_per_second: 1,
        ..RelayConfig::default()
    });
    let key = MailboxKey::generate();
    b.create(&key); // the owner's client, not the flooder's
    for i in 0..3u8 {
        let r = b.deposit(&key, &[i; 4], [i; 32]);
        b.receipt(r);
    }
    assert_eq!(
        refused(b.deposit(&key, &[9; 4], [9; 32])),
        Refusal::RateLimited
    );
    // Another client is served meanwhile.
    let r = b.send("someone else", &MailboxRequest::Purge { secrets: vec![] });
    b.receipt(r);
    b.now += 1_000;
    let r = b.deposit(&key, &[8; 4], [8; 32]);
    b.receipt(r);
    assert_eq!(b.fetch(&key).len(), 4);
}

#[test]
fn envelopes_expire_after_the_ttl() {
    let mut b = bench(RelayConfig {
        ttl_ms: 60_000,
        ..RelayConfig::default()
    });
    let key = MailboxKey::generate();
    b.create(&key);
    b.deposit(&key, b"old", [1; 32]);
    b.now += 30_000;
    b.deposit(&key, b"newer", [2; 32]);
    // Expiry goes by the second of deposit: at most a second late, never early.
    assert_eq!(b.relay.poll_timeout(b.now), T0 + 60_999);
    b.now = T0 + 60_000;
    assert_eq!(b.relay.handle_timeout(b.now).unwrap(), 0);
    b.now = T0 + 60_999;
    assert_eq!(b.relay.handle_timeout(b.now).unwrap(), 1);
    assert_eq!(b.relay.poll_timeout(b.now), T0 + 30_000 + 60_999);
    let left = b.fetch(&key);
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].envelope, b"newer");
    assert!(b
        .store
        .by_deletion_hash(&deletion_hash(&[1; 32]))
        .unwrap()
        .is_empty());
    assert_eq!(b.relay.metrics().expired, 1);
}

fn item(key: &MailboxKey, body: &[u8], secret: u8) -> DepositItem {
    DepositItem {
        mailbox: key.id(),
        envelope: body.to_vec(),
        deletion_hash: deletion_hash(&[secret; 32]),
    }
}

impl Bench {
    /// Deposits a batch; returns each item's seq (checked against the receipt) and the
    /// refusals.
    fn batch(&mut self, items: Vec<DepositItem>) -> (Vec<Option<u64>>, Vec<RefusedItem>) {
        let sent: Vec<([u8; 32], [u8; 32])> = items
            .iter()
            .map(|i| (i.mailbox, envelope_hash(&i.envelope)))
            .collect();
        match self.send("depositor", &MailboxRequest::DepositBatch { items }) {
            MailboxResponse::Deposits { receipt, refused } => (
                check_batch_receipt(&receipt, &self.identity, &sent).expect("a valid receipt"),
                refused,
            ),
            other => panic!("expected deposits, got {other:?}"),
        }
    }

    fn page(&mut self, key: &MailboxKey, after: u64, limit: u32) -> (Vec<StoredEnvelope>, bool) {
        let auth = self.auth(key, OwnerOp::FetchPage { after, limit });
        match self.send(
            "owner",
            &MailboxRequest::FetchPage {
                mailbox: key.id(),
                after,
                limit,
                auth,
            },
        ) {
            MailboxResponse::Envelopes { items, more } => (items, more),
            other => panic!("fetch page: {other:?}"),
        }
    }

    fn delete_range(&mut self, key: &MailboxKey, after: u64, through: u64) -> MailboxResponse {
        let auth = self.auth(key, OwnerOp::DeleteRange { after, through });
        self.send(
            "owner",
            &MailboxRequest::DeleteRange {
                mailbox: key.id(),
                after,
                through,
                auth,
            },
        )
    }
}

#[test]
fn a_batch_is_stored_under_one_receipt_and_its_refused_items_change_nothing() {
    let mut b = bench(RelayConfig {
        mailbox_max_envelopes: 2,
        max_envelope_bytes: 800,
        ..RelayConfig::default()
    });
    let (k1, k2, unknown) = (
        MailboxKey::generate(),
        MailboxKey::generate(),
        MailboxKey::generate(),
    );
    b.create(&k1);
    b.create(&k2);
    let (seqs, refused) = b.batch(vec![
        item(&k1, b"one", 1),
        item(&k1, b"two", 2),
        item(&k1, b"three", 3),
        item(&unknown, b"four", 4),
        item(&k2, &[5; 801], 5),
        item(&k2, b"six", 6),
    ]);
    assert_eq!(seqs, vec![Some(1), Some(2), None, None, None, Some(1)]);
    let why: Vec<(u32, Refusal)> = refused.iter().map(|r| (r.index, r.why)).collect();
    assert_eq!(
        why,
        vec![
            (2, Refusal::MailboxFull),
            (3, Refusal::UnknownMailbox),
            (4, Refusal::TooLarge)
        ]
    );
    let got: Vec<Vec<u8>> = b.fetch(&k1).into_iter().map(|e| e.envelope).collect();
    assert_eq!(got, vec![b"one".to_vec(), b"two".to_vec()]);
    assert_eq!(b.fetch(&k2).len(), 1);
    let t = b.store.totals().unwrap();
    assert_eq!((t.envelopes, t.bytes), (3, 9));
    assert!(b
        .store
        .by_deletion_hash(&deletion_hash(&[3; 32]))
        .unwrap()
        .is_empty());
    assert_eq!(b.relay.metrics().deposits, 3);
    assert_eq!(b.relay.metrics().rejections["mailbox_full"], 1);
    // A purge by secret finds what a batch stored.
    let r = b.send(
        "depositor",
        &MailboxRequest::Purge {
            secrets: vec![[6; 32]],
        },
    );
    b.receipt(r);
    assert!(b.fetch(&k2).is_empty());
    // Nothing at all stored: still a signed (empty) receipt, and the refusals.
    let (seqs, refused) = b.batch(vec![item(&unknown, b"x", 9)]);
    assert_eq!((seqs, refused.len()), (vec![None], 1));
    assert_eq!(
        b.send("depositor", &MailboxRequest::DepositBatch { items: vec![] }),
        MailboxResponse::Malformed
    );
}

#[test]
fn a_batch_costs_its_deposits_in_rate_tokens() {
    let mut b = bench(RelayConfig {
        rate_burst: 3,
        rate_per_second: 1,
        ..RelayConfig::default()
    });
    let key = MailboxKey::generate();
    b.create(&key);
    let (seqs, _) = b.batch(vec![item(&key, b"a", 1), item(&key, b"b", 2)]);
    assert_eq!(seqs, vec![Some(1), Some(2)]);
    let r = b.deposit(&key, b"c", [3; 32]);
    b.receipt(r);
    assert_eq!(
        refused(b.send(
            "depositor",
            &MailboxRequest::DepositBatch {
                items: vec![item(&key, b"d", 4)]
            }
        )),
        Refusal::RateLimited
    );
}

#[test]
fn pages_are_larger_than_fetches_and_a_range_delete_removes_what_they_returned() {
    let mut b = bench(RelayConfig::default());
    let key = MailboxKey::generate();
    b.create(&key);
    for chunk in 0..3u8 {
        let items = (0..200u8)
            .map(|i| item(&key, &[chunk, i], i.wrapping_add(chunk)))
            .collect();
        let (seqs, refused) = b.batch(items);
        assert!(refused.is_empty() && seqs.iter().all(Option::is_some));
    }
    assert_eq!(
        b.fetch(&key).len(),
        256,
        "the old fetch keeps its page size"
    );
    let (page, more) = b.page(&key, 0, 4096);
    assert_eq!((page.len(), more), (600, false));
    let (page, more) = b.page(&key, 100, 250);
    assert_eq!((page.len(), more), (250, true));
    assert_eq!(page[0].seq, 101);

    let r = b.delete_range(&key, 0, 350);
    assert_eq!(
        b.receipt(r),
        Receipted::DeletedRange {
            mailbox: key.id(),
            after: 0,
            through: 350
        }
    );
    let (left, _) = b.page(&key, 0, 4096);
    assert_eq!(left.len(), 250);
    assert_eq!(left[0].seq, 351);
    let t = b.store.totals().unwrap();
    assert_eq!((t.envelopes, t.bytes), (250, 500));
    assert_eq!(b.store.mailbox(&key.id()).unwrap().unwrap().count, 250);
    // Index entries went with them.
    assert!(b
        .store
        .by_deletion_hash(&deletion_hash(&[5; 32]))
        .unwrap()
        .iter()
        .all(|(_, s)| *s > 350));
    // Again, and past the end: nothing more, still a receipt.
    let r = b.delete_range(&key, 0, 350);
    b.receipt(r);
    let r = b.delete_range(&key, 350, 10_000);
    b.receipt(r);
    assert_eq!(b.store.totals().unwrap().envelopes, 0);
    // Another owner's key cannot delete a range.
    let other = MailboxKey::generate();
    let auth = b.auth(
        &other,
        OwnerOp::DeleteRange {
            after: 0,
            through: 9,
        },
    );
    let r = b.send(
        "owner",
        &MailboxRequest::DeleteRange {
            mailbox: key.id(),
            after: 0,
            through: 9,
            auth,
        },
    );
    assert_eq!(refused(r), Refusal::BadSignature);
}

#[test]
fn expiry_marks_expire_each_mailbox_and_outlive_deleted_envelopes_harmlessly() {
    let mut b = bench(RelayConfig {
        ttl_ms: 10_000,
        ..RelayConfig::default()
    });
    let (k1, k2) = (MailboxKey::generate(), MailboxKey::generate());
    b.create(&k1);
    b.create(&k2);
    b.batch(vec![item(&k1, b"a", 1), item(&k2, b"b", 2)]);
    b.now += 2_500;
    b.batch(vec![item(&k1, b"c", 3)]);
    // The owner of k2 takes its envelope early: its mark stays, and is dropped at its time.
    let r = b.delete_range(&k2, 0, 1);
    b.receipt(r);
    b.now = T0 + 10_999;
    assert_eq!(b.relay.handle_timeout(b.now).unwrap(), 1);
    assert_eq!(b.page(&k1, 0, 10).0.len(), 1);
    assert_eq!(b.store.expiry_marks(10).unwrap().len(), 1);
    assert_eq!(b.relay.poll_timeout(b.now), T0 + 2_000 + 10_999);
    b.now = T0 + 2_000 + 10_999;
    assert_eq!(b.relay.handle_timeout(b.now).unwrap(), 1);
    assert!(b.store.expiry_marks(10).unwrap().is_empty());
    assert_eq!(b.store.totals().unwrap().envelopes, 0);
    assert_eq!(b.relay.metrics().expired, 2);
}

#[test]
fn subscribers_are_notified_of_deposits_after_the_commit() {
    let mut b = bench(RelayConfig::default());
    let key = MailboxKey::generate();
    b.create(&key);
    let auth = b.auth(&key, OwnerOp::Subscribe);
    let r = b.send(
        "owner-conn",
        &MailboxRequest::Subscribe {
            mailboxes: vec![(key.id(), auth)],
        },
    );
    assert_eq!(r, MailboxResponse::Subscribed);
    let frame = MailboxRequest::Deposit {
        mailbox: key.id(),
        envelope: vec![1; 10],
        deletion_hash: [0; 32],
    }
    .encode()
    .unwrap();
    b.relay.handle_request(b.now, "depositor", 1, &frame);
    assert!(b.relay.poll_output().is_none());
    b.relay.commit().unwrap();
    let outs: Vec<RelayOutput> = std::iter::from_fn(|| b.relay.poll_output()).collect();
    assert!(outs.iter().any(|o| matches!(o,
        RelayOutput::Notify { client, frame }
            if client == "owner-conn"
            && MailboxRequest::decode(frame).unwrap() == MailboxRequest::Notify { mailbox: key.id() })));
    b.relay.disconnected("owner-conn");
    b.relay.handle_request(b.now, "depositor", 2, &frame);
    b.relay.commit().unwrap();
    let outs: Vec<RelayOutput> = std::iter::from_fn(|| b.relay.poll_output()).collect();
    assert!(!outs.iter().any(|o| matches!(o, RelayOutput::Notify { .. })));
}

proptest! {
    #[test]
    fn garbage_is_malformed_and_changes_nothing(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        let mut b = bench(RelayConfig::default());
        let r = b.raw("fuzzer", &bytes);
        let ok = matches!(
            r,
            MailboxResponse::Malformed
                | MailboxResponse::UnsupportedVersion { .. }
                | MailboxResponse::Refused(_)
        );
        prop_assert!(ok, "{:?}", r);
        prop_assert_eq!(b.store.totals().unwrap().envelopes, 0);
    }
}
