//! A sled tree with its deferred writes held in memory until the next flush.
//!
//! sled 0.34 writes its IO buffer out on every `apply_batch` (it rolls the buffer before and
//! after each batch to keep batches atomic), which costs a `pwrite` and a `sync_file_range`
//! per batch. Stores that apply many small deferred batches between flushes (the messaging
//! engine, the relay) therefore keep them here instead: reads see them at once, and
//! [`Buffered::flush`] applies them all as one atomic sled batch before flushing to disk.

use std::collections::BTreeMap;
use std::ops::{Bound, RangeBounds};
use std::sync::{Arc, Mutex, MutexGuard};

/// Deferred writes held in memory before they go to sled; beyond it they are applied at once
/// (still not flushed).
pub const MAX_PENDING_WRITES: usize = 16_384;

/// Key-value pairs read back, in key order.
pub(crate) type Entries = Vec<(Vec<u8>, Vec<u8>)>;

/// key -> new value (`None`: removed).
type PendingWrites = BTreeMap<Vec<u8>, Option<Vec<u8>>>;

/// The writes of one deferred batch, in order; later writes to a key win.
#[derive(Default)]
pub(crate) struct Writes(Vec<(Vec<u8>, Option<Vec<u8>>)>);

impl Writes {
    pub(crate) fn insert(&mut self, k: impl AsRef<[u8]>, v: impl AsRef<[u8]>) {
        self.0
            .push((k.as_ref().to_vec(), Some(v.as_ref().to_vec())));
    }

    /// Like [`Writes::insert`], without copying what the caller already owns.
    pub(crate) fn insert_owned(&mut self, k: Vec<u8>, v: Vec<u8>) {
        self.0.push((k, Some(v)));
    }

    pub(crate) fn remove(&mut self, k: impl AsRef<[u8]>) {
        self.0.push((k.as_ref().to_vec(), None));
    }
}

/// A sled database with pending writes in front of it. Clones share both.
#[derive(Clone)]
pub(crate) struct Buffered {
    db: sled::Db,
    pending: Arc<Mutex<PendingWrites>>,
}

impl Buffered {
    pub(crate) fn new(db: sled::Db) -> Buffered {
        Buffered {
            db,
            pending: Arc::default(),
        }
    }

    pub(crate) fn db(&self) -> &sled::Db {
        &self.db
    }

    fn pending(&self) -> MutexGuard<'_, PendingWrites> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The value of `k`, pending writes first.
    pub(crate) fn get(&self, k: &[u8]) -> Result<Option<Vec<u8>>, sled::Error> {
        let pending = self.pending();
        if let Some(v) = pending.get(k) {
            return Ok(v.clone());
        }
        Ok(self.db.get(k)?.map(|v| v.to_vec()))
    }

    /// Up to `limit` entries in `range`, in key order, pending writes applied.
    pub(crate) fn range<R: RangeBounds<Vec<u8>> + Clone>(
        &self,
        range: R,
        limit: usize,
    ) -> Result<Entries, sled::Error> {
        self.range_map(range, limit, |k, v| (k.to_vec(), v.to_vec()))
    }

    /// [`Buffered::range`], with each entry passed through `f` instead of copied.
    pub(crate) fn range_map<R: RangeBounds<Vec<u8>> + Clone, T>(
        &self,
        range: R,
        limit: usize,
        mut f: impl FnMut(&[u8], &[u8]) -> T,
    ) -> Result<Vec<T>, sled::Error> {
        // The lock is held while sled is read, so a flush cannot move writes from one side to
        // the other half way through.
        let pending = self.pending();
        let mut mine = pending.range(range.clone()).peekable();
        let mut stored = self.db.range(range).peekable();
        let mut out = Vec::new();
        while out.len() < limit {
            let next_stored = match stored.peek() {
                Some(Ok((k, _))) => Some(k.to_vec()),
                Some(Err(_)) => {
                    if let Some(Err(e)) = stored.next() {
                        return Err(e);
                    }
                    continue;
                }
                None => None,
            };
            match (mine.peek(), next_stored) {
                (None, None) => break,
                (Some((pk, _)), Some(sk)) if **pk > sk => {
                    if let Some(Ok((k, v))) = stored.next() {
                        out.push(f(&k, &v));
                    }
                }
                (None, Some(_)) => {
                    if let Some(Ok((k, v))) = stored.next() {
                        out.push(f(&k, &v));
                    }
                }
                (Some((pk, _)), sk) => {
                    // The pending write wins over a stored value under the same key.
                    if sk.as_deref() == Some(pk.as_slice()) {
                        stored.next();
                    }
                    if let Some((k, Some(v))) = mine.next() {
                        out.push(f(k, v));
                    }
                }
            }
        }
        Ok(out)
    }

