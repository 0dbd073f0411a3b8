//! `instaconnect chat CONTACT`: an interactive conversation on the terminal. Typed lines are
//! sent through the running node; incoming messages, delivery states and the contact's
//! presence are printed as the node's event stream reports them. It needs the node: without
//! it nothing could arrive live (`send` and `history` work without it).

use std::collections::HashMap;
use std::io::{BufRead, BufReader, IsTerminal, Read, Write};
use std::sync::mpsc;

use anyhow::anyhow;
use serde_json::Value;

use crate::client::{self, NodeClient};
use crate::home::Home;
use crate::progress::Bars;
use crate::Failure;

/// Messages of the conversation shown when the chat opens.
const BACKLOG: usize = 20;
/// Characters of a message quoted in a delivery-state line.
const QUOTE_CHARS: usize = 40;
/// Lines and events waiting for the chat loop; the readers block when it is full.
const QUEUE: usize = 256;

pub(crate) enum Input {
    Line(String),
    Eof,
    Event(String, Value),
    StreamEnded,
}

/// The contact as the node resolved it.
struct Contact {
    phone: String,
    label: String,
    peer: Option<String>,
}

/// Runs the chat on this process's terminal until end of input or `/quit`.
pub fn run(home: &Home, contact: &str) -> Result<u8, Failure> {
    let node = client::running_node(home)?.ok_or_else(|| {
        Failure::Failed(anyhow!(
            "chat needs the running node: start `instaconnect run` in another terminal (without it, `send` queues messages and `history` shows them)"
        ))
    })?;
    let (tx, rx) = mpsc::sync_channel(QUEUE);
    // Subscribe before reading the history, so nothing falls between the two.
    let stream = node.event_stream()?;
    let events = tx.clone();
    std::thread::spawn(move || read_events(stream, events));
    let stdin = tx;
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if stdin.send(Input::Line(line)).is_err() {
                return;
            }
        }
        let _ = stdin.send(Input::Eof);
    });
    let mut out = std::io::stdout();
    Chat::open(&node, contact, &mut out)?.run(&rx, &mut out)
}

/// Parses Server-Sent Events (`event:` then `data:` lines) into the chat's queue.
pub(crate) fn read_events(stream: impl Read, tx: mpsc::SyncSender<Input>) {
    let mut name = String::new();
    for line in BufReader::new(stream).lines() {
        let Ok(line) = line else { break };
        if let Some(n) = line.strip_prefix("event:") {
            name = n.trim().to_string();
        } else if let Some(data) = line.strip_prefix("data:") {
            let data = serde_json::from_str(data.trim()).unwrap_or(Value::Null);
            if tx
                .send(Input::Event(std::mem::take(&mut name), data))
                .is_err()
            {
                return;
            }
        }
    }
    let _ = tx.send(Input::StreamEnded);
}

struct Chat<'a> {
    node: &'a NodeClient,
    contact: Contact,
    /// Our messages in this conversation: id -> text, to quote in state changes.
    mine: HashMap<String, String>,
    /// Attachments arriving or leaving, drawn as progress bars.
    bars: Bars,
}

fn hhmm(ms: u64) -> String {
    // "YYYY-MM-DD HH:MM:SSZ" -> "HH:MM"
    crate::output::time(ms)
        .get(11..16)
        .unwrap_or("")
        .to_string()
}

fn quote(text: &str) -> String {
    let mut q: String = text.chars().take(QUOTE_CHARS).collect();
    if q.len() < text.len() {
        q.push('…');
    }
    q
}

