//! Sealed envelopes: one-way Noise `X` (`Noise_X_25519_ChaChaPoly_BLAKE2s`) from the
//! sender device's static X25519 envelope key to the recipient device's, padded to a
//! fixed size bucket.
//!
//! Envelope bytes (exactly one of [`ENVELOPE_BUCKETS`] long):
//! `ENVELOPE_VERSION (1) ‖ e (32) ‖ ENC(s) (32 + 16) ‖ ENC(sealed content, padded) (… + 16)`.
//! Sealed content: `SEALED_CONTENT_VERSION (1) ‖ sender identity (32) ‖ sender device
//! curve25519 (32) ‖ sender device ed25519 (32) ‖ identity signature (64) ‖ device signature
//! (64) ‖ message id (16) ‖ timestamp ms (u64 BE) ‖ kind (1) ‖ payload length (u32 BE) ‖
//! payload ‖ zero padding`. The sender's envelope key is not repeated: it is the Noise static
//! key `s`, and the device-key signatures are checked over it, which is what authenticates
//! the sender.

use std::fmt;
use std::sync::OnceLock;

use serde::{Deserialize, Serialize};
use snow::params::NoiseParams;
use zeroize::Zeroizing;

use crate::identity::{Sig64, KEY_LEN, SIG_LEN};
use crate::{CryptoError, Device, IdentityKey, SignedDeviceKeys};

/// The Noise protocol every envelope uses.
pub const NOISE_PROTOCOL: &str = "Noise_X_25519_ChaChaPoly_BLAKE2s";
/// The Noise prologue: binds the protocol version into the handshake hash.
pub const NOISE_PROLOGUE: &[u8] = b"instaconnect-mesh/envelope/v1";
/// First (clear) byte of every envelope.
pub const ENVELOPE_VERSION: u8 = 1;
/// First byte of the sealed content.
pub const SEALED_CONTENT_VERSION: u8 = 1;
/// Padding bucket: 1 KiB.
pub const BUCKET_1K: usize = 1024;
/// Padding bucket: 4 KiB.
pub const BUCKET_4K: usize = 4 * 1024;
/// Padding bucket: 16 KiB.
pub const BUCKET_16K: usize = 16 * 1024;
/// Padding bucket: 64 KiB (its Noise message is exactly the 65,535-byte Noise maximum).
pub const BUCKET_64K: usize = 64 * 1024;
/// Every envelope is exactly one of these sizes.
pub const ENVELOPE_BUCKETS: [usize; 4] = [BUCKET_1K, BUCKET_4K, BUCKET_16K, BUCKET_64K];
/// Noise's hard limit for one message.
pub const MAX_NOISE_MESSAGE: usize = 65_535;
/// Bytes Noise X adds to the payload: `e` (32), encrypted `s` (32 + 16), payload tag (16).
pub const NOISE_X_OVERHEAD: usize = KEY_LEN + KEY_LEN + 16 + 16;
/// Fixed bytes of sealed content before the payload.
pub const SEALED_HEADER_LEN: usize = 1 + 3 * KEY_LEN + 2 * SIG_LEN + 16 + 8 + 1 + 4;
/// Largest payload one envelope carries (65,185 bytes). Larger content (attachments) must
/// be split by the caller; [`seal_envelope`] returns [`CryptoError::TooLarge`].
pub const MAX_ENVELOPE_PAYLOAD: usize = BUCKET_64K - 1 - NOISE_X_OVERHEAD - SEALED_HEADER_LEN;

/// A 16-byte message id, chosen by the sender (from the injected RNG).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, Default)]
pub struct MessageId(pub [u8; 16]);

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl fmt::Debug for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MessageId({self})")
    }
}

/// What the payload of an envelope is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[repr(u8)]
pub enum PayloadKind {
    /// A pairwise Olm ratchet message ([`crate::Session`]).
    Pairwise = 1,
    /// A group Megolm message ([`crate::GroupSender`]).
    Group = 2,
    /// A sealed attachment chunk travelling through a relay ([`crate::relay_chunk_payload`]):
    /// already end-to-end encrypted under the attachment's key and named by its hash in the
    /// manifest, so it needs no ratchet. The message id is the attachment's.
    Chunk = 3,
}

