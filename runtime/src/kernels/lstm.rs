//! The ONNX LSTM as one operator over the whole sequence (`LstmSeq`,
//! NNEF `neoc_lstm`), for every CPU.
//!
//! (Over 600 lines on purpose: the operator, its weight layout (`Panels`),
//! the product kernels that read that layout and the NNEF form share
//! private types that would be split across files only to be made public
//! to each other; a quarter of it is the tests against the ONNX formulas.)
//!
//! tract imports an LSTM as a `Scan` whose body (two products, slices,
//! additions and a fused gate step) is dispatched once per time step; on a
//! 16-step head with 128 hidden units that loop was 92% of a run
//! (`neorun bench --profile`), about 9 µs a step. `neoc` imports ONNX LSTMs
//! as this operator instead (compiler/src/import.rs), and neorun runs it:
//! - the input side `X·Wᵀ + Wb + Rb` of every step is one product before the
//!   loop;
//! - each step is one product `h·Rᵀ` of all four gates, then the gates in one
//!   pass (tract-linalg's vectorised sigmoid and tanh, the kernels tract's own
//!   LSTM cell uses), while the step's values are in cache;
//! - W and R are transposed once, at load (`codegen`), so that the products
//!   read the weights along their rows.
//!
//! It covers what ONNX specifies and tract's `Scan` lowering does not:
//! `direction = reverse`, `sequence_lens` (each batch row runs its own
//! length; the steps after it are zeros in `Y`, as in onnxruntime), `clip`,
//! and the bidirectional layout of `layout = 1`. Peepholes too. Activations
//! other than the default (sigmoid, tanh, tanh) and `input_forget` stay with
//! tract's lowering.
//!
//! The products are a register-tiled kernel (rows × a block of columns of
//! accumulators held in registers), compiled for AVX-512, AVX2+FMA and the
//! baseline on x86-64 and chosen at run time; on aarch64, NEON is the
//! baseline. One thread: a step is a few microseconds, less than a hand-off
//! between threads costs.

use tract_core::internal::*;
use tract_linalg::element_wise::ElementWise;
use tract_linalg::routines::Func;

/// Steps of at least this many multiply-adds are split between two
/// threads (when the model has them): the hand-off costs a few µs, which a
/// hidden size of 128 (65 Ki multiply-adds, about 2 µs a step) would not
/// win back, and 256 (262 Ki) does.
const SPLIT_MIN_MACS: usize = 1 << 18;

/// Whether `model` has an LSTM that `eval` shares between threads (a step
/// of `SPLIT_MIN_MACS` or more, or two directions or two halves of a batch
/// with enough work), so
/// that the engine runs it on its pool even when a run is short: the
/// 32-step batch-8 LSTM (280 µs) was otherwise kept on one thread by the
/// engine's rule for runs under a millisecond. A symbolic size counts as 1.
pub fn uses_threads(model: &TypedModel) -> bool {
    model.nodes().iter().any(|node| {
        let Some(op) = node.op_as::<LstmSeq>() else { return false };
        let Ok(x) = model.outlet_fact(node.inputs[0]) else { return false };
        let dim = |i: usize| x.shape.get(i).and_then(|d| d.to_usize().ok()).unwrap_or(1);
        let (seq, batch) = if op.batch_first { (dim(1), dim(0)) } else { (dim(0), dim(1)) };
        let h = op.hidden;
        let work = seq * batch * 4 * h * (dim(2) + h);
        batch * 4 * h * h >= SPLIT_MIN_MACS
            || ((op.direction.count() == 2 || batch >= 2) && work >= DIRECTIONS_MIN_MACS)
    })
}

/// Two directions, or two halves of a batch, run at once when the whole
/// LSTM is at least this many multiply-adds (a hand-off to the pool, about
/// 25 µs, is then won back).
const DIRECTIONS_MIN_MACS: usize = SPLIT_MIN_MACS * 8;

/// Name of the operator in NNEF (neoc's registry).
pub const NNEF_NAME: &str = "neoc_lstm";

/// Which way the steps run, as the ONNX attribute says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    Forward,
    Reverse,
    Bidirectional,
}

impl Direction {
    pub fn from_onnx(s: &str) -> Option<Direction> {
        match s {
            "forward" => Some(Direction::Forward),
            "reverse" => Some(Direction::Reverse),
            "bidirectional" => Some(Direction::Bidirectional),
            _ => None,
        }
    }

    pub fn as_onnx(&self) -> &'static str {
        match self {
            Direction::Forward => "forward",
            Direction::Reverse => "reverse",
            Direction::Bidirectional => "bidirectional",
        }
    }

    fn count(&self) -> usize {
        if *self == Direction::Bidirectional {
            2
        } else {
            1
        }
    }

    /// Whether direction `d` (0 or 1) runs from the last step to the first.
    fn backwards(&self, d: usize) -> bool {
        *self == Direction::Reverse || d == 1
    }
}

/// One direction's weights, laid out for the products: W and R in
/// panels, `bias` Wb + Rb, `peep` the peepholes (i, o, f; empty when there
/// are none).
#[derive(Debug)]
struct DirWeights {
    w: Panels,
    r: Panels,
    bias: Vec<f32>,
    peep: Vec<f32>,
}

/// Weights prepared at load, shared by every run.
#[derive(Debug, Clone)]
pub struct Prepared(Arc<Vec<DirWeights>>);

/// The ONNX LSTM over a whole sequence. Inputs, always eight, in ONNX's
/// order: X, W, R, B, sequence_lens, initial_h, initial_c, P. An empty
/// (zero-length) tensor stands for an input the model leaves out: no bias
/// or peepholes, every sequence the full length, zero initial states.
/// Outputs: Y, Y_h, Y_c, in ONNX's shapes for `batch_first` (layout).
#[derive(Debug, Clone)]
pub struct LstmSeq {
    pub hidden: usize,
    pub direction: Direction,
    /// ONNX `layout = 1`: X is [batch, seq, input] rather than [seq, batch, input].
    pub batch_first: bool,
    /// ONNX `clip`: gate inputs are clamped to ±clip before their activation.
    pub clip: Option<f32>,
    /// W, R, B and P transposed and summed once, at load (`codegen`), when
    /// they are constants.
    pub prepared: Option<Prepared>,
}

impl PartialEq for LstmSeq {
    fn eq(&self, other: &Self) -> bool {
        self.hidden == other.hidden
            && self.direction == other.direction
            && self.batch_first == other.batch_first
            && self.clip.map(f32::to_bits) == other.clip.map(f32::to_bits)
            && match (&self.prepared, &other.prepared) {
                (None, None) => true,
                (Some(a), Some(b)) => Arc::ptr_eq(&a.0, &b.0),
                _ => false,
            }
    }
}

impl Eq for LstmSeq {}

impl LstmSeq {
    pub fn new(hidden: usize, direction: Direction, batch_first: bool, clip: Option<f32>) -> LstmSeq {
        LstmSeq { hidden, direction, batch_first, clip, prepared: None }
    }

