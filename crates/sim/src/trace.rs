//! Contact traces in The ONE simulator's connection-event format.
//!
//! One event per line: `TIME CONN A B up|down`, with `TIME` in seconds (a decimal number) and
//! `A`, `B` device numbers from 0. Blank lines and lines starting with `#` are skipped. Events
//! are applied in time order (lines with equal times in file order). The parser never panics
//! and reads at most [`MAX_TRACE_BYTES`] and [`MAX_TRACE_EVENTS`].

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::SimError;
use crate::units::MAX_DURATION_MS;

/// Largest trace file read.
pub const MAX_TRACE_BYTES: u64 = 512 * 1024 * 1024;
/// Most events in a trace.
pub const MAX_TRACE_EVENTS: usize = 20_000_000;

/// A link between two devices comes up or goes down.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContactEvent {
    pub at_ms: u64,
    pub a: u32,
    pub b: u32,
    pub up: bool,
}

/// Reads and parses a trace for `devices` devices.
pub fn load(path: &Path, devices: u32) -> Result<Vec<ContactEvent>, SimError> {
    let io = |source| SimError::Io {
        action: "read the contact trace",
        path: path.to_path_buf(),
        source,
    };
    let len = std::fs::metadata(path).map_err(io)?.len();
    let label = path.display().to_string();
    if len > MAX_TRACE_BYTES {
        return Err(SimError::Trace {
            file: label,
            line: 0,
            message: format!("the file has {len} bytes; a trace has at most {MAX_TRACE_BYTES}"),
        });
    }
    let bytes = std::fs::read(path).map_err(io)?;
    let text = String::from_utf8(bytes).map_err(|e| SimError::Trace {
        file: label.clone(),
        line: 0,
        message: format!("not UTF-8 text ({e})"),
    })?;
    parse(&text, devices).map_err(|(line, message)| SimError::Trace {
        file: label,
        line,
        message,
    })
}

/// Parses trace text; an error is (1-based line, message).
pub fn parse(text: &str, devices: u32) -> Result<Vec<ContactEvent>, (usize, String)> {
    let mut events = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let l = raw.trim();
        if l.is_empty() || l.starts_with('#') {
            continue;
        }
        if events.len() >= MAX_TRACE_EVENTS {
            return Err((line, format!("more than {MAX_TRACE_EVENTS} events")));
        }
        let fields: Vec<&str> = l.split_whitespace().collect();
        let [time, kind, a, b, state] = fields[..] else {
            return Err((
                line,
                format!("expected `TIME CONN A B up|down`, found {:?}", truncate(l)),
            ));
        };
        if kind != "CONN" {
            return Err((
                line,
                format!("only CONN events are supported, found {:?}", truncate(kind)),
            ));
        }
        let secs: f64 = time.parse().map_err(|_| {
            (
                line,
                format!("bad time {:?} (seconds expected)", truncate(time)),
            )
        })?;
        let ms = (secs * 1000.0).round();
        if !ms.is_finite() || ms < 0.0 || ms > MAX_DURATION_MS as f64 {
            return Err((line, format!("time {:?} is out of range", truncate(time))));
        }
        let node = |s: &str| -> Result<u32, (usize, String)> {
            let v: u32 = s
                .parse()
                .map_err(|_| (line, format!("bad device number {:?}", truncate(s))))?;
            if v >= devices {
                return Err((
                    line,
                    format!("device {v} does not exist (the scenario has {devices} devices)"),
                ));
            }
            Ok(v)
        };
        let (a, b) = (node(a)?, node(b)?);
        if a == b {
            return Err((line, format!("device {a} cannot connect to itself")));
        }
        let up = match state {
            "up" => true,
            "down" => false,
            other => {
                return Err((
                    line,
                    format!("expected `up` or `down`, found {:?}", truncate(other)),
                ))
            }
        };
        events.push(ContactEvent {
            at_ms: ms as u64,
            a: a.min(b),
            b: a.max(b),
            up,
        });
    }
    // Stable: equal times keep file order.
    events.sort_by_key(|e| e.at_ms);
    Ok(events)
}

fn truncate(s: &str) -> String {
    s.chars().take(40).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_one_format_in_time_order() {
        let t = "# comment\n10.5 CONN 1 0 up\n\n2 CONN 0 2 up\n20 CONN 0 1 down\n";
        let e = parse(t, 3).unwrap();
        assert_eq!(
            e,
            vec![
                ContactEvent {
                    at_ms: 2_000,
                    a: 0,
                    b: 2,
                    up: true
                },
                ContactEvent {
                    at_ms: 10_500,
                    a: 0,
                    b: 1,
                    up: true
                },
                ContactEvent {
                    at_ms: 20_000,
                    a: 0,
                    b: 1,
                    up: false
                },
            ]
        );
    }

    #[test]
    fn bad_lines_name_their_line() {
        for (text, line, needle) in [
            ("1 CONN 0 1 up\n2 CONN 0 9 up", 2, "device 9 does not exist"),
            ("1 CONN 0 1 sideways", 1, "expected `up` or `down`"),
            ("x CONN 0 1 up", 1, "bad time"),
            ("1 DATA 0 1 up", 1, "only CONN"),
            ("1 CONN 0 0 up", 1, "itself"),
            ("1 CONN 0 1", 1, "expected `TIME CONN A B up|down`"),
            ("-5 CONN 0 1 up", 1, "out of range"),
            ("1 CONN -1 1 up", 1, "bad device number"),
        ] {
            let (l, m) = parse(text, 3).unwrap_err();
            assert_eq!(l, line, "{text}");
            assert!(m.contains(needle), "{text}: {m}");
        }
    }
}
