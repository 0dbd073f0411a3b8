//! `<home>/control.json`: how the CLI finds the running node's control API. The node writes
//! it (mode 0600, atomically) once it listens and removes it when it stops; a node killed
//! with SIGKILL leaves it behind, which the CLI detects (nothing answers) and removes.

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};

/// Largest control file read (it is under 200 bytes).
const MAX_CONTROL_FILE_BYTES: u64 = 4096;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControlInfo {
    /// Port of the control API on 127.0.0.1.
    pub port: u16,
    /// Bearer token: 256 random bits, hex.
    pub token: String,
    /// Process id of the node.
    pub pid: u32,
}

impl ControlInfo {
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

/// Reads the control file: `Ok(None)` if there is none, `Err` if it cannot be read or parsed.
pub fn read(path: &Path) -> anyhow::Result<Option<ControlInfo>> {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    anyhow::ensure!(
        meta.len() <= MAX_CONTROL_FILE_BYTES,
        "{} is too large to be a control file",
        path.display()
    );
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    let info = serde_json::from_slice(&bytes)
        .with_context(|| format!("{} is not a valid control file", path.display()))?;
    Ok(Some(info))
}

/// The control file of this running node; removed when dropped.
pub struct ControlFile {
    path: PathBuf,
}

impl ControlFile {
    /// Writes the file readable only by its owner, via a temporary file and a rename.
    pub fn create(path: PathBuf, info: &ControlInfo) -> anyhow::Result<ControlFile> {
        let bytes = serde_json::to_vec_pretty(info)?;
        crate::files::write_private_atomically(&path, &bytes)
            .with_context(|| format!("cannot write {}", path.display()))?;
        Ok(ControlFile { path })
    }
}

impl Drop for ControlFile {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_file(&self.path) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!("cannot remove {}: {e}", self.path.display());
            }
        }
    }
}
