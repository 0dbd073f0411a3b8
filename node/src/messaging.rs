//! Messaging commands: send, inbox, history, nearby, contact requests. When the node runs, they
//! go through its engine (`DriverHandle`); otherwise a local engine works on the store directly,
//! so what it queues (messages, acceptances, receipts) goes out once `instaconnect run` starts.

use std::sync::Arc;

use anyhow::anyhow;
use instaconnect_core::book::Book;
use std::path::Path;

use instaconnect_core::engine::{seal_attachment, AttachmentMeta, Command, Engine, EngineError};
use instaconnect_core::geo;
use instaconnect_crypto::ContactCard;
use instaconnect_crypto::MAX_ATTACHMENT_BYTES;
use instaconnect_store::Blobs;
use instaconnect_store::{SledStore, Store};
use instaconnect_wire::proto::{AttachmentKind, MAX_ATTACHMENT_NAME_BYTES, MAX_THUMBNAIL_BYTES};
use instaconnect_wire::records::{DeliveryState, Direction, MessageRecord};
use rand::RngCore;
use serde_json::json;

use crate::cli::{now_ms, Ctx, Source};
use crate::output::{time, Out};
use crate::{usage, Failure};

/// Longest preview of a message in `inbox`.
const PREVIEW_CHARS: usize = 60;

pub(crate) fn engine_failure(e: EngineError) -> Failure {
    match e {
        EngineError::Store(_)
        | EngineError::Crypto(_)
        | EngineError::Wire(_)
        | EngineError::Blob(_)
        | EngineError::NoAccount => Failure::Failed(e.into()),
        other => Failure::Usage(other.into()),
    }
}

/// Runs an engine command through the running node, or a local engine when there is none.
pub fn engine_command(
    ctx: &Ctx<'_>,
    store: &SledStore,
    cmd: Command,
) -> Result<Option<String>, Failure> {
    if let Source::Node {
        driver: Some(driver),
        ..
    } = &ctx.source
    {
        return tokio::runtime::Handle::current()
            .block_on(driver.command(cmd))
            .map_err(|e| Failure::Usage(anyhow!("{e}")));
    }
    let mut seed = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut seed);
    let shared: Arc<dyn Store> = Arc::new(store.clone());
    let mut engine = Engine::new(shared, seed)
        .map_err(engine_failure)?
        .with_blobs(ctx.home.blobs()?);
    let r = engine.command(now_ms(), cmd).map_err(engine_failure)?;
    engine.commit().map_err(engine_failure)?;
    Ok(r)
}

fn node_running(ctx: &Ctx<'_>) -> bool {
    matches!(
        ctx.source,
        Source::Node {
            driver: Some(_),
            ..
        }
    )
}

/// Checks the syntax of an Ed25519 libp2p peer id ("12D3KooW…").
pub fn check_peer_id(peer: &str) -> Result<(), Failure> {
    let ok = bs58::decode(peer)
        .into_vec()
        .is_ok_and(|b| b.len() == 38 && b[..6] == [0x00, 0x24, 0x08, 0x01, 0x12, 0x20]);
    if ok {
        Ok(())
    } else {
        Err(usage(anyhow!(
            "not a valid peer id: {peer:?} (expected an InstaConnect peer id such as 12D3KooW…, see `instaconnect nearby`)"
        )))
    }
}

fn state_str(s: DeliveryState) -> &'static str {
    s.name()
}

pub fn send(ctx: &Ctx<'_>, out: &mut Out, contact: &str, text: String) -> Result<(), Failure> {
    let store = ctx.open()?;
    let c = Book::new(&*store).resolve_contact(contact, ctx.region.as_ref())?;
    let id = engine_command(
        ctx,
        &store,
        Command::Send {
            to: c.phone.clone(),
            text,
        },
    )?
    .unwrap_or_default();
    let state = id_state(&store, &id).unwrap_or(DeliveryState::Queued);
    if ctx.json {
        out.json(&json!({"id": id, "to": c.phone, "state": state_str(state)}))?;
    } else {
        out.line(format!("{} to {} ({id})", state.label(), c.phone));
        if !node_running(ctx) {
            out.note("the node is not running: the message goes out when `instaconnect run` reaches the contact");
        }
    }
    Ok(())
}

