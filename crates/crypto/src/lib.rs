//! `instaconnect-crypto`: identity and device keys, signed contact cards, pairwise Olm
//! sessions, Megolm group sender keys, Noise-X sealed envelopes with padding, replay
//! detection and safety numbers.
//!
//! The crate is pure: no IO, no async runtime, and it never reads the clock — every time
//! is passed in as unix milliseconds. Key material is generated from the OS RNG inside
//! vodozemac and snow. See `PROTOCOL.md` at the repository root for the byte layouts.
//!
//! Typical flow for a 1:1 message:
//! 1. Bob issues a [`ContactCard`] ([`Device::contact_card`]) and shares it as an invite link.
//! 2. Alice verifies it ([`ContactCard::from_invite_link`]) and starts a [`Session::outbound`].
//! 3. Alice encrypts with [`Session::encrypt`] and seals the ratchet message with
//!    [`seal_envelope`] to Bob's device envelope key.
//! 4. Bob [`open_envelope`]s (authenticating Alice), checks [`ReplayGuard::check_envelope`],
//!    then [`Session::inbound`] (first message) or [`Session::decrypt_from`].

#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod attachment;
mod card;
mod envelope;
mod error;
mod group;
mod identity;
mod mailbox;
mod pickle;
mod replay;
mod session;

pub use attachment::{
    chunk_deposit_id, chunk_hash, chunk_layout, open_chunk, parse_relay_chunk, relay_chunk_payload,
    relayable, seal_chunk, AttachmentKey, AttachmentOpener, AttachmentSealer, Layout, Sealed,
    ATTACHMENT_CHUNK_BYTES, CHUNK_TAG_BYTES, MAX_ATTACHMENT_BYTES, MAX_ATTACHMENT_CHUNKS,
    MAX_ATTACHMENT_CHUNK_BYTES, MAX_RELAYED_ATTACHMENT_BYTES, MAX_RELAYED_CHUNK_BYTES,
    RELAY_CHUNK_HEADER_BYTES,
};
pub use card::{
    CardDisplay, ContactCard, CARD_CONTEXT, CARD_KEY_ROTATION_MS, CARD_VERSION,
    DEFAULT_CARD_TTL_MS, INVITE_PREFIX, MAX_CARD_CLOCK_SKEW_MS, MAX_CARD_TTL_MS,
    MAX_DISPLAY_NAME_LEN, MAX_INVITE_LINK_LEN, MAX_PHONE_LEN,
};
pub use envelope::{
    bucket_for, open_envelope, open_envelope_cached, seal_envelope, seal_envelope_cached,
    EnvelopeContent, MessageId, OpenedEnvelope, PayloadKind, VerifiedKeys, BUCKET_16K, BUCKET_1K,
    BUCKET_4K, BUCKET_64K, ENVELOPE_BUCKETS, ENVELOPE_VERSION, MAX_ENVELOPE_PAYLOAD,
    MAX_NOISE_MESSAGE, NOISE_PROLOGUE, NOISE_PROTOCOL, NOISE_X_OVERHEAD, SEALED_CONTENT_VERSION,
    SEALED_HEADER_LEN, VERIFIED_KEYS_CAPACITY,
};
pub use error::CryptoError;
pub use group::{
    group_message_session_id, group_rotation_due, GroupPlaintext, GroupReceiver, GroupSender,
    GROUP_FORMAT_VERSION, GROUP_ROTATION_MAX_AGE_MS, GROUP_ROTATION_MAX_MESSAGES,
    GROUP_SEEN_INDEX_CAPACITY, MAX_GROUP_ID_LEN,
};
pub use identity::{
    safety_number, Device, Identity, IdentityKey, SafetyNumber, Sig64, SignedDeviceKeys,
    DEVICE_KEYS_CONTEXT, FINGERPRINT_GROUPS, FINGERPRINT_ITERATIONS, FINGERPRINT_VERSION,
    VERIFIED_SIGNATURES_CAPACITY,
};
pub use mailbox::{
    check_batch_receipt, deletion_hash, deposit_secret, envelope_hash, sign_receipt, verify_owner,
    verify_receipt, MailboxKey,
};
pub use pickle::{pickle_key, PICKLE_KEY_CONTEXT};
pub use replay::{ReplayGuard, REPLAY_GUARD_CAPACITY, REPLAY_WINDOW_MS};
pub use session::{
    Session, MAX_MESSAGE_GAP, MAX_RATCHET_PLAINTEXT, MAX_SKIPPED_MESSAGE_KEYS, RATCHET_NORMAL,
    RATCHET_PREKEY,
};
