//! Protocol v1 of `/instaconnect/msg/1`: the frames two devices exchange directly.
//!
//! Every request and response starts with the protocol version (a postcard varint `u16`), so a
//! peer speaking another version is recognised before its body is parsed and answered with
//! [`Response::UnsupportedVersion`]; it is an event, never a crash. Frames are at most
//! [`MAX_FRAME_BYTES`], checked before decoding. The end-to-end encrypted content is a ratchet
//! message that decrypts to a [`Payload`]. Once a session is established (the peer has answered
//! it), ratchet messages travel in a [`Request::Batch`]: the libp2p connection authenticates
//! the sender, the ratchet the content. A session's first messages (pre-key messages, which
//! can start a session at a peer that does not know our keys yet) travel in a sealed
//! [`Request::Envelope`] (see PROTOCOL.md), which names the sender's keys.

use serde::{Deserialize, Serialize};

use crate::codec::{decode_with_limit, encode, WireError};
use crate::PROTOCOL_VERSION;

/// Largest frame on `/instaconnect/msg/1` (the transport enforces it too).
pub const MAX_FRAME_BYTES: usize = 256 * 1024;
/// Largest text of one message, in bytes.
pub const MAX_TEXT_BYTES: usize = 16 * 1024;
/// Most message ids in one receipt.
pub const MAX_RECEIPT_IDS: usize = 256;
/// Most ratchet messages in one [`Request::Batch`].
pub const MAX_BATCH_ITEMS: usize = 256;
/// The libp2p protocol name.
pub const MSG_PROTOCOL: &str = "/instaconnect/msg/1";

/// A 16-byte message id chosen by the sender from its injected RNG.
pub type MsgId = [u8; 16];

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// A sealed envelope (crypto) whose ratchet message decrypts to a [`Payload`].
    Envelope(#[serde(with = "crate::secret::serde_bytes_compat")] Vec<u8>),
    /// Ratchet messages of an established session, in the order they were encrypted; answered
    /// with [`Response::Acks`].
    Batch(Vec<DirectItem>),
    /// Ask for the profile fields the responder's privacy settings show the requester.
    Profile,
    /// Ask to become contacts: the requester's signed contact card (crypto encoding).
    ContactRequest {
        #[serde(with = "crate::secret::serde_bytes_compat")]
        card: Vec<u8>,
    },
    /// Part of a sealed chunk of an attachment the responder sent the requester: `len` bytes
    /// (at most [`MAX_CHUNK_PART_BYTES`]) at `offset` of chunk `index` of message `id`'s
    /// attachment. Answered with [`Response::Chunk`], or `NotNow`.
    Chunk {
        id: MsgId,
        index: u32,
        offset: u32,
        len: u32,
    },
    /// Ask for the responder's current position, if its `location` privacy setting shows it to
    /// the requester (for `nearby`). Answered with [`Response::Location`].
    Location,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// The envelope with this message id is stored durably on the recipient's device.
    Ack(MsgId),
    /// The items of a [`Request::Batch`] stored durably on the recipient's device; the others
    /// were not taken now and stay with the sender.
    Acks(Vec<MsgId>),
    /// The profile fields the responder lets the requester see (`None`: not shown).
    Profile(ProfileReply),
    /// The contact request is stored; the user will accept or ignore it.
    ContactRequestReceived,
    /// Not accepted now; the sender keeps the message queued (blocked senders get this too,
    /// indistinguishable from a device that cannot take the message yet).
    NotNow,
    /// The request could not be parsed or opened.
    Malformed,
    /// The responder speaks another protocol version.
    UnsupportedVersion { supported: u16 },
    /// The part of a sealed attachment chunk a [`Request::Chunk`] asked for.
    Chunk(#[serde(with = "crate::secret::serde_bytes_compat")] Vec<u8>),
    /// The responder's position as its privacy lets the requester see it (`None`: not shown,
    /// or not known).
    Location(Option<Location>),
}

/// Largest part of a sealed attachment chunk one [`Request::Chunk`] asks for (a frame must
/// hold it).
pub const MAX_CHUNK_PART_BYTES: usize = 192 * 1024;

/// One message of a [`Request::Batch`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirectItem {
    pub id: MsgId,
    pub sent_at_ms: u64,
    /// The ratchet message (crypto encoding) that decrypts to a [`Payload`].
    #[serde(with = "crate::secret::serde_bytes_compat")]
    pub ratchet: Vec<u8>,
}

impl DirectItem {
    /// Bytes this item adds to an encoded batch, at most (for filling a frame up to its limit).
    pub fn encoded_len_bound(&self) -> usize {
        16 + 10 + 5 + self.ratchet.len()
    }
}

/// Bytes of a batch frame before its items, at most.
pub const BATCH_OVERHEAD_BYTES: usize = 16;

