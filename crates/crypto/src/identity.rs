//! Account identity (Ed25519), the device's Olm account, device keys bound to the identity,
//! per-key fingerprints and pairwise safety numbers.

use std::collections::{HashSet, VecDeque};
use std::fmt;
use std::sync::{LazyLock, Mutex};

use serde::{Deserialize, Serialize};
use vodozemac::olm::{Account, AccountPickle};
use vodozemac::{Curve25519PublicKey, Curve25519SecretKey, Ed25519PublicKey, Ed25519SecretKey};
use vodozemac::{Ed25519Signature, KeyError};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::pickle::{bytes_as_str, pickle_key};
use crate::CryptoError;

/// Length of an Ed25519 seed, public key, or X25519 key.
pub(crate) const KEY_LEN: usize = 32;
/// Length of an Ed25519 signature.
pub(crate) const SIG_LEN: usize = 64;

/// Number of BLAKE3 iterations behind a fingerprint (Signal uses 5200 SHA-512 rounds; the
/// iteration makes grinding for a colliding fingerprint proportionally more expensive).
pub const FINGERPRINT_ITERATIONS: u32 = 5200;
/// Version byte mixed into fingerprints and carried first in the safety-number QR payload.
pub const FINGERPRINT_VERSION: u8 = 0;
/// Number of 5-digit groups in a fingerprint and in a safety number.
pub const FINGERPRINT_GROUPS: usize = 12;
/// Domain-separation prefix of the message the identity signs over device keys.
pub const DEVICE_KEYS_CONTEXT: &[u8] = b"instaconnect/device-keys/v1\0";
const FINGERPRINT_CONTEXT: &[u8] = b"instaconnect/fingerprint/v1\0";
const DEVICE_PICKLE_VERSION: u8 = 1;

// ---------------------------------------------------------------------------------------------
// Identity

/// The account's long-term Ed25519 identity keypair. The secret is zeroized on drop.
pub struct Identity {
    secret: Ed25519SecretKey,
}

impl Identity {
    /// Generate a fresh identity from the OS RNG.
    pub fn generate() -> Identity {
        Identity {
            secret: Ed25519SecretKey::new(),
        }
    }

    /// Restore an identity from its 32-byte Ed25519 seed.
    pub fn from_secret_bytes(bytes: &[u8]) -> Result<Identity, CryptoError> {
        let seed: Zeroizing<[u8; KEY_LEN]> =
            Zeroizing::new(bytes.try_into().map_err(|_| CryptoError::InvalidLength {
                what: "identity secret",
                expected: KEY_LEN,
                got: bytes.len(),
            })?);
        Ok(Identity {
            secret: Ed25519SecretKey::from_slice(&seed),
        })
    }

    /// The 32-byte seed, for persistence. Zeroized when the returned value is dropped.
    pub fn secret_bytes(&self) -> Zeroizing<Vec<u8>> {
        let mut boxed = self.secret.to_bytes();
        let out = Zeroizing::new(boxed.to_vec());
        boxed.zeroize();
        out
    }

    /// The public identity key.
    pub fn public(&self) -> IdentityKey {
        IdentityKey(*self.secret.public_key().as_bytes())
    }

    /// Sign `msg` with the identity key.
    pub fn sign(&self, msg: &[u8]) -> [u8; SIG_LEN] {
        self.secret.sign(msg).to_bytes()
    }
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("public", &self.public())
            .field("secret", &"[redacted]")
            .finish()
    }
}

// ---------------------------------------------------------------------------------------------
// IdentityKey

/// A validated Ed25519 public identity key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(try_from = "[u8; 32]", into = "[u8; 32]")]
pub struct IdentityKey([u8; KEY_LEN]);

impl TryFrom<[u8; KEY_LEN]> for IdentityKey {
    type Error = CryptoError;
    fn try_from(b: [u8; KEY_LEN]) -> Result<Self, CryptoError> {
        IdentityKey::from_bytes(&b)
    }
}

impl From<IdentityKey> for [u8; KEY_LEN] {
    fn from(k: IdentityKey) -> Self {
        k.0
    }
}