pub(crate) fn id_state(store: &SledStore, id: &str) -> Option<DeliveryState> {
    let bytes: Vec<u8> = (0..id.len())
        .step_by(2)
        .filter_map(|i| u8::from_str_radix(id.get(i..i + 2)?, 16).ok())
        .collect();
    let id: [u8; 16] = bytes.try_into().ok()?;
    store.message(&id).ok().flatten().map(|m| m.state)
}

pub fn inbox(ctx: &Ctx<'_>, out: &mut Out) -> Result<(), Failure> {
    let store = ctx.open()?;
    let book = Book::new(&*store);
    book.account()?;
    let mut convs = store.conversations()?;
    convs.sort_by_key(|c| std::cmp::Reverse(c.last_activity_ms));
    let mut rows = Vec::new();
    let mut items = Vec::new();
    for c in convs {
        let name = store.contact(&c.peer)?.and_then(|x| x.name);
        let last = c
            .next_seq
            .checked_sub(1)
            .map(|seq| store.messages(&c.peer, seq))
            .transpose()?
            .and_then(|v| v.into_iter().next());
        let preview: String = last
            .as_ref()
            .map(|m| m.text.chars().take(PREVIEW_CHARS).collect())
            .unwrap_or_default();
        items.push(json!({
            "contact": c.peer,
            "name": name,
            "unread": c.unread,
            "last_message": last.as_ref().map(|m| json!({
                "id": hex(&m.id),
                "text": m.text,
                "outgoing": m.direction == Direction::Outgoing,
                "state": state_str(m.state),
                "at_ms": m.stored_at_ms,
            })),
            "last_activity_ms": c.last_activity_ms,
        }));
        rows.push(vec![
            c.peer.clone(),
            name.unwrap_or_default(),
            c.unread.to_string(),
            time(c.last_activity_ms),
            preview,
        ]);
    }
    if ctx.json {
        out.json(&items)?;
    } else if rows.is_empty() {
        out.line("no conversations yet (send one with `instaconnect send CONTACT TEXT`)");
    } else {
        out.table(&["CONTACT", "NAME", "UNREAD", "LAST", "MESSAGE"], &rows);
    }
    Ok(())
}