#[derive(Clone, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ProfileReply {
    pub phone: Option<String>,
    pub name: Option<String>,
    pub status: Option<String>,
    /// PNG thumbnail of the profile picture.
    pub picture_thumbnail: Option<Vec<u8>>,
}

/// What a pairwise ratchet message decrypts to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Payload {
    /// A text message in the 1:1 conversation; `n` numbers the sender's texts to this
    /// contact 1, 2, 3... so they are shown in the order they were sent.
    Text { text: String, n: u64 },
    /// The sender read these messages of ours (sent only if their privacy allows receipts).
    Read { ids: Vec<MsgId> },
    /// The sender is online (sent only to those their privacy lets see it).
    Presence { online: bool },
    /// The sender accepted our contact request; their signed contact card (crypto encoding).
    ContactAccept {
        #[serde(with = "crate::secret::serde_bytes_compat")]
        card: Vec<u8>,
    },
    /// The mailboxes on relays where the sender receives from us while it cannot be reached
    /// directly (replaces what it told us before).
    Mailboxes { boxes: Vec<MailboxAddress> },
    /// End-to-end acknowledgement of texts that came through relays: the sender's device
    /// stored them.
    Delivered { ids: Vec<MsgId> },
    /// The answer to a `ContactAccept`: the link is complete on both sides, and the accepter's
    /// session has been answered, so what follows travels in batches instead of envelopes.
    Linked,
    /// A photo, video, voice note or file in the 1:1 conversation, numbered with the texts
    /// (`n`); its chunks are fetched separately and checked against the manifest.
    Attachment {
        manifest: AttachmentManifest,
        n: u64,
    },
    /// A location in the 1:1 conversation, numbered with the texts (`n`).
    Location { location: Location, n: u64 },
    /// A group's membership as an admin (the sender) set it: an invitation to a member who
    /// does not know the group yet, an update for the others. Newer versions replace older.
    GroupUpdate { state: GroupState },
    /// Signed contact cards (crypto encoding) of group members, so members who are not each
    /// other's contacts can start sessions (at most [`MAX_GROUP_CARDS`] per payload).
    GroupCards {
        group: [u8; 16],
        cards: Vec<GroupCard>,
    },
    /// The sender joined the group (accepted its invitation), or with `joined: false` declined
    /// or left it. A joiner's own fresh card comes with it.
    GroupMembership {
        group: [u8; 16],
        joined: bool,
        #[serde(with = "crate::secret::serde_bytes_compat")]
        card: Vec<u8>,
    },
    /// The sender's current group sender key (a Megolm session key share, crypto encoding).
    GroupKey {
        group: [u8; 16],
        #[serde(with = "crate::secret::serde_bytes_compat")]
        share: Vec<u8>,
    },
    /// A group message: a Megolm message (crypto encoding) of the sender's current session
    /// whose plaintext is an encoded [`GroupBody`] with the same `id`.
    GroupMessage {
        group: [u8; 16],
        id: MsgId,
        #[serde(with = "crate::secret::serde_bytes_compat")]
        ciphertext: Vec<u8>,
    },
    /// The sender read these group messages of ours (sent only if its privacy allows).
    GroupRead { group: [u8; 16], ids: Vec<MsgId> },
    /// The recipient of attachment `id` tells its sender which chunks it holds (bit `i % 8` of
    /// byte `i / 8` for chunk `i`, at most [`MAX_HAVE_BYTES`]): all of them once the file is
    /// complete, so the sender stops putting chunks in relays; otherwise the sender leaves the
    /// missing ones in the recipient's mailboxes again (PROTOCOL.md §1.9).
    AttachmentHave {
        id: MsgId,
        #[serde(with = "crate::secret::serde_bytes_compat")]
        have: Vec<u8>,
    },
    /// An update of a live location: `share` is the id of the `Location` message that started
    /// it, `update` counts the updates of that share 1, 2, 3... (the receiver keeps the
    /// highest); `None` ends the share (the sender stopped it).
    LocationUpdate {
        share: MsgId,
        update: u64,
        location: Option<Location>,
    },
    /// A message the sender forwards (shown as forwarded), numbered with the texts (`n`).
    Forwarded { content: ForwardedContent, n: u64 },
}

/// What a forwarded message carries: a text, a location (a live one is forwarded as the
/// place it showed, not live), or an attachment (sealed afresh under a new key).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ForwardedContent {
    Text(String),
    Location(Location),
    Attachment(AttachmentManifest),
}

/// Most members of a group, the creator included.
pub const MAX_GROUP_MEMBERS: usize = 256;
/// Longest group name, in bytes.
pub const MAX_GROUP_NAME_BYTES: usize = 256;
/// Most cards in one [`Payload::GroupCards`] (each is a few hundred bytes, and a payload must
/// fit a relay's envelope).
pub const MAX_GROUP_CARDS: usize = 32;
/// Longest contact card carried for a group, in bytes.
pub const MAX_GROUP_CARD_BYTES: usize = 1024;
/// Longest phone number (E.164: `+` and at most 15 digits).
pub const MAX_PHONE_BYTES: usize = 16;

