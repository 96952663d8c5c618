//! Convolutions and constant-weight matrix products through the `gemm`
//! crate's kernels (x86-64 with AVX2 and FMA; its AVX-512 kernels where the
//! CPU has AVX-512F).
//!
//! (Over 600 lines on purpose: `GemmConv` and `GemmEinSum` share `Product`,
//! the hand-off to tract's threads and the weight layouts, which would be
//! split across files only to be imported back; a fifth of it is the tests
//! that check both against tract's own operators.)
//!
//! tract turns convolutions into im2col + its own matrix-product kernels;
//! on the zoo CNNs those products were 65-92% of a run (`neorun bench
//! --profile`) and ran at about 130 GFLOP/s on one core of this project's
//! AVX-512 (Zen 5) host, where `gemm`'s kernels reach 200-240 on the same
//! shapes (ResNet-50's 3x3 convolutions, m=64 k=576 n=3136: 1.7 ms in
//! tract, 1.1 ms in gemm). neorun therefore swaps, in f32 models, before
//! tract's code generation:
//! - `Conv` (2-D, NCHW or CHW, OIHW kernels, any stride, dilation, padding and
//!   group count except depthwise) for `GemmConv`: per image and group,
//!   the output block (O/g × OH·OW) = kernel (O/g × C/g·KH·KW) · columns,
//!   where the columns are the input itself for an unpadded 1x1 stride-1
//!   convolution and an im2col buffer otherwise (built a band of output rows
//!   at a time so that it stays under `COLUMNS_LIMIT` floats);
//! - `EinSum` products of a tensor with a rank-2 weight (what tract makes of
//!   1x1 convolutions and of dense layers) for `GemmEinSum`, when the product
//!   is large enough (`MIN_EINSUM_MACS`) for the call to pay off.
//!
//! The bias is written into the output before the product accumulates onto
//! it. Threads: the products run on tract's thread pool, with its size.

use tract_core::internal::*;
use tract_core::ops::cnn::{Conv, PoolSpec};
use tract_core::ops::einsum::EinSum;
use tract_core::ops::nn::DataFormat;

use super::simd;
use super::simd::available;
use super::window::{is_depthwise, nchw, plane_conv, Window};

/// im2col buffers hold at most this many floats (4 MiB, so that the band
/// the product reads is still in cache); larger ones are built a band of
/// output rows at a time. VGG-19 ran in 196 ms with bands of 1 Mi or 256 Ki
/// floats, 218 ms with 4 Mi, 239 ms with 64 Ki.
const COLUMNS_LIMIT: usize = 1 << 20;

/// Smaller products stay with tract (its call overhead is lower).
const MIN_EINSUM_MACS: usize = 1 << 18;

/// What a symbolic dimension of a product's data counts as when
/// `substitute` weighs it against `MIN_EINSUM_MACS`: a serving batch.
const SYMBOLIC_ROWS: usize = 256;

/// Products of fewer weight rows than this (a classifier's last layer: one
/// logit per row of data) are dot products of each data column with each
/// weight row (`thin`), not calls into `gemm`: tract ran fraud-mlp's last
/// layer (m = 1, k = 32) over 8192 rows in about 1 ms, packing the data
/// first, for 262 Ki multiply-adds.
const THIN_ROWS: usize = 8;

/// Thin products this large (multiply-adds, a symbolic batch counted as
/// `SYMBOLIC_ROWS`) are taken from tract.
const MIN_THIN_MACS: usize = 1 << 13;

/// Dense layers with at most this many inputs (k) per output run through
/// `dense512` on AVX-512 CPUs: register tiles over rows of data, the weight
/// block in L1, the bias loaded into the accumulators and the ReLU applied
/// before the one store. `gemm` packs and blocks for large k, and its
/// output takes three passes here (bias, product, ReLU): fraud-mlp's
/// 30→64→32 layers over 8192 rows took 530 µs in it.
const DENSE_MAX_K: usize = 512;

/// `dst (m×n) = [dst +] lhs (m×k) · rhs (k×n)`; every operand given by a
/// pointer and its (row, column) strides in elements.
#[derive(Clone, Copy)]
struct Product {
    m: usize,
    n: usize,
    k: usize,
    dst: (isize, isize),
    lhs: (isize, isize),
    rhs: (isize, isize),
    accumulate: bool,
}

impl Product {
    /// # Safety
    /// Every element the strides address from `dst`, `lhs` and `rhs` must
    /// be in bounds, and `dst` must not overlap the others.
    unsafe fn run(&self, dst: *mut f32, lhs: *const f32, rhs: *const f32, threads: usize) {
        if self.m == 0 || self.n == 0 {
            return;
        }
        let par = if threads > 1 { gemm_common::Parallelism::Rayon(threads) } else { gemm_common::Parallelism::None };
        // gemm's kernels are fastest (about 240 GFLOP/s on one core here)
        // when its lhs is contiguous along m and its rhs along k, and up to
        // 4x slower otherwise (51 GFLOP/s for a 1024×256 weight stored
        // [m, k] times a 256×128 k-contiguous input): the product is
        // computed as given, or as dst^T = rhs^T · lhs^T, whichever puts
        // more unit strides where gemm wants them (`substitute` stores
        // weights in the layout that makes it two). gemm's order: sizes, dst
        // and its (column, row) strides, whether to read dst, lhs and rhs
        // likewise, then dst = alpha·dst + beta·lhs·rhs
        let as_given = (self.lhs.0 == 1) as u8 + (self.rhs.0 == 1) as u8;
        let transposed = (self.rhs.1 == 1) as u8 + (self.lhs.1 == 1) as u8;
        let (m, n, dst_s, lhs, lhs_s, rhs, rhs_s) = if transposed >= as_given {
            (self.n, self.m, (self.dst.1, self.dst.0), rhs, (self.rhs.1, self.rhs.0), lhs, (self.lhs.1, self.lhs.0))
        } else {
            (self.m, self.n, self.dst, lhs, self.lhs, rhs, self.rhs)
        };
        (gemm_f32::gemm::f32::get_gemm_fn())(
            m,
            n,
            self.k,
            dst,
            dst_s.1,
            dst_s.0,
            self.accumulate,
            lhs,
            lhs_s.1,
            lhs_s.0,
            rhs,
            rhs_s.1,
            rhs_s.0,
            1.0,
            1.0,
            false,
            false,
            false,
            par,
        )
    }
}

/// Products of fewer multiply-adds than this, called from outside tract's
/// pool, stay on the calling thread: handing work to the pool and back costs
/// about 25 µs, more than two threads save on them (image-cnn, a 100 µs
/// model, ran slower on 2 threads than on 1 before this).
const HAND_OFF_MIN_MACS: usize = 16 << 20;