impl IdentityKey {
    /// Parse and validate (the bytes must decode to an Ed25519 curve point).
    pub fn from_bytes(b: &[u8]) -> Result<IdentityKey, CryptoError> {
        let arr: [u8; KEY_LEN] = b.try_into().map_err(|_| CryptoError::InvalidLength {
            what: "identity key",
            expected: KEY_LEN,
            got: b.len(),
        })?;
        Ed25519PublicKey::from_slice(&arr)
            .map_err(|_| CryptoError::InvalidKey("Ed25519 identity"))?;
        Ok(IdentityKey(arr))
    }

    /// The 32 raw bytes.
    pub fn to_bytes(&self) -> [u8; KEY_LEN] {
        self.0
    }

    /// Verify an Ed25519 signature (strict verification: rejects malleable signatures and
    /// weak keys).
    pub fn verify(&self, msg: &[u8], sig: &[u8]) -> Result<(), CryptoError> {
        verify_ed25519(&self.0, msg, sig, "identity")
    }

    /// [`IdentityKey::verify`] for a signature that is checked again and again (contact
    /// cards): see [`verify_remembered`].
    pub(crate) fn verify_remembered(&self, msg: &[u8], sig: &[u8]) -> Result<(), CryptoError> {
        verify_remembered(&self.0, msg, sig, "identity")
    }

    /// The libp2p `PeerId` of this key, e.g. `12D3KooW...`.
    ///
    /// base58btc( multihash(identity = 0x00, len = 36, protobuf PublicKey{ Type = Ed25519,
    /// Data = key }) ).
    pub fn peer_id(&self) -> String {
        let mut mh = Vec::with_capacity(2 + 4 + KEY_LEN);
        // multihash header: code 0x00 (identity), length 36 (the protobuf below).
        mh.push(0x00);
        mh.push(4 + KEY_LEN as u8);
        // protobuf: field 1 (varint) KeyType = 1 (Ed25519); field 2 (bytes) len 32.
        mh.extend_from_slice(&[0x08, 0x01, 0x12, KEY_LEN as u8]);
        mh.extend_from_slice(&self.0);
        bs58::encode(mh).into_string()
    }

    /// A 60-digit human fingerprint of this key alone: 12 space-separated groups of 5 digits.
    pub fn fingerprint(&self) -> String {
        digits_from_digest(&fingerprint_digest(self), FINGERPRINT_GROUPS)
    }
}

/// How many valid Ed25519 signatures the process remembers (see [`verify_remembered`]): 32 bytes
/// each, twice (set and order), so about 4 MiB when full.
pub const VERIFIED_SIGNATURES_CAPACITY: usize = 65_536;

const VERIFIED_CONTEXT: &str = "instaconnect 2026 verified ed25519 signature v1";

/// Digests of (key, signature, message) triples that verified, oldest forgotten first.
#[derive(Default)]
struct VerifiedSignatures {
    order: VecDeque<[u8; 32]>,
    set: HashSet<[u8; 32]>,
}

static VERIFIED_SIGNATURES: LazyLock<Mutex<VerifiedSignatures>> = LazyLock::new(Mutex::default);

fn verified_signatures() -> std::sync::MutexGuard<'static, VerifiedSignatures> {
    // The set holds only digests of triples that verified; a panic elsewhere cannot leave it
    // holding anything else.
    VERIFIED_SIGNATURES
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// [`verify_ed25519`] for signatures that are checked again and again: the same contact card
/// or device keys are parsed at every contact request, accept and session start, and in the
/// simulator by thousands of devices in one process. A (key, signature, message) triple that
/// verified once is remembered process-wide by its BLAKE3 digest (key and signature have fixed
/// lengths, so the encoding is unambiguous; at most [`VERIFIED_SIGNATURES_CAPACITY`], oldest
/// forgotten first) and not checked again. Only successes are remembered, so a forged signature
/// is checked (and refused) every time, and a wrong hit needs a BLAKE3 collision. One-off
/// signatures (mailbox requests, receipts) use [`verify_ed25519`] and are not remembered.
pub(crate) fn verify_remembered(
    key: &[u8; KEY_LEN],
    msg: &[u8],
    sig: &[u8],
    what: &'static str,
) -> Result<(), CryptoError> {
    if sig.len() != SIG_LEN {
        return verify_ed25519(key, msg, sig, what);
    }
    let mut h = blake3::Hasher::new_derive_key(VERIFIED_CONTEXT);
    h.update(key);
    h.update(sig);
    h.update(msg);
    let digest = *h.finalize().as_bytes();
    if verified_signatures().set.contains(&digest) {
        return Ok(());
    }
    verify_ed25519(key, msg, sig, what)?;
    let mut cache = verified_signatures();
    if cache.set.insert(digest) {
        cache.order.push_back(digest);
        if cache.order.len() > VERIFIED_SIGNATURES_CAPACITY {
            if let Some(old) = cache.order.pop_front() {
                cache.set.remove(&old);
            }
        }
    }
    Ok(())
}

