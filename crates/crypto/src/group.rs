//! Group sender keys with vodozemac's Megolm.
//!
//! Each member sends with its own [`GroupSender`] and shares the session key
//! ([`GroupSender::key_share`]) with the other members over pairwise Olm sessions. Every
//! membership change calls [`GroupSender::rotate`] and the new key goes only to the current
//! members, so a removed member cannot read anything sent afterwards.

use std::collections::BTreeSet;
use std::fmt;

use serde::{Deserialize, Serialize};
use vodozemac::megolm::{
    GroupSession, GroupSessionPickle, InboundGroupSession, InboundGroupSessionPickle,
    MegolmMessage, SessionConfig, SessionKey,
};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::identity::KEY_LEN;
use crate::pickle::{bytes_as_str, pickle_key};
use crate::{CryptoError, IdentityKey};

/// Rotate the sender key after this many messages.
pub const GROUP_ROTATION_MAX_MESSAGES: u32 = 100;
/// Rotate the sender key after this long (7 days).
pub const GROUP_ROTATION_MAX_AGE_MS: u64 = 7 * 24 * 60 * 60 * 1000;
/// Longest group id.
pub const MAX_GROUP_ID_LEN: usize = 64;
/// How many distinct message indices a receiver remembers to reject replays; older indices
/// than the remembered window are refused.
pub const GROUP_SEEN_INDEX_CAPACITY: usize = 4096;
/// Version byte of group messages and key shares.
pub const GROUP_FORMAT_VERSION: u8 = 1;

/// Whether a sender key that has sent `msg_count` messages and is `age_ms` old must be
/// replaced.
pub fn group_rotation_due(msg_count: u32, age_ms: u64) -> bool {
    msg_count >= GROUP_ROTATION_MAX_MESSAGES || age_ms >= GROUP_ROTATION_MAX_AGE_MS
}

fn check_group_id(group_id: &[u8]) -> Result<(), CryptoError> {
    if group_id.len() > MAX_GROUP_ID_LEN {
        return Err(CryptoError::TooLarge {
            what: "group id",
            len: group_id.len(),
            max: MAX_GROUP_ID_LEN,
        });
    }
    Ok(())
}

fn session_id_bytes(b64: &str) -> [u8; KEY_LEN] {
    // The Megolm session id is the base64 of the session's Ed25519 public key.
    vodozemac::Ed25519PublicKey::from_base64(b64)
        .map(|k| *k.as_bytes())
        .unwrap_or([0; KEY_LEN])
}

/// Split a group message into its session id and Megolm bytes.
/// Layout: `version (1) ‖ session id (32) ‖ Megolm message`.
pub fn group_message_session_id(message: &[u8]) -> Result<[u8; KEY_LEN], CryptoError> {
    split_group_message(message).map(|(id, _)| id)
}

fn split_group_message(message: &[u8]) -> Result<([u8; KEY_LEN], &[u8]), CryptoError> {
    let (&v, rest) = message
        .split_first()
        .ok_or(CryptoError::MalformedMessage("group"))?;
    if v != GROUP_FORMAT_VERSION {
        return Err(CryptoError::UnsupportedVersion {
            what: "group message",
            got: v,
            supported: GROUP_FORMAT_VERSION,
        });
    }
    let id: [u8; KEY_LEN] = rest
        .get(..KEY_LEN)
        .and_then(|s| s.try_into().ok())
        .ok_or(CryptoError::MalformedMessage("group"))?;
    Ok((id, rest.get(KEY_LEN..).unwrap_or_default()))
}

/// This member's outbound Megolm session for one group.
pub struct GroupSender {
    group_id: Vec<u8>,
    session: GroupSession,
    created_at_ms: u64,
}

#[derive(Serialize, Deserialize, Zeroize, ZeroizeOnDrop)]
struct GroupSenderPickle {
    version: u8,
    group_id: Vec<u8>,
    created_at_ms: u64,
    megolm: String,
}

impl GroupSender {
    /// A fresh sender key for `group_id` (at most [`MAX_GROUP_ID_LEN`] bytes).
    pub fn new(group_id: &[u8], now_ms: u64) -> Result<GroupSender, CryptoError> {
        check_group_id(group_id)?;
        Ok(GroupSender {
            group_id: group_id.to_vec(),
            session: GroupSession::new(SessionConfig::version_1()),
            created_at_ms: now_ms,
        })
    }

    /// The group this sender key belongs to.
    pub fn group_id(&self) -> &[u8] {
        &self.group_id
    }

    /// The current session id (the Megolm session's Ed25519 public key).
    pub fn session_id(&self) -> [u8; KEY_LEN] {
        session_id_bytes(&self.session.session_id())
    }

