//! The sans-IO messaging engine.
//!
//! The engine holds all protocol logic of direct (local-network) messaging and nothing else: no
//! sockets, no clock, no threads. The shell (the node's network driver, or the simulator) feeds
//! it [`Input`]s and [`Command`]s with the current time and carries out the [`Output`]s it polls.
//!
//! Durability rule: every effect is written to the store as a deferred batch, and outputs
//! (frames, acknowledgements) are released only by [`Engine::commit`], after the store is
//! flushed. So a node never acks a message it could still lose, and a shell may batch many
//! inputs under one flush.
//!
//! Linking two devices: `A` asks with [`Command::RequestContact`] (a plain
//! `ContactRequest{card}` frame over the authenticated transport). `B` sees
//! [`Event::ContactRequest`] and answers [`Command::AcceptContact`]: it starts an Olm session
//! from A's card and sends `ContactAccept{card}` sealed in an envelope; A starts the inbound
//! session from that pre-key message. Texts, read receipts and presence then travel as ratchet
//! messages: sealed in envelopes until the peer has answered the session (its first messages
//! are pre-key messages, which name our keys), then many to a request in a batch over the
//! authenticated connection. Each is acknowledged end to end once stored. Outbox entries are
//! encrypted afresh at every attempt, so a retry always decrypts.

mod attachment;
mod group;
mod location;
mod mailbox;
mod upload;

pub use attachment::{
    seal_attachment, AttachmentMeta, CHUNK_WINDOW, MAX_BAD_CHUNKS, MAX_FAILED_PARTS,
};
pub use location::{
    location_text, DEFAULT_LIVE_INTERVAL_MS, MAX_INCOMING_LIVE, MAX_LIVE_MS, MAX_LIVE_SHARES,
    MIN_LIVE_INTERVAL_MS, MIN_LIVE_MS,
};
pub use upload::{AttachmentLimits, UPLOAD_BATCH, UPLOAD_WINDOW};

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::Arc;

use instaconnect_crypto::IdentityKey;
use instaconnect_crypto::{
    open_envelope_cached, seal_envelope_cached, CardDisplay, ContactCard, CryptoError, Device,
    EnvelopeContent, Identity, MessageId, OpenedEnvelope, PayloadKind, Session, SignedDeviceKeys,
    VerifiedKeys, DEFAULT_CARD_TTL_MS,
};
use instaconnect_store::{BlobError, Blobs, MemBlobs, Op, Store, StoreError};
use instaconnect_wire::proto::{
    DirectItem, Payload, ProfileReply, ProtoError, Request, Response, BATCH_OVERHEAD_BYTES,
    MAX_BATCH_ITEMS, MAX_FRAME_BYTES, MAX_TEXT_BYTES,
};
use instaconnect_wire::records::{
    AccountRecord, ContactRecord, ContactRequestRecord, ConversationRecord, DeliveryState,
    Direction, GroupId, HeldMessage, MessageRecord, OutboxEntry, OutboxPayload, Visibility,
};
use instaconnect_wire::SecretBytes;
use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;

/// First retry delay of an unacknowledged envelope.
pub const RETRY_BASE_MS: u64 = 1_000;
/// Longest retry delay.
pub const RETRY_MAX_MS: u64 = 60_000;
/// Most requests in flight to one peer at once (the rest wait their turn, in order).
pub const MAX_INFLIGHT_REQUESTS_PER_PEER: usize = 4;
/// A further request goes out to a peer only while at most this many messages are in flight
/// to it. Requests in flight may be taken in any order, and the receiver's Olm session keeps
/// only 40 skipped message keys: what overtakes is at most this far ahead, so everything stays
/// decryptable. (One that still fails is refused, and encrypted afresh on its retry.)
pub const MAX_REORDER_ITEMS: usize = 32;
/// Most messages in flight to one peer: the reorder bound plus one full batch.
pub const MAX_INFLIGHT_PER_PEER: usize = MAX_REORDER_ITEMS + MAX_BATCH_ITEMS;
/// What a ratchet message adds to its plaintext, at most (to fill a batch before encrypting).
const RATCHET_OVERHEAD_BYTES: usize = 160;
/// Most peers the engine keeps state for; when full, the longest-unseen disconnected peers are
/// forgotten, [`PEER_EVICTION_BATCH`] at a time (so a crowd of strangers costs no scan each).
pub const MAX_PEERS: usize = 1_024;
/// Peers forgotten at once when the table is full.
pub const PEER_EVICTION_BATCH: usize = 64;
/// Most pending contact requests kept; further ones are refused.
pub const MAX_CONTACT_REQUESTS: usize = 256;
/// Malformed frames tolerated from one peer within [`BAD_FRAME_WINDOW_MS`] before it is
/// disconnected.
pub const MAX_BAD_FRAMES: u32 = 16;
/// The window over which malformed frames are counted.
pub const BAD_FRAME_WINDOW_MS: u64 = 60_000;
/// Most outputs waiting for the next commit; beyond it inputs are refused (`NotNow`).
pub const MAX_PENDING_OUTPUTS: usize = 65_536;
/// Most texts of one conversation held back behind a gap; one more shows them all.
pub const MAX_HELD_PER_CONVERSATION: usize = 1_024;
/// How long texts wait behind a gap in a contact's numbering before they are shown anyway.
pub const GAP_TIMEOUT_MS: u64 = 120_000;
/// Our contact card is signed again for a request or an accept when the last one is this old
/// (or shows another name or phone); until then the same card goes out.
pub const CARD_REUSE_MS: u64 = 60 * 60 * 1000;

/// What happened on the network, as told by the shell.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Input {
    /// A device was found (mDNS) with addresses to reach it.
    Discovered {
        peer: String,
        addrs: Vec<String>,
    },
    /// A discovered device went away.
    Lost {
        peer: String,
    },
    Connected {
        peer: String,
    },
    Disconnected {
        peer: String,
    },
    /// A request frame from `peer`; answer with [`Output::Respond`] on `channel`.
    Request {
        peer: String,
        frame: Vec<u8>,
        channel: u64,
    },
    /// The response to our request `tag`.
    Response {
        peer: String,
        tag: u64,
        frame: Vec<u8>,
    },
    /// Our request `tag` failed (unreachable, timeout, closed).
    RequestFailed {
        peer: String,
        tag: u64,
        error: String,
    },
    /// The shell's owner link to a relay (see [`Link::Owner`]) came up or went down. A relay
    /// is known from the user's `--relay`, the config, or mDNS (role relay); the shell keeps
    /// its owner link connected, redialing with backoff.
    Relay {
        relay: String,
        addrs: Vec<String>,
        up: bool,
    },
    /// The answer to our mailbox request `tag` (a `wire::mailbox::MailboxResponse` frame).
    MailboxResponse {
        relay: String,
        tag: u64,
        frame: Vec<u8>,
    },
    /// Our mailbox request `tag` failed (unreachable, timeout, closed).
    MailboxFailed {
        relay: String,
        tag: u64,
        error: String,
    },
    /// A relay told us (on the owner link) that `mailbox` has new envelopes. The shell answers
    /// the relay's `Notify` itself.
    MailboxNotify {
        relay: String,
        mailbox: [u8; 32],
    },
}

/// Which of the shell's two relay links a mailbox request travels on. Both use transport
/// identities that are ephemeral (made at start, never the account's), and different ones, so
/// a relay cannot tie the mailboxes a device reads to the envelopes it leaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Link {
    /// Reading our own mailboxes: create, fetch, delete, subscribe (and notifications).
    Owner,
    /// Leaving envelopes in a contact's mailboxes, and purging them.
    Depositor,
}

/// What the user asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// Send a text to a contact (E.164).
    Send { to: String, text: String },
    /// Link a contact to a device and ask it to become contacts.
    RequestContact { phone: String, peer: String },
    /// Accept a pending contact request from a device.
    AcceptContact { peer: String },
    /// The user has seen the conversation with a contact: mark read, send receipts if allowed.
    MarkRead { contact: String },
    /// Ask a device for the profile fields it shows us.
    RequestProfile { peer: String },
    /// Send the file the blob store holds under `id` (which becomes the message id), sealed
    /// as `manifest` ([`seal_attachment`]), to a contact (E.164).
    SendAttachment {
        to: String,
        id: [u8; 16],
        manifest: Box<instaconnect_wire::proto::AttachmentManifest>,
    },
    /// The user changed a group in the address book (created it, added, removed, promoted,
    /// demoted, renamed): send its new state to the members. Admins only.
    GroupChanged { group: GroupId },
    /// Accept or decline an invitation to a group.
    AnswerGroup { group: GroupId, accept: bool },
    /// The user left a group (the address book marked it left): tell the members.
    LeaveGroup { group: GroupId },
    /// Send a text to a group.
    SendGroup { group: GroupId, text: String },
    /// Send the file the blob store holds under `id` (sealed as `manifest`) to a group; its
    /// members fetch the chunks from this device.
    SendGroupAttachment {
        group: GroupId,
        id: [u8; 16],
        manifest: Box<instaconnect_wire::proto::AttachmentManifest>,
    },
    /// The user has seen the group's conversation: mark read, send receipts if allowed.
    MarkGroupRead { group: GroupId },
    /// Send a location to a contact (E.164): `location`, else the device's position
    /// ([`Command::SetPosition`]); live for `live_ms` if given (updated from the device's
    /// position until it ends or is stopped; needs the `location` privacy setting).
    SendLocation {
        to: String,
        location: Option<instaconnect_wire::proto::Location>,
        live_ms: Option<u64>,
    },
    /// Stop our live locations: to one contact (E.164), or all. Returns how many were running.
    StopLocation { to: Option<String> },
    /// The device's current position: what live locations send, and `nearby` measures from.
    SetPosition {
        location: instaconnect_wire::proto::Location,
    },
    /// Forward message `id` to contact `to` (E.164), marked forwarded. For an attachment, the
    /// shell first copies its file in the blob store under a new id and seals it afresh
    /// ([`seal_attachment`]): `attachment` is that id and manifest.
    Forward {
        id: [u8; 16],
        to: String,
        attachment: Option<Box<([u8; 16], instaconnect_wire::proto::AttachmentManifest)>>,
    },
    /// Ask the devices around for their positions again (for `nearby`; only while ours is set).
    RefreshNearby,
}

/// What the engine asks the shell to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    Request {
        peer: String,
        tag: u64,
        frame: Vec<u8>,
    },
    Respond {
        channel: u64,
        frame: Vec<u8>,
    },
    Disconnect {
        peer: String,
    },
    /// A `wire::mailbox::MailboxRequest` frame for `relay` (dial `addrs` if not connected) on
    /// `link`; answer with [`Input::MailboxResponse`] or [`Input::MailboxFailed`] and `tag`.
    Mailbox {
        relay: String,
        addrs: Vec<String>,
        link: Link,
        tag: u64,
        frame: Vec<u8>,
    },
    Event(Event),
}

