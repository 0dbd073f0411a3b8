//! The engine's side of locations (issue 6; PROTOCOL.md §1.9) and of forwarding.
//!
//! - **One-off.** `Payload::Location` numbered with the texts, stored as a message (its text a
//!   rendering such as `📍 52.52000, 13.40500`) plus a [`LocationRecord`] by message id.
//! - **Live.** The same message with `live_until_ms`, then, every [`Live::interval_ms`] (an
//!   engine timer: [`Engine::poll_timeout`] / [`Engine::handle_timeout`]), a
//!   `Payload::LocationUpdate` carrying the device's current position ([`Command::SetPosition`])
//!   for that share, numbered 1, 2, 3...; the receiver replaces the share's location with the
//!   highest-numbered update (one message that moves). Updates stop at the share's end, or at
//!   [`Command::StopLocation`], which sends a final update without a position that marks the
//!   share ended on the receiver. The receiver also stops showing a share as live at its end
//!   on its own (no message needed): [`LocationRecord::is_live`]. An update not yet sent when
//!   the next is made is replaced by it, so a contact who is away finds one waiting, not a
//!   backlog.
//! - **Privacy.** A one-off location is the user's explicit act and may go to any contact. A
//!   live share keeps disclosing the device's position without further acts, so it needs the
//!   `location` privacy setting to be other than `nobody` (checked when it starts and at each
//!   update: setting it to `nobody` ends running shares). `nearby` positions are answered
//!   (`Request::Location`) only as that setting allows the asker (contacts, or everyone).
//! - **Forwarding.** `Payload::Forwarded` re-sends a stored message's content (text, location
//!   as the place it showed, or attachment sealed afresh by the shell) as a new message, marked
//!   forwarded on both sides (`fwd/<id>`).

use instaconnect_wire::proto::{AttachmentManifest, ForwardedContent, Location};
use instaconnect_wire::records::{AttachmentRecord, LocationRecord, PositionRecord};

use super::*;

/// How often a live location sends the device's position, unless the shell says otherwise.
pub const DEFAULT_LIVE_INTERVAL_MS: u64 = 30_000;
/// Shortest update interval a shell may set.
pub const MIN_LIVE_INTERVAL_MS: u64 = 100;
/// Shortest live share.
pub const MIN_LIVE_MS: u64 = 60_000;
/// Longest live share: 8 hours.
pub const MAX_LIVE_MS: u64 = 8 * 60 * 60 * 1000;
/// Most live shares this device runs at once.
pub const MAX_LIVE_SHARES: usize = 64;
/// Most incoming live shares whose end is timed (for the `LocationEnded` event); beyond it a
/// share still stops showing as live at its end, without the event.
pub const MAX_INCOMING_LIVE: usize = 1_024;

/// One of our running live shares.
#[derive(Clone, Debug)]
struct Share {
    /// The contact (E.164) and its device.
    to: String,
    peer: String,
    until_ms: u64,
    /// When the next update goes.
    next_ms: u64,
    /// Number of the last update made.
    update: u64,
    /// The outbox entry of the last update, while it may still be waiting.
    queued: Option<[u8; 16]>,
}

/// Live locations: ours running, and the incoming ones whose end is timed.
pub(super) struct Live {
    outgoing: BTreeMap<[u8; 16], Share>,
    /// Share id -> (end, contact).
    incoming: BTreeMap<[u8; 16], (u64, String)>,
    pub(super) interval_ms: u64,
}

