//! A relay's database: mailboxes and the sealed envelopes deposited in them, with an index by
//! deletion hash (purges) and by deposit time (expiry). Like [`crate::Store`], writes are
//! batches of [`RelayOp`]s applied atomically; [`RelayStore::apply`] flushes before returning,
//! so a relay acks a deposit only once it is on disk. Counters (per mailbox and in total) are
//! kept by the caller in the same batch as the envelopes they count.
//!
//! Nothing here identifies a person: keys are mailbox public keys, sequence numbers and hashes.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use instaconnect_wire::records::{MailboxRecord, RelayEnvelope, RelayTotals};
use instaconnect_wire::{decode, encode};

use crate::buffered::{Buffered, Writes};
use crate::{Result, StoreError};

/// A mailbox id: the owner's public key for it.
pub type MailboxId = [u8; 32];

#[derive(Clone, Debug, PartialEq)]
pub enum RelayOp {
    PutMailbox(MailboxId, MailboxRecord),
    /// Removes the mailbox record (its envelopes are removed by their own ops).
    RemoveMailbox(MailboxId),
    PutEnvelope {
        mailbox: MailboxId,
        seq: u64,
        envelope: RelayEnvelope,
    },
    /// Removes an envelope and its index entries (no-op if absent).
    RemoveEnvelope {
        mailbox: MailboxId,
        seq: u64,
    },
    PutTotals(RelayTotals),
}

pub trait RelayStore: Send + Sync {
    fn mailbox(&self, id: &MailboxId) -> Result<Option<MailboxRecord>>;
    /// Up to `limit` envelopes of a mailbox with sequence > `after`, oldest first.
    fn envelopes(
        &self,
        id: &MailboxId,
        after: u64,
        limit: usize,
    ) -> Result<Vec<(u64, RelayEnvelope)>>;
    fn envelope(&self, id: &MailboxId, seq: u64) -> Result<Option<RelayEnvelope>>;
    /// Where the envelopes deposited with this deletion hash are (usually one).
    fn by_deletion_hash(&self, hash: &[u8; 32]) -> Result<Vec<(MailboxId, u64)>>;
    /// Up to `limit` envelopes deposited before `before_ms`, oldest first.
    fn deposited_before(&self, before_ms: u64, limit: usize) -> Result<Vec<(MailboxId, u64)>>;
    fn totals(&self) -> Result<RelayTotals>;
    /// Applies the batch atomically; durable after the next [`RelayStore::flush`].
    fn apply_deferred(&self, ops: Vec<RelayOp>) -> Result<()>;
    fn flush(&self) -> Result<()>;
    /// Applies the batch atomically and durably.
    fn apply(&self, ops: Vec<RelayOp>) -> Result<()> {
        self.apply_deferred(ops)?;
        self.flush()
    }
}

const KEY_SCHEMA: &[u8] = b"meta/relay-schema";
const RELAY_SCHEMA: u32 = 1;
const KEY_TOTALS: &[u8] = b"totals";
const P_MAILBOX: &[u8] = b"mbox/";
const P_ENVELOPE: &[u8] = b"env/";
const P_DELETION: &[u8] = b"del/";
const P_EXPIRY: &[u8] = b"exp/";

fn k(prefix: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    let mut v = prefix.to_vec();
    for p in parts {
        v.extend_from_slice(p);
    }
    v
}

fn env_key(m: &MailboxId, seq: u64) -> Vec<u8> {
    k(P_ENVELOPE, &[m, &seq.to_be_bytes()])
}

fn del_key(hash: &[u8; 32], m: &MailboxId, seq: u64) -> Vec<u8> {
    k(P_DELETION, &[hash, m, &seq.to_be_bytes()])
}

fn exp_key(at: u64, m: &MailboxId, seq: u64) -> Vec<u8> {
    k(P_EXPIRY, &[&at.to_be_bytes(), m, &seq.to_be_bytes()])
}

/// (mailbox, seq) as stored in index values and keys.
fn location(bytes: &[u8]) -> Option<(MailboxId, u64)> {
    let m: MailboxId = bytes.get(..32)?.try_into().ok()?;
    let seq = u64::from_be_bytes(bytes.get(32..40)?.try_into().ok()?);
    Some((m, seq))
}