/// What the user should see.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    MessageReceived {
        from: String,
        id: String,
        text: String,
        sent_at_ms: u64,
    },
    StateChanged {
        to: String,
        id: String,
        /// "Queued", "Sent", "Accepted by N relays", "Delivered", "Read".
        #[serde(serialize_with = "state_label")]
        state: DeliveryState,
    },
    ContactRequest {
        peer: String,
        phone: Option<String>,
        name: Option<String>,
    },
    ContactAccepted {
        peer: String,
        phone: String,
    },
    Presence {
        peer: String,
        online: bool,
    },
    Profile {
        peer: String,
        profile: ProfileView,
    },
    PeerDiscovered {
        peer: String,
    },
    PeerLost {
        peer: String,
    },
    UnsupportedVersion {
        peer: String,
        version: u16,
    },
    Misbehaving {
        peer: String,
    },
    /// Our owner link to a relay came up or went down.
    Relay {
        relay: String,
        up: bool,
    },
    /// More chunks of an incoming attachment are stored (of `total`; `size` bytes in all).
    AttachmentProgress {
        from: String,
        id: String,
        stored: u32,
        total: u32,
        size: u64,
    },
    /// An incoming attachment is complete and checked.
    AttachmentReceived {
        from: String,
        id: String,
        name: String,
        size: u64,
    },
    /// An admin invited us to a group (accept or decline it).
    GroupInvite {
        group: String,
        name: String,
        from: String,
        members: usize,
    },
    /// A group we are in changed: who joined, left, was added or removed, or a rename.
    GroupChanged {
        group: String,
        name: String,
        what: String,
    },
    /// A member's message in a group.
    GroupMessageReceived {
        group: String,
        name: String,
        from: String,
        id: String,
        text: String,
        sent_at_ms: u64,
    },
    /// Something failed that the user should know of (never a message's content).
    Problem {
        message: String,
    },
    /// More chunks of an attachment we sent reached its recipient's device (`relayed`:
    /// false) or its recipient's relay mailboxes (`relayed`: true).
    AttachmentSendProgress {
        to: String,
        id: String,
        sent: u32,
        total: u32,
        size: u64,
        relayed: bool,
    },
    /// The recipient of an attachment we sent has all of it.
    AttachmentDelivered {
        to: String,
        id: String,
    },
    /// An incoming attachment is larger than this device takes (directly, or through relays
    /// when `relayed`): its bytes are not fetched that way.
    AttachmentRefused {
        from: String,
        id: String,
        name: String,
        size: u64,
        limit: u64,
        relayed: bool,
    },
    /// A contact's live location `id` moved.
    LocationUpdated {
        from: String,
        id: String,
        location: instaconnect_wire::proto::Location,
    },
    /// A live location `id` (a contact's, or ours to them) ended: `stopped` by its sender, or
    /// expired.
    LocationEnded {
        peer: String,
        id: String,
        stopped: bool,
    },
}

fn state_label<S: serde::Serializer>(
    state: &DeliveryState,
    s: S,
) -> std::result::Result<S::Ok, S::Error> {
    let label = state.label();
    let mut c = label.chars();
    let first = c.next().map(|f| f.to_ascii_uppercase()).into_iter();
    s.serialize_str(&first.chain(c).collect::<String>())
}

/// The profile fields a peer showed us.
#[derive(Clone, Debug, PartialEq, Eq, Default, serde::Serialize)]
pub struct ProfileView {
    pub phone: Option<String>,
    pub name: Option<String>,
    pub status: Option<String>,
    pub has_picture: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("no account in this store")]
    NoAccount,
    #[error("{0} is not a contact")]
    UnknownContact(String),
    #[error("{0} is not linked to a device yet (link it with `contacts add PHONE --peer PEERID`)")]
    NotLinked(String),
    #[error("no contact request from {0}")]
    NoRequest(String),
    #[error("the contact request from {0} carries no phone number")]
    RequestWithoutPhone(String),
    #[error("{0} is blocked")]
    Blocked(String),
    #[error("message is too long: {len} bytes (at most {MAX_TEXT_BYTES})")]
    TooLong { len: usize },
    #[error("message is empty")]
    Empty,
    #[error("too busy: try again shortly")]
    Busy,
    #[error("cannot send this attachment: {0}")]
    Attachment(String),
    #[error("{0}")]
    Group(String),
    #[error(transparent)]
    Blob(#[from] BlobError),
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("encoding failed: {0}")]
    Wire(#[from] instaconnect_wire::WireError),
    #[error("the attachment is {size} bytes, more than this device's limit of {limit} bytes")]
    AttachmentTooLarge { size: u64, limit: u64 },
    #[error("cannot share the location: {0}")]
    Location(String),
    #[error("no message with id {0}")]
    UnknownMessage(String),
    #[error("cannot forward this message: {0}")]
    Forward(String),
}

pub type Result<T> = std::result::Result<T, EngineError>;

/// A device the engine knows of.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct PeerView {
    pub peer: String,
    pub addrs: Vec<String>,
    pub discovered: bool,
    pub connected: bool,
    /// Online as the peer's presence (and privacy) tells us.
    pub online: bool,
    /// When the peer was last online as its presence told us; `None` if its privacy never
    /// showed us. This is the "last seen" users are shown.
    pub last_online_ms: Option<u64>,
    /// When we last heard from the device at all (for ordering and eviction; not shown, since
    /// the peer's privacy settings do not govern it).
    #[serde(skip)]
    pub last_seen_ms: u64,
    pub profile: Option<ProfileView>,
    /// Our contact linked to this device, if any.
    pub contact: Option<String>,
    /// The position the device showed us (its privacy permitting), and when we heard it.
    pub location: Option<instaconnect_wire::proto::Location>,
    pub location_at_ms: Option<u64>,
}

/// What the engine keeps of a device in its peer table: a [`PeerView`] without the peer id
/// (the table's key) and with the rarely present parts boxed, since a table holds up to
/// [`MAX_PEERS`] devices met (mostly strangers) and the simulator runs thousands of engines.
#[derive(Default)]
struct PeerInfo {
    addrs: Vec<String>,
    discovered: bool,
    connected: bool,
    online: bool,
    last_online_ms: Option<u64>,
    last_seen_ms: u64,
    profile: Option<Box<ProfileView>>,
    contact: Option<Box<str>>,
    /// The position it showed us, and when.
    location: Option<Box<(instaconnect_wire::proto::Location, u64)>>,
}

impl PeerInfo {
    fn view(&self, peer: &str) -> PeerView {
        PeerView {
            peer: peer.to_string(),
            addrs: self.addrs.clone(),
            discovered: self.discovered,
            connected: self.connected,
            online: self.online,
            last_online_ms: self.last_online_ms,
            last_seen_ms: self.last_seen_ms,
            profile: self.profile.as_deref().cloned(),
            contact: self.contact.as_deref().map(str::to_string),
            location: self.location.as_deref().map(|(l, _)| *l),
            location_at_ms: self.location.as_deref().map(|(_, at)| *at),
        }
    }
}

#[derive(Default)]
struct PeerState {
    view: PeerInfo,
    bad_frames: u32,
    /// When the first bad frame of the current window came.
    bad_since_ms: u64,
    /// Requests in flight, and the outbox entries they carry.
    inflight: usize,
    inflight_items: usize,
    /// We sent our contact request on this connection already.
    requested: bool,
}

/// The outbox in memory, so sending, acks and timers cost nothing per queued entry. The store
/// holds the same entries durably; both are changed together.
#[derive(Default)]
struct Outbox {
    /// Per peer device, the entries in the order they go out: (order, id) -> entry. Order is
    /// 0 for control payloads (accepts, receipts) and the message's sequence + 1 for texts.
    queues: BTreeMap<String, BTreeMap<(u64, [u8; 16]), OutboxEntry>>,
    /// id -> (peer device, order).
    index: HashMap<[u8; 16], (String, u64)>,
    /// Entries sent and waiting for their answer.
    inflight: HashSet<[u8; 16]>,
}

impl Outbox {
    fn insert(&mut self, order: u64, e: OutboxEntry) {
        self.remove(&e.id);
        self.index.insert(e.id, (e.peer_id.clone(), order));
        self.queues
            .entry(e.peer_id.clone())
            .or_default()
            .insert((order, e.id), e);
    }

    fn remove(&mut self, id: &[u8; 16]) -> Option<OutboxEntry> {
        let (peer, order) = self.index.remove(id)?;
        self.inflight.remove(id);
        let q = self.queues.get_mut(&peer)?;
        let e = q.remove(&(order, *id));
        if q.is_empty() {
            self.queues.remove(&peer);
        }
        e
    }

    fn get(&self, id: &[u8; 16]) -> Option<&OutboxEntry> {
        let (peer, order) = self.index.get(id)?;
        self.queues.get(peer)?.get(&(*order, *id))
    }

    fn get_mut(&mut self, id: &[u8; 16]) -> Option<&mut OutboxEntry> {
        let (peer, order) = self.index.get(id)?;
        self.queues.get_mut(peer)?.get_mut(&(*order, *id))
    }
}

/// Received texts waiting behind a gap, per conversation (contact phone).
#[derive(Default)]
struct HeldTexts {
    by_conversation: BTreeMap<String, BTreeMap<u64, MessageRecord>>,
}

impl HeldTexts {
    /// When the oldest held text of each conversation was stored.
    fn since(&self, phone: &str) -> Option<u64> {
        self.by_conversation
            .get(phone)?
            .values()
            .map(|m| m.stored_at_ms)
            .min()
    }
}

/// What became of a sealed envelope's ratchet message.
enum Decrypted {
    Plain(zeroize::Zeroizing<Vec<u8>>),
    /// Our session could not decrypt it.
    Undecryptable(String),
    /// No session it belongs to.
    NoSession,
    /// A pre-key message that starts no session.
    BadPrekey,
}

enum Pending {
    /// Outbox entries, in one request.
    Items {
        ids: Vec<[u8; 16]>,
    },
    Ephemeral,
    Profile,
    ContactRequest,
    /// Part of a chunk of an incoming attachment.
    Chunk {
        id: [u8; 16],
        index: u32,
        offset: u32,
    },
    /// A device's position, for `nearby`.
    Location,
}

