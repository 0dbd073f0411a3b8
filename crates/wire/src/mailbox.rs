//! Protocol v1 of `/instaconnect/mailbox/1`: what devices and relays say about mailboxes.
//!
//! A mailbox belongs to one recipient device and one of its contacts; its id is the public half
//! of an Ed25519 key pair the owner made for it alone (so two mailboxes of one person cannot be
//! linked by the relay). Only the owner can read, delete, purge or subscribe: those requests
//! carry an [`OwnerAuth`], a signature by the mailbox key over [`MailboxRequest::signed_bytes`]
//! (domain-separated, with a timestamp and a nonce the relay checks for freshness and replay).
//! Anyone who knows the id can deposit a sealed envelope, with the hash of a deletion secret
//! only the depositor knows; revealing the secret later purges the envelope. The relay answers
//! deposits and deletions with [`Receipt`]s signed by its own identity key.
//!
//! Frames start with the protocol version, like `/instaconnect/msg/1`, and are size-checked
//! before decoding. Signature checks live in `crates/crypto`; this module only defines bytes.

use serde::{Deserialize, Serialize};

use crate::codec::{decode_with_limit, encode, WireError};
use crate::proto::{encode_versioned, split_version, ProtoError};

/// The libp2p protocol name.
pub const MAILBOX_PROTOCOL: &str = "/instaconnect/mailbox/1";
/// Largest mailbox frame (a fetch answer carries several envelopes).
pub const MAX_MAILBOX_FRAME_BYTES: usize = 1024 * 1024;
/// Largest sealed envelope a relay takes (the largest padding bucket).
pub const MAX_ENVELOPE_BYTES: usize = 64 * 1024;
/// Most envelopes one fetch returns, and most sequence numbers one delete names.
pub const MAX_BATCH: usize = 256;
/// Most envelopes one [`MailboxRequest::DepositBatch`] carries (the frame limit usually stops
/// a batch first: about 950 envelopes of 1 KiB fit in one).
pub const MAX_DEPOSIT_ITEMS: usize = 1024;
/// Most envelopes one [`MailboxRequest::FetchPage`] returns (the relay also stops a page
/// before the frame limit).
pub const MAX_PAGE_ITEMS: usize = 4096;
/// Widest span of sequence numbers one [`MailboxRequest::DeleteRange`] covers.
pub const MAX_DELETE_SPAN: u64 = 65_536;
/// Most deletion secrets one purge reveals.
pub const MAX_PURGE_SECRETS: usize = 1024;
/// Most mailboxes one subscription names.
pub const MAX_SUBSCRIBE: usize = 256;
/// Domain separation of every owner signature.
pub const OWNER_SIGNATURE_DOMAIN: &[u8] = b"instaconnect mailbox owner v1";
/// Domain separation of every relay receipt signature.
pub const RECEIPT_SIGNATURE_DOMAIN: &[u8] = b"instaconnect mailbox receipt v1";

/// A mailbox id: the owner's Ed25519 public key for this mailbox.
pub type MailboxId = [u8; 32];