/// sled's log segment size for a new relay database. sled rewrites a segment's live pages
/// elsewhere only once at most half of it is live; with its default of 512 KiB, a relay
/// that keeps depositing and deleting 1 KiB envelopes ends up with many half-dead segments
/// (9× the live data after 100,000 deposit+delete cycles beside 100,000 held, in a
/// store-only test; 3.1× with 8 MiB). sled allows at most 16 MiB.
pub const RELAY_SEGMENT_BYTES: usize = 8 * 1024 * 1024;
/// The segment size of relay databases made before [`RELAY_SEGMENT_BYTES`] (sled's default).
pub const LEGACY_SEGMENT_BYTES: usize = 512 * 1024;
/// sled's page cache for the relay database (sled's default is 1 GiB, which a relay holding
/// a million envelopes would fill). Envelopes are read about once (fetch), so a large
/// cache buys little.
pub const RELAY_CACHE_BYTES: u64 = 64 * 1024 * 1024;

fn open_sled(dir: &Path, segment_size: usize) -> sled::Result<sled::Db> {
    sled::Config::new()
        .path(dir)
        .segment_size(segment_size)
        .cache_capacity(RELAY_CACHE_BYTES)
        .open()
}

/// The relay database on disk. Deferred writes wait in memory for the next flush (see
/// [`crate::buffered`]): one sled batch per commit instead of one per deposit.
#[derive(Clone)]
pub struct SledRelayStore {
    db: Buffered,
}

impl SledRelayStore {
    /// Opens (or creates) the relay database in `dir`.
    pub fn open(dir: &Path) -> Result<SledRelayStore> {
        let path = dir.display().to_string();
        let db = match open_sled(dir, RELAY_SEGMENT_BYTES) {
            // A database made before RELAY_SEGMENT_BYTES keeps the segment size it was made
            // with (sled refuses to change it).
            Err(sled::Error::Unsupported(why)) if why.contains("io buffer size") => {
                open_sled(dir, LEGACY_SEGMENT_BYTES)
            }
            r => r,
        }
        .map_err(|e| crate::sled_store::open_error(e, &path))?;
        match db.get(KEY_SCHEMA)? {
            Some(v) => {
                let found: u32 = decode(&v).map_err(|source| StoreError::Corrupt {
                    key: "meta/relay-schema".into(),
                    source,
                })?;
                if found > RELAY_SCHEMA {
                    return Err(StoreError::NewerSchema {
                        path,
                        found,
                        supported: RELAY_SCHEMA,
                    });
                }
            }
            None => {
                if !db.is_empty() {
                    return Err(StoreError::Unversioned { path });
                }
                db.insert(
                    KEY_SCHEMA,
                    encode(&RELAY_SCHEMA).map_err(StoreError::Encode)?,
                )?;
                db.flush()?;
            }
        }
        Ok(SledRelayStore {
            db: Buffered::new(db),
        })
    }

    fn get<T: serde::de::DeserializeOwned>(&self, key: &[u8]) -> Result<Option<T>> {
        match self.db.get(key)? {
            None => Ok(None),
            Some(v) => decode(&v).map(Some).map_err(|source| StoreError::Corrupt {
                key: String::from_utf8_lossy(key).into_owned(),
                source,
            }),
        }
    }
}

fn enc<T: serde::Serialize>(v: &T) -> Result<Vec<u8>> {
    encode(v).map_err(StoreError::Encode)
}

impl RelayStore for SledRelayStore {
    fn mailbox(&self, id: &MailboxId) -> Result<Option<MailboxRecord>> {
        self.get(&k(P_MAILBOX, &[id]))
    }

    fn envelopes(
        &self,
        id: &MailboxId,
        after: u64,
        limit: usize,
    ) -> Result<Vec<(u64, RelayEnvelope)>> {
        let start = env_key(id, after.saturating_add(1));
        let end = env_key(id, u64::MAX);
        let mut out = Vec::new();
        for (key, v) in self.db.range(start..=end, limit)? {
            let seq = location(&key[P_ENVELOPE.len()..]).map_or(0, |(_, s)| s);
            let e = decode(&v).map_err(|source| StoreError::Corrupt {
                key: String::from_utf8_lossy(&key).into_owned(),
                source,
            })?;
            out.push((seq, e));
        }
        Ok(out)
    }

    fn envelope(&self, id: &MailboxId, seq: u64) -> Result<Option<RelayEnvelope>> {
        self.get(&env_key(id, seq))
    }

    fn by_deletion_hash(&self, hash: &[u8; 32]) -> Result<Vec<(MailboxId, u64)>> {
        let prefix = k(P_DELETION, &[hash]);
        let mut out = Vec::new();
        for (key, _) in self.db.scan_prefix(&prefix, usize::MAX)? {
            if let Some(l) = location(&key[prefix.len()..]) {
                out.push(l);
            }
        }
        Ok(out)
    }

