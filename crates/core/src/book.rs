//! Account, profile, contacts, blocks, groups and privacy: the local side of the address book.
//!
//! Every operation validates its input, computes the whole change, and commits it as one batch,
//! so a failed operation writes nothing. Errors say which value was wrong and what was expected;
//! [`BookError::is_invalid_input`] tells a caller's bad input apart from a failure of the store.

use std::collections::BTreeMap;

use instaconnect_crypto::{
    safety_number, CardDisplay, ContactCard, CryptoError, Device, Identity, IdentityKey,
    SafetyNumber,
};
use instaconnect_store::{Op, Store, StoreError};
use instaconnect_wire::records::{
    AccountRecord, BlockRecord, ContactRecord, GroupId, GroupMember, GroupRecord, PictureRecord,
    Privacy, Profile, Role, Settings, Visibility,
};
use instaconnect_wire::SecretBytes;

use crate::csv_import::CsvFile;
use crate::phone::{Phone, PhoneError, Region};
use crate::picture::{Picture, PictureError, PictureFormat};
use crate::vcard::VcardFile;

/// Longest profile, contact or group name, in characters.
pub const MAX_NAME_CHARS: usize = 64;
/// Longest status message, in characters.
pub const MAX_STATUS_CHARS: usize = 140;
/// Most members of a group, the account itself included.
pub const MAX_GROUP_MEMBERS: usize = 256;
/// Most contacts in an address book.
pub const MAX_CONTACTS: usize = 100_000;

#[derive(Debug, thiserror::Error)]
pub enum BookError {
    #[error("no account here yet (create one with `instaconnect account create --phone +919812345678 --name NAME`)")]
    NoAccount,
    #[error("an account already exists here for {0}; nothing was changed")]
    AccountExists(String),
    #[error(transparent)]
    Phone(#[from] PhoneError),
    #[error(transparent)]
    Picture(#[from] PictureError),
    #[error("{field} is too long: {len} characters (at most {max})")]
    TooLong {
        field: &'static str,
        len: usize,
        max: usize,
    },
    #[error("{field} must not be empty")]
    Empty { field: &'static str },
    #[error("{field} must not contain control characters: {value:?}")]
    ControlChars { field: &'static str, value: String },
    #[error("no contact matches {0:?} (expected a contact's phone number or name; see `instaconnect contacts list`)")]
    UnknownContact(String),
    #[error("{query:?} matches several contacts: {matches} (give the phone number instead)")]
    AmbiguousContact { query: String, matches: String },
    #[error("{0} is not one of your contacts (add it first with `instaconnect contacts add {0}`)")]
    NotAContact(String),
    #[error("{0} is your own number")]
    OwnNumber(String),
    #[error("the address book is full ({MAX_CONTACTS} contacts)")]
    TooManyContacts,
    #[error(
        "no group matches {0:?} (expected a group's name or id; see `instaconnect groups list`)"
    )]
    UnknownGroup(String),
    #[error("{query:?} matches several groups: {matches} (give the group id instead)")]
    AmbiguousGroup { query: String, matches: String },
    #[error("you left the group {0:?}; it can no longer be changed")]
    LeftGroup(String),
    #[error("only a group admin can do that in {0:?}")]
    NotAdmin(String),
    #[error("{phone} is already a member of {group:?}")]
    AlreadyMember { phone: String, group: String },
    #[error("{phone} is not a member of {group:?}")]
    NotMember { phone: String, group: String },
    #[error(
        "a group has at most {MAX_GROUP_MEMBERS} members (you included); {0} would be too many"
    )]
    GroupTooLarge(usize),
    #[error("a group needs at least one other member")]
    NoMembers,
    #[error("to remove yourself, use `instaconnect groups leave`")]
    RemoveSelf,
    #[error("unknown privacy field {0:?} (expected one of phone, name, picture, status, online, receipts, location)")]
    UnknownPrivacyField(String),
    #[error("unknown visibility {0:?} (expected everyone, contacts or nobody)")]
    UnknownVisibility(String),
    #[error("{0} is not blocked")]
    NotBlocked(String),
    #[error("invalid contact card: {0}")]
    Card(#[source] CryptoError),
    #[error(
        "the invite has no phone number; give it: `instaconnect contacts add PHONE --invite LINK`"
    )]
    InviteWithoutPhone,
    #[error("the invite is for {card}, not {given}")]
    InvitePhoneMismatch { card: String, given: String },
    #[error("that invite is your own")]
    OwnInvite,
    #[error("no verified keys for {0} yet (add them from an invite: `instaconnect contacts add --invite LINK`)")]
    NoKeysFor(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the stored account is damaged: {0}")]
    Keys(String),
}

