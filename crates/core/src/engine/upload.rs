//! Attachments through relays (PROTOCOL.md §1.9): the chunks of an attachment we sent, left in
//! the recipient's relay mailboxes while its device cannot be reached.
//!
//! - **When.** Once an attachment's manifest is held by a relay (the recipient was not
//!   connected), its sealed chunks follow into the same recipient's mailboxes, each in a sealed
//!   envelope of its own ([`PayloadKind::Chunk`]: index ‖ sealed chunk, message id = the
//!   attachment's). Only attachments whose chunks fit one envelope (up to
//!   [`MAX_RELAYED_ATTACHMENT_BYTES`]) and within [`AttachmentLimits::relay_max_bytes`] go this
//!   way; larger ones wait for a direct connection. While the recipient is connected directly,
//!   it fetches the chunks itself and the upload pauses.
//! - **How much at once.** Chunks go in deposit batches of [`UPLOAD_BATCH`] envelopes, with at
//!   most [`UPLOAD_WINDOW`] envelopes in flight per attachment, each chunk to one mailbox (they
//!   rotate, so a full mailbox is skipped on the next try). A chunk counts as held once a
//!   relay's signed receipt names it ([`UploadRecord`], durable, so an upload resumes after a
//!   restart). A refused or failed batch backs off (as outbox entries do) and is tried again:
//!   nothing is lost when a relay is full, it just waits.
//! - **Done.** The recipient answers `Payload::AttachmentHave` with the chunks it holds: all of
//!   them, and the upload is over; some missing after it read its mailboxes (a chunk damaged or
//!   lost at a relay), and those go again.
//!
//! The receiving side is in `attachment.rs` ([`Engine::take_relayed_chunk`]).

use instaconnect_crypto::{
    chunk_deposit_id, deletion_hash, deposit_secret, envelope_hash, relay_chunk_payload, relayable,
    seal_chunk, AttachmentKey, Layout, MAX_ATTACHMENT_BYTES, MAX_RELAYED_ATTACHMENT_BYTES,
};
use instaconnect_wire::mailbox::{DepositItem, MailboxRequest, Refusal};
use instaconnect_wire::records::{AttachmentRecord, UploadRecord};

use super::mailbox::MailboxPending;
use super::*;

/// Chunk envelopes per deposit request (8 × 64 KiB, well under the mailbox frame limit).
pub const UPLOAD_BATCH: usize = 8;
/// Chunk envelopes in flight per attachment.
pub const UPLOAD_WINDOW: usize = 2 * UPLOAD_BATCH;

/// The largest attachments this device sends or takes: over any path, and through relays.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttachmentLimits {
    /// Largest attachment sent or fetched at all (directly); at most [`MAX_ATTACHMENT_BYTES`].
    pub direct_max_bytes: u64,
    /// Largest attachment whose chunks go or are taken through relays; at most
    /// [`MAX_RELAYED_ATTACHMENT_BYTES`] (a sealed chunk must fit one envelope).
    pub relay_max_bytes: u64,
}

impl Default for AttachmentLimits {
    fn default() -> Self {
        AttachmentLimits {
            direct_max_bytes: MAX_ATTACHMENT_BYTES,
            relay_max_bytes: MAX_RELAYED_ATTACHMENT_BYTES,
        }
    }
}

/// A deposit request of chunks being put together: the envelopes, and each one's chunk index
/// and envelope hash.
type ChunkBatch = (Vec<DepositItem>, Vec<(u32, [u8; 32])>);

/// An attachment whose chunks we are leaving in relays.
pub(super) struct Upload {
    rec: UploadRecord,
    /// The recipient's device.
    peer: String,
    /// Chunks in all, and bytes.
    count: u32,
    size: u64,
    /// Chunks in deposit requests not answered yet.
    inflight: BTreeSet<u32>,
    /// Failed tries in a row (rotates the mailbox each chunk goes to, and backs off).
    attempts: u32,
    next_attempt_ms: u64,
    /// The user was told a relay is full (once per streak of refusals).
    warned: bool,
}

impl Upload {
    fn missing(&self) -> impl Iterator<Item = u32> + '_ {
        (0..self.count).filter(|i| !self.rec.has(*i as usize) && !self.inflight.contains(i))
    }

    fn all_held(&self) -> bool {
        self.rec.count() >= self.count as usize
    }
}

/// Uploads in progress, by message id.
#[derive(Default)]
pub(super) struct Uploads {
    map: BTreeMap<[u8; 16], Upload>,
}