pub(crate) fn hex(id: &[u8; 16]) -> String {
    id.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn history(ctx: &Ctx<'_>, out: &mut Out, contact: &str) -> Result<(), Failure> {
    let store = ctx.open()?;
    let c = Book::new(&*store).resolve_contact(contact, ctx.region.as_ref())?;
    let msgs = store.messages(&c.phone, 0)?;
    let now = now_ms();
    if ctx.json {
        let v: Vec<_> = msgs
            .iter()
            .map(|m| {
                json!({
                    "id": hex(&m.id),
                    "seq": m.seq,
                    "direction": if m.direction == Direction::Outgoing { "out" } else { "in" },
                    "text": m.text,
                    "state": state_str(m.state),
                    "relays": match m.state {
                        DeliveryState::Relayed { relays } => Some(relays),
                        _ => None,
                    },
                    "sent_at_ms": m.sent_at_ms,
                    "stored_at_ms": m.stored_at_ms,
                    "attachment": attachment_json(&store, &m.id),
                    "location": crate::location::location_json(&store, &m.id, now),
                    "forwarded": store.forwarded(&m.id).unwrap_or(false),
                })
            })
            .collect();
        out.json(&v)?;
    } else if msgs.is_empty() {
        out.line(format!("no messages with {} yet", c.phone));
    } else {
        for m in &msgs {
            let who = if m.direction == Direction::Outgoing {
                "me"
            } else {
                c.name.as_deref().unwrap_or(&c.phone)
            };
            let state = if m.direction == Direction::Outgoing {
                format!("  [{}]", m.state.label())
            } else {
                String::new()
            };
            out.line(message_line(&store, m, who, &state));
        }
    }
    // Showing the conversation is reading it: receipts go out as the reader's privacy allows.
    if msgs
        .iter()
        .any(|m| m.direction == Direction::Incoming && m.state == DeliveryState::Delivered)
    {
        engine_command(ctx, &store, Command::MarkRead { contact: c.phone })?;
    }
    Ok(())
}

pub fn read(ctx: &Ctx<'_>, out: &mut Out, contact: &str) -> Result<(), Failure> {
    let store = ctx.open()?;
    let c = Book::new(&*store).resolve_contact(contact, ctx.region.as_ref())?;
    let unread = store.conversation(&c.phone)?.map_or(0, |v| v.unread);
    if unread > 0 {
        engine_command(
            ctx,
            &store,
            Command::MarkRead {
                contact: c.phone.clone(),
            },
        )?;
    }
    if ctx.json {
        out.json(&json!({"contact": c.phone, "marked_read": unread}))?;
    } else {
        out.line(format!("{unread} message(s) from {} marked read", c.phone));
    }
    Ok(())
}

pub fn requests(ctx: &Ctx<'_>, out: &mut Out) -> Result<(), Failure> {
    let store = ctx.open()?;
    Book::new(&*store).account()?;
    let now = now_ms();
    let list: Vec<_> = store
        .contact_requests()?
        .into_iter()
        .map(|r| {
            let card = ContactCard::from_bytes(&r.card, now).ok();
            json!({
                "peer_id": r.peer_id,
                "phone": card.as_ref().and_then(|c| c.display.phone.clone()),
                "name": card.as_ref().and_then(|c| c.display.name.clone()),
                "expired": card.is_none(),
                "received_at_ms": r.received_at_ms,
            })
        })
        .collect();
    if ctx.json {
        out.json(&list)?;
    } else if list.is_empty() {
        out.line("no contact requests");
    } else {
        let rows: Vec<Vec<String>> = list
            .iter()
            .map(|r| {
                vec![
                    r["peer_id"].as_str().unwrap_or("").to_string(),
                    r["phone"].as_str().unwrap_or("").to_string(),
                    r["name"].as_str().unwrap_or("").to_string(),
                ]
            })
            .collect();
        out.table(&["PEER", "PHONE", "NAME"], &rows);
    }
    Ok(())
}

pub fn accept(ctx: &Ctx<'_>, out: &mut Out, who: &str) -> Result<(), Failure> {
    let store = ctx.open()?;
    let book = Book::new(&*store);
    book.account()?;
    let now = now_ms();
    let region = book.region(ctx.region.as_ref())?;
    let wanted_phone = instaconnect_core::phone::Phone::parse(who, region.as_ref()).ok();
    let req = store
        .contact_requests()?
        .into_iter()
        .find(|r| {
            r.peer_id == who
                || wanted_phone.as_ref().is_some_and(|p| {
                    ContactCard::from_bytes(&r.card, now)
                        .ok()
                        .and_then(|c| c.display.phone)
                        .as_deref()
                        == Some(p.as_str())
                })
        })
        .ok_or_else(|| {
            usage(anyhow!(
                "no contact request from {who:?} (see `instaconnect contacts requests`)"
            ))
        })?;
    engine_command(
        ctx,
        &store,
        Command::AcceptContact {
            peer: req.peer_id.clone(),
        },
    )?;
    let c = store
        .contacts()?
        .into_iter()
        .find(|c| c.peer_id.as_deref() == Some(req.peer_id.as_str()));
    if ctx.json {
        out.json(&json!({"accepted": req.peer_id, "phone": c.as_ref().map(|c| c.phone.clone())}))?;
    } else {
        out.line(format!(
            "accepted {} ({})",
            c.as_ref().map(|c| c.phone.as_str()).unwrap_or("?"),
            req.peer_id
        ));
    }
    Ok(())
}

pub fn nearby(ctx: &Ctx<'_>, out: &mut Out) -> Result<(), Failure> {
    let Source::Node {
        driver: Some(driver),
        ..
    } = &ctx.source
    else {
        return Err(Failure::Failed(anyhow!(
            "the node is not running: start it with `instaconnect run` to see who is nearby"
        )));
    };
    let peers = tokio::runtime::Handle::current()
        .block_on(driver.peers())
        .map_err(|e| Failure::Failed(anyhow!("{e}")))?;
    let peers: Vec<_> = peers
        .into_iter()
        .filter(|p| p.discovered || p.connected)
        .collect();
    // Distances are measured from our position (`location set`) to the positions the others'
    // privacy settings show us; ask for them again, for the next look.
    let store = ctx.open()?;
    let here = store.position()?.map(|p| p.location);
    if here.is_some() {
        tokio::runtime::Handle::current()
            .block_on(driver.command(Command::RefreshNearby))
            .map_err(|e| Failure::Failed(anyhow!("{e}")))?;
    }
    let away = |p: &instaconnect_core::engine::PeerView| {
        let (here, there) = (here?, p.location?);
        let bearing = geo::bearing_deg(&here, &there);
        Some((
            geo::distance_m(&here, &there),
            bearing,
            geo::compass_point(bearing),
        ))
    };
    if ctx.json {
        let v: Vec<serde_json::Value> = peers
            .iter()
            .map(|p| {
                let mut j = serde_json::to_value(p).unwrap_or_default();
                if let (Some((d, b, c)), Some(o)) = (away(p), j.as_object_mut()) {
                    o.insert("distance_m".into(), json!(d.round()));
                    o.insert("bearing_deg".into(), json!(b.round()));
                    o.insert("compass".into(), json!(c));
                }
                j
            })
            .collect();
        out.json(&v)?;
    } else if peers.is_empty() {
        out.line("nobody nearby yet");
    } else {
        let rows: Vec<Vec<String>> = peers
            .iter()
            .map(|p| {
                let prof = p.profile.clone().unwrap_or_default();
                vec![
                    p.peer.clone(),
                    prof.name.unwrap_or_default(),
                    prof.phone.unwrap_or_default(),
                    p.contact
                        .clone()
                        .map(|c| format!("contact {c}"))
                        .unwrap_or_default(),
                    if p.online {
                        "online".into()
                    } else {
                        p.last_online_ms.map(time).unwrap_or_else(|| "-".into())
                    },
                    away(p)
                        .map(|(d, _, _)| geo::format_distance(d))
                        .unwrap_or_else(|| "-".into()),
                    away(p)
                        .map(|(_, b, c)| format!("{}° {c}", b.round() as u32 % 360))
                        .unwrap_or_else(|| "-".into()),
                ]
            })
            .collect();
        out.table(
            &[
                "PEER",
                "NAME",
                "PHONE",
                "CONTACT",
                "LAST SEEN",
                "DISTANCE",
                "BEARING",
            ],
            &rows,
        );
        if here.is_none() {
            out.note("set your position with `instaconnect location set LAT,LON` to see how far away people are");
        }
    }
    Ok(())
}

/// Largest piece of a file read or written at once.
const FILE_PIECE: usize = 1024 * 1024;

fn kind_name(k: AttachmentKind) -> &'static str {
    match k {
        AttachmentKind::Photo => "photo",
        AttachmentKind::Video => "video",
        AttachmentKind::Voice => "voice",
        AttachmentKind::File => "file",
    }
}

