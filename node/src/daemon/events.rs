//! The node's live events, fanned out to every `GET /v1/events` subscriber.
//!
//! Publishers never block and memory stays bounded: the channel keeps the last
//! [`EVENT_CHANNEL_CAPACITY`] events, and a subscriber that falls further behind skips ahead
//! and is told how many it missed (a `lagged` event).

use serde::Serialize;
use tokio::sync::broadcast;

/// Events kept for subscribers that have not read them yet: as many as the driver keeps
/// ([`instaconnect_net::driver::USER_EVENT_CAPACITY`]), so a reconnection's burst of
/// acknowledgements (a state change each) does not outrun a live `chat`.
pub const EVENT_CHANNEL_CAPACITY: usize = instaconnect_net::driver::USER_EVENT_CAPACITY;

/// Something that happened in the node. Serialized as JSON with a `type` field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    /// A command that changed the database ran through the control API.
    Command { args: Vec<String> },
    /// An event of the messaging engine (message received, delivery state, presence...),
    /// serialized as the engine's own JSON (its `type` names it).
    #[serde(untagged)]
    Engine(instaconnect_core::engine::Event),
}

impl Event {
    /// The SSE `event:` name, equal to the JSON `type`.
    pub fn kind(&self) -> &'static str {
        match self {
            Event::Command { .. } => "command",
            Event::Engine(e) => engine_kind(e),
        }
    }
}

fn engine_kind(e: &instaconnect_core::engine::Event) -> &'static str {
    use instaconnect_core::engine::Event as E;
    match e {
        E::MessageReceived { .. } => "message_received",
        E::StateChanged { .. } => "state_changed",
        E::ContactRequest { .. } => "contact_request",
        E::ContactAccepted { .. } => "contact_accepted",
        E::Presence { .. } => "presence",
        E::Profile { .. } => "profile",
        E::PeerDiscovered { .. } => "peer_discovered",
        E::PeerLost { .. } => "peer_lost",
        E::UnsupportedVersion { .. } => "unsupported_version",
        E::Misbehaving { .. } => "misbehaving",
        E::Relay { .. } => "relay",
        E::AttachmentProgress { .. } => "attachment_progress",
        E::AttachmentReceived { .. } => "attachment_received",
        E::GroupInvite { .. } => "group_invite",
        E::GroupChanged { .. } => "group_changed",
        E::GroupMessageReceived { .. } => "group_message_received",
        E::Problem { .. } => "problem",
        E::AttachmentSendProgress { .. } => "attachment_send_progress",
        E::AttachmentDelivered { .. } => "attachment_delivered",
        E::AttachmentRefused { .. } => "attachment_refused",
        E::LocationUpdated { .. } => "location_updated",
        E::LocationEnded { .. } => "location_ended",
    }
}

/// The publishing side; clone it into whatever produces events.
#[derive(Clone)]
pub struct Events {
    tx: broadcast::Sender<Event>,
}

impl Default for Events {
    fn default() -> Self {
        Events::new()
    }
}

impl Events {
    pub fn new() -> Events {
        let (tx, _) = broadcast::channel(EVENT_CHANNEL_CAPACITY);
        Events { tx }
    }

    /// Publishes an event to the current subscribers; with none, it is dropped.
    pub fn publish(&self, event: Event) {
        let _ = self.tx.send(event);
    }

    /// A new subscription that sees every event published from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.tx.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slow_subscriber_is_told_it_lagged_and_memory_stays_bounded() {
        let events = Events::new();
        let mut rx = events.subscribe();
        let n = EVENT_CHANNEL_CAPACITY + 10;
        for i in 0..n {
            events.publish(Event::Command {
                args: vec![i.to_string()],
            });
        }
        assert_eq!(
            rx.try_recv(),
            Err(broadcast::error::TryRecvError::Lagged(10))
        );
        let next = rx.try_recv().unwrap();
        assert_eq!(
            next,
            Event::Command {
                args: vec!["10".to_string()]
            }
        );
        assert_eq!(next.kind(), "command");
    }
}
