//! neorun's library: open and verify neoc bundles, run them, speak their
//! request formats.
//!
//! This crate is what ships to devices. It parses no ONNX or protobuf itself
//! (an OpenVINO bundle's ONNX is handed to OpenVINO, in `--features
//! openvino` builds) and never links the compiler: a test runs `cargo tree`
//! on it to keep it that way.

#[cfg(target_arch = "x86_64")]
pub mod depthwise;
pub mod engine;
#[cfg(target_arch = "x86_64")]
pub mod epilogue;
#[cfg(target_arch = "x86_64")]
pub mod gemm;
pub mod guard;
pub mod lrn;
pub mod model;
#[cfg(feature = "neuron")]
pub mod neuron;
#[cfg(feature = "openvino")]
pub mod openvino;
pub mod placement;
pub mod pool;
pub mod request;
pub mod serve;
pub mod tensors;
pub mod trees;
mod window;

pub use model::{LoadError, Model, OpenOptions, PredictError};

/// Seeded uniform values in [-4, 4) (xorshift), for the kernels' unit tests.
#[cfg(test)]
pub(crate) fn seeded_values(mut seed: u64) -> impl FnMut() -> f32 {
    move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed >> 40) as f32 / (1u64 << 24) as f32 * 8.0 - 4.0
    }
}
