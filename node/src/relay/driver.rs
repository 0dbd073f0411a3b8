//! The loop that runs the sans-IO [`Relay`] on the network, like `net::driver` does for the
//! device's engine: mailbox requests in (a batch of whatever is ready), one commit (one store
//! flush) for the batch, then the released responses and notifications out. Timer ticks run
//! TTL expiry; disconnections end subscriptions. This is where the relay meets the clock.
//!
//! Rate limits: the relay's own token bucket is keyed by the client's peer id, which is one
//! connection (depositors use a fresh transport identity each); a second bucket here is keyed
//! by the client's IP address, taken from the connection's remote address, and shared by all
//! its connections.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use instaconnect_core::relay::{
    Bucket, Relay, RelayError, RelayMetrics, RelayOutput, EXPIRY_BATCH,
};
use instaconnect_net::{InboundId, NetEvent, NetHandle};
use instaconnect_store::StoreError;
use instaconnect_wire::mailbox::{MailboxResponse, Refusal};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::config::PerIpLimits;

/// Network events handled under one commit (one flush) at most.
pub const MAX_BATCH: usize = 512;
/// Longest sleep when no envelope expires sooner.
pub const IDLE_TICK: Duration = Duration::from_secs(60);
/// IP addresses whose rate-limit buckets are kept; the longest idle is forgotten beyond it.
pub const MAX_IP_BUCKETS: usize = 65_536;
/// Connected peers whose IP address is remembered (more than libp2p's connection limit).
pub const MAX_PEER_ADDRS: usize = 4_096;

/// What `/metrics` shows, updated after every batch.
#[derive(Default)]
pub struct Shared {
    pub metrics: Mutex<RelayMetrics>,
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Token buckets per IP address, bounded by [`MAX_IP_BUCKETS`].
struct IpLimiter {
    limits: PerIpLimits,
    buckets: HashMap<IpAddr, Bucket>,
}

impl IpLimiter {
    fn allow(&mut self, now_ms: u64, ip: IpAddr) -> bool {
        if !self.buckets.contains_key(&ip) && self.buckets.len() >= MAX_IP_BUCKETS {
            if let Some(idle) = self
                .buckets
                .iter()
                .min_by_key(|(_, b)| b.last_ms())
                .map(|(k, _)| *k)
            {
                self.buckets.remove(&idle);
            }
        }
        let (burst, rate) = (self.limits.rate_burst, self.limits.rate_per_second);
        self.buckets
            .entry(ip)
            .or_insert_with(|| Bucket::full(burst, now_ms))
            .take(now_ms, burst, rate)
    }
}

/// The IP address in a multiaddr (`/ip4/A/tcp/P`, `/ip6/A/udp/P/quic-v1`).
fn ip_of(addr: &str) -> Option<IpAddr> {
    let mut parts = addr.split('/');
    while let Some(p) = parts.next() {
        if p == "ip4" || p == "ip6" {
            return parts.next()?.parse().ok();
        }
    }
    None
}

pub struct Driver {
    relay: Relay,
    net: NetHandle,
    shared: Arc<Shared>,
    ip_limiter: IpLimiter,
    /// Connected peers' IP addresses (from the connection's remote address).
    peer_ips: HashMap<String, IpAddr>,
    /// Requests waiting for the relay's answer, by channel number.
    inbound: HashMap<u64, InboundId>,
    /// Answers that need no commit (refused by the per-IP limit): they changed nothing.
    immediate: Vec<(InboundId, Vec<u8>)>,
    /// Requests refused by the per-IP limit (added to `rate_limited` in the metrics).
    ip_refusals: u64,
}

impl Driver {
    pub fn new(relay: Relay, net: NetHandle, per_ip: PerIpLimits, shared: Arc<Shared>) -> Driver {
        Driver {
            relay,
            net,
            shared,
            ip_limiter: IpLimiter {
                limits: per_ip,
                buckets: HashMap::new(),
            },
            peer_ips: HashMap::new(),
            inbound: HashMap::new(),
            immediate: Vec::new(),
            ip_refusals: 0,
        }
    }