impl PayloadKind {
    fn from_u8(b: u8) -> Option<PayloadKind> {
        match b {
            1 => Some(PayloadKind::Pairwise),
            2 => Some(PayloadKind::Group),
            3 => Some(PayloadKind::Chunk),
            _ => None,
        }
    }
}

/// What the sender puts in an envelope.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EnvelopeContent {
    /// Message id (used for duplicate detection).
    pub message_id: MessageId,
    /// Sender's timestamp, unix millis.
    pub timestamp_ms: u64,
    /// What `payload` is.
    pub kind: PayloadKind,
    /// The ratchet message (already end-to-end encrypted).
    pub payload: Vec<u8>,
}

/// An opened envelope, with its authenticated sender.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpenedEnvelope {
    /// The sender's device keys, verified against `sender.identity`, whose `envelope` key is
    /// the Noise static key the envelope was sealed with.
    pub sender: SignedDeviceKeys,
    /// Message id.
    pub message_id: MessageId,
    /// Sender's timestamp, unix millis.
    pub timestamp_ms: u64,
    /// What `payload` is.
    pub kind: PayloadKind,
    /// The ratchet message.
    pub payload: Vec<u8>,
}

fn params() -> Result<NoiseParams, CryptoError> {
    static P: OnceLock<Result<NoiseParams, String>> = OnceLock::new();
    P.get_or_init(|| {
        NOISE_PROTOCOL
            .parse::<NoiseParams>()
            .map_err(|e| e.to_string())
    })
    .clone()
    .map_err(CryptoError::Seal)
}

/// The envelope size for a payload of `payload_len` bytes, or `None` if it does not fit.
pub fn bucket_for(payload_len: usize) -> Option<usize> {
    let needed = 1 + NOISE_X_OVERHEAD + SEALED_HEADER_LEN + payload_len;
    ENVELOPE_BUCKETS.iter().copied().find(|&b| b >= needed)
}

/// Device keys whose signatures were checked, remembered (bounded, oldest forgotten first) so
/// that sealing to and opening from the same devices again skips two Ed25519 verifications.
/// An entry matches only keys identical in every byte, signatures included.
#[derive(Default)]
pub struct VerifiedKeys {
    order: std::collections::VecDeque<[u8; 32]>,
    set: std::collections::HashSet<[u8; 32]>,
}

/// Device keys a [`VerifiedKeys`] remembers.
pub const VERIFIED_KEYS_CAPACITY: usize = 4_096;

impl VerifiedKeys {
    /// An empty cache.
    pub fn new() -> VerifiedKeys {
        VerifiedKeys::default()
    }

    fn digest(keys: &SignedDeviceKeys) -> [u8; 32] {
        let mut h = blake3::Hasher::new();
        h.update(&keys.identity.to_bytes());
        h.update(&keys.curve25519);
        h.update(&keys.ed25519);
        h.update(&keys.envelope);
        h.update(&keys.identity_signature.0);
        h.update(&keys.device_signature.0);
        *h.finalize().as_bytes()
    }