pub(crate) fn verify_ed25519(
    key: &[u8; KEY_LEN],
    msg: &[u8],
    sig: &[u8],
    what: &'static str,
) -> Result<(), CryptoError> {
    if sig.len() != SIG_LEN {
        return Err(CryptoError::InvalidLength {
            what: "signature",
            expected: SIG_LEN,
            got: sig.len(),
        });
    }
    let pk =
        Ed25519PublicKey::from_slice(key).map_err(|_: KeyError| CryptoError::InvalidKey(what))?;
    let sig = Ed25519Signature::from_slice(sig).map_err(|_| CryptoError::BadSignature(what))?;
    pk.verify(msg, &sig)
        .map_err(|_| CryptoError::BadSignature(what))
}

/// The iterated hash behind a fingerprint:
/// `h0 = BLAKE3(ctx ‖ version ‖ key)`, `h(i+1) = BLAKE3(h(i) ‖ key)`, `FINGERPRINT_ITERATIONS` times.
fn fingerprint_digest(key: &IdentityKey) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    h.update(FINGERPRINT_CONTEXT);
    h.update(&[FINGERPRINT_VERSION]);
    h.update(&key.0);
    let mut d = *h.finalize().as_bytes();
    for _ in 0..FINGERPRINT_ITERATIONS {
        let mut h = blake3::Hasher::new();
        h.update(&d);
        h.update(&key.0);
        d = *h.finalize().as_bytes();
    }
    d
}

/// Expand a digest into `groups` groups of 5 decimal digits. Each group is a 5-byte
/// big-endian chunk of BLAKE3-XOF(digest) reduced mod 100000 (bias < 2^-23).
fn digits_from_digest(digest: &[u8; 32], groups: usize) -> String {
    let mut xof = blake3::Hasher::new();
    xof.update(b"instaconnect/fingerprint-digits/v1\0");
    xof.update(digest);
    let mut reader = xof.finalize_xof();
    let mut out = String::with_capacity(groups * 6);
    for i in 0..groups {
        let mut chunk = [0u8; 5];
        reader.fill(&mut chunk);
        let v = chunk.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b)) % 100_000;
        if i > 0 {
            out.push(' ');
        }
        out.push_str(&format!("{v:05}"));
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Safety numbers

/// A safety number for a pair of identities: the same on both sides.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct SafetyNumber {
    /// 60 digits in 12 space-separated groups of 5: the first 30 digits of each party's
    /// fingerprint, the numerically smaller half first.
    pub digits: String,
    /// Bytes for a QR code: `FINGERPRINT_VERSION ‖ digest_a ‖ digest_b` (1 + 32 + 32 bytes),
    /// the two iterated fingerprint digests in the same order as the halves of `digits`.
    pub qr_payload: Vec<u8>,
}

/// The safety number of two identities; `safety_number(a, b) == safety_number(b, a)`.
pub fn safety_number(a: &IdentityKey, b: &IdentityKey) -> SafetyNumber {
    let half = FINGERPRINT_GROUPS / 2;
    let mut parts = [a, b].map(|k| {
        let d = fingerprint_digest(k);
        (digits_from_digest(&d, half), d)
    });
    parts.sort();
    let [(da, ha), (db, hb)] = parts;
    let mut qr_payload = Vec::with_capacity(1 + 64);
    qr_payload.push(FINGERPRINT_VERSION);
    qr_payload.extend_from_slice(&ha);
    qr_payload.extend_from_slice(&hb);
    SafetyNumber {
        digits: format!("{da} {db}"),
        qr_payload,
    }
}

