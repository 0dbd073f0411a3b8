use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use instaconnect_wire::records::{
    AccountRecord, AttachmentRecord, BlockRecord, ContactMailboxes, ContactRecord,
    ContactRequestRecord, ConversationRecord, DepositRecord, GroupId, GroupMessageRecord,
    GroupRecord, GroupSyncRecord, HeldMessage, MessageRecord, OutboxEntry, OutboxPayload,
    OwnMailbox, Profile, Settings, UploadRecord,
};
use instaconnect_wire::records::{LocationRecord, PositionRecord};
use instaconnect_wire::{decode, encode, SecretBytes, SCHEMA_VERSION};
use serde::de::DeserializeOwned;

use crate::buffered::{Buffered, Writes};
use crate::{Op, Result, Store, StoreError};

// Key layout of the default tree. One tree keeps every batch atomic with `apply_batch`.
const KEY_SCHEMA: &[u8] = b"meta/schema";
const KEY_ACCOUNT: &[u8] = b"account";
const KEY_PROFILE: &[u8] = b"profile";
const KEY_SETTINGS: &[u8] = b"settings";
const PREFIX_CONTACT: &[u8] = b"contact/";
const PREFIX_BLOCK: &[u8] = b"block/";
const PREFIX_GROUP: &[u8] = b"group/";
const KEY_REPLAY: &[u8] = b"replay";
/// `msg/<E.164>/<seq: u64 big-endian>`: messages in conversation order.
const PREFIX_MESSAGE: &[u8] = b"msg/";
/// `msgid/<id>` -> the message's key: dedupe and receipts by id.
const PREFIX_MESSAGE_ID: &[u8] = b"msgid/";
const PREFIX_CONVERSATION: &[u8] = b"conv/";
const PREFIX_OUTBOX: &[u8] = b"outbox/";
const PREFIX_SESSION: &[u8] = b"session/";
const PREFIX_REQUEST: &[u8] = b"creq/";
const PREFIX_SEEN: &[u8] = b"seen/";
const PREFIX_HELD: &[u8] = b"held/";
/// `ownmb/<mailbox id>`: our mailboxes on relays.
const PREFIX_OWN_MAILBOX: &[u8] = b"ownmb/";
/// `cmb/<phone>`: a contact's announced mailboxes.
const PREFIX_CONTACT_MAILBOXES: &[u8] = b"cmb/";
/// `deposit/<message id><mailbox id>`: envelopes we left on relays.
const PREFIX_DEPOSIT: &[u8] = b"deposit/";
/// `att/<message id>`: a message's attachment (manifest and which chunks are stored).
const PREFIX_ATTACHMENT: &[u8] = b"att/";
/// `gsync/<group id>`: a group's network state (membership version, keys).
const PREFIX_GROUP_SYNC: &[u8] = b"gsync/";
/// `gmsg/<message id>`: a group message's sender and per-member states.
const PREFIX_GROUP_MESSAGE: &[u8] = b"gmsg/";
/// `upload/<message id>`: which chunks of an attachment we sent relays hold for its recipient.
const PREFIX_UPLOAD: &[u8] = b"upload/";
/// `loc/<message id>`: a location message's location (the latest, for a live one).
const PREFIX_LOCATION: &[u8] = b"loc/";
/// `fwd/<message id>` (empty): the message was forwarded.
const PREFIX_FORWARDED: &[u8] = b"fwd/";
/// The device's own position (`location set`).
const KEY_POSITION: &[u8] = b"position";
/// `cpeer/<peer id>/<phone>` -> empty: which contacts are linked to a device.
const PREFIX_CONTACT_PEER: &[u8] = b"cpeer/";

fn contact_peer_key(peer: &str, phone: &str) -> Vec<u8> {
    let mut k = key(PREFIX_CONTACT_PEER, peer.as_bytes());
    k.push(b'/');
    k.extend_from_slice(phone.as_bytes());
    k
}

fn deposit_key(id: &[u8; 16], mailbox: &[u8; 32]) -> Vec<u8> {
    let mut k = key(PREFIX_DEPOSIT, id);
    k.extend_from_slice(mailbox);
    k
}

fn message_key(peer: &str, seq: u64) -> Vec<u8> {
    numbered_key(PREFIX_MESSAGE, peer, seq)
}

