//! neorun's library: open and verify neoc bundles, run them, speak their
//! request formats.
//!
//! This crate is what ships to devices. It knows nothing about ONNX or
//! protobuf and never links the compiler: a test runs `cargo tree` on it to
//! keep it that way.

pub mod engine;
pub mod guard;
pub mod model;
pub mod request;
pub mod serve;
pub mod tensors;
pub mod trees;

pub use model::{LoadError, Model, OpenOptions, PredictError};
