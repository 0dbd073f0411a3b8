//! The engine's side of attachments (issue 6; PROTOCOL.md §1.9): sending one, fetching the
//! chunks of one we received straight from its sender's device, and serving ours.
//!
//! - **Sending.** The shell copies the file into the blob store under a fresh message id and
//!   seals it once ([`seal_attachment`], off the engine's thread) for its manifest; the
//!   manifest then goes like a text (`Payload::Attachment`, numbered with the texts, through
//!   the outbox with its retries and delivery states). The sender keeps the plaintext and
//!   seals a chunk again whenever it is asked for (sealing is deterministic per key).
//! - **Receiving.** The manifest is stored with the message; the chunks are asked for in parts
//!   ([`Request::Chunk`], at most [`CHUNK_WINDOW`] parts in flight), each sealed chunk is checked
//!   against its hash and tag before its plaintext goes to the blob store, and the record notes
//!   which chunks are in. When the last is in, the whole file is checked against the manifest's
//!   hash. A transfer that stops (the sender went away, or refused) resumes from the chunks it
//!   is missing when the sender's device connects again, also after a restart.
//! - **Serving.** Only to the device of the contact the attachment was sent to.
//! - **Through relays.** While the sender cannot be reached its chunks may come in envelopes
//!   from our mailboxes ([`Engine::take_relayed_chunk`], sent by `upload.rs`): each is checked
//!   like a fetched one, written, and synced before the flush that lets the relay delete it.
//!   Once our mailboxes for the sender are read we tell it which chunks we hold
//!   (`Payload::AttachmentHave`), and when the file is complete, that we have all of them.

use instaconnect_crypto::{
    open_chunk, parse_relay_chunk, seal_chunk, AttachmentKey, AttachmentOpener, AttachmentSealer,
    Layout, CHUNK_TAG_BYTES,
};
use instaconnect_store::Blobs;
use instaconnect_wire::proto::{AttachmentKind, AttachmentManifest, MAX_CHUNK_PART_BYTES};
use instaconnect_wire::records::{AttachmentRecord, GroupId};

use super::*;

/// Chunk parts asked for at once, per transfer.
pub const CHUNK_WINDOW: usize = 8;
/// Chunks that fail their check before a transfer is given up on (until the next connection).
pub const MAX_BAD_CHUNKS: u32 = 3;
/// Requests for parts that fail in a row (the connection dropped under them) before a transfer
/// waits for the next connection.
pub const MAX_FAILED_PARTS: u32 = 16;

/// How a request for part of a chunk ended.
pub(super) enum ChunkAnswer {
    Part(Vec<u8>),
    /// The sender's device said no (not now, or not to us).
    Refused,
    /// No answer: the request failed, or the answer was malformed.
    Failed,
}

/// What the user tells about a file to send, besides its bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttachmentMeta {
    pub kind: AttachmentKind,
    pub name: String,
    pub mime: String,
    pub width: Option<u32>,
    pub height: Option<u32>,
    pub duration_ms: Option<u64>,
    pub thumbnail: Option<Vec<u8>>,
    pub caption: Option<String>,
}

/// Seals the file stored in `blobs` under `id` (read chunk by chunk) under a fresh key from
/// `rng`, and returns its manifest. Costs one pass over the file: call it off the engine's
/// thread for large files.
pub fn seal_attachment<R: rand::RngCore + rand::CryptoRng>(
    blobs: &dyn Blobs,
    id: &[u8; 16],
    meta: AttachmentMeta,
    rng: &mut R,
) -> Result<AttachmentManifest> {
    let size = blobs.size(id)?.unwrap_or(0);
    let mut sealer = AttachmentSealer::new(size, rng)?;
    let layout = sealer.layout();
    let mut index = 0;
    while let Some(len) = sealer.next_len() {
        let plain = blobs.read_at(id, layout.offset(index), len)?;
        sealer.push(&plain)?;
        index += 1;
    }
    let sealed = sealer.finish()?;
    let manifest = AttachmentManifest {
        kind: meta.kind,
        name: meta.name,
        mime: meta.mime,
        size,
        chunk_size: sealed.layout.chunk_size,
        chunks: sealed.chunks,
        key: SecretBytes::new(sealed.key.as_bytes().to_vec()),
        plaintext_hash: sealed.plaintext_hash,
        width: meta.width,
        height: meta.height,
        duration_ms: meta.duration_ms,
        thumbnail: meta.thumbnail,
        caption: meta.caption,
    };
    manifest
        .check()
        .map_err(|e| EngineError::Attachment(e.to_string()))?;
    Ok(manifest)
}

