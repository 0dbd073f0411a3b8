//! Pairwise end-to-end sessions: vodozemac Olm (Double Ratchet), bound to account identities.

use std::fmt;

use serde::{Deserialize, Serialize};
use vodozemac::olm::{OlmMessage, PreKeyMessage, SessionConfig, SessionPickle};
use vodozemac::Curve25519PublicKey;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::identity::KEY_LEN;
use crate::pickle::{bytes_as_str, pickle_key};
use crate::{ContactCard, CryptoError, Device, IdentityKey, SignedDeviceKeys};

/// First byte of a ratchet message that can start a session (Olm pre-key message).
pub const RATCHET_PREKEY: u8 = 0;
/// First byte of a ratchet message on an established session (Olm normal message).
pub const RATCHET_NORMAL: u8 = 1;
/// How many skipped message keys one receiving chain keeps for out-of-order delivery
/// (vodozemac's bound, restated here so callers can rely on it).
pub const MAX_SKIPPED_MESSAGE_KEYS: usize = 40;
/// The largest forward gap within one chain vodozemac will ratchet across (its bound).
pub const MAX_MESSAGE_GAP: u64 = 2000;
/// Largest plaintext [`Session::encrypt`] accepts. Anything bigger would not fit in one
/// sealed envelope anyway (see [`crate::MAX_ENVELOPE_PAYLOAD`]).
pub const MAX_RATCHET_PLAINTEXT: usize = 64 * 1024;
const SESSION_PICKLE_VERSION: u8 = 1;

/// An Olm session with one device of one contact. Secrets are zeroized on drop.
pub struct Session {
    inner: vodozemac::olm::Session,
    peer_identity: IdentityKey,
    peer_device: [u8; KEY_LEN],
}

#[derive(Serialize, Deserialize, Zeroize, ZeroizeOnDrop)]
struct SessionPickleV1 {
    version: u8,
    #[zeroize(skip)]
    peer_identity: IdentityKey,
    peer_device: [u8; KEY_LEN],
    olm: String,
}

fn config() -> SessionConfig {
    SessionConfig::version_1()
}

fn decode(message: &[u8]) -> Result<OlmMessage, CryptoError> {
    let (&kind, body) = message
        .split_first()
        .ok_or(CryptoError::MalformedMessage("ratchet"))?;
    let t = match kind {
        RATCHET_PREKEY => 0,
        RATCHET_NORMAL => 1,
        _ => return Err(CryptoError::MalformedMessage("ratchet")),
    };
    let m =
        OlmMessage::from_parts(t, body).map_err(|_| CryptoError::MalformedMessage("ratchet"))?;
    // vodozemac parses protobuf leniently (unknown fields are skipped) and MACs the
    // re-encoding, so altered bytes can decode to the same message. Accept only the one
    // canonical encoding: every bit of a ratchet message is then significant.
    if m.to_parts().1 != body {
        return Err(CryptoError::MalformedMessage(
            "ratchet (non-canonical encoding)",
        ));
    }
    // X25519 ignores the top bit of a public key and vodozemac compares keys modulo it, so a
    // flipped top bit would go unnoticed. Keys we generate never set it: refuse it.
    let keys_canonical = match &m {
        OlmMessage::Normal(n) => canonical_key(&n.ratchet_key()),
        OlmMessage::PreKey(p) => {
            canonical_key(&p.one_time_key())
                && canonical_key(&p.base_key())
                && canonical_key(&p.identity_key())
                && canonical_key(&p.message().ratchet_key())
        }
    };
    if !keys_canonical {
        return Err(CryptoError::MalformedMessage("ratchet (non-canonical key)"));
    }
    Ok(m)
}

fn canonical_key(k: &Curve25519PublicKey) -> bool {
    k.as_bytes()[KEY_LEN - 1] & 0x80 == 0
}

/// Byte-exact comparison of session keys (vodozemac's `==` ignores the X25519 top bit).
fn same_session(a: &vodozemac::olm::SessionKeys, b: &vodozemac::olm::SessionKeys) -> bool {
    a.identity_key.to_bytes() == b.identity_key.to_bytes()
        && a.base_key.to_bytes() == b.base_key.to_bytes()
        && a.one_time_key.to_bytes() == b.one_time_key.to_bytes()
}

