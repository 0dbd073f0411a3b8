//! Progress bars for attachments being sent or received, from the node's events
//! (`attachment_progress`, `attachment_send_progress`): plain text such as
//! `[#####-----] 52% 26.0/50.0 MiB`. On a terminal a bar is redrawn in place; elsewhere (a pipe,
//! a log file) a line is printed only every [`STEP_PERCENT`] percent, so logs stay short.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::sync::mpsc;

use anyhow::anyhow;
use serde_json::Value;

use crate::chat::{read_events, Input};
use crate::home::Home;
use crate::{client, usage, Failure};

/// Width of the bar, in characters between the brackets.
pub const BAR_WIDTH: usize = 10;
/// Off a terminal, a line every this many percent (and at the end).
pub const STEP_PERCENT: u32 = 25;
/// Transfers whose last percentage is remembered (the oldest is forgotten past it).
const MAX_TRACKED: usize = 64;

/// `[#####-----] 52% 26.0/50.0 MiB` for `done` of `total` chunks of a `size`-byte file.
pub fn bar(done: u32, total: u32, size: u64) -> String {
    let total = total.max(1);
    let done = done.min(total);
    let percent = u64::from(done) * 100 / u64::from(total);
    let filled = (u64::from(done) * BAR_WIDTH as u64 / u64::from(total)) as usize;
    let bytes = size * u64::from(done) / u64::from(total);
    let (unit, div) = unit_of(size);
    format!(
        "[{}{}] {percent}% {:.1}/{:.1} {unit}",
        "#".repeat(filled),
        "-".repeat(BAR_WIDTH - filled),
        bytes as f64 / div,
        size as f64 / div
    )
}

fn unit_of(size: u64) -> (&'static str, f64) {
    const KIB: f64 = 1024.0;
    match size {
        s if s >= 1 << 30 => ("GiB", KIB * KIB * KIB),
        s if s >= 1 << 20 => ("MiB", KIB * KIB),
        s if s >= 1 << 10 => ("KiB", KIB),
        _ => ("B", 1.0),
    }
}

/// Draws the bars of the transfers it is told about.
pub struct Bars {
    tty: bool,
    /// Transfer id -> the last percentage shown.
    shown: BTreeMap<String, u32>,
    /// A bar is drawn on the current line (a terminal): the next line must start afresh.
    open: bool,
}

impl Bars {
    pub fn new(tty: bool) -> Bars {
        Bars {
            tty,
            shown: BTreeMap::new(),
            open: false,
        }
    }

    /// Shows `label` with the bar of transfer `id` (redrawn in place on a terminal; off one,
    /// only at every [`STEP_PERCENT`] percent).
    pub fn update(
        &mut self,
        out: &mut impl Write,
        id: &str,
        label: &str,
        done: u32,
        total: u32,
        size: u64,
    ) -> std::io::Result<()> {
        let percent = done.min(total) * 100 / total.max(1);
        let last = self.shown.get(id).copied();
        if !self.tty {
            let step = percent / STEP_PERCENT;
            if last.is_some_and(|l| l / STEP_PERCENT >= step) || (step == 0 && last.is_some()) {
                return Ok(());
            }
        } else if last == Some(percent) {
            return Ok(());
        }
        if !self.shown.contains_key(id) && self.shown.len() >= MAX_TRACKED {
            self.shown.pop_first();
        }
        self.shown.insert(id.to_string(), percent);
        let line = format!("  {label} {}", bar(done, total, size));
        if self.tty {
            write!(out, "\r{line}\x1b[K")?;
            self.open = true;
        } else {
            writeln!(out, "{line}")?;
        }
        out.flush()
    }

    /// Ends the line of a bar drawn in place, before other output.
    pub fn break_line(&mut self, out: &mut impl Write) -> std::io::Result<()> {
        if self.open {
            writeln!(out)?;
            self.open = false;
        }
        Ok(())
    }

    /// Transfer `id` is over: forgets it.
    pub fn finish(&mut self, id: &str) {
        self.shown.remove(id);
    }
}