    /// Runs until `shutdown` becomes true or the network stops; then commits and answers
    /// what is staged, so nothing acknowledged is lost and nothing durable goes unanswered.
    ///
    /// Group commit: one store flush at a time runs on a blocking thread while requests go
    /// on being handled (their writes staged in memory); when it ends, the answers it covers
    /// go out and the next flush starts at once with everything handled meanwhile.
    pub async fn run(
        mut self,
        mut net_events: mpsc::Receiver<NetEvent>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        self.publish();
        let mut flushing: Option<JoinHandle<Result<(), StoreError>>> = None;
        loop {
            let now = now_ms();
            let sleep = Duration::from_millis(self.relay.poll_timeout(now).saturating_sub(now))
                .min(IDLE_TICK);
            tokio::select! {
                biased;
                _ = shutdown.changed() => {
                    if *shutdown.borrow() {
                        break;
                    }
                }
                flushed = async { flushing.as_mut().expect("guarded").await }, if flushing.is_some() => {
                    flushing = None;
                    self.flushed(flushed).await;
                }
                ev = net_events.recv() => {
                    let Some(ev) = ev else { break };
                    self.net_event(ev);
                    for _ in 1..MAX_BATCH {
                        match net_events.try_recv() {
                            Ok(ev) => self.net_event(ev),
                            Err(_) => break,
                        }
                    }
                }
                _ = tokio::time::sleep(sleep) => self.expire(),
            }
            self.answer_immediate().await;
            if flushing.is_none() && self.relay.prepare_commit() {
                let store = self.relay.store().clone();
                flushing = Some(tokio::task::spawn_blocking(move || store.flush()));
            }
            // Refusals by the per-IP limit and expiries change the counters without a commit.
            self.publish();
        }
        if let Some(f) = flushing.take() {
            self.flushed(f.await).await;
        }
        self.flush().await;
        tracing::debug!("relay loop stopped");
    }

    /// A background flush ended: release (or hold back) what it covers, send it out.
    async fn flushed(&mut self, r: Result<Result<(), StoreError>, tokio::task::JoinError>) {
        let r = match r {
            Ok(r) => r.map_err(RelayError::from),
            Err(e) => Err(RelayError::FlushAborted(e.to_string())),
        };
        if let Err(e) = self.relay.committed(r) {
            // Outputs stay staged until a commit succeeds: nothing is acked before it is durable.
            tracing::error!(error = %e, "relay store flush failed; answers held back");
        }
        self.send_ready().await;
    }

    fn expire(&mut self) {
        match self.relay.handle_timeout(now_ms()) {
            Ok(n) if n > 0 => {
                tracing::info!(expired = n, "expired envelopes removed");
                if n == EXPIRY_BATCH {
                    tracing::debug!("more envelopes to expire; continuing at once");
                }
            }
            Ok(_) => {}
            Err(e) => tracing::error!(error = %e, "expiry failed"),
        }
    }

