//! Local response normalisation (ONNX `LRN`), computed plane by plane.
//!
//! Bundles carry LRN as tract's `tract_onnx_lrn`; neorun swaps tract's
//! operator for this one when it loads an f32 model (`substitute`). tract's
//! own evaluates each output element through dynamic-rank indexing and sums
//! its channel window element by element: on Inception v1 (two LRNs) it took
//! 53 of 104 ms at batch 1 (`neorun bench --profile`). Here every channel is
//! a contiguous plane in NCHW, so the window sums and the scaling are loops
//! over slices the compiler vectorises, channels are spread over tract's
//! threads, and the common `beta = 0.75` takes two square roots instead of
//! `powf`. Same definition, same summation order as tract's:
//! `y = x / (bias + alpha / size · Σ x²) ^ beta` over channels
//! `c - ⌊(size-1)/2⌋ ..= c + ⌈(size-1)/2⌉`, clipped to the tensor.

use tract_core::internal::*;
use tract_onnx_opl::lrn::Lrn;

#[derive(Debug, Clone, PartialEq)]
pub struct PlaneLrn {
    pub alpha: f32,
    pub beta: f32,
    pub bias: f32,
    pub size: usize,
}

impl Eq for PlaneLrn {}

impl Op for PlaneLrn {
    fn name(&self) -> StaticName {
        "PlaneLrn".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!("size {} alpha {} beta {} bias {}", self.size, self.alpha, self.beta, self.bias)])
    }

    op_as_typed_op!();
}

impl EvalOp for PlaneLrn {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let input = args_1!(inputs);
        let shape = input.shape().to_vec();
        ensure!(shape.len() >= 2, "LRN needs a channel axis (rank >= 2), got shape {shape:?}");
        let x = input.try_as_plain_ram()?;
        let mut output = Tensor::zero::<f32>(&shape)?;
        {
            let mut y = output.try_as_plain_ram_mut()?;
            self.compute(x.as_slice::<f32>()?, y.as_slice_mut::<f32>()?, &shape)?;
        }
        Ok(tvec!(output.into_tvalue()))
    }
}

impl PlaneLrn {
    /// `x` and `y` in NC… layout with shape `shape`.
    pub fn compute(&self, x: &[f32], y: &mut [f32], shape: &[usize]) -> TractResult<()> {
        let (n, c) = (shape[0], shape[1]);
        let plane: usize = shape[2..].iter().product();
        if plane == 0 || n * c == 0 {
            return Ok(());
        }
        let below = (self.size - 1) / 2;
        let above = (self.size - 1).div_ceil(2);
        let scale = self.alpha / self.size as f32;
        for b in 0..n {
            let xb = &x[b * c * plane..(b + 1) * c * plane];
            let yb = &mut y[b * c * plane..(b + 1) * c * plane];
            // one row per channel; the rows are spread over tract's threads
            tract_linalg::multithread::par_chunks_mut(yb, plane, c * plane * self.size, |first, rows| {
                let mut sum = vec![0f32; plane];
                for (i, out) in rows.chunks_mut(plane).enumerate() {
                    let ch = first + i;
                    let (lo, hi) = (ch.saturating_sub(below), (ch + above).min(c - 1));
                    let window = &xb[lo * plane..(hi + 1) * plane];
                    let xc = &xb[ch * plane..(ch + 1) * plane];
                    #[cfg(target_arch = "x86_64")]
                    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
                        // SAFETY: the CPU has AVX2 and FMA (checked just above)
                        unsafe { channel_avx2(self, window, xc, &mut sum, out, scale) };
                        continue;
                    }
                    channel(self, window, xc, &mut sum, out, scale);
                }
                Ok(())
            })?;
        }
        Ok(())
    }
}

/// One output channel: `sum` ← Σ over the window's planes of x², then
/// `out` ← `xc` / (bias + scale·sum)^beta. Written as slice loops so that the
/// compiler vectorises them for the features it is compiled with.
#[inline(always)]
fn channel(op: &PlaneLrn, window: &[f32], xc: &[f32], sum: &mut [f32], out: &mut [f32], scale: f32) {
    let plane = xc.len();
    sum.iter_mut().for_each(|s| *s = 0.0);
    for xk in window.chunks_exact(plane) {
        for (s, v) in sum.iter_mut().zip(xk) {
            *s += v * v;
        }
    }
    if op.beta == 0.75 {
        for ((o, s), v) in out.iter_mut().zip(sum.iter()).zip(xc) {
            let r = (op.bias + scale * s).sqrt();
            *o = v / (r * r.sqrt());
        }
    } else {
        for ((o, s), v) in out.iter_mut().zip(sum.iter()).zip(xc) {
            *o = v / (op.bias + scale * s).powf(op.beta);
        }
    }
}

