//! The relay daemon end to end: the real `instaconnect relay` process on 127.0.0.1, driven by
//! the mailbox client over an ephemeral transport identity.
//!
//! - Crash: SIGKILL during 10,000 deposits, several times; every acknowledged deposit is
//!   served after the restarts.
//! - Canary: really sealed envelopes carrying phone numbers, names, texts and the sender's
//!   peer id leave no trace of them in the relay's data dir or its debug log.
//! - Limits: quota, oversize and malformed requests, forged purges and deletes, rate limits
//!   per connection and per IP, TTL expiry; each refused with the right error, changing
//!   nothing, and counted in `/metrics`.
//! - Config errors name the key; `/metrics` is loopback only.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use instaconnect_crypto::{
    deletion_hash, envelope_hash, open_envelope, seal_envelope, Device, EnvelopeContent, Identity,
    MailboxKey, MessageId, PayloadKind,
};
use instaconnect_e2e::relay::RelayProcess;
use instaconnect_e2e::{bin, NODE_TIMEOUT};
use instaconnect_net::mailbox_client::{owner_auth, ClientError, MailboxClient};
use instaconnect_net::RequestId;
use instaconnect_wire::mailbox::{MailboxRequest, MailboxResponse, OwnerOp, Receipted, Refusal};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// A temporary dir with a relay data dir, a log file and a config file.
struct Setup {
    dir: tempfile::TempDir,
}

impl Setup {
    fn new(config: &str) -> Setup {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("relay.toml"), config).expect("write config");
        Setup { dir }
    }
    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }
    fn log(&self) -> PathBuf {
        self.dir.path().join("relay.log")
    }
    fn start(&self) -> RelayProcess {
        let config = self.dir.path().join("relay.toml");
        let config = config.to_str().expect("utf-8 path");
        RelayProcess::start(&self.data(), &self.log(), &["--config", config])
    }
}

/// Envelope `i` of a run: 1 KiB, different for every `i`.
fn envelope(i: usize) -> Vec<u8> {
    let mut e = vec![0u8; 1024];
    for (n, b) in e.iter_mut().enumerate() {
        *b = (n as u8) ^ (i as u8);
    }
    e[..8].copy_from_slice(&(i as u64).to_be_bytes());
    e
}

fn secret(i: usize) -> [u8; 32] {
    let mut s = [7u8; 32];
    s[..8].copy_from_slice(&(i as u64).to_be_bytes());
    s
}

async fn deposit_req(mailbox: [u8; 32], env: Vec<u8>, i: usize) -> MailboxRequest {
    MailboxRequest::Deposit {
        mailbox,
        envelope: env,
        deletion_hash: deletion_hash(&secret(i)),
    }
}

const CRASH_DEPOSITS: usize = 10_000;
const CRASH_KILLS: usize = 4;
const WINDOW: usize = 64;

