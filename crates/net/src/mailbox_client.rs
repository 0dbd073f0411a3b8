//! A small client of a relay's `/instaconnect/mailbox/1`, for tests, benchmarks and (later)
//! the device: it runs its own network task with an **ephemeral** transport identity (never
//! the account's), connects to one relay, and speaks the mailbox protocol — create a mailbox,
//! deposit sealed envelopes and check the signed receipts, fetch, delete, purge by deletion
//! secret, purge a mailbox, subscribe and hear notifications.
//!
//! Requests can be pipelined: [`MailboxClient::send`] returns a [`RequestId`] and
//! [`MailboxClient::next_answer`] yields answers as they come; the convenience methods send one
//! request and wait for its answer. Owner requests are signed with the wall clock and a random
//! nonce ([`owner_auth`]). Receipts are checked against the relay's peer id.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use instaconnect_crypto::{verify_receipt, IdentityKey, MailboxKey};
use instaconnect_wire::mailbox::{
    MailboxId, MailboxRequest, MailboxResponse, OwnerAuth, OwnerOp, Receipt, Refusal,
    StoredEnvelope, MAX_BATCH,
};
use tokio::sync::mpsc;

use crate::{start, NetConfig, NetError, NetEvent, NetHandle, NetIdentity, RequestId, Role};

