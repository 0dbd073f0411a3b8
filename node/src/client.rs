//! The CLI side of the control API. sled lets one process open a database, so while a node
//! runs (`<home>/control.json` exists and the node answers) every command is sent to it and
//! its output printed here. A control file left by a killed node is removed; a node that holds
//! the database but does not answer is reported.

use std::path::Path;
use std::time::Duration;

use anyhow::anyhow;
use instaconnect_store::{SledStore, StoreError};
use serde_json::Value;

use crate::cli::Reply;
use crate::control_file::{self, ControlInfo};
use crate::home::Home;
use crate::{usage, Failure};

/// How long the node has to answer the health check (it answers at once when it runs).
const HEALTH_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a command may take in the node (an import of the largest address book is seconds).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(600);
/// Largest reply read (an export with a full address book and a picture is tens of MiB).
const MAX_REPLY_BYTES: u64 = 512 * 1024 * 1024;

/// A node that answered its health check.
pub struct NodeClient {
    info: ControlInfo,
    agent: ureq::Agent,
}

impl NodeClient {
    fn new(info: ControlInfo) -> NodeClient {
        let agent = ureq::Agent::config_builder()
            // Never through a proxy from the environment: the token goes to 127.0.0.1 only.
            .proxy(None)
            .http_status_as_error(false)
            .timeout_connect(Some(HEALTH_TIMEOUT))
            .build()
            .into();
        NodeClient { info, agent }
    }

    fn bearer(&self) -> String {
        format!("Bearer {}", self.info.token)
    }

    /// Checks that our node answers, with our token.
    fn health(&self) -> Result<(), String> {
        let mut resp = self
            .agent
            .get(format!("{}/v1/health", self.info.url()))
            .header("Authorization", self.bearer())
            .config()
            .timeout_global(Some(HEALTH_TIMEOUT))
            .build()
            .call()
            .map_err(|e| match e {
                ureq::Error::Timeout(_) => {
                    format!("no answer within {}s", HEALTH_TIMEOUT.as_secs())
                }
                e => e.to_string(),
            })?;
        match resp.status().as_u16() {
            200 => {}
            401 => return Err("it refused the token in control.json".to_string()),
            s => return Err(format!("it answered HTTP {s}")),
        }
        let text = resp
            .body_mut()
            .read_to_string()
            .map_err(|e| format!("its answer is unreadable: {e}"))?;
        let v: Value =
            serde_json::from_str(&text).map_err(|_| "its answer is not ours".to_string())?;
        if v.get("peer_id").and_then(Value::as_str).is_none() {
            return Err("its answer is not ours".to_string());
        }
        Ok(())
    }

    /// Opens the node's live event stream (`GET /v1/events`, Server-Sent Events): the body,
    /// to be read line by line; it never ends while the node runs.
    pub fn event_stream(&self) -> Result<impl std::io::Read + Send + 'static, Failure> {
        let resp = self
            .agent
            .get(format!("{}/v1/events", self.info.url()))
            .header("Authorization", self.bearer())
            .call()
            .map_err(|e| {
                Failure::Failed(anyhow!(
                    "cannot follow the node's events (pid {}): {e}",
                    self.info.pid
                ))
            })?;
        if resp.status().as_u16() != 200 {
            return Err(Failure::Failed(anyhow!(
                "the node (pid {}) refused its event stream: HTTP {}",
                self.info.pid,
                resp.status().as_u16()
            )));
        }
        Ok(resp.into_body().into_reader())
    }

    /// Runs a command line (without the program name) in the node.
    pub fn command(&self, args: &[String], cwd: Option<&Path>) -> Result<Reply, Failure> {
        let url = self.info.url();
        let body = serde_json::json!({ "args": args, "cwd": cwd });
        let failed = |e: String| {
            Failure::Failed(anyhow!(
                "the node (pid {}) did not complete the command at {url}: {e}",
                self.info.pid
            ))
        };
        let mut resp = self
            .agent
            .post(format!("{url}/v1/command"))
            .header("Authorization", self.bearer())
            .header("Content-Type", "application/json")
            .config()
            .timeout_global(Some(COMMAND_TIMEOUT))
            .build()
            .send(body.to_string())
            .map_err(|e| failed(e.to_string()))?;
        let status = resp.status().as_u16();
        let text = resp
            .body_mut()
            .with_config()
            .limit(MAX_REPLY_BYTES)
            .read_to_string()
            .map_err(|e| failed(e.to_string()))?;
        if status != 200 {
            let why = serde_json::from_str::<Value>(&text)
                .ok()
                .and_then(|v| v.get("error").and_then(Value::as_str).map(str::to_string))
                .unwrap_or_else(|| format!("HTTP {status}"));
            return Err(Failure::Failed(anyhow!(
                "the node (pid {}) refused the command: {why}",
                self.info.pid
            )));
        }
        serde_json::from_str(&text).map_err(|e| failed(format!("unreadable reply: {e}")))
    }
}

