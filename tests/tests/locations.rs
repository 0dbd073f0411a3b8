//! Live locations between two running nodes on 127.0.0.1, with a short update interval: the
//! receiver's one location follows the sender's position, and stops following it after
//! `location stop` and after the share expires (marked ended on both sides, no further
//! updates); bad input and the privacy setting get clear errors.

use std::time::{Duration, Instant};

use instaconnect_e2e::{Events, Home, Node};

const ASHA: &str = "+919812345678";
const RAVI: &str = "+919812340001";
/// Asha's live-location interval.
const INTERVAL_MS: u64 = 300;

fn output(a: &instaconnect_e2e::Answer) -> serde_json::Value {
    assert_eq!(a.json["code"], 0, "{a:?}");
    serde_json::from_str(a.json["stdout"].as_str().expect("stdout")).expect("JSON output")
}

struct Pair {
    asha: Home,
    asha_node: Node,
    asha_events: Events,
    ravi_node: Node,
    ravi_events: Events,
    /// Kept to the end: dropping a home deletes its data dir.
    _ravi: Home,
}

fn linked() -> Pair {
    let asha = Home::with_account(ASHA, "Asha");
    let ravi = Home::with_account(RAVI, "Ravi");
    let mut ravi_node = ravi.start_node();
    let ravi_addr = ravi_node.wait_line("listening on ");
    let ravi_events = ravi_node.events();
    let config = asha.file("device.toml");
    std::fs::write(
        &config,
        format!("[location]\nlive_interval_ms = {INTERVAL_MS}\n"),
    )
    .unwrap();
    let asha_node =
        asha.start_node_with(&["--peer", &ravi_addr, "--config", config.to_str().unwrap()]);
    let asha_events = asha_node.events();
    asha.link(
        &asha_events,
        ASHA,
        &ravi,
        &ravi_events,
        RAVI,
        &ravi_node.peer_id,
        "Ravi",
    );
    Pair {
        asha,
        asha_node,
        asha_events,
        ravi_node,
        ravi_events,
        _ravi: ravi,
    }
}

/// Waits up to `timeout` for the event `name` satisfying `f`.
fn wait_for(
    events: &Events,
    name: &str,
    timeout: Duration,
    f: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match events.next_within(left) {
            Some((n, d)) if n == name && f(&d) => return d,
            Some(_) => {}
            None => panic!("no {name} event within {timeout:?}"),
        }
    }
}

/// Watches the events for `span` and returns how many `location_updated` came for `id`.
fn updates_during(events: &Events, id: &str, span: Duration) -> usize {
    let deadline = Instant::now() + span;
    let mut n = 0;
    while let Some((name, d)) =
        events.next_within(deadline.saturating_duration_since(Instant::now()))
    {
        if name == "location_updated" && d["id"] == id {
            n += 1;
        }
    }
    n
}

/// The `location` object of message `id` in Ravi's history with Asha.
fn ravi_sees(ravi_node: &Node, id: &str) -> serde_json::Value {
    let h = output(&ravi_node.command(&["history", "--json", "Asha"]));
    h.as_array()
        .unwrap()
        .iter()
        .find(|m| m["id"] == id)
        .unwrap_or_else(|| panic!("message {id} in {h}"))["location"]
        .clone()
}