fn encode(m: &OlmMessage) -> Vec<u8> {
    let (t, body) = m.to_parts();
    let mut out = Vec::with_capacity(1 + body.len());
    out.push(if t == 0 {
        RATCHET_PREKEY
    } else {
        RATCHET_NORMAL
    });
    out.extend_from_slice(&body);
    out
}

impl Session {
    /// Start a session with the device on a contact card (verified here at `now_ms`).
    pub fn outbound(
        device: &Device,
        card: &ContactCard,
        now_ms: u64,
    ) -> Result<Session, CryptoError> {
        card.verify(now_ms)?;
        let inner = device
            .account
            .create_outbound_session(
                config(),
                Curve25519PublicKey::from_bytes(card.device.curve25519),
                Curve25519PublicKey::from_bytes(card.session_key),
            )
            .map_err(|e| CryptoError::SessionCreation(e.to_string()))?;
        Ok(Session {
            inner,
            peer_identity: card.identity(),
            peer_device: card.device.curve25519,
        })
    }

    /// Accept a session from a pre-key ratchet message sent by `sender` (whose keys are
    /// verified here). Returns the session and the first plaintext. Consumes a one-time key
    /// if one was used, so persist `device` afterwards.
    pub fn inbound(
        device: &mut Device,
        sender: &SignedDeviceKeys,
        message: &[u8],
    ) -> Result<(Session, Zeroizing<Vec<u8>>), CryptoError> {
        sender.verify(&sender.identity)?;
        let pre: PreKeyMessage = match decode(message)? {
            OlmMessage::PreKey(p) => p,
            OlmMessage::Normal(_) => {
                return Err(CryptoError::WrongMessageType {
                    expected: "pre-key",
                })
            }
        };
        if pre.identity_key().to_bytes() != sender.curve25519 {
            return Err(CryptoError::SessionCreation(
                "the pre-key message's identity key is not the sender's device key".into(),
            ));
        }
        let res = device
            .account
            .create_inbound_session(
                config(),
                Curve25519PublicKey::from_bytes(sender.curve25519),
                &pre,
            )
            .map_err(|e| CryptoError::SessionCreation(e.to_string()))?;
        Ok((
            Session {
                inner: res.session,
                peer_identity: sender.identity,
                peer_device: sender.curve25519,
            },
            Zeroizing::new(res.plaintext),
        ))
    }

    /// Whether `message` is a pre-key message (one that can start a session).
    pub fn is_prekey_message(message: &[u8]) -> bool {
        message.first() == Some(&RATCHET_PREKEY)
    }

    /// Whether `message` is a pre-key message that belongs to this very session (so it
    /// should be decrypted here rather than starting a new session).
    pub fn matches_prekey(&self, message: &[u8]) -> bool {
        matches!(decode(message), Ok(OlmMessage::PreKey(p))
            if same_session(&p.session_keys(), &self.inner.session_keys()))
    }

    /// Encrypt `plaintext`. Output: `type (0 pre-key | 1 normal) ‖ Olm message bytes`.
    pub fn encrypt(&mut self, plaintext: &[u8]) -> Result<Vec<u8>, CryptoError> {
        if plaintext.len() > MAX_RATCHET_PLAINTEXT {
            return Err(CryptoError::TooLarge {
                what: "ratchet plaintext",
                len: plaintext.len(),
                max: MAX_RATCHET_PLAINTEXT,
            });
        }
        let m = self
            .inner
            .encrypt(plaintext)
            .map_err(|e| CryptoError::SessionEncrypt(e.to_string()))?;
        Ok(encode(&m))
    }

