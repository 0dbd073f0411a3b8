//! The sans-IO relay: store-and-forward mailboxes that only ever hold sealed envelopes.
//!
//! A relay answers `/instaconnect/mailbox/1` requests (see `instaconnect_wire::mailbox`). It
//! never sees who deposits (deposits come over ephemeral transport identities, and envelopes
//! are sealed), nor whose mailbox it is (a mailbox id is a key made for that mailbox alone).
//! Like the [`Engine`](crate::engine::Engine), it does no IO and reads no clock: the shell
//! passes requests with `now_ms` and a client key for rate limiting (the remote IP, say),
//! calls [`Relay::commit`] (one flush for a batch) and only then sends the released
//! responses, so a deposit is acknowledged only once it is on disk.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;

use instaconnect_crypto::{
    deletion_hash, envelope_hash, sign_receipt, verify_owner, Identity, IdentityKey,
};
use instaconnect_store::relay::{MailboxId, EXPIRY_BUCKET_MS};
use instaconnect_store::{RelayOp, RelayStore, StoreError};
use instaconnect_wire::mailbox::{
    DepositItem, DepositedItem, MailboxRequest, MailboxResponse, OwnerAuth, OwnerOp, Receipted,
    Refusal, RefusedItem, StoredEnvelope, MAX_BATCH, MAX_ENVELOPE_BYTES, MAX_MAILBOX_FRAME_BYTES,
    MAX_PAGE_ITEMS,
};
use instaconnect_wire::proto::ProtoError;
use instaconnect_wire::records::{MailboxRecord, RelayEnvelope, RelayEnvelopeMeta};

/// Clients whose rate-limit buckets are kept; the longest idle is forgotten beyond it.
pub const MAX_CLIENTS: usize = 65_536;
/// Owner-request nonces remembered (for replay); beyond it the oldest are forgotten and
/// requests older than them refused.
pub const MAX_NONCES: usize = 100_000;
/// Subscriptions kept in all (mailbox, client) pairs.
pub const MAX_SUBSCRIPTIONS: usize = 100_000;
/// Store errors kept for the shell to log.
pub const MAX_ERRORS: usize = 16;
/// Expired envelopes removed per timer call (the rest on the next one, at once).
pub const EXPIRY_BATCH: usize = 4_096;
/// How often expiry runs when nothing is due sooner.
pub const EXPIRY_INTERVAL_MS: u64 = 60_000;
/// Fetch answers stop adding envelopes past this many bytes (under the frame limit).
const FETCH_BUDGET_BYTES: usize = MAX_MAILBOX_FRAME_BYTES - 96 * 1024;

/// A relay's limits. `configs/relay.toml` documents each with its default.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RelayConfig {
    /// How long an envelope is kept, in milliseconds (14 days).
    pub ttl_ms: u64,
    /// Envelopes one mailbox may hold.
    pub mailbox_max_envelopes: u64,
    /// Bytes one mailbox may hold.
    pub mailbox_max_bytes: u64,
    /// Bytes of envelopes the relay holds in all (the disk cap).
    pub total_max_bytes: u64,
    /// Mailboxes the relay keeps.
    pub max_mailboxes: u64,
    /// Largest envelope accepted, in bytes.
    pub max_envelope_bytes: usize,
    /// Requests a client may make in a burst...
    pub rate_burst: u32,
    /// ...and per second after it.
    pub rate_per_second: u32,
    /// How far an owner request's timestamp may be from the relay's clock.
    pub max_clock_skew_ms: u64,
}

impl Default for RelayConfig {
    fn default() -> Self {
        RelayConfig {
            ttl_ms: 14 * 24 * 3_600_000,
            mailbox_max_envelopes: 10_000,
            mailbox_max_bytes: 256 * 1024 * 1024,
            total_max_bytes: 16 * 1024 * 1024 * 1024,
            max_mailboxes: 1_000_000,
            max_envelope_bytes: MAX_ENVELOPE_BYTES,
            rate_burst: 2_000,
            rate_per_second: 1_000,
            max_clock_skew_ms: 10 * 60_000,
        }
    }
}

/// Counters for `/metrics`.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct RelayMetrics {
    pub deposits: u64,
    pub fetches: u64,
    pub deletes: u64,
    pub purges: u64,
    pub expired: u64,
    /// Store flushes that released answers, and the answers (and notifications) they
    /// released: their ratio is the group-commit size.
    pub commits: u64,
    pub committed_outputs: u64,
    /// Refusals by reason (`mailbox_full`, `rate_limited`, ...), and malformed requests.
    pub rejections: BTreeMap<&'static str, u64>,
}