    /// Transposes and sums the weights for the products (W, R, B, P as the
    /// op's inputs give them, cast to f32).
    fn prepare(&self, w: &Tensor, r: &Tensor, b: &Tensor, p: &Tensor) -> TractResult<Prepared> {
        let h = self.hidden;
        let dirs = self.direction.count();
        let (w, r, b, p) = (w.cast_to::<f32>()?, r.cast_to::<f32>()?, b.cast_to::<f32>()?, p.cast_to::<f32>()?);
        let (w, r, b, p) = (plain::<f32>(&w)?, plain::<f32>(&r)?, plain::<f32>(&b)?, plain::<f32>(&p)?);
        ensure!(r.len() == dirs * 4 * h * h, "LSTM: R has {} values, not {dirs}×{}×{h}", r.len(), 4 * h);
        ensure!(w.len() % (dirs * 4 * h) == 0, "LSTM: W has {} values, not a multiple of {dirs}×{}", w.len(), 4 * h);
        ensure!(b.is_empty() || b.len() == dirs * 8 * h, "LSTM: B has {} values, not {dirs}×{}", b.len(), 8 * h);
        ensure!(p.is_empty() || p.len() == dirs * 3 * h, "LSTM: P has {} values, not {dirs}×{}", p.len(), 3 * h);
        let input = w.len() / (dirs * 4 * h);
        let width = Product::for_this_cpu().width;
        let weights = (0..dirs)
            .map(|d| DirWeights {
                w: Panels::pack(&w[d * 4 * h * input..(d + 1) * 4 * h * input], 4 * h, input, width),
                r: Panels::pack(&r[d * 4 * h * h..(d + 1) * 4 * h * h], 4 * h, h, width),
                bias: if b.is_empty() {
                    vec![0.0; 4 * h]
                } else {
                    let b = &b[d * 8 * h..(d + 1) * 8 * h];
                    (0..4 * h).map(|j| b[j] + b[4 * h + j]).collect()
                },
                peep: if p.is_empty() { vec![] } else { p[d * 3 * h..(d + 1) * 3 * h].to_vec() },
            })
            .collect();
        Ok(Prepared(Arc::new(weights)))
    }

