//! Signed contact cards and `instaconnect://invite/` links.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::identity::{CardKey, Sig64, KEY_LEN};
use crate::{CryptoError, Device, Identity, IdentityKey, SignedDeviceKeys};

/// Version of the contact-card format.
pub const CARD_VERSION: u8 = 1;
/// Prefix of an invite link; the rest is unpadded base64url of the postcard-encoded card.
pub const INVITE_PREFIX: &str = "instaconnect://invite/";
/// Longest invite link accepted (checked before decoding anything).
pub const MAX_INVITE_LINK_LEN: usize = 2048;
/// Longest validity window a card may have.
pub const MAX_CARD_TTL_MS: u64 = 30 * 24 * 60 * 60 * 1000;
/// A sensible default validity window for `instaconnect invite`.
pub const DEFAULT_CARD_TTL_MS: u64 = 7 * 24 * 60 * 60 * 1000;
/// The card's fallback key is replaced when a card is issued and the current key is at least
/// this old. vodozemac keeps the current and the previous fallback key, and a card lives at
/// most `MAX_CARD_TTL_MS <= CARD_KEY_ROTATION_MS`, so every unexpired card stays usable.
pub const CARD_KEY_ROTATION_MS: u64 = MAX_CARD_TTL_MS;
/// How far in the future a card's creation time may lie (clock skew between devices).
pub const MAX_CARD_CLOCK_SKEW_MS: u64 = 10 * 60 * 1000;
/// Longest display name, in bytes of UTF-8.
pub const MAX_DISPLAY_NAME_LEN: usize = 64;
/// Longest phone number, in bytes (E.164 is at most `+` and 15 digits).
pub const MAX_PHONE_LEN: usize = 16;
/// Domain-separation prefix of the identity signature over a card.
pub const CARD_CONTEXT: &[u8] = b"instaconnect/contact-card/v1\0";

/// Optional, self-asserted display fields of a contact card.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CardDisplay {
    /// A display name.
    pub name: Option<String>,
    /// A phone number (E.164); validation of its syntax is the caller's job.
    pub phone: Option<String>,
}

impl CardDisplay {
    fn check(&self) -> Result<(), CryptoError> {
        if let Some(n) = &self.name {
            if n.len() > MAX_DISPLAY_NAME_LEN {
                return Err(CryptoError::CardFieldTooLong {
                    field: "name",
                    len: n.len(),
                    max: MAX_DISPLAY_NAME_LEN,
                });
            }
        }
        if let Some(p) = &self.phone {
            if p.len() > MAX_PHONE_LEN {
                return Err(CryptoError::CardFieldTooLong {
                    field: "phone",
                    len: p.len(),
                    max: MAX_PHONE_LEN,
                });
            }
        }
        Ok(())
    }
}

/// A signed contact card: everything needed to start an end-to-end session with a device
/// offline, signed by the account identity.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContactCard {
    /// Format version ([`CARD_VERSION`]).
    pub version: u8,
    /// The device's keys, signed by the identity (which they name).
    pub device: SignedDeviceKeys,
    /// The device's Olm fallback key (Curve25519) used to start a session offline.
    pub session_key: [u8; KEY_LEN],
    /// Optional display fields.
    pub display: CardDisplay,
    /// When the card was made (unix millis).
    pub created_at_ms: u64,
    /// When the card stops being accepted (unix millis).
    pub expires_at_ms: u64,
    /// Identity signature over `CARD_CONTEXT ‖ postcard(every field above)`.
    pub signature: Sig64,
}

#[derive(Serialize)]
struct CardBody<'a> {
    version: u8,
    device: &'a SignedDeviceKeys,
    session_key: &'a [u8; KEY_LEN],
    display: &'a CardDisplay,
    created_at_ms: u64,
    expires_at_ms: u64,
}

