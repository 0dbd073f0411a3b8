//! Groups over the network from the CLI: what the address book changes goes to the members
//! (through the engine), invitations are answered, and group conversations are sent to, shown
//! and read.

use anyhow::anyhow;
use instaconnect_core::book::{Book, BookError};
use instaconnect_core::engine::Command;
use instaconnect_store::{SledStore, Store};
use instaconnect_wire::records::{DeliveryState, Direction, GroupRecord};
use serde_json::json;

use crate::cli::Ctx;
use crate::messaging::engine_command;
use crate::output::Out;
use crate::{usage, Failure};

/// Sends the group's new state to its members after the address book changed it.
pub fn sync(
    ctx: &Ctx<'_>,
    out: &mut Out,
    store: &SledStore,
    g: &GroupRecord,
) -> Result<(), Failure> {
    if let Some(note) = engine_command(ctx, store, Command::GroupChanged { group: g.id })? {
        out.note(note);
    }
    Ok(())
}

pub fn leave(ctx: &Ctx<'_>, store: &SledStore, g: &GroupRecord) -> Result<(), Failure> {
    engine_command(ctx, store, Command::LeaveGroup { group: g.id })?;
    Ok(())
}

/// `groups accept|decline GROUP`.
pub fn answer(ctx: &Ctx<'_>, out: &mut Out, group: &str, accept: bool) -> Result<(), Failure> {
    let store = ctx.open()?;
    let g = Book::new(&*store).resolve_group(group)?;
    engine_command(
        ctx,
        &store,
        Command::AnswerGroup {
            group: g.id,
            accept,
        },
    )?;
    if ctx.json {
        out.json(&json!({"group": g.id.to_hex(), "name": g.name, "accepted": accept}))?;
    } else if accept {
        out.line(format!("joined {} ({} members)", g.name, g.members.len()));
    } else {
        out.line(format!("declined {}", g.name));
    }
    Ok(())
}

/// "invited" while we have not answered the group's invitation, "left", or "".
pub fn status(store: &SledStore, g: &GroupRecord) -> &'static str {
    if g.left {
        return "left";
    }
    match store.group_sync(&g.id) {
        Ok(Some(s)) if s.invited_by.is_some() => "invited",
        _ => "",
    }
}

/// Members known to have joined (the others are invited); everyone for a group never sent.
pub fn joined(store: &SledStore, g: &GroupRecord) -> Vec<String> {
    match store.group_sync(&g.id) {
        Ok(Some(s)) if s.state.version > 0 => s.state.joined,
        _ => g.members.iter().map(|m| m.phone.clone()).collect(),
    }
}

/// The group `query` names when it names no contact (contacts win).
pub fn target_group(
    ctx: &Ctx<'_>,
    store: &SledStore,
    query: &str,
) -> Result<Option<GroupRecord>, Failure> {
    let book = Book::new(store);
    match book.resolve_contact(query, ctx.region.as_ref()) {
        Ok(_) => Ok(None),
        Err(BookError::UnknownContact(_)) => match book.resolve_group(query) {
            Ok(g) => Ok(Some(g)),
            Err(BookError::UnknownGroup(_)) => Err(usage(anyhow!(
                "no contact or group matches {query:?} (see `instaconnect contacts list` and `instaconnect groups list`)"
            ))),
            Err(e) => Err(e.into()),
        },
        Err(e) => Err(e.into()),
    }
}

pub fn send(
    ctx: &Ctx<'_>,
    out: &mut Out,
    store: &SledStore,
    g: &GroupRecord,
    text: String,
) -> Result<(), Failure> {
    let id =
        engine_command(ctx, store, Command::SendGroup { group: g.id, text })?.unwrap_or_default();
    let state = store
        .messages(&g.id.conversation(), 0)?
        .into_iter()
        .rev()
        .find(|m| hex(&m.id) == id)
        .map_or(DeliveryState::Queued, |m| m.state);
    if ctx.json {
        out.json(&json!({"id": id, "group": g.id.to_hex(), "state": state.name()}))?;
    } else {
        out.line(format!("{} to {} ({id})", state.label(), g.name));
    }
    Ok(())
}

fn hex(id: &[u8; 16]) -> String {
    id.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn history(
    ctx: &Ctx<'_>,
    out: &mut Out,
    store: &SledStore,
    g: &GroupRecord,
) -> Result<(), Failure> {
    let key = g.id.conversation();
    let msgs = store.messages(&key, 0)?;
    let names: std::collections::HashMap<String, Option<String>> = store
        .contacts()?
        .into_iter()
        .map(|c| (c.phone, c.name))
        .collect();
    let meta = |id: &[u8; 16]| store.group_message(id).ok().flatten();
    if ctx.json {
        let v: Vec<_> = msgs
            .iter()
            .map(|m| {
                let gm = meta(&m.id);
                let members: serde_json::Map<String, serde_json::Value> = gm
                    .as_ref()
                    .map(|gm| {
                        gm.states
                            .iter()
                            .map(|(p, s)| (p.clone(), json!(s.name())))
                            .collect()
                    })
                    .unwrap_or_default();
                json!({
                    "id": hex(&m.id),
                    "seq": m.seq,
                    "direction": if m.direction == Direction::Outgoing { "out" } else { "in" },
                    "from": gm.map(|x| x.sender),
                    "text": m.text,
                    "state": m.state.name(),
                    "members": members,
                    "sent_at_ms": m.sent_at_ms,
                    "stored_at_ms": m.stored_at_ms,
                    "attachment": crate::messaging::attachment_json(store, &m.id),
                })
            })
            .collect();
        out.json(&v)?;
    } else if msgs.is_empty() {
        out.line(format!("no messages in {} yet", g.name));
    } else {
        for m in &msgs {
            let who = if m.direction == Direction::Outgoing {
                "me".to_string()
            } else {
                let from = meta(&m.id).map(|x| x.sender).unwrap_or_default();
                names.get(&from).cloned().flatten().unwrap_or(from)
            };
            let state = if m.direction == Direction::Outgoing {
                let per: Vec<String> = meta(&m.id)
                    .map(|gm| {
                        let read = gm
                            .states
                            .iter()
                            .filter(|(_, s)| *s == DeliveryState::Read)
                            .count();
                        let got = gm
                            .states
                            .iter()
                            .filter(|(_, s)| *s >= DeliveryState::Delivered)
                            .count();
                        vec![format!("{got}/{} delivered, {read} read", gm.states.len())]
                    })
                    .unwrap_or_default();
                format!("  [{}; {}]", m.state.label(), per.join(""))
            } else {
                String::new()
            };
            out.line(crate::messaging::message_line(store, m, &who, &state));
        }
    }
    if msgs
        .iter()
        .any(|m| m.direction == Direction::Incoming && m.state == DeliveryState::Delivered)
    {
        engine_command(ctx, store, Command::MarkGroupRead { group: g.id })?;
    }
    Ok(())
}

pub fn read(
    ctx: &Ctx<'_>,
    out: &mut Out,
    store: &SledStore,
    g: &GroupRecord,
) -> Result<(), Failure> {
    let unread = store
        .conversation(&g.id.conversation())?
        .map_or(0, |v| v.unread);
    if unread > 0 {
        engine_command(ctx, store, Command::MarkGroupRead { group: g.id })?;
    }
    if ctx.json {
        out.json(&json!({"group": g.id.to_hex(), "marked_read": unread}))?;
    } else {
        out.line(format!("{unread} message(s) in {} marked read", g.name));
    }
    Ok(())
}