/// What the shell must do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RelayOutput {
    /// Answer the request received on `channel`.
    Respond { channel: u64, frame: Vec<u8> },
    /// Send this request (a `Notify`) to a subscribed client.
    Notify { client: String, frame: Vec<u8> },
}

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("encoding failed: {0}")]
    Wire(#[from] instaconnect_wire::WireError),
    #[error(transparent)]
    Crypto(#[from] instaconnect_crypto::CryptoError),
    /// The shell's flush did not run to its end (its thread panicked or was cancelled).
    #[error("the store flush did not finish: {0}")]
    FlushAborted(String),
}

/// A token bucket: `burst` requests at once, refilled at `rate` per second.
#[derive(Clone, Copy, Debug)]
pub struct Bucket {
    tokens: f64,
    at_ms: u64,
}

impl Bucket {
    /// A full bucket at `now_ms`.
    pub fn full(burst: u32, now_ms: u64) -> Bucket {
        Bucket {
            tokens: f64::from(burst),
            at_ms: now_ms,
        }
    }

    /// When a token was last asked for.
    pub fn last_ms(&self) -> u64 {
        self.at_ms
    }

    /// Takes one token if there is one (after refilling for the time since the last take).
    pub fn take(&mut self, now_ms: u64, burst: u32, rate_per_second: u32) -> bool {
        self.take_n(now_ms, 1, burst, rate_per_second)
    }

    /// Takes `n` tokens (at most `burst`, so a large batch can pass a full bucket) if there
    /// are that many.
    pub fn take_n(&mut self, now_ms: u64, n: u32, burst: u32, rate_per_second: u32) -> bool {
        let elapsed = now_ms.saturating_sub(self.at_ms) as f64 / 1000.0;
        self.tokens = (self.tokens + elapsed * f64::from(rate_per_second)).min(f64::from(burst));
        self.at_ms = now_ms;
        let n = f64::from(n.clamp(1, burst.max(1)));
        if self.tokens >= n {
            self.tokens -= n;
            true
        } else {
            false
        }
    }
}

/// The relay. See the module docs.
pub struct Relay {
    store: Arc<dyn RelayStore>,
    identity: Identity,
    config: RelayConfig,
    buckets: HashMap<String, Bucket>,
    /// Owner nonces seen, oldest first, with their timestamps; and the set for lookups.
    nonces: VecDeque<(u64, [u8; 16])>,
    nonce_set: BTreeSet<[u8; 16]>,
    /// Requests with timestamps below this are refused (their nonces may be forgotten).
    nonce_floor_ms: u64,
    subscribers: BTreeMap<MailboxId, BTreeSet<String>>,
    subscriptions: usize,
    staged: Vec<RelayOutput>,
    /// Outputs whose flush has started ([`Relay::prepare_commit`]) and not yet ended.
    flushing: Vec<RelayOutput>,
    ready: VecDeque<RelayOutput>,
    metrics: RelayMetrics,
    errors: VecDeque<String>,
}

fn refusal_name(r: Refusal) -> &'static str {
    match r {
        Refusal::UnknownMailbox => "unknown_mailbox",
        Refusal::BadSignature => "bad_signature",
        Refusal::Stale => "stale",
        Refusal::MailboxFull => "mailbox_full",
        Refusal::DiskFull => "disk_full",
        Refusal::RateLimited => "rate_limited",
        Refusal::TooLarge => "too_large",
        Refusal::TooMany => "too_many",
        Refusal::Unavailable => "unavailable",
    }
}

impl Relay {
    pub fn new(store: Arc<dyn RelayStore>, identity: Identity, config: RelayConfig) -> Relay {
        Relay {
            store,
            identity,
            config,
            buckets: HashMap::new(),
            nonces: VecDeque::new(),
            nonce_set: BTreeSet::new(),
            nonce_floor_ms: 0,
            subscribers: BTreeMap::new(),
            subscriptions: 0,
            staged: Vec::new(),
            flushing: Vec::new(),
            ready: VecDeque::new(),
            metrics: RelayMetrics::default(),
            errors: VecDeque::new(),
        }
    }

    /// The relay's identity key (receipts are signed with it).
    pub fn identity(&self) -> IdentityKey {
        self.identity.public()
    }

    pub fn metrics(&self) -> &RelayMetrics {
        &self.metrics
    }

    /// Store errors since the last call (they hold no content), for the shell to log.
    pub fn take_errors(&mut self) -> Vec<String> {
        self.errors.drain(..).collect()
    }

    pub fn store(&self) -> &Arc<dyn RelayStore> {
        &self.store
    }

    /// Flushes the store, then releases the outputs staged since the last commit (and any
    /// whose flush was started with [`Relay::prepare_commit`] and not ended).
    pub fn commit(&mut self) -> Result<(), RelayError> {
        if self.staged.is_empty() && self.flushing.is_empty() {
            return Ok(());
        }
        self.flushing.append(&mut self.staged);
        let flushed = self.store.flush();
        self.committed(flushed.map_err(RelayError::from))
    }