/// An incoming attachment whose chunks are being fetched.
pub(super) struct Transfer {
    /// The sender's device.
    peer: String,
    /// Parts asked for and not answered: (chunk, offset).
    asked: BTreeSet<(u32, u32)>,
    /// Sealed chunks being put together: chunk -> (bytes, offsets received).
    partial: BTreeMap<u32, (Vec<u8>, BTreeSet<u32>)>,
    /// Chunks that failed their check.
    bad: u32,
    /// Requests that failed in a row.
    failed: u32,
    /// Refused or failed: waits for the sender's next connection.
    paused: bool,
    /// The attachment's record as last written (read from the store once).
    record: Option<AttachmentRecord>,
    /// Chunks came (or were refused) through relays since we last told the sender what we hold.
    relay_seen: bool,
    /// The user was told it is too large to take through relays.
    refused_relay: bool,
}

/// Attachments in flight.
#[derive(Default)]
pub(super) struct Transfers {
    incoming: BTreeMap<[u8; 16], Transfer>,
    /// The chunk sealed last for serving, (message id, chunk, sealed bytes): a chunk larger
    /// than a part is asked for part by part.
    sealed: Option<([u8; 16], u32, Vec<u8>)>,
    /// The record of the attachment served last (its manifest lists up to 1,024 hashes: not
    /// decoded again for every part).
    served: Option<AttachmentRecord>,
    /// Chunks served whole, per attachment we sent (for progress), at most
    /// [`MAX_SERVED_TRACKED`] attachments.
    served_chunks: BTreeMap<[u8; 16], BTreeSet<u32>>,
    /// Attachments written from relayed chunks and not synced yet.
    unsynced: BTreeSet<[u8; 16]>,
}

/// Attachments whose served chunks are counted for progress events.
pub const MAX_SERVED_TRACKED: usize = 64;

impl Transfers {
    /// The incomplete incoming attachments in `store`, to resume when their senders connect.
    pub(super) fn load(store: &dyn Store) -> Result<Transfers> {
        let mut t = Transfers::default();
        for a in store.attachments()? {
            if a.direction != Direction::Incoming || a.complete {
                continue;
            }
            let from = attachment_source(store, &a)?;
            if let Some(peer) = from
                .map(|p| store.contact(&p))
                .transpose()?
                .flatten()
                .and_then(|c| c.peer_id)
            {
                t.incoming.insert(a.id, Transfer::new(peer));
            }
        }
        Ok(t)
    }
}

impl Transfer {
    fn new(peer: String) -> Transfer {
        Transfer {
            peer,
            asked: BTreeSet::new(),
            partial: BTreeMap::new(),
            bad: 0,
            failed: 0,
            paused: false,
            record: None,
            relay_seen: false,
            refused_relay: false,
        }
    }
}

/// Whether a manifest's layout is the one its size gives (what the chunks are checked against).
pub(super) fn layout_ok(m: &AttachmentManifest) -> bool {
    layout_of(m).is_ok()
}

/// Who an incoming attachment comes from (E.164): its conversation's contact, or for a
/// group's, the member who sent it.
fn attachment_source(store: &dyn Store, a: &AttachmentRecord) -> Result<Option<String>> {
    Ok(match GroupId::from_conversation(&a.peer) {
        Some(_) => store.group_message(&a.id)?.map(|g| g.sender),
        None => Some(a.peer.clone()),
    })
}

fn layout_of(m: &AttachmentManifest) -> Result<Layout> {
    Ok(Layout::new(m.size, m.chunk_size, m.chunks.len() as u32)?)
}

fn part_len(sealed_len: usize, offset: u32) -> usize {
    (sealed_len - (offset as usize).min(sealed_len)).min(MAX_CHUNK_PART_BYTES)
}