impl BookError {
    /// True when the caller gave a bad value (a usage error), false for failures.
    pub fn is_invalid_input(&self) -> bool {
        !matches!(
            self,
            BookError::NoAccount
                | BookError::AccountExists(_)
                | BookError::Store(_)
                | BookError::Keys(_)
                | BookError::TooManyContacts
                | BookError::NoKeysFor(_)
        )
    }
}

pub type Result<T> = std::result::Result<T, BookError>;

fn check_text(field: &'static str, value: &str, max: usize, allow_empty: bool) -> Result<String> {
    let v = value.trim();
    if v.is_empty() && !allow_empty {
        return Err(BookError::Empty { field });
    }
    let len = v.chars().count();
    if len > max {
        return Err(BookError::TooLong { field, len, max });
    }
    if v.chars().any(|c| c.is_control()) {
        return Err(BookError::ControlChars {
            field,
            value: v.to_string(),
        });
    }
    Ok(v.to_string())
}

/// The account's keys, loaded from the store.
pub struct Keys {
    pub identity: Identity,
    pub device: Device,
}

/// The local address book over a [`Store`]. Every method that writes takes `now_ms`.
pub struct Book<'a> {
    store: &'a dyn Store,
}

impl<'a> Book<'a> {
    pub fn new(store: &'a dyn Store) -> Self {
        Book { store }
    }

    pub fn store(&self) -> &dyn Store {
        self.store
    }

    // ----- account and profile -------------------------------------------------------------

    /// Creates the account: a new Ed25519 identity and device keys. Refuses if one exists.
    pub fn create_account(
        &self,
        phone: &Phone,
        name: &str,
        region: Option<&Region>,
        now_ms: u64,
    ) -> Result<AccountRecord> {
        if let Some(existing) = self.store.account()? {
            return Err(BookError::AccountExists(existing.phone));
        }
        let name = check_text("name", name, MAX_NAME_CHARS, false)?;
        let identity = Identity::generate();
        let device = Device::generate();
        let account = AccountRecord {
            phone: phone.as_str().to_string(),
            identity_secret: SecretBytes::new(identity.secret_bytes().to_vec()),
            device_pickle: SecretBytes::new(device.to_pickle_bytes().to_vec()),
            created_at_ms: now_ms,
        };
        let settings = Settings {
            region: region
                .map(|r| r.as_str().to_string())
                .or_else(|| region_of(phone)),
            privacy: Privacy::default(),
        };
        let profile = Profile {
            name,
            status: String::new(),
            picture: None,
            updated_at_ms: now_ms,
        };
        self.store.apply(vec![
            Op::PutAccount(account.clone()),
            Op::PutSettings(settings),
            Op::PutProfile(profile),
        ])?;
        Ok(account)
    }

    pub fn account(&self) -> Result<AccountRecord> {
        self.store.account()?.ok_or(BookError::NoAccount)
    }

    pub fn keys(&self) -> Result<Keys> {
        let a = self.account()?;
        let identity = Identity::from_secret_bytes(a.identity_secret.expose())
            .map_err(|e| BookError::Keys(e.to_string()))?;
        let device = Device::from_pickle_bytes(a.device_pickle.expose())
            .map_err(|e| BookError::Keys(e.to_string()))?;
        Ok(Keys { identity, device })
    }

