//! 2-D max and average pooling over NCHW planes.
//!
//! neorun swaps tract's `MaxPool` and `SumPool` for `PlanePool` when a model
//! is f32, NCHW, 2-D and undilated (`substitute`, before tract's code
//! generation). tract's optimized pools walk a generic patch description
//! element by element; on SqueezeNet its three max pools took 26% of a batch-1
//! run, on Inception v1 14% (`neorun bench --profile`). Here each output row
//! first reduces the window's input rows into one row with slice loops the
//! compiler vectorises (AVX2 where the CPU has it), then reduces each output
//! column's few entries of that row; planes are spread over tract's threads.
//! Max ignores padding (a window with no input element gives f32::MIN, as
//! tract's does); average divides by the window's size within the padded
//! input (`count_include_pad`) or by its number of input elements.

use tract_core::internal::*;
use tract_core::ops::cnn::{MaxPool, PoolSpec, SumPool};
use tract_core::ops::nn::DataFormat;

use super::window::Window;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reduce {
    Max,
    /// Sum, divided by the count when `normalize`.
    Sum {
        count_include_pad: bool,
        normalize: bool,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PlanePool {
    pub pool_spec: PoolSpec,
    pub reduce: Reduce,
}

impl Op for PlanePool {
    fn name(&self) -> StaticName {
        match self.reduce {
            Reduce::Max => "PlaneMaxPool".into(),
            Reduce::Sum { .. } => "PlaneSumPool".into(),
        }
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(self.pool_spec.info())
    }

    op_as_typed_op!();
}

impl EvalOp for PlanePool {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let input = args_1!(inputs);
        let shape = input.shape().to_vec();
        ensure!(shape.len() == 4, "PlanePool takes NCHW input, got shape {shape:?}");
        let (n, c, h, w) = (shape[0], shape[1], shape[2], shape[3]);
        let ks = &self.pool_spec.kernel_shape;
        let geo = Window::new(&self.pool_spec, h, w, ks[0], ks[1]);
        let x = input.try_as_plain_ram()?;
        let x = x.as_slice::<f32>()?;
        let mut output = Tensor::zero::<f32>(&[n, c, geo.oh, geo.ow])?;
        let out_plane = geo.oh * geo.ow;
        if out_plane > 0 && n * c > 0 {
            let mut view = output.try_as_plain_ram_mut()?;
            let y = view.as_slice_mut::<f32>()?;
            let work = n * c * geo.oh * geo.kh * geo.w;
            tract_linalg::multithread::par_chunks_mut(y, out_plane, work, |first, planes| {
                let mut row = vec![0f32; geo.w];
                for (i, out) in planes.chunks_mut(out_plane).enumerate() {
                    let p = first + i;
                    let xp = &x[p * h * w..(p + 1) * h * w];
                    #[cfg(target_arch = "x86_64")]
                    if std::arch::is_x86_feature_detected!("avx2") {
                        // SAFETY: the CPU has AVX2 (checked just above)
                        unsafe { plane_avx2(self.reduce, &geo, xp, out, &mut row) };
                        continue;
                    }
                    plane(self.reduce, &geo, xp, out, &mut row);
                }
                Ok(())
            })?;
        }
        Ok(tvec!(output.into_tvalue()))
    }
}

/// One plane: `x` is H×W, `out` OH×OW, `row` W floats of scratch.
#[inline(always)]
fn plane(reduce: Reduce, g: &Window, x: &[f32], out: &mut [f32], row: &mut [f32]) {
    let max = matches!(reduce, Reduce::Max);
    for oy in 0..g.oh {
        let y0 = (oy * g.sh) as isize - g.top as isize;
        let (lo, hi) = (y0.max(0) as usize, ((y0 + g.kh as isize).max(0) as usize).min(g.h));
        if max {
            row.iter_mut().for_each(|r| *r = f32::MIN);
            for iy in lo..hi {
                for (r, v) in row.iter_mut().zip(&x[iy * g.w..(iy + 1) * g.w]) {
                    *r = r.max(*v);
                }
            }
        } else {
            row.iter_mut().for_each(|r| *r = 0.0);
            for iy in lo..hi {
                for (r, v) in row.iter_mut().zip(&x[iy * g.w..(iy + 1) * g.w]) {
                    *r += v;
                }
            }
        }
        let rows = hi.saturating_sub(lo);
        // window rows inside the padded input (ceil mode can overhang it)
        let padded_rows = (y0 + g.kh as isize).min((g.h + g.bottom) as isize) - y0.max(-(g.top as isize));
        let out_row = &mut out[oy * g.ow..(oy + 1) * g.ow];
        // columns whose window lies inside the row: [a, b)
        let a = g.left.div_ceil(g.sw).min(g.ow);
        let b = if g.w + g.left >= g.kw { ((g.w + g.left - g.kw) / g.sw + 1).clamp(a, g.ow) } else { a };
        for ox in (0..a).chain(b..g.ow) {
            let x0 = (ox * g.sw) as isize - g.left as isize;
            let (l, r) = (x0.max(0) as usize, ((x0 + g.kw as isize).max(0) as usize).min(g.w));
            let window = &row[l.min(r)..r];
            out_row[ox] = match reduce {
                Reduce::Max => window.iter().fold(f32::MIN, |m, v| m.max(*v)),
                Reduce::Sum { count_include_pad, normalize } => {
                    let s: f32 = window.iter().sum();
                    if !normalize {
                        s
                    } else if count_include_pad {
                        let cols = (x0 + g.kw as isize).min((g.w + g.right) as isize) - x0.max(-(g.left as isize));
                        s / (padded_rows * cols) as f32
                    } else {
                        // an empty window divides 0 by 0, as tract's does
                        s / (rows * window.len()) as f32
                    }
                }
            };
        }
        if a < b {
            // interior: one pass over the row per kernel column, no bounds
            // to clip (contiguous, so vectorised, when the stride is 1)
            let inner = &mut out_row[a..b];
            let first = a * g.sw - g.left;
            for (j, start) in (first..first + g.kw).enumerate() {
                let src = row[start..].iter().step_by(g.sw);
                match (reduce, j) {
                    (_, 0) => inner.iter_mut().zip(src).for_each(|(o, v)| *o = *v),
                    (Reduce::Max, _) => inner.iter_mut().zip(src).for_each(|(o, v)| *o = o.max(*v)),
                    (Reduce::Sum { .. }, _) => inner.iter_mut().zip(src).for_each(|(o, v)| *o += v),
                }
            }
            if let Reduce::Sum { count_include_pad, normalize: true } = reduce {
                let count = if count_include_pad { padded_rows as usize * g.kw } else { rows * g.kw };
                let count = count as f32;
                inner.iter_mut().for_each(|o| *o /= count);
            }
        }
    }
}

/// `plane` compiled for AVX2 (neorun's baseline is plain x86-64).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn plane_avx2(reduce: Reduce, g: &Window, x: &[f32], out: &mut [f32], row: &mut [f32]) {
    plane(reduce, g, x, out, row)
}

