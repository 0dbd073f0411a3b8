//! Every byte that crosses the network or lands on disk.
//!
//! This crate owns the serde types of InstaConnect's records and frames and the one codec they are
//! written with (postcard, see [`codec`]). Nothing else in the workspace serialises ad hoc.
//! Decoding untrusted bytes never panics and never allocates past a limit: [`codec::decode`]
//! refuses input larger than the caller's limit before looking at it, and postcard never
//! pre-allocates more than the input could hold.

pub mod codec;
pub mod mailbox;
pub mod proto;
pub mod records;
mod secret;

pub use codec::{decode, decode_with_limit, encode, WireError, MAX_RECORD_BYTES};
pub use secret::SecretBytes;

/// Version of the on-disk schema written by this build. The store refuses newer databases.
pub const SCHEMA_VERSION: u32 = 3;

/// Version of the peer-to-peer protocol spoken by this build.
pub const PROTOCOL_VERSION: u16 = 1;
