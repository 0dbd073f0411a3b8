//! Two `instaconnect run` processes on 127.0.0.1 with `--peer`: link as contacts, chat both
//! ways, see delivered and read states and each other's permitted profile fields.

use instaconnect_e2e::Home;
use serde_json::Value;

fn account(phone: &str, name: &str) -> Home {
    Home::with_account(phone, name)
}

#[test]
fn two_nodes_link_chat_both_ways_and_see_delivered_and_read() {
    let asha = account("+919812345678", "Asha");
    let ravi = account("+919812340001", "Ravi");
    ravi.ok(&["profile", "set", "--status", "on the train"]);
    ravi.ok(&["privacy", "set", "status", "contacts"]);

    let mut ravi_node = ravi.start_node();
    let ravi_addr = ravi_node.wait_line("listening on ");
    assert!(ravi_addr.starts_with("/ip4/127.0.0.1/tcp/"), "{ravi_addr}");
    let ravi_events = ravi_node.events();
    let asha_node = asha.start_node_with(&["--peer", &ravi_addr]);
    let asha_events = asha_node.events();

    // Asha links Ravi's number to his device; Ravi sees the request and accepts it.
    asha.ok(&[
        "contacts",
        "add",
        "+919812340001",
        "--name",
        "Ravi",
        "--peer",
        &ravi_node.peer_id,
    ]);
    ravi_events.wait("contact_request", |d| d["phone"] == "+919812345678");
    let reqs = ravi.json(&["contacts", "requests"]);
    assert_eq!(reqs[0]["name"], "Asha");
    ravi.ok(&["contacts", "accept", "+919812345678"]);
    asha_events.wait("contact_accepted", |d| d["phone"] == "+919812340001");
    // Ravi's contact list now has Asha with verified keys.
    let ravi_contacts = ravi.json(&["contacts", "list"]);
    assert_eq!(ravi_contacts[0]["phone"], "+919812345678");
    assert_eq!(ravi_contacts[0]["name"], "Asha");

    let sent = asha.json(&["send", "Ravi", "hello", "from", "Asha"]);
    let id = sent["id"].as_str().unwrap().to_string();
    let got = ravi_events.wait("message_received", |d| d["id"] == id.as_str());
    assert_eq!(got["text"], "hello from Asha");
    assert_eq!(got["from"], "+919812345678");
    asha_events.wait("state_changed", |d| {
        d["id"] == id.as_str() && d["state"] == "Delivered"
    });

    // Ravi opens the conversation: Asha sees "read" (Ravi's receipts go to contacts).
    let h = ravi.json(&["history", "Asha"]);
    assert_eq!(h[0]["text"], "hello from Asha");
    assert_eq!(h[0]["direction"], "in");
    asha_events.wait("state_changed", |d| {
        d["id"] == id.as_str() && d["state"] == "Read"
    });
    let mine = asha.json(&["history", "Ravi"]);
    assert_eq!(mine[0]["state"], "read");

    ravi.ok(&["send", "Asha", "hi Asha!"]);
    asha_events.wait("message_received", |d| d["text"] == "hi Asha!");
    let inbox = asha.json(&["inbox"]);
    assert_eq!(inbox[0]["contact"], "+919812340001");
    assert_eq!(inbox[0]["unread"], 1);
    assert_eq!(inbox[0]["last_message"]["text"], "hi Asha!");
    let conv: Vec<String> = asha
        .json(&["history", "Ravi"])
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            format!(
                "{} {}",
                m["direction"].as_str().unwrap(),
                m["text"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(conv, vec!["out hello from Asha", "in hi Asha!"]);

    // Asha sees what Ravi's privacy lets a contact see: name, phone and status (contacts).
    let nearby: Value = asha.json(&["nearby"]);
    let r = nearby
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["peer"] == ravi_node.peer_id.as_str())
        .expect("ravi is listed");
    assert_eq!(r["connected"], true);
    assert_eq!(r["contact"], "+919812340001");
    assert_eq!(r["profile"]["phone"], "+919812340001");
    assert_eq!(r["profile"]["status"], "on the train");
    assert_eq!(r["profile"]["name"], "Ravi");
}

#[test]
fn a_message_sent_while_the_node_is_down_is_queued_then_delivered() {
    let asha = account("+919812345678", "Asha");
    let ravi = account("+919812340001", "Ravi");
    let mut ravi_node = ravi.start_node();
    let ravi_addr = ravi_node.wait_line("listening on ");
    let ravi_events = ravi_node.events();
    {
        let asha_node = asha.start_node_with(&["--peer", &ravi_addr]);
        let asha_events = asha_node.events();
        asha.link(
            &asha_events,
            "+919812345678",
            &ravi,
            &ravi_events,
            "+919812340001",
            &ravi_node.peer_id,
            "Ravi",
        );
        let _ = asha_node.signal("TERM");
    }
    // Asha's node is down: the CLI queues the message in her store.
    let queued = asha.json(&["send", "+919812340001", "written offline"]);
    assert_eq!(queued["state"], "queued");
    let _asha_node = asha.start_node_with(&["--peer", &ravi_addr]);
    let got = ravi_events.wait("message_received", |_| true);
    assert_eq!(got["text"], "written offline");
}

/// Lines a child process prints, read on a thread.
fn lines_of(out: std::process::ChildStdout) -> std::sync::mpsc::Receiver<String> {
    use std::io::BufRead;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

/// Waits for a line containing `needle`; returns it.
fn wait_for(lines: &std::sync::mpsc::Receiver<String>, needle: &str) -> String {
    loop {
        match lines.recv_timeout(std::time::Duration::from_secs(30)) {
            Ok(l) if l.contains(needle) => return l,
            Ok(_) => {}
            Err(e) => panic!("the chat never printed {needle:?}: {e}"),
        }
    }
}

#[test]
fn interactive_chat_sends_typed_lines_and_shows_incoming_and_states_live() {
    use std::io::Write;
    use std::process::Stdio;

    let asha = account("+919812345678", "Asha");
    let ravi = account("+919812340001", "Ravi");
    asha.ok(&["contacts", "add", "+919812340001", "--name", "Ravi"]);
    // Without the node, chat says what it needs and changes nothing.
    let (code, err) = asha.fail(&["chat", "Ravi"]);
    assert_eq!(code, 1);
    assert!(err.contains("instaconnect run"), "{err}");

    let mut ravi_node = ravi.start_node();
    let ravi_addr = ravi_node.wait_line("listening on ");
    let ravi_events = ravi_node.events();
    let asha_node = asha.start_node_with(&["--peer", &ravi_addr]);
    let asha_events = asha_node.events();
    asha.link(
        &asha_events,
        "+919812345678",
        &ravi,
        &ravi_events,
        "+919812340001",
        &ravi_node.peer_id,
        "Ravi",
    );
    ravi.ok(&["send", "Asha", "before the chat"]);
    asha_events.wait("message_received", |d| d["text"] == "before the chat");

    let mut chat = asha
        .cmd()
        .args(["chat", "Ravi"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the chat");
    let lines = lines_of(chat.stdout.take().expect("stdout"));
    wait_for(&lines, "chat with Ravi (+919812340001)");
    // The backlog is shown.
    wait_for(&lines, "Ravi: before the chat");

    // Incoming while the chat is open shows up live, and is read at once.
    let sent = ravi.json(&["send", "Asha", "live one"]);
    wait_for(&lines, "Ravi: live one");
    ravi_events.wait("state_changed", |d| {
        d["id"] == sent["id"] && d["state"] == "Read"
    });

    // A typed line is sent; its delivery shows up.
    let mut stdin = chat.stdin.take().expect("stdin");
    writeln!(stdin, "typed in the chat").expect("type");
    wait_for(&lines, "me: typed in the chat");
    let got = ravi_events.wait("message_received", |_| true);
    assert_eq!(got["text"], "typed in the chat");
    wait_for(&lines, "[delivered] \"typed in the chat\"");

    // End of input ends the chat cleanly.
    drop(stdin);
    let status = chat.wait().expect("the chat exits");
    assert!(status.success(), "{status:?}");
}
