//! The neoc bundle format.
//!
//! A bundle is one uncompressed tar file in a canonical encoding:
//! `manifest.json`, then `manifest.json.minisig` (absent only in unsigned
//! bundles), then every file the manifest lists, in its order. The manifest
//! carries each file's size and sha256; the minisign signature covers the
//! manifest, so it covers every byte the runtime will use. Because the
//! encoding is canonical, [`container::read`] also rejects any change to the
//! container itself (headers, padding, trailer): flipping any byte of a bundle
//! makes it unreadable.
//!
//! This crate knows nothing of tract, the compiler or the server: it is shared
//! by `neoc` (which writes bundles) and `neorun` (which reads them).

pub mod container;
pub mod digest;
pub mod dtype;
mod error;
pub mod manifest;
pub mod sign;
pub mod unpack;

pub use error::BundleError;
pub use manifest::Manifest;
