//! The engine's side of store-and-forward relays (PROTOCOL.md §1.8).
//!
//! - **Our mailboxes.** For every linked contact the engine opens a mailbox on up to
//!   [`MAILBOXES_PER_CONTACT`] of the relays its shell is connected to, with an owner key of its
//!   own (so relays see no account key and cannot tie one contact's mailbox to another's), and
//!   once a relay confirms one with a signed receipt it tells the contact inside the session
//!   (`Payload::Mailboxes`). It subscribes to them and fetches them when a relay link comes up
//!   and whenever a relay says something new arrived; what it fetched is stored like a direct
//!   message, deduped by id and put in order by sender number, and deleted from the relay after
//!   the flush. Texts that came this way are acknowledged end to end with `Payload::Delivered`,
//!   sent (directly or through the sender's own mailboxes) after that same flush.
//! - **Deposits.** An outbox entry for a contact we are not connected to is sealed once and left
//!   in each of the contact's mailboxes, with the hash of a deletion secret derived from our
//!   account secret and the message id (so `account delete` can purge it without any stored
//!   secret). What is due for a contact goes as one `DepositBatch` per mailbox (split only at
//!   [`DEPOSIT_BATCH_BYTES`]), answered by one signed receipt that is checked for each
//!   envelope (relay, mailbox, envelope hash). A text shows "accepted by N relays" as signed receipts come, and stays in the
//!   outbox until the contact's device acknowledges it (directly or with `Delivered`); other
//!   payloads (receipts, announcements) are done once a relay holds them.
//!
//! Mailbox requests go to the shell as [`Output::Mailbox`] on one of two links
//! ([`Link::Owner`], [`Link::Depositor`]) with ephemeral transport identities.

use instaconnect_crypto::{
    check_batch_receipt, deletion_hash, deposit_secret, envelope_hash, verify_receipt, MailboxKey,
};
use instaconnect_wire::mailbox::{
    DepositItem, MailboxId, MailboxRequest, MailboxResponse, OwnerOp, Receipt, Receipted, Refusal,
    MAX_BATCH, MAX_DEPOSIT_ITEMS, MAX_MAILBOX_FRAME_BYTES, MAX_SUBSCRIBE,
};
use instaconnect_wire::proto::{MailboxAddress, MsgId, MAX_ANNOUNCED_MAILBOXES, MAX_RECEIPT_IDS};
use instaconnect_wire::records::{ContactMailboxes, DepositRecord, OwnMailbox};

use super::*;

/// Mailboxes opened per contact, on different relays.
pub const MAILBOXES_PER_CONTACT: usize = 2;
/// Envelopes asked for per fetch.
pub const FETCH_LIMIT: u32 = MAX_BATCH as u32;
/// Messages being deposited at once per contact.
pub const MAX_DEPOSITING_PER_PEER: usize = 64;
/// Envelope bytes per deposit request, under the mailbox frame limit (a batch of larger
/// envelopes is split).
pub const DEPOSIT_BATCH_BYTES: usize = MAX_MAILBOX_FRAME_BYTES * 3 / 4;

/// A relay the shell knows.
struct RelayLink {
    addrs: Vec<String>,
    up: bool,
}

/// One of our mailboxes.
struct OwnBox {
    rec: OwnMailbox,
    key: MailboxKey,
    /// A fetch is in flight; `refetch`: fetch again when it is answered.
    fetching: bool,
    refetch: bool,
    /// The highest sequence fetched since the relay link came up.
    after: u64,
}

impl OwnBox {
    fn new(rec: OwnMailbox, key: MailboxKey) -> OwnBox {
        OwnBox {
            rec,
            key,
            fetching: false,
            refetch: false,
            after: 0,
        }
    }
}

/// What a mailbox request was for.
pub(super) enum MailboxPending {
    Create {
        mailbox: MailboxId,
    },
    Subscribe,
    Fetch {
        mailbox: MailboxId,
    },
    Delete,
    /// A `DepositBatch` into `mailbox`: each item's message id and envelope hash, in order.
    Deposit {
        peer: String,
        mailbox: MailboxId,
        addrs: Vec<String>,
        items: Vec<(MsgId, [u8; 32])>,
    },
    /// A `DepositBatch` of chunks of attachment `id` into `mailbox`: each item's chunk index
    /// and envelope hash, in order.
    Chunks {
        id: MsgId,
        mailbox: MailboxId,
        items: Vec<(u32, [u8; 32])>,
    },
}

/// A deposit request being put together for one mailbox.
#[derive(Default)]
struct PendingBatch {
    items: Vec<DepositItem>,
    ids: Vec<(MsgId, [u8; 32])>,
    bytes: usize,
    after_flush: bool,
}

