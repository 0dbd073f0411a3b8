//! The bytes of attachments, beside the database: one blob per message id, written at any
//! offset (chunks arrive in any order) and read back by range.
//!
//! [`DirBlobs`] keeps each blob as a file in a directory of the data dir (a 1 GiB video does
//! not belong in sled's log); [`MemBlobs`] keeps them in memory for tests and the simulator.
//! Ids are message ids, so names are fixed-length hex and never come from the network.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// What can go wrong with a blob.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    #[error("attachment file {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("attachment {id}: {len} bytes at offset {offset} are past its end ({size} bytes)")]
    OutOfRange {
        id: String,
        offset: u64,
        len: usize,
        size: u64,
    },
}

/// Attachment bytes by message id.
pub trait Blobs: Send + Sync {
    /// Writes `bytes` at `offset`, growing the blob as needed.
    fn write_at(&self, id: &[u8; 16], offset: u64, bytes: &[u8]) -> Result<(), BlobError>;
    /// Reads `len` bytes at `offset`; the range must lie within the blob.
    fn read_at(&self, id: &[u8; 16], offset: u64, len: usize) -> Result<Vec<u8>, BlobError>;
    /// The blob's length, or `None` if there is none.
    fn size(&self, id: &[u8; 16]) -> Result<Option<u64>, BlobError>;
    /// Makes what was written durable (before the chunks are recorded as stored).
    fn sync(&self, id: &[u8; 16]) -> Result<(), BlobError>;
    /// Removes the blob (no-op if absent).
    fn remove(&self, id: &[u8; 16]) -> Result<(), BlobError>;
}

fn hex(id: &[u8; 16]) -> String {
    id.iter().map(|b| format!("{b:02x}")).collect()
}

/// Blobs in memory.
#[derive(Default)]
pub struct MemBlobs {
    blobs: Mutex<BTreeMap<[u8; 16], Vec<u8>>>,
}

impl MemBlobs {
    pub fn new() -> MemBlobs {
        MemBlobs::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<[u8; 16], Vec<u8>>> {
        self.blobs.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Blobs for MemBlobs {
    fn write_at(&self, id: &[u8; 16], offset: u64, bytes: &[u8]) -> Result<(), BlobError> {
        let mut blobs = self.lock();
        let b = blobs.entry(*id).or_default();
        let start = offset as usize;
        let end = start + bytes.len();
        if b.len() < end {
            b.resize(end, 0);
        }
        b[start..end].copy_from_slice(bytes);
        Ok(())
    }

    fn read_at(&self, id: &[u8; 16], offset: u64, len: usize) -> Result<Vec<u8>, BlobError> {
        let blobs = self.lock();
        let b = blobs.get(id).map(Vec::as_slice).unwrap_or_default();
        let start = offset as usize;
        b.get(start..start.saturating_add(len))
            .map(<[u8]>::to_vec)
            .ok_or(BlobError::OutOfRange {
                id: hex(id),
                offset,
                len,
                size: b.len() as u64,
            })
    }

    fn size(&self, id: &[u8; 16]) -> Result<Option<u64>, BlobError> {
        Ok(self.lock().get(id).map(|b| b.len() as u64))
    }

    fn sync(&self, _id: &[u8; 16]) -> Result<(), BlobError> {
        Ok(())
    }

    fn remove(&self, id: &[u8; 16]) -> Result<(), BlobError> {
        self.lock().remove(id);
        Ok(())
    }
}

/// Blobs as files in a directory, named by the message id in hex.
pub struct DirBlobs {
    dir: PathBuf,
}

impl DirBlobs {
    /// Blobs under `dir` (created if missing).
    pub fn open(dir: &Path) -> Result<DirBlobs, BlobError> {
        std::fs::create_dir_all(dir).map_err(|source| BlobError::Io {
            path: dir.display().to_string(),
            source,
        })?;
        Ok(DirBlobs {
            dir: dir.to_path_buf(),
        })
    }

    /// Where the blob of `id` lives.
    pub fn path(&self, id: &[u8; 16]) -> PathBuf {
        self.dir.join(hex(id))
    }

    fn io(&self, id: &[u8; 16]) -> impl Fn(std::io::Error) -> BlobError + '_ {
        let path = self.path(id);
        move |source| BlobError::Io {
            path: path.display().to_string(),
            source,
        }
    }
}

impl Blobs for DirBlobs {
    fn write_at(&self, id: &[u8; 16], offset: u64, bytes: &[u8]) -> Result<(), BlobError> {
        let mut f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(self.path(id))
            .map_err(self.io(id))?;
        f.seek(SeekFrom::Start(offset)).map_err(self.io(id))?;
        f.write_all(bytes).map_err(self.io(id))
    }

    fn read_at(&self, id: &[u8; 16], offset: u64, len: usize) -> Result<Vec<u8>, BlobError> {
        let mut f = File::open(self.path(id)).map_err(self.io(id))?;
        let size = f.metadata().map_err(self.io(id))?.len();
        if offset.saturating_add(len as u64) > size {
            return Err(BlobError::OutOfRange {
                id: hex(id),
                offset,
                len,
                size,
            });
        }
        f.seek(SeekFrom::Start(offset)).map_err(self.io(id))?;
        let mut out = vec![0u8; len];
        f.read_exact(&mut out).map_err(self.io(id))?;
        Ok(out)
    }

    fn size(&self, id: &[u8; 16]) -> Result<Option<u64>, BlobError> {
        match std::fs::metadata(self.path(id)) {
            Ok(m) => Ok(Some(m.len())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(self.io(id)(e)),
        }
    }

    fn sync(&self, id: &[u8; 16]) -> Result<(), BlobError> {
        match File::open(self.path(id)) {
            Ok(f) => f.sync_data().map_err(self.io(id)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(self.io(id)(e)),
        }
    }

    fn remove(&self, id: &[u8; 16]) -> Result<(), BlobError> {
        match std::fs::remove_file(self.path(id)) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(self.io(id)(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exercise(b: &dyn Blobs) {
        let id = [7u8; 16];
        assert_eq!(b.size(&id).unwrap(), None);
        // Chunks in any order; the hole reads back as zeros until filled.
        b.write_at(&id, 10, b"world").unwrap();
        b.write_at(&id, 0, b"hello").unwrap();
        assert_eq!(b.size(&id).unwrap(), Some(15));
        assert_eq!(b.read_at(&id, 0, 5).unwrap(), b"hello");
        assert_eq!(b.read_at(&id, 5, 5).unwrap(), vec![0; 5]);
        assert_eq!(b.read_at(&id, 10, 5).unwrap(), b"world");
        assert!(matches!(
            b.read_at(&id, 12, 5),
            Err(BlobError::OutOfRange { size: 15, .. })
        ));
        b.sync(&id).unwrap();
        b.remove(&id).unwrap();
        b.remove(&id).unwrap();
        assert_eq!(b.size(&id).unwrap(), None);
    }

    #[test]
    fn blobs_in_memory_and_on_disk_behave_alike() {
        exercise(&MemBlobs::new());
        let dir = tempfile::tempdir().unwrap();
        let d = DirBlobs::open(&dir.path().join("media")).unwrap();
        exercise(&d);
    }
}