/// `channel` compiled for AVX2 + FMA (8 lanes instead of SSE2's 4: neorun's
/// baseline is plain x86-64).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn channel_avx2(op: &PlaneLrn, window: &[f32], xc: &[f32], sum: &mut [f32], out: &mut [f32], scale: f32) {
    channel(op, window, xc, sum, out, scale)
}

impl TypedOp for PlaneLrn {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        Ok(tvec!(inputs[0].without_value()))
    }

    as_op!();
}

/// Replaces tract's LRN with `PlaneLrn` in f32 models; other types keep
/// tract's. Returns how many were replaced.
pub fn substitute(model: &mut TypedModel) -> TractResult<usize> {
    let mut replaced = 0;
    for id in 0..model.nodes().len() {
        let Some(lrn) = model.node(id).op_as::<Lrn>().cloned() else { continue };
        let fact = model.outlet_fact(model.node(id).inputs[0])?;
        if fact.datum_type != f32::datum_type() || fact.rank() < 2 || lrn.size == 0 {
            continue;
        }
        model.node_mut(id).op = Box::new(PlaneLrn { alpha: lrn.alpha, beta: lrn.beta, bias: lrn.bias, size: lrn.size });
        replaced += 1;
    }
    Ok(replaced)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Compares with tract's own LRN on seeded data, over window sizes
    /// (odd, even, wider than the channels), betas, and ranks.
    #[test]
    fn matches_tracts_lrn() -> TractResult<()> {
        let mut next = crate::seeded_values(0x2545_f491_u64);
        for shape in [vec![1, 16, 7, 5], vec![2, 3, 4, 4], vec![1, 6, 9], vec![2, 5]] {
            for (size, beta) in [(5, 0.75), (4, 0.75), (3, 0.5), (9, 1.3), (1, 0.75)] {
                let len: usize = shape.iter().product();
                let data: Vec<f32> = (0..len).map(|_| next()).collect();
                let x = Tensor::from_shape(&shape, &data)?;
                let theirs = Lrn { alpha: 1e-2, beta, bias: 1.5, size }
                    .eval_out_of_plan(tvec!(x.clone().into_tvalue()))?
                    .unwrap();
                let ours =
                    PlaneLrn { alpha: 1e-2, beta, bias: 1.5, size }.eval_out_of_plan(tvec!(x.into_tvalue()))?.unwrap();
                let (a, b) = (theirs[0].try_as_plain_ram()?, ours[0].try_as_plain_ram()?);
                for (p, q) in a.as_slice::<f32>()?.iter().zip(b.as_slice::<f32>()?) {
                    assert!((p - q).abs() <= 1e-6 * p.abs().max(1.0), "{shape:?} size {size} beta {beta}: {p} vs {q}");
                }
            }
        }
        Ok(())
    }

    /// The swap happens for f32 models only, and the model still computes.
    #[test]
    fn substitutes_f32_lrn_only() -> TractResult<()> {
        let mut m = TypedModel::default();
        let a = m.add_source("a", f32::fact([1, 4, 2, 2]))?;
        let l = m.wire_node("lrn", Lrn { alpha: 1e-4, beta: 0.75, bias: 1.0, size: 3 }, &[a])?;
        m.select_output_outlets(&l)?;
        assert_eq!(substitute(&mut m)?, 1);
        assert!(m.node(l[0].node).op_is::<PlaneLrn>());
        let mut h = TypedModel::default();
        let a = h.add_source("a", f16::fact([1, 4, 2, 2]))?;
        let l = h.wire_node("lrn", Lrn { alpha: 1e-4, beta: 0.75, bias: 1.0, size: 3 }, &[a])?;
        h.select_output_outlets(&l)?;
        assert_eq!(substitute(&mut h)?, 0);
        Ok(())
    }
}