/// The attachment of a message, for `history --json` (`null` if it has none).
/// One message of a conversation as `history` prints it: time, sender, attachment, text and
/// (for ours) the state.
pub(crate) fn message_line(store: &SledStore, m: &MessageRecord, who: &str, state: &str) -> String {
    let attached = attachment_line(store, &m.id)
        .map(|a| {
            if m.text.is_empty() {
                a
            } else {
                format!("{a} ")
            }
        })
        .unwrap_or_default();
    let forwarded = if store.forwarded(&m.id).unwrap_or(false) {
        "[forwarded] "
    } else {
        ""
    };
    let text = match store.location(&m.id).ok().flatten() {
        Some(l) => crate::location::location_line(&l, now_ms()),
        None => m.text.clone(),
    };
    format!(
        "{} {who}: {forwarded}{attached}{text}{state}",
        time(m.stored_at_ms)
    )
}

pub(crate) fn attachment_json(store: &SledStore, id: &[u8; 16]) -> serde_json::Value {
    match store.attachment(id).ok().flatten() {
        Some(a) => json!({
            "kind": kind_name(a.manifest.kind),
            "name": a.manifest.name,
            "mime": a.manifest.mime,
            "size": a.manifest.size,
            "width": a.manifest.width,
            "height": a.manifest.height,
            "duration_ms": a.manifest.duration_ms,
            "complete": a.complete,
            "chunks": a.manifest.chunks.len(),
            "chunks_stored": a.stored().min(a.manifest.chunks.len()),
        }),
        None => serde_json::Value::Null,
    }
}