    /// Messages sent with the current session.
    pub fn message_count(&self) -> u32 {
        self.session.message_index()
    }

    /// Whether the session has sent too many messages or is too old at `now_ms`.
    pub fn needs_rotation(&self, now_ms: u64) -> bool {
        group_rotation_due(
            self.message_count(),
            now_ms.saturating_sub(self.created_at_ms),
        )
    }

    /// Replace the session with a fresh one (call on every membership change, and when
    /// [`GroupSender::needs_rotation`]). Share the new [`GroupSender::key_share`] with the
    /// current members only.
    pub fn rotate(&mut self, now_ms: u64) {
        self.session = GroupSession::new(SessionConfig::version_1());
        self.created_at_ms = now_ms;
    }

    /// Encrypt a group message: `version ‖ session id (32) ‖ Megolm message` (the Megolm
    /// message is MACed and signed by the session's Ed25519 key).
    pub fn encrypt(&mut self, plaintext: &[u8]) -> Vec<u8> {
        let m = self.session.encrypt(plaintext).to_bytes();
        let mut out = Vec::with_capacity(1 + KEY_LEN + m.len());
        out.push(GROUP_FORMAT_VERSION);
        out.extend_from_slice(&self.session_id());
        out.extend_from_slice(&m);
        out
    }

    /// The secret key share to send to each current member over its pairwise session:
    /// `version ‖ group id length (1) ‖ group id ‖ Megolm session key (229 bytes: version,
    /// index, ratchet, signing public key, signature)`. It lets the holder decrypt messages
    /// from the current index on.
    pub fn key_share(&self) -> Zeroizing<Vec<u8>> {
        let key: SessionKey = self.session.session_key();
        let kb = Zeroizing::new(key.to_bytes());
        let mut out = Zeroizing::new(Vec::with_capacity(2 + self.group_id.len() + kb.len()));
        out.push(GROUP_FORMAT_VERSION);
        out.push(u8::try_from(self.group_id.len()).unwrap_or(u8::MAX));
        out.extend_from_slice(&self.group_id);
        out.extend_from_slice(&kb);
        out
    }

    /// Persistable form (secret; store encrypted at rest).
    pub fn to_pickle_bytes(&self) -> Zeroizing<Vec<u8>> {
        let p = GroupSenderPickle {
            version: GROUP_FORMAT_VERSION,
            group_id: self.group_id.clone(),
            created_at_ms: self.created_at_ms,
            megolm: self.session.pickle().encrypt(&pickle_key()),
        };
        let cap = p.megolm.len() + p.group_id.len() + 24;
        Zeroizing::new(postcard::to_extend(&p, Vec::with_capacity(cap)).unwrap_or_default())
    }

    /// Restore from [`GroupSender::to_pickle_bytes`].
    pub fn from_pickle_bytes(b: &[u8]) -> Result<GroupSender, CryptoError> {
        let what = "group sender";
        let p: GroupSenderPickle = postcard::from_bytes(b).map_err(|_| CryptoError::Pickle {
            what,
            reason: "malformed bytes".into(),
        })?;
        if p.version != GROUP_FORMAT_VERSION {
            return Err(CryptoError::UnsupportedVersion {
                what: "group sender pickle",
                got: p.version,
                supported: GROUP_FORMAT_VERSION,
            });
        }
        check_group_id(&p.group_id)?;
        let gp = GroupSessionPickle::from_encrypted(
            bytes_as_str(what, p.megolm.as_bytes())?,
            &pickle_key(),
        )
        .map_err(|e| CryptoError::Pickle {
            what,
            reason: e.to_string(),
        })?;
        Ok(GroupSender {
            group_id: p.group_id.clone(),
            session: GroupSession::from_pickle(gp),
            created_at_ms: p.created_at_ms,
        })
    }
}

impl fmt::Debug for GroupSender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GroupSender")
            .field("group_id_len", &self.group_id.len())
            .field("message_count", &self.message_count())
            .field("state", &"[redacted]")
            .finish()
    }
}

/// A decrypted group message. Its `Debug` output omits the plaintext.
#[derive(PartialEq, Eq)]
pub struct GroupPlaintext {
    /// The plaintext (zeroized on drop).
    pub plaintext: Zeroizing<Vec<u8>>,
    /// The Megolm message index within its session.
    pub message_index: u32,
}

impl fmt::Debug for GroupPlaintext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GroupPlaintext")
            .field("len", &self.plaintext.len())
            .field("plaintext", &"[redacted]")
            .field("message_index", &self.message_index)
            .finish()
    }
}