/// Runs `f(threads)` on tract's thread pool when it has more than one
/// thread (so that `gemm`'s rayon calls use that pool), else here; `macs`
/// is the work's size (see `HAND_OFF_MIN_MACS`).
fn on_tract_threads<R: Send>(macs: usize, f: impl FnOnce(usize) -> R + Send) -> R {
    use tract_linalg::multithread::{current_tract_executor, Executor};
    match current_tract_executor() {
        Executor::MultiThread(pool)
            if pool.current_num_threads() > 1
                && (pool.current_thread_index().is_some() || macs >= HAND_OFF_MIN_MACS) =>
        {
            let threads = pool.current_num_threads();
            pool.install(|| f(threads))
        }
        _ => f(1),
    }
}

/// A raw pointer that may cross into the pool's threads; the code that
/// makes one keeps what it points to alive and unaliased for the call.
#[derive(Clone, Copy)]
struct SendPtr<T>(*mut T);
unsafe impl<T> Send for SendPtr<T> {}
unsafe impl<T> Sync for SendPtr<T> {}

impl<T> SendPtr<T> {
    /// The pointer (a method, so that closures capture the whole `SendPtr`).
    fn get(self) -> *mut T {
        self.0
    }
}

/// A 2-D NCHW (or CHW) f32 convolution computed with `gemm`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct GemmConv {
    pub pool_spec: PoolSpec,
    pub group: usize,
    /// A ReLU after the convolution, applied band by band while the output
    /// is still in cache (`epilogue::fuse`).
    pub relu: bool,
}

impl Op for GemmConv {
    fn name(&self) -> StaticName {
        "GemmConv".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        let mut info = self.pool_spec.info();
        info.push(format!("group: {}{}", self.group, if self.relu { "; then ReLU" } else { "" }));
        Ok(info)
    }

    op_as_typed_op!();
}

/// One convolution's geometry, with concrete sizes.
#[derive(Clone, Copy, Debug)]
struct ConvGeo {
    c: usize,
    o: usize,
    group: usize,
    win: Window,
}

impl ConvGeo {
    /// Input channels per group.
    fn cg(&self) -> usize {
        self.c / self.group
    }
    /// Output channels per group.
    fn og(&self) -> usize {
        self.o / self.group
    }
    /// Rows of the im2col matrix (and the kernel's row length) per group.
    fn kg(&self) -> usize {
        self.cg() * self.win.kh * self.win.kw
    }
    /// Whether the input itself is the im2col matrix.
    fn direct(&self) -> bool {
        self.win.kh == 1
            && self.win.kw == 1
            && self.win.sh == 1
            && self.win.sw == 1
            && self.win.top == 0
            && self.win.left == 0
            && self.win.oh == self.win.h
            && self.win.ow == self.win.w
    }
}

impl EvalOp for GemmConv {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let (input, kernel, bias) = args_3!(inputs);
        let batched = self.pool_spec.data_format == DataFormat::NCHW;
        let (n, c, h, w) = nchw(input.shape(), self.pool_spec.data_format).context("GemmConv")?;
        let kshape = kernel.shape();
        ensure!(kshape.len() == 4, "GemmConv takes an OIHW kernel, got shape {kshape:?}");
        let win = Window::new(&self.pool_spec, h, w, kshape[2], kshape[3]);
        let g = ConvGeo { c, o: kshape[0], group: self.group, win };
        ensure!(
            c % g.group == 0 && g.o.is_multiple_of(g.group) && kshape[1] * g.group == c,
            "GemmConv: kernel {kshape:?} does not fit {c} input channels in {} groups",
            g.group
        );
        let kernel = kernel.try_as_plain_ram()?;
        let kernel = kernel.as_slice::<f32>()?;
        let bias = bias.try_as_plain_ram()?;
        let bias = bias.as_slice::<f32>()?;
        ensure!(bias.len() <= 1 || bias.len() == g.o, "GemmConv: {} bias values for {} outputs", bias.len(), g.o);
        let x = input.try_as_plain_ram()?;
        let x = x.as_slice::<f32>()?;
        // SAFETY: every element is written below (the bias, or the product
        // with accumulate off)
        let oshape = if batched { vec![n, g.o, g.win.oh, g.win.ow] } else { vec![g.o, g.win.oh, g.win.ow] };
        let mut output = unsafe { Tensor::uninitialized::<f32>(&oshape)? };
        if output.len() > 0 {
            let mut view = output.try_as_plain_ram_mut()?;
            let y = view.as_slice_mut::<f32>()?;
            let macs = y.len() * g.kg();
            on_tract_threads(macs, |threads| conv(&g, n, x, kernel, bias, y, self.relu, threads));
        }
        Ok(tvec!(output.into_tvalue()))
    }
}

/// The whole convolution: `y` is N×O×OH×OW, `x` N×C×H×W, `kernel` O×C/g×KH×KW.
#[allow(clippy::too_many_arguments)]
fn conv(g: &ConvGeo, n: usize, x: &[f32], kernel: &[f32], bias: &[f32], y: &mut [f32], relu: bool, threads: usize) {
    let (kg, ohw) = (g.kg(), g.win.oh * g.win.ow);
    let has_bias = bias.iter().any(|b| *b != 0.0);
    if has_bias {
        for (o, plane) in y.chunks_mut(ohw).enumerate() {
            plane.fill(bias[if bias.len() == 1 { 0 } else { o % g.o }]);
        }
    }
    // output rows per band of the im2col matrix
    let band = if g.direct() { g.win.oh } else { (COLUMNS_LIMIT / (kg * g.win.ow).max(1)).clamp(1, g.win.oh) };
    // reused between calls: a fresh buffer each time cost page faults (and
    // their serialisation in the kernel) on every convolution. Taken out of
    // the thread's slot, not borrowed in it: while this thread waits inside
    // the GEMM, rayon may hand it another inference's convolution (work
    // stealing), which finds the slot empty and uses a buffer of its own.
    let mut columns = COLUMNS.take();
    let len = if g.direct() { 0 } else { kg * band * g.win.ow };
    if columns.len() < len {
        columns = vec![0f32; len];
    }
    conv_bands(g, n, x, kernel, y, band, has_bias, relu, &mut columns, threads);
    COLUMNS.with_borrow_mut(|slot| {
        if slot.len() < columns.len() {
            *slot = columns;
        }
    });
}