/// The engine's relay state; the store holds the same mailboxes and deposits durably.
#[derive(Default)]
pub(super) struct RelayState {
    relays: BTreeMap<String, RelayLink>,
    own: BTreeMap<MailboxId, OwnBox>,
    /// Contact device (peer id) -> the mailboxes it announced.
    pub(super) boxes: HashMap<String, Vec<MailboxAddress>>,
    /// Message id -> the mailboxes that hold it (a relay's receipt said so).
    deposited: HashMap<MsgId, BTreeSet<MailboxId>>,
    /// Message id -> deposit requests in flight.
    depositing: HashMap<MsgId, usize>,
    /// Contact device -> messages being deposited.
    depositing_per_peer: HashMap<String, usize>,
    pending: HashMap<u64, (String, MailboxPending)>,
    /// Outbox entries whose first sending must wait for the flush of what they acknowledge.
    pub(super) durable_first: HashSet<MsgId>,
    /// Most envelopes per deposit request, if fewer than [`MAX_DEPOSIT_ITEMS`].
    pub(super) batch_limit: Option<usize>,
}

impl RelayState {
    pub(super) fn load(store: &dyn Store) -> Result<RelayState> {
        let mut st = RelayState::default();
        for rec in store.own_mailboxes()? {
            let key = MailboxKey::from_secret_bytes(rec.key.expose())?;
            st.own.insert(rec.mailbox, OwnBox::new(rec, key));
        }
        for c in store.contact_mailboxes()? {
            if let Some(peer) = store.contact(&c.phone)?.and_then(|c| c.peer_id) {
                st.boxes.insert(peer, c.boxes);
            }
        }
        for d in store.deposits()? {
            st.deposited.entry(d.id).or_default().insert(d.mailbox);
        }
        Ok(st)
    }

    /// Whether `peer` told us of mailboxes (and we are not offline).
    pub(super) fn can_deposit(&self, peer: &str) -> bool {
        !self.offline() && self.boxes.get(peer).is_some_and(|b| !b.is_empty())
    }

    /// We know relays and reach none of them: deposits would fail.
    pub(super) fn offline(&self) -> bool {
        !self.relays.is_empty() && !self.relays.values().any(|l| l.up)
    }

    /// When the next deposit of `queue`, for `peer`, is due: none while as many as may be are
    /// being deposited (their answers pump the rest).
    pub(super) fn next_deposit(
        &self,
        peer: &str,
        queue: &BTreeMap<(u64, [u8; 16]), OutboxEntry>,
        inflight: &HashSet<[u8; 16]>,
    ) -> Option<u64> {
        let busy = self.depositing_per_peer.get(peer).copied().unwrap_or(0);
        if busy >= MAX_DEPOSITING_PER_PEER {
            return None;
        }
        queue
            .values()
            .filter(|e| self.wants_deposit(e, inflight))
            .take(MAX_BATCH_ITEMS)
            .map(|e| e.next_attempt_ms)
            .min()
    }

    fn wants_deposit(&self, e: &OutboxEntry, inflight: &HashSet<[u8; 16]>) -> bool {
        !matches!(e.payload, OutboxPayload::Sealed(_))
            && !inflight.contains(&e.id)
            && !self.deposited.contains_key(&e.id)
            && !self.depositing.contains_key(&e.id)
    }
}

/// The relay that signed a receipt is `relay` and the signature holds.
fn receipt_from(relay: &str, r: &Receipt) -> bool {
    let Ok(key) = IdentityKey::from_bytes(&r.relay) else {
        return false;
    };
    key.peer_id() == relay && verify_receipt(r, Some(&key)).is_ok()
}

impl Engine {
    /// The relays that hold our mailboxes, with the addresses we know for them: the shell
    /// should keep an owner link to each (besides the relays it was told of), or what contacts
    /// leave there is never fetched.
    pub fn mailbox_relays(&self) -> Vec<(String, Vec<String>)> {
        let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for b in self.relay.own.values() {
            out.entry(b.rec.relay.clone())
                .or_insert_with(|| b.rec.addrs.clone());
        }
        out.into_iter().collect()
    }

    /// Deposits at most `n` (at least 1) envelopes per request. The simulator's carrying
    /// strategies, whose virtual relays tie each deposit to one message, set 1.
    pub fn set_deposit_batch_limit(&mut self, n: usize) {
        self.relay.batch_limit = Some(n.clamp(1, MAX_DEPOSIT_ITEMS));
    }