/// One member's inbound Megolm session for another member's sender key.
pub struct GroupReceiver {
    group_id: Vec<u8>,
    sender: IdentityKey,
    session_id: [u8; KEY_LEN],
    session: InboundGroupSession,
    seen: BTreeSet<u32>,
    /// Indices below this were forgotten from `seen` and are refused.
    floor: u32,
}

#[derive(Serialize, Deserialize, Zeroize, ZeroizeOnDrop)]
struct GroupReceiverPickle {
    version: u8,
    group_id: Vec<u8>,
    #[zeroize(skip)]
    sender: IdentityKey,
    session_id: [u8; KEY_LEN],
    seen: Vec<u32>,
    floor: u32,
    megolm: String,
}

impl GroupReceiver {
    /// Accept a key share from `sender`. The caller must have received `share` over the
    /// pairwise session authenticated as `sender`'s identity: that is what binds this Megolm
    /// session to the sender.
    pub fn from_key_share(sender: IdentityKey, share: &[u8]) -> Result<GroupReceiver, CryptoError> {
        let bad = CryptoError::InvalidGroupKey;
        let (&v, rest) = share.split_first().ok_or(bad.clone())?;
        if v != GROUP_FORMAT_VERSION {
            return Err(CryptoError::UnsupportedVersion {
                what: "group key share",
                got: v,
                supported: GROUP_FORMAT_VERSION,
            });
        }
        let (&len, rest) = rest.split_first().ok_or(bad.clone())?;
        let group_id = rest.get(..usize::from(len)).ok_or(bad.clone())?;
        check_group_id(group_id)?;
        let key_bytes = rest.get(usize::from(len)..).ok_or(bad.clone())?;
        let key = SessionKey::from_bytes(key_bytes).map_err(|_| bad)?;
        let session = InboundGroupSession::new(&key, SessionConfig::version_1());
        Ok(GroupReceiver {
            group_id: group_id.to_vec(),
            sender,
            session_id: session_id_bytes(&session.session_id()),
            session,
            seen: BTreeSet::new(),
            floor: 0,
        })
    }

    /// The group.
    pub fn group_id(&self) -> &[u8] {
        &self.group_id
    }

    /// The member who sends with this session.
    pub fn sender(&self) -> IdentityKey {
        self.sender
    }

    /// The Megolm session id this receiver decrypts.
    pub fn session_id(&self) -> [u8; KEY_LEN] {
        self.session_id
    }

    /// Decrypt a group message. Errors: a message for another session
    /// ([`CryptoError::GroupSessionMismatch`]) — e.g. sent after this member was removed —,
    /// a tampered or undecryptable one ([`CryptoError::GroupDecrypt`]), or a replay
    /// ([`CryptoError::Duplicate`]).
    pub fn decrypt(&mut self, message: &[u8]) -> Result<GroupPlaintext, CryptoError> {
        let (sid, body) = split_group_message(message)?;
        if sid != self.session_id {
            return Err(CryptoError::GroupSessionMismatch);
        }
        let m =
            MegolmMessage::from_bytes(body).map_err(|_| CryptoError::MalformedMessage("group"))?;
        // Only the canonical encoding is accepted (see the same check for Olm messages).
        if m.to_bytes() != body {
            return Err(CryptoError::MalformedMessage(
                "group (non-canonical encoding)",
            ));
        }
        let index = m.message_index();
        if index < self.floor || self.seen.contains(&index) {
            return Err(CryptoError::Duplicate {
                message_id: format!("group message index {index}"),
            });
        }
        let d = self
            .session
            .decrypt(&m)
            .map_err(|e| CryptoError::GroupDecrypt(e.to_string()))?;
        self.seen.insert(index);
        if self.seen.len() > GROUP_SEEN_INDEX_CAPACITY {
            if let Some(lowest) = self.seen.pop_first() {
                self.floor = lowest.saturating_add(1);
            }
        }
        Ok(GroupPlaintext {
            plaintext: Zeroizing::new(d.plaintext),
            message_index: d.message_index,
        })
    }

    /// Persistable form (secret; store encrypted at rest).
    pub fn to_pickle_bytes(&self) -> Zeroizing<Vec<u8>> {
        let p = GroupReceiverPickle {
            version: GROUP_FORMAT_VERSION,
            group_id: self.group_id.clone(),
            sender: self.sender,
            session_id: self.session_id,
            seen: self.seen.iter().copied().collect(),
            floor: self.floor,
            megolm: self.session.pickle().encrypt(&pickle_key()),
        };
        let cap = p.megolm.len() + p.group_id.len() + 5 * p.seen.len() + 96;
        Zeroizing::new(postcard::to_extend(&p, Vec::with_capacity(cap)).unwrap_or_default())
    }

