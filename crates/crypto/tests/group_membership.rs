//! Group sender keys over pairwise sessions: removal and re-adding.

mod common;

use common::{Peer, NOW};
use instaconnect_crypto::{
    group_message_session_id, CryptoError, GroupReceiver, GroupSender, PayloadKind,
};

struct Member {
    peer: Peer,
    receivers: Vec<GroupReceiver>,
}

impl Member {
    /// Take an envelope carrying a key share (over the pairwise session) or a group message.
    fn receive(&mut self, env: &[u8]) -> Result<Option<Vec<u8>>, CryptoError> {
        let r = self.peer.receive(env)?;
        match r.kind {
            PayloadKind::Pairwise => {
                // pairwise plaintext = a key share; bound to the authenticated sender
                self.receivers
                    .push(GroupReceiver::from_key_share(r.from, &r.bytes)?);
                Ok(None)
            }
            PayloadKind::Group => self.read_group(r.from, &r.bytes).map(Some),
            PayloadKind::Chunk => Err(CryptoError::EnvelopeMalformed("no chunks in this test")),
        }
    }

    fn read_group(
        &mut self,
        from: instaconnect_crypto::IdentityKey,
        msg: &[u8],
    ) -> Result<Vec<u8>, CryptoError> {
        let sid = group_message_session_id(msg)?;
        let rx = self
            .receivers
            .iter_mut()
            .find(|r| r.session_id() == sid && r.sender() == from)
            .ok_or(CryptoError::GroupSessionMismatch)?;
        Ok(rx.decrypt(msg)?.plaintext.to_vec())
    }
}

fn member() -> Member {
    Member {
        peer: Peer::new(),
        receivers: Vec::new(),
    }
}

/// Alice shares her current key with `to` over pairwise sessions.
fn share(alice: &mut Peer, sender: &GroupSender, to: &mut [&mut Member]) {
    for m in to.iter_mut() {
        let env = alice.send(&m.peer.keys.clone(), &sender.key_share());
        assert_eq!(m.receive(&env).unwrap(), None);
    }
}

#[test]
fn removed_member_cannot_read_and_readded_member_can() {
    let mut alice = Peer::new();
    let mut bob = member();
    let mut carol = member();
    for m in [&mut bob, &mut carol] {
        let link = m.peer.card().to_invite_link();
        alice.add_contact(&link);
    }
    let mut sender = GroupSender::new(b"book club", NOW).unwrap();
    share(&mut alice, &sender, &mut [&mut bob, &mut carol]);

    // everyone reads the first message
    let m1 = sender.encrypt(b"meeting on friday");
    for m in [&mut bob, &mut carol] {
        let env = alice.seal(&m.peer.keys.clone(), PayloadKind::Group, m1.clone());
        assert_eq!(m.receive(&env).unwrap().unwrap(), b"meeting on friday");
    }

    // Carol is removed: new session, key shared with Bob only
    sender.rotate(NOW + 1);
    share(&mut alice, &sender, &mut [&mut bob]);
    let m2 = sender.encrypt(b"surprise party for carol");
    let env = alice.seal(&bob.peer.keys.clone(), PayloadKind::Group, m2.clone());
    assert_eq!(
        bob.receive(&env).unwrap().unwrap(),
        b"surprise party for carol"
    );
    // even if Carol obtains the message (a relay, a forwarder), she cannot read it
    let env = alice.seal(&carol.peer.keys.clone(), PayloadKind::Group, m2.clone());
    assert_eq!(carol.receive(&env), Err(CryptoError::GroupSessionMismatch));
    for rx in carol.receivers.iter_mut() {
        assert_eq!(
            rx.decrypt(&m2).err(),
            Some(CryptoError::GroupSessionMismatch)
        );
    }

    // Carol is re-added: rotate again, share with both
    sender.rotate(NOW + 2);
    share(&mut alice, &sender, &mut [&mut bob, &mut carol]);
    let m3 = sender.encrypt(b"welcome back");
    for m in [&mut bob, &mut carol] {
        let env = alice.seal(&m.peer.keys.clone(), PayloadKind::Group, m3.clone());
        assert_eq!(m.receive(&env).unwrap().unwrap(), b"welcome back");
    }
    // what was sent while she was out stays unreadable to her
    let alice_id = alice.public();
    assert!(carol.read_group(alice_id, &m2).is_err());
    // and a forged share from someone else is not attributed to Alice
    let mallory = GroupSender::new(b"book club", NOW).unwrap();
    let forged = GroupReceiver::from_key_share(carol.peer.public(), &mallory.key_share()).unwrap();
    assert_ne!(forged.sender(), alice_id);
}

#[test]
fn rotation_after_message_bound_changes_session() {
    let mut sender = GroupSender::new(b"g", NOW).unwrap();
    let first = sender.session_id();
    while !sender.needs_rotation(NOW) {
        sender.encrypt(b"x");
    }
    assert_eq!(
        sender.message_count(),
        instaconnect_crypto::GROUP_ROTATION_MAX_MESSAGES
    );
    sender.rotate(NOW);
    assert_ne!(sender.session_id(), first);
}