thread_local! {
    /// Each thread's im2col buffer (kept at the largest size used so far:
    /// `COLUMNS_LIMIT` floats, or one band of output rows when a single row
    /// is larger).
    static COLUMNS: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

#[allow(clippy::too_many_arguments)]
fn conv_bands(
    g: &ConvGeo,
    n: usize,
    x: &[f32],
    kernel: &[f32],
    y: &mut [f32],
    band: usize,
    has_bias: bool,
    relu: bool,
    columns: &mut [f32],
    threads: usize,
) {
    let (kg, og, ohw) = (g.kg(), g.og(), g.win.oh * g.win.ow);
    for b in 0..n {
        for gi in 0..g.group {
            let xg = &x[(b * g.c + gi * g.cg()) * g.win.h * g.win.w..][..g.cg() * g.win.h * g.win.w];
            let yg = &mut y[(b * g.o + gi * og) * ohw..][..og * ohw];
            let lhs = kernel[gi * og * kg..][..og * kg].as_ptr();
            let mut oy0 = 0;
            while oy0 < g.win.oh {
                let rows = band.min(g.win.oh - oy0);
                let cols = rows * g.win.ow;
                let rhs = if g.direct() {
                    xg.as_ptr()
                } else {
                    im2col(g, xg, oy0, rows, &mut columns[..kg * cols], threads);
                    columns.as_ptr()
                };
                let p = Product {
                    m: og,
                    n: cols,
                    k: kg,
                    dst: (ohw as isize, 1),
                    lhs: (kg as isize, 1),
                    rhs: (cols as isize, 1),
                    accumulate: has_bias,
                };
                // SAFETY: lhs is og×kg within the kernel, rhs kg×cols within
                // `columns` (or the group's input, which is cg×h·w = kg×cols
                // when direct), dst og rows of ohw from column oy0·ow within
                // `yg`; `yg` is the output, which nothing else aliases
                unsafe { p.run(yg[oy0 * g.win.ow..].as_mut_ptr(), lhs, rhs, threads) };
                if relu {
                    for o in 0..og {
                        simd::relu(&mut yg[o * ohw + oy0 * g.win.ow..][..cols]);
                    }
                }
                oy0 += rows;
            }
        }
    }
}

/// Writes the im2col matrix of output rows `oy0..oy0+rows` of one image and
/// group: row `(c·KH + ky)·KW + kx`, column `(oy-oy0)·OW + ox` holds input
/// `(c, oy·sh + ky·dh - top, ox·sw + kx·dw - left)`, zero in the padding.
fn im2col(g: &ConvGeo, x: &[f32], oy0: usize, rows: usize, out: &mut [f32], threads: usize) {
    let cols = rows * g.win.ow;
    let fill = |first: usize, chunk: &mut [f32]| {
        for (i, dst) in chunk.chunks_mut(cols).enumerate() {
            let r = first + i;
            let (c, ky, kx) = (r / (g.win.kh * g.win.kw), (r / g.win.kw) % g.win.kh, r % g.win.kw);
            let plane = &x[c * g.win.h * g.win.w..][..g.win.h * g.win.w];
            let (a, b, start) = g.win.inside_columns(kx);
            for (j, out_row) in dst.chunks_mut(g.win.ow).enumerate() {
                let iy = ((oy0 + j) * g.win.sh + ky * g.win.dh) as isize - g.win.top as isize;
                if iy < 0 || iy >= g.win.h as isize {
                    out_row.fill(0.0);
                    continue;
                }
                let src = &plane[iy as usize * g.win.w..][..g.win.w];
                out_row[..a].fill(0.0);
                out_row[b..].fill(0.0);
                if g.win.sw == 1 {
                    out_row[a..b].copy_from_slice(&src[start..start + (b - a)]);
                } else {
                    for (o, v) in out_row[a..b].iter_mut().zip(src[start..].iter().step_by(g.win.sw)) {
                        *o = *v;
                    }
                }
            }
        }
    };
    let work = out.len();
    if threads > 1 {
        // the pool is tract's (we run inside it); errors cannot happen here
        let _ = tract_linalg::multithread::par_chunks_mut(out, cols, work, |first, chunk| {
            fill(first, chunk);
            Ok(())
        });
    } else {
        fill(0, out);
    }
}

impl TypedOp for GemmConv {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        self.pool_spec.output_facts(inputs)
    }

    as_op!();
}

/// A product of a tensor with a rank-2 weight, computed with `gemm`: every
/// axis of the result is the weight's non-summed axis (`m`) or one of the
/// tensor's (`n` axes, the contiguous runs of them merged, the longest run
/// the product's columns and the others looped over).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct GemmEinSum {
    pub einsum: EinSum,
    /// Which input is the rank-2 weight.
    pub weight_slot: usize,
    /// The roles of `einsum`'s axes (found once, at substitution).
    roles: Roles,
    /// A constant added per row (`m`) of the product, and a ReLU after it
    /// (`epilogue::fuse`: a 1x1 convolution's bias and activation, which
    /// tract declutters into an addition and a maximum after the product).
    pub bias: Option<Arc<Tensor>>,
    pub relu: bool,
}

impl GemmEinSum {
    /// The product's row count (`m`), from the weight's fact.
    pub fn rows(&self, weight: &TypedFact) -> Option<usize> {
        weight.shape.get(self.roles.m.0).and_then(|d| d.to_usize().ok())
    }

    /// The output axis the rows (`m`) run along.
    pub fn row_axis(&self) -> usize {
        self.roles.m.1
    }
}

impl Op for GemmEinSum {
    fn name(&self) -> StaticName {
        "GemmEinSum".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        let then = match (&self.bias, self.relu) {
            (Some(_), true) => "; then bias, ReLU",
            (Some(_), false) => "; then bias",
            (None, true) => "; then ReLU",
            (None, false) => "",
        };
        Ok(vec![format!("{}{then}", self.einsum.axes)])
    }

    op_as_typed_op!();
}

/// Roles of an einsum's axes, as `GemmEinSum` needs them.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Roles {
    /// (position in weight, in data) of the summed axis.
    k: (usize, usize),
    /// (position in weight, in output) of the weight's other axis.
    m: (usize, usize),
    /// (position in data, in output) of every other axis, in data order.
    n: Vec<(usize, usize)>,
    /// Positions of axes only in the data, or only in the output: of
    /// extent 1 (tract's decluttering adds and drops them around products).
    data_units: Vec<usize>,
    output_units: Vec<usize>,
}

fn axis_roles(axes: &AxesMapping, weight_slot: usize) -> Option<Roles> {
    let data_slot = 1 - weight_slot;
    if axes.input_count() != 2 || axes.output_count() != 1 || axes.rank(InOut::In(weight_slot)) != 2 {
        return None;
    }
    let (mut k, mut m, mut n, mut data_units, mut output_units) = (None, None, vec![], vec![], vec![]);
    for axis in axes.iter_all_axes() {
        let (w, d, o) = (&axis.inputs[weight_slot], &axis.inputs[data_slot], &axis.outputs[0]);
        if w.len() > 1 || d.len() > 1 || o.len() > 1 {
            return None;
        }
        match (w.first(), d.first(), o.first()) {
            (Some(&w), Some(&d), None) if k.is_none() => k = Some((w, d)),
            (Some(&w), None, Some(&o)) if m.is_none() => m = Some((w, o)),
            (None, Some(&d), Some(&o)) => n.push((d, o)),
            (None, Some(&d), None) => data_units.push(d),
            (None, None, Some(&o)) => output_units.push(o),
            _ => return None,
        }
    }
    n.sort();
    Some(Roles { k: k?, m: m?, n, data_units, output_units })
}