#[test]
fn killing_the_relay_during_deposits_loses_no_acknowledged_envelope() {
    let setup = Setup::new(
        "[limits]\nmailbox_max_envelopes = 1000000\nrate_burst = 1000000\nrate_per_second = 1000000\n\
         [per_ip]\nrate_burst = 1000000\nrate_per_second = 1000000\n",
    );
    let rt = runtime();
    let key = MailboxKey::generate();
    // seq -> envelope hash, from the signed receipts.
    let mut acked: BTreeMap<u64, [u8; 32]> = BTreeMap::new();
    let mut acked_index = vec![false; CRASH_DEPOSITS];
    let mut todo: VecDeque<usize> = (0..CRASH_DEPOSITS).collect();
    let mut kills = 0;
    for round in 0..=CRASH_KILLS {
        let relay = setup.start();
        let kill_at = (round + 1) * CRASH_DEPOSITS / (CRASH_KILLS + 1);
        let mut relay = Some(relay);
        rt.block_on(async {
            let addr = relay.as_ref().map(|r| r.addr.clone()).unwrap_or_default();
            let mut c = MailboxClient::connect(&addr).await.expect("connect");
            if round == 0 {
                c.create(&key).await.expect("create the mailbox");
            }
            let mut in_flight: HashMap<RequestId, usize> = HashMap::new();
            loop {
                while relay.is_some() && in_flight.len() < WINDOW {
                    let Some(i) = todo.pop_front() else { break };
                    let req = deposit_req(key.id(), envelope(i), i).await;
                    match c.send(&req).await {
                        Ok(id) => {
                            in_flight.insert(id, i);
                        }
                        Err(e) => panic!("send: {e}"),
                    }
                }
                if in_flight.is_empty() {
                    break;
                }
                let (id, answer) = tokio::time::timeout(NODE_TIMEOUT, c.next_answer())
                    .await
                    .expect("an answer within the timeout")
                    .expect("the client runs");
                let Some(i) = in_flight.remove(&id) else {
                    continue;
                };
                match answer.and_then(|a| c.receipt(a)) {
                    Ok(r) => match r.what {
                        Receipted::Deposited {
                            seq,
                            envelope_hash: h,
                            ..
                        } => {
                            assert_eq!(h, envelope_hash(&envelope(i)), "the receipt names it");
                            acked.insert(seq, h);
                            acked_index[i] = true;
                        }
                        other => panic!("not a deposit receipt: {other:?}"),
                    },
                    // Killed under it: deposit it again on the next relay.
                    Err(ClientError::Failed(_)) if relay.is_none() => todo.push_back(i),
                    Err(e) => panic!("deposit {i} failed while the relay ran: {e}"),
                }
                if round < CRASH_KILLS && acked.len() >= kill_at {
                    if let Some(r) = relay.take() {
                        assert!(!in_flight.is_empty(), "killed with deposits in flight");
                        r.kill9();
                        kills += 1;
                    }
                }
            }
            c.close().await;
        });
        if let Some(r) = relay.take() {
            // The last round: no request in flight, killed all the same.
            r.kill9();
            kills += 1;
        }
    }
    assert_eq!(kills, CRASH_KILLS + 1);
    assert!(
        acked_index.iter().all(|a| *a),
        "every envelope acked in the end"
    );

    let relay = setup.start();
    let served = rt.block_on(async {
        let mut c = MailboxClient::connect(&relay.addr).await.expect("connect");
        c.fetch_all(&key).await.expect("fetch all")
    });
    let served: BTreeMap<u64, [u8; 32]> = served
        .iter()
        .map(|e| (e.seq, envelope_hash(&e.envelope)))
        .collect();
    let lost: Vec<u64> = acked
        .iter()
        .filter(|(seq, h)| served.get(seq) != Some(h))
        .map(|(s, _)| *s)
        .collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged envelopes lost (of {}), e.g. seqs {:?}",
        lost.len(),
        acked.len(),
        &lost[..lost.len().min(10)]
    );
    assert!(served.len() >= CRASH_DEPOSITS);
    let m = relay.metrics();
    assert_eq!(m["instaconnect_relay_envelopes"] as usize, served.len());
}

/// The canaries: what a relay must never learn.
struct Canary {
    strings: Vec<String>,
    bytes: Vec<Vec<u8>>,
}

fn find_in_dir(dir: &Path, needle: &[u8], found: &mut Vec<String>) {
    for entry in std::fs::read_dir(dir).expect("read dir") {
        let entry = entry.expect("dir entry");
        let path = entry.path();
        if path.is_dir() {
            find_in_dir(&path, needle, found);
        } else {
            let bytes = std::fs::read(&path).expect("read file");
            if bytes.windows(needle.len()).any(|w| w == needle) {
                found.push(path.display().to_string());
            }
        }
    }
}

