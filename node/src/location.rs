//! Locations and forwarding on the command line: `send CONTACT --location LAT,LON [--live
//! MINUTES]`, `location set|stop|show`, `forward MESSAGE-ID CONTACT`, and how a location
//! shows in `history` (text and `--json`). The engine does the protocol
//! (`instaconnect_core::engine`, `engine/location.rs`); this reads arguments and prints.

use anyhow::anyhow;
use instaconnect_core::book::Book;
use instaconnect_core::engine::{seal_attachment, AttachmentMeta, Command};
use instaconnect_core::geo::{degrees, format_lat_lon, parse_lat_lon};
use instaconnect_store::{Blobs, SledStore, Store};
use instaconnect_wire::proto::Location;
use instaconnect_wire::records::{DeliveryState, Direction, LocationRecord};
use rand::RngCore;
use serde_json::json;

use crate::cli::{now_ms, Ctx, LocationCmd};
use crate::messaging::{engine_command, engine_failure, hex, id_state, parse_id};
use crate::output::{time, Out};
use crate::{usage, Failure};

/// Largest piece of an attachment copied at once when forwarding.
const COPY_PIECE: usize = 1024 * 1024;

fn parse(s: &str) -> Result<Location, Failure> {
    parse_lat_lon(s).map_err(|e| usage(anyhow!("{e}")))
}

/// `52.52000° N, 13.40500° E`: the place in words, no map needed.
fn hemispheres(l: &Location) -> String {
    let (lat, lon) = degrees(l);
    format!(
        "{:.5}° {}, {:.5}° {}",
        lat.abs(),
        if lat < 0.0 { "S" } else { "N" },
        lon.abs(),
        if lon < 0.0 { "W" } else { "E" }
    )
}

/// How a location message shows in `history`: `📍 52.52000, 13.40500 (52.52000° N, 13.40500°
/// E)`, and for a live one whether it is still live.
pub fn location_line(r: &LocationRecord, now: u64) -> String {
    let place = format!(
        "📍 {} ({})",
        format_lat_lon(&r.location),
        hemispheres(&r.location)
    );
    match r.location.live_until_ms {
        None => place,
        Some(_) if r.is_live(now) => format!(
            "{place} — live until {}, updated {}",
            time(r.location.live_until_ms.unwrap_or(0)),
            time(r.updated_at_ms)
        ),
        Some(_) if r.stopped => format!("{place} — live location stopped"),
        Some(_) => format!("{place} — live location ended"),
    }
}

/// The location of a message for `history --json` (`null` if it has none).
pub fn location_json(store: &SledStore, id: &[u8; 16], now: u64) -> serde_json::Value {
    match store.location(id).ok().flatten() {
        Some(r) => {
            let (lat, lon) = degrees(&r.location);
            json!({
                "lat": lat,
                "lon": lon,
                "text": hemispheres(&r.location),
                "uri": format!("geo:{lat:.7},{lon:.7}"),
                "accuracy_m": r.location.accuracy_m,
                "live": r.location.live_until_ms.is_some(),
                "live_until_ms": r.location.live_until_ms,
                "live_now": r.is_live(now),
                "stopped": r.stopped,
                "updates": r.updates,
                "updated_at_ms": r.updated_at_ms,
            })
        }
        None => serde_json::Value::Null,
    }
}

/// `send CONTACT --location LAT,LON [--live MINUTES]` (or `--live` alone: from the position
/// set with `location set`).
pub fn send_location(
    ctx: &Ctx<'_>,
    out: &mut Out,
    contact: &str,
    given: Option<&str>,
    live_minutes: Option<u64>,
) -> Result<(), Failure> {
    let location = given.map(parse).transpose()?;
    let store = ctx.open()?;
    let c = Book::new(&*store).resolve_contact(contact, ctx.region.as_ref())?;
    let id_hex = engine_command(
        ctx,
        &store,
        Command::SendLocation {
            to: c.phone.clone(),
            location,
            live_ms: live_minutes.map(|m| m.saturating_mul(60_000)),
        },
    )?
    .unwrap_or_default();
    let state = id_state(&store, &id_hex).unwrap_or(DeliveryState::Queued);
    let id = parse_id(&id_hex)?;
    let now = now_ms();
    if ctx.json {
        out.json(&json!({
            "id": id_hex,
            "to": c.phone,
            "state": state.name(),
            "location": location_json(&store, &id, now),
        }))?;
    } else {
        let line = store
            .location(&id)?
            .map(|r| location_line(&r, now))
            .unwrap_or_default();
        out.line(format!(
            "{} to {} ({id_hex}) {line}",
            state.label(),
            c.phone
        ));
        if live_minutes.is_some() {
            out.note("your position is sent again at every interval: change it with `instaconnect location set LAT,LON`, end it with `instaconnect location stop`");
        }
    }
    Ok(())
}

