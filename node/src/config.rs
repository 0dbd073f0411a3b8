//! The node's configuration: defaults, overridden by a TOML file (`--config`), overridden by
//! the flags of `instaconnect run`. `configs/device.toml` documents every key.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::Path;

use anyhow::anyhow;
use instaconnect_core::engine::AttachmentLimits;
use instaconnect_crypto::{MAX_ATTACHMENT_BYTES, MAX_RELAYED_ATTACHMENT_BYTES};
use serde::Deserialize;

use crate::cli::RunArgs;
use crate::{usage, Failure};

/// Largest config file read.
const MAX_CONFIG_BYTES: u64 = 1024 * 1024;

/// Everything `instaconnect run` needs to know besides the data dir.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodeConfig {
    pub network: NetworkConfig,
    pub control: ControlConfig,
    pub log: LogConfig,
    pub attachments: AttachmentsConfig,
    pub location: LocationConfig,
}

/// How large attachments may be, sent or received.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AttachmentsConfig {
    /// Largest attachment sent or fetched at all, in bytes (default: 4 GiB, the most the
    /// format describes).
    pub max_direct_bytes: u64,
    /// Largest attachment whose chunks go or are taken through relays while the other device
    /// cannot be reached (default and most: 60 MiB, so that each sealed chunk fits one
    /// envelope). Larger ones wait for a direct connection.
    pub max_relay_bytes: u64,
}

impl Default for AttachmentsConfig {
    fn default() -> Self {
        AttachmentsConfig {
            max_direct_bytes: MAX_ATTACHMENT_BYTES,
            max_relay_bytes: MAX_RELAYED_ATTACHMENT_BYTES,
        }
    }
}

impl AttachmentsConfig {
    /// Checks the limits against what the format allows; the error names the key.
    pub fn check(&self, origin: &str) -> Result<(), Failure> {
        if self.max_direct_bytes > MAX_ATTACHMENT_BYTES {
            return Err(usage(anyhow!(
                "attachments.max_direct_bytes in {origin} must be at most {MAX_ATTACHMENT_BYTES} (4 GiB, the largest attachment there is); got {}",
                self.max_direct_bytes
            )));
        }
        if self.max_relay_bytes > MAX_RELAYED_ATTACHMENT_BYTES {
            return Err(usage(anyhow!(
                "attachments.max_relay_bytes in {origin} must be at most {MAX_RELAYED_ATTACHMENT_BYTES} (60 MiB: larger attachments have chunks too large for one relay envelope and go only directly); got {}",
                self.max_relay_bytes
            )));
        }
        if self.max_relay_bytes > self.max_direct_bytes {
            return Err(usage(anyhow!(
                "attachments.max_relay_bytes in {origin} ({}) must not be larger than attachments.max_direct_bytes ({})",
                self.max_relay_bytes,
                self.max_direct_bytes
            )));
        }
        Ok(())
    }

    /// The engine's limits.
    pub fn limits(&self) -> AttachmentLimits {
        AttachmentLimits {
            direct_max_bytes: self.max_direct_bytes,
            relay_max_bytes: self.max_relay_bytes,
        }
    }
}

/// Live locations.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LocationConfig {
    /// How often a live location sends the device's position, in milliseconds (100 to
    /// 3,600,000).
    pub live_interval_ms: u64,
}

impl Default for LocationConfig {
    fn default() -> Self {
        LocationConfig {
            live_interval_ms: instaconnect_core::engine::DEFAULT_LIVE_INTERVAL_MS,
        }
    }
}