    fn eval_f32(
        &self,
        x: &Tensor,
        prepared: &Prepared,
        lens: &Tensor,
        h0: &Tensor,
        c0: &Tensor,
    ) -> TractResult<[Tensor; 3]> {
        let hid = self.hidden;
        let dirs = self.direction.count();
        ensure!(x.rank() == 3, "LSTM: X has rank {}, not 3", x.rank());
        let (seq, batch, input) = if self.batch_first {
            (x.shape()[1], x.shape()[0], x.shape()[2])
        } else {
            (x.shape()[0], x.shape()[1], x.shape()[2])
        };
        let weights = &prepared.0;
        ensure!(weights[0].w.k == input, "LSTM: X has {input} features, W is for {}", weights[0].w.k);
        let x = plain::<f32>(x)?;
        // each batch row's length (sequence_lens, else the whole sequence)
        let lens: Vec<usize> = if lens.len() == 0 {
            vec![seq; batch]
        } else {
            let l = lens.cast_to::<i64>()?;
            let l = plain::<i64>(&l)?;
            ensure!(l.len() == batch, "LSTM: sequence_lens has {} values for a batch of {batch}", l.len());
            l.iter()
                .map(|v| {
                    usize::try_from(*v)
                        .ok()
                        .filter(|v| *v <= seq)
                        .with_context(|| format!("LSTM: a sequence length of {v} in a sequence of {seq} steps"))
                })
                .collect::<TractResult<_>>()?
        };
        // the state tensors' index of (direction, batch row): [D, B, H] or [B, D, H]
        let state_at = |d: usize, b: usize| if self.batch_first { (b * dirs + d) * hid } else { (d * batch + b) * hid };
        let initial = |t: &Tensor, what: &str| -> TractResult<Option<Tensor>> {
            if t.len() == 0 {
                return Ok(None);
            }
            ensure!(t.len() == dirs * batch * hid, "LSTM: {what} has {} values, not {dirs}×{batch}×{hid}", t.len());
            Ok(Some(t.cast_to::<f32>()?.into_owned()))
        };
        let (h0, c0) = (initial(h0, "initial_h")?, initial(c0, "initial_c")?);
        let state_shape: [usize; 3] = if self.batch_first { [batch, dirs, hid] } else { [dirs, batch, hid] };
        let y_shape: [usize; 4] = if self.batch_first { [batch, seq, dirs, hid] } else { [seq, dirs, batch, hid] };
        let mut y = Tensor::zero::<f32>(&y_shape)?;
        let mut y_h = Tensor::zero::<f32>(&state_shape)?;
        let mut y_c = Tensor::zero::<f32>(&state_shape)?;
        let (sigmoid, tanh) = (Func::Sigmoid.ew_f32()?, Func::Tanh.ew_f32()?);
        let product = Product::for_this_cpu();
        let input = weights[0].w.k;
        // X's row for (step, batch row), in X's own layout
        let row = |t: usize, b: usize| if self.batch_first { b * seq + t } else { t * batch + b };
        let y_at = |t: usize, d: usize, b: usize| {
            if self.batch_first {
                ((b * seq + t) * dirs + d) * hid
            } else {
                ((t * dirs + d) * batch + b) * hid
            }
        };
        let pool = match tract_linalg::multithread::current_tract_executor() {
            tract_linalg::multithread::Executor::MultiThread(p) if p.current_num_threads() > 1 => Some(p),
            _ => None,
        };
        // one direction for batch rows b0..b0 + nb: Y's rows by (step, row),
        // and the last h and c
        let run = |d: usize, b0: usize, nb: usize| -> TractResult<(Vec<f32>, Vec<f32>, Vec<f32>)> {
            let dw = &weights[d];
            let backwards = self.direction.backwards(d);
            // the group's rows of X, by (step, row), unless X is them already
            let gathered: Option<Vec<f32>> = (nb != batch).then(|| {
                let mut g = Vec::with_capacity(seq * nb * input);
                for t in 0..seq {
                    for b in b0..b0 + nb {
                        g.extend_from_slice(&x[row(t, b) * input..(row(t, b) + 1) * input]);
                    }
                }
                g
            });
            let x_row = |t: usize, lb: usize| if nb != batch { t * nb + lb } else { row(t, lb) };
            // the input side of every step at once, biases included
            let mut xw = vec![0f32; seq * nb * 4 * hid];
            for r in xw.chunks_exact_mut(4 * hid) {
                r.copy_from_slice(&dw.bias);
            }
            product.run(&mut xw, gathered.as_deref().unwrap_or(x), seq * nb, &dw.w.all());
            let (mut h, mut c) = (vec![0f32; nb * hid], vec![0f32; nb * hid]);
            for lb in 0..nb {
                let at = state_at(d, b0 + lb);
                if let Some(t) = &h0 {
                    h[lb * hid..(lb + 1) * hid].copy_from_slice(&plain::<f32>(t)?[at..at + hid]);
                }
                if let Some(t) = &c0 {
                    c[lb * hid..(lb + 1) * hid].copy_from_slice(&plain::<f32>(t)?[at..at + hid]);
                }
            }
            let mut y = vec![0f32; seq * nb * hid];
            let mut gates = vec![0f32; nb * 4 * hid];
            let mut scratch = vec![0f32; hid];
            // a step large enough is split in two column halves, one per
            // thread (when the batch rows are not split already)
            let halves = pool
                .as_ref()
                .filter(|_| nb == batch && batch * hid * 4 * hid >= SPLIT_MIN_MACS)
                .and_then(|_| dw.r.halves());
            let mut split_gates = halves.as_ref().map(|(a, b)| (vec![0f32; nb * a.n], vec![0f32; nb * b.n]));
            let len = |lb: usize| lens[b0 + lb];
            let longest = (0..nb).map(len).max().unwrap_or(0);
            for step in 0..longest {
                // each row's own step: its last-to-first when backwards
                let time = |lb: usize| if backwards { len(lb) - 1 - step } else { step };
                for lb in (0..nb).filter(|lb| step < len(*lb)) {
                    let from = x_row(time(lb), lb) * 4 * hid;
                    gates[lb * 4 * hid..(lb + 1) * 4 * hid].copy_from_slice(&xw[from..from + 4 * hid]);
                }
                match (&halves, &mut split_gates, &pool) {
                    (Some((pa, pb)), Some((ga, gb)), Some(pool)) => {
                        for (g, part, off) in [(&mut *ga, pa, 0), (&mut *gb, pb, pa.n)] {
                            for lb in 0..nb {
                                g[lb * part.n..(lb + 1) * part.n]
                                    .copy_from_slice(&gates[lb * 4 * hid + off..lb * 4 * hid + off + part.n]);
                            }
                        }
                        pool.join(|| product.run(ga, &h, nb, pa), || product.run(gb, &h, nb, pb));
                        for (g, part, off) in [(&*ga, pa, 0), (&*gb, pb, pa.n)] {
                            for lb in 0..nb {
                                gates[lb * 4 * hid + off..lb * 4 * hid + off + part.n]
                                    .copy_from_slice(&g[lb * part.n..(lb + 1) * part.n]);
                            }
                        }
                    }
                    _ => product.run(&mut gates, &h, nb, &dw.r.all()),
                }
                for lb in (0..nb).filter(|lb| step < len(*lb)) {
                    let g = &mut gates[lb * 4 * hid..(lb + 1) * 4 * hid];
                    let (hb, cb) = (&mut h[lb * hid..(lb + 1) * hid], &mut c[lb * hid..(lb + 1) * hid]);
                    self.cell(g, hb, cb, &dw.peep, &mut scratch, sigmoid.as_ref(), tanh.as_ref())?;
                    let at = (time(lb) * nb + lb) * hid;
                    y[at..at + hid].copy_from_slice(hb);
                }
            }
            Ok((y, h, c))
        };
        // with threads and work enough for a hand-off to pay: the two
        // directions at once, else two halves of the batch (independent
        // recurrences), else (in `run`) each large step in two
        let work = seq * batch * 4 * hid * (input + hid);
        let mut parts: Vec<(usize, usize, usize)> = Vec::new(); // (direction, first row, rows)
        let outs = match &pool {
            Some(pool) if dirs == 2 && work >= DIRECTIONS_MIN_MACS => {
                parts = vec![(0, 0, batch), (1, 0, batch)];
                let (a, b) = pool.join(|| run(0, 0, batch), || run(1, 0, batch));
                vec![a?, b?]
            }
            Some(pool) if dirs == 1 && batch >= 2 && work >= DIRECTIONS_MIN_MACS => {
                let half = batch / 2;
                parts = vec![(0, 0, half), (0, half, batch - half)];
                let (a, b) = pool.join(|| run(0, 0, half), || run(0, half, batch - half));
                vec![a?, b?]
            }
            _ => {
                for d in 0..dirs {
                    parts.push((d, 0, batch));
                }
                parts.iter().map(|(d, b0, nb)| run(*d, *b0, *nb)).collect::<TractResult<Vec<_>>>()?
            }
        };
        {
            let (mut y, mut yh, mut yc) =
                (y.try_as_plain_ram_mut()?, y_h.try_as_plain_ram_mut()?, y_c.try_as_plain_ram_mut()?);
            let (y, yh, yc) = (y.as_slice_mut::<f32>()?, yh.as_slice_mut::<f32>()?, yc.as_slice_mut::<f32>()?);
            for ((d, b0, nb), (yd, h, c)) in parts.iter().zip(&outs) {
                for lb in 0..*nb {
                    let (b, at) = (b0 + lb, state_at(*d, b0 + lb));
                    yh[at..at + hid].copy_from_slice(&h[lb * hid..(lb + 1) * hid]);
                    yc[at..at + hid].copy_from_slice(&c[lb * hid..(lb + 1) * hid]);
                    for t in 0..seq {
                        let at = y_at(t, *d, b);
                        y[at..at + hid].copy_from_slice(&yd[(t * nb + lb) * hid..(t * nb + lb + 1) * hid]);
                    }
                }
            }
        }
        Ok([y, y_h, y_c])
    }

    /// One step of one batch row: the gates' pre-activations `g` (i, o, f,
    /// c) in, the new hidden state `h` and cell `c` out.
    #[allow(clippy::too_many_arguments)]
    fn cell(
        &self,
        g: &mut [f32],
        h: &mut [f32],
        c: &mut [f32],
        peep: &[f32],
        scratch: &mut [f32],
        sigmoid: &dyn ElementWise<f32>,
        tanh: &dyn ElementWise<f32>,
    ) -> TractResult<()> {
        let n = self.hidden;
        let clip = |v: &mut [f32]| {
            if let Some(t) = self.clip {
                for x in v {
                    *x = x.clamp(-t, t);
                }
            }
        };
        if peep.is_empty() && self.clip.is_none() {
            // i, o and f are contiguous: one call
            sigmoid.run(&mut g[..3 * n])?;
        } else {
            if !peep.is_empty() {
                for j in 0..n {
                    g[j] += peep[j] * c[j];
                    g[2 * n + j] += peep[2 * n + j] * c[j];
                }
            }
            clip(&mut g[..n]);
            clip(&mut g[2 * n..3 * n]);
            sigmoid.run(&mut g[..n])?;
            sigmoid.run(&mut g[2 * n..3 * n])?;
        }
        clip(&mut g[3 * n..]);
        tanh.run(&mut g[3 * n..])?;
        let (i, rest) = g.split_at_mut(n);
        let (o, rest) = rest.split_at_mut(n);
        let (f, cand) = rest.split_at_mut(n);
        for j in 0..n {
            c[j] = f[j] * c[j] + i[j] * cand[j];
        }
        if !peep.is_empty() || self.clip.is_some() {
            if !peep.is_empty() {
                for j in 0..n {
                    o[j] += peep[n + j] * c[j];
                }
            }
            clip(o);
            sigmoid.run(o)?;
        }
        scratch.copy_from_slice(c);
        tanh.run(scratch)?;
        for j in 0..n {
            h[j] = o[j] * scratch[j];
        }
        Ok(())
    }
}