    /// Group commit, in two halves so the shell can flush on another thread while requests
    /// go on: sets aside the outputs staged so far and returns true if there are any (and no
    /// flush is already under way). The shell must then call [`RelayStore::flush`] on
    /// [`Relay::store`] — a flush that starts after this call covers every write these
    /// outputs answer for — and pass its result to [`Relay::committed`]. Requests handled
    /// meanwhile wait for the next flush.
    pub fn prepare_commit(&mut self) -> bool {
        if !self.flushing.is_empty() || self.staged.is_empty() {
            return false;
        }
        std::mem::swap(&mut self.flushing, &mut self.staged);
        true
    }

    /// Ends the flush begun by [`Relay::prepare_commit`]: on success its outputs are released
    /// (see [`Relay::poll_output`]); on failure they go back, ahead of the rest, to wait for the
    /// next commit, so nothing is answered before it is durable.
    pub fn committed(&mut self, flushed: Result<(), RelayError>) -> Result<(), RelayError> {
        match flushed {
            Ok(()) => {
                if !self.flushing.is_empty() {
                    self.metrics.commits += 1;
                    self.metrics.committed_outputs += self.flushing.len() as u64;
                }
                self.ready.extend(self.flushing.drain(..));
                Ok(())
            }
            Err(e) => {
                self.flushing.append(&mut self.staged);
                std::mem::swap(&mut self.flushing, &mut self.staged);
                Err(e)
            }
        }
    }

    pub fn poll_output(&mut self) -> Option<RelayOutput> {
        self.ready.pop_front()
    }

    /// When [`Relay::handle_timeout`] should run next (expiry): once the oldest expiry mark's
    /// whole second is past the TTL.
    pub fn poll_timeout(&self, now_ms: u64) -> u64 {
        match self.store.expiry_marks(1) {
            Ok(marks) if !marks.is_empty() => (marks[0].0 + EXPIRY_BUCKET_MS - 1)
                .saturating_add(self.config.ttl_ms)
                .max(now_ms),
            _ => now_ms + EXPIRY_INTERVAL_MS,
        }
    }

    /// Removes envelopes older than the TTL (at most [`EXPIRY_BATCH`] a call). Returns how
    /// many.
    ///
    /// Expiry marks say which mailboxes took deposits in which second. For each mailbox with a
    /// mark whose second has expired, its envelopes are read oldest first and removed while
    /// they are expired; its due marks go once an unexpired envelope (or none) is reached. An
    /// envelope is so removed at most [`EXPIRY_BUCKET_MS`] late (later only if the relay's
    /// clock went back between deposits into one mailbox).
    pub fn handle_timeout(&mut self, now_ms: u64) -> Result<usize, RelayError> {
        // Expired: deposited at or before `cutoff`.
        let Some(cutoff) = now_ms.checked_sub(self.config.ttl_ms) else {
            return Ok(0);
        };
        let due: Vec<(u64, MailboxId)> = self
            .store
            .expiry_marks(EXPIRY_BATCH)?
            .into_iter()
            .take_while(|(b, _)| b + EXPIRY_BUCKET_MS - 1 <= cutoff)
            .collect();
        let mut mailboxes: Vec<MailboxId> = due.iter().map(|(_, m)| *m).collect();
        mailboxes.sort_unstable();
        mailboxes.dedup();
        let mut removed = 0;
        let mut done = BTreeSet::new();
        for m in mailboxes {
            let budget = EXPIRY_BATCH - removed;
            if budget == 0 {
                break;
            }
            let metas = self.store.envelope_metas(&m, 0, u64::MAX, budget)?;
            let expired: Vec<(MailboxId, u64, RelayEnvelopeMeta)> = metas
                .iter()
                .take_while(|(_, e)| e.deposited_at_ms <= cutoff)
                .map(|(s, e)| (m, *s, *e))
                .collect();
            if expired.len() < budget {
                // Reached an unexpired envelope, or the end: this mailbox is done.
                done.insert(m);
            }
            removed += expired.len();
            self.remove_envelopes(&expired)?;
        }
        let marks: Vec<RelayOp> = due
            .into_iter()
            .filter(|(_, m)| done.contains(m))
            .map(|(bucket_ms, mailbox)| RelayOp::RemoveExpiryMark { bucket_ms, mailbox })
            .collect();
        self.store.apply_deferred(marks)?;
        self.store.flush()?;
        self.metrics.expired += removed as u64;
        Ok(removed)
    }

    /// A client went away: its subscriptions end.
    pub fn disconnected(&mut self, client: &str) {
        let mut removed = 0;
        self.subscribers.retain(|_, set| {
            if set.remove(client) {
                removed += 1;
            }
            !set.is_empty()
        });
        self.subscriptions -= removed;
    }