impl Uploads {
    pub(super) fn load(store: &dyn Store) -> Result<Uploads> {
        let mut u = Uploads::default();
        for rec in store.uploads()? {
            let Some(peer) = store.contact(&rec.peer)?.and_then(|c| c.peer_id) else {
                continue;
            };
            let Some(att) = store.attachment(&rec.id)? else {
                continue;
            };
            u.map.insert(
                rec.id,
                Upload {
                    rec,
                    peer,
                    count: att.manifest.chunks.len() as u32,
                    size: att.manifest.size,
                    inflight: BTreeSet::new(),
                    attempts: 0,
                    next_attempt_ms: 0,
                    warned: false,
                },
            );
        }
        Ok(u)
    }
}

fn bit(bits: &[u8], i: usize) -> bool {
    bits.get(i / 8).is_some_and(|b| b & (1 << (i % 8)) != 0)
}

impl Engine {
    /// Sets the largest attachments sent and taken (directly, and through relays). Incoming
    /// transfers over the limit stop.
    pub fn set_attachment_limits(&mut self, limits: AttachmentLimits) -> Result<()> {
        self.limits = AttachmentLimits {
            direct_max_bytes: limits.direct_max_bytes.min(MAX_ATTACHMENT_BYTES),
            relay_max_bytes: limits
                .relay_max_bytes
                .min(MAX_RELAYED_ATTACHMENT_BYTES)
                .min(limits.direct_max_bytes),
        };
        let ids: Vec<[u8; 16]> = self.transfers_ids();
        for id in ids {
            if let Some(r) = self.store.attachment(&id)? {
                if r.manifest.size > self.limits.direct_max_bytes {
                    self.drop_transfer(&id);
                }
            }
        }
        Ok(())
    }

    /// The limits in force.
    pub fn attachment_limits(&self) -> AttachmentLimits {
        self.limits
    }

    /// Whether an attachment of `size` bytes may be sent: `Err` names the limit.
    pub(super) fn check_send_size(&self, size: u64) -> Result<()> {
        if size > self.limits.direct_max_bytes {
            return Err(EngineError::AttachmentTooLarge {
                size,
                limit: self.limits.direct_max_bytes,
            });
        }
        Ok(())
    }

    /// Attachment `id` (ours) may have to go through `peer`'s relays: sent (`warn` false), or its
    /// manifest is held by a relay (`warn`: tell the user if it is too large for that). Its
    /// chunks follow into the mailboxes whenever `peer` is not connected and the manifest has
    /// left the outbox (delivered, or held by a relay).
    pub(super) fn start_upload(
        &mut self,
        peer: &str,
        id: [u8; 16],
        warn: bool,
        now_ms: u64,
    ) -> Result<()> {
        if self.uploads.map.contains_key(&id) {
            return self.pump_upload(&id, now_ms);
        }
        let Some(att) = self.store.attachment(&id)? else {
            return Ok(());
        };
        if att.direction != Direction::Outgoing {
            return Ok(());
        }
        let layout = Layout::new(
            att.manifest.size,
            att.manifest.chunk_size,
            att.manifest.chunks.len() as u32,
        )?;
        if !relayable(&layout) || att.manifest.size > self.limits.relay_max_bytes {
            if !warn {
                return Ok(());
            }
            self.problem(format!(
                "{} ({} bytes) is larger than attachments sent through relays may be ({} bytes): it goes when {} is reachable directly",
                att.manifest.name,
                att.manifest.size,
                self.limits.relay_max_bytes.min(MAX_RELAYED_ATTACHMENT_BYTES),
                att.peer
            ));
            return Ok(());
        }
        let rec = UploadRecord {
            id,
            peer: att.peer.clone(),
            held: Vec::new(),
        };
        self.write(vec![Op::PutUpload(rec.clone())])?;
        self.uploads.map.insert(
            id,
            Upload {
                rec,
                peer: peer.to_string(),
                count: layout.count,
                size: layout.size,
                inflight: BTreeSet::new(),
                attempts: 0,
                next_attempt_ms: now_ms,
                warned: false,
            },
        );
        self.pump_upload(&id, now_ms)
    }

    /// When the next upload is due (one that waits for a backoff and could deposit).
    pub(super) fn upload_timeout(&self) -> Option<u64> {
        self.uploads
            .map
            .values()
            .filter(|u| self.may_upload(u) && u.missing().next().is_some())
            .map(|u| u.next_attempt_ms)
            .min()
    }

