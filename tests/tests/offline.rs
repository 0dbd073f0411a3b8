//! Store-and-forward through real relays: two `instaconnect relay` processes and two
//! `instaconnect run` nodes on 127.0.0.1.
//!
//! - Offline delivery: B is down; A's 100 messages are accepted by both relays; B starts again
//!   (at a new address A does not know, so only the relays connect them) and gets all 100 once,
//!   in order; A sees them delivered; the relays end up holding nothing.
//! - Deletion: A leaves envelopes on two relays and one relay goes down; `account delete`
//!   purges the reachable one with a valid signed receipt, reports the other and wipes nothing;
//!   `--force` wipes. A forged purge deletes nothing.

use std::time::Duration;

use instaconnect_crypto::{verify_receipt, IdentityKey};
use instaconnect_e2e::relay::RelayProcess;
use instaconnect_e2e::{wait_until, Events, Home, Node, NODE_TIMEOUT};
use instaconnect_net::mailbox_client::MailboxClient;
use instaconnect_wire::mailbox::{Receipt, Receipted};
use serde_json::Value;

const ASHA: &str = "+919812345678";
const RAVI: &str = "+919812340001";
/// Long enough for a hundred messages through two relays on a loaded machine.
const LONG: Duration = Duration::from_secs(120);

struct Relays {
    _dir: tempfile::TempDir,
    r1: RelayProcess,
    r2: RelayProcess,
}

fn two_relays() -> Relays {
    let dir = tempfile::tempdir().expect("temp dir");
    let r1 = RelayProcess::start(&dir.path().join("r1"), &dir.path().join("r1.log"), &[]);
    let r2 = RelayProcess::start(&dir.path().join("r2"), &dir.path().join("r2.log"), &[]);
    Relays { _dir: dir, r1, r2 }
}

fn metric(r: &RelayProcess, name: &str) -> u64 {
    r.metrics().get(name).copied().unwrap_or(0.0) as u64
}

