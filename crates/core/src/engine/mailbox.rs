//! The engine's side of store-and-forward relays (see PROTOCOL.md §2): our mailboxes on relays
//! (created per contact, announced inside the session, fetched, emptied), and deposits of
//! sealed envelopes into a contact's mailboxes when the contact cannot be reached directly.

use super::*;
use instaconnect_wire::proto::MailboxAddress;

impl Engine {
    pub(super) fn on_relay(
        &mut self,
        _relay: String,
        _addrs: Vec<String>,
        _up: bool,
        _now_ms: u64,
    ) -> Result<()> {
        Ok(())
    }

    pub(super) fn on_mailbox_response(
        &mut self,
        _relay: &str,
        _tag: u64,
        _frame: Option<&[u8]>,
        _now_ms: u64,
    ) -> Result<()> {
        Ok(())
    }

    pub(super) fn on_mailbox_notify(
        &mut self,
        _relay: &str,
        _mailbox: [u8; 32],
        _now_ms: u64,
    ) -> Result<()> {
        Ok(())
    }
}

impl Engine {
    pub(super) fn take_mailboxes(
        &mut self,
        _peer: &str,
        _phone: &str,
        _boxes: Vec<MailboxAddress>,
        _now_ms: u64,
    ) -> Result<()> {
        Ok(())
    }

    pub(super) fn take_delivered(
        &mut self,
        _phone: &str,
        _ids: &[[u8; 16]],
        _now_ms: u64,
    ) -> Result<()> {
        Ok(())
    }
}
