use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};

use instaconnect_wire::records::{
    AccountRecord, AttachmentRecord, BlockRecord, ContactMailboxes, ContactRecord,
    ContactRequestRecord, ConversationRecord, DepositRecord, GroupId, GroupMessageRecord,
    GroupRecord, GroupSyncRecord, HeldMessage, MessageRecord, OutboxEntry, OwnMailbox, Profile,
    Settings, UploadRecord,
};
use instaconnect_wire::records::{LocationRecord, PositionRecord};
use instaconnect_wire::SecretBytes;

use crate::{Op, Result, Store};

#[derive(Default, Clone)]
struct State {
    account: Option<AccountRecord>,
    profile: Option<Profile>,
    settings: Option<Settings>,
    contacts: BTreeMap<String, ContactRecord>,
    blocks: BTreeMap<String, BlockRecord>,
    groups: BTreeMap<GroupId, GroupRecord>,
    messages: BTreeMap<(String, u64), MessageRecord>,
    message_ids: BTreeMap<[u8; 16], (String, u64)>,
    conversations: BTreeMap<String, ConversationRecord>,
    outbox: BTreeMap<[u8; 16], OutboxEntry>,
    sessions: BTreeMap<String, SecretBytes>,
    requests: BTreeMap<String, ContactRequestRecord>,
    replay: Option<SecretBytes>,
    seen: std::collections::BTreeSet<[u8; 16]>,
    held: BTreeMap<(String, u64), HeldMessage>,
    own_mailboxes: BTreeMap<[u8; 32], OwnMailbox>,
    contact_mailboxes: BTreeMap<String, ContactMailboxes>,
    deposits: BTreeMap<([u8; 16], [u8; 32]), DepositRecord>,
    attachments: BTreeMap<[u8; 16], AttachmentRecord>,
    group_syncs: BTreeMap<GroupId, GroupSyncRecord>,
    group_messages: BTreeMap<[u8; 16], GroupMessageRecord>,
    uploads: BTreeMap<[u8; 16], UploadRecord>,
    locations: BTreeMap<[u8; 16], LocationRecord>,
    position: Option<PositionRecord>,
    forwarded: std::collections::BTreeSet<[u8; 16]>,
    /// (peer id, phone) of every contact linked to a device.
    contact_peers: std::collections::BTreeSet<(String, String)>,
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
        // No operation can fail or panic half way through a batch, so a poisoned lock still
        // guards consistent state.
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

