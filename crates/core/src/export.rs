//! The whole account as one JSON document (`instaconnect export`).
//!
//! Format `instaconnect-export`, version 1. Binary data is standard base64. Times are unix
//! milliseconds. Secret keys appear only when asked for (`keys` is absent otherwise).
//! The format is documented field by field in README.md ("Export format").

use base64::Engine as _;
use instaconnect_wire::records::{GroupRecord, GroupSyncRecord, Role};
use serde::Serialize;

use crate::book::{visibility_str, Book, Result, PRIVACY_FIELDS};

pub const EXPORT_FORMAT: &str = "instaconnect-export";
pub const EXPORT_VERSION: u32 = 1;

#[derive(Serialize)]
pub struct Export {
    pub format: &'static str,
    pub version: u32,
    pub exported_at_ms: u64,
    pub account: AccountOut,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keys: Option<KeysOut>,
    pub profile: ProfileOut,
    pub settings: SettingsOut,
    pub contacts: Vec<ContactOut>,
    pub blocked: Vec<BlockOut>,
    pub groups: Vec<GroupOut>,
    /// Conversations and their messages (empty until messaging lands).
    pub messages: Vec<serde_json::Value>,
}

#[derive(Serialize)]
pub struct AccountOut {
    pub phone: String,
    pub peer_id: String,
    pub identity_key: String,
    pub fingerprint: String,
    pub created_at_ms: u64,
}

#[derive(Serialize)]
pub struct KeysOut {
    /// The 32-byte Ed25519 identity seed.
    pub identity_secret: String,
    /// The device's pickled ratchet account.
    pub device_pickle: String,
}

#[derive(Serialize)]
pub struct ProfileOut {
    pub name: String,
    pub status: String,
    pub picture: Option<PictureOut>,
    pub updated_at_ms: u64,
}

#[derive(Serialize)]
pub struct PictureOut {
    pub mime: &'static str,
    pub width: u32,
    pub height: u32,
    pub data: String,
    pub thumbnail_png: String,
}

#[derive(Serialize)]
pub struct SettingsOut {
    pub region: Option<String>,
    pub privacy: std::collections::BTreeMap<&'static str, &'static str>,
}

#[derive(Serialize)]
pub struct ContactOut {
    pub phone: String,
    pub name: Option<String>,
    pub peer_id: Option<String>,
    pub blocked: bool,
    pub added_at_ms: u64,
    pub updated_at_ms: u64,
}

#[derive(Serialize)]
pub struct BlockOut {
    pub phone: String,
    pub since_ms: u64,
}

#[derive(Serialize)]
pub struct GroupOut {
    pub id: String,
    pub name: String,
    pub left: bool,
    pub members: Vec<MemberOut>,
    pub created_at_ms: u64,
    pub updated_at_ms: u64,
    /// "member", "invited" (not answered yet) or "left" (left or removed).
    pub status: &'static str,
    /// The version of the membership held (0: never sent to the members).
    pub version: u64,
    /// Members known to have joined (the others are invited).
    pub joined: Vec<String>,
}

impl GroupOut {
    /// The group with what the device knows of it over the network.
    pub fn with_sync(g: &GroupRecord, sync: Option<&GroupSyncRecord>) -> GroupOut {
        let mut out = GroupOut::from(g);
        if let Some(s) = sync {
            out.version = s.state.version;
            if s.state.version > 0 {
                out.joined = s.state.joined.clone();
            }
            if s.invited_by.is_some() && !g.left {
                out.status = "invited";
            }
        }
        out
    }
}

#[derive(Serialize)]
pub struct MemberOut {
    pub phone: String,
    pub role: &'static str,
}

pub fn role_str(r: Role) -> &'static str {
    match r {
        Role::Admin => "admin",
        Role::Member => "member",
    }
}

impl From<&GroupRecord> for GroupOut {
    fn from(g: &GroupRecord) -> Self {
        GroupOut {
            id: g.id.to_hex(),
            name: g.name.clone(),
            left: g.left,
            members: g
                .members
                .iter()
                .map(|m| MemberOut {
                    phone: m.phone.clone(),
                    role: role_str(m.role),
                })
                .collect(),
            created_at_ms: g.created_at_ms,
            updated_at_ms: g.updated_at_ms,
            status: if g.left { "left" } else { "member" },
            version: 0,
            joined: g.members.iter().map(|m| m.phone.clone()).collect(),
        }
    }
}

fn b64(b: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(b)
}

/// Builds the export of everything in the book.
pub fn export(book: &Book<'_>, include_keys: bool, now_ms: u64) -> Result<Export> {
    let account = book.account()?;
    let keys = book.keys()?;
    let public = keys.identity.public();
    let store = book.store();
    let profile = store.profile()?;
    let settings = store.settings()?;
    let blocks = store.blocks()?;
    Ok(Export {
        format: EXPORT_FORMAT,
        version: EXPORT_VERSION,
        exported_at_ms: now_ms,
        account: AccountOut {
            phone: account.phone.clone(),
            peer_id: public.peer_id(),
            identity_key: b64(&public.to_bytes()),
            fingerprint: public.fingerprint(),
            created_at_ms: account.created_at_ms,
        },
        keys: include_keys.then(|| KeysOut {
            identity_secret: b64(account.identity_secret.expose()),
            device_pickle: b64(account.device_pickle.expose()),
        }),
        profile: ProfileOut {
            name: profile.name,
            status: profile.status,
            picture: profile.picture.map(|p| PictureOut {
                mime: p.format.mime(),
                width: p.width,
                height: p.height,
                data: b64(&p.bytes),
                thumbnail_png: b64(&p.thumbnail_png),
            }),
            updated_at_ms: profile.updated_at_ms,
        },
        settings: SettingsOut {
            region: settings.region,
            privacy: PRIVACY_FIELDS
                .iter()
                .filter_map(|f| {
                    crate::book::privacy_get(&settings.privacy, f).map(|v| (*f, visibility_str(v)))
                })
                .collect(),
        },
        contacts: store
            .contacts()?
            .into_iter()
            .map(|c| ContactOut {
                blocked: blocks.iter().any(|b| b.phone == c.phone),
                phone: c.phone,
                name: c.name,
                peer_id: c.peer_id,
                added_at_ms: c.added_at_ms,
                updated_at_ms: c.updated_at_ms,
            })
            .collect(),
        blocked: blocks
            .iter()
            .map(|b| BlockOut {
                phone: b.phone.clone(),
                since_ms: b.since_ms,
            })
            .collect(),
        groups: store
            .groups()?
            .iter()
            .map(|g| Ok(GroupOut::with_sync(g, store.group_sync(&g.id)?.as_ref())))
            .collect::<Result<Vec<_>>>()?,
        messages: Vec::new(),
    })
}