#[test]
fn the_relays_data_and_debug_logs_hold_no_canary() {
    let setup = Setup::new("[log]\nlevel = \"debug\"\n");
    let rt = runtime();
    let sender = Identity::generate();
    let sender_device = Device::generate();
    let sender_keys = sender_device.signed_keys(&sender);
    let recipient = Identity::generate();
    let recipient_device = Device::generate();
    let recipient_keys = recipient_device.signed_keys(&recipient);
    let sender_peer = sender.public().peer_id();
    let canary = Canary {
        strings: vec![
            "+919812345678".into(),
            "+14155550123".into(),
            "9812345678".into(),
            "Asha Canarywala".into(),
            "Ravi Testname".into(),
            "meet me at the blue gate at nine".into(),
            "canary-text-7781".into(),
            sender_peer.clone(),
            recipient.public().peer_id(),
        ],
        bytes: vec![
            sender.public().to_bytes().to_vec(),
            recipient.public().to_bytes().to_vec(),
        ],
    };
    let texts: Vec<Vec<u8>> = (0..5)
        .map(|i| {
            format!(
                "from Asha Canarywala (+919812345678, peer {sender_peer}) to Ravi Testname \
                 (+14155550123, peer {}): meet me at the blue gate at nine, canary-text-7781 #{i}",
                recipient.public().peer_id()
            )
            .into_bytes()
        })
        .collect();
    let sealed: Vec<Vec<u8>> = texts
        .iter()
        .enumerate()
        .map(|(i, t)| {
            seal_envelope(
                &sender_device,
                &sender_keys,
                &recipient_keys,
                &EnvelopeContent {
                    message_id: MessageId([i as u8; 16]),
                    timestamp_ms: 1_800_000_000_000,
                    kind: PayloadKind::Pairwise,
                    payload: t.clone(),
                },
            )
            .expect("seal")
        })
        .collect();

    let key = MailboxKey::generate();
    let relay = setup.start();
    rt.block_on(async {
        let mut c = MailboxClient::connect(&relay.addr).await.expect("connect");
        assert_ne!(c.local_peer_id(), sender_peer, "deposits are ephemeral");
        c.create(&key).await.expect("create");
        for (i, e) in sealed.iter().enumerate() {
            c.deposit(key.id(), e.clone(), deletion_hash(&secret(i)))
                .await
                .expect("deposit");
        }
        // The owner reads them (and can open them), deletes one; the sender purges another.
        let got = c.fetch_all(&key).await.expect("fetch");
        assert_eq!(got.len(), sealed.len());
        let opened = open_envelope(&recipient_device, &got[0].envelope).expect("open");
        assert_eq!(
            opened.payload, texts[0],
            "the relay served the real envelope"
        );
        c.delete(&key, vec![got[4].seq]).await.expect("delete");
        c.purge(vec![secret(3)]).await.expect("purge");
        c.close().await;
    });
    assert!(relay.terminate(), "a clean exit on SIGTERM");

    let log = std::fs::read(setup.log()).expect("the log");
    assert!(
        String::from_utf8_lossy(&log).contains("DEBUG"),
        "the relay logged at debug level"
    );
    let mut needles: Vec<Vec<u8>> = canary
        .strings
        .iter()
        .map(|s| s.as_bytes().to_vec())
        .collect();
    needles.extend(canary.bytes.iter().cloned());

    // The search finds a canary where it is: the plaintext, written to a control dir.
    let control = setup.dir.path().join("control");
    std::fs::create_dir(&control).expect("control dir");
    std::fs::write(control.join("plain"), &texts[0]).expect("write control");
    for n in &needles[..needles.len() - 2] {
        let mut found = Vec::new();
        find_in_dir(&control, n, &mut found);
        assert_eq!(found.len(), 1, "the search works");
    }

    for n in &needles {
        let mut found = Vec::new();
        find_in_dir(&setup.data(), n, &mut found);
        if log.windows(n.len()).any(|w| w == n.as_slice()) {
            found.push("the log".into());
        }
        assert!(
            found.is_empty(),
            "canary {:?} found in {found:?}",
            String::from_utf8_lossy(n)
        );
    }

    // And the envelopes are still there after the restart (the data dir is the real one).
    let relay = setup.start();
    rt.block_on(async {
        let mut c = MailboxClient::connect(&relay.addr).await.expect("connect");
        assert_eq!(c.fetch_all(&key).await.expect("fetch").len(), 3);
    });
}

