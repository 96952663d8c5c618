//! Depthwise 2-D convolutions (one filter per channel) over NCHW planes.
//!
//! tract's `DepthWise` walks the kernel's taps per output element; on
//! ShuffleNet its 16 depthwise convolutions were 39% of a batch-1 run once
//! the other convolutions went to `gemm` (`neorun bench --profile`). Here
//! each tap adds `weight × input` over a whole plane at once, over a
//! zero-padded copy (stride 1, see `flat`) or over the stride-phase
//! sub-planes of one (other strides, see `plane`): slice loops the
//! compiler vectorises (AVX2 and FMA chosen at run time); planes are spread
//! over tract's threads. Swapped in on x86-64 for f32 NCHW or CHW convolutions
//! whose group count equals their input and output channels.

use tract_core::internal::*;
use tract_core::ops::cnn::{Conv, PoolSpec};
use tract_core::ops::nn::DataFormat;

use super::simd;
use super::simd::available;
use super::window::{is_depthwise, nchw, plane_conv, Window};

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PlaneDepthwise {
    pub pool_spec: PoolSpec,
    /// A ReLU after the convolution, applied to each plane as it is done
    /// (`epilogue::fuse`).
    pub relu: bool,
}

impl Op for PlaneDepthwise {
    fn name(&self) -> StaticName {
        "PlaneDepthwise".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        let mut info = self.pool_spec.info();
        if self.relu {
            info.push("then ReLU".into());
        }
        Ok(info)
    }

    op_as_typed_op!();
}

impl EvalOp for PlaneDepthwise {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let (input, kernel, bias) = args_3!(inputs);
        let batched = self.pool_spec.data_format == DataFormat::NCHW;
        let (n, c, h, w) = nchw(input.shape(), self.pool_spec.data_format).context("PlaneDepthwise")?;
        let kshape = kernel.shape().to_vec();
        ensure!(
            kshape.len() == 4 && kshape[0] == c && kshape[1] == 1,
            "PlaneDepthwise: kernel {kshape:?} for {c} channels"
        );
        let g = Window::new(&self.pool_spec, h, w, kshape[2], kshape[3]);
        let kernel = kernel.try_as_plain_ram()?;
        let kernel = kernel.as_slice::<f32>()?;
        let bias = bias.try_as_plain_ram()?;
        let bias = bias.as_slice::<f32>()?;
        ensure!(bias.len() <= 1 || bias.len() == c, "PlaneDepthwise: {} bias values for {c} channels", bias.len());
        let x = input.try_as_plain_ram()?;
        let x = x.as_slice::<f32>()?;
        let oshape = if batched { vec![n, c, g.oh, g.ow] } else { vec![c, g.oh, g.ow] };
        let mut output = Tensor::zero::<f32>(&oshape)?;
        let out_plane = g.oh * g.ow;
        if out_plane > 0 && n * c > 0 {
            let mut view = output.try_as_plain_ram_mut()?;
            let y = view.as_slice_mut::<f32>()?;
            let work = n * c * out_plane * g.kh * g.kw;
            tract_linalg::multithread::par_chunks_mut(y, out_plane, work, |first, planes| {
                let mut scratch = Vec::new();
                for (i, out) in planes.chunks_mut(out_plane).enumerate() {
                    let p = first + i;
                    let ch = p % c;
                    let b = match bias.len() {
                        0 => 0.0,
                        1 => bias[0],
                        _ => bias[ch],
                    };
                    let xp = &x[p * h * w..(p + 1) * h * w];
                    let taps = &kernel[ch * g.kh * g.kw..(ch + 1) * g.kh * g.kw];
                    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
                        // SAFETY: the CPU has AVX2 and FMA (checked just above)
                        unsafe { plane_avx2(&g, xp, taps, b, out, &mut scratch) };
                    } else {
                        plane(&g, xp, taps, b, out, &mut scratch);
                    }
                    if self.relu {
                        simd::relu(out);
                    }
                }
                Ok(())
            })?;
        }
        Ok(tvec!(output.into_tvalue()))
    }
}

