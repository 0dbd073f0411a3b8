//! A tiny in-memory messenger built only from the crate's public API, as `core` would use it.
#![allow(dead_code)]

use std::collections::HashMap;

use instaconnect_crypto::{
    open_envelope, seal_envelope, CardDisplay, ContactCard, CryptoError, Device, EnvelopeContent,
    Identity, IdentityKey, MessageId, OpenedEnvelope, PayloadKind, ReplayGuard, Session,
    SignedDeviceKeys, DEFAULT_CARD_TTL_MS,
};
use zeroize::Zeroizing;

pub const NOW: u64 = 1_700_000_000_000;

pub struct Peer {
    pub id: Identity,
    pub dev: Device,
    pub keys: SignedDeviceKeys,
    pub sessions: HashMap<IdentityKey, Session>,
    pub guard: ReplayGuard,
    next_id: u64,
}

/// A received message.
pub struct Received {
    pub from: IdentityKey,
    pub kind: PayloadKind,
    /// Decrypted pairwise plaintext; for group messages the raw group message.
    pub bytes: Zeroizing<Vec<u8>>,
}

impl Peer {
    pub fn new() -> Peer {
        let id = Identity::generate();
        let dev = Device::generate();
        let keys = dev.signed_keys(&id);
        Peer {
            id,
            dev,
            keys,
            sessions: HashMap::new(),
            guard: ReplayGuard::new(),
            next_id: 0,
        }
    }

    pub fn public(&self) -> IdentityKey {
        self.id.public()
    }

    pub fn card(&mut self) -> ContactCard {
        self.dev
            .contact_card(&self.id, CardDisplay::default(), NOW, DEFAULT_CARD_TTL_MS)
            .unwrap()
    }

    /// Add a contact from its invite link and start a session with it.
    pub fn add_contact(&mut self, link: &str) {
        let card = ContactCard::from_invite_link(link, NOW).unwrap();
        let s = Session::outbound(&self.dev, &card, NOW).unwrap();
        self.sessions.insert(card.identity(), s);
    }

    fn next_message_id(&mut self) -> MessageId {
        self.next_id += 1;
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&self.next_id.to_be_bytes());
        b[8..].copy_from_slice(&self.public().to_bytes()[..8]);
        MessageId(b)
    }

    /// Encrypt over the pairwise session and seal to `to`.
    pub fn send(&mut self, to: &SignedDeviceKeys, plaintext: &[u8]) -> Vec<u8> {
        let ratchet = self
            .sessions
            .get_mut(&to.identity)
            .unwrap()
            .encrypt(plaintext)
            .unwrap();
        self.seal(to, PayloadKind::Pairwise, ratchet)
    }

    pub fn seal(&mut self, to: &SignedDeviceKeys, kind: PayloadKind, payload: Vec<u8>) -> Vec<u8> {
        let content = EnvelopeContent {
            message_id: self.next_message_id(),
            timestamp_ms: NOW,
            kind,
            payload,
        };
        seal_envelope(&self.dev, &self.keys, to, &content).unwrap()
    }

    /// Open, drop duplicates, decrypt (starting a session from a pre-key message if needed).
    pub fn receive(&mut self, envelope: &[u8]) -> Result<Received, CryptoError> {
        let opened = open_envelope(&self.dev, envelope)?;
        self.guard.check_envelope(&opened, NOW)?;
        self.dispatch(opened)
    }

    fn dispatch(&mut self, opened: OpenedEnvelope) -> Result<Received, CryptoError> {
        let from = opened.sender.identity;
        let bytes = match opened.kind {
            PayloadKind::Group | PayloadKind::Chunk => Zeroizing::new(opened.payload.clone()),
            PayloadKind::Pairwise => {
                let existing = self.sessions.get_mut(&from).filter(|s| {
                    !Session::is_prekey_message(&opened.payload)
                        || s.matches_prekey(&opened.payload)
                });
                match existing {
                    Some(s) => s.decrypt_from(&opened.sender, &opened.payload)?,
                    None => {
                        let (s, pt) =
                            Session::inbound(&mut self.dev, &opened.sender, &opened.payload)?;
                        self.sessions.insert(from, s);
                        pt
                    }
                }
            }
        };
        Ok(Received {
            from,
            kind: opened.kind,
            bytes,
        })
    }
}

/// Alice and Bob with a session from Bob's invite; returns them after Bob has the session too.
pub fn connected_pair() -> (Peer, Peer) {
    let mut alice = Peer::new();
    let mut bob = Peer::new();
    let link = bob.card().to_invite_link();
    alice.add_contact(&link);
    let env = alice.send(&bob.keys.clone(), b"hello");
    assert_eq!(&bob.receive(&env).unwrap().bytes[..], b"hello");
    (alice, bob)
}