/// Proof that the mailbox owner sent this request, recently, once.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OwnerAuth {
    pub timestamp_ms: u64,
    pub nonce: [u8; 16],
    #[serde(with = "sig")]
    pub signature: [u8; 64],
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MailboxRequest {
    /// Open a mailbox (idempotent).
    Create { mailbox: MailboxId, auth: OwnerAuth },
    /// Leave a sealed envelope; `deletion_hash` is a BLAKE3 hash of a secret the depositor keeps
    /// (`instaconnect_crypto::deletion_hash`).
    Deposit {
        mailbox: MailboxId,
        #[serde(with = "crate::secret::serde_bytes_compat")]
        envelope: Vec<u8>,
        deletion_hash: [u8; 32],
    },
    /// The owner reads envelopes with sequence numbers above `after`, oldest first.
    Fetch {
        mailbox: MailboxId,
        after: u64,
        limit: u32,
        auth: OwnerAuth,
    },
    /// The owner deletes envelopes it has stored.
    Delete {
        mailbox: MailboxId,
        seqs: Vec<u64>,
        auth: OwnerAuth,
    },
    /// A depositor takes back what it left, by revealing the deletion secrets.
    Purge { secrets: Vec<[u8; 32]> },
    /// The owner removes the mailbox and everything in it.
    PurgeMailbox { mailbox: MailboxId, auth: OwnerAuth },
    /// The owner asks to be told of new deposits while connected ([`MailboxRequest::Notify`]
    /// from the relay).
    Subscribe {
        mailboxes: Vec<(MailboxId, OwnerAuth)>,
    },
    /// Relay to subscriber: new envelopes wait in this mailbox.
    Notify { mailbox: MailboxId },
    // New variants go last: postcard numbers variants in order, so older frames stay valid.
    /// Many deposits in one request (in one or several mailboxes), answered with
    /// [`MailboxResponse::Deposits`]: one signed receipt for those stored, a refusal for each
    /// of the others.
    DepositBatch { items: Vec<DepositItem> },
    /// Like [`MailboxRequest::Fetch`], but pages of up to [`MAX_PAGE_ITEMS`] (and the frame
    /// limit) instead of [`MAX_BATCH`].
    FetchPage {
        mailbox: MailboxId,
        after: u64,
        limit: u32,
        auth: OwnerAuth,
    },
    /// The owner deletes every envelope with a sequence number in `after + 1 ..= through`
    /// (a span of at most [`MAX_DELETE_SPAN`]): what one or more fetches returned.
    DeleteRange {
        mailbox: MailboxId,
        after: u64,
        through: u64,
        auth: OwnerAuth,
    },
}

/// One deposit of a [`MailboxRequest::DepositBatch`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DepositItem {
    pub mailbox: MailboxId,
    #[serde(with = "crate::secret::serde_bytes_compat")]
    pub envelope: Vec<u8>,
    pub deletion_hash: [u8; 32],
}

/// One stored deposit of a batch, as its receipt names it: the item's position in the
/// request, and what [`Receipted::Deposited`] says of a single deposit.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DepositedItem {
    pub index: u32,
    pub mailbox: MailboxId,
    pub seq: u64,
    pub envelope_hash: [u8; 32],
}

/// One refused deposit of a batch (nothing of it was stored).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefusedItem {
    pub index: u32,
    pub why: Refusal,
}

/// One stored envelope as a fetch returns it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredEnvelope {
    pub seq: u64,
    pub deposited_at_ms: u64,
    #[serde(with = "crate::secret::serde_bytes_compat")]
    pub envelope: Vec<u8>,
}

/// What a receipt certifies.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Receipted {
    Created {
        mailbox: MailboxId,
    },
    /// Stored durably under `seq`; `envelope_hash` is the envelope's BLAKE3 hash
    /// (`instaconnect_crypto::envelope_hash`).
    Deposited {
        mailbox: MailboxId,
        seq: u64,
        envelope_hash: [u8; 32],
    },
    Deleted {
        mailbox: MailboxId,
        seqs: Vec<u64>,
    },
    /// The envelopes whose deletion hashes these are no longer held (deleted now or before).
    Purged {
        deletion_hashes: Vec<[u8; 32]>,
    },
    MailboxPurged {
        mailbox: MailboxId,
    },
    /// The deposits of a batch that are stored durably, in request order.
    DepositedBatch {
        items: Vec<DepositedItem>,
    },
    /// Nothing with a sequence number in `after + 1 ..= through` is held any more.
    DeletedRange {
        mailbox: MailboxId,
        after: u64,
        through: u64,
    },
}

/// A statement signed by the relay's identity (Ed25519) over [`Receipt::signed_bytes`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receipt {
    /// The relay's Ed25519 identity public key (its libp2p peer id's key).
    pub relay: [u8; 32],
    pub at_ms: u64,
    pub what: Receipted,
    #[serde(with = "sig")]
    pub signature: [u8; 64],
}