    /// Restore from [`GroupReceiver::to_pickle_bytes`].
    pub fn from_pickle_bytes(b: &[u8]) -> Result<GroupReceiver, CryptoError> {
        let what = "group receiver";
        let p: GroupReceiverPickle = postcard::from_bytes(b).map_err(|_| CryptoError::Pickle {
            what,
            reason: "malformed bytes".into(),
        })?;
        if p.version != GROUP_FORMAT_VERSION {
            return Err(CryptoError::UnsupportedVersion {
                what: "group receiver pickle",
                got: p.version,
                supported: GROUP_FORMAT_VERSION,
            });
        }
        check_group_id(&p.group_id)?;
        let ip = InboundGroupSessionPickle::from_encrypted(
            bytes_as_str(what, p.megolm.as_bytes())?,
            &pickle_key(),
        )
        .map_err(|e| CryptoError::Pickle {
            what,
            reason: e.to_string(),
        })?;
        let mut seen: BTreeSet<u32> = p.seen.iter().copied().collect();
        let mut floor = p.floor;
        while seen.len() > GROUP_SEEN_INDEX_CAPACITY {
            if let Some(lowest) = seen.pop_first() {
                floor = floor.max(lowest.saturating_add(1));
            }
        }
        Ok(GroupReceiver {
            group_id: p.group_id.clone(),
            sender: p.sender,
            session_id: p.session_id,
            session: InboundGroupSession::from_pickle(ip),
            seen,
            floor,
        })
    }
}

impl fmt::Debug for GroupReceiver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GroupReceiver")
            .field("sender", &self.sender)
            .field("seen", &self.seen.len())
            .field("state", &"[redacted]")
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Identity;

    #[test]
    fn rotation_policy() {
        assert!(!group_rotation_due(0, 0));
        assert!(!group_rotation_due(
            GROUP_ROTATION_MAX_MESSAGES - 1,
            GROUP_ROTATION_MAX_AGE_MS - 1
        ));
        assert!(group_rotation_due(GROUP_ROTATION_MAX_MESSAGES, 0));
        assert!(group_rotation_due(0, GROUP_ROTATION_MAX_AGE_MS));
        let mut s = GroupSender::new(b"g", 1000).unwrap();
        assert!(!s.needs_rotation(1000));
        assert!(s.needs_rotation(1000 + GROUP_ROTATION_MAX_AGE_MS));
        for _ in 0..GROUP_ROTATION_MAX_MESSAGES {
            s.encrypt(b"x");
        }
        assert!(s.needs_rotation(1001));
        let old = s.session_id();
        s.rotate(2000);
        assert_ne!(old, s.session_id());
        assert!(!s.needs_rotation(2000));
        assert_eq!(s.message_count(), 0);
    }

    #[test]
    fn share_decrypt_replay_and_pickles() {
        let alice = Identity::generate().public();
        let mut s = GroupSender::new(b"family", 0).unwrap();
        let m0 = s.encrypt(b"zero");
        let mut r = GroupReceiver::from_key_share(alice, &s.key_share()).unwrap();
        assert_eq!(r.group_id(), b"family");
        assert_eq!(r.sender(), alice);
        assert_eq!(group_message_session_id(&m0).unwrap(), r.session_id());
        // the share is taken at index 1: the message before it is unreadable
        assert!(matches!(r.decrypt(&m0), Err(CryptoError::GroupDecrypt(_))));
        let m1 = s.encrypt(b"one");
        let m2 = s.encrypt(b"two");
        assert_eq!(&r.decrypt(&m2).unwrap().plaintext[..], b"two");
        let mut r = GroupReceiver::from_pickle_bytes(&r.to_pickle_bytes()).unwrap();
        let d1 = r.decrypt(&m1).unwrap();
        assert_eq!((&d1.plaintext[..], d1.message_index), (&b"one"[..], 1));
        assert!(matches!(r.decrypt(&m1), Err(CryptoError::Duplicate { .. })));
        let mut s = GroupSender::from_pickle_bytes(&s.to_pickle_bytes()).unwrap();
        let m3 = s.encrypt(b"three");
        assert_eq!(&r.decrypt(&m3).unwrap().plaintext[..], b"three");
        // tampering
        let mut t = s.encrypt(b"four");
        let n = t.len() - 70;
        t[n] ^= 1;
        assert!(matches!(r.decrypt(&t), Err(CryptoError::GroupDecrypt(_))));
        assert!(GroupReceiver::from_key_share(alice, &[1, 3, b'a']).is_err());
        assert!(GroupSender::new(&[0; MAX_GROUP_ID_LEN + 1], 0).is_err());
        assert!(format!("{s:?}").contains("[redacted]"));
        let d = r.decrypt(&s.encrypt(b"very private words")).unwrap();
        assert!(!format!("{d:?}").contains("private"));
    }
}
