//! The data directory: `--home`, else `$INSTACONNECT_HOME`, else the platform's data dir.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context};
use instaconnect_store::SledStore;

use crate::Failure;

#[derive(Debug, Clone)]
pub struct Home {
    pub dir: PathBuf,
}

impl Home {
    pub fn resolve(flag: Option<PathBuf>) -> Result<Home, Failure> {
        let dir = match flag {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => match std::env::var_os("INSTACONNECT_HOME") {
                Some(d) if !d.is_empty() => PathBuf::from(d),
                _ => dirs::data_dir()
                    .map(|d| d.join("instaconnect"))
                    .ok_or_else(|| {
                        Failure::Usage(anyhow!(
                            "cannot find a data directory for this platform; pass --home DIR or set INSTACONNECT_HOME"
                        ))
                    })?,
            },
        };
        Ok(Home { dir })
    }

    pub fn db_path(&self) -> PathBuf {
        self.dir.join("db")
    }

    /// Where attachments' bytes live (sent and received files, by message id).
    pub fn media_dir(&self) -> PathBuf {
        self.dir.join("media")
    }

    /// The attachment store in [`Home::media_dir`].
    pub fn blobs(&self) -> Result<std::sync::Arc<instaconnect_store::DirBlobs>, Failure> {
        instaconnect_store::DirBlobs::open(&self.media_dir())
            .map(std::sync::Arc::new)
            .map_err(|e| Failure::Failed(anyhow!("{e}")))
    }

    /// Where a running node writes its control API's port, token and pid (mode 0600).
    pub fn control_path(&self) -> PathBuf {
        self.dir.join("control.json")
    }

    /// Opens the store if an account database exists here; never creates anything.
    pub fn open_existing(&self) -> Result<SledStore, Failure> {
        if !self.db_path().exists() {
            return Err(Failure::Failed(anyhow!(
                "no account in {} (create one with `instaconnect account create --phone +919812345678 --name NAME`)",
                self.dir.display()
            )));
        }
        Ok(SledStore::open(&self.db_path())?)
    }

    /// Creates the data dir (owner-only) and opens or creates the store.
    pub fn open_or_create(&self) -> Result<SledStore, Failure> {
        create_private_dir(&self.dir)?;
        Ok(SledStore::open(&self.db_path())?)
    }
}

pub(crate) fn create_private_dir(dir: &Path) -> Result<(), Failure> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create the data directory {}", dir.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("cannot restrict permissions of {}", dir.display()))?;
    }
    Ok(())
}
