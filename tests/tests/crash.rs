//! Crash: the receiver is killed with SIGKILL while the sender streams 1,000 messages. Every
//! message the sender shows as delivered must be in the receiver's history exactly once after
//! it restarts, and the rest must arrive then, in the order they were sent.

use std::collections::{BTreeSet, HashMap};

use instaconnect_e2e::Home;

const MESSAGES: usize = 1_000;
/// The receiver dies after it has shown this many.
const KILL_AFTER: usize = 300;
/// Longest wait for the next acknowledgement once the receiver is back.
const STALL: std::time::Duration = std::time::Duration::from_secs(30);

/// The JSON output of a command run inside a node.
fn output(a: &instaconnect_e2e::Answer) -> serde_json::Value {
    assert_eq!(a.json["code"], 0, "{a:?}");
    serde_json::from_str(a.json["stdout"].as_str().expect("stdout")).expect("JSON output")
}

/// The ids of the messages `node` shows as delivered (or read) to Ravi.
fn delivered_in_history(node: &instaconnect_e2e::Node) -> BTreeSet<String> {
    output(&node.command(&["history", "--json", "Ravi"]))
        .as_array()
        .expect("history is a list")
        .iter()
        .filter(|m| m["state"] == "delivered" || m["state"] == "read")
        .map(|m| m["id"].as_str().expect("id").to_string())
        .collect()
}

#[test]
fn killing_the_receiver_mid_stream_loses_and_duplicates_nothing() {
    let asha = Home::with_account("+919812345678", "Asha");
    let ravi = Home::with_account("+919812340001", "Ravi");
    let mut asha_node = asha.start_node();
    let asha_addr = asha_node.wait_line("listening on ");
    let asha_events = asha_node.events();
    let ravi_node = ravi.start_node_with(&["--peer", &asha_addr]);
    let ravi_events = ravi_node.events();

    asha.link(
        &asha_events,
        "+919812345678",
        &ravi,
        &ravi_events,
        "+919812340001",
        &ravi_node.peer_id,
        "Ravi",
    );

    // Asha streams from another thread while this one watches Ravi.
    let sender = std::thread::spawn(move || {
        let mut ids = Vec::with_capacity(MESSAGES);
        for i in 0..MESSAGES {
            let text = format!("message {i:04}");
            let a = asha_node.command(&["send", "--json", "Ravi", &text]);
            ids.push(output(&a)["id"].as_str().expect("id").to_string());
        }
        (asha_node, ids)
    });
    for _ in 0..KILL_AFTER {
        ravi_events.wait("message_received", |_| true);
    }
    ravi_node.kill9();
    let (asha_node, ids) = sender.join().expect("the sender thread");
    assert_eq!(ids.len(), MESSAGES);

    // What Asha shows as delivered (or read) now, with Ravi dead.
    let delivered_before = delivered_in_history(&asha_node);
    assert!(
        !delivered_before.is_empty() && delivered_before.len() < MESSAGES,
        "the kill landed mid-stream: {} delivered",
        delivered_before.len()
    );

    // Ravi comes back; everything arrives. Asha hears an ack for every message.
    let ravi_node = ravi.start_node_with(&["--peer", &asha_addr]);
    let mut delivered: BTreeSet<String> = delivered_before.clone();
    while delivered.len() < MESSAGES {
        let Some((name, d)) = asha_events.next_within(STALL) else {
            panic!(
                "delivery stalled at {} of {MESSAGES}\nsender log:\n{}\nreceiver log:\n{}",
                delivered.len(),
                asha_node.log(),
                ravi_node.log()
            );
        };
        if name == "state_changed" && (d["state"] == "Delivered" || d["state"] == "Read") {
            delivered.insert(d["id"].as_str().unwrap_or_default().to_string());
        } else if name == "lagged" {
            // The burst of acks after the restart outran this subscriber, which is told so;
            // like any client, it catches up from the history.
            delivered.extend(delivered_in_history(&asha_node));
        }
    }

    let got = output(&ravi_node.command(&["history", "--json", "Asha"]));
    let got = got.as_array().expect("history is a list");
    let mut count: HashMap<&str, usize> = HashMap::new();
    for m in got {
        *count.entry(m["id"].as_str().expect("id")).or_default() += 1;
    }
    for id in &delivered_before {
        assert_eq!(
            count.get(id.as_str()),
            Some(&1),
            "{id} was delivered before the crash"
        );
    }
    assert_eq!(got.len(), MESSAGES, "every message exactly once");
    let texts: Vec<&str> = got.iter().map(|m| m["text"].as_str().unwrap()).collect();
    let sent: Vec<String> = (0..MESSAGES).map(|i| format!("message {i:04}")).collect();
    assert_eq!(texts, sent, "in the order they were sent");
    let got_ids: Vec<&str> = got.iter().map(|m| m["id"].as_str().unwrap()).collect();
    assert_eq!(got_ids, ids, "the same messages");
}
