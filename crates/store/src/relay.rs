//! A relay's database: mailboxes and the sealed envelopes deposited in them, with an index by
//! deletion hash (purges) and expiry marks by deposit time (one per mailbox and second, not one
//! per envelope). Like [`crate::Store`], writes are batches of [`RelayOp`]s applied atomically;
//! [`RelayStore::apply`] flushes before returning, so a relay acks a deposit only once it is
//! on disk. Counters (per mailbox and in total) are kept by the caller in the same batch as
//! the envelopes they count.
//!
//! Writes do not read: a sled insert costs tens of microseconds here, and a relay writes one
//! envelope key and one deletion-hash key per deposit, so the caller says what an envelope's
//! index entries are when it removes one (it has just read them with
//! [`RelayStore::envelope_metas`]), and puts envelopes only under unused sequence numbers.
//!
//! Nothing here identifies a person: keys are mailbox public keys, sequence numbers and hashes.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use instaconnect_wire::records::{MailboxRecord, RelayEnvelope, RelayEnvelopeMeta, RelayTotals};
use instaconnect_wire::{decode, encode};

use crate::buffered::{Buffered, Writes};
use crate::{Result, StoreError};

/// A mailbox id: the owner's public key for it.
pub type MailboxId = [u8; 32];

/// Expiry marks group deposits by mailbox and by this much deposit time: an envelope expires
/// at most this late.
pub const EXPIRY_BUCKET_MS: u64 = 1_000;

/// The expiry bucket (its first millisecond) of a deposit at `at_ms`.
pub fn expiry_bucket(at_ms: u64) -> u64 {
    at_ms - at_ms % EXPIRY_BUCKET_MS
}