    pub fn profile(&self) -> Result<Profile> {
        self.account()?;
        Ok(self.store.profile()?)
    }

    /// Changes the given profile fields; `picture: Some(None)` removes the picture.
    pub fn set_profile(
        &self,
        name: Option<&str>,
        status: Option<&str>,
        picture: Option<Option<Vec<u8>>>,
        now_ms: u64,
    ) -> Result<Profile> {
        self.account()?;
        let mut p = self.store.profile()?;
        if let Some(n) = name {
            p.name = check_text("name", n, MAX_NAME_CHARS, false)?;
        }
        if let Some(s) = status {
            p.status = check_text("status", s, MAX_STATUS_CHARS, true)?;
        }
        if let Some(pic) = picture {
            p.picture = match pic {
                None => None,
                Some(bytes) => Some(picture_record(crate::picture::load_picture(bytes)?)),
            };
        }
        p.updated_at_ms = now_ms;
        self.store.apply(vec![Op::PutProfile(p.clone())])?;
        Ok(p)
    }

    // ----- settings and privacy ------------------------------------------------------------

    /// The region national numbers are read in: `explicit` if given, else the stored setting,
    /// else the region of the account's own number.
    pub fn region(&self, explicit: Option<&Region>) -> Result<Option<Region>> {
        if let Some(r) = explicit {
            return Ok(Some(r.clone()));
        }
        let s = self.store.settings()?;
        if let Some(r) = s.region {
            if let Ok(r) = Region::parse(&r) {
                return Ok(Some(r));
            }
        }
        Ok(self
            .store
            .account()?
            .and_then(|a| Phone::parse(&a.phone, None).ok())
            .and_then(|p| region_of(&p))
            .and_then(|r| Region::parse(&r).ok()))
    }

    /// Stores `region` as the default for reading national numbers.
    pub fn set_region(&self, region: &Region) -> Result<()> {
        self.account()?;
        let mut s = self.store.settings()?;
        if s.region.as_deref() != Some(region.as_str()) {
            s.region = Some(region.as_str().to_string());
            self.store.apply(vec![Op::PutSettings(s)])?;
        }
        Ok(())
    }

    pub fn privacy(&self) -> Result<Privacy> {
        self.account()?;
        Ok(self.store.settings()?.privacy)
    }

    pub fn set_privacy(&self, field: &str, level: &str) -> Result<Privacy> {
        self.account()?;
        let vis = parse_visibility(level)?;
        let mut s = self.store.settings()?;
        let slot = privacy_slot(&mut s.privacy, field)?;
        *slot = vis;
        let privacy = s.privacy;
        self.store.apply(vec![Op::PutSettings(s)])?;
        Ok(privacy)
    }

    // ----- contacts ------------------------------------------------------------------------

    pub fn contacts(&self) -> Result<Vec<ContactRecord>> {
        self.account()?;
        Ok(self.store.contacts()?)
    }

    /// Adds a contact, or updates its name if it exists. Returns the record and whether it is new.
    pub fn add_contact(
        &self,
        phone: &Phone,
        name: Option<&str>,
        now_ms: u64,
    ) -> Result<(ContactRecord, bool)> {
        let me = self.account()?;
        if phone.as_str() == me.phone {
            return Err(BookError::OwnNumber(me.phone));
        }
        let name = name
            .map(|n| check_text("name", n, MAX_NAME_CHARS, false))
            .transpose()?;
        let (record, new) = match self.store.contact(phone.as_str())? {
            Some(mut c) => {
                if name.is_some() {
                    c.name = name;
                }
                c.updated_at_ms = now_ms;
                (c, false)
            }
            None => {
                if self.store.contacts()?.len() >= MAX_CONTACTS {
                    return Err(BookError::TooManyContacts);
                }
                (
                    ContactRecord {
                        name,
                        ..ContactRecord::new(phone.as_str(), now_ms)
                    },
                    true,
                )
            }
        };
        self.store.apply(vec![Op::PutContact(record.clone())])?;
        Ok((record, new))
    }

