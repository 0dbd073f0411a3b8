//! The device's local database.
//!
//! [`Store`] is a typed view of everything a device keeps: the account, profile, settings,
//! contacts, blocks and groups (messages, outbox, sessions and relay mailboxes join as the
//! protocol lands). Writes go through [`Store::apply`], which takes a batch of [`Op`]s and makes
//! them durable atomically before it returns: a command that reports success has been flushed,
//! and a command that fails has written nothing.
//!
//! Two implementations share one behaviour: [`SledStore`] on disk and [`MemStore`] in memory
//! (for the simulator and tests). A property test drives both with the same random operations.

pub mod blobs;
mod buffered;
mod mem;
pub mod relay;
mod sled_store;

pub use blobs::{BlobError, Blobs, DirBlobs, MemBlobs};
pub use buffered::MAX_PENDING_WRITES;
pub use mem::MemStore;
pub use relay::{MemRelayStore, RelayOp, RelayStore, SledRelayStore};
pub use sled_store::SledStore;

use instaconnect_wire::records::{
    AccountRecord, AttachmentRecord, BlockRecord, ContactMailboxes, ContactRecord,
    ContactRequestRecord, ConversationRecord, DepositRecord, GroupId, GroupMessageRecord,
    GroupRecord, GroupSyncRecord, HeldMessage, MessageRecord, OutboxEntry, OwnMailbox, Profile,
    Settings, UploadRecord,
};
use instaconnect_wire::records::{LocationRecord, PositionRecord};
use instaconnect_wire::{SecretBytes, WireError};