#[derive(Clone, Debug, PartialEq)]
pub enum RelayOp {
    PutMailbox(MailboxId, MailboxRecord),
    /// Removes the mailbox record (its envelopes are removed by their own ops).
    RemoveMailbox(MailboxId),
    /// Stores an envelope under a sequence number not in use, with its deletion-hash entry
    /// and the expiry mark of its mailbox and deposit second. (Over a held envelope, the old
    /// one's deletion-hash entry stays: remove it first.)
    PutEnvelope {
        mailbox: MailboxId,
        seq: u64,
        envelope: RelayEnvelope,
    },
    /// Removes an envelope (no-op if absent) and the deletion-hash entry for
    /// `deletion_hash`, which must be the hash it was put with. Expiry marks stay.
    RemoveEnvelope {
        mailbox: MailboxId,
        seq: u64,
        deletion_hash: [u8; 32],
    },
    /// Drops an expiry mark (the relay has expired what it marks).
    RemoveExpiryMark {
        bucket_ms: u64,
        mailbox: MailboxId,
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
    /// The headers of up to `limit` envelopes of a mailbox with `after < seq <= through`,
    /// oldest first (their bytes are not copied).
    fn envelope_metas(
        &self,
        id: &MailboxId,
        after: u64,
        through: u64,
        limit: usize,
    ) -> Result<Vec<(u64, RelayEnvelopeMeta)>>;
    /// Where the envelopes deposited with this deletion hash are (usually one).
    fn by_deletion_hash(&self, hash: &[u8; 32]) -> Result<Vec<(MailboxId, u64)>>;
    /// Up to `limit` expiry marks, oldest first: (bucket, mailbox) says the mailbox took a
    /// deposit in the [`EXPIRY_BUCKET_MS`] from `bucket` (it may have been removed since).
    fn expiry_marks(&self, limit: usize) -> Result<Vec<(u64, MailboxId)>>;
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
/// 2: expiry marks per mailbox and second (`ttl/`) instead of a key per envelope (`exp/`).
const RELAY_SCHEMA: u32 = 2;
const KEY_TOTALS: &[u8] = b"totals";
const P_MAILBOX: &[u8] = b"mbox/";
const P_ENVELOPE: &[u8] = b"env/";
const P_DELETION: &[u8] = b"del/";
/// Schema 1's expiry index: `exp/<deposited at><mailbox><seq>`, one per envelope.
const P_EXPIRY_V1: &[u8] = b"exp/";
const P_EXPIRY_MARK: &[u8] = b"ttl/";
/// Keys moved per batch while migrating.
const MIGRATION_BATCH: usize = 65_536;

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

fn mark_key(bucket: u64, m: &MailboxId) -> Vec<u8> {
    k(P_EXPIRY_MARK, &[&bucket.to_be_bytes(), m])
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
                if found < 2 {
                    migrate_expiry_marks(&db)?;
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

/// Schema 1 to 2: each `exp/` key becomes the mark of its mailbox and second, in batches (a
/// crash in between leaves marks and old keys that the next open finishes moving), then the
/// schema number changes.
fn migrate_expiry_marks(db: &sled::Db) -> Result<()> {
    loop {
        let mut batch = sled::Batch::default();
        let mut n = 0;
        for kv in db.scan_prefix(P_EXPIRY_V1).take(MIGRATION_BATCH) {
            let (key, _) = kv?;
            let rest = &key[P_EXPIRY_V1.len()..];
            if let (Some(at), Some((m, _))) = (
                rest.get(..8)
                    .and_then(|b| b.try_into().ok())
                    .map(u64::from_be_bytes),
                rest.get(8..).and_then(location),
            ) {
                batch.insert(mark_key(expiry_bucket(at), &m), &[][..]);
            }
            batch.remove(key);
            n += 1;
        }
        if n == 0 {
            break;
        }
        db.apply_batch(batch)?;
    }
    db.insert(KEY_SCHEMA, enc(&RELAY_SCHEMA)?)?;
    db.flush()?;
    Ok(())
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

    fn envelope_metas(
        &self,
        id: &MailboxId,
        after: u64,
        through: u64,
        limit: usize,
    ) -> Result<Vec<(u64, RelayEnvelopeMeta)>> {
        if through <= after {
            return Ok(Vec::new());
        }
        let start = env_key(id, after.saturating_add(1));
        let end = env_key(id, through);
        self.db
            .range_map(start..=end, limit, |key, v| {
                let seq = location(&key[P_ENVELOPE.len()..]).map_or(0, |(_, s)| s);
                RelayEnvelope::decode_meta(v)
                    .map(|m| (seq, m))
                    .map_err(|source| StoreError::Corrupt {
                        key: String::from_utf8_lossy(key).into_owned(),
                        source,
                    })
            })?
            .into_iter()
            .collect()
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

    fn expiry_marks(&self, limit: usize) -> Result<Vec<(u64, MailboxId)>> {
        let marks = self.db.range_map(
            P_EXPIRY_MARK.to_vec()..k(P_EXPIRY_MARK, &[&[0xff; 41]]),
            limit,
            |key, _| {
                let rest = &key[P_EXPIRY_MARK.len()..];
                let bucket = rest
                    .get(..8)
                    .and_then(|b| b.try_into().ok())
                    .map(u64::from_be_bytes)?;
                let m: MailboxId = rest.get(8..40)?.try_into().ok()?;
                Some((bucket, m))
            },
        )?;
        Ok(marks.into_iter().flatten().collect())
    }

    fn totals(&self) -> Result<RelayTotals> {
        Ok(self.get(KEY_TOTALS)?.unwrap_or_default())
    }

    fn apply_deferred(&self, ops: Vec<RelayOp>) -> Result<()> {
        let mut batch = Writes::default();
        for op in ops {
            match op {
                RelayOp::PutMailbox(id, r) => batch.insert(k(P_MAILBOX, &[&id]), enc(&r)?),
                RelayOp::RemoveMailbox(id) => batch.remove(k(P_MAILBOX, &[&id])),
                RelayOp::PutEnvelope {
                    mailbox,
                    seq,
                    envelope,
                } => {
                    batch.insert(del_key(&envelope.deletion_hash, &mailbox, seq), &[][..]);
                    batch.insert(
                        mark_key(expiry_bucket(envelope.deposited_at_ms), &mailbox),
                        &[][..],
                    );
                    batch.insert_owned(env_key(&mailbox, seq), enc(&envelope)?);
                }
                RelayOp::RemoveEnvelope {
                    mailbox,
                    seq,
                    deletion_hash,
                } => {
                    batch.remove(del_key(&deletion_hash, &mailbox, seq));
                    batch.remove(env_key(&mailbox, seq));
                }
                RelayOp::RemoveExpiryMark { bucket_ms, mailbox } => {
                    batch.remove(mark_key(bucket_ms, &mailbox));
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
    marks: BTreeSet<(u64, MailboxId)>,
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

    fn envelope_metas(
        &self,
        id: &MailboxId,
        after: u64,
        through: u64,
        limit: usize,
    ) -> Result<Vec<(u64, RelayEnvelopeMeta)>> {
        if through <= after {
            return Ok(Vec::new());
        }
        Ok(self
            .lock()
            .envelopes
            .range((*id, after + 1)..=(*id, through))
            .take(limit)
            .map(|((_, s), e)| {
                (
                    *s,
                    RelayEnvelopeMeta {
                        deposited_at_ms: e.deposited_at_ms,
                        deletion_hash: e.deletion_hash,
                        len: e.envelope.len() as u64,
                    },
                )
            })
            .collect())
    }

    fn by_deletion_hash(&self, hash: &[u8; 32]) -> Result<Vec<(MailboxId, u64)>> {
        Ok(self
            .lock()
            .deletion
            .range((*hash, [0; 32], 0)..=(*hash, [0xff; 32], u64::MAX))
            .map(|(_, m, s)| (*m, *s))
            .collect())
    }

    fn expiry_marks(&self, limit: usize) -> Result<Vec<(u64, MailboxId)>> {
        Ok(self.lock().marks.iter().take(limit).copied().collect())
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
                    s.deletion.insert((envelope.deletion_hash, mailbox, seq));
                    s.marks
                        .insert((expiry_bucket(envelope.deposited_at_ms), mailbox));
                    s.envelopes.insert((mailbox, seq), envelope);
                }
                RelayOp::RemoveEnvelope {
                    mailbox,
                    seq,
                    deletion_hash,
                } => {
                    s.envelopes.remove(&(mailbox, seq));
                    s.deletion.remove(&(deletion_hash, mailbox, seq));
                }
                RelayOp::RemoveExpiryMark { bucket_ms, mailbox } => {
                    s.marks.remove(&(bucket_ms, mailbox));
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
    fn a_schema_1_database_gets_expiry_marks_for_its_envelopes() {
        let dir = tempfile::tempdir().unwrap();
        let e = |at: u64| RelayEnvelope {
            deposited_at_ms: at,
            deletion_hash: [at as u8; 32],
            envelope: vec![1; 10],
        };
        {
            let db = sled::Config::new().path(dir.path()).open().unwrap();
            db.insert(KEY_SCHEMA, encode(&1u32).unwrap()).unwrap();
            for (m, seq, at) in [(1u8, 1u64, 1_500u64), (1, 2, 1_700), (2, 1, 9_000)] {
                let m = [m; 32];
                db.insert(env_key(&m, seq), encode(&e(at)).unwrap())
                    .unwrap();
                db.insert(del_key(&[at as u8; 32], &m, seq), &[][..])
                    .unwrap();
                db.insert(
                    k(P_EXPIRY_V1, &[&at.to_be_bytes(), &m, &seq.to_be_bytes()]),
                    &[][..],
                )
                .unwrap();
            }
            db.flush().unwrap();
        }
        let s = SledRelayStore::open(dir.path()).unwrap();
        assert_eq!(
            s.expiry_marks(10).unwrap(),
            vec![(1_000, [1; 32]), (9_000, [2; 32])]
        );
        assert_eq!(s.db.scan_prefix(P_EXPIRY_V1, 10).unwrap(), Vec::new());
        assert_eq!(s.envelope(&[2; 32], 1).unwrap(), Some(e(9_000)));
        drop(s);
        let s = SledRelayStore::open(dir.path()).unwrap();
        assert_eq!(s.expiry_marks(10).unwrap().len(), 2);
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