/// Why a relay refused a request; nothing changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Refusal {
    UnknownMailbox,
    BadSignature,
    /// The timestamp is outside the relay's window, or the nonce was used.
    Stale,
    MailboxFull,
    DiskFull,
    RateLimited,
    TooLarge,
    TooMany,
    /// The relay could not do it now (storage error); try again later.
    Unavailable,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MailboxResponse {
    Receipt(Receipt),
    Envelopes {
        items: Vec<StoredEnvelope>,
        /// More are waiting after the last one.
        more: bool,
    },
    Subscribed,
    Notified,
    Refused(Refusal),
    Malformed,
    UnsupportedVersion {
        supported: u16,
    },
    /// The answer to a [`MailboxRequest::DepositBatch`]: `receipt` (a
    /// [`Receipted::DepositedBatch`]) names the items stored, `refused` the others.
    Deposits {
        receipt: Receipt,
        refused: Vec<RefusedItem>,
    },
}

#[derive(Serialize)]
struct OwnerSigned<'a> {
    domain: &'a [u8],
    op: u8,
    mailbox: &'a MailboxId,
    after: u64,
    limit: u32,
    seqs: &'a [u64],
    timestamp_ms: u64,
    nonce: &'a [u8; 16],
}

#[derive(Serialize)]
struct ReceiptSigned<'a> {
    domain: &'a [u8],
    relay: &'a [u8; 32],
    at_ms: u64,
    what: &'a Receipted,
}

/// The bytes an owner signs for a request on `mailbox`; `op` names the request kind.
fn owner_bytes(
    op: u8,
    mailbox: &MailboxId,
    after: u64,
    limit: u32,
    seqs: &[u64],
    timestamp_ms: u64,
    nonce: &[u8; 16],
) -> Result<Vec<u8>, WireError> {
    encode(&OwnerSigned {
        domain: OWNER_SIGNATURE_DOMAIN,
        op,
        mailbox,
        after,
        limit,
        seqs,
        timestamp_ms,
        nonce,
    })
}

/// An owner-signed request's parts, for signing and verification.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OwnerOp<'a> {
    Create,
    Fetch { after: u64, limit: u32 },
    Delete { seqs: &'a [u64] },
    PurgeMailbox,
    Subscribe,
    FetchPage { after: u64, limit: u32 },
    DeleteRange { after: u64, through: u64 },
}

impl OwnerOp<'_> {
    /// The bytes the mailbox key signs for this operation at this time with this nonce.
    pub fn signed_bytes(
        &self,
        mailbox: &MailboxId,
        timestamp_ms: u64,
        nonce: &[u8; 16],
    ) -> Result<Vec<u8>, WireError> {
        let through;
        let (op, after, limit, seqs): (u8, u64, u32, &[u64]) = match *self {
            OwnerOp::Create => (1, 0, 0, &[]),
            OwnerOp::Fetch { after, limit } => (2, after, limit, &[]),
            OwnerOp::Delete { seqs } => (3, 0, 0, seqs),
            OwnerOp::PurgeMailbox => (4, 0, 0, &[]),
            OwnerOp::Subscribe => (5, 0, 0, &[]),
            OwnerOp::FetchPage { after, limit } => (6, after, limit, &[]),
            OwnerOp::DeleteRange { after, through: t } => {
                through = [t];
                (7, after, 0, &through)
            }
        };
        owner_bytes(op, mailbox, after, limit, seqs, timestamp_ms, nonce)
    }
}