/// One member of a [`GroupState`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupStateMember {
    /// E.164.
    pub phone: String,
    pub admin: bool,
}

/// A group's shared state. Every change an admin makes increases `version`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupState {
    pub id: [u8; 16],
    pub version: u64,
    pub name: String,
    pub members: Vec<GroupStateMember>,
    /// Members known to have accepted the invitation (the others are invited).
    pub joined: Vec<String>,
}

/// A member's signed contact card.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupCard {
    pub phone: String,
    #[serde(with = "crate::secret::serde_bytes_compat")]
    pub card: Vec<u8>,
}

/// What a group message decrypts to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum GroupBody {
    /// A text; `id` must be the id the [`Payload::GroupMessage`] carries.
    Text { id: MsgId, text: String },
    /// A photo, video, voice note or file; members fetch its chunks from the sender's device.
    Attachment {
        id: MsgId,
        manifest: AttachmentManifest,
    },
}

impl GroupBody {
    pub fn encode(&self) -> Result<Vec<u8>, WireError> {
        encode(self)
    }

    /// Decodes a decrypted group message and checks its limits.
    pub fn decode(bytes: &[u8]) -> Result<GroupBody, ProtoError> {
        let b: GroupBody = decode_with_limit(bytes, MAX_FRAME_BYTES)?;
        match &b {
            GroupBody::Text { text, .. } if text.len() > MAX_TEXT_BYTES => {
                Err(ProtoError::TooLarge {
                    what: "text",
                    len: text.len(),
                    max: MAX_TEXT_BYTES,
                })
            }
            GroupBody::Attachment { manifest, .. } => manifest.check().map(|()| b),
            _ => Ok(b),
        }
    }
}

impl GroupState {
    /// Checks the bounds: member count, name and phone lengths, no duplicate member, joined
    /// members are members.
    pub fn check(&self) -> Result<(), ProtoError> {
        let too_large = |what, len, max| Err(ProtoError::TooLarge { what, len, max });
        if self.members.len() > MAX_GROUP_MEMBERS {
            return too_large("group members", self.members.len(), MAX_GROUP_MEMBERS);
        }
        if self.name.len() > MAX_GROUP_NAME_BYTES {
            return too_large("group name", self.name.len(), MAX_GROUP_NAME_BYTES);
        }
        if self.joined.len() > self.members.len() {
            return Err(ProtoError::Invalid("more joined than members"));
        }
        let mut seen = std::collections::BTreeSet::new();
        for m in &self.members {
            if m.phone.len() > MAX_PHONE_BYTES {
                return too_large("phone number", m.phone.len(), MAX_PHONE_BYTES);
            }
            if !seen.insert(m.phone.as_str()) {
                return Err(ProtoError::Invalid("duplicate group member"));
            }
        }
        if self.joined.iter().any(|j| !seen.contains(j.as_str())) {
            return Err(ProtoError::Invalid("a joined member is not a member"));
        }
        if !self.members.iter().any(|m| m.admin) {
            return Err(ProtoError::Invalid("a group without an admin"));
        }
        Ok(())
    }

    pub fn is_member(&self, phone: &str) -> bool {
        self.members.iter().any(|m| m.phone == phone)
    }

    pub fn is_admin(&self, phone: &str) -> bool {
        self.members.iter().any(|m| m.phone == phone && m.admin)
    }
}

/// Largest chunk bitmap of a [`Payload::AttachmentHave`] (one bit per chunk).
pub const MAX_HAVE_BYTES: usize = MAX_MANIFEST_CHUNKS / 8;

/// Most chunks one attachment has (each listed by hash in its manifest).
pub const MAX_MANIFEST_CHUNKS: usize = 1024;
/// Longest attachment file name, in bytes.
pub const MAX_ATTACHMENT_NAME_BYTES: usize = 255;
/// Longest media type, in bytes.
pub const MAX_MIME_BYTES: usize = 127;
/// Largest thumbnail carried in a manifest.
pub const MAX_THUMBNAIL_BYTES: usize = 16 * 1024;

/// What an attachment is; decides how it is shown.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AttachmentKind {
    Photo,
    Video,
    Voice,
    File,
}

/// Everything a recipient needs to fetch, check, open and show an attachment. The layout
/// (`size`, `chunk_size`, `chunks.len()`) is the one `instaconnect_crypto::chunk_layout` gives
/// for `size`; the key opens the chunks; `plaintext_hash` (BLAKE3) checks the whole file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttachmentManifest {
    pub kind: AttachmentKind,
    pub name: String,
    pub mime: String,
    pub size: u64,
    pub chunk_size: u32,
    /// BLAKE3 of every sealed chunk, in order.
    pub chunks: Vec<[u8; 32]>,
    pub key: crate::SecretBytes,
    pub plaintext_hash: [u8; 32],
    /// Photos and videos: dimensions in pixels.
    pub width: Option<u32>,
    pub height: Option<u32>,
    /// Videos and voice notes, where the container tells it.
    pub duration_ms: Option<u64>,
    /// Photos: a small preview image.
    pub thumbnail: Option<Vec<u8>>,
    pub caption: Option<String>,
}