/// `prefix` + peer + `/` + big-endian number: sorts by peer, then number.
fn numbered_key(prefix: &[u8], peer: &str, n: u64) -> Vec<u8> {
    let mut k = key(prefix, peer.as_bytes());
    k.push(b'/');
    k.extend_from_slice(&n.to_be_bytes());
    k
}

/// A database another process holds is `Locked`, not an IO error.
pub(crate) fn open_error(e: sled::Error, path: &str) -> StoreError {
    match e {
        sled::Error::Io(ref io) if io.kind() == std::io::ErrorKind::WouldBlock => {
            StoreError::Locked {
                path: path.to_string(),
            }
        }
        sled::Error::Io(ref io) if io.to_string().contains("lock") => StoreError::Locked {
            path: path.to_string(),
        },
        other => StoreError::Sled(other),
    }
}

/// The on-disk [`Store`], a sled database in one directory. Clones share the same database.
///
/// Deferred writes ([`Store::apply_deferred`]) are kept in memory, where reads see them, and
/// go to sled as one atomic batch at the next [`Store::flush`] (see [`crate::buffered`]).
#[derive(Clone)]
pub struct SledStore {
    db: Buffered,
    path: PathBuf,
}

fn key(prefix: &[u8], id: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(prefix.len() + id.len());
    k.extend_from_slice(prefix);
    k.extend_from_slice(id);
    k
}