impl MailboxRequest {
    /// The owner-signed parts of this request: (mailbox, operation, auth) for each one.
    pub fn owner_parts(&self) -> Vec<(&MailboxId, OwnerOp<'_>, &OwnerAuth)> {
        match self {
            MailboxRequest::Create { mailbox, auth } => vec![(mailbox, OwnerOp::Create, auth)],
            MailboxRequest::Fetch {
                mailbox,
                after,
                limit,
                auth,
            } => vec![(
                mailbox,
                OwnerOp::Fetch {
                    after: *after,
                    limit: *limit,
                },
                auth,
            )],
            MailboxRequest::Delete {
                mailbox,
                seqs,
                auth,
            } => vec![(mailbox, OwnerOp::Delete { seqs }, auth)],
            MailboxRequest::PurgeMailbox { mailbox, auth } => {
                vec![(mailbox, OwnerOp::PurgeMailbox, auth)]
            }
            MailboxRequest::Subscribe { mailboxes } => mailboxes
                .iter()
                .map(|(m, a)| (m, OwnerOp::Subscribe, a))
                .collect(),
            MailboxRequest::FetchPage {
                mailbox,
                after,
                limit,
                auth,
            } => vec![(
                mailbox,
                OwnerOp::FetchPage {
                    after: *after,
                    limit: *limit,
                },
                auth,
            )],
            MailboxRequest::DeleteRange {
                mailbox,
                after,
                through,
                auth,
            } => vec![(
                mailbox,
                OwnerOp::DeleteRange {
                    after: *after,
                    through: *through,
                },
                auth,
            )],
            MailboxRequest::Deposit { .. }
            | MailboxRequest::DepositBatch { .. }
            | MailboxRequest::Purge { .. }
            | MailboxRequest::Notify { .. } => Vec::new(),
        }
    }

    pub fn encode(&self) -> Result<Vec<u8>, WireError> {
        encode_versioned(self)
    }

    /// Decodes a request and checks its limits.
    pub fn decode(bytes: &[u8]) -> Result<MailboxRequest, ProtoError> {
        let body = split_version(bytes, MAX_MAILBOX_FRAME_BYTES)?;
        let r: MailboxRequest = decode_with_limit(body, MAX_MAILBOX_FRAME_BYTES)?;
        let too_large = |what, len, max| Err(ProtoError::TooLarge { what, len, max });
        match &r {
            MailboxRequest::Deposit { envelope, .. } if envelope.len() > MAX_ENVELOPE_BYTES => {
                too_large("envelope", envelope.len(), MAX_ENVELOPE_BYTES)
            }
            MailboxRequest::Delete { seqs, .. } if seqs.len() > MAX_BATCH => {
                too_large("delete", seqs.len(), MAX_BATCH)
            }
            MailboxRequest::Purge { secrets } if secrets.len() > MAX_PURGE_SECRETS => {
                too_large("purge", secrets.len(), MAX_PURGE_SECRETS)
            }
            MailboxRequest::Subscribe { mailboxes } if mailboxes.len() > MAX_SUBSCRIBE => {
                too_large("subscription", mailboxes.len(), MAX_SUBSCRIBE)
            }
            MailboxRequest::DepositBatch { items } if items.len() > MAX_DEPOSIT_ITEMS => {
                too_large("deposit batch", items.len(), MAX_DEPOSIT_ITEMS)
            }
            MailboxRequest::DepositBatch { items } => {
                match items.iter().find(|i| i.envelope.len() > MAX_ENVELOPE_BYTES) {
                    Some(i) => too_large("envelope", i.envelope.len(), MAX_ENVELOPE_BYTES),
                    None => Ok(r),
                }
            }
            MailboxRequest::DeleteRange { after, through, .. }
                if through
                    .checked_sub(*after)
                    .is_none_or(|span| span > MAX_DELETE_SPAN) =>
            {
                let span = through.saturating_sub(*after).min(usize::MAX as u64) as usize;
                too_large("delete range", span, MAX_DELETE_SPAN as usize)
            }
            _ => Ok(r),
        }
    }
}

impl Receipt {
    /// The bytes the relay signs.
    pub fn signed_bytes(
        relay: &[u8; 32],
        at_ms: u64,
        what: &Receipted,
    ) -> Result<Vec<u8>, WireError> {
        encode(&ReceiptSigned {
            domain: RECEIPT_SIGNATURE_DOMAIN,
            relay,
            at_ms,
            what,
        })
    }
}