/// A point on Earth, in 1e-7 degrees (WGS 84), with an optional accuracy; a live location
/// says until when it keeps being updated.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Location {
    pub lat_e7: i32,
    pub lon_e7: i32,
    pub accuracy_m: Option<u32>,
    /// Live: updates follow until this time (unix ms); `None`, a single location.
    pub live_until_ms: Option<u64>,
}

impl AttachmentManifest {
    /// Checks the manifest's bounds (not its layout, which the crypto checks).
    pub fn check(&self) -> Result<(), ProtoError> {
        let too_large = |what, len, max| Err(ProtoError::TooLarge { what, len, max });
        if self.name.len() > MAX_ATTACHMENT_NAME_BYTES {
            return too_large("file name", self.name.len(), MAX_ATTACHMENT_NAME_BYTES);
        }
        if self.mime.len() > MAX_MIME_BYTES {
            return too_large("media type", self.mime.len(), MAX_MIME_BYTES);
        }
        if self.chunks.is_empty() || self.chunks.len() > MAX_MANIFEST_CHUNKS {
            return too_large("chunk list", self.chunks.len(), MAX_MANIFEST_CHUNKS);
        }
        if self.key.expose().len() != 32 {
            return too_large("attachment key", self.key.expose().len(), 32);
        }
        if let Some(t) = &self.thumbnail {
            if t.len() > MAX_THUMBNAIL_BYTES {
                return too_large("thumbnail", t.len(), MAX_THUMBNAIL_BYTES);
            }
        }
        if let Some(c) = &self.caption {
            if c.len() > MAX_TEXT_BYTES {
                return too_large("caption", c.len(), MAX_TEXT_BYTES);
            }
        }
        Ok(())
    }
}

impl Location {
    /// Whether the coordinates are on Earth.
    pub fn is_valid(&self) -> bool {
        (-900_000_000..=900_000_000).contains(&self.lat_e7)
            && (-1_800_000_000..=1_800_000_000).contains(&self.lon_e7)
    }
}

/// Mailboxes one device announces at most.
pub const MAX_ANNOUNCED_MAILBOXES: usize = 8;
/// Addresses given per relay at most.
pub const MAX_RELAY_ADDRS: usize = 8;
/// Longest relay peer id or address.
pub const MAX_RELAY_ADDR_BYTES: usize = 256;

/// Where a mailbox is: the relay's peer id, addresses to reach it, and the mailbox id.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MailboxAddress {
    pub relay: String,
    pub addrs: Vec<String>,
    pub mailbox: [u8; 32],
}

#[derive(Debug, thiserror::Error)]
pub enum ProtoError {
    #[error("peer speaks protocol version {0}, this node speaks {PROTOCOL_VERSION}")]
    UnsupportedVersion(u16),
    #[error(transparent)]
    Wire(#[from] WireError),
    #[error("invalid {0}")]
    Invalid(&'static str),
    #[error("{what} is too large: {len} (at most {max})")]
    TooLarge {
        what: &'static str,
        len: usize,
        max: usize,
    },
}

#[derive(Serialize)]
struct Versioned<'a, T> {
    version: u16,
    body: &'a T,
}

pub(crate) fn encode_versioned<T: Serialize>(body: &T) -> Result<Vec<u8>, WireError> {
    encode(&Versioned {
        version: PROTOCOL_VERSION,
        body,
    })
}

/// Checks the frame's size against `limit` and its version; returns the body.
pub(crate) fn split_version(bytes: &[u8], limit: usize) -> Result<&[u8], ProtoError> {
    if bytes.len() > limit {
        return Err(WireError::TooLarge {
            len: bytes.len(),
            limit,
        }
        .into());
    }
    let (version, rest) =
        postcard::take_from_bytes::<u16>(bytes).map_err(|source| WireError::Malformed {
            what: "protocol version",
            source,
        })?;
    if version != PROTOCOL_VERSION {
        return Err(ProtoError::UnsupportedVersion(version));
    }
    Ok(rest)
}

impl Request {
    pub fn encode(&self) -> Result<Vec<u8>, WireError> {
        encode_versioned(self)
    }