impl SafetyNumber {
    /// Whether a scanned QR payload matches this safety number (constant-time compare).
    pub fn matches_qr(&self, scanned: &[u8]) -> bool {
        self.qr_payload.len() == scanned.len()
            && self
                .qr_payload
                .iter()
                .zip(scanned)
                .fold(0u8, |acc, (x, y)| acc | (x ^ y))
                == 0
    }
}

// ---------------------------------------------------------------------------------------------
// Device

/// This device's keys: a vodozemac Olm account (Curve25519 ratchet identity key, Ed25519
/// device signing key, one-time and fallback keys) plus a separate X25519 static key that
/// sealed envelopes are addressed to. All secrets are zeroized on drop.
pub struct Device {
    pub(crate) account: Account,
    pub(crate) envelope_secret: Curve25519SecretKey,
    /// The fallback key currently advertised in contact cards, and when it was generated.
    pub(crate) card_key: Option<CardKey>,
}

/// The public half of the fallback key published in contact cards.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct CardKey {
    pub(crate) public: [u8; KEY_LEN],
    pub(crate) created_at_ms: u64,
}

#[derive(Serialize, Deserialize, Zeroize, ZeroizeOnDrop)]
struct DevicePickle {
    version: u8,
    account: String,
    envelope_secret: [u8; KEY_LEN],
    #[zeroize(skip)]
    card_key: Option<CardKey>,
}

impl Device {
    /// Generate fresh device keys from the OS RNG.
    pub fn generate() -> Device {
        Device {
            account: Account::new(),
            envelope_secret: Curve25519SecretKey::new(),
            card_key: None,
        }
    }

    /// Persistable form: postcard of `{ version = 1, account: vodozemac encrypted pickle
    /// (fixed public key, see [`crate::pickle_key`]), envelope_secret: [u8; 32],
    /// card_key: Option<{ public: [u8; 32], created_at_ms: u64 }> }`.
    /// Treat as secret: the store must keep it encrypted at rest.
    pub fn to_pickle_bytes(&self) -> Zeroizing<Vec<u8>> {
        let key = pickle_key();
        let p = DevicePickle {
            version: DEVICE_PICKLE_VERSION,
            account: self.account.pickle().encrypt(&key),
            envelope_secret: *self.envelope_secret_bytes(),
            card_key: self.card_key,
        };
        let cap = p.account.len() + KEY_LEN + 16;
        let out = postcard::to_extend(&p, Vec::with_capacity(cap)).unwrap_or_default();
        Zeroizing::new(out)
    }

    /// Restore from [`Device::to_pickle_bytes`].
    pub fn from_pickle_bytes(b: &[u8]) -> Result<Device, CryptoError> {
        let p: DevicePickle = postcard::from_bytes(b).map_err(|_| CryptoError::Pickle {
            what: "device",
            reason: "malformed bytes".into(),
        })?;
        if p.version != DEVICE_PICKLE_VERSION {
            return Err(CryptoError::UnsupportedVersion {
                what: "device pickle",
                got: p.version,
                supported: DEVICE_PICKLE_VERSION,
            });
        }
        let key = pickle_key();
        let ap = AccountPickle::from_encrypted(bytes_as_str("device", p.account.as_bytes())?, &key)
            .map_err(|e| CryptoError::Pickle {
                what: "device",
                reason: e.to_string(),
            })?;
        Ok(Device {
            account: Account::from_pickle(ap),
            envelope_secret: Curve25519SecretKey::from_slice(&p.envelope_secret),
            card_key: p.card_key,
        })
    }

    /// The Olm Curve25519 identity key of this device.
    pub fn curve25519_key(&self) -> [u8; KEY_LEN] {
        self.account.curve25519_key().to_bytes()
    }

    /// The Olm Ed25519 signing key of this device.
    pub fn ed25519_key(&self) -> [u8; KEY_LEN] {
        *self.account.ed25519_key().as_bytes()
    }

    /// The X25519 static public key sealed envelopes for this device are addressed to.
    pub fn envelope_key(&self) -> [u8; KEY_LEN] {
        Curve25519PublicKey::from(&self.envelope_secret).to_bytes()
    }