    /// Up to `limit` entries whose key starts with `prefix`.
    pub(crate) fn scan_prefix(&self, prefix: &[u8], limit: usize) -> Result<Entries, sled::Error> {
        // Keys with the prefix sort from the prefix up to (not including) its successor: the
        // prefix with its last byte below 0xff incremented and what follows dropped.
        let mut end = prefix.to_vec();
        while end.last() == Some(&0xff) {
            end.pop();
        }
        let upper = match end.last_mut() {
            Some(b) => {
                *b += 1;
                Bound::Excluded(end)
            }
            None => Bound::Unbounded,
        };
        self.range((Bound::Included(prefix.to_vec()), upper), limit)
    }

    /// Holds a batch of writes in memory (applied to sled at once beyond
    /// [`MAX_PENDING_WRITES`]); durable after the next [`Buffered::flush`].
    pub(crate) fn stage(&self, writes: Writes) -> Result<(), sled::Error> {
        let mut pending = self.pending();
        for (k, v) in writes.0 {
            pending.insert(k, v);
        }
        if pending.len() > MAX_PENDING_WRITES {
            self.apply(&mut pending)?;
        }
        Ok(())
    }

    fn apply(&self, pending: &mut PendingWrites) -> Result<(), sled::Error> {
        if pending.is_empty() {
            return Ok(());
        }
        let mut batch = sled::Batch::default();
        for (k, v) in std::mem::take(pending) {
            match v {
                Some(v) => batch.insert(k, v),
                None => batch.remove(k),
            }
        }
        self.db.apply_batch(batch)
    }

    /// Applies the pending writes as one atomic batch and flushes sled to disk.
    pub(crate) fn flush(&self) -> Result<(), sled::Error> {
        {
            // Held while the batch goes into sled (in memory), so no read misses a write that
            // is neither pending nor in sled yet; released for the slow part, the disk.
            let mut pending = self.pending();
            self.apply(&mut pending)?;
        }
        self.db.flush()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db() -> (tempfile::TempDir, Buffered) {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path()).unwrap();
        (dir, Buffered::new(db))
    }

    #[test]
    fn ranges_merge_pending_writes_over_stored_ones_in_key_order() {
        let (_dir, b) = db();
        let mut w = Writes::default();
        for k in [b"a1", b"a3", b"a5", b"b1"] {
            w.insert(k, k);
        }
        b.stage(w).unwrap();
        b.flush().unwrap();
        let mut w = Writes::default();
        w.insert(b"a2", b"new");
        w.insert(b"a3", b"changed");
        w.remove(b"a5");
        w.insert(b"a\xff", b"last");
        b.stage(w).unwrap();
        let got = b.scan_prefix(b"a", usize::MAX).unwrap();
        let keys: Vec<&[u8]> = got.iter().map(|(k, _)| k.as_slice()).collect();
        assert_eq!(keys, vec![&b"a1"[..], b"a2", b"a3", b"a\xff"]);
        assert_eq!(got[2].1, b"changed");
        assert_eq!(b.scan_prefix(b"a", 2).unwrap().len(), 2);
        assert_eq!(b.get(b"a5").unwrap(), None);
        assert_eq!(b.db().get(b"a5").unwrap().as_deref(), Some(&b"a5"[..]));
        b.flush().unwrap();
        assert_eq!(b.db().get(b"a5").unwrap(), None);
        assert_eq!(b.scan_prefix(b"a", usize::MAX).unwrap(), got);
    }
}