    /// Removes a contact (by number or name). Groups keep the number as a member.
    pub fn remove_contact(&self, query: &str, region: Option<&Region>) -> Result<ContactRecord> {
        let c = self.resolve_contact(query, region)?;
        self.store.apply(vec![Op::RemoveContact(c.phone.clone())])?;
        Ok(c)
    }

    /// Finds a contact by phone number (any format) or by name (case-insensitive, unique).
    pub fn resolve_contact(&self, query: &str, region: Option<&Region>) -> Result<ContactRecord> {
        self.account()?;
        let region = self.region(region)?;
        if let Ok(p) = Phone::parse(query, region.as_ref()) {
            return self
                .store
                .contact(p.as_str())?
                .ok_or_else(|| BookError::NotAContact(p.to_string()));
        }
        let q = query.trim().to_lowercase();
        let matches: Vec<ContactRecord> = self
            .store
            .contacts()?
            .into_iter()
            .filter(|c| c.name.as_deref().map(str::to_lowercase).as_deref() == Some(q.as_str()))
            .collect();
        match matches.len() {
            0 => Err(BookError::UnknownContact(query.to_string())),
            1 => Ok(matches.into_iter().next().expect("one match")),
            _ => Err(BookError::AmbiguousContact {
                query: query.to_string(),
                matches: matches
                    .iter()
                    .map(|c| c.phone.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            }),
        }
    }

    /// Imports parsed vCards or CSV rows. Valid numbers are added or merged; everything else is
    /// reported with its line. The whole import is one batch.
    pub fn import(
        &self,
        entries: Vec<ImportEntry>,
        region: Option<&Region>,
        now_ms: u64,
    ) -> Result<ImportSummary> {
        let me = self.account()?;
        let region = self.region(region)?;
        let existing: BTreeMap<String, ContactRecord> = self
            .store
            .contacts()?
            .into_iter()
            .map(|c| (c.phone.clone(), c))
            .collect();
        let mut summary = ImportSummary::default();
        let mut changed: BTreeMap<String, ContactRecord> = BTreeMap::new();
        for e in entries {
            let (line, name, raw) = match e {
                ImportEntry::Skipped { line, reason } => {
                    summary.skipped.push(Skipped { line, reason });
                    continue;
                }
                ImportEntry::Number { line, name, phone } => (line, name, phone),
            };
            let phone = match Phone::parse(&raw, region.as_ref()) {
                Ok(p) => p,
                Err(err) => {
                    summary.skipped.push(Skipped {
                        line,
                        reason: err.to_string(),
                    });
                    continue;
                }
            };
            if phone.as_str() == me.phone {
                summary.skipped.push(Skipped {
                    line,
                    reason: format!("{phone} is your own number"),
                });
                continue;
            }
            let name = match name
                .as_deref()
                .map(|n| check_text("name", n, MAX_NAME_CHARS, true))
            {
                Some(Ok(n)) if !n.is_empty() => Some(n),
                Some(Err(err)) => {
                    summary.skipped.push(Skipped {
                        line,
                        reason: err.to_string(),
                    });
                    continue;
                }
                _ => None,
            };
            let key = phone.as_str().to_string();
            if let Some(c) = changed.get_mut(&key) {
                // The same number twice in one file: merge, first name wins.
                if c.name.is_none() && name.is_some() {
                    c.name = name;
                }
                summary.merged += 1;
                continue;
            }
            match existing.get(&key) {
                Some(old) if name.is_none() || old.name == name => {
                    summary.unchanged += 1;
                }
                Some(old) => {
                    let mut c = old.clone();
                    c.name = name;
                    c.updated_at_ms = now_ms;
                    summary.updated.push(c.clone());
                    changed.insert(key, c);
                }
                None => {
                    let c = ContactRecord {
                        name,
                        ..ContactRecord::new(&key, now_ms)
                    };
                    changed.insert(key, c);
                }
            }
        }
        // Names merged into new contacts after they were first seen must show in the summary too.
        summary.added = changed
            .values()
            .filter(|c| !existing.contains_key(&c.phone))
            .cloned()
            .collect();
        if existing.len() + summary.added.len() > MAX_CONTACTS {
            return Err(BookError::TooManyContacts);
        }
        summary.skipped.sort_by_key(|s| s.line);
        self.store
            .apply(changed.into_values().map(Op::PutContact).collect())?;
        Ok(summary)
    }

    // ----- invites, cards and safety numbers ----------------------------------------------

    /// Issues a signed contact card for this device as an `instaconnect://` invite link. The
    /// device state changes (a fallback key may be generated), so it is persisted first.
    pub fn invite(&self, include_phone: bool, ttl_ms: u64, now_ms: u64) -> Result<String> {
        let mut account = self.account()?;
        let mut keys = self.keys()?;
        let profile = self.store.profile()?;
        let display = CardDisplay {
            name: Some(profile.name).filter(|n| !n.is_empty()),
            phone: include_phone.then(|| account.phone.clone()),
        };
        let card = keys
            .device
            .contact_card(&keys.identity, display, now_ms, ttl_ms)
            .map_err(BookError::Card)?;
        account.device_pickle = SecretBytes::new(keys.device.to_pickle_bytes().to_vec());
        self.store.apply(vec![Op::PutAccount(account)])?;
        Ok(card.to_invite_link())
    }

    /// Adds (or updates) the contact an invite link describes, linking its device and keys.
    /// `phone` is required when the card carries none, and must match when it does.
    pub fn add_contact_from_invite(
        &self,
        link: &str,
        phone: Option<&Phone>,
        name: Option<&str>,
        now_ms: u64,
    ) -> Result<(ContactRecord, bool)> {
        let me = self.account()?;
        let keys = self.keys()?;
        let card = ContactCard::from_invite_link(link, now_ms).map_err(BookError::Card)?;
        if card.identity() == keys.identity.public() {
            return Err(BookError::OwnInvite);
        }
        let card_phone = match &card.display.phone {
            Some(p) => Some(Phone::parse(p, None)?),
            None => None,
        };
        let phone = match (card_phone, phone) {
            (Some(c), Some(g)) if &c != g => {
                return Err(BookError::InvitePhoneMismatch {
                    card: c.to_string(),
                    given: g.to_string(),
                })
            }
            (Some(c), _) => c,
            (None, Some(g)) => g.clone(),
            (None, None) => return Err(BookError::InviteWithoutPhone),
        };
        if phone.as_str() == me.phone {
            return Err(BookError::OwnNumber(me.phone));
        }
        let name = match name.or(card.display.name.as_deref()) {
            Some(n) => Some(check_text("name", n, MAX_NAME_CHARS, false)?),
            None => None,
        };
        let existing = self.store.contact(phone.as_str())?;
        if existing.is_none() && self.store.contacts()?.len() >= MAX_CONTACTS {
            return Err(BookError::TooManyContacts);
        }
        let new = existing.is_none();
        let mut c = existing.unwrap_or_else(|| ContactRecord::new(phone.as_str(), now_ms));
        if name.is_some() {
            c.name = name;
        }
        c.peer_id = Some(card.identity().peer_id());
        c.identity_key = Some(card.identity().to_bytes());
        c.card = Some(card.to_bytes());
        c.updated_at_ms = now_ms;
        self.store.apply(vec![Op::PutContact(c.clone())])?;
        Ok((c, new))
    }

    /// The safety number between us and a contact whose keys we have.
    pub fn safety_number(
        &self,
        query: &str,
        region: Option<&Region>,
    ) -> Result<(ContactRecord, SafetyNumber)> {
        let c = self.resolve_contact(query, region)?;
        let theirs = c
            .identity_key
            .ok_or_else(|| BookError::NoKeysFor(c.phone.clone()))
            .and_then(|k| {
                IdentityKey::from_bytes(&k).map_err(|e| BookError::Keys(e.to_string()))
            })?;
        let ours = self.keys()?.identity.public();
        Ok((c, safety_number(&ours, &theirs)))
    }

    // ----- blocks --------------------------------------------------------------------------

    /// Blocks a contact (by number or name) or any valid number.
    pub fn block(&self, query: &str, region: Option<&Region>, now_ms: u64) -> Result<BlockRecord> {
        let me = self.account()?;
        let phone = self.phone_of(query, region)?;
        if phone == me.phone {
            return Err(BookError::OwnNumber(phone));
        }
        if let Some(b) = self.store.block(&phone)? {
            return Ok(b);
        }
        let b = BlockRecord {
            phone,
            since_ms: now_ms,
        };
        self.store.apply(vec![Op::PutBlock(b.clone())])?;
        Ok(b)
    }

    pub fn unblock(&self, query: &str, region: Option<&Region>) -> Result<BlockRecord> {
        self.account()?;
        let phone = self.phone_of(query, region)?;
        let b = self
            .store
            .block(&phone)?
            .ok_or_else(|| BookError::NotBlocked(phone.clone()))?;
        self.store.apply(vec![Op::RemoveBlock(phone)])?;
        Ok(b)
    }

    pub fn blocks(&self) -> Result<Vec<BlockRecord>> {
        self.account()?;
        Ok(self.store.blocks()?)
    }

    /// A number: the contact's if `query` names one, else `query` itself as a phone number.
    fn phone_of(&self, query: &str, region: Option<&Region>) -> Result<String> {
        match self.resolve_contact(query, region) {
            Ok(c) => Ok(c.phone),
            Err(BookError::NotAContact(p)) => Ok(p),
            Err(e) => Err(e),
        }
    }

    // ----- groups --------------------------------------------------------------------------

    pub fn groups(&self) -> Result<Vec<GroupRecord>> {
        self.account()?;
        Ok(self.store.groups()?)
    }

    /// Finds a group by id (full hex, or a prefix of at least 4 hex digits) or name
    /// (case-insensitive; groups we left count only when nothing else matches).
    pub fn resolve_group(&self, query: &str) -> Result<GroupRecord> {
        self.account()?;
        let groups = self.store.groups()?;
        let q = query.trim().to_lowercase();
        if q.len() >= 4 && q.chars().all(|c| c.is_ascii_hexdigit()) {
            let by_id: Vec<&GroupRecord> = groups
                .iter()
                .filter(|g| g.id.to_hex().starts_with(&q))
                .collect();
            if by_id.len() == 1 {
                return Ok(by_id[0].clone());
            }
        }
        let named: Vec<&GroupRecord> = groups
            .iter()
            .filter(|g| g.name.to_lowercase() == q)
            .collect();
        let active: Vec<&GroupRecord> = named.iter().copied().filter(|g| !g.left).collect();
        let pick = if active.is_empty() { named } else { active };
        match pick.len() {
            0 => Err(BookError::UnknownGroup(query.to_string())),
            1 => Ok(pick[0].clone()),
            _ => Err(BookError::AmbiguousGroup {
                query: query.to_string(),
                matches: pick
                    .iter()
                    .map(|g| g.id.to_hex())
                    .collect::<Vec<_>>()
                    .join(", "),
            }),
        }
    }

    /// Creates a group of contacts with the account as its admin.
    pub fn create_group(
        &self,
        name: &str,
        members: &[String],
        region: Option<&Region>,
        id: GroupId,
        now_ms: u64,
    ) -> Result<GroupRecord> {
        let me = self.account()?;
        let name = check_text("group name", name, MAX_NAME_CHARS, false)?;
        let mut list = vec![GroupMember {
            phone: me.phone.clone(),
            role: Role::Admin,
        }];
        for q in members {
            let c = self.resolve_contact(q, region)?;
            if !list.iter().any(|m| m.phone == c.phone) {
                list.push(GroupMember {
                    phone: c.phone,
                    role: Role::Member,
                });
            }
        }
        if list.len() < 2 {
            return Err(BookError::NoMembers);
        }
        if list.len() > MAX_GROUP_MEMBERS {
            return Err(BookError::GroupTooLarge(list.len()));
        }
        let g = GroupRecord {
            id,
            name,
            members: list,
            created_at_ms: now_ms,
            updated_at_ms: now_ms,
            left: false,
        };
        self.store.apply(vec![Op::PutGroup(g.clone())])?;
        Ok(g)
    }

    fn editable_group(&self, query: &str, need_admin: bool) -> Result<(GroupRecord, String)> {
        let me = self.account()?;
        let g = self.resolve_group(query)?;
        if g.left {
            return Err(BookError::LeftGroup(g.name));
        }
        if need_admin
            && !g
                .members
                .iter()
                .any(|m| m.phone == me.phone && m.role == Role::Admin)
        {
            return Err(BookError::NotAdmin(g.name));
        }
        Ok((g, me.phone))
    }

    pub fn add_members(
        &self,
        group: &str,
        members: &[String],
        region: Option<&Region>,
        now_ms: u64,
    ) -> Result<GroupRecord> {
        let (mut g, _) = self.editable_group(group, true)?;
        for q in members {
            let c = self.resolve_contact(q, region)?;
            if g.members.iter().any(|m| m.phone == c.phone) {
                return Err(BookError::AlreadyMember {
                    phone: c.phone,
                    group: g.name,
                });
            }
            g.members.push(GroupMember {
                phone: c.phone,
                role: Role::Member,
            });
        }
        if g.members.len() > MAX_GROUP_MEMBERS {
            return Err(BookError::GroupTooLarge(g.members.len()));
        }
        g.updated_at_ms = now_ms;
        self.store.apply(vec![Op::PutGroup(g.clone())])?;
        Ok(g)
    }

    pub fn remove_members(
        &self,
        group: &str,
        members: &[String],
        region: Option<&Region>,
        now_ms: u64,
    ) -> Result<GroupRecord> {
        let (mut g, me) = self.editable_group(group, true)?;
        for q in members {
            let phone = self.phone_of(q, region)?;
            if phone == me {
                return Err(BookError::RemoveSelf);
            }
            let before = g.members.len();
            g.members.retain(|m| m.phone != phone);
            if g.members.len() == before {
                return Err(BookError::NotMember {
                    phone,
                    group: g.name,
                });
            }
        }
        g.updated_at_ms = now_ms;
        self.store.apply(vec![Op::PutGroup(g.clone())])?;
        Ok(g)
    }

    pub fn set_role(
        &self,
        group: &str,
        member: &str,
        role: Role,
        region: Option<&Region>,
        now_ms: u64,
    ) -> Result<GroupRecord> {
        let (mut g, _) = self.editable_group(group, true)?;
        let phone = self.phone_of(member, region)?;
        let name = g.name.clone();
        let m = g
            .members
            .iter_mut()
            .find(|m| m.phone == phone)
            .ok_or(BookError::NotMember { phone, group: name })?;
        m.role = role;
        g.updated_at_ms = now_ms;
        self.store.apply(vec![Op::PutGroup(g.clone())])?;
        Ok(g)
    }

    pub fn rename_group(&self, group: &str, name: &str, now_ms: u64) -> Result<GroupRecord> {
        let (mut g, _) = self.editable_group(group, false)?;
        g.name = check_text("group name", name, MAX_NAME_CHARS, false)?;
        g.updated_at_ms = now_ms;
        self.store.apply(vec![Op::PutGroup(g.clone())])?;
        Ok(g)
    }

    /// Leaves a group. If we were its last admin, the longest-standing member becomes admin.
    pub fn leave_group(&self, group: &str, now_ms: u64) -> Result<GroupRecord> {
        let (mut g, me) = self.editable_group(group, false)?;
        g.members.retain(|m| m.phone != me);
        if !g.members.is_empty() && !g.members.iter().any(|m| m.role == Role::Admin) {
            g.members[0].role = Role::Admin;
        }
        g.left = true;
        g.updated_at_ms = now_ms;
        self.store.apply(vec![Op::PutGroup(g.clone())])?;
        Ok(g)
    }
}

/// One line of an import: a number to add, or a line the parser already rejected.
#[derive(Clone, Debug)]
pub enum ImportEntry {
    Number {
        line: usize,
        name: Option<String>,
        phone: String,
    },
    Skipped {
        line: usize,
        reason: String,
    },
}

impl ImportEntry {
    pub fn from_vcards(file: VcardFile) -> Vec<ImportEntry> {
        let mut out = Vec::new();
        for card in file.cards {
            for phone in card.phones {
                out.push(ImportEntry::Number {
                    line: card.line,
                    name: card.name.clone(),
                    phone,
                });
            }
        }
        out.extend(file.errors.into_iter().map(|e| ImportEntry::Skipped {
            line: e.line,
            reason: e.reason,
        }));
        out
    }

