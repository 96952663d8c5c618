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

/// Keeps the large tensors freed after one run in the heap for the next,
/// instead of glibc returning them to the kernel and faulting them in again
/// (fresh pages, zeroed, one fault per 4 KiB): blocks under 32 MiB come from
/// the heap, and up to 256 MiB of free heap is kept. fraud-mlp at 8192 rows
/// (three 1-2 MiB activations a run) took 2.1 ms with glibc's defaults,
/// most of it in page faults, and 0.70 ms with these. What an operator sets
/// in `MALLOC_MMAP_THRESHOLD_` or `MALLOC_TRIM_THRESHOLD_` stands. Call it
/// first thing in `main`, before any thread starts; a no-op but with glibc.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        if std::env::var_os("MALLOC_MMAP_THRESHOLD_").is_none() {
            // SAFETY: mallopt only sets allocator parameters
            unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20) };
        }
        if std::env::var_os("MALLOC_TRIM_THRESHOLD_").is_none() {
            // SAFETY: as above
            unsafe { libc::mallopt(libc::M_TRIM_THRESHOLD, 256 << 20) };
        }
    }
}

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