/// The attachment of a message as `history` shows it: `[photo beach.png, 293 KiB]`,
/// `[video clip.mp4, 1.2 MiB, 0:42]`.
pub(crate) fn attachment_line(store: &SledStore, id: &[u8; 16]) -> Option<String> {
    let a = store.attachment(id).ok().flatten()?;
    let progress = if a.complete {
        String::new()
    } else {
        format!(
            ", {} of {} chunks received",
            a.stored(),
            a.manifest.chunks.len()
        )
    };
    let duration = a
        .manifest
        .duration_ms
        .map(|ms| format!(", {}", clock(ms)))
        .unwrap_or_default();
    Some(format!(
        "[{} {}, {}{duration}{progress}]",
        kind_name(a.manifest.kind),
        a.manifest.name,
        human_size(a.manifest.size)
    ))
}

/// A duration as a clock: `0:42`, `12:05`, `1:02:03` (at least `0:01` for a short clip).
fn clock(ms: u64) -> String {
    let s = ms.saturating_add(500) / 1000;
    let s = if ms > 0 { s.max(1) } else { 0 };
    let (h, m, s) = (s / 3600, s / 60 % 60, s % 60);
    if h > 0 {
        format!("{h}:{m:02}:{s:02}")
    } else {
        format!("{m}:{s:02}")
    }
}

pub(crate) fn human_size(n: u64) -> String {
    match n {
        n if n < 1024 => format!("{n} B"),
        n if n < 1024 * 1024 => format!("{} KiB", n / 1024),
        n if n < 1024 * 1024 * 1024 => format!("{:.1} MiB", n as f64 / (1024.0 * 1024.0)),
        n => format!("{:.2} GiB", n as f64 / (1024.0 * 1024.0 * 1024.0)),
    }
}

/// The media type of a file, from its extension.
fn mime_of(path: &Path) -> &'static str {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
        .unwrap_or_default();
    match ext.as_str() {
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "webp" => "image/webp",
        "gif" => "image/gif",
        "mp4" | "m4v" => "video/mp4",
        "webm" => "video/webm",
        "mov" => "video/quicktime",
        "ogg" | "opus" => "audio/ogg",
        "m4a" => "audio/mp4",
        "mp3" => "audio/mpeg",
        "wav" => "audio/wav",
        "pdf" => "application/pdf",
        "txt" => "text/plain",
        "zip" => "application/zip",
        _ => "application/octet-stream",
    }
}

