//! The network shell: the libp2p swarm and mDNS discovery that feed `core` and carry out its
//! outputs. Built by the local-network issue; nothing here yet.
