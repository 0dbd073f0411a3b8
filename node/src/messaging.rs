//! Messaging commands: send, inbox, history, nearby, contact requests. When the node runs, they
//! go through its engine (`DriverHandle`); otherwise a local engine works on the store directly,
//! so what it queues (messages, acceptances, receipts) goes out once `instaconnect run` starts.

use std::sync::Arc;

use anyhow::anyhow;
use instaconnect_core::book::Book;
use instaconnect_core::engine::{Command, Engine, EngineError};
use instaconnect_crypto::ContactCard;
use instaconnect_store::{SledStore, Store};
use instaconnect_wire::records::{DeliveryState, Direction};
use rand::RngCore;
use serde_json::json;

use crate::cli::{now_ms, Ctx, Source};
use crate::output::{time, Out};
use crate::{usage, Failure};

/// Longest preview of a message in `inbox`.
const PREVIEW_CHARS: usize = 60;

fn engine_failure(e: EngineError) -> Failure {
    match e {
        EngineError::Store(_)
        | EngineError::Crypto(_)
        | EngineError::Wire(_)
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
    let mut engine = Engine::new(shared, seed).map_err(engine_failure)?;
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

fn id_state(store: &SledStore, id: &str) -> Option<DeliveryState> {
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

fn hex(id: &[u8; 16]) -> String {
    id.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn history(ctx: &Ctx<'_>, out: &mut Out, contact: &str) -> Result<(), Failure> {
    let store = ctx.open()?;
    let c = Book::new(&*store).resolve_contact(contact, ctx.region.as_ref())?;
    let msgs = store.messages(&c.phone, 0)?;
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
            out.line(format!("{} {who}: {}{state}", time(m.stored_at_ms), m.text));
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
    if ctx.json {
        out.json(&peers)?;
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
                ]
            })
            .collect();
        out.table(&["PEER", "NAME", "PHONE", "CONTACT", "LAST SEEN"], &rows);
    }
    Ok(())
}
