//! neoc-runtime: open and verify neoc bundles, run them, speak their
//! request formats. What `neorun` (the device process, `runtime/neorun`)
//! and `neoc`'s verification both link, so that a bundle is checked at
//! compile time exactly as a device will load it.
//!
//! It parses no ONNX or protobuf itself (an OpenVINO bundle's ONNX is handed
//! to OpenVINO, in `--features openvino` builds), never links the compiler,
//! and has no HTTP, CLI or async runtime: tests run `cargo tree` on it to
//! keep it that way.

pub mod codec;
pub mod engine;
pub mod guard;
pub mod kernels;
pub mod model;
pub mod options;
pub mod tensors;

pub use codec::{BadRequest, Batch};
pub use model::{LoadError, Model, Placement, PredictError, SelfTest, Verified};
pub use options::{Kernels, OpenOptions};

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