    pub fn decode(bytes: &[u8]) -> Result<Request, ProtoError> {
        let r: Request =
            decode_with_limit(split_version(bytes, MAX_FRAME_BYTES)?, MAX_FRAME_BYTES)?;
        match &r {
            Request::Batch(items) if items.len() > MAX_BATCH_ITEMS => Err(ProtoError::TooLarge {
                what: "batch",
                len: items.len(),
                max: MAX_BATCH_ITEMS,
            }),
            Request::Chunk { len, .. } if *len as usize > MAX_CHUNK_PART_BYTES => {
                Err(ProtoError::TooLarge {
                    what: "chunk part",
                    len: *len as usize,
                    max: MAX_CHUNK_PART_BYTES,
                })
            }
            _ => Ok(r),
        }
    }
}

impl Response {
    pub fn encode(&self) -> Result<Vec<u8>, WireError> {
        encode_versioned(self)
    }

    pub fn decode(bytes: &[u8]) -> Result<Response, ProtoError> {
        let r: Response =
            decode_with_limit(split_version(bytes, MAX_FRAME_BYTES)?, MAX_FRAME_BYTES)?;
        match &r {
            Response::Acks(ids) if ids.len() > MAX_BATCH_ITEMS => Err(ProtoError::TooLarge {
                what: "acks",
                len: ids.len(),
                max: MAX_BATCH_ITEMS,
            }),
            Response::Chunk(part) if part.len() > MAX_CHUNK_PART_BYTES => {
                Err(ProtoError::TooLarge {
                    what: "chunk part",
                    len: part.len(),
                    max: MAX_CHUNK_PART_BYTES,
                })
            }
            Response::Location(Some(l)) if !l.is_valid() => {
                Err(ProtoError::Invalid("location off the globe"))
            }
            _ => Ok(r),
        }
    }
}

impl Payload {
    pub fn encode(&self) -> Result<Vec<u8>, WireError> {
        encode(self)
    }