    /// Handles one request frame from `client`; the answer is staged for `channel`.
    pub fn handle_request(&mut self, now_ms: u64, client: &str, channel: u64, frame: &[u8]) {
        let response = match self.answer(now_ms, client, frame) {
            Ok(r) => r,
            Err(e) => {
                // A store failure: the client is told to try again; the shell logs the error.
                if self.errors.len() >= MAX_ERRORS {
                    self.errors.pop_front();
                }
                self.errors.push_back(e.to_string());
                MailboxResponse::Refused(Refusal::Unavailable)
            }
        };
        match &response {
            MailboxResponse::Refused(r) => {
                *self.metrics.rejections.entry(refusal_name(*r)).or_default() += 1;
            }
            MailboxResponse::Malformed => {
                *self.metrics.rejections.entry("malformed").or_default() += 1;
            }
            _ => {}
        }
        let frame = response
            .encode()
            .or_else(|_| MailboxResponse::Malformed.encode())
            .unwrap_or_default();
        self.staged.push(RelayOutput::Respond { channel, frame });
    }

    fn rate_ok(&mut self, now_ms: u64, client: &str, cost: u32) -> bool {
        if !self.buckets.contains_key(client) && self.buckets.len() >= MAX_CLIENTS {
            if let Some(idle) = self
                .buckets
                .iter()
                .min_by_key(|(_, b)| b.at_ms)
                .map(|(k, _)| k.clone())
            {
                self.buckets.remove(&idle);
            }
        }
        let (burst, rate) = (self.config.rate_burst, self.config.rate_per_second);
        self.buckets
            .entry(client.to_string())
            .or_insert_with(|| Bucket::full(burst, now_ms))
            .take_n(now_ms, cost, burst, rate)
    }

    /// Checks an owner request: signature, freshness, nonce. Records the nonce if it passes.
    fn owner_ok(
        &mut self,
        now_ms: u64,
        mailbox: &MailboxId,
        op: OwnerOp<'_>,
        auth: &OwnerAuth,
    ) -> Result<(), Refusal> {
        let skew = self.config.max_clock_skew_ms;
        if auth.timestamp_ms + skew < now_ms
            || auth.timestamp_ms > now_ms + skew
            || auth.timestamp_ms < self.nonce_floor_ms
            || self.nonce_set.contains(&auth.nonce)
        {
            return Err(Refusal::Stale);
        }
        verify_owner(mailbox, op, auth).map_err(|_| Refusal::BadSignature)?;
        // Forget nonces that can no longer pass the time check, then bound the rest.
        while let Some(&(ts, n)) = self.nonces.front() {
            if ts + skew < now_ms || self.nonces.len() >= MAX_NONCES {
                self.nonces.pop_front();
                self.nonce_set.remove(&n);
                self.nonce_floor_ms = self.nonce_floor_ms.max(ts);
            } else {
                break;
            }
        }
        self.nonces.push_back((auth.timestamp_ms, auth.nonce));
        self.nonce_set.insert(auth.nonce);
        Ok(())
    }

    fn answer(
        &mut self,
        now_ms: u64,
        client: &str,
        frame: &[u8],
    ) -> Result<MailboxResponse, RelayError> {
        let req = match MailboxRequest::decode(frame) {
            Ok(r) => r,
            Err(ProtoError::UnsupportedVersion(_)) => {
                return Ok(MailboxResponse::UnsupportedVersion {
                    supported: instaconnect_wire::PROTOCOL_VERSION,
                })
            }
            Err(ProtoError::TooLarge { .. }) => {
                return Ok(MailboxResponse::Refused(Refusal::TooLarge))
            }
            Err(_) => return Ok(MailboxResponse::Malformed),
        };
        // A batch costs what its deposits one by one would.
        let cost = match &req {
            MailboxRequest::DepositBatch { items } => items.len().max(1) as u32,
            _ => 1,
        };
        if !self.rate_ok(now_ms, client, cost) {
            return Ok(MailboxResponse::Refused(Refusal::RateLimited));
        }
        for (mailbox, op, auth) in req.owner_parts() {
            if let Err(r) = self.owner_ok(now_ms, mailbox, op, auth) {
                return Ok(MailboxResponse::Refused(r));
            }
        }
        match req {
            MailboxRequest::Create { mailbox, .. } => self.create(now_ms, mailbox),
            MailboxRequest::Deposit {
                mailbox,
                envelope,
                deletion_hash,
            } => self.deposit(now_ms, mailbox, envelope, deletion_hash),
            MailboxRequest::Fetch {
                mailbox,
                after,
                limit,
                ..
            } => self.fetch_page(mailbox, after, limit, MAX_BATCH),
            MailboxRequest::Delete { mailbox, seqs, .. } => self.delete(now_ms, mailbox, seqs),
            MailboxRequest::DepositBatch { items } => self.deposit_batch(now_ms, items),
            MailboxRequest::FetchPage {
                mailbox,
                after,
                limit,
                ..
            } => self.fetch_page(mailbox, after, limit, MAX_PAGE_ITEMS),
            MailboxRequest::DeleteRange {
                mailbox,
                after,
                through,
                ..
            } => self.delete_range(now_ms, mailbox, after, through),
            MailboxRequest::Purge { secrets } => self.purge(now_ms, &secrets),
            MailboxRequest::PurgeMailbox { mailbox, .. } => self.purge_mailbox(now_ms, mailbox),
            MailboxRequest::Subscribe { mailboxes } => {
                for (m, _) in mailboxes {
                    if self.store.mailbox(&m)?.is_none() {
                        return Ok(MailboxResponse::Refused(Refusal::UnknownMailbox));
                    }
                    let set = self.subscribers.entry(m).or_default();
                    if !set.contains(client) {
                        if self.subscriptions >= MAX_SUBSCRIPTIONS {
                            return Ok(MailboxResponse::Refused(Refusal::TooMany));
                        }
                        set.insert(client.to_string());
                        self.subscriptions += 1;
                    }
                }
                Ok(MailboxResponse::Subscribed)
            }
            // Relays send notifications; they do not take them.
            MailboxRequest::Notify { .. } => Ok(MailboxResponse::Malformed),
        }
    }