impl SledStore {
    /// Opens (or creates) the database in `dir`. A database written by a newer schema is refused
    /// without writing anything.
    pub fn open(dir: &Path) -> Result<SledStore> {
        let path = dir.display().to_string();
        let db = sled::Config::new()
            .path(dir)
            .open()
            .map_err(|e| open_error(e, &path))?;
        match db.get(KEY_SCHEMA)? {
            Some(v) => {
                let found: u32 = decode(&v).map_err(|source| StoreError::Corrupt {
                    key: "meta/schema".into(),
                    source,
                })?;
                if found > SCHEMA_VERSION {
                    return Err(StoreError::NewerSchema {
                        path,
                        found,
                        supported: SCHEMA_VERSION,
                    });
                }
                // Migrations from older schema versions, each one batch, in order.
                if found < 2 {
                    migrate_v1_to_v2(&db)?;
                }
                if found < 3 {
                    migrate_v2_to_v3(&db)?;
                }
            }
            None => {
                if !db.is_empty() {
                    return Err(StoreError::Unversioned { path });
                }
                db.insert(
                    KEY_SCHEMA,
                    encode(&SCHEMA_VERSION).map_err(StoreError::Encode)?,
                )?;
                db.flush()?;
            }
        }
        Ok(SledStore {
            db: Buffered::new(db),
            path: dir.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The schema version recorded in the database.
    pub fn schema_version(&self) -> Result<u32> {
        self.get(KEY_SCHEMA)
            .map(|v: Option<u32>| v.unwrap_or(SCHEMA_VERSION))
    }

    /// Writes a schema version (for migration tests).
    #[doc(hidden)]
    pub fn force_schema_version(&self, v: u32) -> Result<()> {
        self.db
            .db()
            .insert(KEY_SCHEMA, encode(&v).map_err(StoreError::Encode)?)?;
        self.db.flush()?;
        Ok(())
    }

    fn get<T: DeserializeOwned>(&self, k: &[u8]) -> Result<Option<T>> {
        match self.db.get(k)? {
            None => Ok(None),
            Some(v) => decode(&v).map(Some).map_err(|source| StoreError::Corrupt {
                key: String::from_utf8_lossy(k).into_owned(),
                source,
            }),
        }
    }

    fn decode_all<T: DeserializeOwned>(kvs: Vec<(Vec<u8>, Vec<u8>)>) -> Result<Vec<T>> {
        kvs.into_iter()
            .map(|(k, v)| {
                decode(&v).map_err(|source| StoreError::Corrupt {
                    key: String::from_utf8_lossy(&k).into_owned(),
                    source,
                })
            })
            .collect()
    }

    fn scan<T: DeserializeOwned>(&self, prefix: &[u8]) -> Result<Vec<T>> {
        Self::decode_all(self.db.scan_prefix(prefix, usize::MAX)?)
    }
}

fn enc<T: serde::Serialize>(v: &T) -> Result<Vec<u8>> {
    encode(v).map_err(StoreError::Encode)
}

impl Store for SledStore {
    fn account(&self) -> Result<Option<AccountRecord>> {
        self.get(KEY_ACCOUNT)
    }

    fn profile(&self) -> Result<Profile> {
        Ok(self.get(KEY_PROFILE)?.unwrap_or_default())
    }

    fn settings(&self) -> Result<Settings> {
        Ok(self.get(KEY_SETTINGS)?.unwrap_or_default())
    }

    fn contact(&self, phone: &str) -> Result<Option<ContactRecord>> {
        self.get(&key(PREFIX_CONTACT, phone.as_bytes()))
    }

    fn contacts(&self) -> Result<Vec<ContactRecord>> {
        self.scan(PREFIX_CONTACT)
    }

    fn contact_by_peer(&self, peer_id: &str) -> Result<Option<ContactRecord>> {
        let mut prefix = key(PREFIX_CONTACT_PEER, peer_id.as_bytes());
        prefix.push(b'/');
        for (k, _) in self.db.scan_prefix(&prefix, usize::MAX)? {
            let phone = String::from_utf8_lossy(&k[prefix.len()..]).into_owned();
            if let Some(c) = self.contact(&phone)? {
                return Ok(Some(c));
            }
        }
        Ok(None)
    }

    fn block(&self, phone: &str) -> Result<Option<BlockRecord>> {
        self.get(&key(PREFIX_BLOCK, phone.as_bytes()))
    }

    fn blocks(&self) -> Result<Vec<BlockRecord>> {
        self.scan(PREFIX_BLOCK)
    }

    fn group(&self, id: &GroupId) -> Result<Option<GroupRecord>> {
        self.get(&key(PREFIX_GROUP, &id.0))
    }

    fn groups(&self) -> Result<Vec<GroupRecord>> {
        self.scan(PREFIX_GROUP)
    }

    fn conversation(&self, peer: &str) -> Result<Option<ConversationRecord>> {
        self.get(&key(PREFIX_CONVERSATION, peer.as_bytes()))
    }

    fn conversations(&self) -> Result<Vec<ConversationRecord>> {
        self.scan(PREFIX_CONVERSATION)
    }

    fn messages(&self, peer: &str, from_seq: u64) -> Result<Vec<MessageRecord>> {
        let start = message_key(peer, from_seq);
        let end = message_key(peer, u64::MAX);
        Self::decode_all(self.db.range(start..=end, usize::MAX)?)
    }

    fn message(&self, id: &[u8; 16]) -> Result<Option<MessageRecord>> {
        match self.db.get(&key(PREFIX_MESSAGE_ID, id))? {
            None => Ok(None),
            Some(k) => Ok(self.get::<MessageRecord>(&k)?.filter(|m| m.id == *id)),
        }
    }

    fn outbox(&self) -> Result<Vec<OutboxEntry>> {
        self.scan(PREFIX_OUTBOX)
    }

    fn session(&self, peer_id: &str) -> Result<Option<SecretBytes>> {
        self.get(&key(PREFIX_SESSION, peer_id.as_bytes()))
    }

    fn contact_requests(&self) -> Result<Vec<ContactRequestRecord>> {
        self.scan(PREFIX_REQUEST)
    }

    fn replay(&self) -> Result<Option<SecretBytes>> {
        self.get(KEY_REPLAY)
    }

    fn seen(&self, id: &[u8; 16]) -> Result<bool> {
        Ok(self.db.get(&key(PREFIX_SEEN, id))?.is_some())
    }

    fn held(&self) -> Result<Vec<HeldMessage>> {
        self.scan(PREFIX_HELD)
    }

    fn own_mailboxes(&self) -> Result<Vec<OwnMailbox>> {
        self.scan(PREFIX_OWN_MAILBOX)
    }

    fn contact_mailboxes(&self) -> Result<Vec<ContactMailboxes>> {
        self.scan(PREFIX_CONTACT_MAILBOXES)
    }

    fn deposits(&self) -> Result<Vec<DepositRecord>> {
        self.scan(PREFIX_DEPOSIT)
    }

    fn attachment(&self, id: &[u8; 16]) -> Result<Option<AttachmentRecord>> {
        self.get(&key(PREFIX_ATTACHMENT, id))
    }

    fn attachments(&self) -> Result<Vec<AttachmentRecord>> {
        self.scan(PREFIX_ATTACHMENT)
    }

    fn group_sync(&self, id: &GroupId) -> Result<Option<GroupSyncRecord>> {
        self.get(&key(PREFIX_GROUP_SYNC, &id.0))
    }

    fn group_message(&self, id: &[u8; 16]) -> Result<Option<GroupMessageRecord>> {
        self.get(&key(PREFIX_GROUP_MESSAGE, id))
    }

    fn uploads(&self) -> Result<Vec<UploadRecord>> {
        self.scan(PREFIX_UPLOAD)
    }

    fn location(&self, id: &[u8; 16]) -> Result<Option<LocationRecord>> {
        self.get(&key(PREFIX_LOCATION, id))
    }

    fn locations(&self) -> Result<Vec<LocationRecord>> {
        self.scan(PREFIX_LOCATION)
    }

    fn position(&self) -> Result<Option<PositionRecord>> {
        self.get(KEY_POSITION)
    }

    fn forwarded(&self, id: &[u8; 16]) -> Result<bool> {
        Ok(self.db.get(&key(PREFIX_FORWARDED, id))?.is_some())
    }

    fn flush(&self) -> Result<()> {
        self.db.flush()?;
        Ok(())
    }

    fn apply_deferred(&self, ops: Vec<Op>) -> Result<()> {
        let mut batch = Writes::default();
        // Contacts as the batch leaves them (phone -> record or removed), to keep the peer
        // index right when a batch touches a contact twice.
        let mut contacts: std::collections::BTreeMap<&str, Option<&ContactRecord>> =
            std::collections::BTreeMap::new();
        for op in &ops {
            match op {
                Op::PutContact(c) => {
                    contacts.insert(&c.phone, Some(c));
                }
                Op::RemoveContact(p) => {
                    contacts.insert(p, None);
                }
                _ => {}
            }
        }
        for (phone, new) in &contacts {
            let old: Option<ContactRecord> = self.get(&key(PREFIX_CONTACT, phone.as_bytes()))?;
            let old_peer = old.and_then(|c| c.peer_id);
            let new_peer = new.and_then(|c| c.peer_id.clone());
            if old_peer != new_peer {
                if let Some(p) = old_peer {
                    batch.remove(contact_peer_key(&p, phone));
                }
                if let Some(p) = new_peer {
                    batch.insert(contact_peer_key(&p, phone), &[][..]);
                }
            }
        }
        let mut replaced: BTreeMap<Vec<u8>, [u8; 16]> = BTreeMap::new();
        for op in &ops {
            match op {
                Op::PutAccount(a) => batch.insert(KEY_ACCOUNT, enc(a)?),
                Op::PutProfile(p) => batch.insert(KEY_PROFILE, enc(p)?),
                Op::PutSettings(s) => batch.insert(KEY_SETTINGS, enc(s)?),
                Op::PutContact(c) => batch.insert(key(PREFIX_CONTACT, c.phone.as_bytes()), enc(c)?),
                Op::RemoveContact(p) => batch.remove(key(PREFIX_CONTACT, p.as_bytes())),
                Op::PutBlock(b) => batch.insert(key(PREFIX_BLOCK, b.phone.as_bytes()), enc(b)?),
                Op::RemoveBlock(p) => batch.remove(key(PREFIX_BLOCK, p.as_bytes())),
                Op::PutGroup(g) => batch.insert(key(PREFIX_GROUP, &g.id.0), enc(g)?),
                Op::RemoveGroup(id) => batch.remove(key(PREFIX_GROUP, &id.0)),
                Op::PutMessage(m) => {
                    let k = message_key(&m.peer, m.seq);
                    // The message this one replaces: put earlier in this batch, or stored.
                    let old_id = match replaced.get(&k) {
                        Some(id) => Some(*id),
                        None => self
                            .db
                            .get(&k)?
                            .and_then(|old| decode::<MessageRecord>(&old).ok())
                            .map(|old| old.id),
                    };
                    if let Some(old_id) = old_id.filter(|id| *id != m.id) {
                        batch.remove(key(PREFIX_MESSAGE_ID, &old_id));
                    }
                    replaced.insert(k.clone(), m.id);
                    batch.insert(key(PREFIX_MESSAGE_ID, &m.id), k.clone());
                    batch.insert(k, enc(m)?);
                }
                Op::PutConversation(c) => {
                    batch.insert(key(PREFIX_CONVERSATION, c.peer.as_bytes()), enc(c)?)
                }
                Op::PutOutbox(o) => batch.insert(key(PREFIX_OUTBOX, &o.id), enc(o)?),
                Op::RemoveOutbox(id) => batch.remove(key(PREFIX_OUTBOX, id)),
                Op::PutSession { peer_id, pickle } => {
                    batch.insert(key(PREFIX_SESSION, peer_id.as_bytes()), enc(pickle)?)
                }
                Op::PutContactRequest(r) => {
                    batch.insert(key(PREFIX_REQUEST, r.peer_id.as_bytes()), enc(r)?)
                }
                Op::RemoveContactRequest(p) => batch.remove(key(PREFIX_REQUEST, p.as_bytes())),
                Op::PutReplay(b) => batch.insert(KEY_REPLAY, enc(b)?),
                Op::MarkSeen(id) => batch.insert(key(PREFIX_SEEN, id), &[][..]),
                Op::PutHeld(h) => {
                    batch.insert(numbered_key(PREFIX_HELD, &h.message.peer, h.n), enc(h)?)
                }
                Op::RemoveHeld { peer, n } => batch.remove(numbered_key(PREFIX_HELD, peer, *n)),
                Op::PutOwnMailbox(m) => batch.insert(key(PREFIX_OWN_MAILBOX, &m.mailbox), enc(m)?),
                Op::RemoveOwnMailbox(id) => batch.remove(key(PREFIX_OWN_MAILBOX, id)),
                Op::PutContactMailboxes(c) => {
                    batch.insert(key(PREFIX_CONTACT_MAILBOXES, c.phone.as_bytes()), enc(c)?)
                }
                Op::PutDeposit(d) => batch.insert(deposit_key(&d.id, &d.mailbox), enc(d)?),
                Op::RemoveDeposit(id, mailbox) => batch.remove(deposit_key(id, mailbox)),
                Op::PutAttachment(a) => batch.insert(key(PREFIX_ATTACHMENT, &a.id), enc(a)?),
                Op::RemoveAttachment(id) => batch.remove(key(PREFIX_ATTACHMENT, id)),
                Op::PutGroupSync(g) => batch.insert(key(PREFIX_GROUP_SYNC, &g.id.0), enc(g)?),
                Op::RemoveGroupSync(id) => batch.remove(key(PREFIX_GROUP_SYNC, &id.0)),
                Op::PutGroupMessage(m) => batch.insert(key(PREFIX_GROUP_MESSAGE, &m.id), enc(m)?),
                Op::PutUpload(u) => batch.insert(key(PREFIX_UPLOAD, &u.id), enc(u)?),
                Op::RemoveUpload(id) => batch.remove(key(PREFIX_UPLOAD, id)),
                Op::PutLocation(l) => batch.insert(key(PREFIX_LOCATION, &l.id), enc(l)?),
                Op::PutPosition(p) => batch.insert(KEY_POSITION, enc(p)?),
                Op::MarkForwarded(id) => batch.insert(key(PREFIX_FORWARDED, id), &[][..]),
            }
        }
        self.db.stage(batch)?;
        Ok(())
    }
}

/// An outbox entry of schemas 1 and 2: a sealed request frame, or nothing yet for a text that
/// was not sealed yet.
#[derive(serde::Serialize, serde::Deserialize)]
struct OutboxEntryV2 {
    id: [u8; 16],
    peer_id: String,
    envelope: Vec<u8>,
    attempts: u32,
    next_attempt_ms: u64,
}

/// Schema 2 to 3: outbox entries are encrypted at every attempt instead of sealed once. A frame
/// already sealed is kept and sent as it is; a text not sealed yet gets its sender number now,
/// in the conversation's order, after those already given out.
fn migrate_v2_to_v3(db: &sled::Db) -> Result<()> {
    let corrupt = |k: &[u8], source| StoreError::Corrupt {
        key: String::from_utf8_lossy(k).into_owned(),
        source,
    };
    let mut batch = sled::Batch::default();
    // phone -> (seq, entry) of the texts waiting to be numbered.
    let mut texts: std::collections::BTreeMap<String, Vec<(u64, OutboxEntryV2)>> =
        Default::default();
    for kv in db.scan_prefix(PREFIX_OUTBOX) {
        let (k, v) = kv?;
        let old: OutboxEntryV2 = decode(&v).map_err(|e| corrupt(&k, e))?;
        if !old.envelope.is_empty() {
            let new = OutboxEntry {
                id: old.id,
                peer_id: old.peer_id,
                payload: OutboxPayload::Sealed(old.envelope),
                attempts: old.attempts,
                next_attempt_ms: old.next_attempt_ms,
            };
            batch.insert(k, enc(&new)?);
            continue;
        }
        let message = match db.get(key(PREFIX_MESSAGE_ID, &old.id))? {
            Some(mk) => match db.get(&mk)? {
                Some(v) => Some(decode::<MessageRecord>(&v).map_err(|e| corrupt(&mk, e))?),
                None => None,
            },
            None => None,
        };
        match message {
            Some(m) => texts.entry(m.peer).or_default().push((m.seq, old)),
            // Nothing left to send.
            None => batch.remove(k),
        }
    }
    for (phone, mut entries) in texts {
        let ck = key(PREFIX_CONVERSATION, phone.as_bytes());
        let mut conv: ConversationRecord = match db.get(&ck)? {
            Some(v) => decode(&v).map_err(|e| corrupt(&ck, e))?,
            None => ConversationRecord {
                peer: phone.clone(),
                ..ConversationRecord::default()
            },
        };
        entries.sort_by_key(|(seq, _)| *seq);
        for (_, old) in entries {
            conv.sent_n += 1;
            let new = OutboxEntry {
                id: old.id,
                peer_id: old.peer_id,
                payload: OutboxPayload::Text { n: conv.sent_n },
                attempts: old.attempts,
                next_attempt_ms: old.next_attempt_ms,
            };
            batch.insert(key(PREFIX_OUTBOX, &new.id), enc(&new)?);
        }
        batch.insert(ck, enc(&conv)?);
    }
    batch.insert(KEY_SCHEMA, encode(&3u32).map_err(StoreError::Encode)?);
    db.apply_batch(batch)?;
    db.flush()?;
    Ok(())
}

/// Schema 1 to 2: conversations gained the sender-order counters (`sent_n`, `shown_n`, both
/// 0); texts sealed under schema 1 (without a sender number) are unsealed so they are sealed
/// again in the new format; the contact peer index is built.
fn migrate_v1_to_v2(db: &sled::Db) -> Result<()> {
    #[derive(serde::Deserialize)]
    struct ConversationV1 {
        peer: String,
        next_seq: u64,
        unread: u32,
        last_activity_ms: u64,
    }
    let corrupt = |k: &[u8], source| StoreError::Corrupt {
        key: String::from_utf8_lossy(k).into_owned(),
        source,
    };
    let mut batch = sled::Batch::default();
    for kv in db.scan_prefix(PREFIX_CONVERSATION) {
        let (k, v) = kv?;
        let old: ConversationV1 = decode(&v).map_err(|e| corrupt(&k, e))?;
        let new = ConversationRecord {
            peer: old.peer,
            next_seq: old.next_seq,
            unread: old.unread,
            last_activity_ms: old.last_activity_ms,
            sent_n: 0,
            shown_n: 0,
        };
        batch.insert(k, enc(&new)?);
    }
    for kv in db.scan_prefix(PREFIX_OUTBOX) {
        let (k, v) = kv?;
        let mut e: OutboxEntryV2 = decode(&v).map_err(|e| corrupt(&k, e))?;
        if !e.envelope.is_empty() && db.contains_key(key(PREFIX_MESSAGE_ID, &e.id))? {
            e.envelope.clear();
            batch.insert(k, enc(&e)?);
        }
    }
    for kv in db.scan_prefix(PREFIX_CONTACT) {
        let (k, v) = kv?;
        let c: ContactRecord = decode(&v).map_err(|e| corrupt(&k, e))?;
        if let Some(p) = &c.peer_id {
            batch.insert(contact_peer_key(p, &c.phone), &[][..]);
        }
    }
    batch.insert(KEY_SCHEMA, encode(&2u32).map_err(StoreError::Encode)?);
    db.apply_batch(batch)?;
    db.flush()?;
    Ok(())
}