    fn may_upload(&self, u: &Upload) -> bool {
        !self
            .peers
            .get(u.peer.as_str())
            .is_some_and(|p| p.view.connected)
            && self.relay.can_deposit(&u.peer)
            && u.inflight.len() < UPLOAD_WINDOW
            // Chunks never go ahead of their manifest.
            && self.outbox.get(&u.rec.id).is_none()
    }

    /// Chunk `index` of attachment `id` went whole to its recipient's device: not left in
    /// relays unless the recipient says it lacks it.
    pub(super) fn served_directly(&mut self, id: &[u8; 16], index: u32) -> Result<()> {
        let Some(u) = self.uploads.map.get_mut(id) else {
            return Ok(());
        };
        if index >= u.count || u.rec.has(index as usize) {
            return Ok(());
        }
        u.rec.set(index as usize);
        let rec = u.rec.clone();
        self.write(vec![Op::PutUpload(rec)])
    }

    /// Relay links came up: what waits for a backoff goes now.
    pub(super) fn uploads_due_now(&mut self) {
        for u in self.uploads.map.values_mut() {
            u.next_attempt_ms = 0;
        }
    }

    pub(super) fn pump_uploads(&mut self, now_ms: u64) -> Result<()> {
        let ids: Vec<[u8; 16]> = self.uploads.map.keys().copied().collect();
        for id in ids {
            self.pump_upload(&id, now_ms)?;
        }
        Ok(())
    }

    /// Leaves the next missing chunks of upload `id` in its recipient's mailboxes, within the
    /// window, unless the recipient is connected (it fetches them itself) or it is not time.
    fn pump_upload(&mut self, id: &[u8; 16], now_ms: u64) -> Result<()> {
        let Some(u) = self.uploads.map.get(id) else {
            return Ok(());
        };
        if !self.may_upload(u) || u.next_attempt_ms > now_ms {
            return Ok(());
        }
        let room = UPLOAD_WINDOW - u.inflight.len();
        let want: Vec<u32> = u.missing().take(room).collect();
        if want.is_empty() {
            return Ok(());
        }
        let (peer, attempts) = (u.peer.clone(), u.attempts);
        let Some(att) = self.store.attachment(id)? else {
            self.forget_upload(id)?;
            return Ok(());
        };
        let Some(boxes) = self
            .relay
            .boxes
            .get(&peer)
            .filter(|b| !b.is_empty())
            .cloned()
        else {
            return Ok(());
        };
        let Some(recipient) = self.recipient_keys(&peer)? else {
            return Ok(());
        };
        let m = &att.manifest;
        let layout = Layout::new(m.size, m.chunk_size, m.chunks.len() as u32)?;
        let key = AttachmentKey::from_bytes(m.key.expose())?;
        let secret = self.account.identity_secret.clone();
        let per_batch = self
            .relay
            .batch_limit
            .unwrap_or(UPLOAD_BATCH)
            .min(UPLOAD_BATCH);
        // Per mailbox (in `boxes` order): batches of at most UPLOAD_BATCH envelopes.
        let mut batches: Vec<Vec<ChunkBatch>> = boxes.iter().map(|_| Vec::new()).collect();
        for index in want {
            let len = layout.chunk_len(index).unwrap_or(0);
            let plain = match self.blobs.read_at(id, layout.offset(index), len) {
                Ok(p) => p,
                Err(e) => {
                    self.problem(format!(
                        "{} for {} cannot be read any more ({e}); its chunks no longer go through relays",
                        m.name, att.peer
                    ));
                    return self.forget_upload(id);
                }
            };
            let sealed = seal_chunk(&key, &layout, index, &plain)?;
            let envelope = seal_envelope_cached(
                &mut self.verified,
                &self.device,
                &self.own_keys,
                &recipient,
                &EnvelopeContent {
                    message_id: MessageId(*id),
                    timestamp_ms: now_ms,
                    kind: PayloadKind::Chunk,
                    payload: relay_chunk_payload(index, &sealed),
                },
            )?;
            let which = (index as usize + attempts as usize) % boxes.len();
            let b = &boxes[which];
            let dsecret = deposit_secret(secret.expose(), &chunk_deposit_id(id, index), &b.mailbox);
            let out = &mut batches[which];
            if out.last().is_none_or(|(items, _)| items.len() >= per_batch) {
                out.push((Vec::new(), Vec::new()));
            }
            let (items, hashes) = out.last_mut().expect("pushed above");
            hashes.push((index, envelope_hash(&envelope)));
            items.push(DepositItem {
                mailbox: b.mailbox,
                envelope,
                deletion_hash: deletion_hash(&dsecret),
            });
        }
        for (b, out) in boxes.iter().zip(batches) {
            for (items, hashes) in out {
                if let Some(u) = self.uploads.map.get_mut(id) {
                    u.inflight.extend(hashes.iter().map(|(i, _)| *i));
                }
                self.mailbox_request(
                    &b.relay,
                    b.addrs.clone(),
                    Link::Depositor,
                    &MailboxRequest::DepositBatch { items },
                    MailboxPending::Chunks {
                        id: *id,
                        mailbox: b.mailbox,
                        items: hashes,
                    },
                    false,
                )?;
            }
        }
        Ok(())
    }

