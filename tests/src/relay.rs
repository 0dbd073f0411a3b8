//! Running the real `instaconnect relay` process, and reading its `/metrics`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;

use crate::{bin, stdout_lines, NODE_TIMEOUT};

/// A running `instaconnect relay`; killed (SIGKILL) when dropped.
pub struct RelayProcess {
    child: Child,
    /// The relay's peer id, as it printed it.
    pub peer_id: String,
    /// Its first listen address, ending in `/p2p/<peer id>`.
    pub addr: String,
    /// `http://127.0.0.1:PORT/metrics`.
    pub metrics_url: String,
    log_path: PathBuf,
    lines: mpsc::Receiver<Option<String>>,
    pub stdout: Vec<String>,
}

impl RelayProcess {
    /// Starts `instaconnect relay --data-dir DIR --no-mdns --listen /ip4/127.0.0.1/tcp/0
    /// --metrics 127.0.0.1:0 EXTRA...`, its stderr going to `log` (appended), and waits (with a
    /// timeout) for `relay ready`.
    pub fn start(data_dir: &Path, log: &Path, extra: &[&str]) -> RelayProcess {
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("open the relay log");
        let mut child = Command::new(bin())
            .arg("relay")
            .arg("--data-dir")
            .arg(data_dir)
            .args([
                "--no-mdns",
                "--listen",
                "/ip4/127.0.0.1/tcp/0",
                "--metrics",
                "127.0.0.1:0",
            ])
            .args(extra)
            .env_remove("INSTACONNECT_HOME")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("spawn instaconnect relay");
        let lines = stdout_lines(&mut child);
        let mut r = RelayProcess {
            child,
            peer_id: String::new(),
            addr: String::new(),
            metrics_url: String::new(),
            log_path: log.to_path_buf(),
            lines,
            stdout: Vec::new(),
        };
        loop {
            match r.lines.recv_timeout(NODE_TIMEOUT) {
                Ok(Some(line)) => {
                    if let Some(id) = line.strip_prefix("peer id: ") {
                        r.peer_id = id.to_string();
                    } else if let Some(a) = line.strip_prefix("listening on ") {
                        if r.addr.is_empty() {
                            r.addr = a.to_string();
                        }
                    } else if let Some(m) = line.strip_prefix("metrics: ") {
                        r.metrics_url = m.to_string();
                    }
                    let ready = line == "relay ready";
                    r.stdout.push(line);
                    if ready {
                        return r;
                    }
                }
                Ok(None) | Err(_) => {
                    let status = r.child.try_wait();
                    panic!(
                        "the relay did not get ready ({status:?})\nstdout: {:?}\nlog: {}",
                        r.stdout,
                        r.log()
                    )
                }
            }
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// SIGKILL, at once.
    pub fn kill9(mut self) {
        self.child.kill().expect("kill the relay");
        self.child.wait().expect("wait for the relay");
    }

    /// SIGTERM, then waits (with a timeout) for the exit; returns whether it exited 0.
    pub fn terminate(mut self) -> bool {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success());
        loop {
            match self.lines.recv_timeout(NODE_TIMEOUT) {
                Ok(Some(line)) => self.stdout.push(line),
                Ok(None) => break,
                Err(_) => panic!("the relay did not exit after SIGTERM\nlog: {}", self.log()),
            }
        }
        self.child.wait().expect("wait").success()
    }

    /// `/metrics` as a map from series (`name` or `name{labels}`) to value.
    pub fn metrics(&self) -> BTreeMap<String, f64> {
        parse_metrics(&self.metrics_text())
    }

    pub fn metrics_text(&self) -> String {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .proxy(None)
            .timeout_global(Some(NODE_TIMEOUT))
            .build()
            .into();
        let mut resp = agent.get(&self.metrics_url).call().expect("GET /metrics");
        resp.body_mut().read_to_string().expect("metrics body")
    }
}

impl Drop for RelayProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Parses Prometheus text (comments skipped).
pub fn parse_metrics(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect()
}