impl Live {
    /// The live shares in `store` that were neither stopped nor (as far as is known without a
    /// clock) over: ours resume at the first timer, which also ends those that expired.
    pub(super) fn load(store: &dyn Store) -> Result<Live> {
        let mut live = Live {
            outgoing: BTreeMap::new(),
            incoming: BTreeMap::new(),
            interval_ms: DEFAULT_LIVE_INTERVAL_MS,
        };
        for r in store.locations()? {
            let Some(until_ms) = r.location.live_until_ms.filter(|_| !r.stopped) else {
                continue;
            };
            match r.direction {
                Direction::Outgoing if live.outgoing.len() < MAX_LIVE_SHARES => {
                    if let Some(peer) = store.contact(&r.peer)?.and_then(|c| c.peer_id) {
                        live.outgoing.insert(
                            r.id,
                            Share {
                                to: r.peer,
                                peer,
                                until_ms,
                                next_ms: 0,
                                update: r.updates,
                                queued: None,
                            },
                        );
                    }
                }
                Direction::Incoming if live.incoming.len() < MAX_INCOMING_LIVE => {
                    live.incoming.insert(r.id, (until_ms, r.peer));
                }
                _ => {}
            }
        }
        Ok(live)
    }

    /// When the next update or end is due.
    pub(super) fn next_due(&self) -> Option<u64> {
        let out = self.outgoing.values().map(|s| s.next_ms.min(s.until_ms));
        let inc = self.incoming.values().map(|(until, _)| *until);
        out.chain(inc).min()
    }
}

/// How a location shows as a message's text (in `inbox`, `chat` and events).
pub fn location_text(l: &Location) -> String {
    let at = crate::geo::format_lat_lon(l);
    if l.live_until_ms.is_some() {
        format!("📍 Live location: {at}")
    } else {
        format!("📍 {at}")
    }
}

fn location_error(why: &str) -> EngineError {
    EngineError::Location(why.to_string())
}

impl Engine {
    /// Sets how often live locations send an update (at least [`MIN_LIVE_INTERVAL_MS`]).
    pub fn with_live_interval(mut self, interval_ms: u64) -> Engine {
        self.live.interval_ms = interval_ms.max(MIN_LIVE_INTERVAL_MS);
        self
    }

    /// Whether we have live locations running (for the user: `location show`).
    pub fn live_shares(&self) -> Vec<(String, String, u64)> {
        self.live
            .outgoing
            .iter()
            .map(|(id, s)| (hex(id), s.to.clone(), s.until_ms))
            .collect()
    }

    pub(super) fn set_position(&mut self, location: Location, now_ms: u64) -> Result<()> {
        if !location.is_valid() {
            return Err(location_error("the position is off the globe"));
        }
        let location = Location {
            live_until_ms: None,
            ..location
        };
        let first = self.store.position()?.is_none();
        self.write(vec![Op::PutPosition(PositionRecord {
            location,
            set_at_ms: now_ms,
        })])?;
        if first {
            // Distances need both ends: now that we have ours, ask the devices around for
            // theirs (later, `nearby` asks again: Command::RefreshNearby).
            self.refresh_nearby()?;
        }
        Ok(())
    }

