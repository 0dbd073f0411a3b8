use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};

use instaconnect_wire::records::{
    AccountRecord, BlockRecord, ContactRecord, GroupId, GroupRecord, Profile, Settings,
};

use crate::{Op, Result, Store};

#[derive(Default, Clone)]
struct State {
    account: Option<AccountRecord>,
    profile: Option<Profile>,
    settings: Option<Settings>,
    contacts: BTreeMap<String, ContactRecord>,
    blocks: BTreeMap<String, BlockRecord>,
    groups: BTreeMap<GroupId, GroupRecord>,
}

/// An in-memory [`Store`], for the simulator and tests.
#[derive(Default)]
pub struct MemStore {
    state: Mutex<State>,
}

impl MemStore {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave a half-applied batch (batches are applied
        // to a copy), so a poisoned lock still guards consistent state.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Store for MemStore {
    fn account(&self) -> Result<Option<AccountRecord>> {
        Ok(self.lock().account.clone())
    }

    fn profile(&self) -> Result<Profile> {
        Ok(self.lock().profile.clone().unwrap_or_default())
    }

    fn settings(&self) -> Result<Settings> {
        Ok(self.lock().settings.clone().unwrap_or_default())
    }

    fn contact(&self, phone: &str) -> Result<Option<ContactRecord>> {
        Ok(self.lock().contacts.get(phone).cloned())
    }

    fn contacts(&self) -> Result<Vec<ContactRecord>> {
        Ok(self.lock().contacts.values().cloned().collect())
    }

    fn block(&self, phone: &str) -> Result<Option<BlockRecord>> {
        Ok(self.lock().blocks.get(phone).cloned())
    }

    fn blocks(&self) -> Result<Vec<BlockRecord>> {
        Ok(self.lock().blocks.values().cloned().collect())
    }

    fn group(&self, id: &GroupId) -> Result<Option<GroupRecord>> {
        Ok(self.lock().groups.get(id).cloned())
    }

    fn groups(&self) -> Result<Vec<GroupRecord>> {
        Ok(self.lock().groups.values().cloned().collect())
    }

    fn apply(&self, ops: Vec<Op>) -> Result<()> {
        let mut guard = self.lock();
        let mut next = guard.clone();
        for op in ops {
            match op {
                Op::PutAccount(a) => next.account = Some(a),
                Op::PutProfile(p) => next.profile = Some(p),
                Op::PutSettings(s) => next.settings = Some(s),
                Op::PutContact(c) => {
                    next.contacts.insert(c.phone.clone(), c);
                }
                Op::RemoveContact(p) => {
                    next.contacts.remove(&p);
                }
                Op::PutBlock(b) => {
                    next.blocks.insert(b.phone.clone(), b);
                }
                Op::RemoveBlock(p) => {
                    next.blocks.remove(&p);
                }
                Op::PutGroup(g) => {
                    next.groups.insert(g.id, g);
                }
                Op::RemoveGroup(id) => {
                    next.groups.remove(&id);
                }
            }
        }
        *guard = next;
        Ok(())
    }
}
