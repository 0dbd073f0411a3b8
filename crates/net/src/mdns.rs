//! mDNS advertisement and browsing through `mdns-sd` (see the crate docs, "Discovery").

use std::collections::HashMap;
use std::net::IpAddr;
use std::str::FromStr;
use std::time::Duration;

use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId};
use mdns_sd::{ResolvedService, ServiceDaemon, ServiceEvent, ServiceInfo};
use tracing::{debug, info, warn};

use crate::{
    NetError, Role, MAX_ADDRS_PER_SERVICE, MAX_DISCOVERED_SERVICES, MDNS_SERVICE_TYPE,
    SHUTDOWN_GRACE,
};

/// Pause before re-subscribing when the daemon ended our browse subscription.
const REBROWSE_BACKOFF: Duration = Duration::from_secs(1);

/// TXT keys; nothing else is ever published.
const TXT_VERSION: &str = "v";
const TXT_PEER: &str = "peer";
const TXT_ROLE: &str = "role";

#[derive(Debug)]
pub(crate) enum MdnsEvent {
    Discovered {
        peer: PeerId,
        role: Role,
        version: u16,
        addrs: Vec<Multiaddr>,
    },
    Lost {
        peer: PeerId,
    },
}

pub(crate) struct Mdns {
    daemon: ServiceDaemon,
    /// Full name of our registered service, if we advertise.
    registered: Option<String>,
    browse: mdns_sd::Receiver<ServiceEvent>,
    local_peer: PeerId,
    /// Lower-cased service full name → peer, for `Lost`. Bounded by [`MAX_DISCOVERED_SERVICES`].
    services: HashMap<String, PeerId>,
}

fn mdns_err(e: mdns_sd::Error) -> NetError {
    NetError::Mdns(e.to_string())
}

/// The TXT record we publish: exactly `v`, `peer` and `role`.
pub(crate) fn txt_record(local_peer: &PeerId, role: Role, version: u16) -> Vec<(String, String)> {
    vec![
        (TXT_VERSION.to_string(), version.to_string()),
        (TXT_PEER.to_string(), local_peer.to_base58()),
        (TXT_ROLE.to_string(), role.as_str().to_string()),
    ]
}

impl Mdns {
    /// Starts the daemon, advertises on `tcp_port` (if any) and browses for other nodes.
    pub(crate) fn start(
        local_peer: PeerId,
        role: Role,
        version: u16,
        tcp_port: Option<u16>,
    ) -> Result<Mdns, NetError> {
        let daemon = ServiceDaemon::new().map_err(mdns_err)?;
        let registered = match tcp_port {
            Some(port) => {
                let instance = local_peer.to_base58();
                // The host name only names the address records; the PeerId is public already.
                let host = format!("{}.local.", instance.to_lowercase());
                let txt = txt_record(&local_peer, role, version);
                let mut service =
                    ServiceInfo::new(MDNS_SERVICE_TYPE, &instance, &host, (), port, &txt[..])
                        .map_err(mdns_err)?
                        .enable_addr_auto();
                // The instance name is our PeerId, unique unless the same key runs twice;
                // skipping the probe saves ~750 ms before the first announcement.
                service.set_requires_probe(false);
                let fullname = service.get_fullname().to_string();
                daemon.register(service).map_err(mdns_err)?;
                info!(service = %fullname, port, "mDNS: advertising");
                Some(fullname)
            }
            None => {
                warn!("mDNS: no TCP listener, browsing only (not advertising)");
                None
            }
        };
        let browse = daemon.browse(MDNS_SERVICE_TYPE).map_err(mdns_err)?;
        Ok(Mdns {
            daemon,
            registered,
            browse,
            local_peer,
            services: HashMap::new(),
        })
    }

    /// Next discovery event. Cancel-safe: state changes only after a message is taken.
    pub(crate) async fn next(&mut self) -> MdnsEvent {
        loop {
            match self.browse.recv_async().await {
                Ok(ServiceEvent::ServiceResolved(service)) => {
                    if let Some(ev) = self.on_resolved(&service) {
                        return ev;
                    }
                }
                Ok(ServiceEvent::ServiceRemoved(_, fullname)) => {
                    if let Some(peer) = self.services.remove(&fullname.to_lowercase()) {
                        return MdnsEvent::Lost { peer };
                    }
                }
                Ok(other) => debug!(?other, "mDNS event"),
                Err(_) => {
                    // The daemon ends a subscription whose channel overflowed (we were not
                    // reading under backpressure) or when it stops. Re-subscribe after a pause;
                    // the daemon's cache re-announces what it knows.
                    warn!("mDNS: browse subscription ended; re-subscribing");
                    tokio::time::sleep(REBROWSE_BACKOFF).await;
                    let _ = self.daemon.stop_browse(MDNS_SERVICE_TYPE);
                    match self.daemon.browse(MDNS_SERVICE_TYPE) {
                        Ok(rx) => self.browse = rx,
                        Err(e) => {
                            warn!(error = %e, "mDNS: cannot browse any more");
                            std::future::pending::<()>().await;
                        }
                    }
                }
            }
        }
    }