    fn receipt(&self, now_ms: u64, what: Receipted) -> Result<MailboxResponse, RelayError> {
        Ok(MailboxResponse::Receipt(sign_receipt(
            &self.identity,
            now_ms,
            what,
        )?))
    }

    fn create(&mut self, now_ms: u64, mailbox: MailboxId) -> Result<MailboxResponse, RelayError> {
        if self.store.mailbox(&mailbox)?.is_none() {
            let mut totals = self.store.totals()?;
            if totals.mailboxes >= self.config.max_mailboxes {
                return Ok(MailboxResponse::Refused(Refusal::TooMany));
            }
            totals.mailboxes += 1;
            self.store.apply_deferred(vec![
                RelayOp::PutMailbox(
                    mailbox,
                    MailboxRecord {
                        created_at_ms: now_ms,
                        next_seq: 1,
                        count: 0,
                        bytes: 0,
                    },
                ),
                RelayOp::PutTotals(totals),
            ])?;
        }
        self.receipt(now_ms, Receipted::Created { mailbox })
    }

    fn deposit(
        &mut self,
        now_ms: u64,
        mailbox: MailboxId,
        envelope: Vec<u8>,
        deletion_hash: [u8; 32],
    ) -> Result<MailboxResponse, RelayError> {
        if envelope.len() > self.config.max_envelope_bytes || envelope.is_empty() {
            return Ok(MailboxResponse::Refused(Refusal::TooLarge));
        }
        let Some(mut m) = self.store.mailbox(&mailbox)? else {
            return Ok(MailboxResponse::Refused(Refusal::UnknownMailbox));
        };
        let len = envelope.len() as u64;
        if m.count + 1 > self.config.mailbox_max_envelopes
            || m.bytes + len > self.config.mailbox_max_bytes
        {
            return Ok(MailboxResponse::Refused(Refusal::MailboxFull));
        }
        let mut totals = self.store.totals()?;
        if totals.bytes + len > self.config.total_max_bytes {
            return Ok(MailboxResponse::Refused(Refusal::DiskFull));
        }
        let seq = m.next_seq.max(1);
        m.next_seq = seq + 1;
        m.count += 1;
        m.bytes += len;
        totals.envelopes += 1;
        totals.bytes += len;
        let hash = envelope_hash(&envelope);
        self.store.apply_deferred(vec![
            RelayOp::PutEnvelope {
                mailbox,
                seq,
                envelope: RelayEnvelope {
                    deposited_at_ms: now_ms,
                    deletion_hash,
                    envelope,
                },
            },
            RelayOp::PutMailbox(mailbox, m),
            RelayOp::PutTotals(totals),
        ])?;
        self.metrics.deposits += 1;
        self.notify(mailbox)?;
        self.receipt(
            now_ms,
            Receipted::Deposited {
                mailbox,
                seq,
                envelope_hash: hash,
            },
        )
    }

    /// Up to `limit` (at most `max`) envelopes after `after`, within the frame budget.
    fn fetch_page(
        &mut self,
        mailbox: MailboxId,
        after: u64,
        limit: u32,
        max: usize,
    ) -> Result<MailboxResponse, RelayError> {
        if self.store.mailbox(&mailbox)?.is_none() {
            return Ok(MailboxResponse::Refused(Refusal::UnknownMailbox));
        }
        let want = (limit as usize).clamp(1, max);
        let found = self.store.envelopes(&mailbox, after, want + 1)?;
        let mut more = found.len() > want;
        let mut items = Vec::new();
        let mut bytes = 0;
        for (seq, e) in found.into_iter().take(want) {
            if bytes + e.envelope.len() > FETCH_BUDGET_BYTES && !items.is_empty() {
                more = true;
                break;
            }
            bytes += e.envelope.len();
            items.push(StoredEnvelope {
                seq,
                deposited_at_ms: e.deposited_at_ms,
                envelope: e.envelope,
            });
        }
        self.metrics.fetches += 1;
        Ok(MailboxResponse::Envelopes { items, more })
    }