/// `send CONTACT --photo|--video|--voice|--file FILE [CAPTION]`: copies the file into the
/// attachment store, seals it, and sends its manifest; the recipient's device fetches the
/// chunks from this one.
pub fn send_attachment(
    ctx: &Ctx<'_>,
    out: &mut Out,
    contact: &str,
    kind: AttachmentKind,
    given: &Path,
    caption: Option<String>,
) -> Result<(), Failure> {
    let store = ctx.open()?;
    // A group name or id works too (contacts win).
    let group = crate::groups::target_group(ctx, &store, contact)?;
    let (to, to_label) = match &group {
        Some(g) => (g.id.to_hex(), g.name.clone()),
        None => {
            let c = Book::new(&*store).resolve_contact(contact, ctx.region.as_ref())?;
            (c.phone.clone(), c.phone)
        }
    };
    let path = ctx.file(given)?;
    let size = std::fs::metadata(&path)
        .map_err(|e| usage(anyhow!("cannot read {}: {e}", given.display())))?
        .len();
    if size > MAX_ATTACHMENT_BYTES {
        return Err(usage(anyhow!(
            "{} is too large to send: {} (at most {})",
            given.display(),
            human_size(size),
            human_size(MAX_ATTACHMENT_BYTES)
        )));
    }
    let name = path
        .file_name()
        .map(|n| {
            n.to_string_lossy()
                .chars()
                .take(MAX_ATTACHMENT_NAME_BYTES / 4)
                .collect()
        })
        .unwrap_or_else(|| "file".to_string());
    let mut meta = AttachmentMeta {
        kind,
        name,
        mime: mime_of(&path).to_string(),
        width: None,
        height: None,
        duration_ms: None,
        thumbnail: None,
        caption: caption.filter(|c| !c.trim().is_empty()),
    };
    if kind == AttachmentKind::Photo {
        let bytes = std::fs::read(&path)
            .map_err(|e| usage(anyhow!("cannot read {}: {e}", given.display())))?;
        let pic = instaconnect_core::picture::load_picture(bytes).map_err(|e| {
            usage(anyhow!(
                "{} is not a photo this app can show: {e}",
                given.display()
            ))
        })?;
        meta.width = Some(pic.width);
        meta.height = Some(pic.height);
        meta.mime = pic.format.mime_type().to_string();
        if pic.thumbnail_png.len() <= MAX_THUMBNAIL_BYTES {
            meta.thumbnail = Some(pic.thumbnail_png);
        }
    }
    if kind != AttachmentKind::Photo {
        // Audio and video: the duration the container states, and its type when the name says
        // nothing. A file that cannot be probed is still sent, without them.
        let probed = std::fs::File::open(&path)
            .ok()
            .and_then(|mut f| instaconnect_core::media::probe(&mut f).ok().flatten());
        if let Some(info) = probed {
            meta.duration_ms = info.duration_ms;
            if meta.mime == "application/octet-stream" {
                meta.mime = info.container.mime_type().to_string();
            }
        }
    }
    let blobs = ctx.home.blobs()?;
    let mut id = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut id);
    let copied = copy_in(blobs.as_ref(), &id, &path).map_err(|e| {
        let _ = blobs.remove(&id);
        Failure::Failed(anyhow!("cannot copy {}: {e}", given.display()))
    });
    copied?;
    let sent = seal_attachment(blobs.as_ref(), &id, meta, &mut rand::rngs::OsRng)
        .map_err(engine_failure)
        .and_then(|manifest| {
            let cmd = match &group {
                Some(g) => Command::SendGroupAttachment {
                    group: g.id,
                    id,
                    manifest: Box::new(manifest),
                },
                None => Command::SendAttachment {
                    to: to.clone(),
                    id,
                    manifest: Box::new(manifest),
                },
            };
            engine_command(ctx, &store, cmd)
        });
    let id_hex = match sent {
        Ok(id) => id.unwrap_or_default(),
        Err(e) => {
            let _ = blobs.remove(&id);
            return Err(e);
        }
    };
    let state = id_state(&store, &id_hex).unwrap_or(DeliveryState::Queued);
    if ctx.json {
        out.json(&json!({
            "id": id_hex,
            "to": to,
            "state": state_str(state),
            "attachment": attachment_json(&store, &id),
        }))?;
    } else {
        let line = attachment_line(&store, &id).unwrap_or_default();
        out.line(format!(
            "{} to {} ({id_hex}) {line}",
            state.label(),
            to_label
        ));
        if !node_running(ctx) {
            out.note(
                "the node is not running: it goes out when `instaconnect run` reaches the contact",
            );
        }
    }
    Ok(())
}