impl MailboxResponse {
    pub fn encode(&self) -> Result<Vec<u8>, WireError> {
        encode_versioned(self)
    }

    pub fn decode(bytes: &[u8]) -> Result<MailboxResponse, ProtoError> {
        let body = split_version(bytes, MAX_MAILBOX_FRAME_BYTES)?;
        let r: MailboxResponse = decode_with_limit(body, MAX_MAILBOX_FRAME_BYTES)?;
        let too_large = |what, len, max| Err(ProtoError::TooLarge { what, len, max });
        match &r {
            MailboxResponse::Envelopes { items, .. } if items.len() > MAX_PAGE_ITEMS => {
                too_large("fetch answer", items.len(), MAX_PAGE_ITEMS)
            }
            MailboxResponse::Deposits { receipt, refused } => {
                let stored = match &receipt.what {
                    Receipted::DepositedBatch { items } => items.len(),
                    _ => 0,
                };
                if stored + refused.len() > MAX_DEPOSIT_ITEMS {
                    too_large("deposit answer", stored + refused.len(), MAX_DEPOSIT_ITEMS)
                } else {
                    Ok(r)
                }
            }
            _ => Ok(r),
        }
    }
}

/// Serde for `[u8; 64]` (serde derives arrays only up to 32).
mod sig {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8; 64], s: S) -> Result<S::Ok, S::Error> {
        let (a, b) = v.split_at(32);
        let a: &[u8; 32] = a.try_into().map_err(serde::ser::Error::custom)?;
        let b: &[u8; 32] = b.try_into().map_err(serde::ser::Error::custom)?;
        (a, b).serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 64], D::Error> {
        let (a, b) = <([u8; 32], [u8; 32])>::deserialize(d)?;
        let mut out = [0u8; 64];
        out[..32].copy_from_slice(&a);
        out[32..].copy_from_slice(&b);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn auth() -> OwnerAuth {
        OwnerAuth {
            timestamp_ms: 5,
            nonce: [3; 16],
            signature: [9; 64],
        }
    }

    #[test]
    fn frames_roundtrip() {
        let reqs = vec![
            MailboxRequest::Create {
                mailbox: [1; 32],
                auth: auth(),
            },
            MailboxRequest::Deposit {
                mailbox: [1; 32],
                envelope: vec![7; 1024],
                deletion_hash: [2; 32],
            },
            MailboxRequest::Fetch {
                mailbox: [1; 32],
                after: 10,
                limit: 64,
                auth: auth(),
            },
            MailboxRequest::Delete {
                mailbox: [1; 32],
                seqs: vec![1, 2, 3],
                auth: auth(),
            },
            MailboxRequest::Purge {
                secrets: vec![[4; 32]],
            },
            MailboxRequest::Subscribe {
                mailboxes: vec![([1; 32], auth())],
            },
        ];
        for r in reqs {
            assert_eq!(MailboxRequest::decode(&r.encode().unwrap()).unwrap(), r);
        }
        let resp = MailboxResponse::Receipt(Receipt {
            relay: [8; 32],
            at_ms: 77,
            what: Receipted::Deposited {
                mailbox: [1; 32],
                seq: 4,
                envelope_hash: [5; 32],
            },
            signature: [6; 64],
        });
        assert_eq!(
            MailboxResponse::decode(&resp.encode().unwrap()).unwrap(),
            resp
        );
    }

    #[test]
    fn limits_are_enforced_when_decoding() {
        let big = MailboxRequest::Deposit {
            mailbox: [1; 32],
            envelope: vec![0; MAX_ENVELOPE_BYTES + 1],
            deletion_hash: [0; 32],
        };
        assert!(matches!(
            MailboxRequest::decode(&big.encode().unwrap()),
            Err(ProtoError::TooLarge {
                what: "envelope",
                ..
            })
        ));
        let many = MailboxRequest::Delete {
            mailbox: [1; 32],
            seqs: (0..MAX_BATCH as u64 + 1).collect(),
            auth: auth(),
        };
        assert!(MailboxRequest::decode(&many.encode().unwrap()).is_err());
        assert!(MailboxRequest::decode(&vec![0u8; MAX_MAILBOX_FRAME_BYTES + 1]).is_err());
    }

    #[test]
    fn owner_signatures_cover_the_operation_and_its_arguments() {
        let m = [1; 32];
        let n = [0; 16];
        let fetch = |after| {
            OwnerOp::Fetch { after, limit: 10 }
                .signed_bytes(&m, 1, &n)
                .unwrap()
        };
        assert_ne!(fetch(1), fetch(2));
        assert_ne!(
            OwnerOp::Create.signed_bytes(&m, 1, &n).unwrap(),
            OwnerOp::PurgeMailbox.signed_bytes(&m, 1, &n).unwrap()
        );
        assert_ne!(
            OwnerOp::Create.signed_bytes(&m, 1, &n).unwrap(),
            OwnerOp::Create.signed_bytes(&m, 2, &n).unwrap()
        );
        assert_ne!(
            OwnerOp::Create.signed_bytes(&m, 1, &n).unwrap(),
            OwnerOp::Create.signed_bytes(&[2; 32], 1, &n).unwrap()
        );
    }

    fn batch(n: usize, envelope_len: usize) -> MailboxRequest {
        MailboxRequest::DepositBatch {
            items: (0..n)
                .map(|i| DepositItem {
                    mailbox: [i as u8; 32],
                    envelope: vec![i as u8; envelope_len],
                    deletion_hash: [2; 32],
                })
                .collect(),
        }
    }

    fn deposits_answer(stored: usize, refused: usize) -> MailboxResponse {
        MailboxResponse::Deposits {
            receipt: Receipt {
                relay: [8; 32],
                at_ms: 77,
                what: Receipted::DepositedBatch {
                    items: (0..stored)
                        .map(|i| DepositedItem {
                            index: i as u32,
                            mailbox: [1; 32],
                            seq: i as u64 + 1,
                            envelope_hash: [5; 32],
                        })
                        .collect(),
                },
                signature: [6; 64],
            },
            refused: (0..refused)
                .map(|i| RefusedItem {
                    index: (stored + i) as u32,
                    why: Refusal::MailboxFull,
                })
                .collect(),
        }
    }

    #[test]
    fn batch_frames_roundtrip() {
        let reqs = vec![
            batch(3, 1024),
            MailboxRequest::FetchPage {
                mailbox: [1; 32],
                after: 10,
                limit: 4096,
                auth: auth(),
            },
            MailboxRequest::DeleteRange {
                mailbox: [1; 32],
                after: 10,
                through: 10 + MAX_DELETE_SPAN,
                auth: auth(),
            },
        ];
        for r in reqs {
            assert_eq!(MailboxRequest::decode(&r.encode().unwrap()).unwrap(), r);
        }
        let resps = vec![
            deposits_answer(2, 1),
            MailboxResponse::Receipt(Receipt {
                relay: [8; 32],
                at_ms: 1,
                what: Receipted::DeletedRange {
                    mailbox: [1; 32],
                    after: 3,
                    through: 9,
                },
                signature: [6; 64],
            }),
            MailboxResponse::Envelopes {
                items: (0..MAX_PAGE_ITEMS as u64)
                    .map(|seq| StoredEnvelope {
                        seq,
                        deposited_at_ms: 1,
                        envelope: vec![1],
                    })
                    .collect(),
                more: true,
            },
        ];
        for r in resps {
            assert_eq!(MailboxResponse::decode(&r.encode().unwrap()).unwrap(), r);
        }
    }

    #[test]
    fn frames_of_the_first_variants_keep_their_encoding() {
        // New variants are appended: a Deposit and a Receipt encode as before (variant 1, 0).
        let dep = MailboxRequest::Deposit {
            mailbox: [1; 32],
            envelope: vec![7; 3],
            deletion_hash: [2; 32],
        };
        let bytes = dep.encode().unwrap();
        assert_eq!(bytes[..2], [crate::PROTOCOL_VERSION as u8, 1]);
        let notify = MailboxRequest::Notify { mailbox: [1; 32] }
            .encode()
            .unwrap();
        assert_eq!(notify[1], 7, "Notify is still variant 7");
        assert_eq!(batch(1, 1).encode().unwrap()[1], 8);
    }

    #[test]
    fn batch_limits_are_enforced_when_decoding() {
        let too_large = |r: &MailboxRequest| {
            matches!(
                MailboxRequest::decode(&r.encode().unwrap()),
                Err(ProtoError::TooLarge { .. })
            )
        };
        assert!(too_large(&batch(MAX_DEPOSIT_ITEMS + 1, 1)));
        assert!(!too_large(&batch(MAX_DEPOSIT_ITEMS, 1)));
        let mut one_big = batch(2, 1);
        if let MailboxRequest::DepositBatch { items } = &mut one_big {
            items[1].envelope = vec![0; MAX_ENVELOPE_BYTES + 1];
        }
        assert!(too_large(&one_big));
        let range = |after, through| MailboxRequest::DeleteRange {
            mailbox: [1; 32],
            after,
            through,
            auth: auth(),
        };
        assert!(too_large(&range(0, MAX_DELETE_SPAN + 1)));
        assert!(too_large(&range(5, 4)), "an inverted range is refused");
        assert!(!too_large(&range(u64::MAX - 1, u64::MAX)));
        // A frame of many 1 KiB envelopes past the frame limit is refused before decoding.
        assert!(MailboxRequest::decode(&batch(1000, 1100).encode().unwrap()).is_err());
        let answer = deposits_answer(MAX_DEPOSIT_ITEMS, 1);
        assert!(matches!(
            MailboxResponse::decode(&answer.encode().unwrap()),
            Err(ProtoError::TooLarge { .. })
        ));
        let page = MailboxResponse::Envelopes {
            items: vec![
                StoredEnvelope {
                    seq: 1,
                    deposited_at_ms: 1,
                    envelope: vec![],
                };
                MAX_PAGE_ITEMS + 1
            ],
            more: false,
        };
        assert!(MailboxResponse::decode(&page.encode().unwrap()).is_err());
    }

    #[test]
    fn owner_signatures_of_pages_and_ranges_are_their_own() {
        let m = [1; 32];
        let n = [0; 16];
        let sig = |op: OwnerOp<'_>| op.signed_bytes(&m, 1, &n).unwrap();
        assert_ne!(
            sig(OwnerOp::FetchPage {
                after: 1,
                limit: 10
            }),
            sig(OwnerOp::Fetch {
                after: 1,
                limit: 10
            })
        );
        assert_ne!(
            sig(OwnerOp::DeleteRange {
                after: 1,
                through: 10
            }),
            sig(OwnerOp::DeleteRange {
                after: 1,
                through: 11
            })
        );
        assert_ne!(
            sig(OwnerOp::DeleteRange {
                after: 0,
                through: 10
            }),
            sig(OwnerOp::Delete { seqs: &[10] })
        );
    }

    proptest! {
        #[test]
        fn arbitrary_frames_never_panic(b in proptest::collection::vec(any::<u8>(), 0..800)) {
            let _ = MailboxRequest::decode(&b);
            let _ = MailboxResponse::decode(&b);
        }

        #[test]
        fn damaged_batch_frames_never_panic(
            n in 0usize..6,
            cut in any::<prop::sample::Index>(),
            flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..8),
        ) {
            for mut b in [
                batch(n, 40).encode().unwrap(),
                deposits_answer(n, n / 2).encode().unwrap(),
            ] {
                for (at, x) in &flips {
                    let i = at.index(b.len());
                    b[i] ^= x;
                }
                let _ = MailboxRequest::decode(&b);
                let _ = MailboxResponse::decode(&b);
                b.truncate(cut.index(b.len() + 1));
                let _ = MailboxRequest::decode(&b);
                let _ = MailboxResponse::decode(&b);
            }
        }
    }
}