    /// Sends a location to contact `to`: `given`, else the device's position; live for
    /// `live_ms` if given (then `given` also becomes the device's position).
    pub(super) fn send_location(
        &mut self,
        to: &str,
        given: Option<Location>,
        live_ms: Option<u64>,
        now_ms: u64,
    ) -> Result<String> {
        let location = match given {
            Some(l) => l,
            None => self.store.position()?.map(|p| p.location).ok_or_else(|| {
                location_error(
                    "no position set: give one with --location LAT,LON or `instaconnect location set LAT,LON`",
                )
            })?,
        };
        if !location.is_valid() {
            return Err(location_error("the location is off the globe"));
        }
        let mut location = Location {
            live_until_ms: None,
            ..location
        };
        let mut ops = Vec::new();
        if let Some(ms) = live_ms {
            if !(MIN_LIVE_MS..=MAX_LIVE_MS).contains(&ms) {
                return Err(location_error(&format!(
                    "a live location lasts {} to {} minutes",
                    MIN_LIVE_MS / 60_000,
                    MAX_LIVE_MS / 60_000
                )));
            }
            if self.store.settings()?.privacy.location == Visibility::Nobody {
                return Err(location_error(
                    "your `location` privacy setting is nobody, which keeps live locations off; allow contacts with `instaconnect privacy set location contacts`",
                ));
            }
            let running = self.live.outgoing.values().filter(|s| s.to != to).count();
            if running >= MAX_LIVE_SHARES {
                return Err(location_error(&format!(
                    "{MAX_LIVE_SHARES} live locations are running already: stop one with `instaconnect location stop CONTACT`"
                )));
            }
            location.live_until_ms = Some(now_ms + ms);
            if given.is_some() {
                ops.push(Op::PutPosition(PositionRecord {
                    location: Location {
                        live_until_ms: None,
                        ..location
                    },
                    set_at_ms: now_ms,
                }));
            }
        }
        let peer = self.sendable(to)?;
        if live_ms.is_some() {
            // A new live location to a contact replaces the one running.
            self.stop_live(Some(to), now_ms)?;
        }
        let id = self.random_id();
        let (msg, conv) = self.new_outgoing(to, id, location_text(&location), now_ms)?;
        let payload = Payload::Location {
            location,
            n: conv.sent_n,
        }
        .encode()?;
        let entry = payload_entry(id, &peer, payload, now_ms);
        let order = msg.seq + 1;
        ops.extend([
            Op::PutMessage(msg),
            Op::PutConversation(conv),
            Op::PutLocation(LocationRecord {
                id,
                peer: to.to_string(),
                direction: Direction::Outgoing,
                location,
                updated_at_ms: now_ms,
                updates: 0,
                stopped: false,
            }),
            Op::PutOutbox(entry.clone()),
        ]);
        self.write(ops)?;
        self.outbox.insert(order, entry);
        if let Some(until_ms) = location.live_until_ms {
            self.live.outgoing.insert(
                id,
                Share {
                    to: to.to_string(),
                    peer: peer.clone(),
                    until_ms,
                    next_ms: now_ms + self.live.interval_ms,
                    update: 0,
                    queued: None,
                },
            );
        }
        self.pump_outbox(Some(&peer), now_ms)?;
        Ok(hex(&id))
    }

    /// Stops our live locations to `to` (all if `None`), each with a final update that marks it
    /// ended on the receiver. Returns how many were running.
    pub(super) fn stop_live(&mut self, to: Option<&str>, now_ms: u64) -> Result<usize> {
        let ids: Vec<[u8; 16]> = self
            .live
            .outgoing
            .iter()
            .filter(|(_, s)| to.is_none_or(|t| s.to == t))
            .map(|(id, _)| *id)
            .collect();
        let mut stopped = 0;
        for id in ids {
            let Some(mut share) = self.live.outgoing.remove(&id) else {
                continue;
            };
            if now_ms < share.until_ms {
                self.queue_update(id, &mut share, None, now_ms)?;
                stopped += 1;
            }
            self.event(Event::LocationEnded {
                peer: share.to,
                id: hex(&id),
                stopped: now_ms < share.until_ms,
            });
        }
        Ok(stopped)
    }

    /// Queues update `share.update + 1` of live share `id`: a position, or `None` to end it.
    /// The share's previous update, if it has not gone out yet, is dropped.
    fn queue_update(
        &mut self,
        id: [u8; 16],
        share: &mut Share,
        location: Option<Location>,
        now_ms: u64,
    ) -> Result<()> {
        share.update += 1;
        let mut ops = Vec::new();
        if let Some(old) = share.queued.take() {
            if !self.outbox.inflight.contains(&old) && self.outbox.remove(&old).is_some() {
                ops.push(Op::RemoveOutbox(old));
                self.forget_deposits(&old, &mut ops);
            }
        }
        let location = location.map(|l| Location {
            live_until_ms: Some(share.until_ms),
            ..l
        });
        if let Some(mut r) = self.store.location(&id)? {
            match location {
                Some(l) => {
                    r.location = l;
                    r.updated_at_ms = now_ms;
                }
                None => r.stopped = true,
            }
            r.updates = share.update;
            ops.push(Op::PutLocation(r));
        }
        let payload = Payload::LocationUpdate {
            share: id,
            update: share.update,
            location,
        }
        .encode()?;
        let uid = self.random_id();
        let entry = OutboxEntry {
            id: uid,
            peer_id: share.peer.clone(),
            payload: OutboxPayload::Payload(payload),
            attempts: 0,
            next_attempt_ms: now_ms,
        };
        // After every message of the conversation so far, so after the share's own message.
        let order = self
            .store
            .conversation(&share.to)?
            .map_or(0, |c| c.next_seq)
            + 1;
        ops.push(Op::PutOutbox(entry.clone()));
        self.write(ops)?;
        self.outbox.insert(order, entry);
        share.queued = Some(uid);
        self.pump_outbox(Some(&share.peer.clone()), now_ms)
    }