fn refused(r: Result<impl std::fmt::Debug, ClientError>) -> Refusal {
    match r {
        Err(ClientError::Refused(why)) => why,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn quota_oversize_malformed_and_forged_requests_change_nothing() {
    let setup = Setup::new("[limits]\nmailbox_max_envelopes = 3\nmax_envelope_bytes = 1024\n");
    let rt = runtime();
    let relay = setup.start();
    let key = MailboxKey::generate();
    let stranger = MailboxKey::generate();
    rt.block_on(async {
        let mut c = MailboxClient::connect(&relay.addr).await.expect("connect");
        let created = c.create(&key).await.expect("create");
        assert_eq!(created.what, Receipted::Created { mailbox: key.id() });
        for i in 0..3 {
            let r = c
                .deposit(key.id(), envelope(i), deletion_hash(&secret(i)))
                .await
                .expect("deposit");
            assert!(matches!(r.what, Receipted::Deposited { seq, .. } if seq == i as u64 + 1));
        }
        // Over quota, oversize for this relay, oversize for the protocol, malformed, and a
        // mailbox that does not exist.
        let full = c
            .deposit(key.id(), envelope(3), deletion_hash(&secret(3)))
            .await;
        assert_eq!(refused(full), Refusal::MailboxFull);
        let big = c.deposit(key.id(), vec![1; 1025], [0; 32]).await;
        assert_eq!(refused(big), Refusal::TooLarge);
        let huge = c.deposit(key.id(), vec![1; 64 * 1024 + 1], [0; 32]).await;
        assert_eq!(refused(huge), Refusal::TooLarge);
        let id = c
            .send_frame(vec![1, 0, 0xff, 0xff, 0xff])
            .await
            .expect("send");
        assert_eq!(
            c.wait_for(id).await.expect("answer"),
            MailboxResponse::Malformed
        );
        let nowhere = c.deposit(stranger.id(), envelope(9), [0; 32]).await;
        assert_eq!(refused(nowhere), Refusal::UnknownMailbox);

        // Forged owner requests: signed by another key, or replayed.
        let forged = |op| owner_auth(&stranger, op).expect("sign");
        let a = c
            .call(&MailboxRequest::PurgeMailbox {
                mailbox: key.id(),
                auth: forged(OwnerOp::PurgeMailbox),
            })
            .await;
        assert_eq!(refused(a.and_then(|a| c.receipt(a))), Refusal::BadSignature);
        let seqs = vec![1, 2, 3];
        let a = c
            .call(&MailboxRequest::Delete {
                mailbox: key.id(),
                seqs: seqs.clone(),
                auth: forged(OwnerOp::Delete { seqs: &seqs }),
            })
            .await;
        assert_eq!(refused(a.and_then(|a| c.receipt(a))), Refusal::BadSignature);
        let fetch_auth = owner_auth(
            &key,
            OwnerOp::Fetch {
                after: 0,
                limit: 10,
            },
        )
        .expect("sign");
        let fetch = MailboxRequest::Fetch {
            mailbox: key.id(),
            after: 0,
            limit: 10,
            auth: fetch_auth,
        };
        assert!(matches!(
            c.call(&fetch).await.expect("fetch"),
            MailboxResponse::Envelopes { ref items, .. } if items.len() == 3
        ));
        assert_eq!(
            c.call(&fetch).await.expect("replayed fetch"),
            MailboxResponse::Refused(Refusal::Stale),
            "a replayed request is refused"
        );
        // The owner's own signature, but over another operation.
        let a = c
            .call(&MailboxRequest::PurgeMailbox {
                mailbox: key.id(),
                auth: owner_auth(&key, OwnerOp::Delete { seqs: &seqs }).expect("sign"),
            })
            .await;
        assert_eq!(refused(a.and_then(|a| c.receipt(a))), Refusal::BadSignature);
        // A purge revealing wrong secrets: a receipt for those hashes, and nothing deleted.
        let r = c.purge(vec![[9; 32], secret(77)]).await.expect("purge");
        assert!(matches!(r.what, Receipted::Purged { .. }));
        let held = c.fetch_all(&key).await.expect("fetch");
        assert_eq!(
            held.iter().map(|e| e.seq).collect::<Vec<_>>(),
            vec![1, 2, 3],
            "nothing changed"
        );
        assert_eq!(held[0].envelope, envelope(0));

        // The real thing works: the depositor purges #0, the owner deletes #1.
        let r = c.purge(vec![secret(0)]).await.expect("purge");
        assert_eq!(
            r.what,
            Receipted::Purged {
                deletion_hashes: vec![deletion_hash(&secret(0))]
            }
        );
        c.delete(&key, vec![2]).await.expect("delete");
        let held = c.fetch_all(&key).await.expect("fetch");
        assert_eq!(held.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![3]);

        // A subscribed owner hears of a new deposit without polling.
        let mut owner = MailboxClient::connect(&relay.addr).await.expect("connect");
        owner.subscribe(&[&key]).await.expect("subscribe");
        c.deposit(key.id(), envelope(4), deletion_hash(&secret(4)))
            .await
            .expect("deposit");
        let told = owner
            .next_notification(NODE_TIMEOUT)
            .await
            .expect("a notification");
        assert_eq!(told, key.id());
    });

    let m = relay.metrics();
    let get = |k: &str| m.get(k).copied().unwrap_or(-1.0) as i64;
    let rejected = |r: &str| {
        get(&format!(
            "instaconnect_relay_rejections_total{{reason=\"{r}\"}}"
        ))
    };
    assert_eq!(get("instaconnect_relay_deposits_total"), 4, "{m:?}");
    assert_eq!(get("instaconnect_relay_envelopes"), 2);
    assert_eq!(get("instaconnect_relay_bytes"), 2 * 1024);
    assert_eq!(get("instaconnect_relay_mailboxes"), 1);
    assert_eq!(get("instaconnect_relay_purges_total"), 2);
    assert_eq!(get("instaconnect_relay_deletes_total"), 1);
    assert_eq!(rejected("mailbox_full"), 1);
    assert_eq!(rejected("too_large"), 2);
    assert_eq!(rejected("malformed"), 1);
    assert_eq!(rejected("unknown_mailbox"), 1);
    assert_eq!(rejected("bad_signature"), 3);
    assert_eq!(rejected("stale"), 1);
    assert_eq!(rejected("rate_limited"), 0);
    assert_eq!(get("instaconnect_relay_fetches_total"), 3);
}

/// Sends `n` deposits at once on `c`; returns how many were accepted (the rest must be
/// refused as rate limited).
async fn burst(c: &mut MailboxClient, mailbox: [u8; 32], n: usize, tag: usize) -> usize {
    let mut ids = Vec::new();
    for i in 0..n {
        let req = deposit_req(mailbox, envelope(tag + i), tag + i).await;
        ids.push(c.send(&req).await.expect("send"));
    }
    let mut accepted = 0;
    for id in ids {
        match c.wait_for(id).await.expect("answer") {
            MailboxResponse::Receipt(_) => accepted += 1,
            MailboxResponse::Refused(Refusal::RateLimited) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    accepted
}

#[test]
fn rate_limits_hold_per_connection_and_per_ip() {
    let setup = Setup::new(
        "[limits]\nrate_burst = 5\nrate_per_second = 1\n[per_ip]\nrate_burst = 14\nrate_per_second = 1\n",
    );
    let rt = runtime();
    let relay = setup.start();
    let key = MailboxKey::generate();
    let (a, b, c) = rt.block_on(async {
        let mut owner = MailboxClient::connect(&relay.addr).await.expect("connect");
        owner.create(&key).await.expect("create");
        // One connection: its burst of 5 passes, the rest is refused.
        let mut one = MailboxClient::connect(&relay.addr).await.expect("connect");
        let a = burst(&mut one, key.id(), 10, 0).await;
        // Another connection from the same IP: a fresh connection bucket, and the IP's
        // (14 - 1 - 10 = 3 left) refuses most of it.
        let mut two = MailboxClient::connect(&relay.addr).await.expect("connect");
        let b = burst(&mut two, key.id(), 10, 100).await;
        let mut three = MailboxClient::connect(&relay.addr).await.expect("connect");
        let c = burst(&mut three, key.id(), 10, 200).await;
        // The owner is on the same IP: refused too, for now.
        assert_eq!(refused(owner.fetch_all(&key).await), Refusal::RateLimited);
        (a, b, c)
    });
    assert!((5..=7).contains(&a), "first connection: {a} of 10 accepted");
    assert!(b <= 5, "second connection: {b} of 10 accepted");
    assert!(
        c <= 2,
        "third connection: {c} of 10 accepted (the IP's budget is spent)"
    );
    let m = relay.metrics();
    assert_eq!(
        m["instaconnect_relay_deposits_total"] as usize,
        a + b + c,
        "{m:?}"
    );
    assert_eq!(m["instaconnect_relay_envelopes"] as usize, a + b + c);
    assert_eq!(
        m["instaconnect_relay_rejections_total{reason=\"rate_limited\"}"] as usize,
        30 - (a + b + c) + 1,
        "every refused deposit, and the owner's fetch"
    );
}

#[test]
fn envelopes_past_their_ttl_are_removed() {
    let setup = Setup::new("[limits]\nttl_ms = 1500\n");
    let rt = runtime();
    let relay = setup.start();
    let key = MailboxKey::generate();
    rt.block_on(async {
        let mut c = MailboxClient::connect(&relay.addr).await.expect("connect");
        c.create(&key).await.expect("create");
        for i in 0..3 {
            c.deposit(key.id(), envelope(i), deletion_hash(&secret(i)))
                .await
                .expect("deposit");
        }
        assert_eq!(
            c.fetch_all(&key).await.expect("fetch").len(),
            3,
            "kept until the TTL"
        );
    });
    // Wait for the condition (the relay's own timer removes them), with a timeout.
    let deadline = Instant::now() + NODE_TIMEOUT;
    loop {
        let m = relay.metrics();
        if m["instaconnect_relay_expired_total"] as u64 == 3 {
            assert_eq!(m["instaconnect_relay_envelopes"] as u64, 0);
            assert_eq!(m["instaconnect_relay_bytes"] as u64, 0);
            break;
        }
        assert!(Instant::now() < deadline, "not expired: {m:?}");
        std::thread::park_timeout(Duration::from_millis(100));
    }
    rt.block_on(async {
        let mut c = MailboxClient::connect(&relay.addr).await.expect("connect");
        assert!(c.fetch_all(&key).await.expect("fetch").is_empty());
    });
}

#[test]
fn bad_relay_configs_and_a_public_metrics_address_are_refused_naming_the_key() {
    let dir = tempfile::tempdir().expect("temp dir");
    let run = |args: &[&str]| {
        let out = std::process::Command::new(bin())
            .arg("relay")
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .args(args)
            .output()
            .expect("run relay");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    for (text, key) in [
        ("[limits]\nttl_ms = 0\n", "limits.ttl_ms"),
        ("[limits]\nttl = 5\n", "unknown field `ttl`"),
        ("[limits]\nrate_burst = -1\n", "rate_burst"),
        ("[metrics]\nlisten = \"0.0.0.0:9464\"\n", "metrics.listen"),
        ("[network]\nlisten = [\"/ip4/1.2.3\"]\n", "network.listen"),
    ] {
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, text).expect("write");
        let (code, err) = run(&["--config", path.to_str().unwrap()]);
        assert_eq!(code, Some(2), "{text}: {err}");
        assert!(err.contains(key), "{text}: {err}");
    }
    let (code, err) = run(&["--metrics", "0.0.0.0:9464"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("loopback"), "{err}");
    // The shipped config loads.
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/relay.toml");
    let (code, err) = run(&[
        "--config",
        shipped.to_str().unwrap(),
        "--listen",
        "/ip4/127.0.0.1/tcp/notaport",
    ]);
    assert_eq!(code, Some(2));
    assert!(
        err.contains("--listen"),
        "flags are checked after the file: {err}"
    );
}