fn row_major_strides(shape: &[usize]) -> Vec<isize> {
    let mut strides = vec![1isize; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        strides[i] = strides[i + 1] * shape[i + 1] as isize;
    }
    strides
}

impl EvalOp for GemmEinSum {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let roles = &self.roles;
        let (weight, data) = (&inputs[self.weight_slot], &inputs[1 - self.weight_slot]);
        let (wshape, dshape) = (weight.shape(), data.shape());
        ensure!(wshape[roles.k.0] == dshape[roles.k.1], "GemmEinSum: summed axis {wshape:?} vs {dshape:?}");
        ensure!(
            roles.data_units.iter().all(|d| dshape[*d] == 1),
            "GemmEinSum: summed-away axis of {dshape:?} is not 1"
        );
        let mut oshape = vec![1usize; roles.n.len() + 1 + roles.output_units.len()];
        oshape[roles.m.1] = wshape[roles.m.0];
        for &(d, o) in &roles.n {
            oshape[o] = dshape[d];
        }
        let (ws, ds, os) = (row_major_strides(wshape), row_major_strides(dshape), row_major_strides(&oshape));
        // runs of n axes that are contiguous in both the data and the output
        let mut runs: Vec<(usize, isize, isize)> = vec![]; // (extent, data stride, output stride)
        for &(d, o) in &roles.n {
            let (len, dst, ost) = (dshape[d], ds[d], os[o]);
            match runs.last_mut() {
                Some(last) if last.1 == dst * len as isize && last.2 == ost * len as isize => {
                    *last = (last.0 * len, dst, ost)
                }
                _ => runs.push((len, dst, ost)),
            }
        }
        let widest = (0..runs.len()).max_by_key(|i| runs[*i].0);
        let (cols, dcs, ocs) = widest.map(|i| runs.remove(i)).unwrap_or((1, 1, 1));
        let p = Product {
            m: wshape[roles.m.0],
            n: cols,
            k: wshape[roles.k.0],
            dst: (os[roles.m.1], ocs),
            lhs: (ws[roles.m.0], ws[roles.k.0]),
            rhs: (ds[roles.k.1], dcs),
            accumulate: self.bias.is_some(),
        };
        let w = weight.try_as_plain_ram()?;
        let w = w.as_slice::<f32>()?;
        let d = data.try_as_plain_ram()?;
        let d = d.as_slice::<f32>()?;
        let is_thin = p.m < THIN_ROWS && p.rhs.0 == 1;
        // a dense layer for `dense512`: output rows contiguous along m, data
        // along k, the weight [k, m] contiguous along m, one product
        #[cfg(target_arch = "x86_64")]
        let dense = p.dst.0 == 1
            && p.rhs.0 == 1
            && p.lhs.0 == 1
            && p.lhs.1 == p.m as isize
            && p.m.is_multiple_of(16)
            && p.k <= DENSE_MAX_K
            && runs.is_empty()
            && std::arch::is_x86_feature_detected!("avx512f");
        #[cfg(not(target_arch = "x86_64"))]
        let dense = false;
        let mut output = match &self.bias {
            // the kernel loads the bias itself
            // SAFETY: `dense512` writes every element
            _ if dense => unsafe { Tensor::uninitialized::<f32>(&oshape)? },
            Some(bias) => {
                // the bias first, the product accumulated onto it
                let bias = bias.try_as_plain_ram()?;
                let bias = bias.as_slice::<f32>()?;
                ensure!(bias.len() == p.m, "GemmEinSum: {} bias values for {} rows", bias.len(), p.m);
                // SAFETY: every element is written just below
                let mut output = unsafe { Tensor::uninitialized::<f32>(&oshape)? };
                let inner = os[roles.m.1] as usize;
                let mut view = output.try_as_plain_ram_mut()?;
                let y = view.as_slice_mut::<f32>()?;
                if inner == 1 {
                    // rows along the innermost axis (dense layers): the bias
                    // is each row of the output (copied element by element:
                    // copy_from_slice called memmove per row, 8192 calls
                    // for fraud-mlp's last layer at 8192 rows)
                    for row in y.chunks_exact_mut(p.m) {
                        for (o, b) in row.iter_mut().zip(bias) {
                            *o = *b;
                        }
                    }
                } else {
                    for (i, run) in y.chunks_mut(inner).enumerate() {
                        run.fill(bias[i % p.m]);
                    }
                }
                output
            }
            // SAFETY: every element is written by one of the products below
            None => unsafe { Tensor::uninitialized::<f32>(&oshape)? },
        };
        let loops: usize = runs.iter().map(|r| r.0).product();
        #[cfg(target_arch = "x86_64")]
        if dense && output.len() > 0 {
            let bias = self.bias.as_ref().map(|b| b.try_as_plain_ram()).transpose()?;
            let bias = bias.as_ref().map(|b| b.as_slice::<f32>()).transpose()?;
            let mut view = output.try_as_plain_ram_mut()?;
            let y = view.as_slice_mut::<f32>()?;
            let (ys, xs) = (p.dst.1 as usize, p.rhs.1 as usize);
            ensure!(y.len() >= (p.n - 1) * ys + p.m && d.len() >= (p.n - 1) * xs + p.k && w.len() >= p.k * p.m);
            let layer = Dense { x: d, xs, w, k: p.k, m: p.m, bias, relu: self.relu };
            let run = |y: &mut [f32], x: &[f32], rows: usize| {
                // SAFETY: AVX-512F was detected above; the sizes were checked
                unsafe { dense512(y, ys, rows, &Dense { x, ..layer }) }
            };
            let pool = match tract_linalg::multithread::current_tract_executor() {
                tract_linalg::multithread::Executor::MultiThread(pool)
                    if pool.current_num_threads() > 1 && p.m * p.n * p.k >= HAND_OFF_MIN_MACS / 4 =>
                {
                    Some(pool)
                }
                _ => None,
            };
            match pool {
                // two halves of the rows on two of the pool's threads
                Some(pool) if p.n >= 2 => {
                    let half = p.n / 2;
                    let (ya, yb) = y.split_at_mut(half * ys);
                    let (xa, xb) = d.split_at(half * xs);
                    pool.join(|| run(ya, xa, half), || run(yb, xb, p.n - half));
                }
                _ => run(y, d, p.n),
            }
            return Ok(tvec!(output.into_tvalue()));
        }
        if is_thin && output.len() > 0 && p.k > 0 {
            // each weight row, contiguous along k
            let rows: Vec<Vec<f32>> = (0..p.m)
                .map(|mi| (0..p.k).map(|kk| w[mi * p.lhs.0 as usize + kk * p.lhs.1 as usize]).collect())
                .collect();
            let mut view = output.try_as_plain_ram_mut()?;
            let y = view.as_slice_mut::<f32>()?;
            for i in 0..loops {
                let (mut rest, mut doff, mut ooff) = (i, 0isize, 0isize);
                for r in runs.iter().rev() {
                    let j = (rest % r.0) as isize;
                    rest /= r.0;
                    doff += j * r.1;
                    ooff += j * r.2;
                }
                for (mi, row) in rows.iter().enumerate() {
                    // SAFETY: the CPU has AVX2 and FMA (`substitute` checked)
                    unsafe {
                        thin(y, ooff + mi as isize * p.dst.0, p.dst.1, d, doff, p.rhs.1, p.n, row, p.accumulate)
                    }?;
                }
            }
        } else if output.len() > 0 && p.k > 0 {
            let mut view = output.try_as_plain_ram_mut()?;
            let y = SendPtr(view.as_slice_mut::<f32>()?.as_mut_ptr());
            let (wp, dp) = (SendPtr(w.as_ptr() as *mut f32), SendPtr(d.as_ptr() as *mut f32));
            on_tract_threads(oshape.iter().product::<usize>() * p.k, |threads| {
                for i in 0..loops {
                    // the offsets of loop `i` over the remaining runs
                    let (mut rest, mut doff, mut ooff) = (i, 0isize, 0isize);
                    for r in runs.iter().rev() {
                        let j = (rest % r.0) as isize;
                        rest /= r.0;
                        doff += j * r.1;
                        ooff += j * r.2;
                    }
                    // SAFETY: offsets and strides come from the shapes of
                    // the weight, the data and the output allocated above
                    unsafe { p.run(y.get().offset(ooff), wp.get(), dp.get().offset(doff), threads) };
                }
            });
        } else if output.len() > 0 && self.bias.is_none() {
            output.try_as_plain_ram_mut()?.as_slice_mut::<f32>()?.fill(0.0);
        }
        if self.relu {
            simd::relu(output.try_as_plain_ram_mut()?.as_slice_mut::<f32>()?);
        }
        Ok(tvec!(output.into_tvalue()))
    }
}