/// `location set|stop|show`.
pub fn location(ctx: &Ctx<'_>, out: &mut Out, cmd: LocationCmd) -> Result<(), Failure> {
    match cmd {
        LocationCmd::Set { position } => {
            let location = parse(&position)?;
            let store = ctx.open()?;
            Book::new(&*store).account()?;
            engine_command(ctx, &store, Command::SetPosition { location })?;
            if ctx.json {
                out.json(&json!({"lat": degrees(&location).0, "lon": degrees(&location).1}))?;
            } else {
                out.line(format!(
                    "position set: {} ({})",
                    format_lat_lon(&location),
                    hemispheres(&location)
                ));
            }
            Ok(())
        }
        LocationCmd::Stop { contact } => {
            let store = ctx.open()?;
            let book = Book::new(&*store);
            let to = contact
                .map(|c| {
                    book.resolve_contact(&c, ctx.region.as_ref())
                        .map(|c| c.phone)
                })
                .transpose()?;
            let n: u64 = engine_command(ctx, &store, Command::StopLocation { to: to.clone() })?
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
            if ctx.json {
                out.json(&json!({"stopped": n, "contact": to}))?;
            } else if n == 0 {
                out.line("no live location was running");
            } else {
                out.line(format!("stopped {n} live location(s)"));
            }
            Ok(())
        }
        LocationCmd::Show => {
            let store = ctx.open()?;
            Book::new(&*store).account()?;
            let now = now_ms();
            let position = store.position()?;
            let live: Vec<LocationRecord> = store
                .locations()?
                .into_iter()
                .filter(|r| r.direction == Direction::Outgoing && r.is_live(now))
                .collect();
            if ctx.json {
                out.json(&json!({
                    "position": position.map(|p| json!({
                        "lat": degrees(&p.location).0,
                        "lon": degrees(&p.location).1,
                        "set_at_ms": p.set_at_ms,
                    })),
                    "live": live.iter().map(|r| json!({
                        "id": hex(&r.id),
                        "contact": r.peer,
                        "live_until_ms": r.location.live_until_ms,
                        "updates": r.updates,
                    })).collect::<Vec<_>>(),
                }))?;
            } else {
                match position {
                    Some(p) => out.line(format!(
                        "position: {} ({}), set {}",
                        format_lat_lon(&p.location),
                        hemispheres(&p.location),
                        time(p.set_at_ms)
                    )),
                    None => out.line("no position set (`instaconnect location set LAT,LON`)"),
                }
                for r in &live {
                    out.line(format!(
                        "live to {} until {} ({} updates)",
                        r.peer,
                        time(r.location.live_until_ms.unwrap_or(0)),
                        r.updates
                    ));
                }
            }
            Ok(())
        }
    }
}

/// `forward MESSAGE-ID CONTACT`: the message's text, location or attachment goes again as a
/// new message, shown as forwarded on both sides. An attachment is copied in the attachment
/// store and sealed afresh under a new key first.
pub fn forward(ctx: &Ctx<'_>, out: &mut Out, id_hex: &str, contact: &str) -> Result<(), Failure> {
    let id = parse_id(id_hex)?;
    let store = ctx.open()?;
    let c = Book::new(&*store).resolve_contact(contact, ctx.region.as_ref())?;
    if store.message(&id)?.is_none() {
        return Err(usage(anyhow!(
            "no message with id {id_hex} (see `instaconnect history CONTACT --json`)"
        )));
    }
    let mut copy = None;
    let mut attachment = None;
    if let Some(a) = store.attachment(&id)? {
        if !a.complete {
            return Err(usage(anyhow!(
                "the attachment is still arriving: {} of {} chunks; forward it once it is complete",
                a.stored(),
                a.manifest.chunks.len()
            )));
        }
        let blobs = ctx.home.blobs()?;
        let mut new_id = [0u8; 16];
        rand::rngs::OsRng.fill_bytes(&mut new_id);
        copy = Some((blobs.clone(), new_id));
        let sealed = copy_blob(blobs.as_ref(), &id, &new_id, a.manifest.size)
            .map_err(|e| Failure::Failed(anyhow!("cannot copy the attachment: {e}")))
            .and_then(|()| {
                let m = &a.manifest;
                let meta = AttachmentMeta {
                    kind: m.kind,
                    name: m.name.clone(),
                    mime: m.mime.clone(),
                    width: m.width,
                    height: m.height,
                    duration_ms: m.duration_ms,
                    thumbnail: m.thumbnail.clone(),
                    caption: m.caption.clone(),
                };
                seal_attachment(blobs.as_ref(), &new_id, meta, &mut rand::rngs::OsRng)
                    .map_err(engine_failure)
            });
        match sealed {
            Ok(manifest) => attachment = Some(Box::new((new_id, manifest))),
            Err(e) => {
                let _ = blobs.remove(&new_id);
                return Err(e);
            }
        }
    }
    let sent = engine_command(
        ctx,
        &store,
        Command::Forward {
            id,
            to: c.phone.clone(),
            attachment,
        },
    );
    let new_hex = match sent {
        Ok(h) => h.unwrap_or_default(),
        Err(e) => {
            if let Some((blobs, new_id)) = copy {
                let _ = blobs.remove(&new_id);
            }
            return Err(e);
        }
    };
    let state = id_state(&store, &new_hex).unwrap_or(DeliveryState::Queued);
    if ctx.json {
        out.json(&json!({
            "id": new_hex,
            "forwarded_from": id_hex,
            "to": c.phone,
            "state": state.name(),
        }))?;
    } else {
        out.line(format!(
            "{} to {} ({new_hex}), forwarded",
            state.label(),
            c.phone
        ));
    }
    Ok(())
}

/// Copies `size` bytes of blob `from` to a new blob `to`, piece by piece, and syncs it.
fn copy_blob(blobs: &dyn Blobs, from: &[u8; 16], to: &[u8; 16], size: u64) -> anyhow::Result<()> {
    let mut offset = 0u64;
    while offset < size {
        let n = (size - offset).min(COPY_PIECE as u64) as usize;
        let piece = blobs.read_at(from, offset, n)?;
        blobs.write_at(to, offset, &piece)?;
        offset += n as u64;
    }
    if size == 0 {
        blobs.write_at(to, 0, &[])?;
    }
    blobs.sync(to)?;
    Ok(())
}
