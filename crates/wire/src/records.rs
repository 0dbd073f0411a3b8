//! Records the store keeps on disk. Phone numbers are E.164 strings validated by `core` before
//! they get here; timestamps are unix milliseconds supplied by the caller.

use serde::{Deserialize, Serialize};

use crate::secret::serde_bytes_compat;
use crate::SecretBytes;

/// The device's own account: who we are and our secret keys.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountRecord {
    /// E.164 phone number the account was created with.
    pub phone: String,
    /// 32-byte Ed25519 seed of the account identity (its public key is the libp2p PeerId).
    pub identity_secret: SecretBytes,
    /// This device's ratchet account (vodozemac Olm), pickled by `crypto`.
    pub device_pickle: SecretBytes,
    pub created_at_ms: u64,
}

/// What the user shows others, subject to [`Privacy`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Profile {
    pub name: String,
    pub status: String,
    pub picture: Option<PictureRecord>,
    pub updated_at_ms: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ImageFormat {
    Png,
    Jpeg,
    Webp,
}

impl ImageFormat {
    pub fn mime(self) -> &'static str {
        match self {
            ImageFormat::Png => "image/png",
            ImageFormat::Jpeg => "image/jpeg",
            ImageFormat::Webp => "image/webp",
        }
    }
}

#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PictureRecord {
    pub format: ImageFormat,
    pub width: u32,
    pub height: u32,
    #[serde(with = "serde_bytes_compat")]
    pub bytes: Vec<u8>,
    #[serde(with = "serde_bytes_compat")]
    pub thumbnail_png: Vec<u8>,
}

impl std::fmt::Debug for PictureRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PictureRecord")
            .field("format", &self.format)
            .field("width", &self.width)
            .field("height", &self.height)
            .field("bytes", &self.bytes.len())
            .field("thumbnail_png", &self.thumbnail_png.len())
            .finish()
    }
}

/// An entry of the address book, keyed by its E.164 phone number.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContactRecord {
    pub phone: String,
    pub name: Option<String>,
    /// The contact's device, once linked (`contacts add --peer`, an invite, or discovery).
    pub peer_id: Option<String>,
    /// The contact's Ed25519 identity key, once known from a verified contact card.
    pub identity_key: Option<[u8; 32]>,
    /// The contact's signed contact card (crypto's encoding), used to start a session offline.
    pub card: Option<Vec<u8>>,
    pub added_at_ms: u64,
    pub updated_at_ms: u64,
}

impl ContactRecord {
    /// A new contact with only its number, added at `now_ms`.
    pub fn new(phone: &str, now_ms: u64) -> ContactRecord {
        ContactRecord {
            phone: phone.to_string(),
            name: None,
            peer_id: None,
            identity_key: None,
            card: None,
            added_at_ms: now_ms,
            updated_at_ms: now_ms,
        }
    }
}

/// A blocked phone number (a contact or not).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockRecord {
    pub phone: String,
    pub since_ms: u64,
}

/// A 128-bit random group id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct GroupId(pub [u8; 16]);