    /// This device's public keys, signed by the account identity and counter-signed by the
    /// device's own Ed25519 key (proving the device holds it).
    pub fn signed_keys(&self, identity: &Identity) -> SignedDeviceKeys {
        let mut k = SignedDeviceKeys {
            identity: identity.public(),
            curve25519: self.curve25519_key(),
            ed25519: self.ed25519_key(),
            envelope: self.envelope_key(),
            identity_signature: Sig64([0; SIG_LEN]),
            device_signature: Sig64([0; SIG_LEN]),
        };
        let msg = k.signed_message();
        k.identity_signature = Sig64(identity.sign(&msg));
        k.device_signature = Sig64(self.account.sign(&msg).to_bytes());
        k
    }

    /// The envelope static secret, for the sealing module.
    pub(crate) fn envelope_secret_bytes(&self) -> Zeroizing<[u8; KEY_LEN]> {
        let mut b = self.envelope_secret.to_bytes();
        let out = Zeroizing::new(*b);
        b.zeroize();
        out
    }
}

impl fmt::Debug for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Device")
            .field("curve25519", &self.account.curve25519_key())
            .field("ed25519", &self.account.ed25519_key())
            .field("secrets", &"[redacted]")
            .finish()
    }
}

// ---------------------------------------------------------------------------------------------
// SignedDeviceKeys

/// A 64-byte signature with serde support (serialized as a byte string).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Sig64(pub [u8; SIG_LEN]);

impl fmt::Debug for Sig64 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Sig64(")?;
        for b in &self.0[..8] {
            write!(f, "{b:02x}")?;
        }
        write!(f, "..)")
    }
}

impl Serialize for Sig64 {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for Sig64 {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Sig64;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("64 signature bytes")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Sig64, E> {
                v.try_into()
                    .map(Sig64)
                    .map_err(|_| E::invalid_length(v.len(), &self))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut a: A) -> Result<Sig64, A::Error> {
                let mut out = [0u8; SIG_LEN];
                for (i, slot) in out.iter_mut().enumerate() {
                    *slot = a
                        .next_element()?
                        .ok_or_else(|| serde::de::Error::invalid_length(i, &self))?;
                }
                if a.next_element::<u8>()?.is_some() {
                    return Err(serde::de::Error::invalid_length(SIG_LEN + 1, &self));
                }
                Ok(Sig64(out))
            }
        }
        d.deserialize_bytes(V)
    }
}

/// A device's public keys bound to an account identity.
///
/// Signed message: `DEVICE_KEYS_CONTEXT ‖ identity ‖ curve25519 ‖ ed25519 ‖ envelope`,
/// signed by the identity key (`identity_signature`) and by the device Ed25519 key
/// (`device_signature`).
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct SignedDeviceKeys {
    /// The account identity that owns the device.
    pub identity: IdentityKey,
    /// The device's Olm Curve25519 identity key (ratchet identity).
    pub curve25519: [u8; KEY_LEN],
    /// The device's Olm Ed25519 key.
    pub ed25519: [u8; KEY_LEN],
    /// The device's X25519 static key for sealed envelopes (Noise X responder static).
    pub envelope: [u8; KEY_LEN],
    /// Signature by `identity`.
    pub identity_signature: Sig64,
    /// Signature by `ed25519`.
    pub device_signature: Sig64,
}

impl SignedDeviceKeys {
    fn signed_message(&self) -> Vec<u8> {
        let mut m = Vec::with_capacity(DEVICE_KEYS_CONTEXT.len() + 4 * KEY_LEN);
        m.extend_from_slice(DEVICE_KEYS_CONTEXT);
        m.extend_from_slice(&self.identity.0);
        m.extend_from_slice(&self.curve25519);
        m.extend_from_slice(&self.ed25519);
        m.extend_from_slice(&self.envelope);
        m
    }