/// A dense layer's operands for `dense512`: rows of data `xs` apart, the
/// weight (k × m, row-major), the bias per output, a ReLU after it.
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy)]
struct Dense<'a> {
    x: &'a [f32],
    xs: usize,
    w: &'a [f32],
    k: usize,
    m: usize,
    bias: Option<&'a [f32]>,
    relu: bool,
}

/// `y[r·ys ..][..m] = relu?(bias + x[r·xs ..][..k] · w)` for `rows` rows:
/// tiles of 6 rows × 64 columns (24 accumulators of the 32 registers),
/// 8 × 32 and 8 × 16, then one row at a time; the output written once.
///
/// # Safety
/// The CPU must have AVX-512F; `m` a multiple of 16; `y`, `x` and `w` hold
/// `rows` rows of `ys` and `xs` and k × m values (asserted).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn dense512(y: &mut [f32], ys: usize, rows: usize, l: &Dense) {
    if rows == 0 {
        return;
    }
    let (m, k) = (l.m, l.k);
    assert!(
        m.is_multiple_of(16)
            && y.len() >= (rows - 1) * ys + m
            && l.x.len() >= (rows - 1) * l.xs + k
            && l.w.len() >= k * m
    );
    assert!(l.bias.is_none_or(|b| b.len() == m));
    let mut j0 = 0;
    while j0 < m {
        // the widest block of columns left, with its row tile
        j0 += match m - j0 {
            64.. => dense_columns::<6, 4>(y, ys, rows, l, j0),
            32..=63 => dense_columns::<8, 2>(y, ys, rows, l, j0),
            _ => dense_columns::<8, 1>(y, ys, rows, l, j0),
        };
    }
}

/// Every row of the `V` × 16 columns from `j0`: tiles of `R` rows, then
/// one row at a time; returns the columns done.
///
/// # Safety
/// As `dense512`, whose checks cover every access here.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
#[inline]
unsafe fn dense_columns<const R: usize, const V: usize>(
    y: &mut [f32],
    ys: usize,
    rows: usize,
    l: &Dense,
    j0: usize,
) -> usize {
    let mut r0 = 0;
    while r0 + R <= rows {
        dense_tile::<R, V>(y, ys, r0, l, j0);
        r0 += R;
    }
    while r0 < rows {
        dense_tile::<1, V>(y, ys, r0, l, j0);
        r0 += 1;
    }
    V * 16
}

/// `R` rows × `V` registers of 16 columns from column `j0`.
///
/// # Safety
/// As `dense512`, whose checks cover every access here.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
#[inline]
#[allow(clippy::needless_range_loop)]
unsafe fn dense_tile<const R: usize, const V: usize>(y: &mut [f32], ys: usize, r0: usize, l: &Dense, j0: usize) {
    use std::arch::x86_64::*;
    let Dense { x, xs, w, k, m, bias, relu } = *l;
    let mut init = [_mm512_setzero_ps(); V];
    if let Some(b) = bias {
        for v in 0..V {
            init[v] = _mm512_loadu_ps(b.as_ptr().add(j0 + v * 16));
        }
    }
    let mut acc = [init; R];
    let (wp, xp) = (w.as_ptr().add(j0), x.as_ptr());
    for kk in 0..k {
        let mut wv = [_mm512_setzero_ps(); V];
        for v in 0..V {
            wv[v] = _mm512_loadu_ps(wp.add(kk * m + v * 16));
        }
        for r in 0..R {
            let xv = _mm512_set1_ps(*xp.add((r0 + r) * xs + kk));
            for v in 0..V {
                acc[r][v] = _mm512_fmadd_ps(xv, wv[v], acc[r][v]);
            }
        }
    }
    let zero = _mm512_setzero_ps();
    let yp = y.as_mut_ptr();
    for r in 0..R {
        for v in 0..V {
            // max(acc, 0) with acc first: NaN becomes 0, as `simd::relu` does
            let out = if relu { _mm512_max_ps(acc[r][v], zero) } else { acc[r][v] };
            _mm512_storeu_ps(yp.add((r0 + r) * ys + j0 + v * 16), out);
        }
    }
}

/// `y[at + j·ystride] (+)= row · x[from + j·xstride ..][..k]` for the n
/// columns j of one weight row: dot products of data contiguous along k,
/// 16 lanes at a time.
///
/// # Safety
/// The CPU must have AVX2 and FMA. Every index is checked.
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn thin(
    y: &mut [f32],
    at: isize,
    ystride: isize,
    x: &[f32],
    from: isize,
    xstride: isize,
    n: usize,
    row: &[f32],
    accumulate: bool,
) -> TractResult<()> {
    let k = row.len();
    let (body, tail) = row.split_at(k / 16 * 16);
    for j in 0..n as isize {
        let start = usize::try_from(from + j * xstride).context("thin product: data offset")?;
        let col = x.get(start..start + k).context("thin product: data out of bounds")?;
        let (cbody, ctail) = col.split_at(body.len());
        let mut lanes = [0f32; 16];
        for (w, c) in body.chunks_exact(16).zip(cbody.chunks_exact(16)) {
            for l in 0..16 {
                lanes[l] = w[l].mul_add(c[l], lanes[l]);
            }
        }
        let mut sum: f32 = lanes.iter().sum();
        for (w, c) in tail.iter().zip(ctail) {
            sum = w.mul_add(*c, sum);
        }
        let o = usize::try_from(at + j * ystride).context("thin product: output offset")?;
        let out = y.get_mut(o).context("thin product: output out of bounds")?;
        *out = if accumulate { *out + sum } else { sum };
    }
    Ok(())
}