    /// The timers of live locations: updates due, shares that ended.
    pub(super) fn tick_live(&mut self, now_ms: u64) -> Result<()> {
        let over: Vec<[u8; 16]> = self
            .live
            .incoming
            .iter()
            .filter(|(_, (until, _))| *until <= now_ms)
            .map(|(id, _)| *id)
            .collect();
        for id in over {
            if let Some((_, from)) = self.live.incoming.remove(&id) {
                self.event(Event::LocationEnded {
                    peer: from,
                    id: hex(&id),
                    stopped: false,
                });
            }
        }
        let due: Vec<[u8; 16]> = self
            .live
            .outgoing
            .iter()
            .filter(|(_, s)| s.next_ms.min(s.until_ms) <= now_ms)
            .map(|(id, _)| *id)
            .collect();
        if due.is_empty() {
            return Ok(());
        }
        let allowed = self.store.settings()?.privacy.location != Visibility::Nobody;
        let position = self.store.position()?;
        for id in due {
            let Some(mut share) = self.live.outgoing.remove(&id) else {
                continue;
            };
            if now_ms >= share.until_ms {
                self.event(Event::LocationEnded {
                    peer: share.to,
                    id: hex(&id),
                    stopped: false,
                });
                continue;
            }
            if !allowed || self.is_blocked(&share.to) {
                // The user turned location off (a final update says so) or blocked the contact
                // (who hears nothing more) meanwhile: the share ends.
                if !allowed {
                    self.queue_update(id, &mut share, None, now_ms)?;
                }
                self.event(Event::LocationEnded {
                    peer: share.to,
                    id: hex(&id),
                    stopped: true,
                });
                continue;
            }
            share.next_ms = now_ms + self.live.interval_ms;
            if let Some(p) = position {
                self.queue_update(id, &mut share, Some(p.location), now_ms)?;
            }
            self.live.outgoing.insert(id, share);
        }
        Ok(())
    }