impl Engine {
    /// The record of incoming attachment `id`, from the transfer's copy or the store.
    fn transfer_record(&mut self, id: &[u8; 16]) -> Result<Option<AttachmentRecord>> {
        if let Some(r) = self
            .transfers
            .incoming
            .get(id)
            .and_then(|t| t.record.clone())
        {
            return Ok(Some(r));
        }
        let r = self.store.attachment(id)?;
        if let Some(t) = self.transfers.incoming.get_mut(id) {
            t.record = r.clone();
        }
        Ok(r)
    }

    /// Sends the file stored in the blob store under `id`, sealed as `manifest`
    /// ([`seal_attachment`]), to a contact. Returns the message id (hex).
    /// An attachment we are about to send (to a contact or a group): a sound manifest within
    /// our size limit, its file in the blob store, its message id free.
    pub(super) fn check_outgoing(
        &self,
        id: &[u8; 16],
        manifest: &AttachmentManifest,
    ) -> Result<()> {
        manifest
            .check()
            .map_err(|e| EngineError::Attachment(e.to_string()))?;
        layout_of(manifest)?;
        self.check_send_size(manifest.size)?;
        if self.blobs.size(id)? != Some(manifest.size) {
            return Err(EngineError::Attachment(
                "its file is not in the attachment store".into(),
            ));
        }
        if self.store.message(id)?.is_some() {
            return Err(EngineError::Attachment("its message id is taken".into()));
        }
        Ok(())
    }

    pub(super) fn send_attachment(
        &mut self,
        to: &str,
        id: [u8; 16],
        manifest: AttachmentManifest,
        now_ms: u64,
    ) -> Result<String> {
        self.check_outgoing(&id, &manifest)?;
        let peer = self.sendable(to)?;
        let caption = manifest.caption.clone().unwrap_or_default();
        let (msg, conv) = self.new_outgoing(to, id, caption, now_ms)?;
        let payload = Payload::Attachment {
            manifest: manifest.clone(),
            n: conv.sent_n,
        }
        .encode()?;
        let entry = payload_entry(id, &peer, payload, now_ms);
        let count = manifest.chunks.len();
        let record = AttachmentRecord {
            id,
            peer: to.to_string(),
            direction: Direction::Outgoing,
            manifest,
            have: vec![0xff; count.div_ceil(8)],
            complete: true,
        };
        let order = msg.seq + 1;
        self.write(vec![
            Op::PutMessage(msg),
            Op::PutConversation(conv),
            Op::PutAttachment(record),
            Op::PutOutbox(entry.clone()),
        ])?;
        self.outbox.insert(order, entry);
        // Ready to go through its relays should it be away (or go away before it has it all).
        self.start_upload(&peer, id, false, now_ms)?;
        self.pump_outbox(Some(&peer), now_ms)?;
        Ok(hex(&id))
    }