/// Copies a file into the attachment store under `id`, piece by piece, and syncs it.
fn copy_in(blobs: &dyn Blobs, id: &[u8; 16], path: &Path) -> anyhow::Result<()> {
    use std::io::Read;
    let mut f = std::fs::File::open(path)?;
    let mut buf = vec![0u8; FILE_PIECE];
    let mut offset = 0u64;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        blobs.write_at(id, offset, &buf[..n])?;
        offset += n as u64;
    }
    if offset == 0 {
        blobs.write_at(id, 0, &[])?;
    }
    blobs.sync(id)?;
    Ok(())
}

/// `attachments save MESSAGE-ID [--out PATH]`: writes a complete attachment to a file (by
/// default its name, in the current directory); never overwrites one.
pub fn save_attachment(
    ctx: &Ctx<'_>,
    out: &mut Out,
    id_hex: &str,
    to: Option<&Path>,
) -> Result<(), Failure> {
    let store = ctx.open()?;
    let id = parse_id(id_hex)?;
    let a = store.attachment(&id)?.ok_or_else(|| {
        usage(anyhow!(
            "no attachment with message id {id_hex} (see `instaconnect history CONTACT`)"
        ))
    })?;
    if !a.complete {
        return Err(usage(anyhow!(
            "the attachment is still arriving: {} of {} chunks (it resumes while both devices are online)",
            a.stored(),
            a.manifest.chunks.len()
        )));
    }
    let own_name = Path::new(&a.manifest.name)
        .file_name()
        .filter(|n| !n.is_empty() && *n != "." && *n != "..")
        .map(Path::new)
        .unwrap_or(Path::new("attachment"))
        .to_path_buf();
    let given = to.map(Path::to_path_buf).unwrap_or(own_name);
    let path = ctx.file(&given)?;
    if path.exists() {
        return Err(usage(anyhow!(
            "{} exists already: choose another path with --out",
            given.display()
        )));
    }
    let blobs = ctx.home.blobs()?;
    copy_out(blobs.as_ref(), &id, a.manifest.size, &path)
        .map_err(|e| Failure::Failed(anyhow!("cannot write {}: {e}", given.display())))?;
    if ctx.json {
        out.json(&json!({"id": id_hex, "path": path, "size": a.manifest.size}))?;
    } else {
        out.line(format!(
            "saved {} ({}) to {}",
            a.manifest.name,
            human_size(a.manifest.size),
            given.display()
        ));
    }
    Ok(())
}

/// Writes `size` bytes of blob `id` to `path` via a temporary file and a rename.
fn copy_out(blobs: &dyn Blobs, id: &[u8; 16], size: u64, path: &Path) -> anyhow::Result<()> {
    use std::io::Write;
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.part",
        path.file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default()
    ));
    let result = (|| -> anyhow::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)?;
        let mut offset = 0u64;
        while offset < size {
            let n = (size - offset).min(FILE_PIECE as u64) as usize;
            f.write_all(&blobs.read_at(id, offset, n)?)?;
            offset += n as u64;
        }
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

pub(crate) fn parse_id(id: &str) -> Result<[u8; 16], Failure> {
    let bytes: Option<Vec<u8>> = (0..id.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(id.get(i..i + 2)?, 16).ok())
        .collect();
    bytes
        .and_then(|b| <[u8; 16]>::try_from(b).ok())
        .ok_or_else(|| {
            usage(anyhow!(
                "not a message id: {id:?} (32 hex digits, see `instaconnect history --json`)"
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::clock;

    #[test]
    fn durations_read_as_clocks() {
        assert_eq!(clock(0), "0:00");
        assert_eq!(clock(300), "0:01");
        assert_eq!(clock(42_400), "0:42");
        assert_eq!(clock(42_600), "0:43");
        assert_eq!(clock(12 * 60_000 + 5_000), "12:05");
        assert_eq!(clock(3_723_000), "1:02:03");
        assert_eq!(clock(u64::MAX), "5124095576030:25:51");
    }
}
