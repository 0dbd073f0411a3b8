//! The cryptography of relay mailboxes: owner keys and their request signatures, deletion
//! secrets and their hashes, and the receipts a relay signs. Bytes are defined in
//! `instaconnect_wire::mailbox`; this module signs and checks them.

use instaconnect_wire::mailbox::{MailboxId, OwnerAuth, OwnerOp, Receipt, Receipted};

use crate::identity::{Identity, IdentityKey};
use crate::CryptoError;

const DELETION_CONTEXT: &str = "instaconnect 2026 mailbox deletion secret v1";
const ENVELOPE_CONTEXT: &str = "instaconnect 2026 mailbox envelope hash v1";

/// The hash a depositor sends with an envelope; revealing `secret` later purges it.
pub fn deletion_hash(secret: &[u8; 32]) -> [u8; 32] {
    blake3::derive_key(DELETION_CONTEXT, secret)
}

const DEPOSIT_CONTEXT: &str = "instaconnect 2026 deposit deletion secret v1";
const MAILBOX_KEY_CONTEXT: &str = "instaconnect 2026 mailbox owner key v1";

/// The deletion secret of the envelope carrying message `id` into `mailbox`, derived from the
/// depositor's account secret: nothing needs keeping to purge it later, and the same message
/// deposited again carries the same hash.
pub fn deposit_secret(account_secret: &[u8], id: &[u8; 16], mailbox: &MailboxId) -> [u8; 32] {
    let mut h = blake3::Hasher::new_derive_key(DEPOSIT_CONTEXT);
    h.update(&(account_secret.len() as u64).to_le_bytes());
    h.update(account_secret);
    h.update(id);
    h.update(mailbox);
    *h.finalize().as_bytes()
}

/// The hash of a sealed envelope, as receipts name it.
pub fn envelope_hash(envelope: &[u8]) -> [u8; 32] {
    blake3::derive_key(ENVELOPE_CONTEXT, envelope)
}

/// A mailbox's owner key: the mailbox id is its public half.
pub struct MailboxKey(Identity);

impl MailboxKey {
    /// A fresh key (OS randomness; it is key material, not a protocol choice).
    pub fn generate() -> MailboxKey {
        MailboxKey(Identity::generate())
    }

    /// A key derived from the account secret and fresh randomness `seed` (which the engine's
    /// RNG supplies, so a simulation replays; the account secret keeps it unguessable).
    pub fn derive(account_secret: &[u8], seed: &[u8; 32]) -> Result<MailboxKey, CryptoError> {
        let mut h = blake3::Hasher::new_derive_key(MAILBOX_KEY_CONTEXT);
        h.update(&(account_secret.len() as u64).to_le_bytes());
        h.update(account_secret);
        h.update(seed);
        MailboxKey::from_secret_bytes(h.finalize().as_bytes())
    }

    /// Restores a key kept with [`MailboxKey::secret_bytes`].
    pub fn from_secret_bytes(b: &[u8]) -> Result<MailboxKey, CryptoError> {
        Identity::from_secret_bytes(b).map(MailboxKey)
    }

    /// The secret, to keep in the device's store.
    pub fn secret_bytes(&self) -> zeroize::Zeroizing<Vec<u8>> {
        self.0.secret_bytes()
    }

    /// The mailbox id: the public key.
    pub fn id(&self) -> MailboxId {
        self.0.public().to_bytes()
    }

    /// Signs `op` on this mailbox at `timestamp_ms` with a fresh `nonce`.
    pub fn authorize(
        &self,
        op: OwnerOp<'_>,
        timestamp_ms: u64,
        nonce: [u8; 16],
    ) -> Result<OwnerAuth, CryptoError> {
        let bytes = op
            .signed_bytes(&self.id(), timestamp_ms, &nonce)
            .map_err(|_| CryptoError::Encoding("mailbox request"))?;
        Ok(OwnerAuth {
            timestamp_ms,
            nonce,
            signature: self.0.sign(&bytes),
        })
    }
}

/// Checks that the owner of `mailbox` signed `op` with `auth` (freshness is the relay's check).
pub fn verify_owner(
    mailbox: &MailboxId,
    op: OwnerOp<'_>,
    auth: &OwnerAuth,
) -> Result<(), CryptoError> {
    let key = IdentityKey::from_bytes(mailbox)?;
    let bytes = op
        .signed_bytes(mailbox, auth.timestamp_ms, &auth.nonce)
        .map_err(|_| CryptoError::Encoding("mailbox request"))?;
    key.verify(&bytes, &auth.signature)
        .map_err(|_| CryptoError::BadSignature("mailbox request"))
}