impl Op for LstmSeq {
    fn name(&self) -> StaticName {
        "LstmSeq".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        let mut info = vec![format!(
            "hidden={} direction={} layout={}",
            self.hidden,
            self.direction.as_onnx(),
            self.batch_first as usize
        )];
        if let Some(c) = self.clip {
            info.push(format!("clip={c}"));
        }
        if self.prepared.is_some() {
            info.push("weights prepared at load".into());
        }
        Ok(info)
    }

    op_as_typed_op!();
}

impl EvalOp for LstmSeq {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        ensure!(inputs.len() == 8, "LSTM: {} inputs, not 8", inputs.len());
        let dt = inputs[0].datum_type();
        ensure!(dt == f32::datum_type() || dt == f16::datum_type(), "LSTM: {dt:?} values, not f32 or f16");
        let prepared = match &self.prepared {
            Some(p) => p.clone(),
            None => self.prepare(&inputs[1], &inputs[2], &inputs[3], &inputs[7])?,
        };
        let x = inputs[0].cast_to::<f32>()?;
        let outs = self.eval_f32(&x, &prepared, &inputs[4], &inputs[5], &inputs[6])?;
        outs.into_iter().map(|t| Ok(t.cast_to_dt(dt)?.into_owned().into_tvalue())).collect()
    }
}

impl TypedOp for LstmSeq {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        ensure!(inputs.len() == 8, "LSTM: {} inputs, not 8", inputs.len());
        let x = &inputs[0].shape;
        ensure!(x.rank() == 3, "LSTM: X has rank {}, not 3", x.rank());
        let dt = inputs[0].datum_type;
        let (seq, batch) = if self.batch_first { (&x[1], &x[0]) } else { (&x[0], &x[1]) };
        let (d, h) = (self.direction.count().to_dim(), self.hidden.to_dim());
        let (y, state) = if self.batch_first {
            (dt.fact([batch.clone(), seq.clone(), d.clone(), h.clone()]), dt.fact([batch.clone(), d, h]))
        } else {
            (dt.fact([seq.clone(), d.clone(), batch.clone(), h.clone()]), dt.fact([d, batch.clone(), h]))
        };
        Ok(tvec!(y, state.clone(), state))
    }

    fn codegen(&self, model: &TypedModel, node: &TypedNode) -> TractResult<Option<TypedModelPatch>> {
        if self.prepared.is_some() {
            return Ok(None);
        }
        let konst = |slot: usize| model.outlet_fact(node.inputs[slot]).map(|f| f.konst.clone());
        let (Some(w), Some(r), Some(b), Some(p)) = (konst(1)?, konst(2)?, konst(3)?, konst(7)?) else {
            return Ok(None);
        };
        let prepared = self.prepare(&w, &r, &b, &p)?;
        let op = LstmSeq { prepared: Some(prepared), ..self.clone() };
        Ok(Some(TypedModelPatch::replace_single_op(model, node, &node.inputs, op)?))
    }

    as_op!();
}

/// A dense tensor's values.
fn plain<T: Datum>(t: &Tensor) -> TractResult<&[T]> {
    t.try_as_plain_ram()?.as_slice::<T>()
}

/// A weight `M` (n × k, row-major: ONNX's W and R) stored for `out += x·Mᵀ`
/// in panels of `width` output columns: panel `b` holds, for each of the
/// k inputs in turn, the weights of its columns, so that a product streams
/// each panel from memory in order (reading Mᵀ row by row instead jumped
/// 2 KiB between the k rows of a column block and ran at half the speed on
/// the 16-step head). The last panel is narrower when `width` does not
/// divide n.
#[derive(Debug)]
struct Panels {
    k: usize,
    n: usize,
    width: usize,
    data: Vec<f32>,
    /// M as given (n × k), for the `gemm` crate's products of several rows
    /// (x86-64).
    #[cfg(target_arch = "x86_64")]
    plain: Vec<f32>,
}

/// A run of whole panels of a `Panels` (all of them, or a half).
#[derive(Clone, Copy)]
struct PanelsRef<'a> {
    k: usize,
    n: usize,
    width: usize,
    data: &'a [f32],
    #[cfg(target_arch = "x86_64")]
    plain: Option<&'a [f32]>,
}

impl Panels {
    fn all(&self) -> PanelsRef<'_> {
        PanelsRef {
            k: self.k,
            n: self.n,
            width: self.width,
            data: &self.data,
            #[cfg(target_arch = "x86_64")]
            plain: Some(&self.plain),
        }
    }

    /// The first half of the panels and the rest, for two threads (None
    /// with fewer than two panels).
    fn halves(&self) -> Option<(PanelsRef<'_>, PanelsRef<'_>)> {
        let panels = self.n.div_ceil(self.width);
        (panels >= 2).then(|| {
            let n = panels / 2 * self.width;
            let (a, b) = self.data.split_at(n * self.k);
            let half = |n: usize, data| PanelsRef {
                k: self.k,
                n,
                width: self.width,
                data,
                #[cfg(target_arch = "x86_64")]
                plain: None,
            };
            (half(n, a), half(self.n - n, b))
        })
    }

    fn pack(m: &[f32], n: usize, k: usize, width: usize) -> Panels {
        let mut data = Vec::with_capacity(n * k);
        for j0 in (0..n).step_by(width) {
            let w = width.min(n - j0);
            for kk in 0..k {
                data.extend((j0..j0 + w).map(|j| m[j * k + kk]));
            }
        }
        Panels {
            k,
            n,
            width,
            data,
            #[cfg(target_arch = "x86_64")]
            plain: m[..n * k].to_vec(),
        }
    }
}

/// `out (rows × n) += x (rows × k) · Mᵀ`, M stored as `Panels`: the kernel
/// compiled for the best instruction set this CPU has, and the panel width
/// it wants.
#[derive(Clone, Copy)]
struct Product {
    run: fn(&mut [f32], &[f32], usize, &PanelsRef),
    width: usize,
}

