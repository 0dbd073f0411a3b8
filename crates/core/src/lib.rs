//! The sans-IO heart of InstaConnect.
//!
//! `core` holds the logic every device runs, with no IO of its own: it never reads the clock
//! (callers pass `now_ms`), never touches the network or files (callers pass bytes and a
//! [`Store`](instaconnect_store::Store)), and never spawns. The `instaconnect` binary and the
//! simulator run this same code.
//!
//! - [`phone`], [`vcard`], [`csv_import`], [`picture`]: validation of what users type and import.
//! - [`media`]: audio and video containers sniffed by content, and the duration they state.
//! - [`book`]: the account, profile, address book, blocks, groups and privacy settings.
//! - [`export`]: the documented JSON export of a whole account.
//! - [`engine`]: the messaging engine (frames in, frames and events out).
//! - [`geo`]: coordinates as typed, distances and bearings (for locations and `nearby`).
//! - [`relay`]: the store-and-forward relay's mailbox logic (requests in, receipts out).

pub mod book;
pub mod csv_import;
pub mod engine;
pub mod export;
pub mod geo;
pub mod media;
pub mod phone;
pub mod picture;
pub mod relay;
pub mod vcard;