/// One plane: `x` is H×W, `taps` KH×KW, `out` OH×OW; `scratch` is reused
/// between planes.
///
/// The zero-padded input is split by stride phase: sub-plane (q, p) holds
/// the padded rows `r ≡ q (mod SH)` and columns `c ≡ p (mod SW)`. Every tap
/// then reads one sub-plane shifted by a whole number of its rows and
/// columns, so each tap is a single long multiply-add over the flattened
/// sub-plane into an accumulator laid out with the sub-plane's row length,
/// and the output is read back from its columns that are not padding: the
/// taps' loads stay contiguous (row by row with strided loads, ShuffleNet's
/// three stride-2 depthwise convolutions took 780 µs, 3x its thirteen
/// stride-1 ones; now 180). Stride 1, one sub-plane, goes to `flat`, the
/// same thing specialised: this general form ran it 3-6x slower.
#[inline(always)]
fn plane(g: &Window, x: &[f32], taps: &[f32], bias: f32, out: &mut [f32], scratch: &mut Vec<f32>) {
    if g.sh == 1 && g.sw == 1 {
        flat(g, x, taps, bias, out, scratch);
        return;
    }
    let (sh, sw) = (g.sh, g.sw);
    // the padded plane the output reads
    let hp = (g.oh - 1) * sh + (g.kh - 1) * g.dh + 1;
    let wp = (g.ow - 1) * sw + (g.kw - 1) * g.dw + 1;
    // one sub-plane's rows and columns
    let (hq, wq) = (hp.div_ceil(sh), wp.div_ceil(sw));
    let sub = hq * wq;
    let span = (g.oh - 1) * wq + g.ow;
    scratch.clear();
    scratch.resize(sh * sw * sub + span, 0.0);
    let (phases, acc) = scratch.split_at_mut(sh * sw * sub);
    for iy in 0..g.h {
        let r = iy + g.top;
        if r >= hp {
            break;
        }
        let row = &x[iy * g.w..][..g.w];
        let (q, rr) = (r % sh, r / sh);
        // (every input column lands inside the padded row: the first
        // ceil(w/2) go to one phase from left/2, the other floor(w/2) to the
        // other phase from left/2 + left%2)
        if sw == 2 && g.left / 2 + g.w.div_ceil(2) <= wq && g.left / 2 + g.left % 2 + g.w / 2 <= wq {
            // both phases in one pass over pairs of columns (vectorises
            // into shuffles, where a strided copy per phase ran element by
            // element and took most of a stride-2 plane's time)
            let (phase0, phase1) = phases[q * 2 * sub..][..2 * sub].split_at_mut(sub);
            let (row0, row1) = (&mut phase0[rr * wq..][..wq], &mut phase1[rr * wq..][..wq]);
            // input column ix lands in phase (ix + left) % 2, at (ix + left) / 2
            let (first, second) = if g.left.is_multiple_of(2) {
                (&mut row0[g.left / 2..], &mut row1[g.left / 2..])
            } else {
                (&mut row1[g.left / 2..], &mut row0[g.left / 2 + 1..])
            };
            let pairs = row.chunks_exact(2);
            let tail = pairs.remainder();
            let n = pairs.len();
            for ((a, b), pair) in first.iter_mut().zip(second.iter_mut()).zip(pairs) {
                *a = pair[0];
                *b = pair[1];
            }
            if let Some(v) = tail.first() {
                first[n] = *v;
            }
            continue;
        }
        for p in 0..sw {
            // the input columns ix with (ix + left) % sw == p, inside the padded row
            let first = (p + sw - g.left % sw) % sw;
            let j0 = (first + g.left) / sw;
            if first >= g.w || j0 >= wq {
                continue;
            }
            let dst = &mut phases[(q * sw + p) * sub + rr * wq..][j0..wq];
            if sw == 1 {
                let n = dst.len().min(g.w);
                dst[..n].copy_from_slice(&row[..n]);
            } else {
                for (d, v) in dst.iter_mut().zip(row[first..].iter().step_by(sw)) {
                    *d = *v;
                }
            }
        }
    }
    acc.fill(bias);
    for ky in 0..g.kh {
        let (q, a) = ((ky * g.dh) % sh, (ky * g.dh) / sh);
        for kx in 0..g.kw {
            let (p, b) = ((kx * g.dw) % sw, (kx * g.dw) / sw);
            let wv = taps[ky * g.kw + kx];
            let src = &phases[(q * sw + p) * sub + a * wq + b..][..span];
            for (acc, v) in acc.iter_mut().zip(src) {
                *acc += wv * v;
            }
        }
    }
    for (oy, out_row) in out.chunks_mut(g.ow).enumerate() {
        out_row.copy_from_slice(&acc[oy * wq..][..g.ow]);
    }
}