    /// The header of envelope `seq` of mailbox `m`, if it is held.
    fn meta(&self, m: &MailboxId, seq: u64) -> Result<Option<RelayEnvelopeMeta>, RelayError> {
        let Some(after) = seq.checked_sub(1) else {
            return Ok(None);
        };
        Ok(self
            .store
            .envelope_metas(m, after, seq, 1)?
            .pop()
            .map(|(_, e)| e))
    }

    /// Removes envelopes (read once, with [`RelayStore::envelope_metas`]) and their counts in
    /// one deferred batch.
    fn remove_envelopes(
        &mut self,
        which: &[(MailboxId, u64, RelayEnvelopeMeta)],
    ) -> Result<(), RelayError> {
        if which.is_empty() {
            return Ok(());
        }
        let mut ops = Vec::with_capacity(which.len() + 2);
        let mut mailboxes: BTreeMap<MailboxId, MailboxRecord> = BTreeMap::new();
        let mut totals = self.store.totals()?;
        for &(m, seq, e) in which {
            let len = e.len;
            // An envelope whose mailbox record is gone is still removed (and counted out).
            let rec = match mailboxes.entry(m) {
                std::collections::btree_map::Entry::Occupied(o) => Some(o.into_mut()),
                std::collections::btree_map::Entry::Vacant(v) => {
                    self.store.mailbox(&m)?.map(|rec| v.insert(rec))
                }
            };
            if let Some(rec) = rec {
                rec.count = rec.count.saturating_sub(1);
                rec.bytes = rec.bytes.saturating_sub(len);
            }
            totals.envelopes = totals.envelopes.saturating_sub(1);
            totals.bytes = totals.bytes.saturating_sub(len);
            ops.push(RelayOp::RemoveEnvelope {
                mailbox: m,
                seq,
                deletion_hash: e.deletion_hash,
            });
        }
        for (m, rec) in mailboxes {
            ops.push(RelayOp::PutMailbox(m, rec));
        }
        ops.push(RelayOp::PutTotals(totals));
        self.store.apply_deferred(ops)?;
        Ok(())
    }

    fn delete(
        &mut self,
        now_ms: u64,
        mailbox: MailboxId,
        seqs: Vec<u64>,
    ) -> Result<MailboxResponse, RelayError> {
        if self.store.mailbox(&mailbox)?.is_none() {
            return Ok(MailboxResponse::Refused(Refusal::UnknownMailbox));
        }
        let mut which = Vec::with_capacity(seqs.len());
        for &s in &seqs {
            if let Some(e) = self.meta(&mailbox, s)? {
                which.push((mailbox, s, e));
            }
        }
        self.remove_envelopes(&which)?;
        self.metrics.deletes += 1;
        // The receipt names everything asked for: it is not held any more either way.
        self.receipt(now_ms, Receipted::Deleted { mailbox, seqs })
    }

    fn delete_range(
        &mut self,
        now_ms: u64,
        mailbox: MailboxId,
        after: u64,
        through: u64,
    ) -> Result<MailboxResponse, RelayError> {
        if self.store.mailbox(&mailbox)?.is_none() {
            return Ok(MailboxResponse::Refused(Refusal::UnknownMailbox));
        }
        // The span is at most MAX_DELETE_SPAN (checked when decoding), so this is bounded.
        let which: Vec<(MailboxId, u64, RelayEnvelopeMeta)> = self
            .store
            .envelope_metas(&mailbox, after, through, usize::MAX)?
            .into_iter()
            .map(|(s, e)| (mailbox, s, e))
            .collect();
        self.remove_envelopes(&which)?;
        self.metrics.deletes += 1;
        self.receipt(
            now_ms,
            Receipted::DeletedRange {
                mailbox,
                after,
                through,
            },
        )
    }