/// Longest live-location interval accepted in the config.
const MAX_LIVE_INTERVAL_MS: u64 = 60 * 60 * 1000;

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NetworkConfig {
    /// Multiaddrs to listen on.
    pub listen: Vec<String>,
    /// Multiaddrs of peers to dial at start.
    pub peers: Vec<String>,
    /// Store-and-forward relays, each a multiaddr ending in `/p2p/<relay peer id>` (relays
    /// seen over mDNS are used too).
    pub relays: Vec<String>,
    /// Advertise and browse on the local network with mDNS.
    pub mdns: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ControlConfig {
    /// Port of the control API on 127.0.0.1; 0 picks a free one.
    pub port: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    pub format: LogFormat,
    /// A `tracing` filter such as `info` or `info,instaconnect=debug`; `RUST_LOG` overrides it.
    pub level: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines
    #[default]
    Text,
    /// One JSON object per line
    Json,
}

impl Default for NetworkConfig {
    fn default() -> Self {
        NetworkConfig {
            listen: vec![
                "/ip4/0.0.0.0/tcp/0".to_string(),
                "/ip4/0.0.0.0/udp/0/quic-v1".to_string(),
            ],
            peers: Vec::new(),
            relays: Vec::new(),
            mdns: true,
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Text,
            level: "info".to_string(),
        }
    }
}

impl NodeConfig {
    /// Parses a config file's text. Unknown keys are an error that names them.
    pub fn from_toml(text: &str) -> Result<NodeConfig, String> {
        toml::from_str(text).map_err(|e| e.to_string().trim_end().to_string())
    }

    /// Defaults, then the config file if one is given, then the flags. Every multiaddr is
    /// checked; a bad value is a usage error (exit 2) naming where it came from.
    pub fn build(args: &RunArgs) -> Result<NodeConfig, Failure> {
        let mut config = match &args.config {
            None => NodeConfig::default(),
            Some(path) => {
                let text = read_config(path)?;
                let c = NodeConfig::from_toml(&text)
                    .map_err(|e| usage(anyhow!("invalid config file {}:\n{e}", path.display())))?;
                let origin = |key: &str| format!("{key} in {}", path.display());
                check_all(&c.network.listen, &origin("network.listen"))?;
                check_all(&c.network.peers, &origin("network.peers"))?;
                check_relays(&c.network.relays, &origin("network.relays"))?;
                c.attachments.check(&path.display().to_string())?;
                let interval = c.location.live_interval_ms;
                let min = instaconnect_core::engine::MIN_LIVE_INTERVAL_MS;
                if !(min..=MAX_LIVE_INTERVAL_MS).contains(&interval) {
                    return Err(usage(anyhow!(
                        "invalid location.live_interval_ms in {}: {interval} (expected {min} to {MAX_LIVE_INTERVAL_MS} milliseconds)",
                        path.display()
                    )));
                }
                c
            }
        };
        if !args.listen.is_empty() {
            check_all(&args.listen, "--listen")?;
            config.network.listen = args.listen.clone();
        }
        if !args.peer.is_empty() {
            check_all(&args.peer, "--peer")?;
            config.network.peers = args.peer.clone();
        }
        if !args.relay.is_empty() {
            check_relays(&args.relay, "--relay")?;
            config.network.relays = args.relay.clone();
        }
        if args.no_mdns {
            config.network.mdns = false;
        }
        if let Some(port) = args.control_port {
            config.control.port = port;
        }
        if let Some(format) = args.log_format {
            config.log.format = format;
        }
        Ok(config)
    }
}

pub(crate) fn read_config(path: &Path) -> Result<String, Failure> {
    let too_big = |len: u64| {
        usage(anyhow!(
            "config file {} is too large: {len} bytes (at most {MAX_CONFIG_BYTES})",
            path.display()
        ))
    };
    let meta = std::fs::metadata(path)
        .map_err(|e| usage(anyhow!("cannot read config file {}: {e}", path.display())))?;
    if meta.len() > MAX_CONFIG_BYTES {
        return Err(too_big(meta.len()));
    }
    let bytes = std::fs::read(path)
        .map_err(|e| usage(anyhow!("cannot read config file {}: {e}", path.display())))?;
    String::from_utf8(bytes)
        .map_err(|_| usage(anyhow!("config file {} is not UTF-8 text", path.display())))
}

pub(crate) fn check_all(addrs: &[String], origin: &str) -> Result<(), Failure> {
    for a in addrs {
        check_multiaddr(a).map_err(|why| {
            usage(anyhow!(
                "invalid multiaddr {a:?} ({origin}): {why}; expected something like /ip4/0.0.0.0/tcp/0 or /ip4/192.168.1.7/udp/4001/quic-v1"
            ))
        })?;
    }
    Ok(())
}

/// Checks relay addresses: multiaddrs that end in `/p2p/<the relay's peer id>`.
pub(crate) fn check_relays(addrs: &[String], origin: &str) -> Result<(), Failure> {
    check_all(addrs, origin)?;
    for a in addrs {
        instaconnect_net::parse_relay_addr(a).map_err(|_| {
            usage(anyhow!(
                "invalid relay address {a:?} ({origin}): it must end in /p2p/<the relay's peer id>, e.g. /ip4/192.168.1.7/tcp/4001/p2p/12D3KooW... (the relay prints its address when it starts)"
            ))
        })?;
    }
    Ok(())
}

/// Checks the syntax of a multiaddr (`/ip4/1.2.3.4/tcp/4001/p2p/12D3KooW...`) for the
/// protocols a node uses. Whether it can be listened on or dialed is for the network layer to
/// say. (Once `node` links `crates/net`, libp2p's own parser can take over.)
pub fn check_multiaddr(s: &str) -> Result<(), String> {
    let rest = s
        .strip_prefix('/')
        .ok_or_else(|| "a multiaddr starts with /".to_string())?;
    let mut parts = rest.split('/');
    while let Some(proto) = parts.next() {
        let mut value = |what: &str| {
            parts
                .next()
                .filter(|v| !v.is_empty())
                .ok_or_else(|| format!("/{proto} needs {what}"))
        };
        match proto {
            "ip4" => {
                let v = value("an IPv4 address")?;
                v.parse::<Ipv4Addr>()
                    .map_err(|_| format!("{v:?} is not an IPv4 address"))?;
            }
            "ip6" => {
                let v = value("an IPv6 address")?;
                v.parse::<Ipv6Addr>()
                    .map_err(|_| format!("{v:?} is not an IPv6 address"))?;
            }
            "dns" | "dns4" | "dns6" | "dnsaddr" => {
                let v = value("a host name")?;
                if v.len() > 253
                    || !v
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "-.".contains(c))
                {
                    return Err(format!("{v:?} is not a host name"));
                }
            }
            "tcp" | "udp" => {
                let v = value("a port")?;
                v.parse::<u16>()
                    .map_err(|_| format!("{v:?} is not a port (0 to 65535)"))?;
            }
            "p2p" | "ipfs" => {
                let v = value("a peer id")?;
                match bs58::decode(v).into_vec() {
                    Ok(bytes) if bytes.len() >= 2 && bytes.len() <= 128 => {}
                    _ => return Err(format!("{v:?} is not a peer id")),
                }
            }
            "quic" | "quic-v1" | "tls" | "noise" | "ws" | "wss" | "webtransport"
            | "p2p-circuit" | "webrtc-direct" => {}
            "" => return Err("empty protocol name (a doubled or trailing /)".to_string()),
            other => return Err(format!("unknown protocol {other:?}")),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multiaddrs_a_node_uses_are_accepted() {
        for a in [
            "/ip4/0.0.0.0/tcp/0",
            "/ip4/127.0.0.1/udp/4001/quic-v1",
            "/ip6/::1/tcp/4001",
            "/dns4/relay.example.org/tcp/443/wss",
            "/ip4/192.168.1.7/tcp/4001/p2p/12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN",
        ] {
            assert_eq!(check_multiaddr(a), Ok(()), "{a}");
        }
    }

    #[test]
    fn bad_multiaddrs_say_what_is_wrong() {
        for (a, why) in [
            ("", "starts with /"),
            ("localhost:4001", "starts with /"),
            ("/", "empty protocol"),
            ("/ip4/1.2.3.4/tcp/80/", "empty protocol"),
            ("/ip4/300.1.1.1/tcp/1", "not an IPv4 address"),
            ("/ip4/1.2.3.4/tcp/70000", "not a port"),
            ("/ip4/1.2.3.4/tcp", "needs a port"),
            ("/ip4/1.2.3.4/sctp/1", "unknown protocol \"sctp\""),
            ("/ip4/1.2.3.4/tcp/1/p2p/0OIl", "not a peer id"),
        ] {
            let e = check_multiaddr(a).unwrap_err();
            assert!(e.contains(why), "{a}: {e}");
        }
    }

    #[test]
    fn config_layers_defaults_file_and_flags() {
        let c = NodeConfig::from_toml("").unwrap();
        assert_eq!(c, NodeConfig::default());
        let c = NodeConfig::from_toml("[network]\nmdns = false\n[control]\nport = 7070\n").unwrap();
        assert!(!c.network.mdns);
        assert_eq!(c.control.port, 7070);
        assert_eq!(c.network.listen, NetworkConfig::default().listen);
        let e = NodeConfig::from_toml("[network]\nmdsn = false\n").unwrap_err();
        assert!(e.contains("unknown field `mdsn`"), "{e}");
        let e = NodeConfig::from_toml("colour = 1\n").unwrap_err();
        assert!(e.contains("unknown field `colour`"), "{e}");
        let e = NodeConfig::from_toml("[log]\nformat = \"xml\"\n").unwrap_err();
        assert!(e.contains("xml"), "{e}");
    }

    fn run_args(args: &[&str]) -> RunArgs {
        use clap::Parser;
        let mut argv = vec!["instaconnect", "run"];
        argv.extend_from_slice(args);
        match crate::cli::Cli::try_parse_from(argv).expect("parses").cmd {
            crate::cli::Cmd::Run(a) => a,
            other => panic!("not run: {other:?}"),
        }
    }

    fn error_of(r: Result<NodeConfig, Failure>) -> (bool, String) {
        match r {
            Ok(c) => panic!("accepted: {c:?}"),
            Err(Failure::Usage(e)) => (true, format!("{e:#}")),
            Err(Failure::Failed(e)) => (false, format!("{e:#}")),
        }
    }

    const RELAY: &str =
        "/ip4/127.0.0.1/tcp/4001/p2p/12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN";

    #[test]
    fn relays_come_from_the_flag_which_replaces_the_config() {
        assert!(NodeConfig::default().network.relays.is_empty());
        let c = NodeConfig::build(&run_args(&["--relay", RELAY, "--relay", RELAY])).unwrap();
        assert_eq!(c.network.relays, vec![RELAY, RELAY]);

        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("device.toml");
        let other = RELAY.replace("4001", "4002");
        std::fs::write(&file, format!("[network]\nrelays = [{RELAY:?}]\n")).unwrap();
        let path = file.to_str().unwrap();
        let c = NodeConfig::build(&run_args(&["--config", path])).unwrap();
        assert_eq!(c.network.relays, vec![RELAY]);
        let c = NodeConfig::build(&run_args(&["--config", path, "--relay", &other])).unwrap();
        assert_eq!(c.network.relays, vec![other]);
    }

    #[test]
    fn a_relay_without_its_peer_id_or_a_bad_multiaddr_is_a_clear_usage_error() {
        let (usage, e) = error_of(NodeConfig::build(&run_args(&[
            "--relay",
            "/ip4/127.0.0.1/tcp/4001",
        ])));
        assert!(usage, "{e}");
        assert!(
            e.contains("--relay") && e.contains("must end in /p2p/"),
            "{e}"
        );
        let (usage, e) = error_of(NodeConfig::build(&run_args(&[
            "--relay",
            "relay.example:4001",
        ])));
        assert!(usage, "{e}");
        assert!(e.contains("--relay") && e.contains("starts with /"), "{e}");

        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("device.toml");
        std::fs::write(
            &file,
            "[network]\nrelays = [\"/ip4/10.0.0.1/udp/1/quic-v1\"]\n",
        )
        .unwrap();
        let (usage, e) = error_of(NodeConfig::build(&run_args(&[
            "--config",
            file.to_str().unwrap(),
        ])));
        assert!(usage, "{e}");
        assert!(
            e.contains("network.relays in") && e.contains("must end in /p2p/"),
            "{e}"
        );
        std::fs::write(&file, "[network]\nrelays = \"/ip4/10.0.0.1/tcp/1\"\n").unwrap();
        let (usage, e) = error_of(NodeConfig::build(&run_args(&[
            "--config",
            file.to_str().unwrap(),
        ])));
        assert!(usage && e.contains("relays"), "{e}");
    }

    #[test]
    fn the_shipped_device_toml_is_the_default() {
        let text = include_str!("../../configs/device.toml");
        let uncommented: String = text
            .lines()
            .map(|l| {
                l.strip_prefix("# ")
                    .filter(|r| r.contains(" = "))
                    .unwrap_or(l)
            })
            .map(|l| format!("{l}\n"))
            .collect();
        assert_eq!(NodeConfig::from_toml(text).unwrap(), NodeConfig::default());
        assert_eq!(
            NodeConfig::from_toml(&uncommented).unwrap(),
            NodeConfig::default(),
            "every key documented in configs/device.toml, uncommented, gives the defaults"
        );
    }

    #[test]
    fn attachment_limits_default_to_4_gib_directly_and_60_mib_through_relays() {
        let c = NodeConfig::default().attachments;
        assert_eq!(c.max_direct_bytes, 4 * 1024 * 1024 * 1024);
        assert_eq!(c.max_relay_bytes, 60 * 1024 * 1024);
        let c = NodeConfig::from_toml(
            "[attachments]\nmax_direct_bytes = 1000000\nmax_relay_bytes = 500000\n",
        )
        .unwrap()
        .attachments;
        assert!(c.check("f").is_ok());
        assert_eq!(c.limits().relay_max_bytes, 500_000);
        let text = |f: Failure| match f {
            Failure::Usage(e) => format!("{e:#}"),
            Failure::Failed(e) => panic!("not a usage error: {e:#}"),
        };
        let over = AttachmentsConfig {
            max_relay_bytes: 61 * 1024 * 1024,
            ..AttachmentsConfig::default()
        };
        assert!(text(over.check("f").unwrap_err()).contains("attachments.max_relay_bytes"));
        let inverted = AttachmentsConfig {
            max_direct_bytes: 10,
            max_relay_bytes: 20,
        };
        assert!(text(inverted.check("f").unwrap_err()).contains("must not be larger"));
        let huge = AttachmentsConfig {
            max_direct_bytes: u64::MAX,
            ..AttachmentsConfig::default()
        };
        assert!(text(huge.check("f").unwrap_err()).contains("attachments.max_direct_bytes"));
    }
}
