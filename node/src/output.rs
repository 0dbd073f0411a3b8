//! Printing results: a plain table for people, JSON with `--json`.

use std::fmt::Display;

use serde::Serialize;

/// What a command prints: its standard output and standard error, collected in memory so the
/// same command can run in the CLI process (which prints them) or inside the daemon (which
/// returns them over the control API).
#[derive(Debug, Default)]
pub struct Out {
    pub stdout: String,
    pub stderr: String,
}

impl Out {
    /// One line of standard output.
    pub fn line(&mut self, s: impl Display) {
        use std::fmt::Write as _;
        let _ = writeln!(self.stdout, "{s}");
    }

    /// One line of standard error (notes beside the result, never the result itself).
    pub fn note(&mut self, s: impl Display) {
        use std::fmt::Write as _;
        let _ = writeln!(self.stderr, "{s}");
    }

    /// A value as pretty-printed JSON on standard output.
    pub fn json<T: Serialize + ?Sized>(&mut self, v: &T) -> anyhow::Result<()> {
        let text = serde_json::to_string_pretty(v)?;
        self.line(text);
        Ok(())
    }

    /// Rows as aligned columns under a header.
    pub fn table(&mut self, header: &[&str], rows: &[Vec<String>]) {
        let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
        for r in rows {
            for (i, c) in r.iter().enumerate() {
                if let Some(w) = widths.get_mut(i) {
                    *w = (*w).max(c.chars().count());
                }
            }
        }
        let render = |cells: Vec<&str>| {
            let mut s = String::new();
            for (i, c) in cells.iter().enumerate() {
                if i + 1 == cells.len() {
                    s.push_str(c);
                } else {
                    let pad = widths
                        .get(i)
                        .copied()
                        .unwrap_or(0)
                        .saturating_sub(c.chars().count());
                    s.push_str(c);
                    s.push_str(&" ".repeat(pad + 2));
                }
            }
            s.trim_end().to_string()
        };
        let head = render(header.to_vec());
        self.line(head);
        for r in rows {
            let l = render(r.iter().map(String::as_str).collect());
            self.line(l);
        }
    }

    /// Writes both buffers to this process's standard output and error. A closed pipe (as with
    /// `| head`) is not an error worth reporting.
    pub fn print(&self) {
        use std::io::Write as _;
        let mut o = std::io::stdout().lock();
        let _ = o.write_all(self.stdout.as_bytes());
        let _ = o.flush();
        let mut e = std::io::stderr().lock();
        let _ = e.write_all(self.stderr.as_bytes());
        let _ = e.flush();
    }
}

pub fn time(ms: u64) -> String {
    // UTC, ISO 8601 to the second, without pulling in a date crate.
    let secs = (ms / 1000) as i64;
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (h, m, s) = (rem / 3600, (rem % 3600) / 60, rem % 60);
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let mo = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if mo <= 2 { y + 1 } else { y };
    format!("{y:04}-{mo:02}-{d:02} {h:02}:{m:02}:{s:02}Z")
}

#[cfg(test)]
mod tests {
    #[test]
    fn time_formats_known_instants() {
        assert_eq!(super::time(0), "1970-01-01 00:00:00Z");
        assert_eq!(super::time(1_795_874_400_000), "2026-11-28 14:00:00Z");
        assert_eq!(super::time(951_782_400_000), "2000-02-29 00:00:00Z");
    }
}
