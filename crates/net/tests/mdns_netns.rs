//! Test 4: mDNS discovery between two processes, each in a network namespace this test creates
//! (veth pair), and between two processes in one namespace whose only interface is `lo` with
//! multicast on. Needs root (CI is root); prints a skip message otherwise.
//!
//! The parent tests re-exec this test binary as `mdns_child` inside the namespaces; that test
//! is a no-op unless [`ROLE_ENV`] is set. Over the veth pair the responder runs first (the
//! seeker's query is answered); over loopback the seeker runs first (the responder's
//! announcement reaches it). The query path takes about a second here: the responder announced
//! its records under a second before the query, and mdns-sd multicasts a record at most once
//! per second per interface (RFC 6762 §6), so it answers on the next round. A responder that
//! has been up longer answers at once.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::wait_for;
use instaconnect_net::{start, NetConfig, NetEvent, NetIdentity, Role};
use zeroize::Zeroizing;

const ROLE_ENV: &str = "INSTACONNECT_NET_MDNS_CHILD";
const EXPECT_ENV: &str = "INSTACONNECT_NET_MDNS_EXPECT_ADDR";
/// Printed by a child once its node runs (advertising and browsing).
const READY_MARKER: &str = "child ready";
const RESPONDER_SEED: [u8; 32] = [0x11; 32];
const SEEKER_SEED: [u8; 32] = [0x22; 32];
/// Bound on a whole child run (start, discovery, round trip, goodbye).
const CHILD_TIMEOUT: Duration = Duration::from_secs(20);
/// Bound on waiting for the veth links to report carrier.
const LINK_UP_TIMEOUT: Duration = Duration::from_secs(5);

