//! `instaconnect account delete [--force] [--yes]`: take back what the account left on relays,
//! then wipe the data dir.
//!
//! Runs only with the node stopped (the node holds the database). Steps:
//! 1. Ask for confirmation on a terminal (the phone number or `delete`); without a terminal
//!    only `--yes` confirms.
//! 2. From the store, per relay: the deletion secrets of every envelope we left there (each
//!    [`DepositRecord`], plus every undelivered text for every mailbox its recipient announced:
//!    an envelope may be held by a relay whose receipt never came back; unknown hashes are
//!    harmless), and the owner keys of our own mailboxes there.
//! 3. Per relay, over a fresh ephemeral identity ([`MailboxClient`]): purge the secrets (in
//!    chunks of [`MAX_PURGE_SECRETS`]) and every mailbox. Each receipt must carry a valid
//!    signature of that relay and cover all that was asked (a purge receipt every hash sent, a
//!    mailbox receipt that mailbox). A relay that does not confirm is retried
//!    ([`ATTEMPTS`] attempts, [`RETRY_BASE`] doubling in between).
//! 4. Print every receipt (relay, what it confirms, time, signature) and every relay that did
//!    not confirm. If one did not: without `--force`, fail and wipe nothing; with `--force`,
//!    wipe anyway.
//! 5. Wipe: the database, the control file and anything else of the account in the data dir.
//!
//! Nothing goes to a relay beyond what the mailbox protocol carries: secrets that only
//! identify envelopes, signed requests on mailboxes, over an identity made for this run.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, IsTerminal, Write};
use std::time::Duration;

use anyhow::{anyhow, Context};
use instaconnect_crypto::{chunk_deposit_id, deletion_hash, deposit_secret, MailboxKey};
use instaconnect_net::mailbox_client::{ClientError, MailboxClient};
use instaconnect_store::{Store, StoreError};
use instaconnect_wire::mailbox::{Receipt, Receipted, Refusal, MAX_PURGE_SECRETS};
use instaconnect_wire::records::{DepositRecord, OutboxPayload};
use serde_json::{json, Value};

use crate::home::Home;
use crate::output::{time, Out};
use crate::{usage, Failure};

/// Attempts per relay before it is reported as not confirming.
pub const ATTEMPTS: u32 = 3;
/// Wait before the second attempt; doubles before each further one.
pub const RETRY_BASE: Duration = Duration::from_secs(1);
/// How long one attempt at one relay may take.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(30);

/// What the account left on one relay.
#[derive(Default)]
struct RelayWork {
    addrs: Vec<String>,
    /// Deletion secrets not yet confirmed purged.
    secrets: BTreeSet<[u8; 32]>,
    /// Our mailboxes there not yet confirmed purged: (key, whether the relay confirmed
    /// creating it).
    mailboxes: Vec<(MailboxKey, bool)>,
}

/// One relay's outcome.
struct RelayResult {
    relay: String,
    receipts: Vec<Receipt>,
    /// Mailboxes the relay says it does not know (nothing to purge; no receipt exists).
    unknown_mailboxes: Vec<[u8; 32]>,
    /// Why the relay did not confirm everything, if it did not.
    error: Option<String>,
    attempts: u32,
}