    /// Verifies `keys` against the identity they name, unless these exact keys were verified.
    pub fn check(&mut self, keys: &SignedDeviceKeys) -> Result<(), CryptoError> {
        let d = Self::digest(keys);
        if self.set.contains(&d) {
            return Ok(());
        }
        keys.verify(&keys.identity)?;
        if self.order.len() >= VERIFIED_KEYS_CAPACITY {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
        self.order.push_back(d);
        self.set.insert(d);
        Ok(())
    }
}

/// Seal `content` from this device to `recipient`'s envelope key. The recipient's device
/// keys are verified against the identity they name (the caller checks that identity is the
/// contact it means). `sender_keys` must be this device's own signed keys.
pub fn seal_envelope(
    sender: &Device,
    sender_keys: &SignedDeviceKeys,
    recipient: &SignedDeviceKeys,
    content: &EnvelopeContent,
) -> Result<Vec<u8>, CryptoError> {
    seal_envelope_cached(
        &mut VerifiedKeys::new(),
        sender,
        sender_keys,
        recipient,
        content,
    )
}

/// [`seal_envelope`], skipping the verification of recipient keys `cache` has verified.
pub fn seal_envelope_cached(
    cache: &mut VerifiedKeys,
    sender: &Device,
    sender_keys: &SignedDeviceKeys,
    recipient: &SignedDeviceKeys,
    content: &EnvelopeContent,
) -> Result<Vec<u8>, CryptoError> {
    let len = content.payload.len();
    let bucket = bucket_for(len).ok_or(CryptoError::TooLarge {
        what: "envelope payload",
        len,
        max: MAX_ENVELOPE_PAYLOAD,
    })?;
    if sender_keys.envelope != sender.envelope_key()
        || sender_keys.curve25519 != sender.curve25519_key()
    {
        return Err(CryptoError::Seal(
            "sender keys do not belong to this device".into(),
        ));
    }
    cache.check(recipient)?;

    let noise_len = bucket - 1;
    let mut sealed = Zeroizing::new(Vec::with_capacity(noise_len - NOISE_X_OVERHEAD));
    sealed.push(SEALED_CONTENT_VERSION);
    sealed.extend_from_slice(&sender_keys.identity.to_bytes());
    sealed.extend_from_slice(&sender_keys.curve25519);
    sealed.extend_from_slice(&sender_keys.ed25519);
    sealed.extend_from_slice(&sender_keys.identity_signature.0);
    sealed.extend_from_slice(&sender_keys.device_signature.0);
    sealed.extend_from_slice(&content.message_id.0);
    sealed.extend_from_slice(&content.timestamp_ms.to_be_bytes());
    sealed.push(content.kind as u8);
    // len <= MAX_ENVELOPE_PAYLOAD < u32::MAX
    sealed.extend_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_be_bytes());
    sealed.extend_from_slice(&content.payload);
    sealed.resize(noise_len - NOISE_X_OVERHEAD, 0);

    let secret = sender.envelope_secret_bytes();
    let err = |e: snow::Error| CryptoError::Seal(e.to_string());
    let mut hs = snow::Builder::new(params()?)
        .local_private_key(&secret[..])
        .and_then(|b| b.remote_public_key(&recipient.envelope))
        .and_then(|b| b.prologue(NOISE_PROLOGUE))
        .and_then(|b| b.build_initiator())
        .map_err(err)?;
    let mut out = vec![0u8; bucket];
    out[0] = ENVELOPE_VERSION;
    let n = hs.write_message(&sealed, &mut out[1..]).map_err(err)?;
    if n != noise_len {
        return Err(CryptoError::Seal("unexpected Noise message length".into()));
    }
    Ok(out)
}

/// Open an envelope addressed to this device and authenticate its sender: the Noise static
/// key the sender used must be the envelope key in device keys signed by the identity the
/// envelope names. Every failure is a typed error.
pub fn open_envelope(recipient: &Device, envelope: &[u8]) -> Result<OpenedEnvelope, CryptoError> {
    open_envelope_cached(&mut VerifiedKeys::new(), recipient, envelope)
}

/// [`open_envelope`], skipping the verification of sender keys `cache` has verified.
pub fn open_envelope_cached(
    cache: &mut VerifiedKeys,
    recipient: &Device,
    envelope: &[u8],
) -> Result<OpenedEnvelope, CryptoError> {
    if !ENVELOPE_BUCKETS.contains(&envelope.len()) {
        return Err(CryptoError::EnvelopeMalformed(
            "size is not a padding bucket",
        ));
    }
    let (&version, noise_msg) = envelope.split_first().ok_or(CryptoError::EnvelopeOpen)?;
    if version != ENVELOPE_VERSION {
        return Err(CryptoError::UnsupportedVersion {
            what: "envelope",
            got: version,
            supported: ENVELOPE_VERSION,
        });
    }
    let secret = recipient.envelope_secret_bytes();
    let mut hs = snow::Builder::new(params()?)
        .local_private_key(&secret[..])
        .and_then(|b| b.prologue(NOISE_PROLOGUE))
        .and_then(|b| b.build_responder())
        .map_err(|e| CryptoError::Seal(e.to_string()))?;
    let mut buf = Zeroizing::new(vec![0u8; noise_msg.len()]);
    let n = hs
        .read_message(noise_msg, &mut buf)
        .map_err(|_| CryptoError::EnvelopeOpen)?;
    let sender_static: [u8; KEY_LEN] = hs
        .get_remote_static()
        .and_then(|s| s.try_into().ok())
        .ok_or(CryptoError::EnvelopeOpen)?;
    let plain = buf.get(..n).ok_or(CryptoError::EnvelopeOpen)?;
    parse_sealed(plain, sender_static, cache)
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], CryptoError> {
        if self.0.len() < n {
            return Err(CryptoError::EnvelopeMalformed("truncated content"));
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], CryptoError> {
        self.take(N)?
            .try_into()
            .map_err(|_| CryptoError::EnvelopeMalformed("truncated content"))
    }
}