    /// A location message arrived (or a forwarded one): stores it with its message, in the
    /// sender's order, and times the end of a live one.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn take_location(
        &mut self,
        contact: &ContactRecord,
        id: [u8; 16],
        sent_at_ms: u64,
        location: Location,
        n: u64,
        mut ops: Vec<Op>,
        now_ms: u64,
    ) -> Result<bool> {
        let message = incoming(
            id,
            &contact.phone,
            location_text(&location),
            sent_at_ms,
            now_ms,
        );
        ops.push(Op::PutLocation(LocationRecord {
            id,
            peer: contact.phone.clone(),
            direction: Direction::Incoming,
            location,
            updated_at_ms: sent_at_ms,
            updates: 0,
            stopped: false,
        }));
        self.receive_text(message, n, ops, now_ms)?;
        if let Some(until) = location.live_until_ms {
            if until > now_ms && self.live.incoming.len() < MAX_INCOMING_LIVE {
                self.live
                    .incoming
                    .insert(id, (until, contact.phone.clone()));
            }
        }
        Ok(true)
    }

    /// An update of a live location from `contact`: kept if it is the newest of a share of
    /// theirs that is still live; `None` ends the share.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn take_location_update(
        &mut self,
        contact: &ContactRecord,
        share: [u8; 16],
        update: u64,
        location: Option<Location>,
        sent_at_ms: u64,
        mut ops: Vec<Op>,
    ) -> Result<()> {
        let current = self.store.location(&share)?.filter(|r| {
            r.direction == Direction::Incoming
                && r.peer == contact.phone
                && !r.stopped
                && update > r.updates
        });
        let Some(mut r) = current else {
            // Unknown, stale, or ended: nothing to show (still acknowledged).
            return self.write(ops);
        };
        let until = r.location.live_until_ms;
        match location {
            None => {
                r.stopped = true;
                r.updates = update;
                ops.push(Op::PutLocation(r));
                self.write(ops)?;
                self.live.incoming.remove(&share);
                self.event(Event::LocationEnded {
                    peer: contact.phone.clone(),
                    id: hex(&share),
                    stopped: true,
                });
            }
            Some(l) => {
                if until.is_none_or(|u| sent_at_ms >= u) {
                    return self.write(ops);
                }
                r.location = Location {
                    live_until_ms: until,
                    ..l
                };
                r.updates = update;
                r.updated_at_ms = sent_at_ms;
                let location = r.location;
                ops.push(Op::PutLocation(r));
                self.write(ops)?;
                self.event(Event::LocationUpdated {
                    from: contact.phone.clone(),
                    id: hex(&share),
                    location,
                });
            }
        }
        Ok(())
    }

    /// A forwarded message arrived: stored and shown like its content, marked forwarded.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn take_forwarded(
        &mut self,
        peer: &str,
        contact: &ContactRecord,
        id: [u8; 16],
        sent_at_ms: u64,
        content: ForwardedContent,
        n: u64,
        mut ops: Vec<Op>,
        now_ms: u64,
    ) -> Result<bool> {
        ops.push(Op::MarkForwarded(id));
        match content {
            ForwardedContent::Text(text) => {
                let message = incoming(id, &contact.phone, text, sent_at_ms, now_ms);
                self.receive_text(message, n, ops, now_ms)?;
                Ok(true)
            }
            ForwardedContent::Location(l) => {
                let l = Location {
                    live_until_ms: None,
                    ..l
                };
                self.take_location(contact, id, sent_at_ms, l, n, ops, now_ms)
            }
            ForwardedContent::Attachment(manifest) => {
                self.take_attachment(peer, contact, id, sent_at_ms, manifest, n, ops, now_ms)
            }
        }
    }

    /// Forwards message `source` to `target` (a contact, E.164; groups join here) as a new
    /// message marked forwarded. An attachment's file must first be copied in the blob store
    /// and sealed afresh by the shell ([`seal_attachment`]): `attachment` is its new message
    /// id and manifest. A live location goes as the place it last showed.
    pub(super) fn forward(
        &mut self,
        source: [u8; 16],
        target: &str,
        attachment: Option<([u8; 16], AttachmentManifest)>,
        now_ms: u64,
    ) -> Result<String> {
        let msg = self
            .store
            .message(&source)?
            .ok_or_else(|| EngineError::UnknownMessage(hex(&source)))?;
        let (id, content) = if let Some(a) = self.store.attachment(&source)? {
            if !a.complete {
                return Err(EngineError::Forward(
                    "its attachment is still arriving".into(),
                ));
            }
            let Some((id, manifest)) = attachment else {
                return Err(EngineError::Forward(
                    "its attachment must be copied and sealed afresh first".into(),
                ));
            };
            manifest
                .check()
                .map_err(|e| EngineError::Attachment(e.to_string()))?;
            if self.blobs.size(&id)? != Some(manifest.size) || manifest.size != a.manifest.size {
                return Err(EngineError::Attachment(
                    "its copy is not in the attachment store".into(),
                ));
            }
            (id, ForwardedContent::Attachment(manifest))
        } else {
            if attachment.is_some() {
                return Err(EngineError::Forward("it has no attachment".into()));
            }
            let content = match self.store.location(&source)? {
                Some(l) => ForwardedContent::Location(Location {
                    live_until_ms: None,
                    ..l.location
                }),
                None if msg.text.trim().is_empty() => return Err(EngineError::Empty),
                None => ForwardedContent::Text(msg.text),
            };
            (self.random_id(), content)
        };
        self.send_forwarded(target, id, content, now_ms)
    }

    fn send_forwarded(
        &mut self,
        to: &str,
        id: [u8; 16],
        content: ForwardedContent,
        now_ms: u64,
    ) -> Result<String> {
        let peer = self.sendable(to)?;
        if self.store.message(&id)?.is_some() {
            return Err(EngineError::Forward("its new message id is taken".into()));
        }
        let text = match &content {
            ForwardedContent::Text(t) => t.clone(),
            ForwardedContent::Location(l) => location_text(l),
            ForwardedContent::Attachment(m) => m.caption.clone().unwrap_or_default(),
        };
        let (msg, conv) = self.new_outgoing(to, id, text, now_ms)?;
        let mut ops = Vec::new();
        match &content {
            ForwardedContent::Text(_) => {}
            ForwardedContent::Location(l) => ops.push(Op::PutLocation(LocationRecord {
                id,
                peer: to.to_string(),
                direction: Direction::Outgoing,
                location: *l,
                updated_at_ms: now_ms,
                updates: 0,
                stopped: false,
            })),
            ForwardedContent::Attachment(m) => ops.push(Op::PutAttachment(AttachmentRecord {
                id,
                peer: to.to_string(),
                direction: Direction::Outgoing,
                manifest: m.clone(),
                have: vec![0xff; m.chunks.len().div_ceil(8)],
                complete: true,
            })),
        }
        let payload = Payload::Forwarded {
            content,
            n: conv.sent_n,
        }
        .encode()?;
        let entry = payload_entry(id, &peer, payload, now_ms);
        let order = msg.seq + 1;
        ops.extend([
            Op::PutMessage(msg),
            Op::PutConversation(conv),
            Op::MarkForwarded(id),
            Op::PutOutbox(entry.clone()),
        ]);
        self.write(ops)?;
        self.outbox.insert(order, entry);
        self.pump_outbox(Some(&peer), now_ms)?;
        Ok(hex(&id))
    }

    /// Our position as our privacy shows it to `peer` (for `nearby`); nothing for blocked
    /// peers.
    pub(super) fn location_for(&self, peer: &str) -> Result<Option<Location>> {
        let contact = self.contact_by_peer(peer);
        if contact.as_ref().is_some_and(|c| self.is_blocked(&c.phone)) {
            return Ok(None);
        }
        let shown = match self.store.settings()?.privacy.location {
            Visibility::Everyone => true,
            Visibility::Contacts => contact.is_some(),
            Visibility::Nobody => false,
        };
        if !shown {
            return Ok(None);
        }
        Ok(self.store.position()?.map(|p| p.location))
    }

    /// Asks `peer` for its position, if we have one to measure from.
    pub(super) fn ask_location(&mut self, peer: &str) -> Result<()> {
        if self.store.position()?.is_none() {
            return Ok(());
        }
        let tag = self.tag();
        self.pending
            .insert(tag, (peer.to_string(), Pending::Location));
        let frame = Request::Location.encode()?;
        self.staged.push(Output::Request {
            peer: peer.to_string(),
            tag,
            frame,
        });
        Ok(())
    }

    /// Asks every device around for its position again (answers update [`Engine::peers`]).
    pub(super) fn refresh_nearby(&mut self) -> Result<()> {
        let mut around: Vec<String> = self
            .peers
            .iter()
            .filter(|(_, p)| p.view.discovered || p.view.connected)
            .map(|(k, _)| k.to_string())
            .collect();
        around.sort();
        for peer in around {
            self.ask_location(&peer)?;
        }
        Ok(())
    }

    /// A device answered our `Request::Location`.
    pub(super) fn on_location_reply(
        &mut self,
        peer: &str,
        location: Option<Location>,
        now_ms: u64,
    ) {
        let p = self.peer_mut(peer, now_ms);
        p.view.location = location.map(|l| Box::new((l, now_ms)));
    }
}