    pub(super) fn mailbox_request(
        &mut self,
        relay: &str,
        addrs: Vec<String>,
        link: Link,
        req: &MailboxRequest,
        what: MailboxPending,
        after_flush: bool,
    ) -> Result<()> {
        let frame = req.encode()?;
        let tag = self.tag();
        self.relay.pending.insert(tag, (relay.to_string(), what));
        if after_flush {
            self.after_flush.insert(tag);
        }
        self.staged.push(Output::Mailbox {
            relay: relay.to_string(),
            addrs,
            link,
            tag,
            frame,
        });
        Ok(())
    }

    fn nonce(&mut self) -> [u8; 16] {
        self.random_id()
    }

    /// Sends an owner request on one of our mailboxes.
    fn owner_request(
        &mut self,
        mailbox: MailboxId,
        build: impl FnOnce(&MailboxKey, [u8; 16]) -> Result<MailboxRequest>,
        what: MailboxPending,
        after_flush: bool,
    ) -> Result<()> {
        let nonce = self.nonce();
        let Some(b) = self.relay.own.get(&mailbox) else {
            return Ok(());
        };
        let req = build(&b.key, nonce)?;
        let (relay, addrs) = (b.rec.relay.clone(), b.rec.addrs.clone());
        self.mailbox_request(&relay, addrs, Link::Owner, &req, what, after_flush)
    }

    // ----- relay links ---------------------------------------------------------------------

    pub(super) fn on_relay(
        &mut self,
        relay: String,
        addrs: Vec<String>,
        up: bool,
        now_ms: u64,
    ) -> Result<()> {
        let link = self.relay.relays.entry(relay.clone()).or_insert(RelayLink {
            addrs: Vec::new(),
            up: false,
        });
        if !addrs.is_empty() {
            link.addrs = addrs;
        }
        let was = link.up;
        link.up = up;
        if was == up {
            return Ok(());
        }
        self.event(Event::Relay {
            relay: relay.clone(),
            up,
        });
        let here: Vec<MailboxId> = self
            .relay
            .own
            .iter()
            .filter(|(_, b)| b.rec.relay == relay)
            .map(|(id, _)| *id)
            .collect();
        for id in &here {
            if let Some(b) = self.relay.own.get_mut(id) {
                b.fetching = false;
                b.refetch = false;
                b.after = 0;
            }
        }
        if !up {
            return Ok(());
        }
        // What we have there: confirm it, listen for news, read what waits.
        let mut confirmed = Vec::new();
        for id in here {
            if self.relay.own.get(&id).is_some_and(|b| b.rec.created) {
                confirmed.push(id);
            } else {
                self.send_create(id, now_ms)?;
            }
        }
        self.subscribe(&confirmed, now_ms)?;
        for id in confirmed {
            self.fetch(id, now_ms)?;
        }
        // Contacts still short of mailboxes get one here.
        let phones: Vec<String> = self
            .store
            .contacts()?
            .into_iter()
            .filter(|c| c.card.is_some() && c.peer_id.is_some())
            .map(|c| c.phone)
            .collect();
        for phone in phones {
            self.mailboxes_for(&phone, false, now_ms)?;
        }
        // Back online: what waits for contacts we are not connected to goes now.
        let waiting: Vec<String> = self
            .outbox
            .queues
            .keys()
            .filter(|p| self.relay.boxes.contains_key(*p))
            .cloned()
            .collect();
        for peer in waiting {
            self.due_now(&peer, now_ms);
            self.pump_outbox(Some(&peer), now_ms)?;
        }
        // And the chunks of attachments that go through relays.
        self.uploads_due_now();
        self.pump_uploads(now_ms)
    }

    /// Opens mailboxes for the contact `phone` on relays we are connected to until it has
    /// [`MAILBOXES_PER_CONTACT`]; with `announce`, tells the contact again of those it has.
    pub(super) fn mailboxes_for(&mut self, phone: &str, announce: bool, now_ms: u64) -> Result<()> {
        if self.is_blocked(phone) {
            return Ok(());
        }
        let used: BTreeSet<String> = self
            .relay
            .own
            .values()
            .filter(|b| b.rec.phone == phone)
            .map(|b| b.rec.relay.clone())
            .collect();
        let mut free: Vec<(String, Vec<String>)> = self
            .relay
            .relays
            .iter()
            .filter(|(r, l)| l.up && !used.contains(*r))
            .map(|(r, l)| (r.clone(), l.addrs.clone()))
            .collect();
        // Which relays: a random choice (the injected RNG), so mailboxes spread over them.
        let want = MAILBOXES_PER_CONTACT.saturating_sub(used.len());
        for i in 0..want.min(free.len()) {
            let j = i + (self.rng.next_u64() % (free.len() - i) as u64) as usize;
            free.swap(i, j);
        }
        free.truncate(want);
        for (relay, addrs) in free {
            let mut seed = [0u8; 32];
            self.rng.fill_bytes(&mut seed);
            let key = MailboxKey::derive(self.account.identity_secret.expose(), &seed)?;
            let rec = OwnMailbox {
                phone: phone.to_string(),
                relay,
                addrs,
                key: SecretBytes::new(key.secret_bytes().to_vec()),
                mailbox: key.id(),
                created: false,
            };
            let id = rec.mailbox;
            self.write(vec![Op::PutOwnMailbox(rec.clone())])?;
            self.relay.own.insert(id, OwnBox::new(rec, key));
            self.send_create(id, now_ms)?;
        }
        if announce {
            self.announce(phone, now_ms)?;
        }
        Ok(())
    }