    /// Decodes a decrypted payload and checks its limits.
    pub fn decode(bytes: &[u8]) -> Result<Payload, ProtoError> {
        let p: Payload = decode_with_limit(bytes, MAX_FRAME_BYTES)?;
        match &p {
            Payload::Text { text, .. } if text.len() > MAX_TEXT_BYTES => {
                Err(ProtoError::TooLarge {
                    what: "text",
                    len: text.len(),
                    max: MAX_TEXT_BYTES,
                })
            }
            Payload::Read { ids } | Payload::Delivered { ids } if ids.len() > MAX_RECEIPT_IDS => {
                Err(ProtoError::TooLarge {
                    what: "receipt",
                    len: ids.len(),
                    max: MAX_RECEIPT_IDS,
                })
            }
            Payload::Mailboxes { boxes } => {
                if boxes.len() > MAX_ANNOUNCED_MAILBOXES {
                    return Err(ProtoError::TooLarge {
                        what: "mailboxes",
                        len: boxes.len(),
                        max: MAX_ANNOUNCED_MAILBOXES,
                    });
                }
                for b in boxes {
                    if b.addrs.len() > MAX_RELAY_ADDRS {
                        return Err(ProtoError::TooLarge {
                            what: "relay addresses",
                            len: b.addrs.len(),
                            max: MAX_RELAY_ADDRS,
                        });
                    }
                    let longest = b
                        .addrs
                        .iter()
                        .map(String::len)
                        .chain([b.relay.len()])
                        .max()
                        .unwrap_or(0);
                    if longest > MAX_RELAY_ADDR_BYTES {
                        return Err(ProtoError::TooLarge {
                            what: "relay address",
                            len: longest,
                            max: MAX_RELAY_ADDR_BYTES,
                        });
                    }
                }
                Ok(p)
            }
            Payload::Attachment { manifest, .. } => manifest.check().map(|()| p),
            Payload::Location { location, .. }
            | Payload::LocationUpdate {
                location: Some(location),
                ..
            }
            | Payload::Forwarded {
                content: ForwardedContent::Location(location),
                ..
            } if !location.is_valid() => Err(ProtoError::Invalid("location off the globe")),
            Payload::Forwarded {
                content: ForwardedContent::Text(text),
                ..
            } if text.len() > MAX_TEXT_BYTES => Err(ProtoError::TooLarge {
                what: "text",
                len: text.len(),
                max: MAX_TEXT_BYTES,
            }),
            Payload::Forwarded {
                content: ForwardedContent::Attachment(manifest),
                ..
            } => manifest.check().map(|()| p),
            Payload::GroupUpdate { state } => state.check().map(|()| p),
            Payload::GroupCards { cards, .. } => {
                if cards.len() > MAX_GROUP_CARDS {
                    return Err(ProtoError::TooLarge {
                        what: "group cards",
                        len: cards.len(),
                        max: MAX_GROUP_CARDS,
                    });
                }
                match cards.iter().find(|c| {
                    c.phone.len() > MAX_PHONE_BYTES || c.card.len() > MAX_GROUP_CARD_BYTES
                }) {
                    Some(c) => Err(ProtoError::TooLarge {
                        what: "group card",
                        len: c.card.len().max(c.phone.len()),
                        max: MAX_GROUP_CARD_BYTES,
                    }),
                    None => Ok(p),
                }
            }
            Payload::GroupMembership { card, .. } if card.len() > MAX_GROUP_CARD_BYTES => {
                Err(ProtoError::TooLarge {
                    what: "group card",
                    len: card.len(),
                    max: MAX_GROUP_CARD_BYTES,
                })
            }
            Payload::GroupRead { ids, .. } if ids.len() > MAX_RECEIPT_IDS => {
                Err(ProtoError::TooLarge {
                    what: "receipt",
                    len: ids.len(),
                    max: MAX_RECEIPT_IDS,
                })
            }
            Payload::AttachmentHave { have, .. } if have.len() > MAX_HAVE_BYTES => {
                Err(ProtoError::TooLarge {
                    what: "chunk bitmap",
                    len: have.len(),
                    max: MAX_HAVE_BYTES,
                })
            }
            _ => Ok(p),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn group_states_out_of_bounds_are_refused() {
        let member = |i: usize| GroupStateMember {
            phone: format!("+91981234{i:04}"),
            admin: i == 0,
        };
        let state = |n: usize| GroupState {
            id: [1; 16],
            version: 1,
            name: "Trip".into(),
            members: (0..n).map(member).collect(),
            joined: vec![member(0).phone],
        };
        let ok = Payload::GroupUpdate { state: state(5) };
        assert_eq!(Payload::decode(&ok.encode().unwrap()).unwrap(), ok);
        let big = Payload::GroupUpdate {
            state: state(MAX_GROUP_MEMBERS + 1),
        };
        assert!(matches!(
            Payload::decode(&big.encode().unwrap()),
            Err(ProtoError::TooLarge {
                what: "group members",
                ..
            })
        ));
        let mut twice = state(3);
        twice.members.push(member(1));
        assert!(Payload::decode(&Payload::GroupUpdate { state: twice }.encode().unwrap()).is_err());
        let mut no_admin = state(3);
        no_admin.members[0].admin = false;
        assert!(
            Payload::decode(&Payload::GroupUpdate { state: no_admin }.encode().unwrap()).is_err()
        );
        let mut stranger = state(3);
        stranger.joined.push("+10000000000".into());
        assert!(
            Payload::decode(&Payload::GroupUpdate { state: stranger }.encode().unwrap()).is_err()
        );
        let cards = Payload::GroupCards {
            group: [1; 16],
            cards: (0..MAX_GROUP_CARDS + 1)
                .map(|i| GroupCard {
                    phone: member(i).phone,
                    card: vec![0; 8],
                })
                .collect(),
        };
        assert!(Payload::decode(&cards.encode().unwrap()).is_err());
        let body = GroupBody::Text {
            id: [2; 16],
            text: "x".repeat(MAX_TEXT_BYTES + 1),
        };
        assert!(GroupBody::decode(&body.encode().unwrap()).is_err());
        assert!(GroupBody::decode(&[0xff, 0xff, 0xff]).is_err());
    }

    #[test]
    fn frames_roundtrip() {
        let r = Request::ContactRequest {
            card: vec![1, 2, 3],
        };
        assert_eq!(Request::decode(&r.encode().unwrap()).unwrap(), r);
        let a = Response::Ack([7; 16]);
        assert_eq!(Response::decode(&a.encode().unwrap()).unwrap(), a);
        let p = Payload::Text {
            text: "hello".into(),
            n: 1,
        };
        assert_eq!(Payload::decode(&p.encode().unwrap()).unwrap(), p);
    }

    fn manifest() -> AttachmentManifest {
        AttachmentManifest {
            kind: AttachmentKind::Photo,
            name: "beach.png".into(),
            mime: "image/png".into(),
            size: 100_000,
            chunk_size: 48 * 1024,
            chunks: vec![[3; 32]; 3],
            key: crate::SecretBytes::new(vec![9; 32]),
            plaintext_hash: [4; 32],
            width: Some(640),
            height: Some(480),
            duration_ms: None,
            thumbnail: Some(vec![1; 100]),
            caption: Some("the beach".into()),
        }
    }

    #[test]
    fn attachments_and_locations_roundtrip_within_their_bounds() {
        let p = Payload::Attachment {
            manifest: manifest(),
            n: 4,
        };
        assert_eq!(Payload::decode(&p.encode().unwrap()).unwrap(), p);
        let here = Location {
            lat_e7: 129_715_987,
            lon_e7: 775_945_627,
            accuracy_m: Some(12),
            live_until_ms: Some(1_000),
        };
        let p = Payload::Location {
            location: here,
            n: 5,
        };
        assert_eq!(Payload::decode(&p.encode().unwrap()).unwrap(), p);

        let off = Payload::Location {
            location: Location {
                lat_e7: 900_000_001,
                ..here
            },
            n: 6,
        };
        assert!(matches!(
            Payload::decode(&off.encode().unwrap()),
            Err(ProtoError::Invalid(_))
        ));
        type Spoil = fn(&mut AttachmentManifest);
        let bad: [(&str, Spoil); 6] = [
            ("file name", |m| {
                m.name = "n".repeat(MAX_ATTACHMENT_NAME_BYTES + 1)
            }),
            ("media type", |m| m.mime = "m".repeat(MAX_MIME_BYTES + 1)),
            ("chunk list", |m| {
                m.chunks = vec![[0; 32]; MAX_MANIFEST_CHUNKS + 1]
            }),
            ("chunk list", |m| m.chunks.clear()),
            ("attachment key", |m| {
                m.key = crate::SecretBytes::new(vec![1; 31])
            }),
            ("thumbnail", |m| {
                m.thumbnail = Some(vec![0; MAX_THUMBNAIL_BYTES + 1])
            }),
        ];
        for (what, spoil) in bad {
            let mut m = manifest();
            spoil(&mut m);
            let p = Payload::Attachment { manifest: m, n: 1 };
            match Payload::decode(&p.encode().unwrap()) {
                Err(ProtoError::TooLarge { what: w, .. }) => assert_eq!(w, what),
                other => panic!("{what}: {other:?}"),
            }
        }
        let mut m = manifest();
        m.chunks = vec![[0; 32]; MAX_MANIFEST_CHUNKS];
        m.thumbnail = Some(vec![0; MAX_THUMBNAIL_BYTES]);
        m.caption = Some("c".repeat(MAX_TEXT_BYTES));
        let biggest = Payload::Attachment { manifest: m, n: 1 }.encode().unwrap();
        assert!(
            biggest.len() < MAX_FRAME_BYTES / 2,
            "the largest manifest fits one message: {} bytes",
            biggest.len()
        );
    }

    #[test]
    fn chunk_bitmaps_roundtrip_within_their_bound() {
        let p = Payload::AttachmentHave {
            id: [5; 16],
            have: vec![0xff; MAX_HAVE_BYTES],
        };
        assert_eq!(Payload::decode(&p.encode().unwrap()).unwrap(), p);
        let big = Payload::AttachmentHave {
            id: [5; 16],
            have: vec![0xff; MAX_HAVE_BYTES + 1],
        };
        assert!(matches!(
            Payload::decode(&big.encode().unwrap()),
            Err(ProtoError::TooLarge { .. })
        ));
    }

    #[test]
    fn chunk_parts_roundtrip_and_oversize_parts_are_refused() {
        let r = Request::Chunk {
            id: [1; 16],
            index: 3,
            offset: 0,
            len: MAX_CHUNK_PART_BYTES as u32,
        };
        assert_eq!(Request::decode(&r.encode().unwrap()).unwrap(), r);
        let a = Response::Chunk(vec![5; MAX_CHUNK_PART_BYTES]);
        let frame = a.encode().unwrap();
        assert!(frame.len() <= MAX_FRAME_BYTES);
        assert_eq!(Response::decode(&frame).unwrap(), a);
        let big = Request::Chunk {
            id: [1; 16],
            index: 0,
            offset: 0,
            len: MAX_CHUNK_PART_BYTES as u32 + 1,
        };
        assert!(matches!(
            Request::decode(&big.encode().unwrap()),
            Err(ProtoError::TooLarge { .. })
        ));
        let big = Response::Chunk(vec![0; MAX_CHUNK_PART_BYTES + 1]);
        assert!(matches!(
            Response::decode(&big.encode().unwrap()),
            Err(ProtoError::TooLarge { .. })
        ));
    }

    #[test]
    fn another_version_is_recognised_before_the_body() {
        let mut b = encode(&7u16).unwrap();
        b.extend_from_slice(&[0xff; 10]);
        assert!(matches!(
            Request::decode(&b),
            Err(ProtoError::UnsupportedVersion(7))
        ));
    }

    #[test]
    fn oversize_frames_and_texts_are_refused() {
        let big = vec![0u8; MAX_FRAME_BYTES + 1];
        assert!(matches!(
            Request::decode(&big),
            Err(ProtoError::Wire(WireError::TooLarge { .. }))
        ));
        let p = Payload::Text {
            text: "x".repeat(MAX_TEXT_BYTES + 1),
            n: 1,
        };
        assert!(matches!(
            Payload::decode(&p.encode().unwrap()),
            Err(ProtoError::TooLarge { what: "text", .. })
        ));
    }

    #[test]
    fn a_full_batch_fits_its_frame_bound() {
        let items: Vec<DirectItem> = (0..MAX_BATCH_ITEMS)
            .map(|i| DirectItem {
                id: [i as u8; 16],
                sent_at_ms: u64::MAX,
                ratchet: vec![0xab; 700 + i],
            })
            .collect();
        let bound: usize = BATCH_OVERHEAD_BYTES
            + items
                .iter()
                .map(DirectItem::encoded_len_bound)
                .sum::<usize>();
        let frame = Request::Batch(items.clone()).encode().unwrap();
        assert!(frame.len() <= bound, "{} > {bound}", frame.len());
        assert_eq!(Request::decode(&frame).unwrap(), Request::Batch(items));
        let acks = Response::Acks(vec![[1; 16]; MAX_BATCH_ITEMS]);
        assert_eq!(Response::decode(&acks.encode().unwrap()).unwrap(), acks);
    }

    #[test]
    fn oversize_batches_are_refused() {
        let item = DirectItem {
            id: [0; 16],
            sent_at_ms: 0,
            ratchet: vec![1],
        };
        let frame = Request::Batch(vec![item; MAX_BATCH_ITEMS + 1])
            .encode()
            .unwrap();
        assert!(matches!(
            Request::decode(&frame),
            Err(ProtoError::TooLarge { what: "batch", .. })
        ));
        let acks = Response::Acks(vec![[1; 16]; MAX_BATCH_ITEMS + 1]);
        assert!(matches!(
            Response::decode(&acks.encode().unwrap()),
            Err(ProtoError::TooLarge { what: "acks", .. })
        ));
    }

    #[test]
    fn mailbox_announcements_roundtrip_within_their_bounds() {
        let good = MailboxAddress {
            relay: "12D3KooW".into(),
            addrs: vec!["/ip4/127.0.0.1/tcp/4001".into()],
            mailbox: [3; 32],
        };
        let p = Payload::Mailboxes {
            boxes: vec![good.clone(); MAX_ANNOUNCED_MAILBOXES],
        };
        assert_eq!(Payload::decode(&p.encode().unwrap()).unwrap(), p);
        let too_many = Payload::Mailboxes {
            boxes: vec![good.clone(); MAX_ANNOUNCED_MAILBOXES + 1],
        };
        let long = Payload::Mailboxes {
            boxes: vec![MailboxAddress {
                addrs: vec!["/".repeat(MAX_RELAY_ADDR_BYTES + 1)],
                ..good
            }],
        };
        let acks = Payload::Delivered {
            ids: vec![[1; 16]; MAX_RECEIPT_IDS + 1],
        };
        for (bad, what) in [
            (too_many, "mailboxes"),
            (long, "relay address"),
            (acks, "receipt"),
        ] {
            match Payload::decode(&bad.encode().unwrap()) {
                Err(ProtoError::TooLarge { what: w, .. }) => assert_eq!(w, what),
                other => panic!("{what}: {other:?}"),
            }
        }
    }

    #[test]
    fn live_updates_forwards_and_location_answers_are_checked() {
        let here = Location {
            lat_e7: 525_200_000,
            lon_e7: 134_050_000,
            accuracy_m: None,
            live_until_ms: None,
        };
        let off = Location {
            lon_e7: -1_800_000_001,
            ..here
        };
        let good = [
            Payload::LocationUpdate {
                share: [1; 16],
                update: 3,
                location: Some(here),
            },
            Payload::LocationUpdate {
                share: [1; 16],
                update: 4,
                location: None,
            },
            Payload::Forwarded {
                content: ForwardedContent::Text("hi".into()),
                n: 2,
            },
            Payload::Forwarded {
                content: ForwardedContent::Location(here),
                n: 3,
            },
            Payload::Forwarded {
                content: ForwardedContent::Attachment(manifest()),
                n: 4,
            },
        ];
        for p in good {
            assert_eq!(Payload::decode(&p.encode().unwrap()).unwrap(), p);
        }
        let mut m = manifest();
        m.chunks.clear();
        let bad = [
            Payload::LocationUpdate {
                share: [1; 16],
                update: 1,
                location: Some(off),
            },
            Payload::Forwarded {
                content: ForwardedContent::Location(off),
                n: 1,
            },
            Payload::Forwarded {
                content: ForwardedContent::Text("x".repeat(MAX_TEXT_BYTES + 1)),
                n: 1,
            },
            Payload::Forwarded {
                content: ForwardedContent::Attachment(m),
                n: 1,
            },
        ];
        for p in bad {
            assert!(Payload::decode(&p.encode().unwrap()).is_err(), "{p:?}");
        }
        let r = Request::Location;
        assert_eq!(Request::decode(&r.encode().unwrap()).unwrap(), r);
        let a = Response::Location(Some(here));
        assert_eq!(Response::decode(&a.encode().unwrap()).unwrap(), a);
        assert!(matches!(
            Response::decode(&Response::Location(Some(off)).encode().unwrap()),
            Err(ProtoError::Invalid(_))
        ));
    }

    proptest! {
        #[test]
        fn arbitrary_frames_never_panic(b in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = Request::decode(&b);
            let _ = Response::decode(&b);
            let _ = Payload::decode(&b);
        }

        #[test]
        fn text_roundtrips(t in ".{0,200}", n in any::<u64>()) {
            let p = Payload::Text { text: t, n };
            prop_assert_eq!(Payload::decode(&p.encode().unwrap()).unwrap(), p);
        }
    }
}
