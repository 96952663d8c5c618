//! neorun's library: open and verify neoc bundles, run them, speak their
//! request formats.
//!
//! This crate is what ships to devices. It parses no ONNX or protobuf itself
//! (an OpenVINO bundle's ONNX is handed to OpenVINO, in `--features
//! openvino` builds) and never links the compiler: a test runs `cargo tree`
//! on it to keep it that way.

pub mod engine;
pub mod guard;
pub mod lrn;
pub mod model;
#[cfg(feature = "neuron")]
pub mod neuron;
#[cfg(feature = "openvino")]
pub mod openvino;
pub mod pool;
pub mod request;
pub mod serve;
pub mod tensors;
pub mod trees;

pub use model::{LoadError, Model, OpenOptions, PredictError};