    fn net_event(&mut self, ev: NetEvent) {
        match ev {
            NetEvent::MailboxRequest {
                peer,
                frame,
                channel,
            } => {
                let now = now_ms();
                if let Some(ip) = self.peer_ips.get(&peer).copied() {
                    if !self.ip_limiter.allow(now, ip) {
                        self.ip_refusals += 1;
                        let frame = MailboxResponse::Refused(Refusal::RateLimited)
                            .encode()
                            .unwrap_or_default();
                        self.immediate.push((channel, frame));
                        return;
                    }
                }
                self.inbound.insert(channel.get(), channel);
                self.relay.handle_request(now, &peer, channel.get(), &frame);
            }
            NetEvent::Connected { peer, addr } => {
                if let Some(ip) = ip_of(&addr) {
                    if self.peer_ips.len() < MAX_PEER_ADDRS || self.peer_ips.contains_key(&peer) {
                        self.peer_ips.insert(peer, ip);
                    }
                }
            }
            NetEvent::Disconnected { peer } => {
                self.peer_ips.remove(&peer);
                self.relay.disconnected(&peer);
            }
            NetEvent::Request { channel, .. } => {
                // A relay holds no conversations: answer at once so the stream closes.
                let net = self.net.clone();
                tokio::spawn(async move {
                    let _ = net.respond(channel, Vec::new()).await;
                });
            }
            NetEvent::Misbehaving { .. } => tracing::debug!("a client sent too many bad frames"),
            NetEvent::Listening { .. }
            | NetEvent::Discovered { .. }
            | NetEvent::Lost { .. }
            | NetEvent::DialFailed { .. }
            | NetEvent::Response { .. }
            | NetEvent::RequestFailed { .. }
            | NetEvent::InboundFailed { .. } => {}
        }
    }

    /// Answers refused by the per-IP limit: they changed nothing, so they need no flush.
    async fn answer_immediate(&mut self) {
        for (channel, frame) in std::mem::take(&mut self.immediate) {
            let _ = self.net.respond(channel, frame).await;
        }
    }

    /// One commit (on this thread) for everything handled since the last, then every
    /// released output. Used at shutdown, after the last background flush.
    async fn flush(&mut self) {
        self.answer_immediate().await;
        if let Err(e) = self.relay.commit() {
            // Outputs stay staged until a commit succeeds: nothing is acked before it is durable.
            tracing::error!(error = %e, "relay store flush failed; answers held back");
        }
        self.send_ready().await;
    }

    /// Sends every released output, logs store errors and updates `/metrics`.
    async fn send_ready(&mut self) {
        for e in self.relay.take_errors() {
            tracing::error!(error = %e, "relay store error (the client was told to retry)");
        }
        while let Some(out) = self.relay.poll_output() {
            match out {
                RelayOutput::Respond { channel, frame } => {
                    if let Some(id) = self.inbound.remove(&channel) {
                        if let Err(e) = self.net.respond(id, frame).await {
                            tracing::debug!(error = %e, "answer not sent (the client left)");
                        }
                    }
                }
                RelayOutput::Notify { client, frame } => {
                    if let Err(e) = self.net.mailbox_request(&client, frame).await {
                        tracing::debug!(error = %e, "notification not sent");
                    }
                }
            }
        }
        self.publish();
    }

    fn publish(&self) {
        let mut m = self.relay.metrics().clone();
        if self.ip_refusals > 0 {
            *m.rejections.entry("rate_limited").or_default() += self.ip_refusals;
        }
        if let Ok(mut g) = self.shared.metrics.lock() {
            *g = m;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ip_addresses_come_from_multiaddrs() {
        assert_eq!(
            ip_of("/ip4/127.0.0.1/tcp/4001"),
            Some("127.0.0.1".parse().unwrap())
        );
        assert_eq!(
            ip_of("/ip6/::1/udp/4001/quic-v1"),
            Some("::1".parse().unwrap())
        );
        assert_eq!(ip_of("/dns4/example.org/tcp/1"), None);
        assert_eq!(ip_of("garbage"), None);
    }

    #[test]
    fn the_ip_bucket_refuses_past_its_burst_and_refills() {
        let mut l = IpLimiter {
            limits: PerIpLimits {
                rate_burst: 3,
                rate_per_second: 1,
            },
            buckets: HashMap::new(),
        };
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let other: IpAddr = "10.0.0.2".parse().unwrap();
        assert!((0..3).all(|_| l.allow(1_000, ip)));
        assert!(!l.allow(1_000, ip));
        assert!(l.allow(1_000, other), "another address has its own bucket");
        assert!(l.allow(2_000, ip), "one more a second later");
        assert!(!l.allow(2_000, ip));
    }
}