/// Stride 1: the plane is copied into a zero-padded one (OH + (KH-1)·DH
/// rows of OW + (KW-1)·DW), where every tap is one shift of the whole plane:
/// each tap is then a single long multiply-add over the flattened rows
/// (short planes, 7x7 or 14x14, spent their time in per-row bookkeeping),
/// and the output is read back from the columns that are not padding.
#[inline(always)]
fn flat(g: &Window, x: &[f32], taps: &[f32], bias: f32, out: &mut [f32], scratch: &mut Vec<f32>) {
    let (hp, wp) = (g.oh + (g.kh - 1) * g.dh, g.ow + (g.kw - 1) * g.dw);
    let span = (g.oh - 1) * wp + g.ow;
    scratch.clear();
    scratch.resize(hp * wp + span, 0.0);
    let (padded, acc) = scratch.split_at_mut(hp * wp);
    for (r, row) in padded.chunks_mut(wp).enumerate() {
        let iy = r as isize - g.top as isize;
        if iy < 0 || iy >= g.h as isize {
            continue;
        }
        // input columns that land inside the padded row
        let first = g.left.min(wp);
        let count = g.w.min(wp - first);
        row[first..first + count].copy_from_slice(&x[iy as usize * g.w..][..count]);
    }
    acc.fill(bias);
    for ky in 0..g.kh {
        for kx in 0..g.kw {
            let wv = taps[ky * g.kw + kx];
            let src = &padded[ky * g.dh * wp + kx * g.dw..][..span];
            for (a, v) in acc.iter_mut().zip(src) {
                *a += wv * v;
            }
        }
    }
    for (oy, out_row) in out.chunks_mut(g.ow).enumerate() {
        out_row.copy_from_slice(&acc[oy * wp..][..g.ow]);
    }
}

/// `plane` compiled for AVX2 and FMA (neorun's baseline is plain x86-64).
#[target_feature(enable = "avx2,fma")]
unsafe fn plane_avx2(g: &Window, x: &[f32], taps: &[f32], bias: f32, out: &mut [f32], scratch: &mut Vec<f32>) {
    plane(g, x, taps, bias, out, scratch)
}

impl TypedOp for PlaneDepthwise {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        self.pool_spec.output_facts(inputs)
    }

    as_op!();
}