/// The running node for this home, if any. A control file that nothing answers is removed,
/// unless a process still holds the database: then that is the error.
pub fn running_node(home: &Home) -> Result<Option<NodeClient>, Failure> {
    let path = home.control_path();
    let (info, why) = match control_file::read(&path) {
        Ok(None) => return Ok(None),
        Ok(Some(info)) => {
            let node = NodeClient::new(info);
            match node.health() {
                Ok(()) => return Ok(Some(node)),
                Err(why) => (Some(node.info), why),
            }
        }
        Err(e) => (None, format!("{e:#}")),
    };
    // Nothing (of ours) answers. If we can open the database, no node runs: the file is stale.
    // It is removed while we hold the database, so a node starting now cannot lose its file.
    let probe = if home.db_path().exists() {
        match SledStore::open(&home.db_path()) {
            Ok(store) => Some(store),
            Err(StoreError::Locked { .. }) => {
                return Err(Failure::Failed(match info {
                    Some(info) => anyhow!(
                        "a node is running for {} (pid {}) but its control API at {} does not answer ({why}); wait for it or stop it, then try again",
                        home.dir.display(),
                        info.pid,
                        info.url()
                    ),
                    None => anyhow!(
                        "the database in {} is in use by another process and {why}",
                        home.dir.display()
                    ),
                }))
            }
            // Another problem with the database: the command itself reports it.
            Err(_) => None,
        }
    } else {
        None
    };
    if let Err(e) = std::fs::remove_file(&path) {
        if e.kind() != std::io::ErrorKind::NotFound {
            return Err(Failure::Failed(anyhow!(
                "cannot remove the stale {}: {e}",
                path.display()
            )));
        }
    }
    drop(probe);
    Ok(None)
}

/// Sends this process's command line to the running node, if there is one.
pub fn forward_if_running(home: &Home) -> Result<Option<Reply>, Failure> {
    let Some(node) = running_node(home)? else {
        return Ok(None);
    };
    let args = forwarded_args(std::env::args_os().skip(1))?;
    // Relative file paths are taken from here, as if the command ran in this process.
    let cwd = std::env::current_dir().ok();
    node.command(&args, cwd.as_deref()).map(Some)
}

/// The phone number of the running node's account, if a node runs.
pub fn running_node_account(home: &Home) -> Result<Option<String>, Failure> {
    let Some(node) = running_node(home)? else {
        return Ok(None);
    };
    let args = ["account", "show", "--json"].map(String::from);
    let reply = node.command(&args, None)?;
    if reply.code != 0 {
        let why = reply.stderr.trim();
        let why = why.strip_prefix("error: ").unwrap_or(why);
        return Err(Failure::Failed(anyhow!("{why}")));
    }
    let v: Value = serde_json::from_str(&reply.stdout)
        .map_err(|e| Failure::Failed(anyhow!("unreadable account from the node: {e}")))?;
    Ok(v.get("phone").and_then(Value::as_str).map(str::to_string))
}

/// The command line as the node gets it: `--home` (the node serves its own) is left out.
pub(crate) fn forwarded_args(
    args: impl Iterator<Item = std::ffi::OsString>,
) -> Result<Vec<String>, Failure> {
    let mut out = Vec::new();
    let mut args = args.peekable();
    let mut after_dashes = false;
    while let Some(a) = args.next() {
        let a = a.into_string().map_err(|a| {
            usage(anyhow!(
                "argument {} is not UTF-8, which the running node cannot take",
                Path::new(&a).display()
            ))
        })?;
        if !after_dashes {
            if a == "--" {
                after_dashes = true;
            } else if a == "--home" {
                args.next();
                continue;
            } else if a.starts_with("--home=") {
                continue;
            }
        }
        out.push(a);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::ffi::OsString;

    fn fwd(a: &[&str]) -> Vec<String> {
        super::forwarded_args(a.iter().map(OsString::from)).unwrap()
    }

    #[test]
    fn home_is_left_out_of_forwarded_arguments() {
        assert_eq!(
            fwd(&["--home", "/h", "contacts", "list", "--json"]),
            ["contacts", "list", "--json"]
        );
        assert_eq!(
            fwd(&["contacts", "--home=/h", "list"]),
            ["contacts", "list"]
        );
        assert_eq!(
            fwd(&["contacts", "add", "--name=--home", "--", "--home"]),
            ["contacts", "add", "--name=--home", "--", "--home"]
        );
    }
}