/// A receipt signed by the relay's identity.
pub fn sign_receipt(relay: &Identity, at_ms: u64, what: Receipted) -> Result<Receipt, CryptoError> {
    let key = relay.public().to_bytes();
    let bytes =
        Receipt::signed_bytes(&key, at_ms, &what).map_err(|_| CryptoError::Encoding("receipt"))?;
    Ok(Receipt {
        relay: key,
        at_ms,
        what,
        signature: relay.sign(&bytes),
    })
}

/// Checks a receipt's signature, and that it comes from `relay` when one is expected.
pub fn verify_receipt(receipt: &Receipt, relay: Option<&IdentityKey>) -> Result<(), CryptoError> {
    let key = IdentityKey::from_bytes(&receipt.relay)?;
    if relay.is_some_and(|r| *r != key) {
        return Err(CryptoError::BadSignature("receipt from another relay"));
    }
    let bytes = Receipt::signed_bytes(&receipt.relay, receipt.at_ms, &receipt.what)
        .map_err(|_| CryptoError::Encoding("receipt"))?;
    key.verify(&bytes, &receipt.signature)
        .map_err(|_| CryptoError::BadSignature("receipt"))
}

/// Checks the receipt of a deposit batch sent to `relay`: `sent[i]` is the mailbox and the
/// [`envelope_hash`] of the batch's item `i`. Returns, per item, the sequence number the relay
/// stored it under, or `None` if the receipt does not name it (the relay refused it).
///
/// One signature covers the batch, and it is checked once; then every item the receipt names
/// must be an item of the request (by index), named once, with that item's mailbox and
/// envelope hash. Anything else rejects the whole receipt, as if nothing were stored: a relay
/// that signs something other than what it was given is not believed about any of it.
pub fn check_batch_receipt(
    receipt: &Receipt,
    relay: &IdentityKey,
    sent: &[(MailboxId, [u8; 32])],
) -> Result<Vec<Option<u64>>, CryptoError> {
    verify_receipt(receipt, Some(relay))?;
    let Receipted::DepositedBatch { items } = &receipt.what else {
        return Err(CryptoError::ReceiptMismatch("not a batch deposit receipt"));
    };
    let mut seqs = vec![None; sent.len()];
    for item in items {
        let i = usize::try_from(item.index).unwrap_or(usize::MAX);
        let Some((mailbox, hash)) = sent.get(i) else {
            return Err(CryptoError::ReceiptMismatch(
                "an item the batch did not have",
            ));
        };
        if item.mailbox != *mailbox || item.envelope_hash != *hash {
            return Err(CryptoError::ReceiptMismatch(
                "another mailbox or envelope than the item sent",
            ));
        }
        if seqs[i].replace(item.seq).is_some() {
            return Err(CryptoError::ReceiptMismatch("an item named twice"));
        }
    }
    Ok(seqs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use instaconnect_wire::mailbox::DepositedItem;

    fn batch_receipt(relay: &Identity, items: Vec<DepositedItem>) -> Receipt {
        sign_receipt(relay, 9, Receipted::DepositedBatch { items }).unwrap()
    }

    fn item(index: u32, mailbox: u8, seq: u64, envelope: &[u8]) -> DepositedItem {
        DepositedItem {
            index,
            mailbox: [mailbox; 32],
            seq,
            envelope_hash: envelope_hash(envelope),
        }
    }

    #[test]
    fn a_batch_receipt_gives_each_stored_item_its_seq() {
        let relay = Identity::generate();
        let sent = [
            ([1; 32], envelope_hash(b"a")),
            ([2; 32], envelope_hash(b"b")),
            ([1; 32], envelope_hash(b"c")),
        ];
        // Item 1 was refused: the receipt does not name it.
        let r = batch_receipt(&relay, vec![item(0, 1, 7, b"a"), item(2, 1, 8, b"c")]);
        assert_eq!(
            check_batch_receipt(&r, &relay.public(), &sent).unwrap(),
            vec![Some(7), None, Some(8)]
        );
        let none = batch_receipt(&relay, vec![]);
        assert_eq!(
            check_batch_receipt(&none, &relay.public(), &sent).unwrap(),
            vec![None, None, None]
        );
    }

    #[test]
    fn forged_or_mismatched_batch_receipts_are_rejected() {
        let relay = Identity::generate();
        let sent = [
            ([1; 32], envelope_hash(b"a")),
            ([2; 32], envelope_hash(b"b")),
        ];
        let good = batch_receipt(&relay, vec![item(0, 1, 7, b"a"), item(1, 2, 3, b"b")]);
        check_batch_receipt(&good, &relay.public(), &sent).unwrap();
        let rejected = |r: &Receipt| check_batch_receipt(r, &relay.public(), &sent).is_err();

        // Another relay's key, or a signature that does not cover the items.
        assert!(check_batch_receipt(&good, &Identity::generate().public(), &sent).is_err());
        let other = batch_receipt(&Identity::generate(), vec![item(0, 1, 7, b"a")]);
        assert!(rejected(&other));
        let mut forged = good.clone();
        if let Receipted::DepositedBatch { items } = &mut forged.what {
            items[0].seq = 8;
        }
        assert!(rejected(&forged));
        let mut relabelled = good.clone();
        relabelled.relay = Identity::generate().public().to_bytes();
        assert!(rejected(&relabelled));

        // Validly signed, but not what was sent.
        assert!(rejected(&batch_receipt(&relay, vec![item(0, 1, 7, b"x")])));
        assert!(rejected(&batch_receipt(&relay, vec![item(0, 2, 7, b"a")])));
        assert!(rejected(&batch_receipt(&relay, vec![item(2, 1, 7, b"a")])));
        assert!(rejected(&batch_receipt(
            &relay,
            vec![item(u32::MAX, 1, 7, b"a")]
        )));
        assert!(rejected(&batch_receipt(
            &relay,
            vec![item(0, 1, 7, b"a"), item(0, 1, 8, b"a")]
        )));
        let single = sign_receipt(
            &relay,
            9,
            Receipted::Deposited {
                mailbox: [1; 32],
                seq: 7,
                envelope_hash: envelope_hash(b"a"),
            },
        )
        .unwrap();
        assert!(rejected(&single));
    }

    #[test]
    fn derived_secrets_depend_on_every_input() {
        let a = deposit_secret(&[1; 32], &[2; 16], &[3; 32]);
        assert_eq!(a, deposit_secret(&[1; 32], &[2; 16], &[3; 32]));
        assert_ne!(a, deposit_secret(&[9; 32], &[2; 16], &[3; 32]));
        assert_ne!(a, deposit_secret(&[1; 32], &[9; 16], &[3; 32]));
        assert_ne!(a, deposit_secret(&[1; 32], &[2; 16], &[9; 32]));
        let k = MailboxKey::derive(&[1; 32], &[4; 32]).unwrap();
        assert_eq!(k.id(), MailboxKey::derive(&[1; 32], &[4; 32]).unwrap().id());
        assert_ne!(k.id(), MailboxKey::derive(&[2; 32], &[4; 32]).unwrap().id());
        assert_ne!(k.id(), MailboxKey::derive(&[1; 32], &[5; 32]).unwrap().id());
    }

    #[test]
    fn owner_signatures_verify_only_for_the_signed_request() {
        let k = MailboxKey::generate();
        let auth = k
            .authorize(
                OwnerOp::Fetch {
                    after: 3,
                    limit: 10,
                },
                100,
                [1; 16],
            )
            .unwrap();
        let id = k.id();
        verify_owner(
            &id,
            OwnerOp::Fetch {
                after: 3,
                limit: 10,
            },
            &auth,
        )
        .unwrap();
        // Another argument, operation, mailbox or time: refused.
        assert!(verify_owner(
            &id,
            OwnerOp::Fetch {
                after: 0,
                limit: 10
            },
            &auth
        )
        .is_err());
        assert!(verify_owner(&id, OwnerOp::PurgeMailbox, &auth).is_err());
        let other = MailboxKey::generate().id();
        assert!(verify_owner(
            &other,
            OwnerOp::Fetch {
                after: 3,
                limit: 10
            },
            &auth
        )
        .is_err());
        let mut later = auth.clone();
        later.timestamp_ms += 1;
        assert!(verify_owner(
            &id,
            OwnerOp::Fetch {
                after: 3,
                limit: 10
            },
            &later
        )
        .is_err());
        // Garbage ids are errors, not panics.
        assert!(verify_owner(&[0xff; 32], OwnerOp::Create, &auth).is_err());
    }

    #[test]
    fn receipts_verify_and_a_forged_one_does_not() {
        let relay = Identity::generate();
        let r = sign_receipt(
            &relay,
            5,
            Receipted::Purged {
                deletion_hashes: vec![deletion_hash(&[7; 32])],
            },
        )
        .unwrap();
        verify_receipt(&r, Some(&relay.public())).unwrap();
        verify_receipt(&r, None).unwrap();
        assert!(verify_receipt(&r, Some(&Identity::generate().public())).is_err());
        let mut forged = r.clone();
        forged.what = Receipted::Purged {
            deletion_hashes: vec![deletion_hash(&[8; 32])],
        };
        assert!(verify_receipt(&forged, None).is_err());
    }

    #[test]
    fn deletion_hashes_hide_the_secret_and_differ_from_envelope_hashes() {
        let s = [9u8; 32];
        assert_ne!(deletion_hash(&s), s);
        assert_ne!(deletion_hash(&s), envelope_hash(&s));
        assert_eq!(deletion_hash(&s), deletion_hash(&s));
    }
}
