//! neorun's own kernels for operators tract computes slowly (found with
//! `neorun bench --profile`), swapped into a decluttered model before
//! tract's code generation. Each kernel module owns its operator and its
//! substitution; `install` holds the order they run in.
//!
//! `lstm` is different: neoc writes it into bundles in place of tract's
//! `Scan` lowering of ONNX LSTMs (it is an NNEF operator of neoc's
//! registry), so there is nothing to swap at load; `Kernels::Tract` does
//! not apply to it.
//!
//! The module graph is one-way: `window` and `simd` are leaves; `lrn`,
//! `pool`, `depthwise` and `gemm` use only them; `fuse` uses `depthwise`
//! and `gemm` (it moves a following ReLU or bias into them); `scalar`
//! stands alone.

#[cfg(target_arch = "x86_64")]
pub mod depthwise;
#[cfg(target_arch = "x86_64")]
pub mod fuse;
#[cfg(target_arch = "x86_64")]
pub mod gemm;
pub mod lrn;
pub mod lstm;
pub mod pool;
pub mod scalar;
#[cfg(target_arch = "x86_64")]
mod simd;
mod window;

use tract_core::prelude::*;

use crate::options::Kernels;

/// Swaps neorun's kernels into `model` (decluttered, not yet optimised):
/// LRN and pooling everywhere; on x86-64 with AVX2 and FMA, depthwise
/// convolutions, the other convolutions and large constant-weight products,
/// then the ReLUs and biases that follow them; last, everywhere, arithmetic
/// with a one-value constant (after `fuse`, which takes such additions into
/// products first). `Kernels::Tract` keeps tract's everywhere.
pub fn install(model: &mut TypedModel, kernels: Kernels) -> TractResult<()> {
    if kernels == Kernels::Tract {
        return Ok(());
    }
    lrn::substitute(model)?;
    pool::substitute(model)?;
    #[cfg(target_arch = "x86_64")]
    {
        depthwise::substitute(model)?;
        gemm::substitute(model)?;
        fuse::fuse(model)?;
    }
    scalar::substitute(model)?;
    Ok(())
}
