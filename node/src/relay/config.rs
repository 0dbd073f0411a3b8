//! The relay's configuration: defaults, overridden by a TOML file (`--config`), overridden by
//! the flags of `instaconnect relay`. `configs/relay.toml` documents every key with its
//! default; a test below proves that file parses to exactly [`RelayFileConfig::default`].

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::anyhow;
use instaconnect_core::relay::RelayConfig;
use instaconnect_wire::mailbox::MAX_ENVELOPE_BYTES;
use serde::Deserialize;

use crate::cli::RelayArgs;
use crate::config::{check_all, read_config, LogConfig};
use crate::{usage, Failure};

/// The default address of `/metrics` (Prometheus' usual port range for exporters).
pub const DEFAULT_METRICS_ADDR: &str = "127.0.0.1:9464";

/// Everything `instaconnect relay` needs.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RelayFileConfig {
    /// Where envelopes and the relay's identity key live (`--data-dir` overrides it).
    pub data_dir: Option<PathBuf>,
    pub network: RelayNetwork,
    pub metrics: MetricsConfig,
    pub log: LogConfig,
    /// The mailbox limits, per connection rate limit included (`core::relay::RelayConfig`).
    pub limits: RelayConfig,
    /// The rate limit shared by every connection from one IP address.
    pub per_ip: PerIpLimits,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RelayNetwork {
    /// Multiaddrs to listen on.
    pub listen: Vec<String>,
    /// Advertise the relay (role `relay`) on the local network with mDNS.
    pub mdns: bool,
}