/// The engine of one device. See the module docs.
pub struct Engine {
    store: Arc<dyn Store>,
    identity: Identity,
    device: Device,
    own_keys: SignedDeviceKeys,
    account: AccountRecord,
    rng: ChaCha20Rng,
    sessions: HashMap<String, Session>,
    /// The peer table. Hashed (lookups are on every input, and peer ids share long prefixes);
    /// nothing iterates it in an order that reaches an output: [`Engine::peers`] sorts and
    /// eviction picks by (last seen, peer id), so the same inputs and seed give the same run.
    peers: HashMap<Box<str>, Box<PeerState>>,
    pending: HashMap<u64, (String, Pending)>,
    next_tag: u64,
    /// Outputs waiting for the next commit.
    staged: Vec<Output>,
    /// Outputs released by a commit, waiting to be polled.
    ready: VecDeque<Output>,
    /// Outputs waiting for the flush of their commit ticket, oldest first.
    awaiting: VecDeque<(u64, Vec<Output>)>,
    /// The last commit ticket handed out.
    last_ticket: u64,
    /// The store was written since the last commit ticket.
    wrote: bool,
    device_dirty: bool,
    outbox: Outbox,
    held: HeldTexts,
    /// Sessions changed since the last commit.
    dirty_sessions: BTreeSet<String>,
    /// Device keys already verified (bounded by the crypto crate).
    verified: VerifiedKeys,
    /// Our contact card as last signed (see [`Engine::my_card`]).
    card: Option<ContactCard>,
    /// Relays, our mailboxes on them and deposits in contacts' mailboxes.
    relay: mailbox::RelayState,
    /// Tags of requests (direct or mailbox) that must wait for the flush of what they
    /// acknowledge, like responses do.
    after_flush: HashSet<u64>,
    /// Channels whose response acknowledges nothing stored (attachment chunks served): they
    /// go without waiting for a flush.
    unacking: HashSet<u64>,
    /// Where attachments' bytes live.
    blobs: Arc<dyn Blobs>,
    /// Attachments being fetched or served.
    transfers: attachment::Transfers,
    /// Our group messages on their way to members.
    fanout: group::Fanout,
    /// Attachments whose chunks we leave in relays for their recipients.
    uploads: upload::Uploads,
    /// The largest attachments sent or taken, directly and through relays.
    limits: AttachmentLimits,
    /// Live locations: ours running, and the incoming ones whose end is timed.
    live: location::Live,
}