fn peer_of(seed: &[u8; 32]) -> String {
    instaconnect_crypto::Identity::from_secret_bytes(seed)
        .unwrap()
        .public()
        .peer_id()
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

fn ip(args: &[&str]) -> String {
    let out = Command::new("ip")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run `ip` (iproute2 is required): {e}"));
    assert!(
        out.status.success(),
        "`ip {}` failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Network namespaces deleted on drop (with their interfaces), even when the test fails.
#[derive(Default)]
struct Namespaces(Vec<String>);

impl Namespaces {
    fn add(&mut self, name: &str) {
        ip(&["netns", "add", name]);
        self.0.push(name.to_string());
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for ns in &self.0 {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// Returns false (after printing why) when the test cannot run here.
fn preflight() -> bool {
    if !is_root() {
        println!("skipping: needs root for network namespaces");
        return false;
    }
    let out = Command::new("ip").args(["netns", "list"]).output();
    match out {
        Ok(o) if o.status.success() => true,
        Ok(o) => panic!(
            "running as root but `ip netns` does not work: {}",
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(e) => panic!("running as root but `ip` (iproute2) is unavailable: {e}"),
    }
}

/// Waits until `dev` in `ns` has carrier (veth carrier follows both ends being up).
fn wait_link_up(ns: &str, dev: &str) {
    let deadline = Instant::now() + LINK_UP_TIMEOUT;
    loop {
        let out = ip(&["-n", ns, "-o", "link", "show", "dev", dev]);
        if out.contains("LOWER_UP") && out.contains("state UP") {
            return;
        }
        assert!(Instant::now() < deadline, "{dev} in {ns} not up: {out}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A child process in a namespace, with its output collected in the background.
struct Child {
    name: &'static str,
    process: tokio::process::Child,
    stdout: tokio::task::JoinHandle<String>,
    stderr: tokio::task::JoinHandle<String>,
}

/// Starts `mdns_child` as `role` inside `ns` and waits (bounded) until it prints
/// [`READY_MARKER`].
async fn spawn_child(ns: &str, role: &'static str, expect_addr_prefix: &str) -> Child {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
    let exe = std::env::current_exe().unwrap();
    let mut process = tokio::process::Command::new("ip")
        .args(["netns", "exec", ns])
        .arg(&exe)
        .args(["--exact", "mdns_child", "--nocapture", "--test-threads=1"])
        .env(ROLE_ENV, role)
        .env(EXPECT_ENV, expect_addr_prefix)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn child in namespace");
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let mut lines = BufReader::new(process.stdout.take().unwrap()).lines();
    let stdout = tokio::spawn(async move {
        let mut out = String::new();
        let mut ready_tx = Some(ready_tx);
        while let Ok(Some(line)) = lines.next_line().await {
            if line.contains(READY_MARKER) {
                if let Some(tx) = ready_tx.take() {
                    let _ = tx.send(());
                }
            }
            out.push_str(&line);
            out.push('\n');
        }
        out
    });
    let mut err_pipe = process.stderr.take().unwrap();
    let stderr = tokio::spawn(async move {
        let mut out = String::new();
        let _ = err_pipe.read_to_string(&mut out).await;
        out
    });
    let ready = tokio::time::timeout(CHILD_TIMEOUT, ready_rx).await;
    let child = Child {
        name: role,
        process,
        stdout,
        stderr,
    };
    if !matches!(ready, Ok(Ok(()))) {
        let (_, out) = finish(child).await;
        panic!("{role} never became ready:\n{out}");
    }
    child
}

/// Waits (bounded) for the child to exit; returns whether it succeeded, and its output.
async fn finish(mut child: Child) -> (bool, String) {
    let status = tokio::time::timeout(CHILD_TIMEOUT, child.process.wait()).await;
    let ok = matches!(status, Ok(Ok(s)) if s.success());
    if status.is_err() {
        let _ = child.process.kill().await;
    }
    let stdout = child.stdout.await.unwrap_or_default();
    let stderr = child.stderr.await.unwrap_or_default();
    (
        ok,
        format!("--- {} ({status:?}):\n{stdout}{stderr}", child.name),
    )
}

/// Runs a responder and a seeker; `responder_first` picks the path discovery takes: the
/// seeker's query answered by a running responder, or a new responder's announcement reaching
/// a running seeker.
async fn run_pair(ns_responder: &str, ns_seeker: &str, expect: &str, responder_first: bool) {
    let (responder, seeker) = if responder_first {
        let r = spawn_child(ns_responder, "responder", expect).await;
        (r, spawn_child(ns_seeker, "seeker", expect).await)
    } else {
        let s = spawn_child(ns_seeker, "seeker", expect).await;
        (spawn_child(ns_responder, "responder", expect).await, s)
    };
    let ((r_ok, r_out), (s_ok, s_out)) = tokio::join!(finish(responder), finish(seeker));
    println!("{r_out}{s_out}");
    assert!(r_ok && s_ok, "a child failed; see its output above");
}

#[tokio::test]
async fn mdns_discovery_over_a_veth_pair() {
    if !preflight() {
        return;
    }
    let pid = std::process::id();
    let subnet = pid % 250 + 1;
    let (ns_a, ns_b) = (format!("icnet-{pid}-va"), format!("icnet-{pid}-vb"));
    let (dev_a, dev_b) = (format!("icv{pid}a"), format!("icv{pid}b"));
    let mut namespaces = Namespaces::default();
    namespaces.add(&ns_a);
    namespaces.add(&ns_b);
    // Created directly inside the namespaces: nothing touches the host namespace.
    ip(&[
        "link", "add", &dev_a, "netns", &ns_a, "type", "veth", "peer", "name", &dev_b, "netns",
        &ns_b,
    ]);
    for (ns, dev, host) in [(&ns_a, &dev_a, 1), (&ns_b, &dev_b, 2)] {
        ip(&["-n", ns, "link", "set", "lo", "up"]);
        let cidr = format!("10.77.{subnet}.{host}/24");
        ip(&["-n", ns, "addr", "add", &cidr, "dev", dev]);
        ip(&["-n", ns, "link", "set", dev, "up"]);
        ip(&["-n", ns, "route", "add", "224.0.0.0/4", "dev", dev]);
    }
    wait_link_up(&ns_a, &dev_a);
    wait_link_up(&ns_b, &dev_b);
    run_pair(&ns_a, &ns_b, &format!("/ip4/10.77.{subnet}.1/tcp/"), true).await;
}

#[tokio::test]
async fn mdns_discovery_over_loopback_only() {
    if !preflight() {
        return;
    }
    let ns = format!("icnet-{}-lo", std::process::id());
    let mut namespaces = Namespaces::default();
    namespaces.add(&ns);
    ip(&["-n", &ns, "link", "set", "lo", "multicast", "on"]);
    ip(&["-n", &ns, "link", "set", "lo", "up"]);
    ip(&["-n", &ns, "route", "add", "224.0.0.0/4", "dev", "lo"]);
    run_pair(&ns, &ns, "/ip4/127.0.0.1/tcp/", false).await;
}

fn child_config(seed: [u8; 32], role: Role) -> NetConfig {
    NetConfig {
        identity: NetIdentity::Account {
            ed25519_seed: Zeroizing::new(seed),
        },
        listen: vec!["/ip4/0.0.0.0/tcp/0".to_string()],
        mdns: true,
        role,
        protocol_version: 1,
    }
}

/// Child side; a no-op in a normal test run.
#[tokio::test]
async fn mdns_child() {
    let Ok(role) = std::env::var(ROLE_ENV) else {
        return;
    };
    let expect = std::env::var(EXPECT_ENV).expect("expected address prefix");
    match role.as_str() {
        "responder" => responder().await,
        "seeker" => seeker(&expect).await,
        other => panic!("unknown child role {other}"),
    }
}

/// Advertises as a relay, answers one request from the seeker, then shuts down (goodbye)
/// once the seeker has disconnected.
async fn responder() {
    let seeker_peer = peer_of(&SEEKER_SEED);
    let (h, mut rx) = start(child_config(RESPONDER_SEED, Role::Relay))
        .await
        .unwrap();
    assert_eq!(h.local_peer_id(), peer_of(&RESPONDER_SEED));
    println!("responder: {READY_MARKER}");
    let channel = wait_for(&mut rx, "request from the seeker", |ev| match ev {
        NetEvent::Request {
            peer,
            frame,
            channel,
        } if *peer == seeker_peer => {
            assert_eq!(frame, b"ping over mdns");
            Some(*channel)
        }
        _ => None,
    })
    .await;
    h.respond(channel, b"pong over mdns".to_vec())
        .await
        .unwrap();
    wait_for(&mut rx, "seeker disconnect", |ev| match ev {
        NetEvent::Disconnected { peer } if *peer == seeker_peer => Some(()),
        _ => None,
    })
    .await;
    h.shutdown().await;
    println!("responder: answered and shut down");
}

/// Discovers the responder, checks what mDNS said, does a round trip via the discovered
/// address, disconnects, and waits for the responder's goodbye.
async fn seeker(expect_addr_prefix: &str) {
    let responder_peer = peer_of(&RESPONDER_SEED);
    let (h, mut rx) = start(child_config(SEEKER_SEED, Role::Device))
        .await
        .unwrap();
    let started = Instant::now();
    println!("seeker: {READY_MARKER}");
    let (role, version, addrs) = wait_for(&mut rx, "Discovered", |ev| match ev {
        NetEvent::Discovered {
            peer,
            role,
            version,
            addrs,
        } if *peer == responder_peer => Some((*role, *version, addrs.clone())),
        _ => None,
    })
    .await;
    let discovery = started.elapsed();
    println!(
        "seeker: discovered {responder_peer} as {role} v{version} at {addrs:?} in {discovery:?}"
    );
    assert_eq!(role, Role::Relay);
    assert_eq!(version, 1);
    assert!(
        addrs.iter().any(|a| a.starts_with(expect_addr_prefix)),
        "expected an address starting with {expect_addr_prefix}, got {addrs:?}"
    );

    // No explicit dial: the request uses the discovered addresses.
    let id = h
        .request(&responder_peer, b"ping over mdns".to_vec())
        .await
        .unwrap();
    let frame = wait_for(&mut rx, "Response", |ev| match ev {
        NetEvent::Response { id: i, frame, .. } if *i == id => Some(frame.clone()),
        NetEvent::RequestFailed { id: i, error, .. } if *i == id => {
            panic!("request via discovered address failed: {error}")
        }
        _ => None,
    })
    .await;
    assert_eq!(frame, b"pong over mdns");
    println!(
        "seeker: round trip done {:?} after start",
        started.elapsed()
    );

    h.disconnect(&responder_peer).await.unwrap();
    wait_for(&mut rx, "Lost", |ev| match ev {
        NetEvent::Lost { peer } if *peer == responder_peer => Some(()),
        _ => None,
    })
    .await;
    println!(
        "seeker: responder's goodbye seen {:?} after start",
        started.elapsed()
    );
    h.shutdown().await;
}