    fn deposited_before(&self, before_ms: u64, limit: usize) -> Result<Vec<(MailboxId, u64)>> {
        let end = k(P_EXPIRY, &[&before_ms.to_be_bytes()]);
        let mut out = Vec::new();
        for (key, _) in self.db.range(P_EXPIRY.to_vec()..end, limit)? {
            if let Some(l) = key.get(P_EXPIRY.len() + 8..).and_then(location) {
                out.push(l);
            }
        }
        Ok(out)
    }

    fn totals(&self) -> Result<RelayTotals> {
        Ok(self.get(KEY_TOTALS)?.unwrap_or_default())
    }

    fn apply_deferred(&self, ops: Vec<RelayOp>) -> Result<()> {
        let mut batch = Writes::default();
        // Envelopes put earlier in this batch, so a later remove finds their index keys.
        let mut put: BTreeMap<(MailboxId, u64), RelayEnvelope> = BTreeMap::new();
        for op in ops {
            match op {
                RelayOp::PutMailbox(id, r) => batch.insert(k(P_MAILBOX, &[&id]), enc(&r)?),
                RelayOp::RemoveMailbox(id) => batch.remove(k(P_MAILBOX, &[&id])),
                RelayOp::PutEnvelope {
                    mailbox,
                    seq,
                    envelope,
                } => {
                    // Replacing an envelope: drop the old one's index entries first.
                    let old = match put.remove(&(mailbox, seq)) {
                        Some(e) => Some(e),
                        None => self.envelope(&mailbox, seq)?,
                    };
                    if let Some(old) = old {
                        batch.remove(del_key(&old.deletion_hash, &mailbox, seq));
                        batch.remove(exp_key(old.deposited_at_ms, &mailbox, seq));
                    }
                    batch.insert(del_key(&envelope.deletion_hash, &mailbox, seq), &[][..]);
                    batch.insert(exp_key(envelope.deposited_at_ms, &mailbox, seq), &[][..]);
                    batch.insert(env_key(&mailbox, seq), enc(&envelope)?);
                    put.insert((mailbox, seq), envelope);
                }
                RelayOp::RemoveEnvelope { mailbox, seq } => {
                    let old = match put.remove(&(mailbox, seq)) {
                        Some(e) => Some(e),
                        None => self.envelope(&mailbox, seq)?,
                    };
                    if let Some(old) = old {
                        batch.remove(del_key(&old.deletion_hash, &mailbox, seq));
                        batch.remove(exp_key(old.deposited_at_ms, &mailbox, seq));
                    }
                    batch.remove(env_key(&mailbox, seq));
                }
                RelayOp::PutTotals(t) => batch.insert(KEY_TOTALS, enc(&t)?),
            }
        }
        self.db.stage(batch)?;
        Ok(())
    }

    fn flush(&self) -> Result<()> {
        self.db.flush()?;
        Ok(())
    }
}

#[derive(Default)]
struct MemState {
    mailboxes: BTreeMap<MailboxId, MailboxRecord>,
    envelopes: BTreeMap<(MailboxId, u64), RelayEnvelope>,
    deletion: BTreeSet<([u8; 32], MailboxId, u64)>,
    expiry: BTreeSet<(u64, MailboxId, u64)>,
    totals: RelayTotals,
}

/// The in-memory twin of [`SledRelayStore`], for the simulator and tests.
#[derive(Default)]
pub struct MemRelayStore {
    state: Mutex<MemState>,
}

impl MemRelayStore {
    pub fn new() -> MemRelayStore {
        MemRelayStore::default()
    }

    fn lock(&self) -> MutexGuard<'_, MemState> {
        // Every operation is infallible, so a poisoned lock still guards consistent state.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl RelayStore for MemRelayStore {
    fn mailbox(&self, id: &MailboxId) -> Result<Option<MailboxRecord>> {
        Ok(self.lock().mailboxes.get(id).cloned())
    }

    fn envelopes(
        &self,
        id: &MailboxId,
        after: u64,
        limit: usize,
    ) -> Result<Vec<(u64, RelayEnvelope)>> {
        Ok(self
            .lock()
            .envelopes
            .range((*id, after.saturating_add(1))..=(*id, u64::MAX))
            .take(limit)
            .map(|((_, s), e)| (*s, e.clone()))
            .collect())
    }