impl TypedOp for GemmEinSum {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        self.einsum.output_facts(inputs)
    }

    as_op!();
}

/// A constant rank-1 weight (tract's decluttering leaves one of a product
/// with one output column, `nk,k->nm`) as a rank-2 one of one row, with the
/// output's unit axis as its rows (`nk,mk->nm`): its slot, the einsum's new
/// axes, the weight. `None` if the product has no such shape.
fn one_row_weight(einsum: &EinSum, facts: &[TypedFact]) -> Option<(usize, AxesMapping, Tensor)> {
    let slot = (0..2).find(|s| facts[*s].rank() == 1 && facts[*s].konst.is_some() && facts[1 - *s].konst.is_none())?;
    let (mut inputs, outputs) = einsum.axes.to_strs();
    let k = inputs[slot].chars().next()?;
    // an axis only in the output: of extent 1 there
    let unit = outputs.first()?.chars().find(|c| !inputs.iter().any(|i| i.contains(*c)))?;
    inputs[slot] = format!("{unit}{k}");
    let axes = AxesMapping::from_strs(&inputs, &outputs).ok()?;
    let w = (**facts[slot].konst.as_ref()?).clone();
    let len = w.len();
    let row = w.into_shape(&[1, len]).ok()?;
    Some((slot, axes, row))
}