impl ContactCard {
    fn signed_message(&self) -> Result<Vec<u8>, CryptoError> {
        let body = CardBody {
            version: self.version,
            device: &self.device,
            session_key: &self.session_key,
            display: &self.display,
            created_at_ms: self.created_at_ms,
            expires_at_ms: self.expires_at_ms,
        };
        postcard::to_extend(&body, CARD_CONTEXT.to_vec())
            .map_err(|_| CryptoError::Encoding("contact card"))
    }

    /// The account identity this card belongs to.
    pub fn identity(&self) -> IdentityKey {
        self.device.identity
    }

    /// Check the card completely: format version, field sizes, both signatures (card and
    /// device keys) and the validity window at `now_ms`.
    pub fn verify(&self, now_ms: u64) -> Result<(), CryptoError> {
        if self.version != CARD_VERSION {
            return Err(CryptoError::UnsupportedVersion {
                what: "contact card",
                got: self.version,
                supported: CARD_VERSION,
            });
        }
        self.display.check()?;
        let msg = self.signed_message()?;
        self.identity()
            .verify_remembered(&msg, &self.signature.0)
            .map_err(|_| CryptoError::CardTampered("card"))?;
        self.device
            .verify(&self.identity())
            .map_err(|_| CryptoError::CardTampered("device keys"))?;
        if self.expires_at_ms < self.created_at_ms
            || self.expires_at_ms - self.created_at_ms > MAX_CARD_TTL_MS
        {
            return Err(CryptoError::TooLarge {
                what: "contact card validity window",
                len: usize::try_from(self.expires_at_ms.saturating_sub(self.created_at_ms))
                    .unwrap_or(usize::MAX),
                max: usize::try_from(MAX_CARD_TTL_MS).unwrap_or(usize::MAX),
            });
        }
        if now_ms > self.expires_at_ms {
            return Err(CryptoError::CardExpired {
                expires_at_ms: self.expires_at_ms,
                now_ms,
            });
        }
        if self.created_at_ms > now_ms.saturating_add(MAX_CARD_CLOCK_SKEW_MS) {
            return Err(CryptoError::CardNotYetValid {
                created_at_ms: self.created_at_ms,
                now_ms,
            });
        }
        Ok(())
    }

    /// The compact binary form (postcard), e.g. for a QR code in binary mode.
    pub fn to_bytes(&self) -> Vec<u8> {
        // Serializing plain data into a Vec cannot fail.
        postcard::to_allocvec(self).unwrap_or_default()
    }

    /// Decode the binary form and verify it (see [`ContactCard::verify`]).
    pub fn from_bytes(bytes: &[u8], now_ms: u64) -> Result<ContactCard, CryptoError> {
        let card: ContactCard = match postcard::from_bytes::<ContactCard>(bytes) {
            Ok(c) => c,
            // Tell a newer card format apart from garbage when we can.
            Err(_) => match bytes.first() {
                Some(&v) if v != CARD_VERSION && v != 0 => {
                    return Err(CryptoError::UnsupportedVersion {
                        what: "contact card",
                        got: v,
                        supported: CARD_VERSION,
                    })
                }
                _ => return Err(CryptoError::Encoding("contact card")),
            },
        };
        card.verify(now_ms)?;
        Ok(card)
    }

    /// `instaconnect://invite/<base64url(postcard(card))>`.
    pub fn to_invite_link(&self) -> String {
        format!("{INVITE_PREFIX}{}", URL_SAFE_NO_PAD.encode(self.to_bytes()))
    }