/// One write. A batch of them is applied all-or-nothing.
#[derive(Clone, Debug, PartialEq)]
pub enum Op {
    PutAccount(AccountRecord),
    PutProfile(Profile),
    PutSettings(Settings),
    PutContact(ContactRecord),
    /// Removes the contact with this E.164 number (no-op if absent).
    RemoveContact(String),
    PutBlock(BlockRecord),
    /// Unblocks this E.164 number (no-op if not blocked).
    RemoveBlock(String),
    PutGroup(GroupRecord),
    RemoveGroup(GroupId),
    /// Inserts or replaces a message (by conversation and sequence; indexed by id).
    PutMessage(MessageRecord),
    PutConversation(ConversationRecord),
    PutOutbox(OutboxEntry),
    RemoveOutbox([u8; 16]),
    /// The pickled ratchet session with a peer device.
    PutSession {
        peer_id: String,
        pickle: SecretBytes,
    },
    PutContactRequest(ContactRequestRecord),
    RemoveContactRequest(String),
    /// The serialised replay guard.
    PutReplay(SecretBytes),
    /// Records that an envelope with this id was processed (for payloads that are not
    /// stored messages), so a retry is acknowledged without decrypting again.
    MarkSeen([u8; 16]),
    /// A received text held back until the texts sent before it arrive (keyed by its
    /// conversation and sender-order number).
    PutHeld(HeldMessage),
    PutOwnMailbox(OwnMailbox),
    /// Forgets one of our mailboxes, by id.
    RemoveOwnMailbox([u8; 32]),
    PutContactMailboxes(ContactMailboxes),
    PutDeposit(DepositRecord),
    /// Forgets a deposit: (message id, mailbox).
    RemoveDeposit([u8; 16], [u8; 32]),
    PutAttachment(AttachmentRecord),
    /// Forgets a message's attachment record, by message id.
    RemoveAttachment([u8; 16]),
    RemoveHeld {
        peer: String,
        n: u64,
    },
    PutGroupSync(GroupSyncRecord),
    RemoveGroupSync(GroupId),
    PutGroupMessage(GroupMessageRecord),
    /// Which chunks of an attachment we sent relays hold for its recipient.
    PutUpload(UploadRecord),
    /// Forgets an upload, by message id.
    RemoveUpload([u8; 16]),
    /// A location message's location (by message id), inserted or replaced.
    PutLocation(LocationRecord),
    /// The device's own position.
    PutPosition(PositionRecord),
    /// Marks a message (by id) as forwarded.
    MarkForwarded([u8; 16]),
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "the database at {path} has schema version {found}, newer than this build supports ({supported}); upgrade InstaConnect"
    )]
    NewerSchema {
        path: String,
        found: u32,
        supported: u32,
    },
    #[error(
        "the database at {path} has data but no schema version; it was not written by InstaConnect"
    )]
    Unversioned { path: String },
    #[error(
        "the database at {path} is in use by another process (is `instaconnect run` running?)"
    )]
    Locked { path: String },
    #[error("database error: {0}")]
    Sled(#[from] sled::Error),
    #[error("corrupt record {key}: {source}")]
    Corrupt {
        key: String,
        #[source]
        source: WireError,
    },
    #[error("could not encode a record: {0}")]
    Encode(WireError),
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// A typed, durable store. All reads see the last applied batch.
pub trait Store: Send + Sync {
    fn account(&self) -> Result<Option<AccountRecord>>;
    /// The profile, or an empty one if none was set.
    fn profile(&self) -> Result<Profile>;
    /// The settings, or the defaults if none were set.
    fn settings(&self) -> Result<Settings>;
    fn contact(&self, phone: &str) -> Result<Option<ContactRecord>>;
    /// All contacts, ordered by phone number.
    fn contacts(&self) -> Result<Vec<ContactRecord>>;
    /// The contact linked to this device (the lowest number if several are), by an index.
    fn contact_by_peer(&self, peer_id: &str) -> Result<Option<ContactRecord>>;
    fn block(&self, phone: &str) -> Result<Option<BlockRecord>>;
    /// All blocks, ordered by phone number.
    fn blocks(&self) -> Result<Vec<BlockRecord>>;
    fn group(&self, id: &GroupId) -> Result<Option<GroupRecord>>;
    /// All groups, ordered by id.
    fn groups(&self) -> Result<Vec<GroupRecord>>;
    fn conversation(&self, peer: &str) -> Result<Option<ConversationRecord>>;
    /// All conversations, ordered by peer.
    fn conversations(&self) -> Result<Vec<ConversationRecord>>;
    /// The messages of a conversation with sequence >= `from_seq`, in order.
    fn messages(&self, peer: &str, from_seq: u64) -> Result<Vec<MessageRecord>>;
    fn message(&self, id: &[u8; 16]) -> Result<Option<MessageRecord>>;
    /// The outbox, ordered by message id.
    fn outbox(&self) -> Result<Vec<OutboxEntry>>;
    fn session(&self, peer_id: &str) -> Result<Option<SecretBytes>>;
    /// Pending contact requests, ordered by peer id.
    fn contact_requests(&self) -> Result<Vec<ContactRequestRecord>>;
    fn replay(&self) -> Result<Option<SecretBytes>>;
    /// Whether an envelope id was marked seen.
    fn seen(&self, id: &[u8; 16]) -> Result<bool>;
    /// Every held-back text, ordered by conversation and sender-order number.
    fn held(&self) -> Result<Vec<HeldMessage>>;
    /// The mailboxes this device opened on relays, ordered by mailbox id.
    fn own_mailboxes(&self) -> Result<Vec<OwnMailbox>>;
    /// Every contact's announced mailboxes, ordered by phone number.
    fn contact_mailboxes(&self) -> Result<Vec<ContactMailboxes>>;
    /// Envelopes left on relays and not yet acknowledged, ordered by message id and mailbox.
    fn deposits(&self) -> Result<Vec<DepositRecord>>;
    /// The attachment of a message, by message id.
    fn attachment(&self, id: &[u8; 16]) -> Result<Option<AttachmentRecord>>;
    /// Every attachment record, ordered by message id (transfers to resume).
    fn attachments(&self) -> Result<Vec<AttachmentRecord>>;
    /// A group's network state.
    fn group_sync(&self, id: &GroupId) -> Result<Option<GroupSyncRecord>>;
    /// Who sent a group message, and how far ours got.
    fn group_message(&self, id: &[u8; 16]) -> Result<Option<GroupMessageRecord>>;
    /// Attachments we sent whose chunks go through relays, ordered by message id.
    fn uploads(&self) -> Result<Vec<UploadRecord>>;
    /// The location of a location message, by message id.
    fn location(&self, id: &[u8; 16]) -> Result<Option<LocationRecord>>;
    /// Every location record, ordered by message id (live shares to resume).
    fn locations(&self) -> Result<Vec<LocationRecord>>;
    /// The device's own position, if set.
    fn position(&self) -> Result<Option<PositionRecord>>;
    /// Whether a message (by id) was forwarded.
    fn forwarded(&self, id: &[u8; 16]) -> Result<bool>;

    /// Applies the batch atomically and durably (flushed before returning).
    fn apply(&self, ops: Vec<Op>) -> Result<()> {
        self.apply_deferred(ops)?;
        self.flush()
    }
    /// Applies the batch atomically; durable only after the next [`Store::flush`]. Lets a
    /// receiver store many messages and flush once before acknowledging them all.
    fn apply_deferred(&self, ops: Vec<Op>) -> Result<()>;
    /// Makes every applied batch durable.
    fn flush(&self) -> Result<()>;
}