    fn send_create(&mut self, mailbox: MailboxId, now_ms: u64) -> Result<()> {
        self.owner_request(
            mailbox,
            |k, nonce| {
                Ok(MailboxRequest::Create {
                    mailbox,
                    auth: k.authorize(OwnerOp::Create, now_ms, nonce)?,
                })
            },
            MailboxPending::Create { mailbox },
            false,
        )
    }

    /// Tells the contact `phone` where it can leave us envelopes (if we have confirmed
    /// mailboxes for it).
    fn announce(&mut self, phone: &str, now_ms: u64) -> Result<()> {
        let boxes: Vec<MailboxAddress> = self
            .relay
            .own
            .values()
            .filter(|b| b.rec.phone == phone && b.rec.created)
            .take(MAX_ANNOUNCED_MAILBOXES)
            .map(|b| MailboxAddress {
                relay: b.rec.relay.clone(),
                addrs: b.rec.addrs.clone(),
                mailbox: b.rec.mailbox,
            })
            .collect();
        if boxes.is_empty() {
            return Ok(());
        }
        let Some(peer) = self.store.contact(phone)?.and_then(|c| c.peer_id) else {
            return Ok(());
        };
        self.queue_ephemeral(&peer, &Payload::Mailboxes { boxes }, now_ms)
    }

    fn subscribe(&mut self, mailboxes: &[MailboxId], now_ms: u64) -> Result<()> {
        // Grouped by relay, in requests of at most MAX_SUBSCRIBE.
        let mut by_relay: BTreeMap<String, Vec<MailboxId>> = BTreeMap::new();
        for id in mailboxes {
            if let Some(b) = self.relay.own.get(id) {
                by_relay.entry(b.rec.relay.clone()).or_default().push(*id);
            }
        }
        for (relay, ids) in by_relay {
            for chunk in ids.chunks(MAX_SUBSCRIBE) {
                let mut signed = Vec::with_capacity(chunk.len());
                for id in chunk {
                    let nonce = self.nonce();
                    if let Some(b) = self.relay.own.get(id) {
                        signed.push((*id, b.key.authorize(OwnerOp::Subscribe, now_ms, nonce)?));
                    }
                }
                let addrs = self.relay_addrs(&relay);
                self.mailbox_request(
                    &relay,
                    addrs,
                    Link::Owner,
                    &MailboxRequest::Subscribe { mailboxes: signed },
                    MailboxPending::Subscribe,
                    false,
                )?;
            }
        }
        Ok(())
    }

    fn relay_addrs(&self, relay: &str) -> Vec<String> {
        self.relay
            .relays
            .get(relay)
            .map(|l| l.addrs.clone())
            .unwrap_or_default()
    }

    fn relay_up(&self, relay: &str) -> bool {
        self.relay.relays.get(relay).is_some_and(|l| l.up)
    }

    fn fetch(&mut self, mailbox: MailboxId, now_ms: u64) -> Result<()> {
        let Some(b) = self.relay.own.get_mut(&mailbox) else {
            return Ok(());
        };
        if !b.rec.created {
            return Ok(());
        }
        if b.fetching {
            b.refetch = true;
            return Ok(());
        }
        let relay = b.rec.relay.clone();
        if !self.relay_up(&relay) {
            return Ok(());
        }
        let b = self.relay.own.get_mut(&mailbox).expect("checked above");
        b.fetching = true;
        b.refetch = false;
        let after = b.after;
        self.owner_request(
            mailbox,
            |k, nonce| {
                let limit = FETCH_LIMIT;
                Ok(MailboxRequest::Fetch {
                    mailbox,
                    after,
                    limit,
                    auth: k.authorize(OwnerOp::Fetch { after, limit }, now_ms, nonce)?,
                })
            },
            MailboxPending::Fetch { mailbox },
            false,
        )
    }