impl GroupId {
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    pub fn from_hex(s: &str) -> Option<GroupId> {
        if s.len() != 32 || !s.is_ascii() {
            return None;
        }
        let mut out = [0u8; 16];
        for (i, o) in out.iter_mut().enumerate() {
            *o = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        Some(GroupId(out))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Role {
    Admin,
    Member,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupMember {
    /// E.164; the account's own number is a member too.
    pub phone: String,
    pub role: Role,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupRecord {
    pub id: GroupId,
    pub name: String,
    pub members: Vec<GroupMember>,
    pub created_at_ms: u64,
    pub updated_at_ms: u64,
    /// We left the group: it stays for its history but can no longer be changed or sent to.
    pub left: bool,
}

/// Who may see one field of ours.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Visibility {
    Everyone,
    Contacts,
    Nobody,
}

/// Per-field visibility, enforced by the node that owns the data.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Privacy {
    pub phone: Visibility,
    pub name: Visibility,
    pub picture: Visibility,
    pub status: Visibility,
    pub online: Visibility,
    pub receipts: Visibility,
    pub location: Visibility,
}

impl Default for Privacy {
    /// The defaults of a mainstream messenger.
    fn default() -> Self {
        Privacy {
            phone: Visibility::Contacts,
            name: Visibility::Everyone,
            picture: Visibility::Everyone,
            status: Visibility::Everyone,
            online: Visibility::Contacts,
            receipts: Visibility::Contacts,
            location: Visibility::Nobody,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Settings {
    /// ISO 3166 region used to read national phone numbers (`--region`).
    pub region: Option<String>,
    pub privacy: Privacy,
}

/// Whose message it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Direction {
    Outgoing,
    Incoming,
}

/// Where an outgoing message is. Incoming messages are `Delivered` (stored here) or `Read`.
/// States only move forward, in the order Queued, Sent, Relayed (by more relays), Delivered,
/// Read (see the `Ord` impl; `Relayed` is last in the enum only to keep stored records valid).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeliveryState {
    /// Stored locally, waiting for a path to the recipient.
    Queued,
    /// Handed to a connection to the recipient's device, no ack yet.
    Sent,
    /// The recipient's device acknowledged it after storing it durably.
    Delivered,
    /// The recipient read it (only if their privacy lets receipts through).
    Read,
    /// Accepted (stored durably, receipt signed) by this many relays, for the recipient to
    /// fetch; no ack from the recipient's device yet.
    Relayed { relays: u8 },
}

impl DeliveryState {
    /// A stable name: queued, sent, relayed, delivered, read.
    pub fn name(self) -> &'static str {
        match self {
            DeliveryState::Queued => "queued",
            DeliveryState::Sent => "sent",
            DeliveryState::Relayed { .. } => "relayed",
            DeliveryState::Delivered => "delivered",
            DeliveryState::Read => "read",
        }
    }

    /// What the user is shown: the name, or "accepted by N relays".
    pub fn label(self) -> String {
        match self {
            DeliveryState::Relayed { relays: 1 } => "accepted by 1 relay".to_string(),
            DeliveryState::Relayed { relays } => format!("accepted by {relays} relays"),
            other => other.name().to_string(),
        }
    }

    fn rank(self) -> (u8, u8) {
        match self {
            DeliveryState::Queued => (0, 0),
            DeliveryState::Sent => (1, 0),
            DeliveryState::Relayed { relays } => (2, relays),
            DeliveryState::Delivered => (3, 0),
            DeliveryState::Read => (4, 0),
        }
    }
}

impl PartialOrd for DeliveryState {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for DeliveryState {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.rank().cmp(&other.rank())
    }
}

/// One message of a 1:1 conversation (keyed by the contact's number and a local sequence).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageRecord {
    pub id: [u8; 16],
    /// The contact's E.164 number: the conversation.
    pub peer: String,
    /// Position in the conversation on this device (strictly increasing).
    pub seq: u64,
    pub direction: Direction,
    pub text: String,
    /// The sender's clock.
    pub sent_at_ms: u64,
    /// This device's clock when stored.
    pub stored_at_ms: u64,
    pub state: DeliveryState,
}

/// Per-conversation bookkeeping.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ConversationRecord {
    pub peer: String,
    pub next_seq: u64,
    pub unread: u32,
    pub last_activity_ms: u64,
    /// The sender-order number given to our last outgoing text (0: none yet). Numbers start
    /// at 1 and are contiguous, so the receiver can put texts in the order they were sent.
    pub sent_n: u64,
    /// The highest sender-order number of the contact's texts shown in order (0: none).
    pub shown_n: u64,
}

/// A received text that arrived ahead of an earlier one: stored durably (and acknowledged)
/// but shown only once the gap before it is filled, or given up on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldMessage {
    /// The sender-order number.
    pub n: u64,
    /// The message as it will be shown (its `seq` is assigned when it is released).
    pub message: MessageRecord,
}