    pub fn from_csv(file: CsvFile) -> Vec<ImportEntry> {
        let mut out: Vec<ImportEntry> = file
            .rows
            .into_iter()
            .map(|r| ImportEntry::Number {
                line: r.line,
                name: r.name,
                phone: r.phone,
            })
            .collect();
        out.extend(file.errors.into_iter().map(|e| ImportEntry::Skipped {
            line: e.line,
            reason: e.reason,
        }));
        out
    }
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Skipped {
    pub line: usize,
    pub reason: String,
}

#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct ImportSummary {
    pub added: Vec<ContactRecord>,
    pub updated: Vec<ContactRecord>,
    /// Numbers already in the address book with the same name.
    pub unchanged: usize,
    /// Numbers that appeared more than once in the file and were merged.
    pub merged: usize,
    pub skipped: Vec<Skipped>,
}

/// The region (ISO 3166 code) a valid number belongs to.
pub fn region_of(phone: &Phone) -> Option<String> {
    let n = phonenumber::parse(None, phone.as_str()).ok()?;
    n.country().id().map(|id| id.as_ref().to_string())
}

pub fn parse_visibility(s: &str) -> Result<Visibility> {
    match s.trim().to_lowercase().as_str() {
        "everyone" => Ok(Visibility::Everyone),
        "contacts" => Ok(Visibility::Contacts),
        "nobody" => Ok(Visibility::Nobody),
        _ => Err(BookError::UnknownVisibility(s.to_string())),
    }
}

/// The privacy fields, in display order.
pub const PRIVACY_FIELDS: [&str; 7] = [
    "phone", "name", "picture", "status", "online", "receipts", "location",
];

fn privacy_slot<'p>(p: &'p mut Privacy, field: &str) -> Result<&'p mut Visibility> {
    Ok(match field.trim().to_lowercase().as_str() {
        "phone" => &mut p.phone,
        "name" => &mut p.name,
        "picture" => &mut p.picture,
        "status" => &mut p.status,
        "online" => &mut p.online,
        "receipts" => &mut p.receipts,
        "location" => &mut p.location,
        _ => return Err(BookError::UnknownPrivacyField(field.to_string())),
    })
}

/// A privacy field's setting by name (one of [`PRIVACY_FIELDS`]).
pub fn privacy_get(p: &Privacy, field: &str) -> Option<Visibility> {
    let mut copy = *p;
    privacy_slot(&mut copy, field).ok().map(|v| *v)
}

pub fn visibility_str(v: Visibility) -> &'static str {
    match v {
        Visibility::Everyone => "everyone",
        Visibility::Contacts => "contacts",
        Visibility::Nobody => "nobody",
    }
}

fn picture_record(p: Picture) -> PictureRecord {
    PictureRecord {
        format: match p.format {
            PictureFormat::Png => instaconnect_wire::records::ImageFormat::Png,
            PictureFormat::Jpeg => instaconnect_wire::records::ImageFormat::Jpeg,
            PictureFormat::Webp => instaconnect_wire::records::ImageFormat::Webp,
        },
        width: p.width,
        height: p.height,
        bytes: p.bytes,
        thumbnail_png: p.thumbnail_png,
    }
}