fn parse_sealed(
    plain: &[u8],
    sender_static: [u8; KEY_LEN],
    cache: &mut VerifiedKeys,
) -> Result<OpenedEnvelope, CryptoError> {
    let mut r = Reader(plain);
    let [v] = r.array::<1>()?;
    if v != SEALED_CONTENT_VERSION {
        return Err(CryptoError::UnsupportedVersion {
            what: "sealed content",
            got: v,
            supported: SEALED_CONTENT_VERSION,
        });
    }
    let identity =
        IdentityKey::from_bytes(&r.array::<KEY_LEN>()?).map_err(|_| CryptoError::SenderMismatch)?;
    let sender = SignedDeviceKeys {
        identity,
        curve25519: r.array()?,
        ed25519: r.array()?,
        envelope: sender_static,
        identity_signature: Sig64(r.array()?),
        device_signature: Sig64(r.array()?),
    };
    cache
        .check(&sender)
        .map_err(|_| CryptoError::SenderMismatch)?;
    let message_id = MessageId(r.array()?);
    let timestamp_ms = u64::from_be_bytes(r.array()?);
    let [kind] = r.array::<1>()?;
    let kind =
        PayloadKind::from_u8(kind).ok_or(CryptoError::EnvelopeMalformed("unknown payload kind"))?;
    let len = usize::try_from(u32::from_be_bytes(r.array()?))
        .map_err(|_| CryptoError::EnvelopeMalformed("payload length"))?;
    let payload = r.take(len)?.to_vec();
    if r.0.iter().any(|&b| b != 0) {
        return Err(CryptoError::EnvelopeMalformed("non-zero padding"));
    }
    Ok(OpenedEnvelope {
        sender,
        message_id,
        timestamp_ms,
        kind,
        payload,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Identity;

    struct Party {
        id: Identity,
        dev: Device,
        keys: SignedDeviceKeys,
    }

    fn party() -> Party {
        let id = Identity::generate();
        let dev = Device::generate();
        let keys = dev.signed_keys(&id);
        Party { id, dev, keys }
    }

    fn content(len: usize) -> EnvelopeContent {
        EnvelopeContent {
            message_id: MessageId([7; 16]),
            timestamp_ms: 1_700_000_000_123,
            kind: PayloadKind::Pairwise,
            payload: (0..len).map(|i| (i % 251) as u8).collect(),
        }
    }

    #[test]
    fn the_verified_keys_cache_never_accepts_keys_it_did_not_verify() {
        let (a, b) = (party(), party());
        let mut cache = VerifiedKeys::new();
        let env = seal_envelope_cached(&mut cache, &a.dev, &a.keys, &b.keys, &content(10)).unwrap();
        let mut at_b = VerifiedKeys::new();
        assert_eq!(
            open_envelope_cached(&mut at_b, &b.dev, &env)
                .unwrap()
                .payload,
            content(10).payload
        );
        // Cached: the same keys pass again; altered keys are verified afresh and fail.
        seal_envelope_cached(&mut cache, &a.dev, &a.keys, &b.keys, &content(10)).unwrap();
        let mut forged = b.keys.clone();
        forged.envelope = a.keys.envelope;
        assert!(seal_envelope_cached(&mut cache, &a.dev, &a.keys, &forged, &content(10)).is_err());
        // Bounded.
        for _ in 0..3 {
            cache.check(&party().keys).unwrap();
        }
        assert!(cache.set.len() <= VERIFIED_KEYS_CAPACITY && cache.set.len() == cache.order.len());
        let _ = a.id;
    }

    #[test]
    fn constants_are_consistent() {
        assert_eq!(SEALED_HEADER_LEN, 254);
        assert_eq!(NOISE_X_OVERHEAD, 96);
        assert_eq!(MAX_ENVELOPE_PAYLOAD, 65_185);
        assert_eq!(BUCKET_64K - 1, MAX_NOISE_MESSAGE);
        assert_eq!(params().unwrap().name, NOISE_PROTOCOL);
        assert_eq!(bucket_for(0), Some(BUCKET_1K));
        assert_eq!(bucket_for(BUCKET_1K - 351), Some(BUCKET_1K));
        assert_eq!(bucket_for(BUCKET_1K - 350), Some(BUCKET_4K));
        assert_eq!(bucket_for(MAX_ENVELOPE_PAYLOAD), Some(BUCKET_64K));
        assert_eq!(bucket_for(MAX_ENVELOPE_PAYLOAD + 1), None);
    }

    #[test]
    fn seal_open_roundtrip_every_bucket() {
        let a = party();
        let b = party();
        for len in [
            0,
            1,
            673,
            674,
            1024,
            4000,
            16000,
            40_000,
            MAX_ENVELOPE_PAYLOAD,
        ] {
            let c = content(len);
            let env = seal_envelope(&a.dev, &a.keys, &b.keys, &c).unwrap();
            assert_eq!(Some(env.len()), bucket_for(len));
            let o = open_envelope(&b.dev, &env).unwrap();
            assert_eq!(o.sender, a.keys);
            assert_eq!(o.sender.identity, a.id.public());
            assert_eq!(
                (o.message_id, o.timestamp_ms, o.kind),
                (c.message_id, c.timestamp_ms, c.kind)
            );
            assert_eq!(o.payload, c.payload);
        }
        assert_eq!(
            seal_envelope(&a.dev, &a.keys, &b.keys, &content(MAX_ENVELOPE_PAYLOAD + 1)),
            Err(CryptoError::TooLarge {
                what: "envelope payload",
                len: MAX_ENVELOPE_PAYLOAD + 1,
                max: MAX_ENVELOPE_PAYLOAD
            })
        );
    }

    #[test]
    fn wrong_recipient_cannot_open() {
        let (a, b, c) = (party(), party(), party());
        let env = seal_envelope(&a.dev, &a.keys, &b.keys, &content(10)).unwrap();
        assert_eq!(open_envelope(&c.dev, &env), Err(CryptoError::EnvelopeOpen));
        assert!(matches!(
            open_envelope(&b.dev, &env[..1000]),
            Err(CryptoError::EnvelopeMalformed(_))
        ));
        let mut v2 = env.clone();
        v2[0] = 2;
        assert!(matches!(
            open_envelope(&b.dev, &v2),
            Err(CryptoError::UnsupportedVersion { .. })
        ));
    }

    #[test]
    fn sender_cannot_claim_another_identity() {
        // Mallory seals with her own envelope key but presents Alice's signed device keys.
        let (alice, bob, mallory) = (party(), party(), party());
        let mut claimed = alice.keys.clone();
        claimed.envelope = mallory.dev.envelope_key();
        claimed.curve25519 = mallory.dev.curve25519_key();
        let env = seal_envelope(&mallory.dev, &claimed, &bob.keys, &content(5)).unwrap();
        assert_eq!(
            open_envelope(&bob.dev, &env),
            Err(CryptoError::SenderMismatch)
        );
        // and she cannot seal with Alice's envelope key without its secret
        assert!(matches!(
            seal_envelope(&mallory.dev, &alice.keys, &bob.keys, &content(5)),
            Err(CryptoError::Seal(_))
        ));
        // forged recipient keys are refused at seal time
        let mut forged = bob.keys.clone();
        forged.envelope = mallory.dev.envelope_key();
        assert!(matches!(
            seal_envelope(&alice.dev, &alice.keys, &forged, &content(5)),
            Err(CryptoError::BadSignature(_))
        ));
    }

    #[test]
    fn envelope_hides_sender_and_plaintext() {
        let (a, b) = (party(), party());
        let c = content(300);
        let env = seal_envelope(&a.dev, &a.keys, &b.keys, &c).unwrap();
        let contains = |needle: &[u8]| env.windows(needle.len()).any(|w| w == needle);
        assert!(!contains(&a.id.public().to_bytes()));
        assert!(!contains(&a.keys.envelope));
        assert!(!contains(&a.keys.curve25519));
        assert!(!contains(&c.payload[..32]));
        assert!(!contains(&c.message_id.0));
        // two seals of the same content look unrelated (fresh ephemeral key each time)
        let env2 = seal_envelope(&a.dev, &a.keys, &b.keys, &c).unwrap();
        assert_ne!(env[1..33], env2[1..33]);
    }
}