#[test]
fn live_location_stops_updating_after_location_stop_and_after_expiry() {
    let Pair {
        asha,
        asha_node,
        asha_events,
        ravi_node,
        ravi_events,
        _ravi,
    } = linked();

    // Bad input is refused with a clear error, and the default privacy keeps live off.
    let (code, err) = asha.fail(&["send", "Ravi", "--location", "91,13.4"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("latitude 91"), "{err}");
    let (code, err) = asha.fail(&["send", "Ravi", "--location", "52.52,13.405", "--live", "0"]);
    assert_eq!(code, 2, "{err}");
    let (code, err) = asha.fail(&["send", "Ravi", "--location", "52.52,13.405", "--live", "5"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("privacy set location contacts"), "{err}");
    asha.ok(&["privacy", "set", "location", "contacts"]);

    // A live location: the first position, then the receiver's one location follows Asha's.
    let sent = output(&asha_node.command(&[
        "send",
        "--json",
        "Ravi",
        "--location",
        "52.52,13.405",
        "--live",
        "60",
    ]));
    let first = sent["id"].as_str().unwrap().to_string();
    assert_eq!(sent["location"]["live"], true);
    wait_for(
        &ravi_events,
        "message_received",
        Duration::from_secs(30),
        |d| d["id"] == first.as_str(),
    );
    asha.ok(&["location", "set", "52.53,13.41"]);
    wait_for(
        &ravi_events,
        "location_updated",
        Duration::from_secs(30),
        |d| d["id"] == first.as_str() && d["location"]["lat_e7"] == 525_300_000,
    );
    let seen = ravi_sees(&ravi_node, &first);
    assert_eq!(
        (seen["live_now"].clone(), seen["lat"].clone()),
        (true.into(), 52.53.into())
    );
    let text = ravi_node.command(&["history", "Asha"]);
    assert!(
        text.json["stdout"]
            .as_str()
            .unwrap()
            .contains("📍 52.53000, 13.41000 (52.53000° N, 13.41000° E) — live until"),
        "{text:?}"
    );

    // `location stop`: the receiver marks it ended, and nothing more comes.
    let stopped = output(&asha_node.command(&["location", "stop", "Ravi", "--json"]));
    assert_eq!(stopped["stopped"], 1);
    let end = wait_for(
        &ravi_events,
        "location_ended",
        Duration::from_secs(30),
        |d| d["id"] == first.as_str(),
    );
    assert_eq!(end["stopped"], true);
    let seen = ravi_sees(&ravi_node, &first);
    assert_eq!(
        (seen["live_now"].clone(), seen["stopped"].clone()),
        (false.into(), true.into())
    );
    let after = seen["updates"].clone();
    asha.ok(&["location", "set", "52.54,13.42"]);
    let span = Duration::from_millis(10 * INTERVAL_MS);
    assert_eq!(
        updates_during(&ravi_events, &first, span),
        0,
        "updates after the stop"
    );
    assert_eq!(ravi_sees(&ravi_node, &first)["updates"], after);
    let shown = output(&asha_node.command(&["location", "show", "--json"]));
    assert_eq!(shown["live"], serde_json::json!([]));

    // Expiry: a one-minute share from the position set above updates, then ends on its own on
    // both sides, and nothing more comes.
    let sent = output(&asha_node.command(&["send", "--json", "Ravi", "--live", "1"]));
    let second = sent["id"].as_str().unwrap().to_string();
    asha.ok(&["location", "set", "52.55,13.43"]);
    wait_for(
        &ravi_events,
        "location_updated",
        Duration::from_secs(30),
        |d| d["id"] == second.as_str() && d["location"]["lat_e7"] == 525_500_000,
    );
    let end = wait_for(
        &ravi_events,
        "location_ended",
        Duration::from_secs(90),
        |d| d["id"] == second.as_str(),
    );
    assert_eq!(end["stopped"], false, "ended by expiry");
    let end = wait_for(
        &asha_events,
        "location_ended",
        Duration::from_secs(30),
        |d| d["id"] == second.as_str(),
    );
    assert_eq!(end["stopped"], false);
    let seen = ravi_sees(&ravi_node, &second);
    assert_eq!(
        (seen["live_now"].clone(), seen["stopped"].clone()),
        (false.into(), false.into())
    );
    let after = seen["updates"].clone();
    asha.ok(&["location", "set", "52.56,13.44"]);
    assert_eq!(
        updates_during(&ravi_events, &second, span),
        0,
        "updates after the expiry"
    );
    assert_eq!(ravi_sees(&ravi_node, &second)["updates"], after);
    let text = ravi_node.command(&["history", "Asha"]);
    let text = text.json["stdout"].as_str().unwrap();
    assert!(text.contains("live location stopped"), "{text}");
    assert!(text.contains("live location ended"), "{text}");
}