    pub(super) fn on_mailbox_notify(
        &mut self,
        relay: &str,
        mailbox: MailboxId,
        now_ms: u64,
    ) -> Result<()> {
        if self
            .relay
            .own
            .get(&mailbox)
            .is_some_and(|b| b.rec.relay == relay)
        {
            self.fetch(mailbox, now_ms)?;
        }
        Ok(())
    }

    // ----- answers -------------------------------------------------------------------------

    pub(super) fn on_mailbox_response(
        &mut self,
        relay: &str,
        tag: u64,
        frame: Option<&[u8]>,
        now_ms: u64,
    ) -> Result<()> {
        let Some((sent_to, what)) = self.relay.pending.remove(&tag) else {
            return Ok(());
        };
        if sent_to != relay {
            // Answered by someone else: as good as no answer.
            return self.mailbox_settle(&sent_to, what, None, now_ms);
        }
        let answer = frame.and_then(|f| MailboxResponse::decode(f).ok());
        self.mailbox_settle(relay, what, answer, now_ms)
    }

    fn mailbox_settle(
        &mut self,
        relay: &str,
        what: MailboxPending,
        answer: Option<MailboxResponse>,
        now_ms: u64,
    ) -> Result<()> {
        match what {
            MailboxPending::Create { mailbox } => {
                let ok = matches!(&answer, Some(MailboxResponse::Receipt(r))
                    if receipt_from(relay, r) && r.what == Receipted::Created { mailbox });
                if !ok {
                    if let Some(MailboxResponse::Refused(why)) = answer {
                        self.problem(format!("relay {relay} refused a mailbox: {why:?}"));
                    }
                    // Tried again when the link comes up again.
                    return Ok(());
                }
                let Some(b) = self.relay.own.get_mut(&mailbox) else {
                    return Ok(());
                };
                if b.rec.created {
                    return Ok(());
                }
                b.rec.created = true;
                let rec = b.rec.clone();
                self.write(vec![Op::PutOwnMailbox(rec.clone())])?;
                self.announce(&rec.phone, now_ms)?;
                self.subscribe(&[mailbox], now_ms)?;
                self.fetch(mailbox, now_ms)
            }
            MailboxPending::Subscribe | MailboxPending::Delete => Ok(()),
            MailboxPending::Fetch { mailbox } => {
                if let Some(b) = self.relay.own.get_mut(&mailbox) {
                    b.fetching = false;
                }
                match answer {
                    Some(MailboxResponse::Envelopes { items, more }) => {
                        self.take_fetched(mailbox, items, more, now_ms)
                    }
                    Some(MailboxResponse::Refused(Refusal::UnknownMailbox)) => {
                        // The relay lost it (expired, or wiped): open it again.
                        if let Some(b) = self.relay.own.get_mut(&mailbox) {
                            b.rec.created = false;
                            let rec = b.rec.clone();
                            self.write(vec![Op::PutOwnMailbox(rec)])?;
                        }
                        self.send_create(mailbox, now_ms)
                    }
                    _ => {
                        // Fetched again at the next notification or link.
                        if self.relay.own.get(&mailbox).is_some_and(|b| b.refetch) {
                            self.fetch(mailbox, now_ms)?;
                        }
                        Ok(())
                    }
                }
            }
            MailboxPending::Deposit {
                peer,
                mailbox,
                addrs,
                items,
            } => {
                // One signature for the batch; each item must be the mailbox and envelope
                // we sent, or none of it is believed.
                let sent: Vec<(MailboxId, [u8; 32])> =
                    items.iter().map(|(_, h)| (mailbox, *h)).collect();
                let seqs = match &answer {
                    Some(MailboxResponse::Deposits { receipt, .. }) => {
                        IdentityKey::from_bytes(&receipt.relay)
                            .ok()
                            .filter(|key| key.peer_id() == relay)
                            .and_then(|key| check_batch_receipt(receipt, &key, &sent).ok())
                    }
                    _ => None,
                }
                .unwrap_or_else(|| vec![None; items.len()]);
                for ((id, _), seq) in items.into_iter().zip(seqs) {
                    self.deposit_settled(&peer, id, relay, mailbox, addrs.clone(), seq, now_ms)?;
                }
                self.pump_outbox(Some(&peer), now_ms)
            }
            MailboxPending::Chunks { id, mailbox, items } => {
                let sent: Vec<(MailboxId, [u8; 32])> =
                    items.iter().map(|(_, h)| (mailbox, *h)).collect();
                let (seqs, refused) = match &answer {
                    Some(MailboxResponse::Deposits { receipt, refused }) => (
                        IdentityKey::from_bytes(&receipt.relay)
                            .ok()
                            .filter(|key| key.peer_id() == relay)
                            .and_then(|key| check_batch_receipt(receipt, &key, &sent).ok()),
                        refused.iter().map(|r| r.why).collect(),
                    ),
                    Some(MailboxResponse::Refused(why)) => (None, vec![*why]),
                    _ => (None, Vec::new()),
                };
                let seqs = seqs.unwrap_or_else(|| vec![None; items.len()]);
                let held: Vec<(u32, bool)> = items
                    .iter()
                    .zip(seqs)
                    .map(|((index, _), seq)| (*index, seq.is_some()))
                    .collect();
                self.chunks_settled(id, relay, &held, &refused, now_ms)
            }
        }
    }