    /// A deposit of chunks of upload `id` was answered: `held` says, per chunk, whether the
    /// relay's checked receipt names it; `refused` the reasons the relay gave for the others.
    pub(super) fn chunks_settled(
        &mut self,
        id: [u8; 16],
        relay: &str,
        held: &[(u32, bool)],
        refused: &[Refusal],
        now_ms: u64,
    ) -> Result<()> {
        let jitter = self.rng.next_u64();
        let Some(u) = self.uploads.map.get_mut(&id) else {
            return Ok(());
        };
        let mut got = 0;
        let mut failed = false;
        for &(index, ok) in held {
            u.inflight.remove(&index);
            if ok && (index as usize) < u.count as usize {
                u.rec.set(index as usize);
                got += 1;
            } else {
                failed = true;
            }
        }
        let mut warn = None;
        if failed {
            u.attempts = u.attempts.saturating_add(1);
            let delay = RETRY_BASE_MS
                .saturating_mul(1u64 << u.attempts.min(16))
                .min(RETRY_MAX_MS);
            u.next_attempt_ms = now_ms + delay + jitter % (delay / 4 + 1);
            let full = refused
                .iter()
                .any(|r| matches!(r, Refusal::MailboxFull | Refusal::DiskFull));
            if full && !u.warned {
                u.warned = true;
                warn = Some(u.rec.peer.clone());
            }
        } else {
            u.attempts = 0;
            u.warned = false;
        }
        let (rec, sent, total, size) = (u.rec.clone(), u.rec.count() as u32, u.count, u.size);
        if let Some(to) = warn {
            self.problem(format!(
                "relay {relay} is full for {to}: the rest of an attachment goes there later"
            ));
        }
        if got > 0 {
            self.write(vec![Op::PutUpload(rec.clone())])?;
            self.event(Event::AttachmentSendProgress {
                to: rec.peer,
                id: hex(&id),
                sent,
                total,
                size,
                relayed: true,
            });
        }
        self.pump_upload(&id, now_ms)
    }

    /// The recipient `phone` of attachment `id` holds the chunks in `have`.
    pub(super) fn take_have(
        &mut self,
        phone: &str,
        id: [u8; 16],
        have: &[u8],
        now_ms: u64,
    ) -> Result<()> {
        let Some(att) = self.store.attachment(&id)? else {
            return Ok(());
        };
        if att.direction != Direction::Outgoing || att.peer != phone {
            return Ok(());
        }
        let count = att.manifest.chunks.len();
        if (0..count).all(|i| bit(have, i)) {
            self.event(Event::AttachmentDelivered {
                to: phone.to_string(),
                id: hex(&id),
            });
            return self.forget_upload(&id);
        }
        let Some(u) = self.uploads.map.get_mut(&id) else {
            return Ok(());
        };
        if !u.all_held() || !u.inflight.is_empty() {
            // Still being uploaded: what it lacks may be on its way.
            return Ok(());
        }
        // Everything was left in its mailboxes and some did not arrive (damaged or lost at a
        // relay): those go again.
        for i in 0..count {
            if !bit(have, i) {
                if let Some(b) = u.rec.held.get_mut(i / 8) {
                    *b &= !(1 << (i % 8));
                }
            }
        }
        u.attempts = 0;
        u.next_attempt_ms = now_ms;
        let rec = u.rec.clone();
        self.write(vec![Op::PutUpload(rec)])?;
        self.pump_upload(&id, now_ms)
    }

    fn forget_upload(&mut self, id: &[u8; 16]) -> Result<()> {
        if self.uploads.map.remove(id).is_some() {
            self.write(vec![Op::RemoveUpload(*id)])?;
        }
        Ok(())
    }

    /// Whether the receiving side takes the chunks of `record` through relays.
    pub(super) fn takes_relayed(&self, record: &AttachmentRecord) -> bool {
        record.manifest.size <= self.limits.relay_max_bytes
    }
}