impl Product {
    fn for_this_cpu() -> Product {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") && std::arch::is_x86_feature_detected!("fma") {
                // SAFETY: the CPU has AVX-512F and FMA (checked just above)
                return Product { run: |o, x, r, p| unsafe { product_avx512(o, x, r, p) }, width: 128 };
            }
            if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
                // SAFETY: the CPU has AVX2 and FMA (checked just above)
                return Product { run: |o, x, r, p| unsafe { product_avx2(o, x, r, p) }, width: 32 };
            }
        }
        // NEON on aarch64: 32 registers of 4, 2 rows × 8 of them; SSE2 on
        // x86-64: 16 registers of 4, 3 rows × 4 of them
        #[cfg(target_arch = "aarch64")]
        return Product { run: panels_product::<32, 2>, width: 32 };
        #[allow(unreachable_code)]
        Product { run: panels_product::<16, 3>, width: 16 }
    }

    fn run(&self, out: &mut [f32], x: &[f32], rows: usize, m: &PanelsRef) {
        assert!(m.width == self.width && out.len() >= rows * m.n && x.len() >= rows * m.k);
        #[cfg(target_arch = "x86_64")]
        if let (true, Some(plain)) = (rows >= GEMM_MIN_ROWS && super::simd::available(), m.plain) {
            // SAFETY: the CPU has AVX2 and FMA (`available`), and the sizes
            // were checked above (plain is n × k)
            unsafe { gemm_product(out, x, plain, rows, m.k, m.n) };
            return;
        }
        (self.run)(out, x, rows, m)
    }
}

/// Products of at least this many rows (the input side of a long sequence
/// or a batch) go to the `gemm` crate on x86-64, whose packing and blocking
/// beat reading the weight again for every 8 rows: the batch-8 LSTM's input
/// side (256 rows) ran 4% faster through it, the speech LSTM's (100 rows of
/// 80 and 256 × 1024 weights) alike. Per-step products (a batch's rows) stay
/// with the panels: through `gemm` the batch-8 LSTM took 663 µs, not 408.
#[cfg(target_arch = "x86_64")]
const GEMM_MIN_ROWS: usize = 64;

/// `out (rows × n) += x (rows × k) · Mᵀ`, M (n × k) row-major, through
/// the `gemm` crate, on this thread.
///
/// # Safety
/// The CPU must have AVX2 and FMA; `out`, `x` and `m` must hold rows × n,
/// rows × k and n × k values.
#[cfg(target_arch = "x86_64")]
unsafe fn gemm_product(out: &mut [f32], x: &[f32], m: &[f32], rows: usize, k: usize, n: usize) {
    debug_assert!(out.len() >= rows * n && x.len() >= rows * k && m.len() >= n * k);
    // gemm's order: sizes, dst and its column and row strides, whether to
    // read dst, lhs likewise, rhs likewise, then dst = 1·dst + 1·lhs·rhs;
    // here computed as outᵀ (n × rows) = M (n × k) · xᵀ (k × rows), which
    // puts M's unit stride along gemm's m
    (gemm_f32::gemm::f32::get_gemm_fn())(
        n,
        rows,
        k,
        out.as_mut_ptr(),
        n as isize,
        1,
        true,
        m.as_ptr(),
        1,
        k as isize,
        x.as_ptr(),
        k as isize,
        1,
        1.0,
        1.0,
        false,
        false,
        false,
        gemm_common::Parallelism::None,
    )
}

/// # Safety
/// The CPU must have AVX-512F and FMA.
///
/// Explicit AVX-512 tiles, the rows of a panel (128 columns, 8 registers)
/// shared out so that the accumulators fill at most 16 of the 32 registers:
/// 8 rows × 32 columns, 4 × 64, 2 × 128, then 1 × 128. So a batch of 8
/// reads R once a step (the compiler's vectorisation of such tiles spilled
/// them to the stack and ran 5× slower). The narrower last panel as in
/// `panels_product`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn product_avx512(out: &mut [f32], x: &[f32], rows: usize, m: &PanelsRef) {
    const P: usize = 128;
    let (k, n) = (m.k, m.n);
    let full = n / P;
    let mut r0 = 0;
    while r0 < rows {
        let rr = match rows - r0 {
            8.. => 8,
            4..=7 => 4,
            2 | 3 => 2,
            _ => 1,
        };
        for b in 0..full {
            let panel = &m.data[b * k * P..(b + 1) * k * P];
            match rr {
                8 => {
                    for q0 in (0..P).step_by(32) {
                        tile512::<8, 2>(out, n, x, k, r0, b * P + q0, &panel[q0..], P);
                    }
                }
                4 => {
                    for q0 in (0..P).step_by(64) {
                        tile512::<4, 4>(out, n, x, k, r0, b * P + q0, &panel[q0..], P);
                    }
                }
                2 => tile512::<2, 8>(out, n, x, k, r0, b * P, panel, P),
                _ => tile512::<1, 8>(out, n, x, k, r0, b * P, panel, P),
            }
        }
        narrow_panel(out, x, r0, rr, m, full * P);
        r0 += rr;
    }
}

/// `R` rows × `V` registers of 16 columns of `out` from column `j0`; the
/// panel's rows are `stride` apart and start at `panel[0]`.
///
/// # Safety
/// The CPU must have AVX-512F and FMA (checked by the caller); the bounds
/// are asserted.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
#[allow(clippy::too_many_arguments, clippy::needless_range_loop)]
unsafe fn tile512<const R: usize, const V: usize>(
    out: &mut [f32],
    n: usize,
    x: &[f32],
    k: usize,
    r0: usize,
    j0: usize,
    panel: &[f32],
    stride: usize,
) {
    use std::arch::x86_64::*;
    if k == 0 {
        return;
    }
    assert!(panel.len() >= (k - 1) * stride + V * 16);
    assert!(x.len() >= (r0 + R) * k && out.len() >= (r0 + R - 1) * n + j0 + V * 16 && j0 + V * 16 <= n);
    let mut acc = [[_mm512_setzero_ps(); V]; R];
    let (w_at, x_at) = (panel.as_ptr(), x.as_ptr());
    for kk in 0..k {
        let mut w = [_mm512_setzero_ps(); V];
        for v in 0..V {
            w[v] = _mm512_loadu_ps(w_at.add(kk * stride + v * 16));
        }
        for r in 0..R {
            let xv = _mm512_set1_ps(*x_at.add((r0 + r) * k + kk));
            for v in 0..V {
                acc[r][v] = _mm512_fmadd_ps(xv, w[v], acc[r][v]);
            }
        }
    }
    let o = out.as_mut_ptr();
    for r in 0..R {
        for v in 0..V {
            let at = o.add((r0 + r) * n + j0 + v * 16);
            _mm512_storeu_ps(at, _mm512_add_ps(_mm512_loadu_ps(at), acc[r][v]));
        }
    }
}

/// # Safety
/// The CPU must have AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn product_avx2(out: &mut [f32], x: &[f32], rows: usize, m: &PanelsRef) {
    // 3 rows × 4 registers of 8 accumulators, of 16 registers
    panels_product::<32, 3>(out, x, rows, m)
}