    // ----- our mailboxes: what was fetched -------------------------------------------------

    fn take_fetched(
        &mut self,
        mailbox: MailboxId,
        items: Vec<instaconnect_wire::mailbox::StoredEnvelope>,
        more: bool,
        now_ms: u64,
    ) -> Result<()> {
        let Some(phone) = self.relay.own.get(&mailbox).map(|b| b.rec.phone.clone()) else {
            return Ok(());
        };
        let mut seqs = Vec::with_capacity(items.len());
        let mut texts = Vec::new();
        let mut from = None;
        for item in &items {
            // Whatever comes out of it (stored, a duplicate, or something we can never open)
            // leaves the relay once this batch is flushed.
            seqs.push(item.seq);
            if let Some((peer, id)) = self.take_relayed(&phone, &item.envelope, now_ms)? {
                texts.push(id);
                from = Some(peer);
            }
        }
        // Chunks written to attachments must be on disk before the flush that lets the
        // deletes go.
        self.sync_relayed_chunks()?;
        let last = items.last().map(|i| i.seq);
        let refetch = match self.relay.own.get_mut(&mailbox) {
            Some(b) => {
                if let Some(l) = last {
                    b.after = b.after.max(l);
                }
                b.refetch
            }
            None => false,
        };
        if !seqs.is_empty() {
            for chunk in seqs.chunks(MAX_BATCH) {
                let chunk = chunk.to_vec();
                self.owner_request(
                    mailbox,
                    |k, nonce| {
                        let auth = k.authorize(OwnerOp::Delete { seqs: &chunk }, now_ms, nonce)?;
                        Ok(MailboxRequest::Delete {
                            mailbox,
                            seqs: chunk.clone(),
                            auth,
                        })
                    },
                    MailboxPending::Delete,
                    true,
                )?;
            }
        }
        if let Some(peer) = from {
            for chunk in texts.chunks(MAX_RECEIPT_IDS) {
                let ids = chunk.to_vec();
                self.queue_payload(&peer, &Payload::Delivered { ids }, true, now_ms)?;
            }
        }
        if (more && last.is_some()) || refetch {
            self.fetch(mailbox, now_ms)?;
        } else if !self
            .relay
            .own
            .values()
            .any(|b| b.rec.phone == phone && b.fetching)
        {
            // Every mailbox of this contact is read: tell it what is still missing of the
            // attachments that came this way.
            self.report_relayed_chunks(&phone, now_ms)?;
        }
        Ok(())
    }

    /// Opens an envelope fetched from our mailbox for the contact `phone` and takes what it
    /// carries. Returns the sender's device and the message id when it is a text (new or
    /// already here) to acknowledge; `None` when there is nothing to acknowledge.
    fn take_relayed(
        &mut self,
        phone: &str,
        envelope: &[u8],
        now_ms: u64,
    ) -> Result<Option<(String, MsgId)>> {
        let Ok(opened) = open_envelope_cached(&mut self.verified, &self.device, envelope) else {
            self.problem(format!(
                "an envelope in a mailbox for {phone} could not be opened; dropped"
            ));
            return Ok(None);
        };
        let peer = opened.sender.identity.peer_id();
        // Only the contact the mailbox is for may use it.
        let Some(contact) = self.contact_by_peer(&peer).filter(|c| c.phone == phone) else {
            return Ok(None);
        };
        if self.is_blocked(phone) {
            return Ok(None);
        }
        if opened.kind == PayloadKind::Chunk {
            // A chunk of an attachment: checked against its manifest, nothing to acknowledge.
            self.take_relayed_chunk(&peer, phone, &opened, now_ms)?;
            return Ok(None);
        }
        let id = opened.message_id.0;
        if let Some(m) = self.store.message(&id)? {
            // Here already (it came another way): acknowledge texts again.
            return Ok((m.direction == Direction::Incoming).then_some((peer, id)));
        }
        if self.store.seen(&id)? {
            let held = self
                .held
                .by_conversation
                .get(phone)
                .is_some_and(|h| h.values().any(|m| m.id == id));
            return Ok(held.then_some((peer, id)));
        }
        let plaintext = match self.decrypt_sealed(&peer, &opened)? {
            Decrypted::Plain(p) => p,
            Decrypted::Undecryptable(e) => {
                self.problem(format!(
                    "a message from {phone} through a relay could not be decrypted ({e}); dropped"
                ));
                return Ok(None);
            }
            Decrypted::NoSession | Decrypted::BadPrekey => return Ok(None),
        };
        let Ok(payload) = Payload::decode(&plaintext) else {
            return Ok(None);
        };
        let text = matches!(payload, Payload::Text { .. } | Payload::GroupMessage { .. });
        let taken = self.take_opened(&peer, &contact, &opened, payload, now_ms)?;
        Ok((taken && text).then_some((peer, id)))
    }