    /// Stores what it can of a batch, under one deferred write and one signed receipt.
    fn deposit_batch(
        &mut self,
        now_ms: u64,
        items: Vec<DepositItem>,
    ) -> Result<MailboxResponse, RelayError> {
        if items.is_empty() {
            return Ok(MailboxResponse::Malformed);
        }
        let mut totals = self.store.totals()?;
        // Mailboxes as read (None: unknown), and whether this batch stored anything in them.
        let mut boxes: BTreeMap<MailboxId, (Option<MailboxRecord>, bool)> = BTreeMap::new();
        let mut ops = Vec::with_capacity(items.len() + 4);
        let mut stored = Vec::with_capacity(items.len());
        let mut refused = Vec::new();
        for (i, item) in items.into_iter().enumerate() {
            let index = i as u32;
            let len = item.envelope.len() as u64;
            let why = if item.envelope.len() > self.config.max_envelope_bytes
                || item.envelope.is_empty()
            {
                Some(Refusal::TooLarge)
            } else {
                let entry = match boxes.entry(item.mailbox) {
                    std::collections::btree_map::Entry::Occupied(o) => o.into_mut(),
                    std::collections::btree_map::Entry::Vacant(v) => {
                        v.insert((self.store.mailbox(&item.mailbox)?, false))
                    }
                };
                match &mut entry.0 {
                    None => Some(Refusal::UnknownMailbox),
                    Some(m)
                        if m.count + 1 > self.config.mailbox_max_envelopes
                            || m.bytes + len > self.config.mailbox_max_bytes =>
                    {
                        Some(Refusal::MailboxFull)
                    }
                    Some(_) if totals.bytes + len > self.config.total_max_bytes => {
                        Some(Refusal::DiskFull)
                    }
                    Some(m) => {
                        let seq = m.next_seq.max(1);
                        m.next_seq = seq + 1;
                        m.count += 1;
                        m.bytes += len;
                        entry.1 = true;
                        totals.envelopes += 1;
                        totals.bytes += len;
                        stored.push(DepositedItem {
                            index,
                            mailbox: item.mailbox,
                            seq,
                            envelope_hash: envelope_hash(&item.envelope),
                        });
                        ops.push(RelayOp::PutEnvelope {
                            mailbox: item.mailbox,
                            seq,
                            envelope: RelayEnvelope {
                                deposited_at_ms: now_ms,
                                deletion_hash: item.deletion_hash,
                                envelope: item.envelope,
                            },
                        });
                        None
                    }
                }
            };
            if let Some(why) = why {
                *self
                    .metrics
                    .rejections
                    .entry(refusal_name(why))
                    .or_default() += 1;
                refused.push(RefusedItem { index, why });
            }
        }
        if !stored.is_empty() {
            let mut touched = Vec::new();
            for (id, (rec, used)) in boxes {
                if let (Some(rec), true) = (rec, used) {
                    ops.push(RelayOp::PutMailbox(id, rec));
                    touched.push(id);
                }
            }
            ops.push(RelayOp::PutTotals(totals));
            self.store.apply_deferred(ops)?;
            self.metrics.deposits += stored.len() as u64;
            for mailbox in touched {
                self.notify(mailbox)?;
            }
        }
        let receipt = sign_receipt(
            &self.identity,
            now_ms,
            Receipted::DepositedBatch { items: stored },
        )?;
        Ok(MailboxResponse::Deposits { receipt, refused })
    }

    /// Tells the mailbox's subscribers that something new waits there (after the flush).
    fn notify(&mut self, mailbox: MailboxId) -> Result<(), RelayError> {
        if let Some(subs) = self.subscribers.get(&mailbox) {
            let frame = MailboxRequest::Notify { mailbox }.encode()?;
            for client in subs {
                self.staged.push(RelayOutput::Notify {
                    client: client.clone(),
                    frame: frame.clone(),
                });
            }
        }
        Ok(())
    }

    fn purge(&mut self, now_ms: u64, secrets: &[[u8; 32]]) -> Result<MailboxResponse, RelayError> {
        let mut which = Vec::new();
        let mut hashes = Vec::new();
        for s in secrets {
            let h = deletion_hash(s);
            for (m, seq) in self.store.by_deletion_hash(&h)? {
                if let Some(e) = self.meta(&m, seq)?.filter(|e| e.deletion_hash == h) {
                    which.push((m, seq, e));
                }
            }
            hashes.push(h);
        }
        self.remove_envelopes(&which)?;
        self.metrics.purges += 1;
        self.receipt(
            now_ms,
            Receipted::Purged {
                deletion_hashes: hashes,
            },
        )
    }

