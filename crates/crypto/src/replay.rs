//! Bounded replay and duplicate detection by (sender identity, message id).

use std::collections::{BTreeSet, HashMap};

use serde::{Deserialize, Serialize};

use crate::identity::KEY_LEN;
use crate::{CryptoError, IdentityKey, MessageId, OpenedEnvelope};

/// Most (sender, message id) pairs remembered. When full, the oldest is forgotten and
/// everything at or before its timestamp is refused as too old, so a forgotten id can never
/// be replayed successfully.
pub const REPLAY_GUARD_CAPACITY: usize = 100_000;
/// How long ids are remembered (30 days, beyond the relays' 14-day TTL). Messages whose
/// timestamp is older than `now - REPLAY_WINDOW_MS` are refused as too old.
pub const REPLAY_WINDOW_MS: u64 = 30 * 24 * 60 * 60 * 1000;

type Key = ([u8; KEY_LEN], [u8; 16]);

/// Remembers recently seen message ids; serializable so it can be persisted.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "ReplayGuardState", into = "ReplayGuardState")]
pub struct ReplayGuard {
    seen: HashMap<Key, u64>,
    by_age: BTreeSet<(u64, Key)>,
    /// Messages with a timestamp below this are refused.
    floor_ms: u64,
}

/// Serialized form: the floor and the entries, oldest first.
#[derive(Serialize, Deserialize)]
struct ReplayGuardState {
    floor_ms: u64,
    entries: Vec<(u64, [u8; KEY_LEN], [u8; 16])>,
}

impl From<ReplayGuardState> for ReplayGuard {
    fn from(s: ReplayGuardState) -> Self {
        let mut g = ReplayGuard {
            floor_ms: s.floor_ms,
            ..Default::default()
        };
        for (ts, sender, id) in s.entries {
            if ts >= g.floor_ms {
                g.insert((sender, id), ts);
            }
        }
        g
    }
}

impl From<ReplayGuard> for ReplayGuardState {
    fn from(g: ReplayGuard) -> Self {
        ReplayGuardState {
            floor_ms: g.floor_ms,
            entries: g
                .by_age
                .iter()
                .map(|(ts, (s, id))| (*ts, *s, *id))
                .collect(),
        }
    }
}

impl ReplayGuard {
    /// An empty guard.
    pub fn new() -> ReplayGuard {
        ReplayGuard::default()
    }

    /// Number of remembered ids.
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    /// Whether nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }

    /// Timestamps below this are refused as too old.
    pub fn floor_ms(&self) -> u64 {
        self.floor_ms
    }

    /// Whether (sender, id) was seen.
    pub fn contains(&self, sender: &IdentityKey, id: &MessageId) -> bool {
        self.seen.contains_key(&(sender.to_bytes(), id.0))
    }

    fn insert(&mut self, key: Key, ts: u64) {
        if let Some(old) = self.seen.insert(key, ts) {
            self.by_age.remove(&(old, key));
        }
        self.by_age.insert((ts, key));
        while self.seen.len() > REPLAY_GUARD_CAPACITY {
            match self.by_age.pop_first() {
                Some((t, k)) => {
                    self.seen.remove(&k);
                    self.floor_ms = self.floor_ms.max(t.saturating_add(1));
                }
                None => break,
            }
        }
    }

    fn expire(&mut self, now_ms: u64) {
        self.floor_ms = self.floor_ms.max(now_ms.saturating_sub(REPLAY_WINDOW_MS));
        while let Some(&(t, k)) = self.by_age.first() {
            if t >= self.floor_ms {
                break;
            }
            self.by_age.pop_first();
            self.seen.remove(&k);
        }
    }

    /// Record a message; [`CryptoError::Duplicate`] if it was seen before,
    /// [`CryptoError::TooOld`] if it is older than what the guard can vouch for.
    /// Call it after the envelope authenticated the sender and before showing anything.
    pub fn check(
        &mut self,
        sender: &IdentityKey,
        id: &MessageId,
        timestamp_ms: u64,
        now_ms: u64,
    ) -> Result<(), CryptoError> {
        self.expire(now_ms);
        let key = (sender.to_bytes(), id.0);
        if self.seen.contains_key(&key) {
            return Err(CryptoError::Duplicate {
                message_id: id.to_string(),
            });
        }
        if timestamp_ms < self.floor_ms {
            return Err(CryptoError::TooOld {
                timestamp_ms,
                oldest_ms: self.floor_ms,
            });
        }
        self.insert(key, timestamp_ms);
        Ok(())
    }

    /// [`ReplayGuard::check`] for an opened envelope.
    pub fn check_envelope(&mut self, env: &OpenedEnvelope, now_ms: u64) -> Result<(), CryptoError> {
        self.check(
            &env.sender.identity,
            &env.message_id,
            env.timestamp_ms,
            now_ms,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Identity;

    const NOW: u64 = 1_700_000_000_000;

    fn id(n: u32) -> MessageId {
        let mut b = [0u8; 16];
        b[..4].copy_from_slice(&n.to_be_bytes());
        MessageId(b)
    }

    #[test]
    fn duplicates_and_senders() {
        let a = Identity::generate().public();
        let b = Identity::generate().public();
        let mut g = ReplayGuard::new();
        g.check(&a, &id(1), NOW, NOW).unwrap();
        assert_eq!(
            g.check(&a, &id(1), NOW, NOW + 5),
            Err(CryptoError::Duplicate {
                message_id: id(1).to_string()
            })
        );
        // same id from another sender is a different message
        g.check(&b, &id(1), NOW, NOW).unwrap();
        assert!(g.contains(&a, &id(1)));
        assert_eq!(g.len(), 2);
    }

    #[test]
    fn window_expiry_refuses_old_messages() {
        let a = Identity::generate().public();
        let mut g = ReplayGuard::new();
        g.check(&a, &id(1), NOW, NOW).unwrap();
        let later = NOW + REPLAY_WINDOW_MS + 1;
        assert!(matches!(
            g.check(&a, &id(1), NOW, later),
            Err(CryptoError::TooOld { .. })
        ));
        assert!(g.is_empty());
        g.check(&a, &id(2), later, later).unwrap();
    }

    #[test]
    fn capacity_bound_never_readmits_forgotten_ids() {
        let a = Identity::generate().public();
        let mut g = ReplayGuard::new();
        for i in 0..(REPLAY_GUARD_CAPACITY as u32 + 10) {
            g.check(&a, &id(i), NOW + u64::from(i), NOW).unwrap();
        }
        assert_eq!(g.len(), REPLAY_GUARD_CAPACITY);
        // id 0 was evicted: replaying it is refused as too old, not accepted
        assert!(matches!(
            g.check(&a, &id(0), NOW, NOW),
            Err(CryptoError::TooOld { .. })
        ));
        assert!(matches!(
            g.check(&a, &id(20), NOW + 20, NOW),
            Err(CryptoError::Duplicate { .. })
        ));
        // persisted and restored
        let bytes = postcard::to_allocvec(&g).unwrap();
        let mut g2: ReplayGuard = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(g2, g);
        assert!(matches!(
            g2.check(&a, &id(20), NOW + 20, NOW),
            Err(CryptoError::Duplicate { .. })
        ));
    }
}