impl TypedOp for PlanePool {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        self.pool_spec.output_facts(inputs)
    }

    as_op!();
}

/// Whether `spec` over `fact` is a pool `PlanePool` computes.
fn fits(spec: &PoolSpec, fact: &TypedFact) -> bool {
    fact.datum_type == f32::datum_type()
        && fact.rank() == 4
        && spec.data_format == DataFormat::NCHW
        && spec.kernel_shape.len() == 2
        && spec.dilations().iter().all(|d| *d == 1)
        && spec.input_channels == spec.output_channels
}

/// Replaces tract's 2-D NCHW f32 max and average pools with `PlanePool`;
/// returns how many. Run before code generation (the optimized pools are
/// tract's own).
pub fn substitute(model: &mut TypedModel) -> TractResult<usize> {
    let mut replaced = 0;
    for id in 0..model.nodes().len() {
        let fact = match model.node(id).inputs.first() {
            Some(i) => model.outlet_fact(*i)?.clone(),
            None => continue,
        };
        let node = model.node(id);
        let op = if let Some(p) = node.op_as::<MaxPool>() {
            if p.with_index_outputs.is_some() || !fits(&p.pool_spec, &fact) {
                continue;
            }
            PlanePool { pool_spec: p.pool_spec.clone(), reduce: Reduce::Max }
        } else if let Some(p) = node.op_as::<SumPool>() {
            if !fits(&p.pool_spec, &fact) {
                continue;
            }
            let reduce = Reduce::Sum { count_include_pad: p.count_include_pad, normalize: p.normalize };
            PlanePool { pool_spec: p.pool_spec.clone(), reduce }
        } else {
            continue;
        };
        model.node_mut(id).op = Box::new(op);
        replaced += 1;
    }
    Ok(replaced)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tract_core::ops::cnn::PaddingSpec;

    fn spec(k: [usize; 2], s: [usize; 2], padding: PaddingSpec, c: usize) -> PoolSpec {
        PoolSpec {
            data_format: DataFormat::NCHW,
            kernel_shape: k.into_iter().collect(),
            padding,
            dilations: None,
            strides: Some(s.into_iter().collect()),
            input_channels: c,
            output_channels: c,
        }
    }

    /// Compares with tract's own pools on seeded data: kernels, strides,
    /// paddings (valid, same, explicit, asymmetric), both averaging modes.
    #[test]
    fn matches_tracts_pools() -> TractResult<()> {
        let mut next = crate::seeded_values(0x9e37_79b9_u64);
        let paddings = || {
            vec![
                PaddingSpec::Valid,
                PaddingSpec::SameUpper,
                PaddingSpec::ExplicitOnnxPool(tvec![1, 0], tvec![1, 2], false),
                PaddingSpec::ExplicitOnnxPool(tvec![1, 1], tvec![1, 1], true),
            ]
        };
        let mut cases = 0;
        for shape in [[1usize, 3, 9, 11], [2, 4, 7, 7], [1, 2, 3, 5]] {
            for (k, s) in [([3, 3], [2, 2]), ([3, 3], [1, 1]), ([2, 2], [2, 2]), ([1, 3], [1, 2]), ([5, 5], [3, 3])] {
                for padding in paddings() {
                    let ps = spec(k, s, padding, shape[1]);
                    let len: usize = shape.iter().product();
                    let x = Tensor::from_shape(&shape, &(0..len).map(|_| next()).collect::<Vec<f32>>())?;
                    let mut pairs: Vec<(Box<dyn TypedOp>, PlanePool)> = vec![(
                        Box::new(MaxPool { pool_spec: ps.clone(), with_index_outputs: None }),
                        PlanePool { pool_spec: ps.clone(), reduce: Reduce::Max },
                    )];
                    for (cip, norm) in [(true, true), (false, true), (false, false)] {
                        pairs.push((
                            Box::new(SumPool { pool_spec: ps.clone(), count_include_pad: cip, normalize: norm }),
                            PlanePool {
                                pool_spec: ps.clone(),
                                reduce: Reduce::Sum { count_include_pad: cip, normalize: norm },
                            },
                        ));
                    }
                    for (theirs, ours) in pairs {
                        let fact = f32::fact(shape);
                        let Ok(out_fact) = ours.output_facts(&[&fact]) else { continue };
                        if out_fact[0].shape.iter().any(|d| d.to_usize().map(|d| d == 0).unwrap_or(true)) {
                            continue;
                        }
                        let a = theirs.eval_out_of_plan(tvec!(x.clone().into_tvalue()))?.unwrap();
                        let b = ours.eval_out_of_plan(tvec!(x.clone().into_tvalue()))?.unwrap();
                        assert_eq!(a[0].shape(), b[0].shape(), "{} {ps:?}", ours.name());
                        let (a, b) = (a[0].try_as_plain_ram()?, b[0].try_as_plain_ram()?);
                        for (p, q) in a.as_slice::<f32>()?.iter().zip(b.as_slice::<f32>()?) {
                            let same = (p.is_nan() && q.is_nan()) || (p - q).abs() <= 1e-5 * p.abs().max(1.0);
                            assert!(same, "{} {ps:?}: {p} vs {q}", ours.name());
                        }
                        cases += 1;
                    }
                }
            }
        }
        assert!(cases > 150, "only {cases} cases compared");
        Ok(())
    }
}