    fn purge_mailbox(
        &mut self,
        now_ms: u64,
        mailbox: MailboxId,
    ) -> Result<MailboxResponse, RelayError> {
        if self.store.mailbox(&mailbox)?.is_some() {
            loop {
                let batch: Vec<(MailboxId, u64, RelayEnvelopeMeta)> = self
                    .store
                    .envelope_metas(&mailbox, 0, u64::MAX, EXPIRY_BATCH)?
                    .into_iter()
                    .map(|(s, e)| (mailbox, s, e))
                    .collect();
                if batch.is_empty() {
                    break;
                }
                self.remove_envelopes(&batch)?;
            }
            let mut totals = self.store.totals()?;
            totals.mailboxes = totals.mailboxes.saturating_sub(1);
            self.store.apply_deferred(vec![
                RelayOp::RemoveMailbox(mailbox),
                RelayOp::PutTotals(totals),
            ])?;
            if let Some(set) = self.subscribers.remove(&mailbox) {
                self.subscriptions -= set.len();
            }
        }
        self.metrics.purges += 1;
        self.receipt(now_ms, Receipted::MailboxPurged { mailbox })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use instaconnect_store::MemRelayStore;
    use std::sync::atomic::{AtomicBool, Ordering};

    /// A store whose flush fails while `fail` is set.
    #[derive(Default)]
    struct Flaky {
        inner: MemRelayStore,
        fail: AtomicBool,
    }

    impl RelayStore for Flaky {
        fn mailbox(&self, id: &MailboxId) -> instaconnect_store::Result<Option<MailboxRecord>> {
            self.inner.mailbox(id)
        }
        fn envelopes(
            &self,
            id: &MailboxId,
            after: u64,
            limit: usize,
        ) -> instaconnect_store::Result<Vec<(u64, RelayEnvelope)>> {
            self.inner.envelopes(id, after, limit)
        }
        fn envelope(
            &self,
            id: &MailboxId,
            seq: u64,
        ) -> instaconnect_store::Result<Option<RelayEnvelope>> {
            self.inner.envelope(id, seq)
        }
        fn envelope_metas(
            &self,
            id: &MailboxId,
            after: u64,
            through: u64,
            limit: usize,
        ) -> instaconnect_store::Result<Vec<(u64, RelayEnvelopeMeta)>> {
            self.inner.envelope_metas(id, after, through, limit)
        }
        fn by_deletion_hash(
            &self,
            hash: &[u8; 32],
        ) -> instaconnect_store::Result<Vec<(MailboxId, u64)>> {
            self.inner.by_deletion_hash(hash)
        }
        fn expiry_marks(&self, limit: usize) -> instaconnect_store::Result<Vec<(u64, MailboxId)>> {
            self.inner.expiry_marks(limit)
        }
        fn totals(&self) -> instaconnect_store::Result<instaconnect_wire::records::RelayTotals> {
            self.inner.totals()
        }
        fn apply_deferred(&self, ops: Vec<RelayOp>) -> instaconnect_store::Result<()> {
            self.inner.apply_deferred(ops)
        }
        fn flush(&self) -> instaconnect_store::Result<()> {
            if self.fail.load(Ordering::SeqCst) {
                return Err(StoreError::Locked {
                    path: "flush failed (test)".into(),
                });
            }
            self.inner.flush()
        }
    }

    fn channels(r: &mut Relay) -> Vec<u64> {
        std::iter::from_fn(|| r.poll_output())
            .map(|o| match o {
                RelayOutput::Respond { channel, .. } => channel,
                RelayOutput::Notify { .. } => u64::MAX,
            })
            .collect()
    }

    fn create(r: &mut Relay, channel: u64) {
        let key = instaconnect_crypto::MailboxKey::generate();
        let auth = key
            .authorize(OwnerOp::Create, 1_000, [channel as u8; 16])
            .unwrap();
        let frame = MailboxRequest::Create {
            mailbox: key.id(),
            auth,
        }
        .encode()
        .unwrap();
        r.handle_request(1_000, "client", channel, &frame);
    }

    #[test]
    fn group_commit_releases_only_what_the_flush_covers_and_keeps_order_on_failure() {
        let store = Arc::new(Flaky::default());
        let mut r = Relay::new(store.clone(), Identity::generate(), RelayConfig::default());
        assert!(!r.prepare_commit(), "nothing staged, nothing to flush");
        create(&mut r, 1);
        create(&mut r, 2);
        assert!(r.prepare_commit());
        // Handled while the flush runs: waits for the next one.
        create(&mut r, 3);
        assert!(!r.prepare_commit(), "one flush at a time");
        assert_eq!(
            channels(&mut r),
            Vec::<u64>::new(),
            "nothing before the flush ends"
        );

        // The flush fails: nothing is released, and the set-aside answers go first.
        store.fail.store(true, Ordering::SeqCst);
        let flushed = store.flush().map_err(RelayError::from);
        assert!(r.committed(flushed).is_err());
        assert_eq!(channels(&mut r), Vec::<u64>::new());
        assert!(r.commit().is_err(), "still failing");
        assert_eq!(channels(&mut r), Vec::<u64>::new());

        store.fail.store(false, Ordering::SeqCst);
        assert!(r.prepare_commit());
        create(&mut r, 4);
        let flushed = store.flush().map_err(RelayError::from);
        r.committed(flushed).unwrap();
        assert_eq!(channels(&mut r), vec![1, 2, 3]);
        assert_eq!((r.metrics().commits, r.metrics().committed_outputs), (1, 3));
        r.commit().unwrap();
        assert_eq!(channels(&mut r), vec![4]);
        assert_eq!((r.metrics().commits, r.metrics().committed_outputs), (2, 4));
    }
}