pub fn run(home: &Home, force: bool, yes: bool, json: bool, out: &mut Out) -> Result<u8, Failure> {
    if crate::client::running_node(home)?.is_some() {
        return Err(Failure::Failed(anyhow!(
            "the node for {} is running; stop it first (Ctrl-C, or kill -TERM its pid from {}), then run `instaconnect account delete` again",
            home.dir.display(),
            home.control_path().display()
        )));
    }
    let store = match home.open_existing() {
        Ok(s) => s,
        Err(Failure::Failed(e)) => {
            return Err(match e.downcast_ref::<StoreError>() {
                Some(StoreError::Locked { .. }) => Failure::Failed(anyhow!(
                    "the database in {} is in use by another process (a running node?); stop it, then try again",
                    home.dir.display()
                )),
                _ => Failure::Failed(e),
            })
        }
        Err(e) => return Err(e),
    };
    let account = store
        .account()?
        .ok_or_else(|| Failure::Failed(anyhow!("no account in {}", home.dir.display())))?;
    confirm(&account.phone, yes)?;

    let work = collect(&store, account.identity_secret.expose())?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let results = runtime.block_on(purge_all(work));
    runtime.shutdown_timeout(Duration::from_secs(2));

    let unconfirmed: Vec<&RelayResult> = results.iter().filter(|r| r.error.is_some()).collect();
    let wipe = unconfirmed.is_empty() || force;
    print_results(&results, wipe, json, out)?;
    if !wipe {
        let names: Vec<&str> = unconfirmed.iter().map(|r| r.relay.as_str()).collect();
        return Err(Failure::Failed(anyhow!(
            "{} relay(s) did not confirm the deletion: {}. Nothing was wiped: the account and its data are still here. Try again later, or run `instaconnect account delete --force` to delete the account anyway (what those relays hold stays there until it expires)",
            names.len(),
            names.join(", ")
        )));
    }
    drop(store);
    wipe_data_dir(home)?;
    if !json {
        out.line(format!(
            "account {} deleted; {} wiped",
            account.phone,
            home.dir.display()
        ));
    }
    if !unconfirmed.is_empty() {
        out.note(format!(
            "warning: deleted anyway (--force); {} relay(s) did not confirm: {}",
            unconfirmed.len(),
            unconfirmed
                .iter()
                .map(|r| r.relay.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    Ok(0)
}

/// On a terminal, the user types the phone number or `delete`; elsewhere `--yes` is needed.
fn confirm(phone: &str, yes: bool) -> Result<(), Failure> {
    if yes {
        return Ok(());
    }
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        return Err(usage(anyhow!(
            "account delete needs confirmation: run it in a terminal, or pass --yes"
        )));
    }
    let mut err = std::io::stderr();
    let _ = write!(
        err,
        "This deletes the account {phone}: its undelivered messages and mailboxes on relays, then every contact, message and key on this device. It cannot be undone.\nType the phone number or \"delete\" to confirm: "
    );
    let _ = err.flush();
    let mut line = String::new();
    stdin
        .lock()
        .read_line(&mut line)
        .context("cannot read the confirmation")?;
    let typed = line.trim();
    if typed == phone || typed == "delete" {
        Ok(())
    } else {
        Err(usage(anyhow!("not confirmed; nothing was deleted")))
    }
}

/// What to purge on each relay, from the store.
fn collect(
    store: &dyn Store,
    identity_secret: &[u8],
) -> Result<BTreeMap<String, RelayWork>, Failure> {
    let mut work: BTreeMap<String, RelayWork> = BTreeMap::new();
    fn at<'a>(
        work: &'a mut BTreeMap<String, RelayWork>,
        relay: &str,
        addrs: &[String],
    ) -> &'a mut RelayWork {
        let w = work.entry(relay.to_string()).or_default();
        for a in addrs {
            if !w.addrs.contains(a) {
                w.addrs.push(a.clone());
            }
        }
        w
    }
    for d in store.deposits()? {
        let DepositRecord {
            id,
            relay,
            addrs,
            mailbox,
            ..
        } = d;
        at(&mut work, &relay, &addrs).secrets.insert(deposit_secret(
            identity_secret,
            &id,
            &mailbox,
        ));
    }
    let contact_boxes = store.contact_mailboxes()?;
    for entry in store.outbox()? {
        if !matches!(entry.payload, OutboxPayload::Text { .. }) {
            continue;
        }
        let Some(contact) = store.contact_by_peer(&entry.peer_id)? else {
            continue;
        };
        let Some(boxes) = contact_boxes.iter().find(|c| c.phone == contact.phone) else {
            continue;
        };
        for b in &boxes.boxes {
            at(&mut work, &b.relay, &b.addrs)
                .secrets
                .insert(deposit_secret(identity_secret, &entry.id, &b.mailbox));
        }
    }
    // Chunks of attachments left in contacts' mailboxes (each went to one of them; a secret
    // for the others purges nothing).
    for up in store.uploads()? {
        let Some(boxes) = contact_boxes.iter().find(|c| c.phone == up.peer) else {
            continue;
        };
        for index in (0..up.held.len() * 8).filter(|&i| up.has(i)) {
            let chunk = chunk_deposit_id(&up.id, index as u32);
            for b in &boxes.boxes {
                at(&mut work, &b.relay, &b.addrs)
                    .secrets
                    .insert(deposit_secret(identity_secret, &chunk, &b.mailbox));
            }
        }
    }
    for own in store.own_mailboxes()? {
        let key = MailboxKey::from_secret_bytes(own.key.expose())
            .map_err(|e| Failure::Failed(anyhow!("a stored mailbox key is unreadable: {e}")))?;
        at(&mut work, &own.relay, &own.addrs)
            .mailboxes
            .push((key, own.created));
    }
    Ok(work)
}

async fn purge_all(work: BTreeMap<String, RelayWork>) -> Vec<RelayResult> {
    // Relays are independent: purge them all at once.
    let tasks: Vec<_> = work
        .into_iter()
        .map(|(relay, w)| tokio::spawn(purge_relay(relay, w)))
        .collect();
    let mut results = Vec::with_capacity(tasks.len());
    for t in tasks {
        match t.await {
            Ok(r) => results.push(r),
            Err(e) => tracing::error!("relay purge task failed: {e}"),
        }
    }
    results
}

/// Purges everything on one relay, retrying what is left after a failure.
async fn purge_relay(relay: String, mut work: RelayWork) -> RelayResult {
    let mut result = RelayResult {
        relay: relay.clone(),
        receipts: Vec::new(),
        unknown_mailboxes: Vec::new(),
        error: None,
        attempts: 0,
    };
    let mut delay = RETRY_BASE;
    loop {
        result.attempts += 1;
        let attempt =
            tokio::time::timeout(ATTEMPT_TIMEOUT, purge_once(&relay, &mut work, &mut result))
                .await
                .unwrap_or_else(|_| Err("no answer within the timeout".to_string()));
        match attempt {
            Ok(()) => {
                result.error = None;
                return result;
            }
            Err(e) => {
                result.error = Some(e);
                if result.attempts >= ATTEMPTS {
                    return result;
                }
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
        }
    }
}

/// `addr` with `/p2p/<relay>` at its end.
fn with_peer(addr: &str, relay: &str) -> String {
    if addr.contains("/p2p/") {
        addr.to_string()
    } else {
        format!("{}/p2p/{relay}", addr.trim_end_matches('/'))
    }
}

/// One attempt: connect (trying each address), purge the secrets left, then the mailboxes
/// left. Confirmed parts are taken out of `work`, so a retry does only the rest.
async fn purge_once(
    relay: &str,
    work: &mut RelayWork,
    result: &mut RelayResult,
) -> Result<(), String> {
    if work.addrs.is_empty() {
        return Err("no address known for this relay".to_string());
    }
    let mut client = None;
    let mut errors = Vec::new();
    for a in &work.addrs {
        match MailboxClient::connect(&with_peer(a, relay)).await {
            Ok(c) => {
                client = Some(c);
                break;
            }
            Err(e) => errors.push(format!("{a}: {e}")),
        }
    }
    let Some(mut client) = client else {
        return Err(format!("cannot connect ({})", errors.join("; ")));
    };
    let outcome = purge_with(&mut client, work, result).await;
    client.close().await;
    outcome
}

async fn purge_with(
    client: &mut MailboxClient,
    work: &mut RelayWork,
    result: &mut RelayResult,
) -> Result<(), String> {
    while !work.secrets.is_empty() {
        let chunk: Vec<[u8; 32]> = work
            .secrets
            .iter()
            .take(MAX_PURGE_SECRETS)
            .copied()
            .collect();
        let receipt = client
            .purge(chunk.clone())
            .await
            .map_err(|e| describe(&e))?;
        let Receipted::Purged { deletion_hashes } = &receipt.what else {
            return Err(format!(
                "the purge receipt certifies something else: {:?}",
                receipt.what
            ));
        };
        let covered: BTreeSet<&[u8; 32]> = deletion_hashes.iter().collect();
        let missing = chunk
            .iter()
            .filter(|s| !covered.contains(&deletion_hash(s)))
            .count();
        if missing > 0 {
            return Err(format!(
                "its purge receipt leaves out {missing} of {} envelopes",
                chunk.len()
            ));
        }
        for s in &chunk {
            work.secrets.remove(s);
        }
        result.receipts.push(receipt);
    }
    while let Some((key, created)) = work.mailboxes.first() {
        match client.purge_mailbox(key).await {
            Ok(receipt) => {
                match &receipt.what {
                    Receipted::MailboxPurged { mailbox } if *mailbox == key.id() => {}
                    other => {
                        return Err(format!(
                            "the mailbox receipt certifies something else: {other:?}"
                        ))
                    }
                }
                result.receipts.push(receipt);
            }
            // Never created there, or gone already: nothing to purge.
            Err(ClientError::Refused(Refusal::UnknownMailbox)) => {
                if *created {
                    result.unknown_mailboxes.push(key.id());
                }
            }
            Err(e) => return Err(describe(&e)),
        }
        work.mailboxes.remove(0);
    }
    Ok(())
}

fn describe(e: &ClientError) -> String {
    match e {
        ClientError::Refused(why) => format!("the relay refused: {why:?}"),
        ClientError::Receipt(why) => format!("bad receipt: {why}"),
        other => other.to_string(),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn receipt_json(relay: &str, r: &Receipt) -> Value {
    let (what, detail) = match &r.what {
        Receipted::Purged { deletion_hashes } => (
            "purged",
            json!({"deletion_hashes": deletion_hashes.iter().map(|h| hex(h)).collect::<Vec<_>>()}),
        ),
        Receipted::MailboxPurged { mailbox } => {
            ("mailbox_purged", json!({"mailbox": hex(mailbox)}))
        }
        Receipted::Created { mailbox } => ("created", json!({"mailbox": hex(mailbox)})),
        Receipted::Deposited { mailbox, seq, .. } => {
            ("deposited", json!({"mailbox": hex(mailbox), "seq": seq}))
        }
        Receipted::Deleted { mailbox, seqs } => {
            ("deleted", json!({"mailbox": hex(mailbox), "seqs": seqs}))
        }
        Receipted::DepositedBatch { items } => (
            "deposited_batch",
            json!({"items": items.iter().map(|i| json!({"mailbox": hex(&i.mailbox), "seq": i.seq})).collect::<Vec<_>>()}),
        ),
        Receipted::DeletedRange {
            mailbox,
            after,
            through,
        } => (
            "deleted_range",
            json!({"mailbox": hex(mailbox), "after": after, "through": through}),
        ),
    };
    json!({
        "relay": relay,
        "relay_key": hex(&r.relay),
        "what": what,
        "detail": detail,
        "at_ms": r.at_ms,
        "signature": hex(&r.signature),
    })
}

fn print_results(
    results: &[RelayResult],
    wiped: bool,
    json: bool,
    out: &mut Out,
) -> Result<(), Failure> {
    if json {
        let relays: Vec<Value> = results
            .iter()
            .map(|r| {
                json!({
                    "relay": r.relay,
                    "confirmed": r.error.is_none(),
                    "error": r.error,
                    "attempts": r.attempts,
                    "receipts": r.receipts.iter().map(|x| receipt_json(&r.relay, x)).collect::<Vec<_>>(),
                    "unknown_mailboxes": r.unknown_mailboxes.iter().map(|m| hex(m)).collect::<Vec<_>>(),
                })
            })
            .collect();
        out.json(&json!({"relays": relays, "wiped": wiped}))?;
        return Ok(());
    }
    if results.is_empty() {
        out.line("nothing on any relay to take back");
    }
    for r in results {
        match &r.error {
            None => out.line(format!("relay {}: confirmed", r.relay)),
            Some(e) => out.line(format!(
                "relay {}: NOT confirmed after {} attempt(s): {e}",
                r.relay, r.attempts
            )),
        }
        for x in &r.receipts {
            let what = match &x.what {
                Receipted::Purged { deletion_hashes } => {
                    format!("purged {} envelope(s)", deletion_hashes.len())
                }
                Receipted::MailboxPurged { mailbox } => {
                    format!("purged mailbox {}", hex(mailbox))
                }
                other => format!("{other:?}"),
            };
            out.line(format!(
                "  receipt: {what} at {} signed {}",
                time(x.at_ms),
                hex(&x.signature)
            ));
        }
        for m in &r.unknown_mailboxes {
            out.line(format!(
                "  mailbox {} was not there (nothing to purge)",
                hex(m)
            ));
        }
    }
    Ok(())
}

/// Removes the account's files from the data dir: the database, the control file (and its
/// temporary), then the dir itself if nothing else is left in it.
fn wipe_data_dir(home: &Home) -> Result<(), Failure> {
    let db = home.db_path();
    if db.exists() {
        std::fs::remove_dir_all(&db)
            .with_context(|| format!("cannot remove the database {}", db.display()))?;
    }
    let control = home.control_path();
    let tmp = home.dir.join(".control.json.tmp");
    for f in [control, tmp] {
        match std::fs::remove_file(&f) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(Failure::Failed(anyhow!(
                    "cannot remove {}: {e}",
                    f.display()
                )))
            }
        }
    }
    // Only if empty: the data dir may be one the user chose and keeps other things in.
    let _ = std::fs::remove_dir(&home.dir);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relay_addresses_get_the_relay_peer_id() {
        let p = "12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN";
        assert_eq!(
            with_peer("/ip4/10.0.0.1/tcp/4001", p),
            format!("/ip4/10.0.0.1/tcp/4001/p2p/{p}")
        );
        let full = format!("/ip4/10.0.0.1/tcp/4001/p2p/{p}");
        assert_eq!(with_peer(&full, p), full);
    }

    #[test]
    fn chunks_of_attachments_left_in_relays_are_purged_too() {
        use instaconnect_store::{MemStore, Op};
        use instaconnect_wire::proto::MailboxAddress;
        use instaconnect_wire::records::{ContactMailboxes, UploadRecord};

        let secret = [9u8; 32];
        let store = MemStore::new();
        store
            .apply(vec![
                Op::PutContactMailboxes(ContactMailboxes {
                    phone: "+919812340001".into(),
                    boxes: vec![MailboxAddress {
                        relay: "r1".into(),
                        addrs: vec!["/a1".into()],
                        mailbox: [1; 32],
                    }],
                }),
                // Chunks 0 and 2 are held by the relay.
                Op::PutUpload(UploadRecord {
                    id: [4; 16],
                    peer: "+919812340001".into(),
                    held: vec![0b101],
                }),
            ])
            .unwrap();
        let work = collect(&store, &secret).unwrap();
        let chunk = |i| deposit_secret(&secret, &chunk_deposit_id(&[4; 16], i), &[1; 32]);
        let want: BTreeSet<[u8; 32]> = [chunk(0), chunk(2)].into();
        assert_eq!(work["r1"].secrets, want);
    }

    #[test]
    fn the_store_yields_secrets_per_relay_for_deposits_and_undelivered_texts() {
        use instaconnect_store::{MemStore, Op};
        use instaconnect_wire::proto::MailboxAddress;
        use instaconnect_wire::records::{
            ContactMailboxes, ContactRecord, OutboxEntry, OwnMailbox,
        };
        use instaconnect_wire::SecretBytes;

        let secret = [9u8; 32];
        let store = MemStore::new();
        let mut ravi = ContactRecord::new("+919812340001", 1);
        ravi.peer_id = Some("peer-ravi".into());
        let own_key = MailboxKey::from_secret_bytes(&[5u8; 32]).unwrap();
        store
            .apply(vec![
                Op::PutContact(ravi),
                Op::PutContactMailboxes(ContactMailboxes {
                    phone: "+919812340001".into(),
                    boxes: vec![
                        MailboxAddress {
                            relay: "r1".into(),
                            addrs: vec!["/a1".into()],
                            mailbox: [1; 32],
                        },
                        MailboxAddress {
                            relay: "r2".into(),
                            addrs: vec!["/a2".into()],
                            mailbox: [2; 32],
                        },
                    ],
                }),
                // Deposited on r1 and receipted.
                Op::PutDeposit(DepositRecord {
                    id: [7; 16],
                    relay: "r1".into(),
                    addrs: vec!["/a1".into()],
                    mailbox: [1; 32],
                    seq: 1,
                }),
                // Undelivered: may be on both relays.
                Op::PutOutbox(OutboxEntry {
                    id: [8; 16],
                    peer_id: "peer-ravi".into(),
                    payload: OutboxPayload::Text { n: 2 },
                    attempts: 0,
                    next_attempt_ms: 0,
                }),
                // Not a text: nothing was deposited for it.
                Op::PutOutbox(OutboxEntry {
                    id: [6; 16],
                    peer_id: "peer-ravi".into(),
                    payload: OutboxPayload::Payload(vec![1]),
                    attempts: 0,
                    next_attempt_ms: 0,
                }),
                Op::PutOwnMailbox(OwnMailbox {
                    phone: "+919812340001".into(),
                    relay: "r3".into(),
                    addrs: vec!["/a3".into()],
                    key: SecretBytes::new(own_key.secret_bytes().to_vec()),
                    mailbox: own_key.id(),
                    created: true,
                }),
            ])
            .unwrap();
        let work = collect(&store, &secret).unwrap();
        let r1 = &work["r1"];
        let want: BTreeSet<[u8; 32]> = [
            deposit_secret(&secret, &[7; 16], &[1; 32]),
            deposit_secret(&secret, &[8; 16], &[1; 32]),
        ]
        .into();
        assert_eq!(r1.secrets, want);
        assert_eq!(r1.addrs, vec!["/a1"]);
        let want: BTreeSet<[u8; 32]> = [deposit_secret(&secret, &[8; 16], &[2; 32])].into();
        assert_eq!(work["r2"].secrets, want);
        assert!(work["r3"].secrets.is_empty());
        assert_eq!(work["r3"].mailboxes.len(), 1);
        assert_eq!(work["r3"].mailboxes[0].0.id(), own_key.id());
        assert_eq!(work.len(), 3);
    }
}