    /// Parse an invite link and verify the card at `now_ms`. Surrounding whitespace is
    /// ignored. Errors: [`CryptoError::InviteScheme`], [`CryptoError::InviteBase64`],
    /// [`CryptoError::Encoding`], [`CryptoError::CardTampered`], [`CryptoError::CardExpired`], …
    pub fn from_invite_link(link: &str, now_ms: u64) -> Result<ContactCard, CryptoError> {
        let link = link.trim();
        if link.len() > MAX_INVITE_LINK_LEN {
            return Err(CryptoError::TooLarge {
                what: "invite link",
                len: link.len(),
                max: MAX_INVITE_LINK_LEN,
            });
        }
        let payload = match link.get(..INVITE_PREFIX.len()) {
            Some(p) if p.eq_ignore_ascii_case(INVITE_PREFIX) => &link[INVITE_PREFIX.len()..],
            _ => return Err(CryptoError::InviteScheme),
        };
        let payload = payload.trim_end_matches('/');
        let bytes = URL_SAFE_NO_PAD
            .decode(payload)
            .map_err(|_| CryptoError::InviteBase64)?;
        ContactCard::from_bytes(&bytes, now_ms)
    }
}

impl Device {
    /// Issue a signed contact card valid from `now_ms` for `ttl_ms` (at most
    /// [`MAX_CARD_TTL_MS`]). The card carries this device's current Olm fallback key; a new
    /// one is generated when there is none or it is older than [`CARD_KEY_ROTATION_MS`].
    /// The device state changes: persist it (`to_pickle_bytes`) before publishing the card.
    pub fn contact_card(
        &mut self,
        identity: &Identity,
        display: CardDisplay,
        now_ms: u64,
        ttl_ms: u64,
    ) -> Result<ContactCard, CryptoError> {
        display.check()?;
        if ttl_ms == 0 || ttl_ms > MAX_CARD_TTL_MS {
            return Err(CryptoError::TooLarge {
                what: "contact card ttl (ms)",
                len: usize::try_from(ttl_ms).unwrap_or(usize::MAX),
                max: usize::try_from(MAX_CARD_TTL_MS).unwrap_or(usize::MAX),
            });
        }
        let key = match self.card_key {
            Some(k) if now_ms.saturating_sub(k.created_at_ms) < CARD_KEY_ROTATION_MS => k,
            _ => {
                self.account.generate_fallback_key();
                let public = self
                    .account
                    .fallback_key()
                    .into_values()
                    .next()
                    .map(|k| k.to_bytes())
                    .ok_or(CryptoError::CardMissingKey)?;
                self.account.mark_keys_as_published();
                let k = CardKey {
                    public,
                    created_at_ms: now_ms,
                };
                self.card_key = Some(k);
                k
            }
        };
        let mut card = ContactCard {
            version: CARD_VERSION,
            device: self.signed_keys(identity),
            session_key: key.public,
            display,
            created_at_ms: now_ms,
            expires_at_ms: now_ms.saturating_add(ttl_ms),
            signature: Sig64([0; 64]),
        };
        card.signature = Sig64(identity.sign(&card.signed_message()?));
        Ok(card)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_700_000_000_000;

    fn card() -> (Identity, Device, ContactCard) {
        let id = Identity::generate();
        let mut dev = Device::generate();
        let display = CardDisplay {
            name: Some("Ada".into()),
            phone: Some("+15551234567".into()),
        };
        let c = dev
            .contact_card(&id, display, NOW, DEFAULT_CARD_TTL_MS)
            .unwrap();
        (id, dev, c)
    }

    #[test]
    fn invite_link_roundtrip() {
        let (id, _dev, c) = card();
        c.verify(NOW).unwrap();
        let link = c.to_invite_link();
        assert!(link.starts_with("instaconnect://invite/"));
        assert!(link.len() < 800, "link is {} chars", link.len());
        let back = ContactCard::from_invite_link(&format!("  {link}\n"), NOW + 1000).unwrap();
        assert_eq!(back, c);
        assert_eq!(back.identity(), id.public());
        assert_eq!(back.display.name.as_deref(), Some("Ada"));
    }

    #[test]
    fn bad_links_get_clear_errors() {
        let (_id, _dev, c) = card();
        let link = c.to_invite_link();
        let payload = &link[INVITE_PREFIX.len()..];
        assert_eq!(
            ContactCard::from_invite_link(&format!("https://invite/{payload}"), NOW),
            Err(CryptoError::InviteScheme)
        );
        assert_eq!(
            ContactCard::from_invite_link("instaconnect://invite/@@@", NOW),
            Err(CryptoError::InviteBase64)
        );
        let short = &link[..link.len() - 40];
        assert!(matches!(
            ContactCard::from_invite_link(short, NOW),
            Err(CryptoError::Encoding(_) | CryptoError::InviteBase64)
        ));
        assert_eq!(
            ContactCard::from_invite_link(&link, NOW + DEFAULT_CARD_TTL_MS + 1),
            Err(CryptoError::CardExpired {
                expires_at_ms: NOW + DEFAULT_CARD_TTL_MS,
                now_ms: NOW + DEFAULT_CARD_TTL_MS + 1
            })
        );
        let huge = format!("{INVITE_PREFIX}{}", "A".repeat(MAX_INVITE_LINK_LEN));
        assert!(matches!(
            ContactCard::from_invite_link(&huge, NOW),
            Err(CryptoError::TooLarge { .. })
        ));
    }

    #[test]
    fn tampered_cards_are_rejected() {
        let (_id, _dev, c) = card();
        let mut t = c.clone();
        t.display.name = Some("Mallory".into());
        assert_eq!(t.verify(NOW), Err(CryptoError::CardTampered("card")));
        let link = t.to_invite_link();
        assert_eq!(
            ContactCard::from_invite_link(&link, NOW),
            Err(CryptoError::CardTampered("card"))
        );
        let mut t = c.clone();
        t.expires_at_ms += 1;
        assert_eq!(t.verify(NOW), Err(CryptoError::CardTampered("card")));
        let mut t = c.clone();
        t.session_key[3] ^= 0x10;
        assert_eq!(t.verify(NOW), Err(CryptoError::CardTampered("card")));
        // swap in another identity's device keys, re-sign the card with the attacker's key
        let attacker = Identity::generate();
        let mut t = c.clone();
        t.device.identity = attacker.public();
        t.signature = Sig64(attacker.sign(&t.signed_message().unwrap()));
        assert_eq!(t.verify(NOW), Err(CryptoError::CardTampered("device keys")));
    }

    #[test]
    fn card_time_window() {
        let (id, mut dev, _c) = card();
        let c = dev
            .contact_card(&id, CardDisplay::default(), NOW, 1000)
            .unwrap();
        c.verify(NOW + 1000).unwrap();
        assert!(matches!(
            c.verify(NOW + 1001),
            Err(CryptoError::CardExpired { .. })
        ));
        assert!(matches!(
            c.verify(NOW - MAX_CARD_CLOCK_SKEW_MS - 1),
            Err(CryptoError::CardNotYetValid { .. })
        ));
        assert!(dev
            .contact_card(&id, CardDisplay::default(), NOW, MAX_CARD_TTL_MS + 1)
            .is_err());
        assert!(dev
            .contact_card(&id, CardDisplay::default(), NOW, 0)
            .is_err());
        let long = CardDisplay {
            name: Some("x".repeat(MAX_DISPLAY_NAME_LEN + 1)),
            phone: None,
        };
        assert!(matches!(
            dev.contact_card(&id, long, NOW, 1000),
            Err(CryptoError::CardFieldTooLong { field: "name", .. })
        ));
    }

    #[test]
    fn fallback_key_reused_then_rotated() {
        let (id, mut dev, c1) = card();
        let c2 = dev
            .contact_card(&id, CardDisplay::default(), NOW + 5, 1000)
            .unwrap();
        assert_eq!(c1.session_key, c2.session_key);
        // survives a pickle roundtrip
        let mut dev = Device::from_pickle_bytes(&dev.to_pickle_bytes()).unwrap();
        let c3 = dev
            .contact_card(
                &id,
                CardDisplay::default(),
                NOW + CARD_KEY_ROTATION_MS,
                1000,
            )
            .unwrap();
        assert_ne!(c3.session_key, c1.session_key);
    }
}