impl Default for RelayNetwork {
    fn default() -> Self {
        RelayNetwork {
            listen: vec![
                "/ip4/0.0.0.0/tcp/4001".to_string(),
                "/ip4/0.0.0.0/udp/4001/quic-v1".to_string(),
            ],
            mdns: true,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// Serve Prometheus text on `http://<listen>/metrics`.
    pub enabled: bool,
    /// A loopback `IP:PORT` (port 0 picks a free one).
    pub listen: String,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            enabled: true,
            listen: DEFAULT_METRICS_ADDR.to_string(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PerIpLimits {
    /// Requests all connections from one IP may make in a burst...
    pub rate_burst: u32,
    /// ...and per second after it.
    pub rate_per_second: u32,
}

impl Default for PerIpLimits {
    fn default() -> Self {
        PerIpLimits {
            rate_burst: 10_000,
            rate_per_second: 5_000,
        }
    }
}

impl RelayFileConfig {
    /// Parses a config file's text and checks its values; errors name the key.
    pub fn from_toml(text: &str) -> Result<RelayFileConfig, String> {
        let c: RelayFileConfig =
            toml::from_str(text).map_err(|e| e.to_string().trim_end().to_string())?;
        c.check()?;
        Ok(c)
    }

    /// Values serde cannot refuse by type: each error names its key.
    pub fn check(&self) -> Result<(), String> {
        let l = &self.limits;
        let at_least = |key: &str, v: u64, min: u64| {
            if v < min {
                Err(format!("{key} must be at least {min} (got {v})"))
            } else {
                Ok(())
            }
        };
        at_least("limits.ttl_ms", l.ttl_ms, 1)?;
        at_least("limits.mailbox_max_envelopes", l.mailbox_max_envelopes, 1)?;
        at_least("limits.max_envelope_bytes", l.max_envelope_bytes as u64, 1)?;
        if l.max_envelope_bytes > MAX_ENVELOPE_BYTES {
            return Err(format!(
                "limits.max_envelope_bytes must be at most {MAX_ENVELOPE_BYTES}, the protocol's largest envelope (got {})",
                l.max_envelope_bytes
            ));
        }
        at_least(
            "limits.mailbox_max_bytes",
            l.mailbox_max_bytes,
            l.max_envelope_bytes as u64,
        )
        .map_err(|e| {
            format!("{e}: a mailbox must hold one envelope of limits.max_envelope_bytes")
        })?;
        at_least(
            "limits.total_max_bytes",
            l.total_max_bytes,
            l.max_envelope_bytes as u64,
        )?;
        at_least("limits.max_mailboxes", l.max_mailboxes, 1)?;
        at_least("limits.rate_burst", l.rate_burst.into(), 1)?;
        at_least("limits.rate_per_second", l.rate_per_second.into(), 1)?;
        at_least("per_ip.rate_burst", self.per_ip.rate_burst.into(), 1)?;
        at_least(
            "per_ip.rate_per_second",
            self.per_ip.rate_per_second.into(),
            1,
        )?;
        if self.metrics.enabled {
            metrics_addr(&self.metrics.listen).map_err(|e| format!("metrics.listen: {e}"))?;
        }
        Ok(())
    }

    /// Defaults, then the config file if one is given, then the flags.
    pub fn build(args: &RelayArgs) -> Result<RelayFileConfig, Failure> {
        let mut config = match &args.config {
            None => RelayFileConfig::default(),
            Some(path) => {
                let text = read_config(path)?;
                let c = RelayFileConfig::from_toml(&text)
                    .map_err(|e| usage(anyhow!("invalid config file {}:\n{e}", path.display())))?;
                check_all(
                    &c.network.listen,
                    &format!("network.listen in {}", path.display()),
                )?;
                c
            }
        };
        if !args.listen.is_empty() {
            check_all(&args.listen, "--listen")?;
            config.network.listen = args.listen.clone();
        }
        if config.network.listen.is_empty() {
            return Err(usage(anyhow!(
                "network.listen is empty: a relay needs at least one address to listen on"
            )));
        }
        if let Some(dir) = &args.data_dir {
            config.data_dir = Some(dir.clone());
        }
        if args.no_mdns {
            config.network.mdns = false;
        }
        if let Some(m) = &args.metrics {
            metrics_addr(m).map_err(|e| usage(anyhow!("--metrics: {e}")))?;
            config.metrics.enabled = true;
            config.metrics.listen = m.clone();
        }
        if let Some(format) = args.log_format {
            config.log.format = format;
        }
        Ok(config)
    }

    /// The data dir: the configured one, else `<platform data dir>/instaconnect-relay`.
    pub fn data_dir(&self) -> Result<PathBuf, Failure> {
        match &self.data_dir {
            Some(d) if !d.as_os_str().is_empty() => Ok(d.clone()),
            _ => dirs::data_dir()
                .map(|d| d.join("instaconnect-relay"))
                .ok_or_else(|| {
                    usage(anyhow!(
                        "cannot find a data directory for this platform; pass --data-dir DIR"
                    ))
                }),
        }
    }
}

/// Parses the metrics address; only loopback addresses are accepted (the endpoint has no
/// authentication, and what it shows is for the relay's operator).
pub fn metrics_addr(s: &str) -> Result<SocketAddr, String> {
    let addr: SocketAddr = s
        .parse()
        .map_err(|_| format!("{s:?} is not an IP:PORT address such as {DEFAULT_METRICS_ADDR}"))?;
    if !addr.ip().is_loopback() {
        return Err(format!(
            "{s:?} is not a loopback address: /metrics is served on 127.0.0.1 or [::1] only (put a reverse proxy in front to expose it)"
        ));
    }
    Ok(addr)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_relay_toml_is_the_default() {
        let text = include_str!("../../../configs/relay.toml");
        // Every documented key, uncommented, gives the defaults too.
        let uncommented: String = text
            .lines()
            .map(|l| {
                l.strip_prefix("# ")
                    .filter(|r| r.contains(" = ") && !r.starts_with("data_dir"))
                    .unwrap_or(l)
            })
            .map(|l| format!("{l}\n"))
            .collect();
        assert_eq!(
            RelayFileConfig::from_toml(text).unwrap(),
            RelayFileConfig::default()
        );
        let parsed = RelayFileConfig::from_toml(&uncommented).unwrap();
        assert_eq!(
            parsed,
            RelayFileConfig::default(),
            "every key documented in configs/relay.toml, uncommented, gives the defaults"
        );
        // The documented defaults are the issue's.
        assert_eq!(parsed.limits.ttl_ms, 14 * 24 * 3600 * 1000);
        for key in [
            "ttl_ms",
            "mailbox_max_envelopes",
            "mailbox_max_bytes",
            "total_max_bytes",
            "max_mailboxes",
            "max_envelope_bytes",
            "rate_burst",
            "rate_per_second",
            "max_clock_skew_ms",
            "[per_ip]",
            "[metrics]",
            "listen",
            "mdns",
            "data_dir",
        ] {
            assert!(text.contains(key), "configs/relay.toml documents {key}");
        }
    }

    #[test]
    fn unknown_keys_and_bad_values_name_the_key() {
        let e = RelayFileConfig::from_toml("[limits]\nttl = 5\n").unwrap_err();
        assert!(e.contains("unknown field `ttl`"), "{e}");
        let e = RelayFileConfig::from_toml("colour = 1\n").unwrap_err();
        assert!(e.contains("unknown field `colour`"), "{e}");
        let e = RelayFileConfig::from_toml("[limits]\nttl_ms = \"two weeks\"\n").unwrap_err();
        assert!(e.contains("ttl_ms") && e.contains("invalid type"), "{e}");
        let e = RelayFileConfig::from_toml("[limits]\nttl_ms = 0\n").unwrap_err();
        assert!(e.contains("limits.ttl_ms must be at least 1"), "{e}");
        let e = RelayFileConfig::from_toml("[limits]\nmax_envelope_bytes = 70000\n").unwrap_err();
        assert!(e.contains("limits.max_envelope_bytes"), "{e}");
        let e = RelayFileConfig::from_toml("[per_ip]\nrate_per_second = 0\n").unwrap_err();
        assert!(e.contains("per_ip.rate_per_second"), "{e}");
        let e = RelayFileConfig::from_toml("[metrics]\nlisten = \"0.0.0.0:9464\"\n").unwrap_err();
        assert!(
            e.contains("metrics.listen") && e.contains("not a loopback"),
            "{e}"
        );
        let e = RelayFileConfig::from_toml("[metrics]\nlisten = \"localhost\"\n").unwrap_err();
        assert!(e.contains("metrics.listen"), "{e}");
        // Off, the address is not checked.
        let c = RelayFileConfig::from_toml("[metrics]\nenabled = false\nlisten = \"x\"\n").unwrap();
        assert!(!c.metrics.enabled);
        let c = RelayFileConfig::from_toml("[limits]\nttl_ms = 2000\n").unwrap();
        assert_eq!(c.limits.ttl_ms, 2000);
        assert_eq!(c.limits.rate_burst, RelayConfig::default().rate_burst);
    }

    #[test]
    fn metrics_only_on_loopback() {
        assert!(metrics_addr("127.0.0.1:0").is_ok());
        assert!(metrics_addr("[::1]:9464").is_ok());
        assert!(metrics_addr("192.168.1.2:9464")
            .unwrap_err()
            .contains("loopback"));
    }
}