/// The relays a contact opened mailboxes on for us, as `contacts show` reports them.
fn contact_relays(home: &Home, contact: &str) -> Vec<String> {
    home.json(&["contacts", "show", contact])["relays"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// Asha and Ravi, both on the two relays, linked as contacts, each with a mailbox for the
/// other on both relays that the other knows of.
fn linked_pair(relays: &Relays) -> (Home, Node, Events, Home, Node) {
    let asha = Home::with_account(ASHA, "Asha");
    let ravi = Home::with_account(RAVI, "Ravi");
    let relay_args = ["--relay", &relays.r1.addr, "--relay", &relays.r2.addr];
    let mut ravi_node = ravi.start_node_with(&relay_args);
    let ravi_addr = ravi_node.wait_line("listening on ");
    let ravi_events = ravi_node.events();
    let mut asha_args = vec!["--peer", ravi_addr.as_str()];
    asha_args.extend_from_slice(&relay_args);
    let asha_node = asha.start_node_with(&asha_args);
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
    let mut both = vec![relays.r1.peer_id.clone(), relays.r2.peer_id.clone()];
    both.sort();
    for (home, contact) in [(&asha, "Ravi"), (&ravi, ASHA)] {
        wait_until(
            "the contact's mailboxes on both relays",
            NODE_TIMEOUT,
            || {
                let mut r = contact_relays(home, contact);
                r.sort();
                if r == both {
                    Ok(())
                } else {
                    Err(r)
                }
            },
        );
    }
    // One mailbox per contact on each relay: Asha's for Ravi and Ravi's for Asha.
    for r in [&relays.r1, &relays.r2] {
        assert_eq!(
            metric(r, "instaconnect_relay_mailboxes"),
            2,
            "{}",
            r.metrics_text()
        );
    }
    (asha, asha_node, asha_events, ravi, ravi_node)
}

/// Outgoing messages in `home`'s history with `contact`: (text, state, relays).
fn outgoing(home: &Home, contact: &str) -> Vec<(String, String, Option<u64>)> {
    home.json(&["history", contact])
        .as_array()
        .expect("history is an array")
        .iter()
        .filter(|m| m["direction"] == "out")
        .map(|m| {
            (
                m["text"].as_str().unwrap_or_default().to_string(),
                m["state"].as_str().unwrap_or_default().to_string(),
                m["relays"].as_u64(),
            )
        })
        .collect()
}

#[test]
fn a_hundred_messages_to_an_offline_contact_go_through_two_relays_once_in_order() {
    let relays = two_relays();
    let (asha, _asha_node, _asha_events, ravi, ravi_node) = linked_pair(&relays);
    // Ravi reads without sending read receipts, so Asha's last state is "delivered".
    ravi.ok(&["privacy", "set", "receipts", "nobody"]);
    let stopped = ravi_node.signal("TERM");
    assert!(stopped.status.success(), "{}", stopped.log);

    let texts: Vec<String> = (0..100)
        .map(|i| format!("offline message {i:03}"))
        .collect();
    for t in &texts {
        let sent = asha.json(&["send", "Ravi", t]);
        assert!(sent["id"].is_string(), "{sent}");
    }
    // Every one is accepted by both relays.
    let out = wait_until("100 messages accepted by 2 relays", LONG, || {
        let out = outgoing(&asha, "Ravi");
        let relayed = out
            .iter()
            .filter(|(_, s, n)| s == "relayed" && *n == Some(2))
            .count();
        if relayed == 100 {
            Ok(out)
        } else {
            Err(format!(
                "{relayed} relayed; {:?}",
                out.iter().find(|(_, s, n)| s != "relayed" || *n != Some(2))
            ))
        }
    });
    assert_eq!(
        out.iter().map(|(t, _, _)| t.clone()).collect::<Vec<_>>(),
        texts
    );
    let plain = asha.ok(&["history", "Ravi"]);
    assert!(plain.contains("[accepted by 2 relays]"), "{plain}");
    for r in [&relays.r1, &relays.r2] {
        assert_eq!(
            metric(r, "instaconnect_relay_envelopes"),
            100,
            "{}",
            r.metrics_text()
        );
    }

    // Ravi comes back at a new address that Asha does not know: only the relays link them.
    let _ravi_node =
        ravi.start_node_with(&["--relay", &relays.r1.addr, "--relay", &relays.r2.addr]);
    wait_until("Ravi's 100 unread messages", LONG, || {
        let inbox = ravi.json(&["inbox"]);
        match inbox
            .as_array()
            .and_then(|a| a.first())
            .map(|c| c["unread"].clone())
        {
            Some(Value::Number(n)) if n.as_u64() == Some(100) => Ok(()),
            other => Err(other),
        }
    });
    let got: Vec<String> = ravi
        .json(&["history", ASHA])
        .as_array()
        .expect("array")
        .iter()
        .filter(|m| m["direction"] == "in")
        .map(|m| m["text"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(got, texts, "all 100, once each, in the order sent");

    wait_until("Asha sees all 100 delivered", LONG, || {
        let out = outgoing(&asha, "Ravi");
        let delivered = out.iter().filter(|(_, s, _)| s == "delivered").count();
        if delivered == 100 {
            Ok(())
        } else {
            Err(format!("{delivered} delivered"))
        }
    });
    for r in [&relays.r1, &relays.r2] {
        wait_until("the relay to hold nothing", LONG, || {
            match metric(r, "instaconnect_relay_envelopes") {
                0 => Ok(()),
                n => Err(n),
            }
        });
    }
    // Still exactly once after everything settled.
    let again = ravi.json(&["history", ASHA]);
    assert_eq!(
        again
            .as_array()
            .expect("array")
            .iter()
            .filter(|m| m["direction"] == "in")
            .count(),
        100
    );
}

fn unhex<const N: usize>(v: &Value) -> [u8; N] {
    let s = v.as_str().expect("hex string");
    assert_eq!(s.len(), 2 * N, "{s}");
    let mut out = [0u8; N];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).expect("hex");
    }
    out
}

/// Rebuilds a receipt from `account delete --json` and checks its signature and signer.
fn check_receipt(v: &Value, relay_peer: &str) -> Receipted {
    let what = match v["what"].as_str() {
        Some("purged") => Receipted::Purged {
            deletion_hashes: v["detail"]["deletion_hashes"]
                .as_array()
                .expect("hashes")
                .iter()
                .map(unhex::<32>)
                .collect(),
        },
        Some("mailbox_purged") => Receipted::MailboxPurged {
            mailbox: unhex::<32>(&v["detail"]["mailbox"]),
        },
        other => panic!("unexpected receipt {other:?}: {v}"),
    };
    let receipt = Receipt {
        relay: unhex::<32>(&v["relay_key"]),
        at_ms: v["at_ms"].as_u64().expect("at_ms"),
        what: what.clone(),
        signature: unhex::<64>(&v["signature"]),
    };
    let key = IdentityKey::from_bytes(&receipt.relay).expect("relay key");
    assert_eq!(key.peer_id(), relay_peer, "signed by the relay itself");
    verify_receipt(&receipt, Some(&key)).expect("a valid signature");
    what
}

#[test]
fn account_delete_purges_the_reachable_relay_with_a_signed_receipt_and_reports_the_other() {
    let relays = two_relays();
    let (asha, asha_node, _asha_events, _ravi, ravi_node) = linked_pair(&relays);
    let _ = ravi_node.signal("TERM");
    for i in 0..5 {
        asha.ok(&["send", "Ravi", &format!("take me back {i}")]);
    }
    wait_until("5 messages on both relays", LONG, || {
        let out = outgoing(&asha, "Ravi");
        if out.len() == 5 && out.iter().all(|(_, s, n)| s == "relayed" && *n == Some(2)) {
            Ok(())
        } else {
            Err(out)
        }
    });
    for r in [&relays.r1, &relays.r2] {
        assert_eq!(metric(r, "instaconnect_relay_envelopes"), 5);
    }

    // Refused while the node runs, and without a terminal unless --yes.
    let (code, err) = asha.fail(&["account", "delete", "--yes"]);
    assert_eq!(code, 1);
    assert!(err.contains("stop it"), "{err}");
    let stopped = asha_node.signal("TERM");
    assert!(stopped.status.success(), "{}", stopped.log);
    let (code, err) = asha.fail(&["account", "delete"]);
    assert_eq!(code, 2);
    assert!(err.contains("--yes"), "{err}");

    // A forged purge (secrets nobody derived) deletes nothing.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let mut c = MailboxClient::connect(&relays.r1.addr)
            .await
            .expect("connect");
        let forged: Vec<[u8; 32]> = (0..64u8).map(|i| [i.wrapping_mul(37) ^ 0x5a; 32]).collect();
        let _ = c.purge(forged).await;
        c.close().await;
    });
    assert_eq!(metric(&relays.r1, "instaconnect_relay_envelopes"), 5);

    let r2_peer = relays.r2.peer_id.clone();
    let Relays { _dir, r1, r2 } = relays;
    assert!(r2.terminate(), "relay 2 stopped cleanly");

    let out = asha.run(&["account", "delete", "--yes", "--json"]);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(
        out.status.code(),
        Some(1),
        "stdout: {stdout}\nstderr: {stderr}"
    );
    let report: Value = serde_json::from_str(&stdout).expect("JSON report");
    assert_eq!(report["wiped"], false);
    let by_relay = |peer: &str| {
        report["relays"]
            .as_array()
            .expect("relays")
            .iter()
            .find(|r| r["relay"] == peer)
            .cloned()
            .unwrap_or_else(|| panic!("{peer} not in the report: {report}"))
    };
    let good = by_relay(&r1.peer_id);
    assert_eq!(good["confirmed"], true, "{good}");
    let mut purged_hashes = 0;
    let mut mailbox_receipts = 0;
    for x in good["receipts"].as_array().expect("receipts") {
        match check_receipt(x, &r1.peer_id) {
            Receipted::Purged { deletion_hashes } => purged_hashes += deletion_hashes.len(),
            Receipted::MailboxPurged { .. } => mailbox_receipts += 1,
            other => panic!("{other:?}"),
        }
    }
    assert!(purged_hashes >= 5, "{good}");
    assert_eq!(mailbox_receipts, 1, "Asha's own mailbox on relay 1: {good}");
    let bad = by_relay(&r2_peer);
    assert_eq!(bad["confirmed"], false, "{bad}");
    assert_eq!(bad["attempts"], 3, "{bad}");
    assert!(stderr.contains(&r2_peer), "{stderr}");
    assert!(
        stderr.contains("Nothing was wiped") && stderr.contains("--force"),
        "{stderr}"
    );
    // Nothing wiped: the account is still there.
    assert_eq!(asha.json(&["account", "show"])["phone"], ASHA);
    // The reachable relay holds none of Asha's envelopes, and only Ravi's mailbox.
    assert_eq!(
        metric(&r1, "instaconnect_relay_envelopes"),
        0,
        "{}",
        r1.metrics_text()
    );
    assert_eq!(metric(&r1, "instaconnect_relay_mailboxes"), 1);

    // --force wipes anyway, still naming the relay that did not confirm.
    let out = asha.run(&["account", "delete", "--yes", "--force"]);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "stdout: {stdout}\nstderr: {stderr}");
    assert!(
        stdout.contains(&format!("relay {r2_peer}: NOT confirmed")),
        "{stdout}"
    );
    assert!(stderr.contains(&r2_peer), "{stderr}");
    assert!(!asha.data_dir().join("db").exists(), "the database is gone");
    let (_, err) = asha.fail(&["account", "show"]);
    assert!(err.contains("no account"), "{err}");
}