/// `send CONTACT --file FILE --wait`: sends through the running node, then shows the
/// transfer's progress on standard error until the contact's device has all of it. Returns the
/// exit code.
pub fn send_and_wait(home: &Home) -> Result<u8, Failure> {
    let node = client::running_node(home)?.ok_or_else(|| {
        usage(anyhow!(
            "--wait follows the transfer in the running node: start `instaconnect run` first (without it, `send` queues the attachment)"
        ))
    })?;
    // Listening before sending: no event of the transfer is missed.
    let (tx, rx) = mpsc::sync_channel(256);
    let stream = node.event_stream()?;
    std::thread::spawn(move || read_events(stream, tx));
    let args = client::forwarded_args(std::env::args_os().skip(1))?;
    let cwd = std::env::current_dir().ok();
    let reply = node.command(&args, cwd.as_deref())?;
    let mut stdout = std::io::stdout();
    let mut err = std::io::stderr();
    let w = |e: std::io::Error| Failure::Failed(anyhow!("cannot write to the terminal: {e}"));
    write!(stdout, "{}", reply.stdout).map_err(w)?;
    stdout.flush().map_err(w)?;
    write!(err, "{}", reply.stderr).map_err(w)?;
    if reply.code != 0 {
        return Ok(reply.code);
    }
    let Some(id) = sent_id(&reply.stdout) else {
        return Err(Failure::Failed(anyhow!(
            "the node did not say which message it sent"
        )));
    };
    let mut bars = Bars::new(err.is_terminal());
    loop {
        let event = match rx.recv() {
            Ok(Input::Event(name, data)) => (name, data),
            Ok(Input::StreamEnded) | Err(_) => {
                bars.break_line(&mut err).map_err(w)?;
                writeln!(
                    err,
                    "the node stopped before the transfer ended; it goes on when the node runs again"
                )
                .map_err(w)?;
                return Ok(1);
            }
            Ok(_) => continue,
        };
        let (name, d) = event;
        let ours = d["id"].as_str() == Some(id.as_str());
        match name.as_str() {
            "attachment_send_progress" if ours => {
                let label = if d["relayed"] == true {
                    "to their relays"
                } else {
                    "sending"
                };
                let n = |k: &str| d[k].as_u64().unwrap_or(0) as u32;
                let size = d["size"].as_u64().unwrap_or(0);
                bars.update(&mut err, &id, label, n("sent"), n("total"), size)
                    .map_err(w)?;
            }
            "attachment_delivered" if ours => {
                bars.break_line(&mut err).map_err(w)?;
                writeln!(err, "delivered: their device has all of it").map_err(w)?;
                return Ok(0);
            }
            "problem" => {
                bars.break_line(&mut err).map_err(w)?;
                let message = d["message"].as_str().unwrap_or_default();
                writeln!(err, "  {message}").map_err(w)?;
            }
            _ => {}
        }
    }
}

/// The message id in `send`'s output: `"id"` of its JSON, or the 32 hex digits in parentheses
/// of its text.
fn sent_id(stdout: &str) -> Option<String> {
    if let Ok(v) = serde_json::from_str::<Value>(stdout) {
        return v["id"].as_str().map(str::to_string);
    }
    stdout.split('(').skip(1).find_map(|rest| {
        let id = rest.split(')').next()?;
        (id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit())).then(|| id.to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sent_id_is_read_from_text_and_json() {
        let id = "0123456789abcdef0123456789abcdef";
        assert_eq!(
            sent_id(&format!("Queued to +911 ({id}) [photo a.png, 3 KiB]\n")).as_deref(),
            Some(id)
        );
        assert_eq!(
            sent_id(&format!("{{\"attachment\": {{}}, \"id\": \"{id}\"}}")).as_deref(),
            Some(id)
        );
        assert_eq!(sent_id("Queued (not an id)"), None);
    }

    #[test]
    fn bars_show_share_and_bytes() {
        assert_eq!(
            bar(13, 25, 50 * 1024 * 1024),
            "[#####-----] 52% 26.0/50.0 MiB"
        );
        assert_eq!(bar(0, 7, 300_000), "[----------] 0% 0.0/293.0 KiB");
        assert_eq!(bar(7, 7, 300_000), "[##########] 100% 293.0/293.0 KiB");
        assert_eq!(bar(1, 1, 0), "[##########] 100% 0.0/0.0 B");
        assert_eq!(
            bar(9, 0, 10),
            "[##########] 100% 10.0/10.0 B",
            "no division by zero"
        );
    }

    #[test]
    fn off_a_terminal_only_every_quarter_is_printed() {
        let mut bars = Bars::new(false);
        let mut out = Vec::new();
        for done in 1..=100 {
            bars.update(&mut out, "a", "photo", done, 100, 1000)
                .unwrap();
        }
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 5, "{text}");
        assert!(
            lines[0].contains(" 1% ") && lines[4].contains(" 100% "),
            "{text}"
        );
        assert!(!text.contains('\r'));
    }

    #[test]
    fn on_a_terminal_the_bar_is_redrawn_in_place() {
        let mut bars = Bars::new(true);
        let mut out = Vec::new();
        for done in [1, 1, 2] {
            bars.update(&mut out, "a", "photo", done, 2, 1000).unwrap();
        }
        bars.break_line(&mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(text.matches('\r').count(), 2, "{text:?}");
        assert!(text.ends_with("\x1b[K\n"), "{text:?}");
    }
}