    // ----- deposits ------------------------------------------------------------------------

    /// Leaves what is due for `peer` (not connected) in the mailboxes it announced.
    pub(super) fn deposit_due(&mut self, peer: &str, now_ms: u64) -> Result<()> {
        if self.relay.offline() {
            // Every relay we know is out of reach: we are offline; a link coming up pumps.
            return Ok(());
        }
        let Some(boxes) = self
            .relay
            .boxes
            .get(peer)
            .filter(|b| !b.is_empty())
            .cloned()
        else {
            return Ok(());
        };
        let busy = self
            .relay
            .depositing_per_peer
            .get(peer)
            .copied()
            .unwrap_or(0);
        let room = MAX_DEPOSITING_PER_PEER.saturating_sub(busy);
        if room == 0 {
            return Ok(());
        }
        let Some(queue) = self.outbox.queues.get(peer) else {
            return Ok(());
        };
        let due: Vec<MsgId> = queue
            .values()
            .filter(|e| {
                e.next_attempt_ms <= now_ms && self.relay.wants_deposit(e, &self.outbox.inflight)
            })
            .take(room)
            .map(|e| e.id)
            .collect();
        if due.is_empty() {
            return Ok(());
        }
        let carded = self.contact_by_peer(peer).is_some_and(|c| c.card.is_some());
        if self.session(peer)?.is_none() || !carded {
            // Not linked (any more): wait like the direct path does, without a busy timer.
            for id in due {
                if let Some(e) = self.outbox.get_mut(&id) {
                    e.next_attempt_ms = now_ms + RETRY_MAX_MS;
                }
            }
            return Ok(());
        }
        let secret = self.account.identity_secret.clone();
        let mut gone = Vec::new();
        // Per mailbox (in `boxes` order): the batches going there, each with whether it must
        // wait for the flush (one of its messages acknowledges something).
        let mut batches: Vec<Vec<PendingBatch>> = boxes.iter().map(|_| Vec::new()).collect();
        let limit = self.relay.batch_limit.unwrap_or(MAX_DEPOSIT_ITEMS);
        for id in due {
            let Some((plaintext, sent_at_ms)) = self.entry_plaintext(&id, now_ms)? else {
                gone.push(id);
                continue;
            };
            let envelope = self.seal_envelope(peer, &plaintext, id, sent_at_ms)?;
            let hash = envelope_hash(&envelope);
            let after_flush = self.relay.durable_first.remove(&id);
            for (b, out) in boxes.iter().zip(batches.iter_mut()) {
                let dsecret = deposit_secret(secret.expose(), &id, &b.mailbox);
                let full = out.last().is_none_or(|p| {
                    p.items.len() >= limit || p.bytes + envelope.len() > DEPOSIT_BATCH_BYTES
                });
                if full {
                    out.push(PendingBatch::default());
                }
                let p = out.last_mut().expect("pushed above");
                p.bytes += envelope.len();
                p.after_flush |= after_flush;
                p.ids.push((id, hash));
                p.items.push(DepositItem {
                    mailbox: b.mailbox,
                    envelope: envelope.clone(),
                    deletion_hash: deletion_hash(&dsecret),
                });
            }
            self.relay.depositing.insert(id, boxes.len());
            *self
                .relay
                .depositing_per_peer
                .entry(peer.to_string())
                .or_default() += 1;
        }
        for (b, out) in boxes.iter().zip(batches) {
            for p in out {
                self.mailbox_request(
                    &b.relay,
                    b.addrs.clone(),
                    Link::Depositor,
                    &MailboxRequest::DepositBatch { items: p.items },
                    MailboxPending::Deposit {
                        peer: peer.to_string(),
                        mailbox: b.mailbox,
                        addrs: b.addrs.clone(),
                        items: p.ids,
                    },
                    p.after_flush,
                )?;
            }
        }
        self.forget(&gone)
    }

