//! A mosquitto broker for the benchmarks' baselines, shared by `chat.rs` and `relay.rs`
//! (each includes this file with `#[path]`): a `mosquitto` process on a free port of
//! 127.0.0.1 with a temporary config (persistence on, in a temporary directory; no limit on
//! queued messages, so none is dropped), killed on drop. A system broker, if any, is left
//! alone. Note that mosquitto keeps its queue in memory and writes its persistence file only
//! every `autosave_interval` (30 min) and at exit: it does not flush per message.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::Duration;

/// How long the broker may take to start.
pub const BROKER_START_TIMEOUT: Duration = Duration::from_secs(30);

pub struct Broker {
    child: Child,
    pub port: u16,
    _dir: tempfile::TempDir,
}

fn must<T, E: std::fmt::Display>(what: &str, r: Result<T, E>) -> T {
    r.unwrap_or_else(|e| panic!("benchmark failed: {what}: {e}"))
}

impl Broker {
    /// Starts `bin` with at most `inflight` unacknowledged QoS 1 messages per client; `bench`
    /// names the benchmark in the generated config.
    pub fn start(bin: &Path, inflight: u16, bench: &str) -> Broker {
        let dir = must("temp dir", tempfile::tempdir());
        let port = {
            let l = must("free port", std::net::TcpListener::bind("127.0.0.1:0"));
            must("free port", l.local_addr()).port()
        };
        let conf = dir.path().join("mosquitto.conf");
        let config = format!(
            "# {bench} benchmark baseline (written by crates/net/benches/common/mosquitto.rs)\n\
             listener {port} 127.0.0.1\n\
             allow_anonymous true\n\
             persistence true\n\
             persistence_location {}/\n\
             # Never drop queued QoS 1 messages (the default is 1000 per client).\n\
             max_queued_messages 0\n\
             max_inflight_messages {inflight}\n\
             # Started as root, mosquitto would switch to the `mosquitto` user, which cannot\n\
             # write the temporary directory.\n\
             user root\n\
             log_dest stderr\n\
             log_type error\n\
             log_type warning\n\
             log_type notice\n\
             # For its `running` line, the sign that it listens.\n\
             log_type information\n",
            dir.path().display()
        );
        must("write mosquitto.conf", std::fs::write(&conf, config));
        let mut child = must(
            &format!("start {}", bin.display()),
            std::process::Command::new(bin)
                .arg("-c")
                .arg(&conf)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn(),
        );
        let stderr = must("mosquitto stderr", child.stderr.take().ok_or("not piped"));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if line.contains(" running") {
                    let _ = ready_tx.send(());
                } else if (line.contains("Error") || line.contains("Warning"))
                    && !line.contains("should not be run as root")
                {
                    eprintln!("mosquitto: {line}");
                }
            }
        });
        let mut broker = Broker {
            child,
            port,
            _dir: dir,
        };
        if ready_rx.recv_timeout(BROKER_START_TIMEOUT).is_err() {
            let status = broker.child.try_wait();
            panic!("benchmark failed: mosquitto did not start (status {status:?})");
        }
        broker
    }

    /// The broker's pid (for its RSS).
    #[allow(dead_code)]
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
