//! Groups over the network.
//!
//! **Membership.** Admins own a group's state ([`GroupState`]): members, roles and name, with a
//! version that every change increases. An admin's change goes to every member, and to those
//! it removes, as a [`Payload::GroupUpdate`]; a device takes a newer version only from a
//! member its current state names as an admin. A device that does not know the group yet takes
//! it as an invitation, which the user accepts or declines. Members who are not each other's
//! contacts learn each other's signed contact cards from the admin ([`Payload::GroupCards`])
//! and, once they accept, become contacts so pairwise sessions (and mailboxes) can carry the
//! group's traffic. Joining, declining and leaving are announced by the member itself
//! ([`Payload::GroupMembership`]) to the others.
//!
//! **Messages.** Each member sends with its own Megolm sender key (crypto's [`GroupSender`]):
//! one ciphertext per message, carried to each joined member over the pairwise channel (one
//! outbox entry per member, so delivery, retries and relays work as for texts, and each
//! member's state is tracked). The key's session goes to members over the pairwise channel
//! ([`Payload::GroupKey`]) before they need it. A change of the member set replaces the key, so
//! a removed member holds nothing that opens what is sent afterwards. A message whose key has
//! not arrived yet waits, durably, until it does.

use super::attachment::layout_ok;
use instaconnect_crypto::{chunk_hash, group_message_session_id, GroupReceiver, GroupSender};
use instaconnect_wire::proto::AttachmentManifest;
use instaconnect_wire::proto::{
    GroupBody, GroupCard, GroupState, GroupStateMember, MsgId, MAX_GROUP_CARDS, MAX_RECEIPT_IDS,
};
use instaconnect_wire::records::{
    AttachmentRecord, GroupId, GroupKeyRecord, GroupMember, GroupMessageRecord, GroupRecord,
    GroupSyncRecord, Role, WaitingGroupMessage,
};

use super::*;

/// Sender keys kept per member (older sessions keep opening messages still on their way).
const MAX_KEYS_PER_MEMBER: usize = 4;
/// Group messages waiting for their key, per group; beyond it the oldest is dropped.
const MAX_WAITING_PER_GROUP: usize = 256;

/// The outbox entry (and envelope) id of group message `id` for member `phone`: distinct per
/// member, so each has its own delivery state, and the same after a restart.
pub(super) fn fanout_id(id: &MsgId, phone: &str) -> MsgId {
    let mut buf = Vec::with_capacity(16 + 16 + phone.len());
    buf.extend_from_slice(b"group-fanout/v1\0");
    buf.extend_from_slice(id);
    buf.extend_from_slice(phone.as_bytes());
    let h = chunk_hash(&buf);
    let mut out = [0u8; 16];
    out.copy_from_slice(&h[..16]);
    out
}

/// Group messages in flight to members: fan-out id -> (message id, member).
#[derive(Default)]
pub(super) struct Fanout {
    pub(super) by_entry: HashMap<MsgId, (MsgId, String)>,
}

impl Fanout {
    /// Rebuilds the map from the outbox entries that carry group messages.
    pub(super) fn load(store: &dyn Store) -> Result<Fanout> {
        let mut f = Fanout::default();
        for e in store.outbox()? {
            let OutboxPayload::Payload(bytes) = &e.payload else {
                continue;
            };
            let Ok(Payload::GroupMessage { id, .. }) = Payload::decode(bytes) else {
                continue;
            };
            if let Some(c) = store.contact_by_peer(&e.peer_id)? {
                f.by_entry.insert(e.id, (id, c.phone));
            }
        }
        Ok(f)
    }
}

fn phones(state: &GroupState) -> Vec<String> {
    let mut v: Vec<String> = state.members.iter().map(|m| m.phone.clone()).collect();
    v.sort();
    v
}

fn state_of(g: &GroupRecord, version: u64, joined: Vec<String>) -> GroupState {
    GroupState {
        id: g.id.0,
        version,
        name: g.name.clone(),
        members: g
            .members
            .iter()
            .map(|m| GroupStateMember {
                phone: m.phone.clone(),
                admin: m.role == Role::Admin,
            })
            .collect(),
        joined,
    }
}

fn members_of(state: &GroupState) -> Vec<GroupMember> {
    state
        .members
        .iter()
        .map(|m| GroupMember {
            phone: m.phone.clone(),
            role: if m.admin { Role::Admin } else { Role::Member },
        })
        .collect()
}

impl Engine {
    fn group_parts(&self, id: &GroupId) -> Result<(GroupRecord, GroupSyncRecord)> {
        let g = self
            .store
            .group(id)?
            .ok_or_else(|| EngineError::Group(format!("no group {}", id.to_hex())))?;
        let sync = self
            .store
            .group_sync(id)?
            .unwrap_or_else(|| GroupSyncRecord {
                id: *id,
                state: GroupState {
                    id: id.0,
                    version: 0,
                    name: g.name.clone(),
                    members: Vec::new(),
                    joined: vec![self.account.phone.clone()],
                },
                invited_by: None,
                sender: None,
                sender_members: Vec::new(),
                shared_with: Vec::new(),
                keys: Vec::new(),
                waiting: Vec::new(),
                cards: Vec::new(),
            });
        Ok((g, sync))
    }