/// Replaces f32 convolutions (depthwise ones are `depthwise.rs`'s) and
/// large constant-weight products with the `gemm` ones; returns how many.
/// Run after decluttering, before tract's code generation. Does nothing on
/// a CPU without AVX2 and FMA.
pub fn substitute(model: &mut TypedModel) -> TractResult<usize> {
    if !available() {
        return Ok(0);
    }
    let f32_dt = f32::datum_type();
    let mut replaced = 0;
    for id in 0..model.nodes().len() {
        let node = model.node(id);
        let facts: TVec<TypedFact> =
            node.inputs.iter().map(|i| model.outlet_fact(*i).cloned()).collect::<TractResult<_>>()?;
        if facts.is_empty() || facts.iter().any(|f| f.datum_type != f32_dt || !f.is_plain()) {
            continue;
        }
        let op: Box<dyn TypedOp> = if let Some(conv) = node.op_as::<Conv>() {
            if !plane_conv(conv, &facts) || is_depthwise(conv) {
                continue;
            }
            Box::new(GemmConv { pool_spec: conv.pool_spec.clone(), group: conv.group, relu: false })
        } else if let Some(einsum) = node.op_as::<EinSum>() {
            if einsum.q_params.is_some() || einsum.operating_dt != f32_dt || facts.len() != 2 {
                continue;
            }
            let mut einsum = einsum.clone();
            let mut facts = facts;
            // a one-row weight tract made rank 1: as rank 2 (wired in below,
            // once the product is taken)
            let mut row_weight = None;
            if let Some((slot, axes, row)) = one_row_weight(&einsum, &facts) {
                einsum.axes = axes;
                facts[slot] = TypedFact::try_from(row.clone())?;
                row_weight = Some((slot, row));
            }
            let node = model.node(id);
            // the weight: a constant of rank 2
            let Some(weight_slot) = (0..2).find(|s| facts[*s].rank() == 2 && facts[*s].konst.is_some()) else {
                continue;
            };
            let Some(roles) = axis_roles(&einsum.axes, weight_slot) else { continue };
            let data = &facts[1 - weight_slot];
            if !roles.data_units.iter().all(|d| data.shape[*d].is_one()) {
                continue;
            }
            let wshape = facts[weight_slot].shape.as_concrete().context("constant shape")?;
            // the product's size, a symbolic (batch) dimension counted as
            // SYMBOLIC_ROWS: fraud-mlp's dense layers (64x30, 64x32) stayed
            // with tract when it counted as 1, and 8192 rows ran in 4.9 ms
            // instead of 2.3 (64 rows: 19.9 µs instead of 15.0; 1 row: 3.6
            // and 3.4 µs, no worse)
            let cols: usize = roles.n.iter().map(|(d, _)| data.shape[*d].to_usize().unwrap_or(SYMBOLIC_ROWS)).product();
            let (m, k) = (wshape[roles.m.0], wshape[roles.k.0]);
            // the data contiguous along k (dense layers)
            let k_innermost = roles.k.1 + 1 == data.rank();
            let thin = m < THIN_ROWS && k_innermost && k >= 8 && m * k * cols >= MIN_THIN_MACS;
            if !thin && (m < 8 || k < 8 || m * k * cols < MIN_EINSUM_MACS) {
                continue;
            }
            // the weight's layout that lets `Product::run` give gemm unit
            // strides on both sides: [k, m] when the data is contiguous
            // along k (dense layers), [m, k] otherwise (1x1 convolutions)
            if (roles.m.0 == 1) != k_innermost {
                let weight =
                    (**facts[weight_slot].konst.as_ref().context("constant weight")?).clone().permute_axes(&[1, 0])?;
                let (mut inputs, outputs) = einsum.axes.to_strs();
                inputs[weight_slot] = inputs[weight_slot].chars().rev().collect();
                einsum.axes = AxesMapping::from_strs(&inputs, &outputs)?;
                let name = format!("{}.weight_mk", node.name);
                let konst = model.add_const(name, weight)?;
                model.add_edge(konst, InletId::new(id, weight_slot))?;
            } else if let Some((slot, row)) = row_weight {
                let name = format!("{}.weight_row", node.name);
                let konst = model.add_const(name, row)?;
                model.add_edge(konst, InletId::new(id, slot))?;
            }
            // the roles of the (possibly re-laid) weight's axes
            let roles = axis_roles(&einsum.axes, weight_slot).context("the re-laid weight's axes")?;
            Box::new(GemmEinSum { einsum, weight_slot, roles, bias: None, relu: false })
        } else {
            continue;
        };
        model.node_mut(id).op = op;
        replaced += 1;
    }
    Ok(replaced)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tract_core::ops::cnn::KernelFormat;
    use tract_core::ops::cnn::PaddingSpec;

    fn random(shape: &[usize], next: &mut impl FnMut() -> f32) -> TractResult<Tensor> {
        let len: usize = shape.iter().product();
        Tensor::from_shape(shape, &(0..len).map(|_| next()).collect::<Vec<f32>>())
    }

    /// Within f32 rounding of sums of `k` products of values in [-4, 4):
    /// both sides sum in different orders.
    fn assert_close(a: &Tensor, b: &Tensor, k: usize, what: &str) -> TractResult<()> {
        assert_eq!(a.shape(), b.shape(), "{what}");
        let (a, b) = (a.try_as_plain_ram()?, b.try_as_plain_ram()?);
        let atol = 16.0 * k as f32 * 4e-7;
        for (p, q) in a.as_slice::<f32>()?.iter().zip(b.as_slice::<f32>()?) {
            assert!((p - q).abs() <= 1e-5 * p.abs() + atol, "{what}: {p} vs {q}");
        }
        Ok(())
    }

    /// Runs a one-node model through tract's optimized plan, before and after
    /// `substitute`, and compares.
    fn compare(model: TypedModel, inputs: TVec<Tensor>, k: usize, what: &str) -> TractResult<usize> {
        let theirs = model
            .clone()
            .into_optimized()?
            .into_runnable()?
            .run(inputs.clone().into_iter().map(|t| t.into_tvalue()).collect())?;
        let mut ours = model.into_decluttered()?;
        let n = substitute(&mut ours)?;
        ours.optimize()?;
        let ours = ours.into_runnable()?.run(inputs.into_iter().map(|t| t.into_tvalue()).collect())?;
        assert_close(&theirs[0].clone().into_tensor(), &ours[0].clone().into_tensor(), k, what)?;
        Ok(n)
    }

    /// Convolutions against tract's on seeded data: kernels, strides,
    /// dilations, paddings, groups, batches, bias or none.
    #[test]
    fn convolutions_match_tracts() -> TractResult<()> {
        if !available() {
            eprintln!("no AVX2+FMA: GemmConv is not used on this CPU");
            return Ok(());
        }
        let mut next = crate::seeded_values(0x5851_f42d_u64);
        let mut substituted = 0;
        type Case = (usize, usize, usize, [usize; 2], [usize; 2], [usize; 2], usize);
        let cases: &[Case] = &[
            // (n, c, o, kernel, stride, dilation, group)
            (1, 3, 8, [3, 3], [1, 1], [1, 1], 1),
            (2, 4, 6, [3, 3], [2, 2], [1, 1], 1),
            (1, 8, 16, [1, 1], [1, 1], [1, 1], 1),
            (1, 8, 16, [1, 1], [2, 2], [1, 1], 1),
            (1, 6, 4, [5, 3], [1, 2], [2, 1], 1),
            (2, 6, 9, [3, 3], [1, 1], [1, 1], 3),
            (1, 4, 4, [7, 7], [2, 2], [1, 1], 2),
            (1, 3, 5, [11, 11], [4, 4], [1, 1], 1),
        ];
        for &(n, c, o, k, s, d, group) in cases {
            for padding in [PaddingSpec::Valid, PaddingSpec::SameUpper, PaddingSpec::Explicit(tvec![1, 2], tvec![2, 0])]
            {
                for with_bias in [false, true] {
                    let what = format!("n{n} c{c} o{o} k{k:?} s{s:?} d{d:?} g{group} {padding:?} bias {with_bias}");
                    let mut m = TypedModel::default();
                    let x = m.add_source("x", f32::fact([n, c, 13, 17]))?;
                    let kernel = m.add_const("k", random(&[o, c / group, k[0], k[1]], &mut next)?)?;
                    let bias = if with_bias { random(&[o], &mut next)? } else { Tensor::zero::<f32>(&[o])? };
                    let bias = m.add_const("b", bias)?;
                    let spec = PoolSpec {
                        data_format: DataFormat::NCHW,
                        kernel_shape: k.into_iter().collect(),
                        padding: padding.clone(),
                        dilations: Some(d.into_iter().collect()),
                        strides: Some(s.into_iter().collect()),
                        input_channels: c,
                        output_channels: o,
                    };
                    let conv = Conv { pool_spec: spec, kernel_fmt: KernelFormat::OIHW, group, q_params: None };
                    let y = m.wire_node("conv", conv, &[x, kernel, bias])?;
                    m.select_output_outlets(&y)?;
                    let k = c / group * k[0] * k[1];
                    substituted += compare(m, tvec!(random(&[n, c, 13, 17], &mut next)?), k, &what)?;
                }
            }
        }
        // 1x1 stride-1 unpadded convolutions become einsums in decluttering
        assert!(substituted >= 40, "only {substituted} convolutions substituted");
        Ok(())
    }

    /// What tract's decluttering makes of single-image convolutions: CHW.
    #[test]
    fn chw_convolutions_match_tracts() -> TractResult<()> {
        if !available() {
            return Ok(());
        }
        let mut next = crate::seeded_values(0x7f4a_7c15_u64);
        for (c, o, k, s, group) in [(16, 24, 3, 1, 1), (8, 8, 3, 2, 2), (3, 16, 7, 2, 1)] {
            let mut m = TypedModel::default();
            let x = m.add_source("x", f32::fact([c, 15, 12]))?;
            let kernel = m.add_const("k", random(&[o, c / group, k, k], &mut next)?)?;
            let bias = m.add_const("b", random(&[o], &mut next)?)?;
            let spec = PoolSpec {
                data_format: DataFormat::CHW,
                kernel_shape: tvec![k, k],
                padding: PaddingSpec::Explicit(tvec![1, 1], tvec![1, 1]),
                dilations: None,
                strides: Some(tvec![s, s]),
                input_channels: c,
                output_channels: o,
            };
            let conv = Conv { pool_spec: spec, kernel_fmt: KernelFormat::OIHW, group, q_params: None };
            let y = m.wire_node("conv", conv, &[x, kernel, bias])?;
            m.select_output_outlets(&y)?;
            let n = compare(m, tvec!(random(&[c, 15, 12], &mut next)?), c / group * k * k, "chw")?;
            assert_eq!(n, 1, "CHW c{c} o{o} k{k} not substituted");
        }
        Ok(())
    }

    /// Planes narrower than the kernel, where whole kernel columns fall in
    /// the padding.
    #[test]
    fn narrow_planes() -> TractResult<()> {
        if !available() {
            return Ok(());
        }
        let mut next = crate::seeded_values(0x0bad_cafe_u64);
        for (h, w) in [(5, 1), (1, 4), (2, 2)] {
            let mut m = TypedModel::default();
            let x = m.add_source("x", f32::fact([1, 2, h, w]))?;
            let kernel = m.add_const("k", random(&[3, 2, 3, 3], &mut next)?)?;
            let bias = m.add_const("b", random(&[3], &mut next)?)?;
            let spec = PoolSpec {
                data_format: DataFormat::NCHW,
                kernel_shape: tvec![3, 3],
                padding: PaddingSpec::Explicit(tvec![1, 0], tvec![1, 2]),
                dilations: None,
                strides: None,
                input_channels: 2,
                output_channels: 3,
            };
            let conv = Conv { pool_spec: spec, kernel_fmt: KernelFormat::OIHW, group: 1, q_params: None };
            let y = m.wire_node("conv", conv, &[x, kernel, bias])?;
            m.select_output_outlets(&y)?;
            assert_eq!(compare(m, tvec!(random(&[1, 2, h, w], &mut next)?), 18, "narrow")?, 1, "{h}x{w}");
        }
        Ok(())
    }

    /// A band-wise im2col (more columns than `COLUMNS_LIMIT` allows at once)
    /// gives the same result as tract.
    #[test]
    fn large_convolutions_go_in_bands() -> TractResult<()> {
        if !available() {
            return Ok(());
        }
        let mut next = crate::seeded_values(0x1234_5678_u64);
        let (c, h, w) = (64, 120, 120); // 576 rows × 14400 columns > 1 Mi
        let mut m = TypedModel::default();
        let x = m.add_source("x", f32::fact([1, c, h, w]))?;
        let kernel = m.add_const("k", random(&[8, c, 3, 3], &mut next)?)?;
        let bias = m.add_const("b", random(&[8], &mut next)?)?;
        let spec = PoolSpec {
            data_format: DataFormat::NCHW,
            kernel_shape: tvec![3, 3],
            padding: PaddingSpec::SameUpper,
            dilations: None,
            strides: None,
            input_channels: c,
            output_channels: 8,
        };
        let conv = Conv { pool_spec: spec, kernel_fmt: KernelFormat::OIHW, group: 1, q_params: None };
        let y = m.wire_node("conv", conv, &[x, kernel, bias])?;
        m.select_output_outlets(&y)?;
        assert_eq!(compare(m, tvec!(random(&[1, c, h, w], &mut next)?), c * 9, "banded")?, 1);
        Ok(())
    }

    /// A dense layer over a symbolic batch (fraud-mlp's first, 30 → 64)
    /// goes to `gemm`, a batch counting as `SYMBOLIC_ROWS`, and gives
    /// tract's values at 1 and 300 rows; one too small for that batch stays.
    #[test]
    fn symbolic_batches_count_as_a_serving_batch() -> TractResult<()> {
        if !available() {
            return Ok(());
        }
        let mut next = crate::seeded_values(0x5ca1_ab1e);
        // (64x30 and the thin 1x32 and 3x40 layers: substituted; 16x8 and
        // 1x4 too small)
        for (k, m_out, substituted) in [(30, 64, 1), (8, 16, 0), (32, 1, 1), (40, 3, 1), (4, 1, 0)] {
            let mut m = TypedModel::default();
            let n = m.symbols.sym("N");
            let x = m.add_source("x", f32::fact(&[n.to_dim(), k.to_dim()]))?;
            let w = m.add_const("w", random(&[k, m_out], &mut next)?)?;
            let y = m.wire_node("dense", EinSum::new("nk,km->nm".parse()?, f32::datum_type()), &[x, w])?;
            m.select_output_outlets(&y)?;
            for rows in [1, 300] {
                let what = format!("{k}x{m_out}, {rows} rows");
                assert_eq!(compare(m.clone(), tvec!(random(&[rows, k], &mut next)?), k, &what)?, substituted, "{what}");
            }
        }
        Ok(())
    }

    /// A dense layer large enough to split its rows over two threads
    /// gives the single thread's values.
    #[test]
    fn dense_layers_on_two_threads() -> TractResult<()> {
        if !available() {
            return Ok(());
        }
        let mut next = crate::seeded_values(0x0dd_ba11);
        let mut m = TypedModel::default();
        let x = m.add_source("x", f32::fact([4097, 64]))?;
        let w = m.add_const("w", random(&[64, 80], &mut next)?)?;
        let y = m.wire_node("dense", EinSum::new("nk,km->nm".parse()?, f32::datum_type()), &[x, w])?;
        m.select_output_outlets(&y)?;
        let mut m = m.into_decluttered()?;
        assert_eq!(substitute(&mut m)?, 1);
        let plan = m.into_optimized()?.into_runnable()?;
        let input = random(&[4097, 64], &mut next)?;
        let one = plan.run(tvec!(input.clone().into_tvalue()))?;
        let pool = tract_linalg::multithread::Executor::multithread(2);
        let two = tract_linalg::multithread::multithread_tract_scope(pool, || plan.run(tvec!(input.into_tvalue())))?;
        assert_eq!(one[0], two[0]);
        Ok(())
    }

    /// Products with a constant rank-2 weight, in the layouts tract's
    /// decluttering and ONNX's MatMul/Gemm give, against tract's.
    #[test]
    fn products_match_tracts() -> TractResult<()> {
        if !available() {
            return Ok(());
        }
        let mut next = crate::seeded_values(0x2f6b_8d31_u64);
        // (expression, data shape, weight shape)
        let cases: &[(&str, &[usize], &[usize])] = &[
            ("nihw,oi->nohw", &[2, 64, 9, 11], &[96, 64]),
            ("oi,nihw->nohw", &[1, 64, 16, 16], &[128, 64]),
            ("nk,km->nm", &[300, 96], &[96, 128]),
            ("nk,mk->nm", &[300, 96], &[128, 96]),
            ("bsk,km->bsm", &[2, 128, 256], &[256, 64]),
            ("bsk,mk->bms", &[3, 100, 64], &[80, 64]),
            // what tract's decluttering leaves of NCHW 1x1 convolutions
            ("mk,akbn->mbn", &[1, 64, 28, 28], &[96, 64]),
            ("mk,kbn->ambn", &[64, 28, 28], &[96, 64]),
            // thin: a classifier's last layer (one or a few logits per
            // row), k with and without a tail of 16 lanes
            ("nk,km->nm", &[8192, 32], &[32, 1]),
            ("mk,nk->mn", &[700, 37], &[1, 37]),
            ("bsk,mk->bsm", &[3, 300, 20], &[5, 20]),
            // dense512's tiles and their tails (rows not a multiple of 6
            // or 8; 48 and 16 columns), and a k beyond DENSE_MAX_K (gemm)
            ("nk,km->nm", &[301, 40], &[40, 48]),
            ("nk,km->nm", &[133, 200], &[200, 16]),
            ("nk,km->nm", &[64, 600], &[600, 32]),
        ];
        for (expr, dshape, wshape) in cases {
            let axes: AxesMapping = expr.parse()?;
            let data_first = expr.split(',').next().unwrap().len() == dshape.len() && !expr.starts_with("oi,");
            let mut m = TypedModel::default();
            let x = m.add_source("x", f32::fact(*dshape))?;
            let w = m.add_const("w", random(wshape, &mut next)?)?;
            let ins = if data_first { [x, w] } else { [w, x] };
            let y = m.wire_node("einsum", EinSum::new(axes, f32::datum_type()), &ins)?;
            m.select_output_outlets(&y)?;
            let k = wshape.iter().copied().filter(|d| dshape.contains(d)).max().unwrap_or(1);
            let n = compare(m, tvec!(random(dshape, &mut next)?), k, expr)?;
            assert_eq!(n, 1, "{expr} not substituted");
        }
        Ok(())
    }
}