/// Something waiting for its end-to-end ack, retried with backoff. It is encrypted afresh at
/// every attempt (never stored encrypted), so a retry always decrypts whatever happened to an
/// earlier attempt.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutboxEntry {
    pub id: [u8; 16],
    pub peer_id: String,
    pub payload: OutboxPayload,
    pub attempts: u32,
    pub next_attempt_ms: u64,
}

/// What an outbox entry sends.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum OutboxPayload {
    /// The stored outgoing message with the entry's id; `n` is its number among the sender's
    /// texts to that contact (1, 2, 3...), fixed when it was queued.
    Text { n: u64 },
    /// Any other payload (a read receipt, a contact accept), encoded.
    Payload(#[serde(with = "serde_bytes_compat")] Vec<u8>),
    /// A request frame sealed under schema 2, sent as it is.
    Sealed(#[serde(with = "serde_bytes_compat")] Vec<u8>),
}

/// A contact request received from a device, waiting for `contacts accept`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContactRequestRecord {
    pub peer_id: String,
    #[serde(with = "serde_bytes_compat")]
    pub card: Vec<u8>,
    pub received_at_ms: u64,
}

/// A mailbox this device opened on a relay, where one contact leaves what it cannot deliver
/// directly (device database).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OwnMailbox {
    /// The contact (E.164) this mailbox is for.
    pub phone: String,
    /// The relay's peer id and addresses.
    pub relay: String,
    pub addrs: Vec<String>,
    /// The owner key's secret (`instaconnect_crypto::MailboxKey`); the mailbox id is its public
    /// key.
    pub key: SecretBytes,
    pub mailbox: [u8; 32],
    /// The relay confirmed the mailbox with a signed receipt.
    pub created: bool,
}

/// The attachment of a message, sent or received (device database). Its bytes live beside the
/// database, in the blob store, under the message id: the plaintext once every chunk is in.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttachmentRecord {
    /// The message's id.
    pub id: [u8; 16],
    /// The conversation (E.164).
    pub peer: String,
    pub direction: Direction,
    pub manifest: crate::proto::AttachmentManifest,
    /// Which chunks are stored: bit `i % 8` of byte `i / 8` for chunk `i`.
    #[serde(with = "serde_bytes_compat")]
    pub have: Vec<u8>,
    /// Every chunk is stored and the whole file matched its hash.
    pub complete: bool,
}

impl AttachmentRecord {
    /// Whether chunk `i` is stored.
    pub fn has(&self, i: usize) -> bool {
        self.have
            .get(i / 8)
            .is_some_and(|b| b & (1 << (i % 8)) != 0)
    }

    /// Marks chunk `i` stored.
    pub fn set(&mut self, i: usize) {
        if self.have.len() <= i / 8 {
            self.have.resize(i / 8 + 1, 0);
        }
        self.have[i / 8] |= 1 << (i % 8);
    }

    /// How many chunks are stored.
    pub fn stored(&self) -> usize {
        self.have.iter().map(|b| b.count_ones() as usize).sum()
    }
}

/// An attachment we sent whose sealed chunks go through the recipient's relay mailboxes
/// (device database, `upload/<message id>`): which chunks a relay has receipted. Removed when
/// the recipient reports the attachment complete.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadRecord {
    /// The attachment's message id.
    pub id: [u8; 16],
    /// The recipient (E.164).
    pub peer: String,
    /// Chunks a relay holds (signed receipt), or the recipient said it has: bit `i % 8` of
    /// byte `i / 8` for chunk `i`.
    #[serde(with = "serde_bytes_compat")]
    pub held: Vec<u8>,
}

impl UploadRecord {
    /// Whether chunk `i` is held.
    pub fn has(&self, i: usize) -> bool {
        self.held
            .get(i / 8)
            .is_some_and(|b| b & (1 << (i % 8)) != 0)
    }

    /// Marks chunk `i` held.
    pub fn set(&mut self, i: usize) {
        if self.held.len() <= i / 8 {
            self.held.resize(i / 8 + 1, 0);
        }
        self.held[i / 8] |= 1 << (i % 8);
    }