    /// A manifest arrived from `peer` (the contact `contact`): stores the message and its
    /// attachment record, and starts fetching. False if the manifest is malformed.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn take_attachment(
        &mut self,
        peer: &str,
        contact: &ContactRecord,
        id: [u8; 16],
        sent_at_ms: u64,
        manifest: AttachmentManifest,
        n: u64,
        ops: Vec<Op>,
        now_ms: u64,
    ) -> Result<bool> {
        if layout_of(&manifest).is_err() || manifest.check().is_err() {
            return Ok(false);
        }
        let mut ops = ops;
        let (name, size) = (manifest.name.clone(), manifest.size);
        let message = incoming(
            id,
            &contact.phone,
            manifest.caption.clone().unwrap_or_default(),
            sent_at_ms,
            now_ms,
        );
        ops.push(Op::PutAttachment(AttachmentRecord {
            id,
            peer: contact.phone.clone(),
            direction: Direction::Incoming,
            manifest,
            have: Vec::new(),
            complete: false,
        }));
        self.receive_text(message, n, ops, now_ms)?;
        if size > self.limits.direct_max_bytes {
            // Kept and shown with its details, but its bytes are not fetched.
            self.event(Event::AttachmentRefused {
                from: contact.phone.clone(),
                id: hex(&id),
                name,
                size,
                limit: self.limits.direct_max_bytes,
                relayed: false,
            });
            return Ok(true);
        }
        self.transfers
            .incoming
            .insert(id, Transfer::new(peer.to_string()));
        self.pump_transfer(&id)?;
        Ok(true)
    }

    /// Asks for the next parts of an incoming attachment, within the window.
    fn pump_transfer(&mut self, id: &[u8; 16]) -> Result<()> {
        let Some(t) = self.transfers.incoming.get(id) else {
            return Ok(());
        };
        let peer = t.peer.clone();
        if t.paused
            || !self
                .peers
                .get(peer.as_str())
                .is_some_and(|p| p.view.connected)
        {
            return Ok(());
        }
        let Some(record) = self.transfer_record(id)? else {
            self.transfers.incoming.remove(id);
            return Ok(());
        };
        let layout = layout_of(&record.manifest)?;
        let mut asks = Vec::new();
        let t = self.transfers.incoming.get(id).expect("checked above");
        let mut room = CHUNK_WINDOW.saturating_sub(t.asked.len());
        'chunks: for index in 0..layout.count {
            if room == 0 {
                break;
            }
            if record.has(index as usize) {
                continue;
            }
            let sealed_len = layout.chunk_len(index).unwrap_or(0) + CHUNK_TAG_BYTES;
            let got = t.partial.get(&index).map(|(_, got)| got);
            let mut offset = 0u32;
            while (offset as usize) < sealed_len {
                let wanted = !t.asked.contains(&(index, offset))
                    && !got.is_some_and(|g| g.contains(&offset));
                if wanted {
                    asks.push((index, offset, part_len(sealed_len, offset) as u32));
                    room -= 1;
                    if room == 0 {
                        break 'chunks;
                    }
                }
                offset += MAX_CHUNK_PART_BYTES as u32;
            }
        }
        for (index, offset, len) in asks {
            let frame = Request::Chunk {
                id: *id,
                index,
                offset,
                len,
            }
            .encode()?;
            let tag = self.tag();
            self.pending.insert(
                tag,
                (
                    peer.clone(),
                    Pending::Chunk {
                        id: *id,
                        index,
                        offset,
                    },
                ),
            );
            if let Some(t) = self.transfers.incoming.get_mut(id) {
                t.asked.insert((index, offset));
            }
            self.staged.push(Output::Request {
                peer: peer.clone(),
                tag,
                frame,
            });
        }
        Ok(())
    }

    /// A group member's attachment is stored: fetch its chunks from the member's device
    /// (within our size limit).
    pub(super) fn fetch_group_attachment(
        &mut self,
        id: [u8; 16],
        from: &str,
        name: String,
        size: u64,
    ) -> Result<()> {
        if size > self.limits.direct_max_bytes {
            self.event(Event::AttachmentRefused {
                from: from.to_string(),
                id: hex(&id),
                name,
                size,
                limit: self.limits.direct_max_bytes,
                relayed: false,
            });
            return Ok(());
        }
        let Some(peer) = self.store.contact(from)?.and_then(|c| c.peer_id) else {
            return Ok(());
        };
        self.transfers.incoming.insert(id, Transfer::new(peer));
        self.pump_transfer(&id)
    }

    /// The sender's device connected: resumes what we were fetching from it.
    pub(super) fn resume_transfers(&mut self, peer: &str) -> Result<()> {
        let ids: Vec<[u8; 16]> = self
            .transfers
            .incoming
            .iter_mut()
            .filter(|(_, t)| t.peer == peer)
            .map(|(id, t)| {
                t.paused = false;
                t.bad = 0;
                t.failed = 0;
                // What was asked on the old connection is asked again (an answer that still
                // comes is taken, or ignored if the part is in).
                t.asked.clear();
                *id
            })
            .collect();
        for id in ids {
            self.pump_transfer(&id)?;
        }
        Ok(())
    }

    /// A request for a part ended.
    pub(super) fn on_chunk_part(
        &mut self,
        id: [u8; 16],
        index: u32,
        offset: u32,
        answer: ChunkAnswer,
        now_ms: u64,
    ) -> Result<()> {
        let Some(t) = self.transfers.incoming.get_mut(&id) else {
            return Ok(());
        };
        t.asked.remove(&(index, offset));
        let part = match answer {
            ChunkAnswer::Part(p) => {
                t.failed = 0;
                p
            }
            ChunkAnswer::Refused => {
                t.paused = true;
                return Ok(());
            }
            ChunkAnswer::Failed => {
                // A failure from a connection that has since been replaced is no reason to
                // stop; asking again is, while failures do not pile up.
                t.failed += 1;
                if t.failed >= MAX_FAILED_PARTS {
                    t.paused = true;
                    return Ok(());
                }
                return self.pump_transfer(&id);
            }
        };
        let Some(record) = self.transfer_record(&id)? else {
            self.transfers.incoming.remove(&id);
            return Ok(());
        };
        let layout = layout_of(&record.manifest)?;
        let Some(plain_len) = layout.chunk_len(index) else {
            return Ok(());
        };
        let sealed_len = plain_len + CHUNK_TAG_BYTES;
        if record.has(index as usize) || part.len() != part_len(sealed_len, offset) {
            return self.pump_transfer(&id);
        }
        let t = self.transfers.incoming.get_mut(&id).expect("checked above");
        let (buf, got) = t
            .partial
            .entry(index)
            .or_insert_with(|| (vec![0; sealed_len], BTreeSet::new()));
        let at = offset as usize;
        buf[at..at + part.len()].copy_from_slice(&part);
        got.insert(offset);
        if got.len() < sealed_len.div_ceil(MAX_CHUNK_PART_BYTES) {
            return self.pump_transfer(&id);
        }
        let (sealed, _) = t.partial.remove(&index).expect("just filled");
        let key = AttachmentKey::from_bytes(record.manifest.key.expose())?;
        let hash = record.manifest.chunks[index as usize];
        let plain = match open_chunk(&key, &layout, index, &hash, &sealed) {
            Ok(p) => p,
            Err(_) => {
                t.bad += 1;
                if t.bad >= MAX_BAD_CHUNKS {
                    t.paused = true;
                    self.problem(format!(
                        "an attachment from {} keeps arriving damaged; trying again when its sender reconnects",
                        record.peer
                    ));
                }
                return self.pump_transfer(&id);
            }
        };
        self.blobs.write_at(&id, layout.offset(index), &plain)?;
        self.chunk_stored(record, index, now_ms)?;
        self.pump_transfer(&id)
    }

    /// Chunk `index` of `record`'s attachment is written to the blob: records it, and checks
    /// and reports the whole file when it was the last, or reports progress.
    fn chunk_stored(
        &mut self,
        mut record: AttachmentRecord,
        index: u32,
        now_ms: u64,
    ) -> Result<()> {
        let id = record.id;
        let total = record.manifest.chunks.len();
        record.set(index as usize);
        let stored = record.stored();
        if stored == total {
            // Whole: checked, reported, and the sender told (all after the flush).
            return self.finish_transfer(record, now_ms);
        }
        self.event(Event::AttachmentProgress {
            from: record.peer.clone(),
            id: hex(&id),
            stored: stored as u32,
            total: total as u32,
            size: record.manifest.size,
        });
        if let Some(t) = self.transfers.incoming.get_mut(&id) {
            t.record = Some(record.clone());
        }
        self.write(vec![Op::PutAttachment(record)])
    }

    /// Every chunk is in: checks the whole file, or starts over if it does not match (a chunk
    /// recorded before its bytes reached the disk, in a crash).
    fn finish_transfer(&mut self, mut record: AttachmentRecord, now_ms: u64) -> Result<()> {
        let id = record.id;
        let layout = layout_of(&record.manifest)?;
        self.blobs.sync(&id)?;
        let mut check = AttachmentOpener::new(record.manifest.plaintext_hash);
        for index in 0..layout.count {
            let len = layout.chunk_len(index).unwrap_or(0);
            check.update(&self.blobs.read_at(&id, layout.offset(index), len)?);
        }
        self.transfers.incoming.remove(&id);
        if check.finish().is_err() {
            record.have.clear();
            self.problem(format!(
                "an attachment from {} did not match its sender's file; fetching it again",
                record.peer
            ));
            let from = attachment_source(self.store.as_ref(), &record)?.unwrap_or_default();
            let peer = self
                .store
                .contact(&from)?
                .and_then(|c| c.peer_id)
                .unwrap_or_default();
            self.write(vec![Op::PutAttachment(record)])?;
            // If chunks came through relays, the sender hears that none are held, and leaves
            // them again.
            let mut t = Transfer::new(peer);
            t.relay_seen = true;
            self.transfers.incoming.insert(id, t);
            return self.pump_transfer(&id);
        }
        record.complete = true;
        self.event(Event::AttachmentReceived {
            from: record.peer.clone(),
            id: hex(&id),
            name: record.manifest.name.clone(),
            size: record.manifest.size,
        });
        self.transfers.unsynced.remove(&id);
        let have = record.have.clone();
        // (A group's sender leaves nothing in relays: nothing to stop.)
        let peer = match GroupId::from_conversation(&record.peer) {
            Some(_) => None,
            None => self.store.contact(&record.peer)?.and_then(|c| c.peer_id),
        };
        self.write(vec![Op::PutAttachment(record)])?;
        // The sender stops leaving chunks in relays (sent after the flush of what it says).
        match peer {
            Some(peer) => {
                self.queue_payload(&peer, &Payload::AttachmentHave { id, have }, true, now_ms)
            }
            None => Ok(()),
        }
    }

    /// The ids of the incoming transfers.
    pub(super) fn transfers_ids(&self) -> Vec<[u8; 16]> {
        self.transfers.incoming.keys().copied().collect()
    }

    /// Stops fetching attachment `id` (it stays incomplete).
    pub(super) fn drop_transfer(&mut self, id: &[u8; 16]) {
        self.transfers.incoming.remove(id);
    }

    /// A chunk envelope from our mailbox for the contact `phone`, sealed by its device `peer`:
    /// checked against the manifest like a fetched chunk, and stored.
    pub(super) fn take_relayed_chunk(
        &mut self,
        peer: &str,
        phone: &str,
        opened: &OpenedEnvelope,
        now_ms: u64,
    ) -> Result<()> {
        let id = opened.message_id.0;
        let Ok((index, sealed)) = parse_relay_chunk(&opened.payload) else {
            self.problem(format!(
                "a malformed attachment chunk from {phone} came through a relay; dropped"
            ));
            return Ok(());
        };
        // Only for an attachment of this sender that is still arriving (a chunk of one that is
        // complete, unknown or refused is dropped).
        if self
            .transfers
            .incoming
            .get(&id)
            .is_none_or(|t| t.peer != peer)
        {
            return Ok(());
        }
        let Some(record) = self.transfer_record(&id)? else {
            self.transfers.incoming.remove(&id);
            return Ok(());
        };
        if record.peer != phone || record.has(index as usize) {
            return Ok(());
        }
        let t = self.transfers.incoming.get_mut(&id).expect("checked above");
        t.relay_seen = true;
        if !self.takes_relayed(&record) {
            let t = self.transfers.incoming.get_mut(&id).expect("checked above");
            if !t.refused_relay {
                t.refused_relay = true;
                self.event(Event::AttachmentRefused {
                    from: phone.to_string(),
                    id: hex(&id),
                    name: record.manifest.name.clone(),
                    size: record.manifest.size,
                    limit: self.limits.relay_max_bytes,
                    relayed: true,
                });
            }
            return Ok(());
        }
        let layout = layout_of(&record.manifest)?;
        let Some(hash) = record.manifest.chunks.get(index as usize).copied() else {
            return Ok(());
        };
        let key = AttachmentKey::from_bytes(record.manifest.key.expose())?;
        let Ok(plain) = open_chunk(&key, &layout, index, &hash, sealed) else {
            self.problem(format!(
                "a chunk of an attachment from {phone} arrived damaged through a relay; it is asked for again"
            ));
            return Ok(());
        };
        self.blobs.write_at(&id, layout.offset(index), &plain)?;
        self.transfers.unsynced.insert(id);
        self.chunk_stored(record, index, now_ms)
    }

    /// Syncs the attachments written from relayed chunks, before the flush that lets the relay
    /// delete them.
    pub(super) fn sync_relayed_chunks(&mut self) -> Result<()> {
        for id in std::mem::take(&mut self.transfers.unsynced) {
            self.blobs.sync(&id)?;
        }
        Ok(())
    }

    /// Our mailboxes for `phone` are read: tells its device which chunks we hold of each
    /// attachment from it that came (partly) through relays and is still incomplete, so it
    /// leaves the missing ones again.
    pub(super) fn report_relayed_chunks(&mut self, phone: &str, now_ms: u64) -> Result<()> {
        let Some(peer) = self.store.contact(phone)?.and_then(|c| c.peer_id) else {
            return Ok(());
        };
        let ids: Vec<[u8; 16]> = self
            .transfers
            .incoming
            .iter_mut()
            .filter(|(_, t)| t.relay_seen && t.peer == peer)
            .map(|(id, t)| {
                t.relay_seen = false;
                *id
            })
            .collect();
        for id in ids {
            let Some(record) = self.transfer_record(&id)? else {
                continue;
            };
            if record.peer != phone || record.complete || !self.takes_relayed(&record) {
                continue;
            }
            let have = record.have.clone();
            self.queue_payload(&peer, &Payload::AttachmentHave { id, have }, true, now_ms)?;
        }
        Ok(())
    }

    /// `peer` asks for `len` bytes at `offset` of chunk `index` of the attachment of message
    /// `id`, which we sent.
    pub(super) fn on_chunk_request(
        &mut self,
        peer: &str,
        (id, index, offset, len): ([u8; 16], u32, u32, u32),
        channel: u64,
        now_ms: u64,
    ) -> Result<()> {
        let record = match self.transfers.served.take() {
            Some(r) if r.id == id => Some(r),
            _ => self.store.attachment(&id)?,
        };
        self.transfers.served = record.clone();
        let allowed = record.as_ref().is_some_and(|r| {
            r.direction == Direction::Outgoing
                && self.contact_by_peer(peer).is_some_and(|c| {
                    (c.phone == r.peer || self.is_group_member(&r.peer, &c.phone))
                        && !self.is_blocked(&c.phone)
                })
        });
        let Some(record) = record.filter(|_| allowed) else {
            return self.respond(channel, Response::NotNow);
        };
        let layout = layout_of(&record.manifest)?;
        let Some(plain_len) = layout.chunk_len(index) else {
            return self.bad_frame(peer, channel, now_ms);
        };
        let sealed_len = plain_len + CHUNK_TAG_BYTES;
        if len as usize != part_len(sealed_len, offset) || offset as usize >= sealed_len {
            return self.bad_frame(peer, channel, now_ms);
        }
        let cached = matches!(&self.transfers.sealed, Some((i, c, _)) if *i == id && *c == index);
        if !cached {
            let plain = match self.blobs.read_at(&id, layout.offset(index), plain_len) {
                Ok(p) => p,
                Err(e) => {
                    self.problem(format!("an attachment asked for cannot be read: {e}"));
                    return self.respond(channel, Response::NotNow);
                }
            };
            let key = AttachmentKey::from_bytes(record.manifest.key.expose())?;
            let sealed = seal_chunk(&key, &layout, index, &plain)?;
            self.transfers.sealed = Some((id, index, sealed));
        }
        let Some((_, _, sealed)) = &self.transfers.sealed else {
            return self.respond(channel, Response::NotNow);
        };
        let at = offset as usize;
        let part = sealed[at..at + len as usize].to_vec();
        // It acknowledges nothing stored: no need to wait for a flush.
        self.unacking.insert(channel);
        self.respond(channel, Response::Chunk(part))?;
        if at + len as usize == sealed_len {
            // The last part of a chunk went: progress for the sender's user.
            let served = &mut self.transfers.served_chunks;
            if !served.contains_key(&id) && served.len() >= MAX_SERVED_TRACKED {
                served.clear();
            }
            self.served_directly(&id, index)?;
            let served = &mut self.transfers.served_chunks;
            let chunks = served.entry(id).or_default();
            if chunks.insert(index) {
                let sent = chunks.len() as u32;
                if sent == layout.count {
                    served.remove(&id);
                }
                self.event(Event::AttachmentSendProgress {
                    to: record.peer.clone(),
                    id: hex(&id),
                    sent,
                    total: layout.count,
                    size: layout.size,
                    relayed: false,
                });
            }
        }
        Ok(())
    }
}