    /// One deposit of message `id` is answered: `seq` if the relay holds it. The caller pumps
    /// the outbox once the whole batch is settled.
    #[allow(clippy::too_many_arguments)]
    fn deposit_settled(
        &mut self,
        peer: &str,
        id: MsgId,
        relay: &str,
        mailbox: MailboxId,
        addrs: Vec<String>,
        seq: Option<u64>,
        now_ms: u64,
    ) -> Result<()> {
        // Texts and group messages wait for the recipient's end-to-end acknowledgement.
        let text = self
            .outbox
            .get(&id)
            .is_some_and(|e| matches!(e.payload, OutboxPayload::Text { .. }))
            || self.is_group_entry(&id);
        if let Some(seq) = seq {
            if self.outbox.get(&id).is_some() {
                let held = self.relay.deposited.entry(id).or_default();
                held.insert(mailbox);
                let relays = held.len().min(u8::MAX as usize) as u8;
                if text {
                    self.write(vec![Op::PutDeposit(DepositRecord {
                        id,
                        relay: relay.to_string(),
                        addrs,
                        mailbox,
                        seq,
                    })])?;
                    self.set_state(&id, DeliveryState::Relayed { relays })?;
                }
            }
        }
        let left = match self.relay.depositing.get_mut(&id) {
            Some(n) => {
                *n = n.saturating_sub(1);
                *n
            }
            None => return Ok(()),
        };
        if left > 0 {
            return Ok(());
        }
        self.relay.depositing.remove(&id);
        if let Some(n) = self.relay.depositing_per_peer.get_mut(peer) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.relay.depositing_per_peer.remove(peer);
            }
        }
        if self.outbox.get(&id).is_none() {
            // Acknowledged meanwhile.
            self.relay.deposited.remove(&id);
        } else if self.relay.deposited.contains_key(&id) {
            if !text {
                // Receipts and announcements are done once a relay holds them. An attachment's
                // manifest is followed there by its chunks.
                self.relay.deposited.remove(&id);
                self.outbox.remove(&id);
                self.write(vec![Op::RemoveOutbox(id)])?;
                self.start_upload(peer, id, true, now_ms)?;
            }
        } else if let Some(e) = self.retry_later(&id, now_ms) {
            self.write(vec![Op::PutOutbox(e)])?;
        }
        Ok(())
    }

    /// Forgets where message `id` was deposited (it was acknowledged, or is gone).
    pub(super) fn forget_deposits(&mut self, id: &MsgId, ops: &mut Vec<Op>) {
        if let Some(boxes) = self.relay.deposited.remove(id) {
            for m in boxes {
                ops.push(Op::RemoveDeposit(*id, m));
            }
        }
        self.relay.durable_first.remove(id);
    }

    // ----- what contacts tell us -----------------------------------------------------------

    pub(super) fn take_mailboxes(
        &mut self,
        peer: &str,
        phone: &str,
        boxes: Vec<MailboxAddress>,
        now_ms: u64,
    ) -> Result<()> {
        self.write(vec![Op::PutContactMailboxes(ContactMailboxes {
            phone: phone.to_string(),
            boxes: boxes.clone(),
        })])?;
        self.relay.boxes.insert(peer.to_string(), boxes);
        if !self.peers.get(peer).is_some_and(|p| p.view.connected) {
            self.deposit_due(peer, now_ms)?;
        }
        Ok(())
    }

    /// The contact `phone` acknowledged texts that went through relays.
    pub(super) fn take_delivered(&mut self, phone: &str, ids: &[MsgId], now_ms: u64) -> Result<()> {
        let mut ops = Vec::new();
        let mut peers = BTreeSet::new();
        for id in ids {
            if self.is_group_entry_for(id, phone) {
                if let Some(e) = self.outbox.remove(id) {
                    ops.push(Op::RemoveOutbox(*id));
                    peers.insert(e.peer_id);
                }
                self.forget_deposits(id, &mut ops);
                self.set_state(id, DeliveryState::Delivered)?;
                continue;
            }
            let Some(m) = self.store.message(id)? else {
                continue;
            };
            if m.peer != phone || m.direction != Direction::Outgoing {
                continue;
            }
            if let Some(e) = self.outbox.remove(id) {
                ops.push(Op::RemoveOutbox(*id));
                peers.insert(e.peer_id);
            }
            self.forget_deposits(id, &mut ops);
            self.set_state(id, DeliveryState::Delivered)?;
        }
        self.write(ops)?;
        for p in peers {
            self.pump_outbox(Some(&p), now_ms)?;
        }
        Ok(())
    }
}