    /// How many chunks are held.
    pub fn count(&self) -> usize {
        self.held.iter().map(|b| b.count_ones() as usize).sum()
    }
}

/// The mailboxes a contact told us to leave envelopes in (device database).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContactMailboxes {
    pub phone: String,
    pub boxes: Vec<crate::proto::MailboxAddress>,
}

/// An envelope this device left on a relay for a message not yet acknowledged by its recipient
/// (device database). Its deletion secret is derived, not kept (`crypto::deposit_secret`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DepositRecord {
    pub id: [u8; 16],
    pub relay: String,
    pub addrs: Vec<String>,
    pub mailbox: [u8; 32],
    /// Where the relay stored it, as its receipt says.
    pub seq: u64,
}

/// A mailbox a relay keeps (relay database). Holds no name, number or peer id: its id is a
/// public key made for this mailbox alone.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct MailboxRecord {
    pub created_at_ms: u64,
    /// The sequence number the next deposit gets (starts at 1).
    pub next_seq: u64,
    /// Envelopes held and their total size in bytes.
    pub count: u64,
    pub bytes: u64,
}

/// A sealed envelope a relay holds: opaque bytes, when they came, and the hash that lets the
/// depositor purge them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelayEnvelope {
    pub deposited_at_ms: u64,
    pub deletion_hash: [u8; 32],
    #[serde(with = "serde_bytes_compat")]
    pub envelope: Vec<u8>,
}

/// What a relay needs to know of a held envelope to remove it or let it expire: its header,
/// and the length of its bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RelayEnvelopeMeta {
    pub deposited_at_ms: u64,
    pub deletion_hash: [u8; 32],
    pub len: u64,
}

/// [`RelayEnvelope`] with its bytes borrowed: the same encoding.
#[derive(Deserialize)]
struct RelayEnvelopeView<'a> {
    deposited_at_ms: u64,
    deletion_hash: [u8; 32],
    #[serde(borrow)]
    envelope: &'a [u8],
}

impl RelayEnvelope {
    /// Reads the header of an encoded [`RelayEnvelope`] without copying its bytes (the
    /// whole record must be well formed, as [`crate::decode`] would require).
    pub fn decode_meta(bytes: &[u8]) -> Result<RelayEnvelopeMeta, crate::WireError> {
        if bytes.len() > crate::codec::MAX_RECORD_BYTES {
            return Err(crate::WireError::TooLarge {
                len: bytes.len(),
                limit: crate::codec::MAX_RECORD_BYTES,
            });
        }
        let (v, rest) =
            postcard::take_from_bytes::<RelayEnvelopeView<'_>>(bytes).map_err(|source| {
                crate::WireError::Malformed {
                    what: "RelayEnvelope",
                    source,
                }
            })?;
        if !rest.is_empty() {
            return Err(crate::WireError::Trailing {
                what: "RelayEnvelope",
                extra: rest.len(),
            });
        }
        Ok(RelayEnvelopeMeta {
            deposited_at_ms: v.deposited_at_ms,
            deletion_hash: v.deletion_hash,
            len: v.envelope.len() as u64,
        })
    }
}

/// What a relay holds in all.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct RelayTotals {
    pub mailboxes: u64,
    pub envelopes: u64,
    pub bytes: u64,
}

/// The location of a location message (`loc/<message id>`), beside its [`MessageRecord`]:
/// one-off, or live (the latest update of the share that message started).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocationRecord {
    /// The message's id (for a live location, the share's).
    pub id: [u8; 16],
    /// The conversation (E.164).
    pub peer: String,
    pub direction: Direction,
    /// The latest position; `live_until_ms` is the share's end, fixed when it started.
    pub location: crate::proto::Location,
    /// When the latest position was sent (sender's clock).
    pub updated_at_ms: u64,
    /// Number of the latest update (0: the first position).
    pub updates: u64,
    /// The sender ended the share before it expired (`location stop`).
    pub stopped: bool,
}