impl<'a> Chat<'a> {
    /// Resolves the contact, prints the recent conversation (which marks it read).
    fn open(
        node: &'a NodeClient,
        contact: &str,
        out: &mut impl Write,
    ) -> Result<Chat<'a>, Failure> {
        let c = node_json(node, &["contacts", "show", "--json", "--", contact])?;
        let phone = c["phone"].as_str().unwrap_or_default().to_string();
        let label = c["name"].as_str().unwrap_or(&phone).to_string();
        let contact = Contact {
            label,
            peer: c["peer_id"].as_str().map(str::to_string),
            phone,
        };
        let history = node_json(node, &["history", "--json", "--", &contact.phone])?;
        let history = history.as_array().cloned().unwrap_or_default();
        let mut chat = Chat {
            node,
            contact,
            mine: HashMap::new(),
            bars: Bars::new(std::io::stdout().is_terminal()),
        };
        let w = |e: std::io::Error| Failure::Failed(anyhow!("cannot write to the terminal: {e}"));
        writeln!(
            out,
            "chat with {} ({}): type a message and press Enter; Ctrl-D or /quit ends",
            chat.contact.label, chat.contact.phone
        )
        .map_err(w)?;
        if c["linked"] != true {
            writeln!(
                out,
                "(no keys exchanged with {} yet: messages wait until they accept your contact request)",
                chat.contact.label
            )
            .map_err(w)?;
        }
        let skip = history.len().saturating_sub(BACKLOG);
        for m in &history {
            if m["direction"] == "out" {
                let id = m["id"].as_str().unwrap_or_default().to_string();
                chat.mine
                    .insert(id, m["text"].as_str().unwrap_or_default().to_string());
            }
        }
        for m in history.iter().skip(skip) {
            let text = m["text"].as_str().unwrap_or_default();
            let at = hhmm(m["stored_at_ms"].as_u64().unwrap_or(0));
            if m["direction"] == "out" {
                let state = m["state"].as_str().unwrap_or("?");
                writeln!(out, "[{at}] me: {text}  [{state}]").map_err(w)?;
            } else {
                writeln!(out, "[{at}] {}: {text}", chat.contact.label).map_err(w)?;
            }
        }
        out.flush().map_err(w)?;
        Ok(chat)
    }

    fn run(mut self, rx: &mpsc::Receiver<Input>, out: &mut impl Write) -> Result<u8, Failure> {
        let w = |e: std::io::Error| Failure::Failed(anyhow!("cannot write to the terminal: {e}"));
        loop {
            let Ok(input) = rx.recv() else {
                return Ok(0);
            };
            match input {
                Input::Line(line) => {
                    let text = line.trim();
                    if text == "/quit" {
                        return Ok(0);
                    }
                    if text.is_empty() {
                        continue;
                    }
                    self.bars.break_line(out).map_err(w)?;
                    match node_json(
                        self.node,
                        &["send", "--json", "--", &self.contact.phone, text],
                    ) {
                        Ok(sent) => {
                            let id = sent["id"].as_str().unwrap_or_default().to_string();
                            let state = sent["state"].as_str().unwrap_or("queued");
                            self.mine.insert(id, text.to_string());
                            writeln!(out, "[{}] me: {text}  [{state}]", hhmm(now_ms()))
                                .map_err(w)?;
                        }
                        // A refused message (too long, blocked contact) is told, the chat goes on.
                        Err(Failure::Usage(e)) => writeln!(out, "not sent: {e:#}").map_err(w)?,
                        Err(f) => return Err(f),
                    }
                }
                Input::Eof => return Ok(0),
                Input::StreamEnded => {
                    writeln!(out, "the node stopped; chat ended").map_err(w)?;
                    return Ok(1);
                }
                Input::Event(name, data) => self.event(&name, &data, out).map_err(w)?,
            }
            out.flush().map_err(w)?;
        }
    }

    fn event(&mut self, name: &str, d: &Value, out: &mut impl Write) -> std::io::Result<()> {
        let phone = self.contact.phone.as_str();
        let id = d["id"].as_str().unwrap_or_default();
        let count = |k: &str| d[k].as_u64().unwrap_or(0) as u32;
        let size = d["size"].as_u64().unwrap_or(0);
        let progress = matches!(name, "attachment_progress" | "attachment_send_progress");
        let ours = d["from"] == phone || d["to"] == phone;
        if !progress && (ours || name == "lagged" || name == "presence") {
            self.bars.break_line(out)?;
        }
        match name {
            "attachment_progress" if d["from"] == phone => {
                let (done, total) = (count("stored"), count("total"));
                self.bars.update(out, id, "receiving", done, total, size)?;
            }
            "attachment_send_progress" if d["to"] == phone => {
                let label = if d["relayed"] == true {
                    "sending (to their relays)"
                } else {
                    "sending"
                };
                let (done, total) = (count("sent"), count("total"));
                self.bars.update(out, id, label, done, total, size)?;
            }
            "attachment_received" if d["from"] == phone => {
                self.bars.finish(id);
                let name = d["name"].as_str().unwrap_or("attachment");
                writeln!(
                    out,
                    "  received {name} ({}): `instaconnect attachments save {id}` writes it to a file",
                    crate::messaging::human_size(size)
                )?;
            }
            "attachment_delivered" if d["to"] == phone => {
                self.bars.finish(id);
                writeln!(out, "  [delivered] attachment {id}")?;
            }
            "attachment_refused" if d["from"] == phone => {
                let name = d["name"].as_str().unwrap_or("attachment");
                let way = if d["relayed"] == true {
                    "through relays (it comes when you reach each other directly)"
                } else {
                    "on this device"
                };
                writeln!(
                    out,
                    "  {name} is {}, more than attachments may be {way}",
                    crate::messaging::human_size(size)
                )?;
            }
            "message_received" if d["from"] == phone => {
                let at = hhmm(d["sent_at_ms"].as_u64().unwrap_or_else(now_ms));
                let text = d["text"].as_str().unwrap_or_default();
                writeln!(out, "[{at}] {}: {text}", self.contact.label)?;
                // The conversation is on screen: it is read (receipts as privacy allows).
                if let Err(e) = node_json(self.node, &["read", "--json", "--", phone]) {
                    writeln!(out, "(could not mark it read: {})", failure_text(&e))?;
                }
            }
            "state_changed" if d["to"] == phone => {
                let id = d["id"].as_str().unwrap_or_default();
                let state = d["state"].as_str().unwrap_or("?").to_lowercase();
                let what = self.mine.get(id).map(|t| quote(t)).unwrap_or_default();
                writeln!(out, "  [{state}] \"{what}\"")?;
            }
            "presence" if self.contact.peer.as_deref() == d["peer"].as_str() => {
                let state = if d["online"] == true {
                    "is online"
                } else {
                    "went offline"
                };
                writeln!(out, "  {} {state}", self.contact.label)?;
            }
            "lagged" => {
                writeln!(
                    out,
                    "  (missed {} events; `instaconnect history` has everything)",
                    d["missed"]
                )?;
            }
            _ => {}
        }
        Ok(())
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn failure_text(f: &Failure) -> String {
    match f {
        Failure::Usage(e) | Failure::Failed(e) => format!("{e:#}"),
    }
}

/// Runs a `--json` command in the node; its error output becomes the failure.
fn node_json(node: &NodeClient, args: &[&str]) -> Result<Value, Failure> {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let reply = node.command(&args, None)?;
    if reply.code != 0 {
        let why = reply.stderr.trim();
        let why = why.strip_prefix("error: ").unwrap_or(why).to_string();
        return Err(if reply.code == 2 {
            Failure::Usage(anyhow!("{why}"))
        } else {
            Failure::Failed(anyhow!("{why}"))
        });
    }
    serde_json::from_str(&reply.stdout)
        .map_err(|e| Failure::Failed(anyhow!("unreadable answer from the node: {e}")))
}
