//! Discovery end to end: two `instaconnect run` processes, each in a network namespace this
//! test creates (joined by a veth pair), with no `--peer`, find each other through mDNS, link
//! and chat. Needs root for the namespaces (CI is root); prints why and returns otherwise.

use std::time::{Duration, Instant};

use instaconnect_e2e::{is_root, Home, NetnsPair};
use serde_json::Value;

/// Longest wait for a state the other node should reach.
const WAIT: Duration = Duration::from_secs(20);

/// Re-reads `args` (as JSON) until `f` accepts it or [`WAIT`] passes; each read is a full
/// command round trip through the node, so this waits on the node's progress, not on a timer.
fn until(h: &Home, args: &[&str], what: &str, f: impl Fn(&Value) -> bool) -> Value {
    let start = Instant::now();
    loop {
        let v = h.json(args);
        if f(&v) {
            return v;
        }
        assert!(
            start.elapsed() < WAIT,
            "timed out waiting for {what}; last: {v}"
        );
    }
}

#[test]
fn two_nodes_find_each_other_with_mdns_and_chat() {
    if !is_root() {
        eprintln!("needs root to create network namespaces; CI runs as root");
        return;
    }
    let ns = NetnsPair::new("disc");
    let asha = Home::in_netns(&ns.a);
    let ravi = Home::in_netns(&ns.b);
    asha.ok(&[
        "account",
        "create",
        "--phone",
        "+919812345678",
        "--name",
        "Asha",
    ]);
    ravi.ok(&[
        "account",
        "create",
        "--phone",
        "+919812340001",
        "--name",
        "Ravi",
    ]);

    let started = Instant::now();
    let ravi_node = ravi.spawn_node(&["--listen", "/ip4/0.0.0.0/tcp/0"]);
    let _asha_node = asha.spawn_node(&["--listen", "/ip4/0.0.0.0/tcp/0"]);
    until(&asha, &["nearby"], "Ravi in Asha's nearby list", |v| {
        v.as_array()
            .is_some_and(|a| a.iter().any(|p| p["peer"] == ravi_node.peer_id.as_str()))
    });
    println!(
        "nearby showed the other node {} ms after start (target: under 1000 ms)",
        started.elapsed().as_millis()
    );
    // Asha's own mDNS browse resolves Ravi too, with his address on the veth.
    let seen = until(&asha, &["nearby"], "Ravi discovered by Asha's mDNS", |v| {
        v.as_array().is_some_and(|a| {
            a.iter()
                .any(|p| p["peer"] == ravi_node.peer_id.as_str() && p["discovered"] == true)
        })
    });
    println!(
        "its own mDNS query resolved the other node {} ms after start",
        started.elapsed().as_millis()
    );
    let r = seen
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["peer"] == ravi_node.peer_id.as_str())
        .unwrap();
    assert!(
        r["addrs"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a.as_str().unwrap().contains("/ip4/10.78.")),
        "discovered over the veth: {r}"
    );

    asha.ok(&[
        "contacts",
        "add",
        "+919812340001",
        "--name",
        "Ravi",
        "--peer",
        &ravi_node.peer_id,
    ]);
    until(
        &ravi,
        &["contacts", "requests"],
        "the contact request",
        |v| v.as_array().is_some_and(|a| !a.is_empty()),
    );
    ravi.ok(&["contacts", "accept", "+919812345678"]);
    // No need to wait for the acceptance: the message is queued until the link completes.
    let sent = asha.json(&["send", "Ravi", "found you on the LAN"]);
    let id = sent["id"].as_str().unwrap().to_string();
    let h = until(
        &ravi,
        &["history", "+919812345678"],
        "the message at Ravi",
        |v| {
            v.as_array()
                .is_some_and(|a| a.iter().any(|m| m["id"] == id.as_str()))
        },
    );
    assert_eq!(h[0]["text"], "found you on the LAN");
    until(&asha, &["history", "Ravi"], "delivered at Asha", |v| {
        v[0]["state"] == "delivered" || v[0]["state"] == "read"
    });
}