    /// Check that these keys belong to `identity` and both signatures verify.
    pub fn verify(&self, identity: &IdentityKey) -> Result<(), CryptoError> {
        if self.identity != *identity {
            return Err(CryptoError::BadSignature(
                "device keys (they belong to another identity)",
            ));
        }
        let msg = self.signed_message();
        verify_remembered(
            &self.identity.0,
            &msg,
            &self.identity_signature.0,
            "device keys (identity)",
        )?;
        verify_remembered(
            &self.ed25519,
            &msg,
            &self.device_signature.0,
            "device keys (device)",
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_remembered_signature_does_not_vouch_for_another_message_key_or_signature() {
        let id = Identity::generate();
        let other = Identity::generate();
        let sig = id.sign(b"remembered");
        let (key, wrong) = (id.public(), other.public());
        // Twice: the second check is answered from the remembered set.
        key.verify_remembered(b"remembered", &sig).unwrap();
        key.verify_remembered(b"remembered", &sig).unwrap();
        assert_eq!(
            key.verify_remembered(b"rememberee", &sig),
            Err(CryptoError::BadSignature("identity"))
        );
        assert!(wrong.verify_remembered(b"remembered", &sig).is_err());
        let mut bad = sig;
        bad[0] ^= 1;
        assert!(key.verify_remembered(b"remembered", &bad).is_err());
        // A forged signature stays refused however often it is tried.
        assert!(key.verify_remembered(b"remembered", &bad).is_err());
        assert!(key.verify_remembered(b"remembered", &sig[..63]).is_err());
    }

    #[test]
    fn identity_roundtrips_through_seed_and_signs() {
        let id = Identity::generate();
        let seed = id.secret_bytes();
        assert_eq!(seed.len(), 32);
        let again = Identity::from_secret_bytes(&seed).unwrap();
        assert_eq!(id.public(), again.public());
        let sig = id.sign(b"hello");
        again.public().verify(b"hello", &sig).unwrap();
        assert_eq!(
            id.public().verify(b"hellO", &sig),
            Err(CryptoError::BadSignature("identity"))
        );
        let mut bad = sig;
        bad[10] ^= 1;
        assert!(id.public().verify(b"hello", &bad).is_err());
        assert!(matches!(
            id.public().verify(b"hello", &sig[..63]),
            Err(CryptoError::InvalidLength { .. })
        ));
    }

    #[test]
    fn wrong_seed_length_is_typed_error() {
        assert_eq!(
            Identity::from_secret_bytes(&[1u8; 31]).unwrap_err(),
            CryptoError::InvalidLength {
                what: "identity secret",
                expected: 32,
                got: 31
            }
        );
    }

    #[test]
    fn identity_key_validation() {
        let pk = Identity::generate().public();
        assert_eq!(IdentityKey::from_bytes(&pk.to_bytes()).unwrap(), pk);
        assert!(matches!(
            IdentityKey::from_bytes(&[0u8; 33]),
            Err(CryptoError::InvalidLength { .. })
        ));
        // y = 2 is not on the curve (no valid x): decompression fails.
        let mut not_a_point = [0u8; 32];
        not_a_point[0] = 2;
        assert_eq!(
            IdentityKey::from_bytes(&not_a_point),
            Err(CryptoError::InvalidKey("Ed25519 identity"))
        );
        // serde goes through the same validation
        let json_ok = postcard::to_allocvec(&pk).unwrap();
        assert_eq!(postcard::from_bytes::<IdentityKey>(&json_ok).unwrap(), pk);
        let bad = postcard::to_allocvec(&not_a_point).unwrap();
        assert!(postcard::from_bytes::<IdentityKey>(&bad).is_err());
    }

    #[test]
    fn debug_output_redacts_secrets() {
        let id = Identity::generate();
        let dbg = format!("{id:?}");
        assert!(dbg.contains("[redacted]"));
        let seed_hex: String = id
            .secret_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert!(!dbg.contains(&seed_hex));
        assert!(!dbg.contains(&format!("{:?}", &id.secret_bytes()[..])));
        let dev = Device::generate();
        let dbg = format!("{dev:?}");
        assert!(dbg.contains("[redacted]"));
        assert!(!dbg.contains(&format!("{:?}", &dev.envelope_secret_bytes()[..])));
    }

    #[test]
    fn peer_id_matches_libp2p_vector() {
        // libp2p's published Ed25519 test key (specs, peer-ids): seed 7e08..7d, public key
        // 1ed1..7e, PeerId 12D3KooWBtg3...R3pq.
        let seed = hex32("7e0830617c4a7de83925dfb2694556b12936c477a0e1feb2e148ec9da60fee7d");
        let id = Identity::from_secret_bytes(&seed).unwrap();
        let pk = hex32("1ed1e8fae2c4a144b8be8fd4b47bf3d3b34b871c3cacf6010f0e42d474fce27e");
        assert_eq!(id.public().to_bytes(), pk);
        assert_eq!(
            id.public().peer_id(),
            "12D3KooWBtg3aaRMjxwedh83aGiUkwSxDwUZkzuJcfaqUmo7R3pq"
        );
    }

    fn hex32(s: &str) -> [u8; 32] {
        let mut out = [0u8; 32];
        for (i, o) in out.iter_mut().enumerate() {
            *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap();
        }
        out
    }

    #[test]
    fn fingerprint_shape_and_stability() {
        let k = Identity::generate().public();
        let f = k.fingerprint();
        let groups: Vec<&str> = f.split(' ').collect();
        assert_eq!(groups.len(), 12);
        assert!(groups
            .iter()
            .all(|g| g.len() == 5 && g.bytes().all(|c| c.is_ascii_digit())));
        assert_eq!(f, k.fingerprint());
        assert_ne!(f, Identity::generate().public().fingerprint());
    }

    #[test]
    fn safety_number_is_symmetric_and_pair_specific() {
        let a = Identity::generate().public();
        let b = Identity::generate().public();
        let c = Identity::generate().public();
        let ab = safety_number(&a, &b);
        let ba = safety_number(&b, &a);
        assert_eq!(ab, ba);
        let digits: String = ab.digits.split(' ').collect();
        assert_eq!(digits.len(), 60);
        assert_eq!(ab.digits.split(' ').count(), 12);
        assert!(digits.bytes().all(|c| c.is_ascii_digit()));
        assert_eq!(ab.qr_payload.len(), 65);
        assert!(ab.matches_qr(&ba.qr_payload));
        let ac = safety_number(&a, &c);
        assert_ne!(ab.digits, ac.digits);
        assert!(!ab.matches_qr(&ac.qr_payload));
        // each half is the first 30 digits of one party's fingerprint
        let fa: String = a.fingerprint().split(' ').take(6).collect();
        let fb: String = b.fingerprint().split(' ').take(6).collect();
        assert!(digits == format!("{fa}{fb}") || digits == format!("{fb}{fa}"));
    }

    #[test]
    fn device_pickle_roundtrip_keeps_keys() {
        let d = Device::generate();
        let p = d.to_pickle_bytes();
        let d2 = Device::from_pickle_bytes(&p).unwrap();
        assert_eq!(d.curve25519_key(), d2.curve25519_key());
        assert_eq!(d.ed25519_key(), d2.ed25519_key());
        assert_eq!(d.envelope_key(), d2.envelope_key());
        assert_ne!(d.envelope_key(), d.curve25519_key());
        // corruption is a typed error, not a panic
        let mut bad = p.to_vec();
        let mid = bad.len() / 2;
        bad[mid] ^= 0x01;
        assert!(matches!(
            Device::from_pickle_bytes(&bad),
            Err(CryptoError::Pickle { .. })
        ));
        assert!(Device::from_pickle_bytes(&[]).is_err());
        assert!(Device::from_pickle_bytes(&p[..p.len() - 1]).is_err());
    }

    #[test]
    fn signed_device_keys_verify_and_detect_tampering() {
        let id = Identity::generate();
        let other = Identity::generate();
        let d = Device::generate();
        let k = d.signed_keys(&id);
        k.verify(&id.public()).unwrap();
        assert!(k.verify(&other.public()).is_err());
        let bytes = postcard::to_allocvec(&k).unwrap();
        let back: SignedDeviceKeys = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(back, k);
        back.verify(&id.public()).unwrap();

        let mut t = k.clone();
        t.envelope[0] ^= 1;
        assert!(matches!(
            t.verify(&id.public()),
            Err(CryptoError::BadSignature(_))
        ));
        let mut t = k.clone();
        t.curve25519[5] ^= 1;
        assert!(t.verify(&id.public()).is_err());
        // re-signed by another identity but claiming the original one
        let mut t = d.signed_keys(&other);
        t.identity = id.public();
        assert!(t.verify(&id.public()).is_err());
        // device signature must come from the device key
        let mut t = k.clone();
        t.device_signature.0[0] ^= 1;
        assert!(t.verify(&id.public()).is_err());
    }
}