    /// The device of a member we can send to (a contact, linked, not blocked).
    fn member_peer(&self, phone: &str) -> Result<Option<String>> {
        if self.is_blocked(phone) {
            return Ok(None);
        }
        Ok(self
            .store
            .contact(phone)?
            .filter(|c| c.card.is_some())
            .and_then(|c| c.peer_id))
    }

    fn queue_to_member(&mut self, phone: &str, payload: &Payload, now_ms: u64) -> Result<bool> {
        match self.member_peer(phone)? {
            Some(peer) => {
                self.queue_ephemeral(&peer, payload, now_ms)?;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// The signed cards we can hand on for these members: ours, and our contacts'.
    fn cards_of(&mut self, members: &[String], now_ms: u64) -> Result<Vec<GroupCard>> {
        let me = self.account.phone.clone();
        let mut out = Vec::new();
        for phone in members {
            let card = if *phone == me {
                Some(self.my_card(now_ms)?.to_bytes())
            } else {
                self.store.contact(phone)?.and_then(|c| c.card)
            };
            if let Some(card) = card {
                out.push(GroupCard {
                    phone: phone.clone(),
                    card,
                });
            }
        }
        Ok(out)
    }

    fn send_cards(
        &mut self,
        to: &str,
        group: &GroupId,
        cards: &[GroupCard],
        now_ms: u64,
    ) -> Result<()> {
        let cards: Vec<GroupCard> = cards.iter().filter(|c| c.phone != to).cloned().collect();
        for chunk in cards.chunks(MAX_GROUP_CARDS) {
            let payload = Payload::GroupCards {
                group: group.0,
                cards: chunk.to_vec(),
            };
            self.queue_to_member(to, &payload, now_ms)?;
        }
        Ok(())
    }

    /// The user changed a group (created it, added, removed, promoted, demoted, renamed) in
    /// the address book: send the new state to every member and to those removed.
    pub(super) fn group_changed(&mut self, id: GroupId, now_ms: u64) -> Result<Option<String>> {
        let me = self.account.phone.clone();
        let (g, mut sync) = self.group_parts(&id)?;
        if sync.invited_by.is_some() {
            return Err(EngineError::Group(
                "accept the invitation first (`instaconnect groups accept`)".into(),
            ));
        }
        if g.left {
            return Err(EngineError::Group(format!("you left {:?}", g.name)));
        }
        // Admin by the state the members share (a local record that says otherwise is not
        // enough), and by the address book.
        let admin_here = g
            .members
            .iter()
            .any(|m| m.phone == me && m.role == Role::Admin);
        if !admin_here || (sync.state.version > 0 && !sync.state.is_admin(&me)) {
            return Err(EngineError::Group(format!(
                "only a group admin can change {:?}",
                g.name
            )));
        }
        let old = sync.state.clone();
        let mut joined: Vec<String> = old
            .joined
            .iter()
            .filter(|j| g.members.iter().any(|m| &m.phone == *j))
            .cloned()
            .collect();
        if !joined.contains(&me) {
            joined.push(me.clone());
        }
        let state = state_of(&g, old.version + 1, joined);
        let added: Vec<String> = phones(&state)
            .into_iter()
            .filter(|p| *p != me && !old.is_member(p))
            .collect();
        let removed: Vec<String> = phones(&old)
            .into_iter()
            .filter(|p| !state.is_member(p))
            .collect();
        let all = phones(&state);
        let all_cards = self.cards_of(&all, now_ms)?;
        let new_cards: Vec<GroupCard> = all_cards
            .iter()
            .filter(|c| added.contains(&c.phone))
            .cloned()
            .collect();
        let update = Payload::GroupUpdate {
            state: state.clone(),
        };
        let mut unreachable = Vec::new();
        for phone in all.iter().filter(|p| **p != me) {
            if !self.queue_to_member(phone, &update, now_ms)? {
                unreachable.push(phone.clone());
                continue;
            }
            if added.contains(phone) {
                self.send_cards(phone, &id, &all_cards, now_ms)?;
            } else if !new_cards.is_empty() {
                self.send_cards(phone, &id, &new_cards, now_ms)?;
            }
        }
        for phone in &removed {
            self.queue_to_member(phone, &update, now_ms)?;
        }
        sync.keys.retain(|k| state.is_member(&k.phone));
        sync.waiting.retain(|w| state.is_member(&w.from));
        sync.state = state;
        self.write(vec![Op::PutGroupSync(sync)])?;
        if unreachable.is_empty() {
            Ok(None)
        } else {
            Ok(Some(format!(
                "not linked to a device yet: {} (invited once linked)",
                unreachable.join(", ")
            )))
        }
    }

    /// A contact was just linked: the groups we administer that list it and could not tell it
    /// before (it had no device) tell it now.
    pub(super) fn tell_linked_member(&mut self, phone: &str, now_ms: u64) -> Result<()> {
        let me = self.account.phone.clone();
        for g in self.store.groups()? {
            if g.left || !g.members.iter().any(|m| m.phone == phone) {
                continue;
            }
            let Some(sync) = self.store.group_sync(&g.id)? else {
                continue;
            };
            if sync.state.version == 0
                || sync.invited_by.is_some()
                || !sync.state.is_admin(&me)
                || !sync.state.is_member(phone)
                || sync.state.joined.iter().any(|j| j == phone)
            {
                continue;
            }
            let update = Payload::GroupUpdate {
                state: sync.state.clone(),
            };
            if self.queue_to_member(phone, &update, now_ms)? {
                let all = phones(&sync.state);
                let cards = self.cards_of(&all, now_ms)?;
                self.send_cards(phone, &g.id, &cards, now_ms)?;
                // The others could not have its card before either.
                let theirs: Vec<GroupCard> =
                    cards.into_iter().filter(|c| c.phone == phone).collect();
                for other in all.iter().filter(|p| **p != me && *p != phone) {
                    self.send_cards(other, &g.id, &theirs, now_ms)?;
                }
            }
        }
        Ok(())
    }

    /// The user accepted or declined an invitation.
    pub(super) fn answer_group(&mut self, id: GroupId, accept: bool, now_ms: u64) -> Result<()> {
        let me = self.account.phone.clone();
        let (g, mut sync) = self.group_parts(&id)?;
        let Some(inviter) = sync.invited_by.clone() else {
            return Err(EngineError::Group(format!(
                "no invitation to answer for {:?}",
                g.name
            )));
        };
        let card = self.my_card(now_ms)?.to_bytes();
        let payload = Payload::GroupMembership {
            group: id.0,
            joined: accept,
            card,
        };
        if !accept {
            // Tell the admins, forget the group.
            for m in sync
                .state
                .members
                .iter()
                .filter(|m| m.admin || m.phone == inviter)
            {
                if m.phone != me {
                    let phone = m.phone.clone();
                    self.queue_to_member(&phone, &payload, now_ms)?;
                }
            }
            self.write(vec![Op::RemoveGroup(id), Op::RemoveGroupSync(id)])?;
            return Ok(());
        }
        sync.invited_by = None;
        if !sync.state.joined.contains(&me) {
            sync.state.joined.push(me.clone());
        }
        let cards = std::mem::take(&mut sync.cards);
        self.write(vec![Op::PutGroupSync(sync.clone())])?;
        for c in cards {
            self.introduce(&c.phone, &c.card, None, now_ms)?;
        }
        for phone in phones(&sync.state).iter().filter(|p| **p != me) {
            self.queue_to_member(phone, &payload, now_ms)?;
        }
        let _ = g;
        Ok(())
    }

    /// The user left a group (the address book marked it left): tell the members, drop the
    /// keys.
    pub(super) fn leave_group(&mut self, id: GroupId, now_ms: u64) -> Result<()> {
        let me = self.account.phone.clone();
        let (_, mut sync) = self.group_parts(&id)?;
        let card = self.my_card(now_ms)?.to_bytes();
        let payload = Payload::GroupMembership {
            group: id.0,
            joined: false,
            card,
        };
        for phone in phones(&sync.state).iter().filter(|p| **p != me) {
            self.queue_to_member(phone, &payload, now_ms)?;
        }
        sync.sender = None;
        sync.keys.clear();
        sync.waiting.clear();
        sync.shared_with.clear();
        self.write(vec![Op::PutGroupSync(sync)])
    }

    /// Makes a member we learnt of through a group a contact, so sessions and mailboxes can
    /// carry the group's traffic. A contact whose key we know already keeps it: a card with
    /// another key is refused.
    fn introduce(
        &mut self,
        phone: &str,
        card_bytes: &[u8],
        sender: Option<IdentityKey>,
        now_ms: u64,
    ) -> Result<()> {
        if phone == self.account.phone || self.is_blocked(phone) {
            return Ok(());
        }
        let Ok(card) = ContactCard::from_bytes(card_bytes, now_ms) else {
            return Ok(());
        };
        if card.display.phone.as_deref() != Some(phone)
            || sender.is_some_and(|s| s != card.identity())
        {
            return Ok(());
        }
        let peer = card.identity().peer_id();
        let existing = self.store.contact(phone)?;
        if let Some(key) = existing.as_ref().and_then(|c| c.identity_key) {
            if key != card.identity().to_bytes() {
                self.problem(format!(
                    "a group gave another key for your contact {phone}; kept the one you have"
                ));
                return Ok(());
            }
            if existing.as_ref().is_some_and(|c| c.card.is_some()) && sender.is_none() {
                return Ok(());
            }
        }
        let mut c = existing.unwrap_or_else(|| ContactRecord::new(phone, now_ms));
        if c.name.is_none() {
            c.name = card.display.name.clone();
        }
        c.peer_id = Some(peer.clone());
        c.identity_key = Some(card.identity().to_bytes());
        c.card = Some(card_bytes.to_vec());
        c.updated_at_ms = now_ms;
        self.write(vec![Op::PutContact(c)])?;
        let fresh = self.session(&peer)?.is_none();
        if fresh {
            let s = Session::outbound(&self.device, &card, now_ms)?;
            self.sessions.insert(peer.clone(), s);
            self.session_changed(&peer);
            self.peer_mut(&peer, now_ms).view.contact = Some(phone.into());
            self.mailboxes_for(phone, true, now_ms)?;
            self.due_now(&peer, now_ms);
            self.pump_outbox(Some(&peer), now_ms)?;
        }
        Ok(())
    }

    /// Sends a text to a group.
    pub(super) fn send_group_text(
        &mut self,
        id: GroupId,
        text: String,
        now_ms: u64,
    ) -> Result<String> {
        if text.trim().is_empty() {
            return Err(EngineError::Empty);
        }
        if text.len() > MAX_TEXT_BYTES {
            return Err(EngineError::TooLong { len: text.len() });
        }
        let msg_id = self.random_id();
        let body = GroupBody::Text {
            id: msg_id,
            text: text.clone(),
        };
        self.send_group_body(id, msg_id, body, text, Vec::new(), now_ms)
    }

    /// Sends the file the blob store holds under `msg_id` (sealed as `manifest`) to a group.
    /// Its members fetch the chunks from this device, which serves them to members only.
    pub(super) fn send_group_attachment(
        &mut self,
        id: GroupId,
        msg_id: MsgId,
        manifest: AttachmentManifest,
        now_ms: u64,
    ) -> Result<String> {
        self.check_outgoing(&msg_id, &manifest)?;
        let caption = manifest.caption.clone().unwrap_or_default();
        let count = manifest.chunks.len();
        let record = AttachmentRecord {
            id: msg_id,
            peer: id.conversation(),
            direction: Direction::Outgoing,
            manifest: manifest.clone(),
            have: vec![0xff; count.div_ceil(8)],
            complete: true,
        };
        let body = GroupBody::Attachment {
            id: msg_id,
            manifest,
        };
        self.send_group_body(
            id,
            msg_id,
            body,
            caption,
            vec![Op::PutAttachment(record)],
            now_ms,
        )
    }

    /// Encrypts `body` (message `msg_id`, shown as `text`) with our sender key for the group
    /// and queues it for every joined member, sharing the key first where needed.
    fn send_group_body(
        &mut self,
        id: GroupId,
        msg_id: MsgId,
        body: GroupBody,
        text: String,
        mut ops: Vec<Op>,
        now_ms: u64,
    ) -> Result<String> {
        let me = self.account.phone.clone();
        let (g, mut sync) = self.group_parts(&id)?;
        if g.left {
            return Err(EngineError::Group(format!(
                "you are no longer a member of {:?}",
                g.name
            )));
        }
        if sync.invited_by.is_some() {
            return Err(EngineError::Group(format!(
                "accept the invitation to {:?} first (`instaconnect groups accept`)",
                g.name
            )));
        }
        if sync.state.version == 0 {
            return Err(EngineError::Group(format!(
                "{:?} was never sent to its members",
                g.name
            )));
        }
        let members = phones(&sync.state);
        let recipients: Vec<String> = members
            .iter()
            .filter(|p| **p != me && sync.state.joined.contains(p))
            .cloned()
            .collect();
        // The sender key: replaced when the member set changed, or when it is due.
        let mut sender = match &sync.sender {
            Some(p) if sync.sender_members == members => {
                Some(GroupSender::from_pickle_bytes(p.expose())?)
            }
            _ => None,
        };
        if sender.as_ref().is_some_and(|s| s.needs_rotation(now_ms)) {
            sender = None;
        }
        let mut sender = match sender {
            Some(s) => s,
            None => {
                sync.sender_members = members.clone();
                sync.shared_with.clear();
                GroupSender::new(&id.0, now_ms)?
            }
        };
        let share = sender.key_share();
        for phone in &recipients {
            if sync.shared_with.contains(phone) {
                continue;
            }
            let payload = Payload::GroupKey {
                group: id.0,
                share: share.to_vec(),
            };
            if self.queue_to_member(phone, &payload, now_ms)? {
                sync.shared_with.push(phone.clone());
            }
        }
        let ciphertext = sender.encrypt(&body.encode()?);
        sync.sender = Some(SecretBytes::new(sender.to_pickle_bytes().to_vec()));
        let conv_key = id.conversation();
        let (mut msg, conv) = self.new_outgoing(&conv_key, msg_id, text, now_ms)?;
        let mut states = Vec::new();
        let payload = Payload::GroupMessage {
            group: id.0,
            id: msg_id,
            ciphertext,
        }
        .encode()?;
        let mut peers = Vec::new();
        for phone in &recipients {
            let Some(peer) = self.member_peer(phone)? else {
                continue;
            };
            let fan = fanout_id(&msg_id, phone);
            let entry = OutboxEntry {
                id: fan,
                peer_id: peer.clone(),
                payload: OutboxPayload::Payload(payload.clone()),
                attempts: 0,
                next_attempt_ms: now_ms,
            };
            ops.push(Op::PutOutbox(entry.clone()));
            self.outbox.insert(msg.seq + 1, entry);
            self.fanout.by_entry.insert(fan, (msg_id, phone.clone()));
            states.push((phone.clone(), DeliveryState::Queued));
            peers.push(peer);
        }
        if states.is_empty() {
            // Nobody has joined yet: there is no one to deliver to.
            msg.state = DeliveryState::Sent;
        }
        ops.push(Op::PutMessage(msg));
        ops.push(Op::PutConversation(conv));
        ops.push(Op::PutGroupMessage(GroupMessageRecord {
            id: msg_id,
            group: id,
            sender: me,
            states,
        }));
        ops.push(Op::PutGroupSync(sync));
        self.write(ops)?;
        for peer in peers {
            self.pump_outbox(Some(&peer), now_ms)?;
        }
        Ok(hex(&msg_id))
    }

    /// The user saw the group's conversation: mark read, and tell each sender if our privacy
    /// allows receipts.
    pub(super) fn mark_group_read(&mut self, id: GroupId, now_ms: u64) -> Result<()> {
        let key = id.conversation();
        let Some(mut conv) = self.store.conversation(&key)? else {
            return Ok(());
        };
        let mut ops = Vec::new();
        let mut by_sender: BTreeMap<String, Vec<MsgId>> = BTreeMap::new();
        for mut m in self.store.messages(&key, 0)? {
            if m.direction == Direction::Incoming && m.state == DeliveryState::Delivered {
                m.state = DeliveryState::Read;
                if let Some(gm) = self.store.group_message(&m.id)? {
                    by_sender.entry(gm.sender).or_default().push(m.id);
                }
                ops.push(Op::PutMessage(m));
            }
        }
        if ops.is_empty() && conv.unread == 0 {
            return Ok(());
        }
        conv.unread = 0;
        ops.push(Op::PutConversation(conv));
        self.write(ops)?;
        if self.store.settings()?.privacy.receipts == Visibility::Nobody {
            return Ok(());
        }
        for (sender, ids) in by_sender {
            for chunk in ids.chunks(MAX_RECEIPT_IDS) {
                let payload = Payload::GroupRead {
                    group: id.0,
                    ids: chunk.to_vec(),
                };
                self.queue_to_member(&sender, &payload, now_ms)?;
            }
        }
        Ok(())
    }

    /// A fan-out entry of one of our group messages moved to `state` for its member.
    pub(super) fn group_entry_state(&mut self, entry: &MsgId, state: DeliveryState) -> Result<()> {
        let Some((id, phone)) = self.fanout.by_entry.get(entry).cloned() else {
            return Ok(());
        };
        if state >= DeliveryState::Delivered {
            self.fanout.by_entry.remove(entry);
        }
        self.member_state(&id, &phone, state)
    }

    fn member_state(&mut self, id: &MsgId, phone: &str, state: DeliveryState) -> Result<()> {
        let Some(mut gm) = self.store.group_message(id)? else {
            return Ok(());
        };
        let Some(slot) = gm.states.iter_mut().find(|(p, _)| p == phone) else {
            return Ok(());
        };
        if slot.1 >= state {
            return Ok(());
        }
        slot.1 = state;
        let overall = gm.states.iter().map(|(_, s)| *s).min();
        self.write(vec![Op::PutGroupMessage(gm)])?;
        if let Some(overall) = overall {
            if let Some(mut m) = self.store.message(id)? {
                if m.state < overall {
                    m.state = overall;
                    let to = m.peer.clone();
                    self.write(vec![Op::PutMessage(m)])?;
                    self.event(Event::StateChanged {
                        to,
                        id: hex(id),
                        state: overall,
                    });
                }
            }
        }
        Ok(())
    }

    /// Whether `phone` is a member of the group whose conversation key is `conversation`, as
    /// the state we hold says (and we are still in it).
    pub(super) fn is_group_member(&self, conversation: &str, phone: &str) -> bool {
        let Some(id) = GroupId::from_conversation(conversation) else {
            return false;
        };
        let left = self.store.group(&id).ok().flatten().is_none_or(|g| g.left);
        !left
            && self
                .store
                .group_sync(&id)
                .ok()
                .flatten()
                .is_some_and(|s| s.state.is_member(phone))
    }

    /// Whether `id` is a fan-out entry of a group message for the contact `phone`.
    pub(super) fn is_group_entry_for(&self, id: &MsgId, phone: &str) -> bool {
        self.fanout
            .by_entry
            .get(id)
            .is_some_and(|(_, p)| p == phone)
    }

    pub(super) fn is_group_entry(&self, id: &MsgId) -> bool {
        self.fanout.by_entry.contains_key(id)
    }

    // ----- what members send us ------------------------------------------------------------

    /// Takes a group payload from the contact `contact` (authenticated as `sender`); `id` is
    /// the envelope's. False if it is malformed.
    pub(super) fn take_group_payload(
        &mut self,
        contact: &ContactRecord,
        sender: IdentityKey,
        id: MsgId,
        sent_at_ms: u64,
        payload: Payload,
        now_ms: u64,
    ) -> Result<bool> {
        self.write(vec![Op::MarkSeen(id)])?;
        let from = contact.phone.as_str();
        match payload {
            Payload::GroupUpdate { state } => self.take_group_update(from, state, now_ms)?,
            Payload::GroupCards { group, cards } => {
                self.take_group_cards(from, GroupId(group), cards, now_ms)?
            }
            Payload::GroupMembership {
                group,
                joined,
                card,
            } => self.take_membership(from, sender, GroupId(group), joined, &card, now_ms)?,
            Payload::GroupKey { group, share } => {
                self.take_group_key(from, sender, GroupId(group), &share, now_ms)?
            }
            Payload::GroupMessage {
                group,
                id: msg_id,
                ciphertext,
            } => {
                let w = WaitingGroupMessage {
                    from: from.to_string(),
                    id: msg_id,
                    sent_at_ms,
                    ciphertext,
                };
                self.take_group_message(GroupId(group), w, now_ms)?
            }
            Payload::GroupRead { group, ids } => {
                for m in ids {
                    let ours = self
                        .store
                        .group_message(&m)?
                        .is_some_and(|gm| gm.group.0 == group && gm.sender == self.account.phone);
                    if ours {
                        self.member_state(&m, from, DeliveryState::Read)?;
                    }
                }
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    fn take_group_update(&mut self, from: &str, state: GroupState, now_ms: u64) -> Result<()> {
        let me = self.account.phone.clone();
        let id = GroupId(state.id);
        let existing = self.store.group(&id)?;
        let sync = self.store.group_sync(&id)?;
        let (Some(mut g), Some(mut sync)) = (existing.clone(), sync) else {
            if existing.is_some() || !state.is_admin(from) || !state.is_member(&me) {
                return Ok(());
            }
            // An invitation.
            let g = GroupRecord {
                id,
                name: state.name.clone(),
                members: members_of(&state),
                created_at_ms: now_ms,
                updated_at_ms: now_ms,
                left: false,
            };
            let sync = GroupSyncRecord {
                id,
                state: state.clone(),
                invited_by: Some(from.to_string()),
                sender: None,
                sender_members: Vec::new(),
                shared_with: Vec::new(),
                keys: Vec::new(),
                waiting: Vec::new(),
                cards: Vec::new(),
            };
            self.write(vec![Op::PutGroup(g), Op::PutGroupSync(sync)])?;
            self.event(Event::GroupInvite {
                group: id.to_hex(),
                name: state.name,
                from: from.to_string(),
                members: state.members.len(),
            });
            return Ok(());
        };
        if state.version <= sync.state.version || !sync.state.is_admin(from) {
            return Ok(());
        }
        if g.left && sync.invited_by.is_none() && !sync.state.is_member(&me) {
            return Ok(());
        }
        let was_member = !g.left;
        g.name = state.name.clone();
        g.members = members_of(&state);
        g.updated_at_ms = now_ms;
        let mut state = state;
        let mut joined: Vec<String> = sync
            .state
            .joined
            .iter()
            .filter(|j| state.is_member(j))
            .cloned()
            .collect();
        for j in &state.joined {
            if !joined.contains(j) {
                joined.push(j.clone());
            }
        }
        state.joined = joined;
        let what = if !state.is_member(&me) {
            g.left = true;
            sync.sender = None;
            sync.keys.clear();
            sync.waiting.clear();
            sync.cards.clear();
            sync.shared_with.clear();
            "you were removed".to_string()
        } else {
            sync.keys.retain(|k| state.is_member(&k.phone));
            sync.waiting.retain(|w| state.is_member(&w.from));
            let added: Vec<&str> = state
                .members
                .iter()
                .map(|m| m.phone.as_str())
                .filter(|p| !sync.state.is_member(p))
                .collect();
            let removed: Vec<&str> = sync
                .state
                .members
                .iter()
                .map(|m| m.phone.as_str())
                .filter(|p| !state.is_member(p))
                .collect();
            let mut parts = Vec::new();
            if !added.is_empty() {
                parts.push(format!("{from} added {}", added.join(", ")));
            }
            if !removed.is_empty() {
                parts.push(format!("{from} removed {}", removed.join(", ")));
            }
            if parts.is_empty() {
                parts.push(format!("{from} changed the group"));
            }
            parts.join("; ")
        };
        sync.state = state;
        let name = g.name.clone();
        self.write(vec![Op::PutGroup(g), Op::PutGroupSync(sync)])?;
        if was_member {
            self.event(Event::GroupChanged {
                group: id.to_hex(),
                name,
                what,
            });
        }
        Ok(())
    }

    /// The network state of a group we are still in.
    fn live_sync(&self, id: &GroupId) -> Result<Option<GroupSyncRecord>> {
        if self.store.group(id)?.is_none_or(|g| g.left) {
            return Ok(None);
        }
        Ok(self.store.group_sync(id)?)
    }

    fn take_group_cards(
        &mut self,
        from: &str,
        id: GroupId,
        cards: Vec<GroupCard>,
        now_ms: u64,
    ) -> Result<()> {
        let Some(mut sync) = self.live_sync(&id)? else {
            return Ok(());
        };
        if !sync.state.is_admin(from) {
            return Ok(());
        }
        let cards: Vec<GroupCard> = cards
            .into_iter()
            .filter(|c| sync.state.is_member(&c.phone) && c.phone != self.account.phone)
            .collect();
        if sync.invited_by.is_some() {
            // Kept until the user accepts: declining leaves no contacts behind.
            for c in cards {
                sync.cards.retain(|k| k.phone != c.phone);
                if sync.cards.len() < instaconnect_wire::proto::MAX_GROUP_MEMBERS {
                    sync.cards.push(c);
                }
            }
            return self.write(vec![Op::PutGroupSync(sync)]);
        }
        for c in cards {
            self.introduce(&c.phone, &c.card, None, now_ms)?;
        }
        Ok(())
    }

    fn take_membership(
        &mut self,
        from: &str,
        sender: IdentityKey,
        id: GroupId,
        joined: bool,
        card: &[u8],
        now_ms: u64,
    ) -> Result<()> {
        let Some(mut g) = self.store.group(&id)? else {
            return Ok(());
        };
        let Some(mut sync) = self.store.group_sync(&id)? else {
            return Ok(());
        };
        if g.left || !sync.state.is_member(from) {
            return Ok(());
        }
        let what = if joined {
            if sync.state.joined.iter().any(|j| j == from) {
                return Ok(());
            }
            sync.state.joined.push(from.to_string());
            format!("{from} joined")
        } else {
            sync.state.members.retain(|m| m.phone != from);
            sync.state.joined.retain(|j| j != from);
            sync.keys.retain(|k| k.phone != from);
            sync.waiting.retain(|w| w.from != from);
            g.members.retain(|m| m.phone != from);
            // The last admin left: the first remaining member takes over, on every device
            // alike (the address book does the same for the leaver).
            if !sync.state.members.iter().any(|m| m.admin) {
                if let Some(first) = sync.state.members.first_mut() {
                    first.admin = true;
                }
                if let Some(first) = g.members.first_mut() {
                    first.role = Role::Admin;
                }
            }
            g.updated_at_ms = now_ms;
            format!("{from} left")
        };
        let name = g.name.clone();
        let invited = sync.invited_by.is_some();
        self.write(vec![Op::PutGroup(g), Op::PutGroupSync(sync)])?;
        if joined && !invited {
            // Its own fresh card: the one the admin handed on may have expired.
            self.introduce(from, card, Some(sender), now_ms)?;
            // What we queued for it before it knew us (it refused then) can go now.
            if let Some(peer) = self.member_peer(from)? {
                self.due_now(&peer, now_ms);
                self.pump_outbox(Some(&peer), now_ms)?;
            }
        }
        self.event(Event::GroupChanged {
            group: id.to_hex(),
            name,
            what,
        });
        Ok(())
    }

    fn take_group_key(
        &mut self,
        from: &str,
        sender: IdentityKey,
        id: GroupId,
        share: &[u8],
        now_ms: u64,
    ) -> Result<()> {
        let Some(mut sync) = self.live_sync(&id)? else {
            return Ok(());
        };
        if !sync.state.is_member(from) {
            return Ok(());
        }
        let Ok(receiver) = GroupReceiver::from_key_share(sender, share) else {
            self.problem(format!("{from} sent a group key that could not be read"));
            return Ok(());
        };
        if receiver.group_id() != id.0 {
            return Ok(());
        }
        let session_id = receiver.session_id();
        if sync
            .keys
            .iter()
            .any(|k| k.phone == from && k.session_id == session_id)
        {
            return Ok(());
        }
        let theirs = sync.keys.iter().filter(|k| k.phone == from).count();
        if theirs >= MAX_KEYS_PER_MEMBER {
            if let Some(i) = sync.keys.iter().position(|k| k.phone == from) {
                sync.keys.remove(i);
            }
        }
        sync.keys.push(GroupKeyRecord {
            phone: from.to_string(),
            session_id,
            pickle: SecretBytes::new(receiver.to_pickle_bytes().to_vec()),
        });
        // Messages that came before this key.
        let (now_open, still): (Vec<_>, Vec<_>) = std::mem::take(&mut sync.waiting)
            .into_iter()
            .partition(|w| {
                w.from == from && group_message_session_id(&w.ciphertext).ok() == Some(session_id)
            });
        sync.waiting = still;
        self.write(vec![Op::PutGroupSync(sync)])?;
        for w in now_open {
            self.take_group_message(id, w, now_ms)?;
        }
        Ok(())
    }

    fn take_group_message(
        &mut self,
        id: GroupId,
        w: WaitingGroupMessage,
        now_ms: u64,
    ) -> Result<()> {
        if self.store.message(&w.id)?.is_some() {
            return Ok(());
        }
        let Some(g) = self.store.group(&id)? else {
            return Ok(());
        };
        let Some(mut sync) = self.store.group_sync(&id)? else {
            return Ok(());
        };
        if g.left || sync.invited_by.is_some() || !sync.state.is_member(&w.from) {
            return Ok(());
        }
        let Ok(session_id) = group_message_session_id(&w.ciphertext) else {
            self.problem(format!("a group message from {} was malformed", w.from));
            return Ok(());
        };
        let Some(k) = sync
            .keys
            .iter_mut()
            .find(|k| k.phone == w.from && k.session_id == session_id)
        else {
            if sync.waiting.iter().any(|x| x.id == w.id) {
                return Ok(());
            }
            if sync.waiting.len() >= MAX_WAITING_PER_GROUP {
                sync.waiting.remove(0);
            }
            sync.waiting.push(w);
            return self.write(vec![Op::PutGroupSync(sync)]);
        };
        let mut receiver = GroupReceiver::from_pickle_bytes(k.pickle.expose())?;
        let opened = match receiver.decrypt(&w.ciphertext) {
            Ok(p) => p,
            Err(e) => {
                self.problem(format!(
                    "a group message from {} could not be decrypted ({e})",
                    w.from
                ));
                return Ok(());
            }
        };
        k.pickle = SecretBytes::new(receiver.to_pickle_bytes().to_vec());
        let (text, manifest) = match GroupBody::decode(&opened.plaintext) {
            Ok(GroupBody::Text { id: inner, text }) if inner == w.id => (text, None),
            Ok(GroupBody::Attachment {
                id: inner,
                manifest,
            }) if inner == w.id && layout_ok(&manifest) => {
                (manifest.caption.clone().unwrap_or_default(), Some(manifest))
            }
            _ => {
                self.problem(format!("a group message from {} was malformed", w.from));
                return self.write(vec![Op::PutGroupSync(sync)]);
            }
        };
        let key = id.conversation();
        let mut conv = self
            .store
            .conversation(&key)?
            .unwrap_or(ConversationRecord {
                peer: key.clone(),
                ..ConversationRecord::default()
            });
        let m = MessageRecord {
            id: w.id,
            peer: key,
            seq: conv.next_seq,
            direction: Direction::Incoming,
            text: text.clone(),
            sent_at_ms: w.sent_at_ms,
            stored_at_ms: now_ms,
            state: DeliveryState::Delivered,
        };
        conv.next_seq += 1;
        conv.unread = conv.unread.saturating_add(1);
        conv.last_activity_ms = now_ms;
        let mut ops = vec![
            Op::PutMessage(m),
            Op::PutConversation(conv),
            Op::PutGroupMessage(GroupMessageRecord {
                id: w.id,
                group: id,
                sender: w.from.clone(),
                states: Vec::new(),
            }),
            Op::PutGroupSync(sync),
        ];
        let fetch = manifest.as_ref().map(|m| (m.name.clone(), m.size));
        if let Some(manifest) = manifest {
            ops.push(Op::PutAttachment(AttachmentRecord {
                id: w.id,
                peer: id.conversation(),
                direction: Direction::Incoming,
                manifest,
                have: Vec::new(),
                complete: false,
            }));
        }
        self.write(ops)?;
        self.event(Event::GroupMessageReceived {
            group: id.to_hex(),
            name: g.name,
            from: w.from.clone(),
            id: hex(&w.id),
            text,
            sent_at_ms: w.sent_at_ms,
        });
        if let Some((name, size)) = fetch {
            self.fetch_group_attachment(w.id, &w.from, name, size)?;
        }
        Ok(())
    }
}