/// How long [`MailboxClient::connect`] waits for the connection.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Notifications kept until read; older ones are dropped beyond it.
pub const MAX_NOTIFICATIONS: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(transparent)]
    Net(#[from] NetError),
    #[error("the relay address {0:?} must end in /p2p/<peer id>")]
    Address(String),
    #[error("cannot connect to the relay: {0}")]
    Connect(String),
    #[error("the relay refused: {0:?}")]
    Refused(Refusal),
    #[error("the request failed: {0}")]
    Failed(String),
    #[error("unexpected answer from the relay: {0}")]
    Protocol(String),
    #[error("bad receipt: {0}")]
    Receipt(String),
    #[error("timed out")]
    Timeout,
    #[error("signing failed: {0}")]
    Crypto(#[from] instaconnect_crypto::CryptoError),
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Signs `op` on `key`'s mailbox now, with a fresh random nonce.
pub fn owner_auth(key: &MailboxKey, op: OwnerOp<'_>) -> Result<OwnerAuth, ClientError> {
    let nonce: [u8; 16] = rand::random();
    Ok(key.authorize(op, now_ms(), nonce)?)
}

/// One connection to one relay, over an ephemeral identity.
pub struct MailboxClient {
    net: NetHandle,
    events: mpsc::Receiver<NetEvent>,
    relay: String,
    /// Answers that arrived while waiting for another.
    done: HashMap<RequestId, Result<MailboxResponse, ClientError>>,
    notifications: VecDeque<MailboxId>,
}

impl MailboxClient {
    /// Starts an ephemeral node (no listener, no mDNS) and connects to `relay_addr`, a
    /// multiaddr ending in `/p2p/<relay peer id>`.
    pub async fn connect(relay_addr: &str) -> Result<MailboxClient, ClientError> {
        let relay = relay_addr
            .rsplit_once("/p2p/")
            .map(|(_, p)| p.to_string())
            .filter(|p| !p.is_empty() && !p.contains('/'))
            .ok_or_else(|| ClientError::Address(relay_addr.to_string()))?;
        let mut cfg = NetConfig::new(NetIdentity::Ephemeral);
        cfg.listen = Vec::new();
        cfg.mdns = false;
        cfg.role = Role::Device;
        let (net, mut events) = start(cfg).await?;
        net.dial(relay_addr).await?;
        let deadline = tokio::time::Instant::now() + CONNECT_TIMEOUT;
        loop {
            let ev = tokio::time::timeout_at(deadline, events.recv())
                .await
                .map_err(|_| ClientError::Connect("no connection within the timeout".into()))?
                .ok_or(ClientError::Net(NetError::Closed))?;
            match ev {
                NetEvent::Connected { peer, .. } if peer == relay => break,
                NetEvent::DialFailed { error, .. } => return Err(ClientError::Connect(error)),
                _ => {}
            }
        }
        Ok(MailboxClient {
            net,
            events,
            relay,
            done: HashMap::new(),
            notifications: VecDeque::new(),
        })
    }

    /// The relay's peer id.
    pub fn relay(&self) -> &str {
        &self.relay
    }

    /// Our (ephemeral) peer id.
    pub fn local_peer_id(&self) -> &str {
        self.net.local_peer_id()
    }

    /// Sends a request; its answer comes from [`MailboxClient::next_answer`].
    pub async fn send(&mut self, req: &MailboxRequest) -> Result<RequestId, ClientError> {
        let frame = req
            .encode()
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        self.send_frame(frame).await
    }

    /// Sends raw bytes as a request (for tests of malformed input).
    pub async fn send_frame(&mut self, frame: Vec<u8>) -> Result<RequestId, ClientError> {
        Ok(self.net.mailbox_request(&self.relay, frame).await?)
    }

    /// The next answer to one of our requests (a failed request is an `Err` inside), taking
    /// notifications as they come.
    pub async fn next_answer(
        &mut self,
    ) -> Result<(RequestId, Result<MailboxResponse, ClientError>), ClientError> {
        if let Some(&id) = self.done.keys().next() {
            if let Some(r) = self.done.remove(&id) {
                return Ok((id, r));
            }
        }
        loop {
            if let Some(answer) = self.pump().await? {
                return Ok(answer);
            }
        }
    }

    /// Handles one network event: an answer is returned, a notification is queued.
    async fn pump(
        &mut self,
    ) -> Result<Option<(RequestId, Result<MailboxResponse, ClientError>)>, ClientError> {
        let ev = self
            .events
            .recv()
            .await
            .ok_or(ClientError::Net(NetError::Closed))?;
        match ev {
            NetEvent::Response { id, frame, .. } => {
                let r = MailboxResponse::decode(&frame)
                    .map_err(|e| ClientError::Protocol(e.to_string()));
                Ok(Some((id, r)))
            }
            NetEvent::RequestFailed { id, error, .. } => {
                Ok(Some((id, Err(ClientError::Failed(error)))))
            }
            NetEvent::MailboxRequest { frame, channel, .. } => {
                let answer = match MailboxRequest::decode(&frame) {
                    Ok(MailboxRequest::Notify { mailbox }) => {
                        if self.notifications.len() >= MAX_NOTIFICATIONS {
                            self.notifications.pop_front();
                        }
                        self.notifications.push_back(mailbox);
                        MailboxResponse::Notified
                    }
                    _ => MailboxResponse::Malformed,
                };
                let frame = answer.encode().unwrap_or_default();
                let _ = self.net.respond(channel, frame).await;
                Ok(None)
            }
            _ => Ok(None),
        }
    }

    /// Sends `req` and waits for its answer (answers to other requests are kept).
    pub async fn call(&mut self, req: &MailboxRequest) -> Result<MailboxResponse, ClientError> {
        let want = self.send(req).await?;
        self.wait_for(want).await
    }

    /// Waits for the answer to `want`.
    pub async fn wait_for(&mut self, want: RequestId) -> Result<MailboxResponse, ClientError> {
        if let Some(r) = self.done.remove(&want) {
            return r;
        }
        loop {
            if let Some((id, r)) = self.pump().await? {
                if id == want {
                    return r;
                }
                self.done.insert(id, r);
            }
        }
    }

    /// A receipt from this relay with a valid signature, or the refusal as an error.
    pub fn receipt(&self, answer: MailboxResponse) -> Result<Receipt, ClientError> {
        match answer {
            MailboxResponse::Receipt(r) => {
                let key = IdentityKey::from_bytes(&r.relay)
                    .map_err(|e| ClientError::Receipt(e.to_string()))?;
                if key.peer_id() != self.relay {
                    return Err(ClientError::Receipt("signed by another relay".into()));
                }
                verify_receipt(&r, Some(&key)).map_err(|e| ClientError::Receipt(e.to_string()))?;
                Ok(r)
            }
            MailboxResponse::Refused(why) => Err(ClientError::Refused(why)),
            other => Err(ClientError::Protocol(format!("{other:?}"))),
        }
    }

    /// Opens `key`'s mailbox (idempotent).
    pub async fn create(&mut self, key: &MailboxKey) -> Result<Receipt, ClientError> {
        let req = MailboxRequest::Create {
            mailbox: key.id(),
            auth: owner_auth(key, OwnerOp::Create)?,
        };
        let a = self.call(&req).await?;
        self.receipt(a)
    }

    /// Deposits a sealed envelope; the receipt says it is on the relay's disk.
    pub async fn deposit(
        &mut self,
        mailbox: MailboxId,
        envelope: Vec<u8>,
        deletion_hash: [u8; 32],
    ) -> Result<Receipt, ClientError> {
        let req = MailboxRequest::Deposit {
            mailbox,
            envelope,
            deletion_hash,
        };
        let a = self.call(&req).await?;
        self.receipt(a)
    }

    /// Up to `limit` envelopes after sequence `after`, and whether more wait.
    pub async fn fetch(
        &mut self,
        key: &MailboxKey,
        after: u64,
        limit: u32,
    ) -> Result<(Vec<StoredEnvelope>, bool), ClientError> {
        let req = MailboxRequest::Fetch {
            mailbox: key.id(),
            after,
            limit,
            auth: owner_auth(key, OwnerOp::Fetch { after, limit })?,
        };
        match self.call(&req).await? {
            MailboxResponse::Envelopes { items, more } => Ok((items, more)),
            MailboxResponse::Refused(why) => Err(ClientError::Refused(why)),
            other => Err(ClientError::Protocol(format!("{other:?}"))),
        }
    }

    /// Every envelope the mailbox holds, oldest first.
    pub async fn fetch_all(
        &mut self,
        key: &MailboxKey,
    ) -> Result<Vec<StoredEnvelope>, ClientError> {
        let mut all: Vec<StoredEnvelope> = Vec::new();
        loop {
            let after = all.last().map_or(0, |e| e.seq);
            let (items, more) = self.fetch(key, after, MAX_BATCH as u32).await?;
            let empty = items.is_empty();
            all.extend(items);
            if !more || empty {
                return Ok(all);
            }
        }
    }

    /// The owner deletes envelopes by sequence number.
    pub async fn delete(
        &mut self,
        key: &MailboxKey,
        seqs: Vec<u64>,
    ) -> Result<Receipt, ClientError> {
        let auth = owner_auth(key, OwnerOp::Delete { seqs: &seqs })?;
        let req = MailboxRequest::Delete {
            mailbox: key.id(),
            seqs,
            auth,
        };
        let a = self.call(&req).await?;
        self.receipt(a)
    }

    /// A depositor takes back envelopes by revealing their deletion secrets.
    pub async fn purge(&mut self, secrets: Vec<[u8; 32]>) -> Result<Receipt, ClientError> {
        let a = self.call(&MailboxRequest::Purge { secrets }).await?;
        self.receipt(a)
    }

    /// The owner removes the mailbox and everything in it.
    pub async fn purge_mailbox(&mut self, key: &MailboxKey) -> Result<Receipt, ClientError> {
        let req = MailboxRequest::PurgeMailbox {
            mailbox: key.id(),
            auth: owner_auth(key, OwnerOp::PurgeMailbox)?,
        };
        let a = self.call(&req).await?;
        self.receipt(a)
    }

    /// Asks to be told of new deposits in these mailboxes while connected.
    pub async fn subscribe(&mut self, keys: &[&MailboxKey]) -> Result<(), ClientError> {
        let mut mailboxes = Vec::with_capacity(keys.len());
        for k in keys {
            mailboxes.push((k.id(), owner_auth(k, OwnerOp::Subscribe)?));
        }
        match self.call(&MailboxRequest::Subscribe { mailboxes }).await? {
            MailboxResponse::Subscribed => Ok(()),
            MailboxResponse::Refused(why) => Err(ClientError::Refused(why)),
            other => Err(ClientError::Protocol(format!("{other:?}"))),
        }
    }

    /// The next mailbox the relay said has new envelopes, waiting at most `timeout`.
    pub async fn next_notification(&mut self, timeout: Duration) -> Result<MailboxId, ClientError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(m) = self.notifications.pop_front() {
                return Ok(m);
            }
            let answer = tokio::time::timeout_at(deadline, self.pump())
                .await
                .map_err(|_| ClientError::Timeout)??;
            if let Some((id, r)) = answer {
                self.done.insert(id, r);
            }
        }
    }

    /// Closes the connection and stops the network task.
    pub async fn close(self) {
        self.net.shutdown().await;
    }
}