fn earliest(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// A message that arrived from the contact `phone`, delivered (its place in the conversation is
/// set when it is shown).
fn incoming(
    id: [u8; 16],
    phone: &str,
    text: String,
    sent_at_ms: u64,
    now_ms: u64,
) -> MessageRecord {
    MessageRecord {
        id,
        peer: phone.to_string(),
        seq: 0,
        direction: Direction::Incoming,
        text,
        sent_at_ms,
        stored_at_ms: now_ms,
        state: DeliveryState::Delivered,
    }
}

/// A new outbox entry `id` carrying an encoded payload to `peer`, due at once.
fn payload_entry(id: [u8; 16], peer: &str, payload: Vec<u8>, now_ms: u64) -> OutboxEntry {
    OutboxEntry {
        id,
        peer_id: peer.to_string(),
        payload: OutboxPayload::Payload(payload),
        attempts: 0,
        next_attempt_ms: now_ms,
    }
}

fn hex(id: &[u8; 16]) -> String {
    id.iter().map(|b| format!("{b:02x}")).collect()
}

impl Engine {
    /// Loads the account from `store`. `seed` drives every random choice the protocol makes
    /// (message ids, jitter), so a simulation replays from its seed.
    pub fn new(store: Arc<dyn Store>, seed: [u8; 32]) -> Result<Engine> {
        let account = store.account()?.ok_or(EngineError::NoAccount)?;
        let identity = Identity::from_secret_bytes(account.identity_secret.expose())?;
        let device = Device::from_pickle_bytes(account.device_pickle.expose())?;
        let own_keys = device.signed_keys(&identity);
        let mut outbox = Outbox::default();
        for e in store.outbox()? {
            let order = match e.payload {
                OutboxPayload::Text { .. } => store.message(&e.id)?.map_or(0, |m| m.seq + 1),
                _ => 0,
            };
            outbox.insert(order, e);
        }
        let relay = mailbox::RelayState::load(store.as_ref())?;
        let transfers = attachment::Transfers::load(store.as_ref())?;
        let fanout = group::Fanout::load(store.as_ref())?;
        let uploads = upload::Uploads::load(store.as_ref())?;
        let live = location::Live::load(store.as_ref())?;
        let mut held = HeldTexts::default();
        for h in store.held()? {
            held.by_conversation
                .entry(h.message.peer.clone())
                .or_default()
                .insert(h.n, h.message);
        }
        Ok(Engine {
            store,
            identity,
            device,
            own_keys,
            account,
            rng: ChaCha20Rng::from_seed(seed),
            sessions: HashMap::new(),
            peers: HashMap::new(),
            pending: HashMap::new(),
            next_tag: 1,
            staged: Vec::new(),
            ready: VecDeque::new(),
            awaiting: VecDeque::new(),
            last_ticket: 0,
            wrote: false,
            device_dirty: false,
            outbox,
            held,
            dirty_sessions: BTreeSet::new(),
            verified: VerifiedKeys::new(),
            card: None,
            relay,
            after_flush: HashSet::new(),
            unacking: HashSet::new(),
            blobs: Arc::new(MemBlobs::new()),
            transfers,
            fanout,
            uploads,
            limits: AttachmentLimits::default(),
            live,
        })
    }

    /// Keeps attachments' bytes in `blobs` (files in the data dir on a device) instead of in
    /// memory.
    pub fn with_blobs(mut self, blobs: Arc<dyn Blobs>) -> Engine {
        self.blobs = blobs;
        self
    }

    /// This device's libp2p peer id.
    pub fn peer_id(&self) -> String {
        self.identity.public().peer_id()
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// The devices seen or connected, most recently seen first.
    pub fn peers(&self) -> Vec<PeerView> {
        let mut v: Vec<PeerView> = self.peers.iter().map(|(k, p)| p.view.view(k)).collect();
        v.sort_by(|a, b| {
            b.last_seen_ms
                .cmp(&a.last_seen_ms)
                .then(a.peer.cmp(&b.peer))
        });
        v
    }

    /// How many devices the peer table holds (at most [`MAX_PEERS`]); [`Engine::peers`]
    /// without the copy.
    pub fn peer_count(&self) -> usize {
        self.peers.len()
    }

    /// The next output released by a commit.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.ready.pop_front()
    }

    /// Flushes the store, then releases every output staged since the last commit.
    pub fn commit(&mut self) -> Result<()> {
        if let Some(ticket) = self.prepare_commit(true)? {
            self.store.flush()?;
            self.committed(ticket);
        }
        Ok(())
    }

    /// The first half of a commit, for shells that flush on another thread while the engine
    /// goes on. Writes what is pending and releases the outputs staged since the last commit
    /// that need no flush: requests (they acknowledge nothing: after a crash a message reaches
    /// its recipient at most once more, deduped there by id) and events (a text is shown as
    /// soon as it is stored, and reads see it; should the device crash before the flush, the
    /// sender, never acknowledged, sends it again). Responses (which acknowledge what was
    /// stored) and requests that acknowledge (tagged `after_flush`) are held until
    /// [`Engine::committed`] is called with the returned ticket, after a flush of the store
    /// that began after this call. A ticket is also returned when `durable`
    /// is asked for (the caller answers user commands) and something was written since the last
    /// ticket. `None`: no flush is needed.
    ///
    /// Other writes (delivery states, backoff) become durable with the next flush, whenever it
    /// comes (sled also flushes on its own twice a second): losing them in a crash only repeats
    /// a send, which the recipient dedupes. Tickets increase; a flush makes everything written
    /// before it durable, so `committed(t)` releases every ticket up to `t`.
    pub fn prepare_commit(&mut self, durable: bool) -> Result<Option<u64>> {
        if !self.dirty_sessions.is_empty() {
            let mut ops = Vec::with_capacity(self.dirty_sessions.len());
            for peer in std::mem::take(&mut self.dirty_sessions) {
                if let Some(s) = self.sessions.get(&peer) {
                    ops.push(Op::PutSession {
                        peer_id: peer,
                        pickle: SecretBytes::new(s.to_pickle_bytes().to_vec()),
                    });
                }
            }
            self.write(ops)?;
        }
        if self.device_dirty {
            self.account.device_pickle = SecretBytes::new(self.device.to_pickle_bytes().to_vec());
            self.write(vec![Op::PutAccount(self.account.clone())])?;
            self.device_dirty = false;
        }
        let after_flush = &mut self.after_flush;
        let unacking = &mut self.unacking;
        let acks = self.staged.iter().any(|o| match o {
            Output::Respond { channel, .. } => !unacking.contains(channel),
            Output::Request { tag, .. } | Output::Mailbox { tag, .. } => after_flush.contains(tag),
            _ => false,
        });
        let mut held = Vec::new();
        for o in self.staged.drain(..) {
            match &o {
                Output::Request { tag, .. } | Output::Mailbox { tag, .. }
                    if after_flush.remove(tag) =>
                {
                    held.push(o)
                }
                Output::Respond { channel, .. } if !unacking.remove(channel) => held.push(o),
                _ => self.ready.push_back(o),
            }
        }
        if acks || (durable && self.wrote) {
            self.wrote = false;
            self.last_ticket += 1;
            self.awaiting.push_back((self.last_ticket, held));
            return Ok(Some(self.last_ticket));
        }
        // Nothing here needs a flush; keep the order behind what waits for one.
        match self.awaiting.back_mut() {
            Some((_, waiting)) => waiting.extend(held),
            None => self.ready.extend(held),
        }
        Ok(None)
    }

    /// A flush that began after [`Engine::prepare_commit`] returned `ticket` has completed:
    /// releases what that commit, and every earlier one, held back.
    pub fn committed(&mut self, ticket: u64) {
        while self.awaiting.front().is_some_and(|(t, _)| *t <= ticket) {
            if let Some((_, outputs)) = self.awaiting.pop_front() {
                self.ready.extend(outputs);
            }
        }
    }

    /// Applies a batch of store writes (deferred: durable at the next commit).
    fn write(&mut self, ops: Vec<Op>) -> Result<()> {
        if ops.is_empty() {
            return Ok(());
        }
        self.store.apply_deferred(ops)?;
        self.wrote = true;
        Ok(())
    }

    /// When [`Engine::handle_timeout`] should next be called.
    pub fn poll_timeout(&self) -> Option<u64> {
        let mut next: Option<u64> = None;
        for (peer, queue) in &self.outbox.queues {
            // One look-up per queue: [`Engine::reachable`] and [`Engine::has_room`] in one.
            let state = self.peers.get(peer.as_str());
            let connected = state.is_some_and(|p| p.view.connected);
            if !connected && self.relay.can_deposit(peer) {
                next = earliest(
                    next,
                    self.relay.next_deposit(peer, queue, &self.outbox.inflight),
                );
            }
            let sending =
                state.is_some_and(|p| (p.view.connected || p.view.discovered) && Self::room_in(p));
            if !sending {
                continue;
            }
            // Entries go out in order and everything due is sent at once while the window has
            // room, so the next retry is among the first entries waiting.
            let soonest = queue
                .values()
                .filter(|e| !self.outbox.inflight.contains(&e.id))
                .take(MAX_BATCH_ITEMS)
                .map(|e| e.next_attempt_ms)
                .min();
            next = earliest(next, soonest);
        }
        for phone in self.held.by_conversation.keys() {
            next = earliest(next, self.held.since(phone).map(|s| s + GAP_TIMEOUT_MS));
        }
        earliest(earliest(next, self.upload_timeout()), self.live.next_due())
    }

    /// Retries envelopes whose backoff has passed and shows texts whose gap timed out.
    pub fn handle_timeout(&mut self, now_ms: u64) {
        if let Err(e) = self.pump_outbox(None, now_ms) {
            self.problem(format!("outbox: {e}"));
        }
        if let Err(e) = self.pump_uploads(now_ms) {
            self.problem(format!("attachments through relays: {e}"));
        }
        let expired: Vec<String> = self
            .held
            .by_conversation
            .keys()
            .filter(|p| {
                self.held
                    .since(p)
                    .is_some_and(|s| s + GAP_TIMEOUT_MS <= now_ms)
            })
            .cloned()
            .collect();
        for phone in expired {
            if let Err(e) = self.release_held(&phone, true, now_ms) {
                self.problem(format!("held texts from {phone}: {e}"));
            }
        }
        if let Err(e) = self.tick_live(now_ms) {
            self.problem(format!("live location: {e}"));
        }
    }

    fn problem(&mut self, message: String) {
        self.staged.push(Output::Event(Event::Problem { message }));
    }

    fn event(&mut self, e: Event) {
        self.staged.push(Output::Event(e));
    }

    fn tag(&mut self) -> u64 {
        let t = self.next_tag;
        self.next_tag += 1;
        t
    }

    fn random_id(&mut self) -> [u8; 16] {
        let mut id = [0u8; 16];
        self.rng.fill_bytes(&mut id);
        id
    }

    /// Whether another request may go to `peer` now (see [`MAX_REORDER_ITEMS`]).
    fn has_room(&self, peer: &str) -> bool {
        self.peers.get(peer).is_some_and(|p| Self::room_in(p))
    }

    fn room_in(p: &PeerState) -> bool {
        p.inflight == 0
            || (p.inflight < MAX_INFLIGHT_REQUESTS_PER_PEER
                && p.inflight_items <= MAX_REORDER_ITEMS)
    }

    fn reachable(&self, peer: &str) -> bool {
        self.peers
            .get(peer)
            .is_some_and(|p| p.view.connected || p.view.discovered)
    }

    /// The entry of `peer` in the peer table, made if new (then with the contact linked to it,
    /// if any; later links set it themselves). When the table is full, the
    /// [`PEER_EVICTION_BATCH`] least recently seen devices that are not connected make room.
    fn peer_mut(&mut self, peer: &str, now_ms: u64) -> &mut PeerState {
        if !self.peers.contains_key(peer) {
            let contact = self.contact_by_peer(peer);
            self.add_peer(peer, contact.as_ref());
        }
        let p = self.peers.get_mut(peer).expect("inserted above");
        p.view.last_seen_ms = p.view.last_seen_ms.max(now_ms);
        p
    }

    /// A new entry for `peer`, linked to `contact`, after making room if the table is full.
    fn add_peer(&mut self, peer: &str, contact: Option<&ContactRecord>) {
        if self.peers.len() >= MAX_PEERS {
            self.evict_peers();
        }
        let mut p = Box::<PeerState>::default();
        p.view.contact = contact.map(|c| c.phone.as_str().into());
        self.peers.insert(peer.into(), p);
    }

    /// [`Engine::peer_mut`] for a device discovered or connecting: refreshes which contact it
    /// is linked to, and returns that contact (one look-up in the store for both).
    fn peer_seen(&mut self, peer: &str, now_ms: u64) -> (&mut PeerState, Option<ContactRecord>) {
        let contact = self.contact_by_peer(peer);
        if !self.peers.contains_key(peer) {
            self.add_peer(peer, contact.as_ref());
        }
        let p = self.peers.get_mut(peer).expect("added above");
        if let Some(c) = &contact {
            p.view.contact = Some(c.phone.as_str().into());
        }
        p.view.last_seen_ms = p.view.last_seen_ms.max(now_ms);
        (p, contact)
    }

    fn evict_peers(&mut self) {
        let mut idle: Vec<(u64, &Box<str>)> = self
            .peers
            .iter()
            .filter(|(_, p)| !p.view.connected)
            .map(|(k, p)| (p.view.last_seen_ms, k))
            .collect();
        let n = PEER_EVICTION_BATCH.min(idle.len());
        if n == 0 {
            return;
        }
        if n < idle.len() {
            idle.select_nth_unstable(n - 1);
        }
        let victims: Vec<Box<str>> = idle[..n].iter().map(|(_, k)| (*k).clone()).collect();
        for v in victims {
            self.peers.remove(&v);
        }
    }

    fn contact_by_peer(&self, peer: &str) -> Option<ContactRecord> {
        self.store.contact_by_peer(peer).ok().flatten()
    }

    fn is_blocked(&self, phone: &str) -> bool {
        self.store.block(phone).ok().flatten().is_some()
    }

    fn session(&mut self, peer: &str) -> Result<Option<&mut Session>> {
        if !self.sessions.contains_key(peer) {
            if let Some(p) = self.store.session(peer)? {
                let s = Session::from_pickle_bytes(p.expose())?;
                self.sessions.insert(peer.to_string(), s);
            }
        }
        Ok(self.sessions.get_mut(peer))
    }

    /// The session with `peer` changed: it is written at the next commit (once, however many
    /// messages it sealed or opened in between).
    fn session_changed(&mut self, peer: &str) {
        if !self.dirty_sessions.contains(peer) {
            self.dirty_sessions.insert(peer.to_string());
        }
    }

    /// Our signed contact card: the one made last while it shows the same name and phone and
    /// is younger than [`CARD_REUSE_MS`] (so it still has nearly all of its
    /// `DEFAULT_CARD_TTL_MS`), else a new one. Signing costs three Ed25519 signatures, and a
    /// device asks several contacts at once (the simulator links all of them at one instant).
    fn my_card(&mut self, now_ms: u64) -> Result<ContactCard> {
        let name = self.store.profile()?.name;
        let display = CardDisplay {
            name: Some(name).filter(|n| !n.is_empty()),
            phone: Some(self.account.phone.clone()),
        };
        if let Some(card) = &self.card {
            let age = now_ms.checked_sub(card.created_at_ms);
            if card.display == display && age.is_some_and(|a| a < CARD_REUSE_MS) {
                return Ok(card.clone());
            }
        }
        let card =
            self.device
                .contact_card(&self.identity, display, now_ms, DEFAULT_CARD_TTL_MS)?;
        // Issuing a card may have rotated the device's fallback key.
        self.device_dirty = true;
        self.card = Some(card.clone());
        Ok(card)
    }

    /// Whether the session with `peer` still sends pre-key messages (the peer has not
    /// answered it), which travel sealed, one to a request.
    fn needs_envelope(&self, peer: &str) -> bool {
        !self
            .sessions
            .get(peer)
            .is_some_and(|s| s.has_received_message())
    }

    /// Encrypts an encoded payload for `peer`. The session must exist.
    fn encrypt(&mut self, peer: &str, plaintext: &[u8]) -> Result<Vec<u8>> {
        let session = self
            .session(peer)?
            .ok_or_else(|| EngineError::NotLinked(peer.to_string()))?;
        let ratchet = session.encrypt(plaintext)?;
        self.session_changed(peer);
        Ok(ratchet)
    }

    /// One encoded payload as a request frame: sealed while the session needs it, else a batch
    /// of one.
    fn request_frame(
        &mut self,
        peer: &str,
        plaintext: &[u8],
        id: [u8; 16],
        sent_at_ms: u64,
    ) -> Result<Vec<u8>> {
        self.session(peer)?;
        if self.needs_envelope(peer) {
            return self.seal(peer, plaintext, id, sent_at_ms);
        }
        let ratchet = self.encrypt(peer, plaintext)?;
        Ok(Request::Batch(vec![DirectItem {
            id,
            sent_at_ms,
            ratchet,
        }])
        .encode()?)
    }

    /// Encrypts an encoded payload for `peer` and seals it, as a request frame. The session
    /// must exist.
    fn seal(&mut self, peer: &str, plaintext: &[u8], id: [u8; 16], now_ms: u64) -> Result<Vec<u8>> {
        let envelope = self.seal_envelope(peer, plaintext, id, now_ms)?;
        Ok(Request::Envelope(envelope).encode()?)
    }

    /// Encrypts an encoded payload for `peer` and seals it in an envelope (for a request or a
    /// relay). The session must exist.
    fn seal_envelope(
        &mut self,
        peer: &str,
        plaintext: &[u8],
        id: [u8; 16],
        now_ms: u64,
    ) -> Result<Vec<u8>> {
        let ratchet = self.encrypt(peer, plaintext)?;
        let recipient = self
            .recipient_keys(peer)?
            .ok_or_else(|| EngineError::NotLinked(peer.to_string()))?;
        Ok(seal_envelope_cached(
            &mut self.verified,
            &self.device,
            &self.own_keys,
            &recipient,
            &EnvelopeContent {
                message_id: MessageId(id),
                timestamp_ms: now_ms,
                kind: PayloadKind::Pairwise,
                payload: ratchet,
            },
        )?)
    }

    fn recipient_keys(&self, peer: &str) -> Result<Option<SignedDeviceKeys>> {
        let Some(c) = self.contact_by_peer(peer) else {
            return Ok(None);
        };
        let Some(card) = c.card else { return Ok(None) };
        // The card was verified when it was stored; expiry matters only for starting sessions.
        let card: ContactCard = instaconnect_wire::decode(&card)
            .map_err(|_| EngineError::NotLinked(c.phone.clone()))?;
        Ok(Some(card.device))
    }

    // ----- commands ------------------------------------------------------------------------

    /// Carries out a user command. Effects are staged; call [`Engine::commit`] to make them
    /// durable and release the frames. Returns the new message's id for `Send`.
    pub fn command(&mut self, now_ms: u64, cmd: Command) -> Result<Option<String>> {
        if self.staged.len() >= MAX_PENDING_OUTPUTS {
            return Err(EngineError::Busy);
        }
        match cmd {
            Command::Send { to, text } => self.send_text(&to, text, now_ms).map(Some),
            Command::RequestContact { phone, peer } => {
                let mut c = self
                    .store
                    .contact(&phone)?
                    .ok_or_else(|| EngineError::UnknownContact(phone.clone()))?;
                if c.peer_id.as_deref() != Some(peer.as_str()) {
                    c.peer_id = Some(peer.clone());
                    c.updated_at_ms = now_ms;
                    self.write(vec![Op::PutContact(c)])?;
                }
                self.peer_mut(&peer, now_ms).view.contact = Some(phone.into());
                if self.reachable(&peer) {
                    self.send_contact_request(&peer, now_ms)?;
                }
                Ok(None)
            }
            Command::AcceptContact { peer } => {
                self.accept(&peer, now_ms)?;
                Ok(None)
            }
            Command::MarkRead { contact } => {
                self.mark_read(&contact, now_ms)?;
                Ok(None)
            }
            Command::RequestProfile { peer } => {
                let tag = self.tag();
                self.pending.insert(tag, (peer.clone(), Pending::Profile));
                let frame = Request::Profile.encode()?;
                self.staged.push(Output::Request {
                    peer: peer.clone(),
                    tag,
                    frame,
                });
                self.ask_location(&peer)?;
                Ok(None)
            }
            Command::SendAttachment { to, id, manifest } => {
                self.send_attachment(&to, id, *manifest, now_ms).map(Some)
            }
            Command::GroupChanged { group } => self.group_changed(group, now_ms),
            Command::AnswerGroup { group, accept } => {
                self.answer_group(group, accept, now_ms)?;
                Ok(None)
            }
            Command::LeaveGroup { group } => {
                self.leave_group(group, now_ms)?;
                Ok(None)
            }
            Command::SendGroup { group, text } => {
                self.send_group_text(group, text, now_ms).map(Some)
            }
            Command::SendGroupAttachment {
                group,
                id,
                manifest,
            } => self
                .send_group_attachment(group, id, *manifest, now_ms)
                .map(Some),
            Command::MarkGroupRead { group } => {
                self.mark_group_read(group, now_ms)?;
                Ok(None)
            }
            Command::SendLocation {
                to,
                location,
                live_ms,
            } => self.send_location(&to, location, live_ms, now_ms).map(Some),
            Command::StopLocation { to } => self
                .stop_live(to.as_deref(), now_ms)
                .map(|n| Some(n.to_string())),
            Command::SetPosition { location } => {
                self.set_position(location, now_ms)?;
                Ok(None)
            }
            Command::Forward { id, to, attachment } => self
                .forward(id, &to, attachment.map(|a| *a), now_ms)
                .map(Some),
            Command::RefreshNearby => {
                self.refresh_nearby()?;
                Ok(None)
            }
        }
    }

    /// The device of contact `to`, if we may send to it.
    fn sendable(&self, to: &str) -> Result<String> {
        let contact = self
            .store
            .contact(to)?
            .ok_or_else(|| EngineError::UnknownContact(to.to_string()))?;
        if self.is_blocked(to) {
            return Err(EngineError::Blocked(to.to_string()));
        }
        contact
            .peer_id
            .ok_or_else(|| EngineError::NotLinked(to.to_string()))
    }

    /// A queued outgoing message `id` at the end of the conversation with `to`, and that
    /// conversation moved on (its `sent_n` numbers the message among what we send).
    fn new_outgoing(
        &self,
        to: &str,
        id: [u8; 16],
        text: String,
        now_ms: u64,
    ) -> Result<(MessageRecord, ConversationRecord)> {
        let mut conv = self.store.conversation(to)?.unwrap_or(ConversationRecord {
            peer: to.to_string(),
            ..ConversationRecord::default()
        });
        let msg = MessageRecord {
            id,
            peer: to.to_string(),
            seq: conv.next_seq,
            direction: Direction::Outgoing,
            text,
            sent_at_ms: now_ms,
            stored_at_ms: now_ms,
            state: DeliveryState::Queued,
        };
        conv.next_seq += 1;
        conv.sent_n += 1;
        conv.last_activity_ms = now_ms;
        Ok((msg, conv))
    }

    fn send_text(&mut self, to: &str, text: String, now_ms: u64) -> Result<String> {
        if text.trim().is_empty() {
            return Err(EngineError::Empty);
        }
        if text.len() > MAX_TEXT_BYTES {
            return Err(EngineError::TooLong { len: text.len() });
        }
        let peer = self.sendable(to)?;
        let id = self.random_id();
        let (msg, conv) = self.new_outgoing(to, id, text, now_ms)?;
        // Encrypted when it goes out (a session may not exist yet), afresh at every attempt.
        let entry = OutboxEntry {
            id,
            peer_id: peer.clone(),
            payload: OutboxPayload::Text { n: conv.sent_n },
            attempts: 0,
            next_attempt_ms: now_ms,
        };
        let order = msg.seq + 1;
        self.write(vec![
            Op::PutMessage(msg),
            Op::PutConversation(conv),
            Op::PutOutbox(entry.clone()),
        ])?;
        self.outbox.insert(order, entry);
        self.pump_outbox(Some(&peer), now_ms)?;
        Ok(hex(&id))
    }

    fn send_contact_request(&mut self, peer: &str, now_ms: u64) -> Result<()> {
        let card = self.my_card(now_ms)?;
        let tag = self.tag();
        self.pending
            .insert(tag, (peer.to_string(), Pending::ContactRequest));
        let frame = Request::ContactRequest {
            card: card.to_bytes(),
        }
        .encode()?;
        self.peer_mut(peer, now_ms).requested = true;
        self.staged.push(Output::Request {
            peer: peer.to_string(),
            tag,
            frame,
        });
        Ok(())
    }

    fn accept(&mut self, peer: &str, now_ms: u64) -> Result<()> {
        let req = self
            .store
            .contact_requests()?
            .into_iter()
            .find(|r| r.peer_id == peer)
            .ok_or_else(|| EngineError::NoRequest(peer.to_string()))?;
        let card = ContactCard::from_bytes(&req.card, now_ms)?;
        let phone = card
            .display
            .phone
            .clone()
            .ok_or_else(|| EngineError::RequestWithoutPhone(peer.to_string()))?;
        let mut contact = self
            .store
            .contact(&phone)?
            .unwrap_or_else(|| ContactRecord::new(&phone, now_ms));
        if contact.name.is_none() {
            contact.name = card.display.name.clone();
        }
        contact.peer_id = Some(peer.to_string());
        contact.identity_key = Some(card.identity().to_bytes());
        contact.card = Some(req.card.clone());
        contact.updated_at_ms = now_ms;
        let mut ops = vec![
            Op::PutContact(contact),
            Op::RemoveContactRequest(peer.to_string()),
        ];
        if self.session(peer)?.is_none() {
            let s = Session::outbound(&self.device, &card, now_ms)?;
            self.sessions.insert(peer.to_string(), s);
            self.session_changed(peer);
        }
        self.write(std::mem::take(&mut ops))?;
        let mine = self.my_card(now_ms)?;
        self.queue_ephemeral(
            peer,
            &Payload::ContactAccept {
                card: mine.to_bytes(),
            },
            now_ms,
        )?;
        self.peer_mut(peer, now_ms).view.contact = Some(phone.as_str().into());
        self.on_linked(peer, phone, now_ms)
    }

    /// Both sides of a link: tell the user, refresh the peer's profile (as a contact it may
    /// show us more), and send whatever was queued for it before the link.
    fn on_linked(&mut self, peer: &str, phone: String, now_ms: u64) -> Result<()> {
        self.event(Event::ContactAccepted {
            peer: peer.to_string(),
            phone: phone.clone(),
        });
        self.mailboxes_for(&phone, true, now_ms)?;
        self.tell_linked_member(&phone, now_ms)?;
        self.command(
            now_ms,
            Command::RequestProfile {
                peer: peer.to_string(),
            },
        )?;
        self.due_now(peer, now_ms);
        self.pump_outbox(Some(peer), now_ms)
    }

    /// Queues a payload that is not a stored message (accept, receipt) in the outbox, so it is
    /// retried until acknowledged.
    fn queue_ephemeral(&mut self, peer: &str, payload: &Payload, now_ms: u64) -> Result<()> {
        self.queue_payload(peer, payload, false, now_ms)
    }

    /// [`Engine::queue_ephemeral`]; with `after_flush`, its first sending waits for the flush
    /// of what was written before (for acknowledgements of what was just stored).
    fn queue_payload(
        &mut self,
        peer: &str,
        payload: &Payload,
        after_flush: bool,
        now_ms: u64,
    ) -> Result<()> {
        let id = self.random_id();
        let entry = OutboxEntry {
            id,
            peer_id: peer.to_string(),
            payload: OutboxPayload::Payload(payload.encode()?),
            attempts: 0,
            next_attempt_ms: now_ms,
        };
        self.write(vec![Op::PutOutbox(entry.clone())])?;
        self.outbox.insert(0, entry);
        if after_flush {
            self.relay.durable_first.insert(id);
        }
        self.pump_outbox(Some(peer), now_ms)
    }

    fn mark_read(&mut self, contact: &str, now_ms: u64) -> Result<()> {
        let Some(mut conv) = self.store.conversation(contact)? else {
            return Ok(());
        };
        let mut ops = Vec::new();
        let mut ids = Vec::new();
        for mut m in self.store.messages(contact, 0)? {
            if m.direction == Direction::Incoming && m.state == DeliveryState::Delivered {
                m.state = DeliveryState::Read;
                ids.push(m.id);
                ops.push(Op::PutMessage(m));
            }
        }
        if ids.is_empty() && conv.unread == 0 {
            return Ok(());
        }
        conv.unread = 0;
        ops.push(Op::PutConversation(conv));
        self.write(ops)?;
        let privacy = self.store.settings()?.privacy;
        // Receipts go to contacts unless the user turned them off.
        if privacy.receipts != Visibility::Nobody && !self.is_blocked(contact) {
            if let Some(peer) = self.store.contact(contact)?.and_then(|c| c.peer_id) {
                for chunk in ids.chunks(instaconnect_wire::proto::MAX_RECEIPT_IDS) {
                    let payload = Payload::Read {
                        ids: chunk.to_vec(),
                    };
                    if let Err(e) = self.queue_ephemeral(&peer, &payload, now_ms) {
                        self.problem(format!("read receipt to {contact}: {e}"));
                        break;
                    }
                }
            }
        }
        Ok(())
    }

    /// Sends what the outbox holds for `only` (or every reachable peer) that is due, in order,
    /// as many to a request as fit, within the in-flight window.
    fn pump_outbox(&mut self, only: Option<&str>, now_ms: u64) -> Result<()> {
        let peers: Vec<String> = match only {
            Some(p) => vec![p.to_string()],
            None => self.outbox.queues.keys().cloned().collect(),
        };
        for peer in peers {
            if !self
                .peers
                .get(peer.as_str())
                .is_some_and(|p| p.view.connected)
            {
                self.deposit_due(&peer, now_ms)?;
            }
            if !self.reachable(&peer) {
                continue;
            }
            while self.has_room(&peer) {
                let Some(queue) = self.outbox.queues.get(&peer) else {
                    break;
                };
                let due: Vec<[u8; 16]> = queue
                    .values()
                    .filter(|e| {
                        e.next_attempt_ms <= now_ms && !self.outbox.inflight.contains(&e.id)
                    })
                    .take(MAX_BATCH_ITEMS)
                    .map(|e| e.id)
                    .collect();
                if due.is_empty() || !self.send_due(&peer, &due, now_ms)? {
                    break;
                }
            }
        }
        Ok(())
    }

    /// Everything queued for `peer` goes at the next pump, whatever its backoff said (in memory
    /// only: the stored backoff is a fallback after a restart, which resets it again).
    fn due_now(&mut self, peer: &str, now_ms: u64) {
        if let Some(queue) = self.outbox.queues.get_mut(peer) {
            for e in queue.values_mut() {
                e.next_attempt_ms = e.next_attempt_ms.min(now_ms);
            }
        }
    }

    /// Sends the first of the `due` entries, and as many after it as fit in one batch. False
    /// if they have to wait (the contact is not linked yet).
    fn send_due(&mut self, peer: &str, due: &[[u8; 16]], now_ms: u64) -> Result<bool> {
        // A frame sealed under an older schema goes alone, as it is.
        if let Some(OutboxPayload::Sealed(frame)) = self.outbox.get(&due[0]).map(|e| &e.payload) {
            let frame = frame.clone();
            self.send_request(peer, frame, vec![due[0]])?;
            return Ok(true);
        }
        // Linked: a session, and the contact's card (decoded only when sealing, since decoding
        // its keys costs curve arithmetic).
        let carded = self.contact_by_peer(peer).is_some_and(|c| c.card.is_some());
        if self.session(peer)?.is_none() || !carded {
            // Not linked yet: ask, and keep the messages queued.
            let asked = self.peers.get(peer).is_some_and(|p| p.requested);
            if !asked && self.peers.get(peer).is_some_and(|p| p.view.connected) {
                self.send_contact_request(peer, now_ms)?;
            }
            // The link (or a reconnection) makes them due again; until then no timer.
            for id in due {
                if let Some(e) = self.outbox.get_mut(id) {
                    e.next_attempt_ms = now_ms + RETRY_MAX_MS;
                }
            }
            return Ok(false);
        }
        let sealed = self.needs_envelope(peer);
        let mut items = Vec::new();
        let mut bytes = 2 + BATCH_OVERHEAD_BYTES;
        let mut gone = Vec::new();
        for &id in due {
            let Some(e) = self.outbox.get(&id) else {
                continue;
            };
            let Some((plaintext, sent_at_ms)) = self.entry_plaintext(&id, now_ms)? else {
                if matches!(e.payload, OutboxPayload::Sealed(_)) {
                    // Goes alone, next.
                    break;
                }
                gone.push(id);
                continue;
            };
            if sealed {
                let frame = self.seal(peer, &plaintext, id, sent_at_ms)?;
                self.forget(&gone)?;
                self.send_request(peer, frame, vec![id])?;
                return Ok(true);
            }
            let bound = plaintext.len() + RATCHET_OVERHEAD_BYTES + 32;
            if !items.is_empty() && bytes + bound > MAX_FRAME_BYTES {
                break;
            }
            let ratchet = self.encrypt(peer, &plaintext)?;
            let item = DirectItem {
                id,
                sent_at_ms,
                ratchet,
            };
            bytes += item.encoded_len_bound();
            items.push(item);
        }
        self.forget(&gone)?;
        if items.is_empty() {
            return Ok(!gone.is_empty());
        }
        let ids = items.iter().map(|i| i.id).collect();
        let frame = Request::Batch(items).encode()?;
        self.send_request(peer, frame, ids)?;
        Ok(true)
    }

    /// What an outbox entry sends, encoded, and when it was sent; `None` for a frame sealed
    /// under an older schema, or a text whose message is gone.
    fn entry_plaintext(&self, id: &[u8; 16], now_ms: u64) -> Result<Option<(Vec<u8>, u64)>> {
        let Some(e) = self.outbox.get(id) else {
            return Ok(None);
        };
        Ok(match &e.payload {
            OutboxPayload::Sealed(_) => None,
            OutboxPayload::Payload(p) => Some((p.clone(), now_ms)),
            OutboxPayload::Text { n } => self
                .store
                .message(id)?
                .map(|m| {
                    let sent = m.sent_at_ms;
                    (
                        Payload::Text {
                            text: m.text,
                            n: *n,
                        }
                        .encode(),
                        sent,
                    )
                })
                .map(|(p, t)| p.map(|p| (p, t)))
                .transpose()?,
        })
    }

    /// Drops outbox entries whose message is gone.
    fn forget(&mut self, ids: &[[u8; 16]]) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let mut ops: Vec<Op> = ids.iter().map(|id| Op::RemoveOutbox(*id)).collect();
        for id in ids {
            self.outbox.remove(id);
            self.forget_deposits(id, &mut ops);
        }
        self.write(ops)?;
        Ok(())
    }

    /// Stages a request carrying outbox entries `ids`; they are sent when it goes out.
    fn send_request(&mut self, peer: &str, frame: Vec<u8>, ids: Vec<[u8; 16]>) -> Result<()> {
        let tag = self.tag();
        for id in &ids {
            self.outbox.inflight.insert(*id);
            if self.relay.durable_first.remove(id) {
                self.after_flush.insert(tag);
            }
        }
        if let Some(p) = self.peers.get_mut(peer) {
            p.inflight += 1;
            p.inflight_items += ids.len();
        }
        self.staged.push(Output::Request {
            peer: peer.to_string(),
            tag,
            frame,
        });
        for id in &ids {
            self.set_state(id, DeliveryState::Sent)?;
        }
        self.pending
            .insert(tag, (peer.to_string(), Pending::Items { ids }));
        Ok(())
    }

    /// Moves an outgoing message forward to `state` (never backwards).
    fn set_state(&mut self, id: &[u8; 16], state: DeliveryState) -> Result<()> {
        if let Some(mut m) = self.store.message(id)? {
            if m.direction == Direction::Outgoing && m.state < state {
                m.state = state;
                let to = m.peer.clone();
                self.write(vec![Op::PutMessage(m)])?;
                self.event(Event::StateChanged {
                    to,
                    id: hex(id),
                    state,
                });
            }
        } else if self.is_group_entry(id) {
            self.group_entry_state(id, state)?;
        }
        Ok(())
    }

    // ----- network input -------------------------------------------------------------------

    pub fn handle_input(&mut self, now_ms: u64, input: Input) {
        if let Err(e) = self.input(now_ms, input) {
            self.problem(e.to_string());
        }
    }

    fn input(&mut self, now_ms: u64, input: Input) -> Result<()> {
        match input {
            Input::Discovered { peer, addrs } => {
                let (p, _) = self.peer_seen(&peer, now_ms);
                let new = !p.view.discovered;
                p.view.discovered = true;
                p.view.addrs = addrs;
                if new {
                    self.event(Event::PeerDiscovered { peer: peer.clone() });
                    self.command(now_ms, Command::RequestProfile { peer: peer.clone() })?;
                }
                self.pump_outbox(Some(&peer), now_ms)?;
            }
            Input::Lost { peer } => {
                if let Some(p) = self.peers.get_mut(peer.as_str()) {
                    p.view.discovered = false;
                    self.event(Event::PeerLost { peer });
                }
            }
            Input::Connected { peer } => {
                let (p, contact) = self.peer_seen(&peer, now_ms);
                let was = p.view.connected;
                p.view.connected = true;
                p.requested = false;
                if !was {
                    self.on_connected(&peer, contact, now_ms)?;
                }
            }
            Input::Disconnected { peer } => {
                if let Some(p) = self.peers.get_mut(peer.as_str()) {
                    p.view.connected = false;
                    p.view.last_seen_ms = p.view.last_seen_ms.max(now_ms);
                    if p.view.online {
                        p.view.online = false;
                        p.view.last_online_ms = Some(now_ms);
                        self.event(Event::Presence {
                            peer: peer.clone(),
                            online: false,
                        });
                    }
                }
            }
            Input::Request {
                peer,
                frame,
                channel,
            } => self.on_request(&peer, &frame, channel, now_ms)?,
            Input::Response { peer, tag, frame } => self.on_response(&peer, tag, &frame, now_ms)?,
            Input::RequestFailed { peer, tag, .. } => self.on_failed(&peer, tag, now_ms)?,
            Input::Relay { relay, addrs, up } => self.on_relay(relay, addrs, up, now_ms)?,
            Input::MailboxResponse { relay, tag, frame } => {
                self.on_mailbox_response(&relay, tag, Some(&frame), now_ms)?
            }
            Input::MailboxFailed { relay, tag, .. } => {
                self.on_mailbox_response(&relay, tag, None, now_ms)?
            }
            Input::MailboxNotify { relay, mailbox } => {
                self.on_mailbox_notify(&relay, mailbox, now_ms)?
            }
        }
        Ok(())
    }

    /// `contact`: the one linked to `peer`, as the store said when it connected.
    fn on_connected(
        &mut self,
        peer: &str,
        contact: Option<ContactRecord>,
        now_ms: u64,
    ) -> Result<()> {
        self.due_now(peer, now_ms);
        if let Some(c) = &contact {
            let privacy = self.store.settings()?.privacy;
            let linked = self.session(peer)?.is_some() && c.card.is_some();
            if !linked {
                self.send_contact_request(peer, now_ms)?;
            } else if privacy.online != Visibility::Nobody && !self.is_blocked(&c.phone) {
                let id = self.random_id();
                let presence = Payload::Presence { online: true }.encode()?;
                match self.request_frame(peer, &presence, id, now_ms) {
                    Ok(frame) => {
                        let tag = self.tag();
                        self.pending
                            .insert(tag, (peer.to_string(), Pending::Ephemeral));
                        self.staged.push(Output::Request {
                            peer: peer.to_string(),
                            tag,
                            frame,
                        });
                    }
                    Err(e) => self.problem(format!("presence to {}: {e}", c.phone)),
                }
            }
        }
        if self
            .peers
            .get(peer)
            .is_some_and(|p| p.view.profile.is_none())
        {
            self.command(
                now_ms,
                Command::RequestProfile {
                    peer: peer.to_string(),
                },
            )?;
        }
        self.resume_transfers(peer)?;
        self.pump_outbox(Some(peer), now_ms)
    }

    fn respond(&mut self, channel: u64, r: Response) -> Result<()> {
        let frame = r.encode()?;
        self.staged.push(Output::Respond { channel, frame });
        Ok(())
    }

    fn bad_frame(&mut self, peer: &str, channel: u64, now_ms: u64) -> Result<()> {
        self.respond(channel, Response::Malformed)?;
        self.count_bad(peer, now_ms);
        Ok(())
    }

    /// Counts a malformed frame (or item) from `peer`; too many within the window disconnect it.
    fn count_bad(&mut self, peer: &str, now_ms: u64) {
        let p = self.peer_mut(peer, now_ms);
        if p.bad_frames == 0 || now_ms.saturating_sub(p.bad_since_ms) >= BAD_FRAME_WINDOW_MS {
            p.bad_frames = 0;
            p.bad_since_ms = now_ms;
        }
        p.bad_frames += 1;
        if p.bad_frames >= MAX_BAD_FRAMES {
            p.bad_frames = 0;
            self.staged.push(Output::Disconnect {
                peer: peer.to_string(),
            });
            self.event(Event::Misbehaving {
                peer: peer.to_string(),
            });
        }
    }

    fn on_request(&mut self, peer: &str, frame: &[u8], channel: u64, now_ms: u64) -> Result<()> {
        self.peer_mut(peer, now_ms);
        if self.staged.len() >= MAX_PENDING_OUTPUTS {
            return self.respond(channel, Response::NotNow);
        }
        let req = match Request::decode(frame) {
            Ok(r) => r,
            Err(ProtoError::UnsupportedVersion(v)) => {
                self.event(Event::UnsupportedVersion {
                    peer: peer.to_string(),
                    version: v,
                });
                return self.respond(
                    channel,
                    Response::UnsupportedVersion {
                        supported: instaconnect_wire::PROTOCOL_VERSION,
                    },
                );
            }
            Err(_) => return self.bad_frame(peer, channel, now_ms),
        };
        match req {
            Request::Profile => {
                let reply = self.profile_for(peer)?;
                self.respond(channel, Response::Profile(reply))
            }
            Request::ContactRequest { card } => {
                self.on_contact_request(peer, card, channel, now_ms)
            }
            Request::Envelope(env) => self.on_envelope(peer, &env, channel, now_ms),
            Request::Batch(items) => self.on_batch(peer, items, channel, now_ms),
            Request::Chunk {
                id,
                index,
                offset,
                len,
            } => self.on_chunk_request(peer, (id, index, offset, len), channel, now_ms),
            Request::Location => {
                let reply = self.location_for(peer)?;
                // Acknowledges nothing stored: goes without waiting for a flush.
                self.unacking.insert(channel);
                self.respond(channel, Response::Location(reply))
            }
        }
    }

    /// The profile fields our privacy settings show `peer`; nothing for blocked peers.
    fn profile_for(&self, peer: &str) -> Result<ProfileReply> {
        let contact = self.contact_by_peer(peer);
        if contact.as_ref().is_some_and(|c| self.is_blocked(&c.phone)) {
            return Ok(ProfileReply::default());
        }
        let is_contact = contact.is_some();
        let allowed = |v: Visibility| match v {
            Visibility::Everyone => true,
            Visibility::Contacts => is_contact,
            Visibility::Nobody => false,
        };
        let privacy = self.store.settings()?.privacy;
        let profile = self.store.profile()?;
        Ok(ProfileReply {
            phone: allowed(privacy.phone).then(|| self.account.phone.clone()),
            name: allowed(privacy.name).then(|| profile.name.clone()),
            status: allowed(privacy.status)
                .then(|| profile.status.clone())
                .filter(|s| !s.is_empty()),
            picture_thumbnail: if allowed(privacy.picture) {
                profile.picture.map(|p| p.thumbnail_png)
            } else {
                None
            },
        })
    }

    fn on_contact_request(
        &mut self,
        peer: &str,
        card: Vec<u8>,
        channel: u64,
        now_ms: u64,
    ) -> Result<()> {
        let parsed = match ContactCard::from_bytes(&card, now_ms) {
            Ok(c) if c.identity().peer_id() == peer => c,
            _ => return self.bad_frame(peer, channel, now_ms),
        };
        let blocked = parsed
            .display
            .phone
            .as_deref()
            .is_some_and(|p| self.is_blocked(p));
        let known = self.store.contact_requests()?;
        let linked = self.contact_by_peer(peer).is_some_and(|c| c.card.is_some())
            && self.session(peer)?.is_some();
        if !blocked
            && !linked
            && (known.len() < MAX_CONTACT_REQUESTS || known.iter().any(|r| r.peer_id == peer))
        {
            let fresh = !known.iter().any(|r| r.peer_id == peer);
            self.write(vec![Op::PutContactRequest(ContactRequestRecord {
                peer_id: peer.to_string(),
                card,
                received_at_ms: now_ms,
            })])?;
            if fresh {
                self.event(Event::ContactRequest {
                    peer: peer.to_string(),
                    phone: parsed.display.phone.clone(),
                    name: parsed.display.name.clone(),
                });
            }
        }
        // Blocked requesters get the same answer and nothing else.
        self.respond(channel, Response::ContactRequestReceived)
    }

    fn on_envelope(&mut self, peer: &str, env: &[u8], channel: u64, now_ms: u64) -> Result<()> {
        let opened = match open_envelope_cached(&mut self.verified, &self.device, env) {
            Ok(o) => o,
            Err(_) => return self.bad_frame(peer, channel, now_ms),
        };
        let sender_peer = opened.sender.identity.peer_id();
        if sender_peer != peer {
            // Direct delivery: the transport identity must be the sealed sender.
            return self.bad_frame(peer, channel, now_ms);
        }
        let id = opened.message_id.0;
        // Dedupe before decrypting: a retry of something stored must not touch the ratchet.
        if self.store.message(&id)?.is_some() || self.store.seen(&id)? {
            return self.respond(channel, Response::Ack(id));
        }
        let Some(contact) = self.contact_by_peer(peer) else {
            return self.respond(channel, Response::NotNow);
        };
        if self.is_blocked(&contact.phone) {
            return self.respond(channel, Response::NotNow);
        }
        let plaintext = match self.decrypt_sealed(peer, &opened)? {
            Decrypted::Plain(p) => p,
            Decrypted::Undecryptable(e) => {
                // The sender is authenticated (sealed by the peer's own keys): a ratchet
                // message we cannot decrypt is not an attack on us. It is refused for now,
                // not counted as misbehaviour.
                self.problem(format!(
                    "a message from {} could not be decrypted ({e}); it stays with the sender",
                    contact.phone
                ));
                return self.respond(channel, Response::NotNow);
            }
            Decrypted::NoSession => return self.respond(channel, Response::NotNow),
            Decrypted::BadPrekey => return self.bad_frame(peer, channel, now_ms),
        };
        let payload = match Payload::decode(&plaintext) {
            Ok(p) => p,
            Err(_) => return self.bad_frame(peer, channel, now_ms),
        };
        if !self.take_opened(peer, &contact, &opened, payload, now_ms)? {
            return self.bad_frame(peer, channel, now_ms);
        }
        self.respond(channel, Response::Ack(id))
    }

    /// [`Engine::take_payload`] for the decrypted payload of an opened envelope.
    fn take_opened(
        &mut self,
        peer: &str,
        contact: &ContactRecord,
        opened: &OpenedEnvelope,
        payload: Payload,
        now_ms: u64,
    ) -> Result<bool> {
        self.take_payload(
            peer,
            contact,
            opened.sender.identity,
            opened.message_id.0,
            opened.timestamp_ms,
            payload,
            now_ms,
        )
    }

    /// Decrypts an opened envelope from `peer` with the session we have, or starts the inbound
    /// session from a pre-key message.
    fn decrypt_sealed(&mut self, peer: &str, opened: &OpenedEnvelope) -> Result<Decrypted> {
        let have = self.session(peer)?.is_some();
        let prekey = Session::is_prekey_message(&opened.payload);
        let ours = have
            && (!prekey
                || self
                    .sessions
                    .get(peer)
                    .is_some_and(|s| s.matches_prekey(&opened.payload)));
        let plaintext = if ours {
            let Some(s) = self.sessions.get_mut(peer) else {
                return Ok(Decrypted::NoSession);
            };
            match s.decrypt_from(&opened.sender, &opened.payload) {
                Ok(p) => p,
                Err(e) => return Ok(Decrypted::Undecryptable(e.to_string())),
            }
        } else if prekey {
            // A session the peer started. If we started one too that it has not answered (both
            // accepted at once), both sides must settle on the same one: the one started by
            // the device with the smaller peer id. The other is used for this message only.
            let unanswered = self
                .sessions
                .get(peer)
                .is_some_and(|s| !s.has_received_message());
            let keep_ours = unanswered && self.identity.public().peer_id().as_str() < peer;
            match Session::inbound(&mut self.device, &opened.sender, &opened.payload) {
                Ok((s, p)) => {
                    if !keep_ours {
                        self.sessions.insert(peer.to_string(), s);
                    }
                    self.device_dirty = true;
                    p
                }
                Err(_) => return Ok(Decrypted::BadPrekey),
            }
        } else {
            return Ok(Decrypted::NoSession);
        };
        self.session_changed(peer);
        Ok(Decrypted::Plain(plaintext))
    }

    /// Ratchet messages of an established session, from the peer the connection authenticates.
    /// Each stored one is acknowledged; the others stay with the sender.
    fn on_batch(
        &mut self,
        peer: &str,
        items: Vec<DirectItem>,
        channel: u64,
        now_ms: u64,
    ) -> Result<()> {
        let Some(contact) = self.contact_by_peer(peer) else {
            return self.respond(channel, Response::Acks(Vec::new()));
        };
        if self.is_blocked(&contact.phone) || self.session(peer)?.is_none() {
            return self.respond(channel, Response::Acks(Vec::new()));
        }
        let mut acked = Vec::with_capacity(items.len());
        let mut undecryptable = 0usize;
        for item in items {
            // Dedupe before decrypting: a retry of something stored must not touch the ratchet.
            if self.store.message(&item.id)?.is_some() || self.store.seen(&item.id)? {
                acked.push(item.id);
                continue;
            }
            let Some(s) = self.sessions.get_mut(peer) else {
                break;
            };
            let sender = s.peer_identity();
            let plaintext = match s.decrypt(&item.ratchet) {
                Ok(p) => p,
                Err(_) => {
                    undecryptable += 1;
                    continue;
                }
            };
            self.session_changed(peer);
            let taken = match Payload::decode(&plaintext) {
                Ok(payload) => self.take_payload(
                    peer,
                    &contact,
                    sender,
                    item.id,
                    item.sent_at_ms,
                    payload,
                    now_ms,
                )?,
                Err(_) => false,
            };
            if taken {
                acked.push(item.id);
            } else {
                self.count_bad(peer, now_ms);
            }
        }
        if undecryptable > 0 {
            // The connection authenticates the sender: not an attack on us, and a retry is
            // encrypted afresh.
            self.problem(format!(
                "{undecryptable} message(s) from {} could not be decrypted; they stay with the sender",
                contact.phone
            ));
        }
        self.respond(channel, Response::Acks(acked))
    }

    /// Stores and shows a decrypted payload from `peer` (the contact `contact`, whose identity
    /// `sender` the transport or the envelope authenticated). False if it is malformed.
    #[allow(clippy::too_many_arguments)]
    fn take_payload(
        &mut self,
        peer: &str,
        contact: &ContactRecord,
        sender: IdentityKey,
        id: [u8; 16],
        sent_at_ms: u64,
        payload: Payload,
        now_ms: u64,
    ) -> Result<bool> {
        let mut ops = Vec::new();
        match payload {
            Payload::Text { text, n } => {
                let message = incoming(id, &contact.phone, text, sent_at_ms, now_ms);
                self.receive_text(message, n, ops, now_ms)?;
            }
            Payload::Read { ids } => {
                ops.push(Op::MarkSeen(id));
                self.write(ops)?;
                for m in ids {
                    if self
                        .store
                        .message(&m)?
                        .is_some_and(|r| r.peer == contact.phone)
                    {
                        self.set_state(&m, DeliveryState::Read)?;
                    }
                }
            }
            Payload::Presence { online } => {
                ops.push(Op::MarkSeen(id));
                self.write(ops)?;
                let p = self.peer_mut(peer, now_ms);
                if online || p.view.online {
                    p.view.last_online_ms = Some(now_ms);
                }
                if p.view.online != online {
                    p.view.online = online;
                    self.event(Event::Presence {
                        peer: peer.to_string(),
                        online,
                    });
                }
            }
            Payload::ContactAccept { card } => {
                let parsed = match ContactCard::from_bytes(&card, now_ms) {
                    Ok(c) if c.identity() == sender => c,
                    _ => return Ok(false),
                };
                let mut c = contact.clone();
                c.identity_key = Some(parsed.identity().to_bytes());
                c.card = Some(card);
                if c.name.is_none() {
                    c.name = parsed.display.name.clone();
                }
                c.updated_at_ms = now_ms;
                ops.push(Op::PutContact(c));
                ops.push(Op::MarkSeen(id));
                ops.push(Op::RemoveContactRequest(peer.to_string()));
                self.write(ops)?;
                // Answer the session at once: until the accepter hears from it, everything it
                // sends us travels sealed, one to a request.
                self.queue_ephemeral(peer, &Payload::Linked, now_ms)?;
                self.on_linked(peer, contact.phone.clone(), now_ms)?;
            }
            Payload::Linked => {
                ops.push(Op::MarkSeen(id));
                self.write(ops)?;
            }
            Payload::Mailboxes { boxes } => {
                ops.push(Op::MarkSeen(id));
                self.write(ops)?;
                self.take_mailboxes(peer, &contact.phone, boxes, now_ms)?;
            }
            Payload::Delivered { ids } => {
                ops.push(Op::MarkSeen(id));
                self.write(ops)?;
                self.take_delivered(&contact.phone, &ids, now_ms)?;
            }
            Payload::Attachment { manifest, n } => {
                return self
                    .take_attachment(peer, contact, id, sent_at_ms, manifest, n, ops, now_ms);
            }
            Payload::GroupUpdate { .. }
            | Payload::GroupCards { .. }
            | Payload::GroupMembership { .. }
            | Payload::GroupKey { .. }
            | Payload::GroupMessage { .. }
            | Payload::GroupRead { .. } => {
                return self.take_group_payload(contact, sender, id, sent_at_ms, payload, now_ms);
            }
            Payload::Location { location, n } => {
                return self.take_location(contact, id, sent_at_ms, location, n, ops, now_ms);
            }
            Payload::LocationUpdate {
                share,
                update,
                location,
            } => {
                ops.push(Op::MarkSeen(id));
                self.take_location_update(contact, share, update, location, sent_at_ms, ops)?;
            }
            Payload::Forwarded { content, n } => {
                return self.take_forwarded(peer, contact, id, sent_at_ms, content, n, ops, now_ms);
            }
            Payload::AttachmentHave {
                id: attachment,
                have,
            } => {
                ops.push(Op::MarkSeen(id));
                self.write(ops)?;
                self.take_have(&contact.phone, attachment, &have, now_ms)?;
            }
        }
        Ok(true)
    }

    /// Shows a received text in the order its sender sent it: the next one in line at once
    /// (with any held texts it unblocks), one that arrives ahead of a gap held back, durably,
    /// until the gap fills or times out. A late one (its gap was given up on) is shown at once.
    fn receive_text(
        &mut self,
        message: MessageRecord,
        n: u64,
        mut ops: Vec<Op>,
        now_ms: u64,
    ) -> Result<()> {
        let phone = message.peer.clone();
        let mut conv = self
            .store
            .conversation(&phone)?
            .unwrap_or(ConversationRecord {
                peer: phone.clone(),
                ..ConversationRecord::default()
            });
        let held = self.held.by_conversation.get(&phone).map_or(0, |h| h.len());
        if n > conv.shown_n + 1 && held < MAX_HELD_PER_CONVERSATION {
            ops.push(Op::MarkSeen(message.id));
            ops.push(Op::PutHeld(HeldMessage {
                n,
                message: message.clone(),
            }));
            self.write(ops)?;
            self.held
                .by_conversation
                .entry(phone)
                .or_default()
                .insert(n, message);
            return Ok(());
        }
        let give_up = n > conv.shown_n + 1;
        conv.shown_n = conv.shown_n.max(n);
        self.show_incoming(&mut conv, message, &mut ops, now_ms);
        ops.push(Op::PutConversation(conv));
        self.write(ops)?;
        self.release_held(&phone, give_up, now_ms)
    }

    /// Shows the held texts of a conversation that are next in line, or with `all` every one
    /// of them (their gap was given up on).
    fn release_held(&mut self, phone: &str, all: bool, now_ms: u64) -> Result<()> {
        let Some(mut queue) = self.held.by_conversation.remove(phone) else {
            return Ok(());
        };
        let mut conv = self
            .store
            .conversation(phone)?
            .unwrap_or(ConversationRecord {
                peer: phone.to_string(),
                ..ConversationRecord::default()
            });
        let mut ops = Vec::new();
        while let Some(entry) = queue.first_entry() {
            let n = *entry.key();
            if !all && n > conv.shown_n + 1 {
                break;
            }
            let message = entry.remove();
            ops.push(Op::RemoveHeld {
                peer: phone.to_string(),
                n,
            });
            conv.shown_n = conv.shown_n.max(n);
            self.show_incoming(&mut conv, message, &mut ops, now_ms);
        }
        if !queue.is_empty() {
            self.held.by_conversation.insert(phone.to_string(), queue);
        }
        if !ops.is_empty() {
            ops.push(Op::PutConversation(conv));
            self.write(ops)?;
        }
        Ok(())
    }

    /// Appends a received text to its conversation and tells the user.
    fn show_incoming(
        &mut self,
        conv: &mut ConversationRecord,
        mut m: MessageRecord,
        ops: &mut Vec<Op>,
        now_ms: u64,
    ) {
        m.seq = conv.next_seq;
        conv.next_seq += 1;
        conv.unread = conv.unread.saturating_add(1);
        conv.last_activity_ms = now_ms;
        self.event(Event::MessageReceived {
            from: m.peer.clone(),
            id: hex(&m.id),
            text: m.text.clone(),
            sent_at_ms: m.sent_at_ms,
        });
        ops.push(Op::PutMessage(m));
    }

    fn on_response(&mut self, peer: &str, tag: u64, frame: &[u8], now_ms: u64) -> Result<()> {
        let Some((_, what)) = self.pending.remove(&tag) else {
            return Ok(());
        };
        let resp = match Response::decode(frame) {
            Ok(r) => Some(r),
            Err(ProtoError::UnsupportedVersion(v)) => {
                self.event(Event::UnsupportedVersion {
                    peer: peer.to_string(),
                    version: v,
                });
                None
            }
            Err(_) => None,
        };
        match (what, resp) {
            (Pending::Items { ids }, resp) => {
                let acked: HashSet<[u8; 16]> = match resp {
                    Some(Response::Ack(id)) => HashSet::from([id]),
                    Some(Response::Acks(ids)) => ids.into_iter().collect(),
                    Some(Response::UnsupportedVersion { supported }) => {
                        self.event(Event::UnsupportedVersion {
                            peer: peer.to_string(),
                            version: supported,
                        });
                        HashSet::new()
                    }
                    _ => HashSet::new(),
                };
                self.settle(peer, ids, &acked, now_ms)?;
            }
            (Pending::Profile, Some(Response::Profile(reply))) => {
                let view = ProfileView {
                    phone: reply.phone,
                    name: reply.name,
                    status: reply.status,
                    has_picture: reply.picture_thumbnail.is_some(),
                };
                self.peer_mut(peer, now_ms).view.profile = Some(Box::new(view.clone()));
                self.event(Event::Profile {
                    peer: peer.to_string(),
                    profile: view,
                });
            }
            (Pending::Chunk { id, index, offset }, resp) => {
                let answer = match resp {
                    Some(Response::Chunk(part)) => attachment::ChunkAnswer::Part(part),
                    Some(Response::NotNow) => attachment::ChunkAnswer::Refused,
                    _ => attachment::ChunkAnswer::Failed,
                };
                self.on_chunk_part(id, index, offset, answer, now_ms)?
            }
            (Pending::Location, Some(Response::Location(l))) => {
                self.on_location_reply(peer, l, now_ms)
            }
            (Pending::ContactRequest, _)
            | (Pending::Ephemeral, _)
            | (Pending::Profile, _)
            | (Pending::Location, _) => {}
        }
        Ok(())
    }

    fn on_failed(&mut self, peer: &str, tag: u64, now_ms: u64) -> Result<()> {
        let Some((_, what)) = self.pending.remove(&tag) else {
            return Ok(());
        };
        match what {
            Pending::Items { ids } => self.settle(peer, ids, &HashSet::new(), now_ms)?,
            Pending::Chunk { id, index, offset } => {
                self.on_chunk_part(id, index, offset, attachment::ChunkAnswer::Failed, now_ms)?
            }
            _ => {}
        }
        Ok(())
    }

    /// A request carrying outbox entries `ids` is answered: the `acked` ones are delivered, the
    /// others wait for a retry. Then whatever is due goes out.
    fn settle(
        &mut self,
        peer: &str,
        ids: Vec<[u8; 16]>,
        acked: &HashSet<[u8; 16]>,
        now_ms: u64,
    ) -> Result<()> {
        if let Some(p) = self.peers.get_mut(peer) {
            p.inflight = p.inflight.saturating_sub(1);
            p.inflight_items = p.inflight_items.saturating_sub(ids.len());
        }
        let mut ops = Vec::new();
        for id in ids {
            self.outbox.inflight.remove(&id);
            if acked.contains(&id) {
                if self.outbox.remove(&id).is_some() {
                    ops.push(Op::RemoveOutbox(id));
                }
                self.forget_deposits(&id, &mut ops);
                self.set_state(&id, DeliveryState::Delivered)?;
            } else if let Some(e) = self.retry_later(&id, now_ms) {
                ops.push(Op::PutOutbox(e));
            }
        }
        self.write(ops)?;
        self.pump_outbox(Some(peer), now_ms)
    }

    /// Backs off an outbox entry: exponential with jitter from the injected RNG. Returns the
    /// entry to store.
    fn retry_later(&mut self, id: &[u8; 16], now_ms: u64) -> Option<OutboxEntry> {
        let r = self.rng.next_u64();
        let e = self.outbox.get_mut(id)?;
        e.attempts = e.attempts.saturating_add(1);
        let exp = RETRY_BASE_MS.saturating_mul(1u64 << e.attempts.min(16));
        let delay = exp.min(RETRY_MAX_MS);
        e.next_attempt_ms = now_ms + delay + r % (delay / 4 + 1);
        Some(e.clone())
    }
}
