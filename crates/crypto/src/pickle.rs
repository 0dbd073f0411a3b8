//! Helpers shared by every persisted vodozemac object.
//!
//! vodozemac's stable persistence format is its *encrypted pickle* (serde JSON, then
//! AES-256-CBC + HMAC-SHA-256, then base64). We use it with a fixed, publicly known key:
//! [`pickle_key`] is `BLAKE3::derive_key(PICKLE_KEY_CONTEXT, b"")`. That key is **not a
//! secret** — confidentiality at rest is the store's job — but it buys us vodozemac's
//! versioned format and an integrity check, so a corrupted pickle is rejected with a typed
//! error instead of being half-loaded.

use zeroize::Zeroizing;

/// BLAKE3 key-derivation context for the (public) vodozemac pickle key.
pub const PICKLE_KEY_CONTEXT: &str = "instaconnect-mesh 2025-01 vodozemac pickle key v1";

/// The fixed key used with vodozemac's encrypted pickle format. Not a secret; see module docs.
pub fn pickle_key() -> Zeroizing<[u8; 32]> {
    Zeroizing::new(blake3::derive_key(PICKLE_KEY_CONTEXT, b""))
}

/// Borrow persisted bytes as the UTF-8 text vodozemac expects.
pub(crate) fn bytes_as_str<'a>(
    what: &'static str,
    b: &'a [u8],
) -> Result<&'a str, crate::CryptoError> {
    std::str::from_utf8(b).map_err(|_| crate::CryptoError::Pickle {
        what,
        reason: "not UTF-8".into(),
    })
}