/// The tiled product: `R` rows at a time (then one at a time) against a
/// panel of `P` columns whose accumulators stay in registers while the k
/// loop streams the panel; the narrower last panel a column at a time.
#[inline(always)]
fn panels_product<const P: usize, const R: usize>(out: &mut [f32], x: &[f32], rows: usize, m: &PanelsRef) {
    let (k, n) = (m.k, m.n);
    let full = n / P;
    let mut r0 = 0;
    while r0 < rows {
        let rr = (rows - r0).min(R);
        for b in 0..full {
            let panel = &m.data[b * k * P..(b + 1) * k * P];
            if rr == R {
                tile::<R, P>(out, n, x, k, r0, b * P, panel);
            } else {
                for r in r0..r0 + rr {
                    tile::<1, P>(out, n, x, k, r, b * P, panel);
                }
            }
        }
        narrow_panel(out, x, r0, rr, m, full * P);
        r0 += rr;
    }
}

/// Rows `r0..r0 + rows` of the columns from `j0` (the last, narrower
/// panel, if there is one), a column at a time.
#[inline(always)]
fn narrow_panel(out: &mut [f32], x: &[f32], r0: usize, rows: usize, m: &PanelsRef, j0: usize) {
    let (k, n) = (m.k, m.n);
    let t = n - j0;
    if t == 0 {
        return;
    }
    let panel = &m.data[j0 * k..];
    for r in r0..r0 + rows {
        let o = &mut out[r * n + j0..r * n + n];
        for (kk, w) in panel.chunks_exact(t).enumerate() {
            let v = x[r * k + kk];
            for (o, w) in o.iter_mut().zip(w) {
                *o = v.mul_add(*w, *o);
            }
        }
    }
}

/// `R` rows of `out` from column `j0`, from a panel `P` wide.
#[inline(always)]
fn tile<const R: usize, const P: usize>(
    out: &mut [f32],
    n: usize,
    x: &[f32],
    k: usize,
    r0: usize,
    j0: usize,
    panel: &[f32],
) {
    let mut acc = [[0f32; P]; R];
    let xs: [&[f32]; R] = std::array::from_fn(|r| &x[(r0 + r) * k..(r0 + r + 1) * k]);
    for (kk, w) in panel.chunks_exact(P).enumerate() {
        let w: &[f32; P] = w.try_into().unwrap();
        for r in 0..R {
            let v = xs[r][kk];
            for c in 0..P {
                acc[r][c] = v.mul_add(w[c], acc[r][c]);
            }
        }
    }
    for (r, acc) in acc.iter().enumerate() {
        let at = (r0 + r) * n + j0;
        let o: &mut [f32; P] = (&mut out[at..at + P]).try_into().unwrap();
        for c in 0..P {
            o[c] += acc[c];
        }
    }
}

/// NNEF: `neoc_lstm(x, w, r, b, sequence_lens, initial_h, initial_c, p,
/// hidden, direction, layout, clip)` → `(y, y_h, y_c)`.
pub fn register(registry: &mut tract_nnef::internal::Registry) {
    use tract_nnef::internal::*;
    registry.register_dumper(dump);
    registry.register_primitive(
        NNEF_NAME,
        &[
            TypeName::Scalar.tensor().named("x"),
            TypeName::Scalar.tensor().named("w"),
            TypeName::Scalar.tensor().named("r"),
            TypeName::Scalar.tensor().named("b"),
            TypeName::Integer.tensor().named("sequence_lens"),
            TypeName::Scalar.tensor().named("initial_h"),
            TypeName::Scalar.tensor().named("initial_c"),
            TypeName::Scalar.tensor().named("p"),
            TypeName::Integer.named("hidden"),
            TypeName::String.named("direction"),
            TypeName::Integer.named("layout").default(0),
            TypeName::Scalar.named("clip").default(0.0),
        ],
        &[("y", TypeName::Scalar.tensor()), ("y_h", TypeName::Scalar.tensor()), ("y_c", TypeName::Scalar.tensor())],
        load,
    );
}

fn load(
    builder: &mut tract_nnef::internal::ModelBuilder,
    invocation: &tract_nnef::internal::ResolvedInvocation,
) -> TractResult<tract_nnef::internal::Value> {
    let mut inputs: TVec<OutletId> = tvec!();
    for name in ["x", "w", "r", "b", "sequence_lens", "initial_h", "initial_c", "p"] {
        inputs.push(invocation.named_arg_as(builder, name)?);
    }
    let hidden: usize = invocation.named_arg_as(builder, "hidden")?;
    let direction: String = invocation.named_arg_as(builder, "direction")?;
    let direction = Direction::from_onnx(&direction)
        .with_context(|| format!("neoc_lstm: direction {direction:?} (forward, reverse or bidirectional)"))?;
    let layout: usize = invocation.named_arg_as(builder, "layout")?;
    let clip: f32 = invocation.named_arg_as(builder, "clip")?;
    let op = LstmSeq::new(hidden, direction, layout == 1, (clip > 0.0).then_some(clip));
    builder.wire(op, &inputs)
}