/// Replaces f32 depthwise convolutions (one filter per channel, over NCHW
/// or CHW planes) with `PlaneDepthwise`; returns how many. Does nothing on
/// a CPU without AVX2 and FMA.
pub fn substitute(model: &mut TypedModel) -> TractResult<usize> {
    if !available() {
        return Ok(0);
    }
    let mut replaced = 0;
    for id in 0..model.nodes().len() {
        let node = model.node(id);
        let Some(conv) = node.op_as::<Conv>() else { continue };
        let facts: TVec<TypedFact> =
            node.inputs.iter().map(|i| model.outlet_fact(*i).cloned()).collect::<TractResult<_>>()?;
        if facts.iter().any(|f| f.datum_type != f32::datum_type() || !f.is_plain())
            || !plane_conv(conv, &facts)
            || !is_depthwise(conv)
        {
            continue;
        }
        let op = PlaneDepthwise { pool_spec: conv.pool_spec.clone(), relu: false };
        model.node_mut(id).op = Box::new(op);
        replaced += 1;
    }
    Ok(replaced)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tract_core::ops::cnn::{KernelFormat, PaddingSpec};

    /// Against tract's depthwise convolution on seeded data: kernels,
    /// strides (1, 2 with its two-phase copy, 3), dilations, paddings (odd
    /// and even left padding, right padding that drops input columns),
    /// odd and even plane widths, batched or not.
    #[test]
    fn matches_tracts_depthwise() -> TractResult<()> {
        let mut next = crate::seeded_values(0x3c6e_f372_u64);
        let mut cases = 0;
        for (batched, c, w) in [(true, 6, 9), (false, 5, 9), (true, 3, 10), (false, 2, 8)] {
            for (k, s, d) in [
                ([3, 3], [1, 1], [1, 1]),
                ([3, 3], [1, 1], [2, 2]),
                ([3, 3], [2, 2], [1, 1]),
                ([5, 3], [1, 2], [2, 1]),
                ([3, 3], [2, 3], [1, 1]),
                ([3, 5], [2, 2], [1, 2]),
                // width 2, stride 2, odd left padding, even plane: the
                // padded row ends right after the last input column
                ([3, 2], [2, 2], [1, 1]),
                ([1, 1], [1, 1], [1, 1]),
            ] {
                for padding in [
                    PaddingSpec::Valid,
                    PaddingSpec::SameUpper,
                    PaddingSpec::Explicit(tvec![1, 0], tvec![2, 1]),
                    PaddingSpec::Explicit(tvec![1, 1], tvec![1, 1]),
                    PaddingSpec::Explicit(tvec![0, 1], tvec![0, 0]),
                    PaddingSpec::Explicit(tvec![2, 2], tvec![0, 0]),
                ] {
                    let shape: Vec<usize> = if batched { vec![2, c, 11, w] } else { vec![c, 11, w] };
                    let spec = PoolSpec {
                        data_format: if batched { DataFormat::NCHW } else { DataFormat::CHW },
                        kernel_shape: k.into_iter().collect(),
                        padding: padding.clone(),
                        dilations: Some(d.into_iter().collect()),
                        strides: Some(s.into_iter().collect()),
                        input_channels: c,
                        output_channels: c,
                    };
                    let mut m = TypedModel::default();
                    let x = m.add_source("x", f32::fact(&shape))?;
                    let kv: Vec<f32> = (0..c * k[0] * k[1]).map(|_| next()).collect();
                    let kernel = m.add_const("k", Tensor::from_shape(&[c, 1, k[0], k[1]], &kv)?)?;
                    let bv: Vec<f32> = (0..c).map(|_| next()).collect();
                    let bias = m.add_const("b", Tensor::from_shape(&[c], &bv)?)?;
                    let conv = Conv { pool_spec: spec, kernel_fmt: KernelFormat::OIHW, group: c, q_params: None };
                    let y = m.wire_node("conv", conv.clone(), &[x, kernel, bias])?;
                    m.select_output_outlets(&y)?;
                    let len: usize = shape.iter().product();
                    let input = Tensor::from_shape(&shape, &(0..len).map(|_| next()).collect::<Vec<f32>>())?;
                    let theirs =
                        m.clone().into_optimized()?.into_runnable()?.run(tvec!(input.clone().into_tvalue()))?;
                    let facts: Vec<TypedFact> = m.node_input_facts(y[0].node)?.into_iter().cloned().collect();
                    assert!(plane_conv(&conv, &facts) && is_depthwise(&conv), "{k:?} {s:?} {padding:?}");
                    let node = y[0].node;
                    m.node_mut(node).op = Box::new(PlaneDepthwise { pool_spec: conv.pool_spec.clone(), relu: false });
                    let ours = m.into_runnable()?.run(tvec!(input.into_tvalue()))?;
                    assert_eq!(theirs[0].shape(), ours[0].shape());
                    let (a, b) = (theirs[0].try_as_plain_ram()?, ours[0].try_as_plain_ram()?);
                    for (p, q) in a.as_slice::<f32>()?.iter().zip(b.as_slice::<f32>()?) {
                        assert!((p - q).abs() <= 1e-5 * p.abs().max(1.0), "{k:?} {s:?} {d:?} {padding:?}: {p} vs {q}");
                    }
                    cases += 1;
                }
            }
        }
        assert_eq!(cases, 4 * 8 * 6);
        Ok(())
    }
}