    fn envelope(&self, id: &MailboxId, seq: u64) -> Result<Option<RelayEnvelope>> {
        Ok(self.lock().envelopes.get(&(*id, seq)).cloned())
    }

    fn by_deletion_hash(&self, hash: &[u8; 32]) -> Result<Vec<(MailboxId, u64)>> {
        Ok(self
            .lock()
            .deletion
            .range((*hash, [0; 32], 0)..=(*hash, [0xff; 32], u64::MAX))
            .map(|(_, m, s)| (*m, *s))
            .collect())
    }

    fn deposited_before(&self, before_ms: u64, limit: usize) -> Result<Vec<(MailboxId, u64)>> {
        Ok(self
            .lock()
            .expiry
            .range(..(before_ms, [0; 32], 0))
            .take(limit)
            .map(|(_, m, s)| (*m, *s))
            .collect())
    }

    fn totals(&self) -> Result<RelayTotals> {
        Ok(self.lock().totals)
    }

    fn apply_deferred(&self, ops: Vec<RelayOp>) -> Result<()> {
        let mut s = self.lock();
        for op in ops {
            match op {
                RelayOp::PutMailbox(id, r) => {
                    s.mailboxes.insert(id, r);
                }
                RelayOp::RemoveMailbox(id) => {
                    s.mailboxes.remove(&id);
                }
                RelayOp::PutEnvelope {
                    mailbox,
                    seq,
                    envelope,
                } => {
                    if let Some(old) = s.envelopes.remove(&(mailbox, seq)) {
                        s.deletion.remove(&(old.deletion_hash, mailbox, seq));
                        s.expiry.remove(&(old.deposited_at_ms, mailbox, seq));
                    }
                    s.deletion.insert((envelope.deletion_hash, mailbox, seq));
                    s.expiry.insert((envelope.deposited_at_ms, mailbox, seq));
                    s.envelopes.insert((mailbox, seq), envelope);
                }
                RelayOp::RemoveEnvelope { mailbox, seq } => {
                    if let Some(old) = s.envelopes.remove(&(mailbox, seq)) {
                        s.deletion.remove(&(old.deletion_hash, mailbox, seq));
                        s.expiry.remove(&(old.deposited_at_ms, mailbox, seq));
                    }
                }
                RelayOp::PutTotals(t) => s.totals = t,
            }
        }
        Ok(())
    }

    fn flush(&self) -> Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mailbox_record() -> MailboxRecord {
        MailboxRecord {
            created_at_ms: 1,
            next_seq: 2,
            count: 0,
            bytes: 0,
        }
    }

    #[test]
    fn a_database_made_with_the_old_segment_size_still_opens_and_keeps_its_data() {
        let dir = tempfile::tempdir().unwrap();
        {
            // As SledRelayStore::open made it before RELAY_SEGMENT_BYTES: sled's defaults.
            let db = sled::Config::new().path(dir.path()).open().unwrap();
            db.insert(KEY_SCHEMA, encode(&RELAY_SCHEMA).unwrap())
                .unwrap();
            db.insert(
                k(P_MAILBOX, &[&[7; 32]]),
                encode(&mailbox_record()).unwrap(),
            )
            .unwrap();
            db.flush().unwrap();
        }
        let s = SledRelayStore::open(dir.path()).unwrap();
        assert_eq!(s.mailbox(&[7; 32]).unwrap(), Some(mailbox_record()));
        s.apply(vec![RelayOp::PutMailbox([8; 32], mailbox_record())])
            .unwrap();
        drop(s);
        let s = SledRelayStore::open(dir.path()).unwrap();
        assert_eq!(s.mailbox(&[8; 32]).unwrap(), Some(mailbox_record()));
    }

    #[test]
    fn a_new_database_gets_the_relay_segment_size_and_reopens() {
        let dir = tempfile::tempdir().unwrap();
        let s = SledRelayStore::open(dir.path()).unwrap();
        s.apply(vec![RelayOp::PutMailbox([9; 32], mailbox_record())])
            .unwrap();
        drop(s);
        // sled refuses another segment size for it: it was made with the relay's.
        let other = sled::Config::new()
            .path(dir.path())
            .segment_size(LEGACY_SEGMENT_BYTES)
            .open();
        assert!(
            matches!(other, Err(sled::Error::Unsupported(_))),
            "{other:?}"
        );
        let s = SledRelayStore::open(dir.path()).unwrap();
        assert_eq!(s.mailbox(&[9; 32]).unwrap(), Some(mailbox_record()));
    }
}