fn dump(
    ast: &mut tract_nnef::internal::IntoAst,
    node: &TypedNode,
    op: &LstmSeq,
) -> TractResult<Option<Arc<tract_nnef::internal::RValue>>> {
    use tract_nnef::internal::*;
    let names = ["x", "w", "r", "b", "sequence_lens", "initial_h", "initial_c", "p"];
    let mut named: Vec<(&str, RValue)> =
        names.iter().zip(&node.inputs).map(|(n, i)| (*n, (*ast.mapping[i]).clone())).collect();
    named.push(("hidden", numeric(op.hidden)));
    named.push(("direction", string(op.direction.as_onnx())));
    named.push(("layout", numeric(op.batch_first as usize)));
    named.push(("clip", numeric(op.clip.unwrap_or(0.0))));
    Ok(Some(invocation(NNEF_NAME, &[], &named)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::tract::TractEngine;

    /// The ONNX LSTM as its specification writes it, in f64, one value at a
    /// time: X [seq, batch, input] (or [batch, seq, input]), W [D, 4H, I],
    /// R [D, 4H, H], B [D, 8H], P [D, 3H]; gates i, o, f, c.
    struct Case {
        seq: usize,
        batch: usize,
        input: usize,
        hidden: usize,
        direction: Direction,
        batch_first: bool,
        lens: Option<Vec<i32>>,
        peepholes: bool,
        clip: Option<f32>,
        initial: bool,
    }

    struct Data {
        x: Vec<f32>,
        w: Vec<f32>,
        r: Vec<f32>,
        b: Vec<f32>,
        p: Vec<f32>,
        h0: Vec<f32>,
        c0: Vec<f32>,
    }

    fn sigmoid(v: f64) -> f64 {
        1.0 / (1.0 + (-v).exp())
    }

    fn reference(c: &Case, d: &Data) -> [Vec<f64>; 3] {
        let (t_n, b_n, i_n, h_n) = (c.seq, c.batch, c.input, c.hidden);
        let dirs = c.direction.count();
        let x_at = |t: usize, b: usize| if c.batch_first { (b * t_n + t) * i_n } else { (t * b_n + b) * i_n };
        let st = |dd: usize, b: usize| if c.batch_first { (b * dirs + dd) * h_n } else { (dd * b_n + b) * h_n };
        let y_at = |t: usize, dd: usize, b: usize| {
            if c.batch_first {
                ((b * t_n + t) * dirs + dd) * h_n
            } else {
                ((t * dirs + dd) * b_n + b) * h_n
            }
        };
        let mut y = vec![0f64; t_n * dirs * b_n * h_n];
        let mut yh = vec![0f64; dirs * b_n * h_n];
        let mut yc = vec![0f64; dirs * b_n * h_n];
        let clip = |v: f64| match c.clip {
            Some(t) => v.clamp(-t as f64, t as f64),
            None => v,
        };
        for dd in 0..dirs {
            for b in 0..b_n {
                let len = c.lens.as_ref().map_or(t_n, |l| l[b] as usize);
                let mut h: Vec<f64> = (0..h_n).map(|j| d.h0.get(st(dd, b) + j).map_or(0.0, |v| *v as f64)).collect();
                let mut cs: Vec<f64> = (0..h_n).map(|j| d.c0.get(st(dd, b) + j).map_or(0.0, |v| *v as f64)).collect();
                for s in 0..len {
                    let t = if c.direction.backwards(dd) { len - 1 - s } else { s };
                    let pre = |gate: usize, j: usize, h: &[f64]| {
                        let row = dd * 4 * h_n + gate * h_n + j;
                        let mut v = 0f64;
                        for k in 0..i_n {
                            v += d.x[x_at(t, b) + k] as f64 * d.w[row * i_n + k] as f64;
                        }
                        for (k, hk) in h.iter().enumerate() {
                            v += hk * d.r[row * h_n + k] as f64;
                        }
                        if !d.b.is_empty() {
                            v += d.b[dd * 8 * h_n + gate * h_n + j] as f64
                                + d.b[dd * 8 * h_n + (4 + gate) * h_n + j] as f64;
                        }
                        v
                    };
                    let peep =
                        |k: usize, j: usize| if d.p.is_empty() { 0.0 } else { d.p[dd * 3 * h_n + k * h_n + j] as f64 };
                    let mut nh = vec![0f64; h_n];
                    let mut nc = vec![0f64; h_n];
                    for j in 0..h_n {
                        let i = sigmoid(clip(pre(0, j, &h) + peep(0, j) * cs[j]));
                        let f = sigmoid(clip(pre(2, j, &h) + peep(2, j) * cs[j]));
                        let g = clip(pre(3, j, &h)).tanh();
                        nc[j] = f * cs[j] + i * g;
                        let o = sigmoid(clip(pre(1, j, &h) + peep(1, j) * nc[j]));
                        nh[j] = o * nc[j].tanh();
                    }
                    h = nh;
                    cs = nc;
                    y[y_at(t, dd, b)..y_at(t, dd, b) + h_n].copy_from_slice(&h);
                }
                yh[st(dd, b)..st(dd, b) + h_n].copy_from_slice(&h);
                yc[st(dd, b)..st(dd, b) + h_n].copy_from_slice(&cs);
            }
        }
        [y, yh, yc]
    }

    fn data(c: &Case, next: &mut impl FnMut() -> f32) -> Data {
        let dirs = c.direction.count();
        let mut v = |n: usize, scale: f32| (0..n).map(|_| next() * scale).collect::<Vec<f32>>();
        Data {
            x: v(c.seq * c.batch * c.input, 1.0),
            w: v(dirs * 4 * c.hidden * c.input, 0.4),
            r: v(dirs * 4 * c.hidden * c.hidden, 0.4),
            b: v(dirs * 8 * c.hidden, 0.3),
            p: if c.peepholes { v(dirs * 3 * c.hidden, 0.5) } else { vec![] },
            h0: if c.initial { v(dirs * c.batch * c.hidden, 0.5) } else { vec![] },
            c0: if c.initial { v(dirs * c.batch * c.hidden, 0.5) } else { vec![] },
        }
    }

    /// The model: X a source, the rest constants (empty where left out).
    fn model(c: &Case, d: &Data) -> TractResult<TypedModel> {
        let dirs = c.direction.count();
        let (h, i) = (c.hidden, c.input);
        let mut m = TypedModel::default();
        let xs = if c.batch_first { [c.batch, c.seq, i] } else { [c.seq, c.batch, i] };
        let x = m.add_source("x", f32::fact(xs))?;
        let konst = |m: &mut TypedModel, name: &str, v: &[f32], shape: &[usize]| -> TractResult<OutletId> {
            let shape: Vec<usize> = if v.is_empty() { vec![0] } else { shape.to_vec() };
            m.add_const(name, Tensor::from_shape(&shape, v)?)
        };
        let w = konst(&mut m, "w", &d.w, &[dirs, 4 * h, i])?;
        let r = konst(&mut m, "r", &d.r, &[dirs, 4 * h, h])?;
        let b = konst(&mut m, "b", &d.b, &[dirs, 8 * h])?;
        let lens: Vec<i64> = c.lens.iter().flatten().map(|l| *l as i64).collect();
        let lens = m.add_const("lens", Tensor::from_shape(&[lens.len()], &lens)?)?;
        let st = if c.batch_first { [c.batch, dirs, h] } else { [dirs, c.batch, h] };
        let h0 = konst(&mut m, "h0", &d.h0, &st)?;
        let c0 = konst(&mut m, "c0", &d.c0, &st)?;
        let p = konst(&mut m, "p", &d.p, &[dirs, 3 * h])?;
        let op = LstmSeq::new(h, c.direction, c.batch_first, c.clip);
        let outs = m.wire_node("lstm", op, &[x, w, r, b, lens, h0, c0, p])?;
        m.select_output_outlets(&outs)?;
        Ok(m)
    }

    fn assert_close(what: &str, got: &Tensor, want: &[f64]) -> TractResult<()> {
        let got = plain::<f32>(got)?;
        assert_eq!(got.len(), want.len(), "{what}");
        for (k, (g, w)) in got.iter().zip(want).enumerate() {
            assert!((*g as f64 - w).abs() <= 1e-4 * (1.0 + w.abs()), "{what}[{k}]: {g} vs {w}");
        }
        Ok(())
    }

    /// Every direction, layout, length, peephole and clip combination, at
    /// sizes that leave tails for the tiled products, against the
    /// specification's formulas: through neorun's engine (weights prepared
    /// at load), through a bundle's NNEF and back, and evaluated directly.
    #[test]
    fn lstm_matches_the_onnx_formulas() -> TractResult<()> {
        let mut next = crate::seeded_values(0x5eed_1157);
        let mut n = 0;
        for direction in [Direction::Forward, Direction::Reverse, Direction::Bidirectional] {
            for batch_first in [false, true] {
                for (batch, lens) in [(1, None), (3, None), (3, Some(vec![4, 0, 2])), (5, Some(vec![1, 4, 3, 4, 2]))] {
                    for (hidden, input, extras) in [(5, 3, false), (37, 19, true), (128, 64, false)] {
                        let c = Case {
                            seq: 4,
                            batch,
                            input,
                            hidden,
                            direction,
                            batch_first,
                            lens: lens.clone(),
                            peepholes: extras,
                            clip: extras.then_some(0.9),
                            initial: extras || batch == 3,
                        };
                        let d = data(&c, &mut next);
                        let want = reference(&c, &d);
                        let xs = if c.batch_first { [c.batch, c.seq, c.input] } else { [c.seq, c.batch, c.input] };
                        let x = Tensor::from_shape(&xs, &d.x)?;
                        let what = format!("{direction:?} layout={batch_first} batch={batch} lens={lens:?} h={hidden}");
                        let m = model(&c, &d)?;
                        let engine = TractEngine::from_typed(m.clone(), crate::options::Kernels::Own, 1)?;
                        let prepared = engine.prepared_model().expect("typed");
                        assert!(prepared
                            .nodes()
                            .iter()
                            .any(|n| n.op_as::<LstmSeq>().is_some_and(|o| o.prepared.is_some())));
                        for (k, got) in engine.run(vec![x.clone()])?.iter().enumerate() {
                            assert_close(&format!("{what} out {k}"), got, &want[k])?;
                        }
                        // NNEF and back
                        let nnef = crate::engine::tract::nnef();
                        let tar = nnef.write_to_tar(&m, Vec::new())?;
                        let back = TractEngine::from_nnef_tar(&tar, crate::options::Kernels::Own, 1)?;
                        for (k, got) in back.run(vec![x.clone()])?.iter().enumerate() {
                            assert_close(&format!("{what} nnef out {k}"), got, &want[k])?;
                        }
                        // unprepared (weights read per run)
                        let plain_run = m.into_runnable()?.run(tvec![x.into_tvalue()])?;
                        for (k, got) in plain_run.iter().enumerate() {
                            assert_close(&format!("{what} unprepared out {k}"), got, &want[k])?;
                        }
                        n += 1;
                    }
                }
            }
        }
        assert_eq!(n, 72);
        Ok(())
    }

    /// With two threads: a step large enough to split between them, and
    /// the two directions at once, give the same values.
    #[test]
    fn threads_give_the_same_values() -> TractResult<()> {
        let mut next = crate::seeded_values(0x7a11);
        // two halves of the batch; two directions; each step in two (batch
        // 1); halves of a batch-first batch with its own lengths
        let cases = [
            (Direction::Forward, 2, None, false),
            (Direction::Bidirectional, 2, Some(vec![6, 3]), false),
            (Direction::Forward, 1, None, false),
            (Direction::Reverse, 3, Some(vec![6, 2, 5]), true),
        ];
        for (direction, batch, lens, batch_first) in cases {
            let c = Case {
                seq: 6,
                batch,
                input: 32,
                hidden: 256,
                direction,
                batch_first,
                lens,
                peepholes: false,
                clip: None,
                initial: true,
            };
            assert!(c.batch * 4 * c.hidden * c.hidden >= SPLIT_MIN_MACS);
            let d = data(&c, &mut next);
            let want = reference(&c, &d);
            // run under a two-thread executor (neorun's engine keeps runs
            // under a millisecond on one thread)
            let plan = model(&c, &d)?.into_optimized()?.into_runnable()?;
            let xs = if batch_first { [c.batch, c.seq, c.input] } else { [c.seq, c.batch, c.input] };
            let x = Tensor::from_shape(&xs, &d.x)?;
            let pool = tract_linalg::multithread::Executor::multithread(2);
            let got = tract_linalg::multithread::multithread_tract_scope(pool, || plan.run(tvec![x.into_tvalue()]))?;
            for (k, got) in got.iter().enumerate() {
                assert_close(&format!("{direction:?} batch {batch} out {k}"), got, &want[k])?;
            }
        }
        Ok(())
    }

    /// A length longer than the sequence is an error that says so, not a
    /// read past the end.
    #[test]
    fn a_sequence_length_beyond_the_sequence_is_an_error() -> TractResult<()> {
        let c = Case {
            seq: 3,
            batch: 2,
            input: 2,
            hidden: 3,
            direction: Direction::Forward,
            batch_first: false,
            lens: Some(vec![3, 7]),
            peepholes: false,
            clip: None,
            initial: false,
        };
        let d = data(&c, &mut crate::seeded_values(7));
        let m = model(&c, &d)?;
        let x = Tensor::from_shape(&[3, 2, 2], &d.x)?;
        let e = m.into_runnable()?.run(tvec![x.into_tvalue()]).unwrap_err();
        assert!(format!("{e:#}").contains("sequence length of 7 in a sequence of 3 steps"), "{e:#}");
        Ok(())
    }

    /// The tiled products, whatever this CPU picks and the baseline, equal
    /// the plain sum at sizes with row and column tails.
    #[test]
    fn products_equal_the_plain_sum() {
        let mut next = crate::seeded_values(99);
        for (rows, k, n) in [(1, 1, 1), (1, 64, 512), (3, 19, 148), (6, 33, 200), (9, 128, 130), (19, 40, 300)] {
            let x: Vec<f32> = (0..rows * k).map(|_| next()).collect();
            let m: Vec<f32> = (0..n * k).map(|_| next()).collect();
            let start: Vec<f32> = (0..rows * n).map(|_| next()).collect();
            let want: Vec<f64> = (0..rows * n)
                .map(|i| {
                    let (r, j) = (i / n, i % n);
                    start[i] as f64 + (0..k).map(|kk| x[r * k + kk] as f64 * m[j * k + kk] as f64).sum::<f64>()
                })
                .collect();
            // this CPU's, the AVX2 one where it runs, and the portable tiles
            let mut kinds = vec![
                Product::for_this_cpu(),
                Product { run: panels_product::<32, 3>, width: 32 },
                Product { run: panels_product::<32, 2>, width: 32 },
                Product { run: panels_product::<16, 3>, width: 16 },
            ];
            #[cfg(target_arch = "x86_64")]
            if super::super::simd::available() {
                // SAFETY: the CPU has AVX2 and FMA (`available`)
                kinds.push(Product { run: |o, x, r, p| unsafe { product_avx2(o, x, r, p) }, width: 32 });
            }
            for p in kinds {
                let mut out = start.clone();
                p.run(&mut out, &x, rows, &Panels::pack(&m, n, k, p.width).all());
                for (g, w) in out.iter().zip(&want) {
                    assert!((*g as f64 - w).abs() <= 1e-4 * (1.0 + w.abs()), "{rows}x{k}x{n}: {g} vs {w}");
                }
            }
        }
    }
}