    fn contact_by_peer(&self, peer_id: &str) -> Result<Option<ContactRecord>> {
        let s = self.lock();
        let phone = s
            .contact_peers
            .range((peer_id.to_string(), String::new())..)
            .next()
            .filter(|(p, _)| p == peer_id)
            .map(|(_, phone)| phone.clone());
        Ok(phone.and_then(|p| s.contacts.get(&p).cloned()))
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

    fn conversation(&self, peer: &str) -> Result<Option<ConversationRecord>> {
        Ok(self.lock().conversations.get(peer).cloned())
    }

    fn conversations(&self) -> Result<Vec<ConversationRecord>> {
        Ok(self.lock().conversations.values().cloned().collect())
    }

    fn messages(&self, peer: &str, from_seq: u64) -> Result<Vec<MessageRecord>> {
        Ok(self
            .lock()
            .messages
            .range((peer.to_string(), from_seq)..=(peer.to_string(), u64::MAX))
            .map(|(_, m)| m.clone())
            .collect())
    }

    fn message(&self, id: &[u8; 16]) -> Result<Option<MessageRecord>> {
        let s = self.lock();
        Ok(s.message_ids
            .get(id)
            .and_then(|k| s.messages.get(k))
            .cloned())
    }

    fn outbox(&self) -> Result<Vec<OutboxEntry>> {
        Ok(self.lock().outbox.values().cloned().collect())
    }

    fn session(&self, peer_id: &str) -> Result<Option<SecretBytes>> {
        Ok(self.lock().sessions.get(peer_id).cloned())
    }

    fn contact_requests(&self) -> Result<Vec<ContactRequestRecord>> {
        Ok(self.lock().requests.values().cloned().collect())
    }

    fn replay(&self) -> Result<Option<SecretBytes>> {
        Ok(self.lock().replay.clone())
    }

    fn seen(&self, id: &[u8; 16]) -> Result<bool> {
        Ok(self.lock().seen.contains(id))
    }

    fn held(&self) -> Result<Vec<HeldMessage>> {
        Ok(self.lock().held.values().cloned().collect())
    }

    fn own_mailboxes(&self) -> Result<Vec<OwnMailbox>> {
        Ok(self.lock().own_mailboxes.values().cloned().collect())
    }

    fn contact_mailboxes(&self) -> Result<Vec<ContactMailboxes>> {
        Ok(self.lock().contact_mailboxes.values().cloned().collect())
    }

    fn deposits(&self) -> Result<Vec<DepositRecord>> {
        Ok(self.lock().deposits.values().cloned().collect())
    }

    fn attachment(&self, id: &[u8; 16]) -> Result<Option<AttachmentRecord>> {
        Ok(self.lock().attachments.get(id).cloned())
    }

    fn attachments(&self) -> Result<Vec<AttachmentRecord>> {
        Ok(self.lock().attachments.values().cloned().collect())
    }

    fn group_sync(&self, id: &GroupId) -> Result<Option<GroupSyncRecord>> {
        Ok(self.lock().group_syncs.get(id).cloned())
    }

    fn group_message(&self, id: &[u8; 16]) -> Result<Option<GroupMessageRecord>> {
        Ok(self.lock().group_messages.get(id).cloned())
    }

    fn uploads(&self) -> Result<Vec<UploadRecord>> {
        Ok(self.lock().uploads.values().cloned().collect())
    }

    fn location(&self, id: &[u8; 16]) -> Result<Option<LocationRecord>> {
        Ok(self.lock().locations.get(id).cloned())
    }

    fn locations(&self) -> Result<Vec<LocationRecord>> {
        Ok(self.lock().locations.values().cloned().collect())
    }

    fn position(&self) -> Result<Option<PositionRecord>> {
        Ok(self.lock().position)
    }

    fn forwarded(&self, id: &[u8; 16]) -> Result<bool> {
        Ok(self.lock().forwarded.contains(id))
    }

    fn flush(&self) -> Result<()> {
        Ok(())
    }

    fn apply_deferred(&self, ops: Vec<Op>) -> Result<()> {
        // Every operation below is infallible, so the batch is applied in place: all of it or,
        // if the process dies, none of it (memory does not survive).
        let mut next = self.lock();
        for op in ops {
            match op {
                Op::PutAccount(a) => next.account = Some(a),
                Op::PutProfile(p) => next.profile = Some(p),
                Op::PutSettings(s) => next.settings = Some(s),
                Op::PutContact(c) => {
                    if let Some(peer) = c.peer_id.clone() {
                        next.contact_peers.insert((peer, c.phone.clone()));
                    }
                    if let Some(old) = next.contacts.insert(c.phone.clone(), c) {
                        let new_peer = next.contacts[&old.phone].peer_id.clone();
                        if let Some(peer) = old.peer_id.filter(|p| Some(p) != new_peer.as_ref()) {
                            next.contact_peers.remove(&(peer, old.phone));
                        }
                    }
                }
                Op::RemoveContact(p) => {
                    if let Some(old) = next.contacts.remove(&p) {
                        if let Some(peer) = old.peer_id {
                            next.contact_peers.remove(&(peer, old.phone));
                        }
                    }
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
                Op::PutMessage(m) => {
                    let k = (m.peer.clone(), m.seq);
                    if let Some(old) = next.messages.get(&k) {
                        let old_id = old.id;
                        next.message_ids.remove(&old_id);
                    }
                    next.message_ids.insert(m.id, k.clone());
                    next.messages.insert(k, m);
                }
                Op::PutConversation(c) => {
                    next.conversations.insert(c.peer.clone(), c);
                }
                Op::PutOutbox(o) => {
                    next.outbox.insert(o.id, o);
                }
                Op::RemoveOutbox(id) => {
                    next.outbox.remove(&id);
                }
                Op::PutSession { peer_id, pickle } => {
                    next.sessions.insert(peer_id, pickle);
                }
                Op::PutContactRequest(r) => {
                    next.requests.insert(r.peer_id.clone(), r);
                }
                Op::RemoveContactRequest(p) => {
                    next.requests.remove(&p);
                }
                Op::PutReplay(b) => next.replay = Some(b),
                Op::MarkSeen(id) => {
                    next.seen.insert(id);
                }
                Op::PutHeld(h) => {
                    next.held.insert((h.message.peer.clone(), h.n), h);
                }
                Op::RemoveHeld { peer, n } => {
                    next.held.remove(&(peer, n));
                }
                Op::PutOwnMailbox(m) => {
                    next.own_mailboxes.insert(m.mailbox, m);
                }
                Op::RemoveOwnMailbox(id) => {
                    next.own_mailboxes.remove(&id);
                }
                Op::PutContactMailboxes(c) => {
                    next.contact_mailboxes.insert(c.phone.clone(), c);
                }
                Op::PutDeposit(d) => {
                    next.deposits.insert((d.id, d.mailbox), d);
                }
                Op::RemoveDeposit(id, mailbox) => {
                    next.deposits.remove(&(id, mailbox));
                }
                Op::PutAttachment(a) => {
                    next.attachments.insert(a.id, a);
                }
                Op::RemoveAttachment(id) => {
                    next.attachments.remove(&id);
                }
                Op::PutGroupSync(g) => {
                    next.group_syncs.insert(g.id, g);
                }
                Op::RemoveGroupSync(id) => {
                    next.group_syncs.remove(&id);
                }
                Op::PutGroupMessage(m) => {
                    next.group_messages.insert(m.id, m);
                }
                Op::PutUpload(u) => {
                    next.uploads.insert(u.id, u);
                }
                Op::RemoveUpload(id) => {
                    next.uploads.remove(&id);
                }
                Op::PutLocation(l) => {
                    next.locations.insert(l.id, l);
                }
                Op::PutPosition(p) => next.position = Some(p),
                Op::MarkForwarded(id) => {
                    next.forwarded.insert(id);
                }
            }
        }
        Ok(())
    }
}