    fn on_resolved(&mut self, service: &ResolvedService) -> Option<MdnsEvent> {
        let fullname = service.get_fullname();
        let parsed = parse_service(service);
        let (peer, role, version, addrs) = match parsed {
            Ok(p) => p,
            Err(why) => {
                debug!(service = %fullname, why, "mDNS: ignoring service");
                return None;
            }
        };
        if peer == self.local_peer {
            return None;
        }
        let key = fullname.to_lowercase();
        if !self.services.contains_key(&key) && self.services.len() >= MAX_DISCOVERED_SERVICES {
            warn!(service = %fullname, "mDNS: too many services tracked; ignoring");
            return None;
        }
        self.services.insert(key, peer);
        Some(MdnsEvent::Discovered {
            peer,
            role,
            version,
            addrs,
        })
    }

    /// Unregisters our service (the daemon multicasts a goodbye) and stops the daemon.
    pub(crate) async fn shutdown(self) {
        if let Some(fullname) = &self.registered {
            match self.daemon.unregister(fullname) {
                Ok(rx) => match tokio::time::timeout(SHUTDOWN_GRACE, rx.recv_async()).await {
                    Ok(Ok(status)) => debug!(?status, "mDNS: unregistered"),
                    _ => warn!("mDNS: no confirmation of unregistration"),
                },
                Err(e) => warn!(error = %e, "mDNS: unregister failed"),
            }
        }
        if let Ok(rx) = self.daemon.shutdown() {
            let _ = tokio::time::timeout(SHUTDOWN_GRACE, rx.recv_async()).await;
        }
    }
}

type Parsed = (PeerId, Role, u16, Vec<Multiaddr>);

/// Validates a resolved service from the network; never panics on what it contains.
fn parse_service(service: &ResolvedService) -> Result<Parsed, &'static str> {
    let peer = service
        .get_property_val_str(TXT_PEER)
        .and_then(|p| PeerId::from_str(p).ok())
        .ok_or("missing or invalid peer")?;
    let role = service
        .get_property_val_str(TXT_ROLE)
        .and_then(|r| Role::from_str(r).ok())
        .ok_or("missing or invalid role")?;
    let version = service
        .get_property_val_str(TXT_VERSION)
        .and_then(|v| v.parse::<u16>().ok())
        .ok_or("missing or invalid version")?;
    let port = service.get_port();
    if port == 0 {
        return Err("port 0");
    }
    let mut ips: Vec<IpAddr> = service
        .get_addresses()
        .iter()
        .map(|ip| ip.to_ip_addr())
        .filter(dialable)
        .collect();
    ips.sort();
    ips.dedup();
    let addrs: Vec<Multiaddr> = ips
        .into_iter()
        .take(MAX_ADDRS_PER_SERVICE)
        .map(|ip| tcp_multiaddr(ip, port))
        .collect();
    if addrs.is_empty() {
        return Err("no dialable address");
    }
    Ok((peer, role, version, addrs))
}

/// Addresses we can dial without a scope: IPv6 link-local needs a zone a multiaddr cannot carry.
fn dialable(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => !(v4.is_unspecified() || v4.is_multicast() || v4.is_broadcast()),
        IpAddr::V6(v6) => {
            let link_local = (v6.segments()[0] & 0xffc0) == 0xfe80;
            !(v6.is_unspecified() || v6.is_multicast() || link_local)
        }
    }
}

pub(crate) fn tcp_multiaddr(ip: IpAddr, port: u16) -> Multiaddr {
    let ip = match ip {
        IpAddr::V4(v4) => Protocol::Ip4(v4),
        IpAddr::V6(v6) => Protocol::Ip6(v6),
    };
    Multiaddr::empty().with(ip).with(Protocol::Tcp(port))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    #[test]
    fn txt_record_holds_only_version_peer_and_role() {
        let peer = PeerId::random();
        let txt = txt_record(&peer, Role::Relay, 1);
        let keys: Vec<&str> = txt.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["v", "peer", "role"]);
        assert_eq!(txt[0].1, "1");
        assert_eq!(txt[1].1, peer.to_base58());
        assert_eq!(txt[2].1, "relay");
    }

    #[test]
    fn multiaddrs_from_resolved_addresses() {
        assert_eq!(
            tcp_multiaddr(IpAddr::V4(Ipv4Addr::new(10, 77, 1, 2)), 4001).to_string(),
            "/ip4/10.77.1.2/tcp/4001"
        );
        assert_eq!(
            tcp_multiaddr(IpAddr::V6(Ipv6Addr::LOCALHOST), 7).to_string(),
            "/ip6/::1/tcp/7"
        );
        assert!(dialable(&IpAddr::V4(Ipv4Addr::LOCALHOST)));
        assert!(!dialable(&IpAddr::V6("fe80::1".parse().unwrap())));
        assert!(dialable(&IpAddr::V6("fd00::1".parse().unwrap())));
    }
}
