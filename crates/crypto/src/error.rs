//! The single typed error of this crate.
//!
//! No variant ever carries secret material: messages name *what* failed, never the bytes involved.

use thiserror::Error;

/// Everything that can go wrong in `instaconnect-crypto`.
///
/// Every failure on untrusted input is reported through this type; nothing in the crate
/// panics on bytes that came from the network or from disk.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CryptoError {
    /// A byte string had the wrong length.
    #[error("invalid {what}: expected {expected} bytes, got {got}")]
    InvalidLength {
        /// What was being decoded.
        what: &'static str,
        /// The required length.
        expected: usize,
        /// The length that was given.
        got: usize,
    },
    /// A public key was not a valid curve point (or is otherwise unusable).
    #[error("invalid {0} key")]
    InvalidKey(&'static str),
    /// A signature did not verify.
    #[error("bad signature on {0}")]
    BadSignature(&'static str),
    /// A validly signed relay receipt does not certify what was asked of the relay.
    #[error("the receipt does not match the request: {0}")]
    ReceiptMismatch(&'static str),
    /// A persisted object (pickle) could not be restored.
    #[error("cannot restore {what} from its persisted form: {reason}")]
    Pickle {
        /// Which object.
        what: &'static str,
        /// Why (never contains secret material).
        reason: String,
    },
    /// An invite link does not start with `instaconnect://invite/`.
    #[error(
        "not an InstaConnect invite link (expected it to start with \"instaconnect://invite/\")"
    )]
    InviteScheme,
    /// The payload of an invite link is not valid unpadded base64url.
    #[error("invite link is damaged: its payload is not valid base64url")]
    InviteBase64,
    /// A contact card (or another structure) could not be decoded.
    #[error("cannot decode {0}: malformed or truncated bytes")]
    Encoding(&'static str),
    /// A structure declares a format version this build does not understand.
    #[error("unsupported {what} version {got} (this build understands version {supported})")]
    UnsupportedVersion {
        /// Which structure.
        what: &'static str,
        /// The version found.
        got: u8,
        /// The version this build speaks.
        supported: u8,
    },
    /// A file is larger than an attachment can be.
    #[error("the file is too large to attach: {size} bytes (at most {max})")]
    AttachmentTooLarge {
        /// Its size.
        size: u64,
        /// The largest attachment.
        max: u64,
    },
    /// An attachment chunk did not match its manifest (hash, length or tag); `u32::MAX` for the
    /// whole file's hash.
    #[error("attachment chunk {index} does not match what the sender sealed")]
    AttachmentChunk {
        /// Which chunk.
        index: u32,
    },
    /// A contact card's signature did not verify: it was altered after signing.
    #[error("contact card has been tampered with: {0} signature does not verify")]
    CardTampered(&'static str),
    /// A contact card is past its expiry time.
    #[error("contact card expired at {expires_at_ms} ms (now {now_ms} ms); ask the contact for a new invite")]
    CardExpired {
        /// When the card expired (unix millis).
        expires_at_ms: u64,
        /// The time it was checked at (unix millis).
        now_ms: u64,
    },
    /// A contact card was created in the future (beyond the allowed clock skew) or its
    /// validity window is inverted.
    #[error("contact card is not valid yet (created at {created_at_ms} ms, now {now_ms} ms)")]
    CardNotYetValid {
        /// When the card says it was created (unix millis).
        created_at_ms: u64,
        /// The time it was checked at (unix millis).
        now_ms: u64,
    },
    /// A display field of a contact card is too long.
    #[error("contact card field {field} is too long ({len} bytes, at most {max})")]
    CardFieldTooLong {
        /// Which field.
        field: &'static str,
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A contact card carries no key to start a session with.
    #[error("contact card carries no one-time or fallback key")]
    CardMissingKey,
    /// An Olm session could not be created.
    #[error("cannot create session: {0}")]
    SessionCreation(String),
    /// An Olm or Megolm message could not be decoded.
    #[error("malformed {0} message")]
    MalformedMessage(&'static str),
    /// An Olm message could not be decrypted (tampered, wrong session, or too far out of order).
    #[error("cannot decrypt pairwise message: {0}")]
    SessionDecrypt(String),
    /// An Olm message could not be encrypted.
    #[error("cannot encrypt pairwise message: {0}")]
    SessionEncrypt(String),
    /// The message is a normal message but a pre-key message was required, or vice versa.
    #[error("expected a {expected} message")]
    WrongMessageType {
        /// What was expected.
        expected: &'static str,
    },
    /// A group message could not be decrypted (tampered, unknown session, or from before
    /// this member's key).
    #[error("cannot decrypt group message: {0}")]
    GroupDecrypt(String),
    /// A group message belongs to a different group session than this receiver's.
    #[error("group message is for another sender-key session")]
    GroupSessionMismatch,
    /// A group session key could not be imported.
    #[error("invalid group session key")]
    InvalidGroupKey,
    /// A message or plaintext exceeds a size limit.
    #[error("{what} too large: {len} bytes, at most {max}")]
    TooLarge {
        /// What was too large.
        what: &'static str,
        /// Its size.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A sealed envelope could not be opened: it is not addressed to this device, or it
    /// was altered in transit.
    #[error("cannot open sealed envelope: not for this device or altered in transit")]
    EnvelopeOpen,
    /// A sealed envelope opened, but its contents are malformed.
    #[error("sealed envelope is malformed: {0}")]
    EnvelopeMalformed(&'static str),
    /// A sealed envelope's Noise static key is not the one bound to the sender it names.
    #[error("sealed envelope sender is not authenticated: its Noise static key is not bound to the claimed identity")]
    SenderMismatch,
    /// The Noise library failed while sealing (should not happen with valid keys).
    #[error("cannot seal envelope: {0}")]
    Seal(String),
    /// A message id was seen before.
    #[error("duplicate message {message_id}")]
    Duplicate {
        /// The repeated id, hex.
        message_id: String,
    },
    /// A message is older than the replay window and can no longer be checked.
    #[error(
        "message too old to accept (timestamp {timestamp_ms} ms, oldest accepted {oldest_ms} ms)"
    )]
    TooOld {
        /// The message's timestamp.
        timestamp_ms: u64,
        /// The oldest accepted timestamp.
        oldest_ms: u64,
    },
}