impl LocationRecord {
    /// Whether the location is live (updates may still follow) at `now_ms`: a live share that
    /// was not stopped and has not expired.
    pub fn is_live(&self, now_ms: u64) -> bool {
        !self.stopped && self.location.live_until_ms.is_some_and(|u| now_ms < u)
    }
}

/// The device's own position (`location set`): what a live share sends at each update and
/// what `nearby` measures from (key `position`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PositionRecord {
    pub location: crate::proto::Location,
    pub set_at_ms: u64,
}

#[cfg(test)]
mod relay_envelope_tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_header_reads_like_the_whole_record() {
        let e = RelayEnvelope {
            deposited_at_ms: 123_456,
            deletion_hash: [9; 32],
            envelope: vec![7; 1024],
        };
        let bytes = crate::encode(&e).unwrap();
        assert_eq!(
            RelayEnvelope::decode_meta(&bytes).unwrap(),
            RelayEnvelopeMeta {
                deposited_at_ms: 123_456,
                deletion_hash: [9; 32],
                len: 1024
            }
        );
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(RelayEnvelope::decode_meta(&longer).is_err());
        assert!(RelayEnvelope::decode_meta(&bytes[..bytes.len() - 1]).is_err());
    }

    proptest! {
        #[test]
        fn headers_of_arbitrary_bytes_never_panic(b in proptest::collection::vec(any::<u8>(), 0..200)) {
            let meta = RelayEnvelope::decode_meta(&b);
            let whole: Result<RelayEnvelope, _> = crate::decode(&b);
            prop_assert_eq!(meta.is_ok(), whole.is_ok());
        }
    }
}

/// What a device keeps of a group, beyond its [`GroupRecord`], to run it over the network
/// (device database, `gsync/<group id>`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupSyncRecord {
    pub id: GroupId,
    /// The membership as last sent or accepted (`version` 0: created here, never sent).
    pub state: crate::proto::GroupState,
    /// Set while we have not answered an invitation: who invited us (E.164).
    pub invited_by: Option<String>,
    /// Our Megolm sender key (crypto pickle), once we sent.
    pub sender: Option<SecretBytes>,
    /// The member set our sender key was made for (a change replaces the key).
    pub sender_members: Vec<String>,
    /// Members who hold our sender key's current session.
    pub shared_with: Vec<String>,
    /// Sender keys other members shared with us, oldest first (a few per member).
    pub keys: Vec<GroupKeyRecord>,
    /// Group messages waiting for their sender's key (it may come after them).
    pub waiting: Vec<WaitingGroupMessage>,
    /// Members' cards an admin handed on while the invitation is unanswered.
    pub cards: Vec<crate::proto::GroupCard>,
}

/// A member's Megolm session as we received it (crypto pickle of the receiver).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupKeyRecord {
    /// The member (E.164).
    pub phone: String,
    pub session_id: [u8; 32],
    pub pickle: SecretBytes,
}

/// A group message that arrived before its sender's key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WaitingGroupMessage {
    pub from: String,
    pub id: [u8; 16],
    pub sent_at_ms: u64,
    #[serde(with = "serde_bytes_compat")]
    pub ciphertext: Vec<u8>,
}

/// Who sent a group message and, for ours, how far it got with each member (device database,
/// `gmsg/<message id>`). The message itself is a [`MessageRecord`] in the group's
/// conversation ([`GroupId::conversation`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupMessageRecord {
    pub id: [u8; 16],
    pub group: GroupId,
    /// The sender (E.164; our own number for ours).
    pub sender: String,
    /// Ours: each recipient's state.
    pub states: Vec<(String, DeliveryState)>,
}

impl GroupId {
    /// The conversation key of the group's messages (never an E.164 number).
    pub fn conversation(&self) -> String {
        format!("group:{}", self.to_hex())
    }

    /// The group whose conversation key this is.
    pub fn from_conversation(key: &str) -> Option<GroupId> {
        GroupId::from_hex(key.strip_prefix("group:")?)
    }
}