    /// Decrypt a ratchet message. Out-of-order messages decrypt (up to
    /// [`MAX_SKIPPED_MESSAGE_KEYS`] skipped per chain); a message that was already decrypted,
    /// or that was altered, fails with a typed error and leaves the session unchanged.
    pub fn decrypt(&mut self, message: &[u8]) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        let m = decode(message)?;
        // A pre-key message's outer keys are not covered by the ratchet MAC: make sure they
        // name this session, so an altered or foreign pre-key message is refused.
        if let OlmMessage::PreKey(p) = &m {
            if !same_session(&p.session_keys(), &self.inner.session_keys()) {
                return Err(CryptoError::SessionDecrypt(
                    "pre-key message for another session".into(),
                ));
            }
        }
        self.inner
            .decrypt(&m)
            .map(Zeroizing::new)
            .map_err(|e| CryptoError::SessionDecrypt(e.to_string()))
    }

    /// Decrypt after checking the message came from this session's peer device (e.g. the
    /// sender authenticated by a sealed envelope).
    pub fn decrypt_from(
        &mut self,
        sender: &SignedDeviceKeys,
        message: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        if sender.identity != self.peer_identity || sender.curve25519 != self.peer_device {
            return Err(CryptoError::SenderMismatch);
        }
        self.decrypt(message)
    }

    /// The peer's account identity.
    pub fn peer_identity(&self) -> IdentityKey {
        self.peer_identity
    }

    /// The peer device's Olm Curve25519 key.
    pub fn peer_device_key(&self) -> [u8; KEY_LEN] {
        self.peer_device
    }

    /// vodozemac's globally unique session id (base64).
    pub fn session_id(&self) -> String {
        self.inner.session_id()
    }

    /// Whether the peer has answered (after which messages are normal, not pre-key).
    pub fn has_received_message(&self) -> bool {
        self.inner.has_received_message()
    }

    /// Persistable form: postcard of `{ version = 1, peer_identity, peer_device, olm:
    /// vodozemac encrypted SessionPickle }`. Secret: store it encrypted at rest.
    pub fn to_pickle_bytes(&self) -> Zeroizing<Vec<u8>> {
        let p = SessionPickleV1 {
            version: SESSION_PICKLE_VERSION,
            peer_identity: self.peer_identity,
            peer_device: self.peer_device,
            olm: self.inner.pickle().encrypt(&pickle_key()),
        };
        let cap = p.olm.len() + 2 * KEY_LEN + 16;
        Zeroizing::new(postcard::to_extend(&p, Vec::with_capacity(cap)).unwrap_or_default())
    }

    /// Restore from [`Session::to_pickle_bytes`].
    pub fn from_pickle_bytes(b: &[u8]) -> Result<Session, CryptoError> {
        let p: SessionPickleV1 = postcard::from_bytes(b).map_err(|_| CryptoError::Pickle {
            what: "session",
            reason: "malformed bytes".into(),
        })?;
        if p.version != SESSION_PICKLE_VERSION {
            return Err(CryptoError::UnsupportedVersion {
                what: "session pickle",
                got: p.version,
                supported: SESSION_PICKLE_VERSION,
            });
        }
        let sp = SessionPickle::from_encrypted(
            bytes_as_str("session", p.olm.as_bytes())?,
            &pickle_key(),
        )
        .map_err(|e| CryptoError::Pickle {
            what: "session",
            reason: e.to_string(),
        })?;
        Ok(Session {
            inner: vodozemac::olm::Session::from_pickle(sp),
            peer_identity: p.peer_identity,
            peer_device: p.peer_device,
        })
    }
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("session_id", &self.inner.session_id())
            .field("peer_identity", &self.peer_identity)
            .field("state", &"[redacted]")
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{CardDisplay, Identity, DEFAULT_CARD_TTL_MS};

    const NOW: u64 = 1_700_000_000_000;

    struct Party {
        id: Identity,
        dev: Device,
    }

    fn party() -> Party {
        Party {
            id: Identity::generate(),
            dev: Device::generate(),
        }
    }

    fn pair() -> (Party, Party, Session, Session) {
        let a = party();
        let mut b = party();
        let card = b
            .dev
            .contact_card(&b.id, CardDisplay::default(), NOW, DEFAULT_CARD_TTL_MS)
            .unwrap();
        let mut sa = Session::outbound(&a.dev, &card, NOW).unwrap();
        let m = sa.encrypt(b"hi bob").unwrap();
        assert!(Session::is_prekey_message(&m));
        let (mut sb, pt) = Session::inbound(&mut b.dev, &a.dev.signed_keys(&a.id), &m).unwrap();
        assert_eq!(&pt[..], b"hi bob");
        let r = sb.encrypt(b"hi alice").unwrap();
        assert!(!Session::is_prekey_message(&r));
        assert_eq!(&sa.decrypt(&r).unwrap()[..], b"hi alice");
        (a, b, sa, sb)
    }

    #[test]
    fn conversation_and_peer_binding() {
        let (a, b, mut sa, mut sb) = pair();
        assert_eq!(sa.peer_identity(), b.id.public());
        assert_eq!(sb.peer_identity(), a.id.public());
        assert_eq!(sa.session_id(), sb.session_id());
        let m = sa.encrypt(b"second").unwrap();
        assert!(!Session::is_prekey_message(&m));
        let a_keys = a.dev.signed_keys(&a.id);
        assert_eq!(&sb.decrypt_from(&a_keys, &m).unwrap()[..], b"second");
        let m = sa.encrypt(b"third").unwrap();
        assert_eq!(
            sb.decrypt_from(&b.dev.signed_keys(&b.id), &m),
            Err(CryptoError::SenderMismatch)
        );
    }

    #[test]
    fn replayed_ratchet_message_fails() {
        let (_a, _b, mut sa, mut sb) = pair();
        let m = sa.encrypt(b"once").unwrap();
        assert_eq!(&sb.decrypt(&m).unwrap()[..], b"once");
        assert!(matches!(
            sb.decrypt(&m),
            Err(CryptoError::SessionDecrypt(_))
        ));
    }

    #[test]
    fn pickles_survive_restart_mid_conversation() {
        let (_a, _b, sa, sb) = pair();
        let mut sa = Session::from_pickle_bytes(&sa.to_pickle_bytes()).unwrap();
        let early = sa.encrypt(b"early").unwrap();
        let late = sa.encrypt(b"late").unwrap();
        let mut sb = Session::from_pickle_bytes(&sb.to_pickle_bytes()).unwrap();
        assert_eq!(&sb.decrypt(&late).unwrap()[..], b"late");
        let mut sb = Session::from_pickle_bytes(&sb.to_pickle_bytes()).unwrap();
        assert_eq!(&sb.decrypt(&early).unwrap()[..], b"early");
        let bytes = sb.to_pickle_bytes();
        let mut bad = bytes.to_vec();
        let n = bad.len() - 3;
        bad[n] ^= 4;
        assert!(matches!(
            Session::from_pickle_bytes(&bad),
            Err(CryptoError::Pickle { .. })
        ));
        assert!(format!("{sb:?}").contains("[redacted]"));
    }

    #[test]
    fn inbound_rejects_wrong_sender_and_normal_messages() {
        let a = party();
        let mut b = party();
        let mallory = party();
        let card = b
            .dev
            .contact_card(&b.id, CardDisplay::default(), NOW, DEFAULT_CARD_TTL_MS)
            .unwrap();
        let mut sa = Session::outbound(&a.dev, &card, NOW).unwrap();
        let m = sa.encrypt(b"hi").unwrap();
        // claimed sender's device key differs from the one in the pre-key message
        assert!(matches!(
            Session::inbound(&mut b.dev, &mallory.dev.signed_keys(&mallory.id), &m),
            Err(CryptoError::SessionCreation(_))
        ));
        // forged device keys (identity signature does not verify)
        let mut forged = a.dev.signed_keys(&a.id);
        forged.identity = mallory.id.public();
        assert!(matches!(
            Session::inbound(&mut b.dev, &forged, &m),
            Err(CryptoError::BadSignature(_))
        ));
        let (mut sb, _) = Session::inbound(&mut b.dev, &a.dev.signed_keys(&a.id), &m).unwrap();
        assert!(sb.matches_prekey(&m));
        // the outer keys of a pre-key message are checked against the session
        let other = Session::outbound(&a.dev, &card, NOW)
            .unwrap()
            .encrypt(b"x")
            .unwrap();
        assert!(!sb.matches_prekey(&other));
        assert!(matches!(
            sb.decrypt(&other),
            Err(CryptoError::SessionDecrypt(_))
        ));
        let n = sb.encrypt(b"normal").unwrap();
        assert_eq!(
            Session::inbound(&mut a.dev.clone_for_test(), &b.dev.signed_keys(&b.id), &n).err(),
            Some(CryptoError::WrongMessageType {
                expected: "pre-key"
            })
        );
        assert!(Session::outbound(&a.dev, &card, NOW + DEFAULT_CARD_TTL_MS + 1).is_err());
        assert!(matches!(
            sb.decrypt(&[]),
            Err(CryptoError::MalformedMessage(_))
        ));
        assert!(matches!(
            sb.decrypt(&[7, 1, 2]),
            Err(CryptoError::MalformedMessage(_))
        ));
    }

    impl Device {
        fn clone_for_test(&self) -> Device {
            Device::from_pickle_bytes(&self.to_pickle_bytes()).unwrap()
        }
    }
}
