//! ONNX LSTMs imported as one operator over the whole sequence
//! (`neoc_runtime::kernels::lstm::LstmSeq`, NNEF `neoc_lstm`) instead of
//! tract's `Scan`, which dispatches its body once per step.
//!
//! Inference rules (shapes and types) are tract's own (`CommonRec`). The
//! operator is used when the LSTM has the default activations (sigmoid,
//! tanh, tanh), no `activation_alpha`/`activation_beta`, no `input_forget`,
//! and a float input with a fixed hidden size; otherwise tract's lowering
//! stands. It also does what tract's lowering does not: `direction =
//! reverse`, `sequence_lens`, `clip`, and bidirectional LSTMs with
//! `layout = 1`. (GRUs keep tract's lowering: tract runs the form PyTorch
//! exports, `linear_before_reset = 1`, as one whole-sequence operator
//! already.)

use neoc_runtime::kernels::lstm::{Direction, LstmSeq};
use tract_onnx::model::{OnnxOpRegister, ParsingContext};
use tract_onnx::pb::NodeProto;
use tract_onnx::tract_hir::internal::*;
use tract_onnx::tract_hir::ops;
use tract_onnx::tract_hir::ops::expandable::expand;

/// Puts neoc's LSTM import in place of tract's.
pub fn register(register: &mut OnnxOpRegister) {
    register.insert("LSTM", lstm);
}

/// What tract's lowering is kept for, if anything (None: `LstmSeq` can run it).
fn unsupported(pb: &NodeProto) -> TractResult<Option<String>> {
    if let Some(acts) = pb.get_attr_opt_tvec::<String>("activations")? {
        if !acts.chunks(3).all(|c| c == ["Sigmoid", "Tanh", "Tanh"]) {
            return Ok(Some(format!("activations {acts:?}")));
        }
    }
    for attr in ["activation_alpha", "activation_beta"] {
        if pb.attribute.iter().any(|a| a.name == attr) {
            return Ok(Some(attr.into()));
        }
    }
    if pb.get_attr_opt::<i64>("input_forget")?.unwrap_or(0) != 0 {
        return Ok(Some("input_forget".into()));
    }
    Ok(None)
}

fn lstm(_ctx: &ParsingContext, pb: &NodeProto) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    let body = tract_onnx::ops::rec::lstm::LSTM {
        f: Box::new(ops::nn::sigmoid()),
        g: Box::new(ops::math::tanh()),
        h: Box::new(ops::math::tanh()),
    };
    let common = tract_onnx::ops::rec::common::CommonRec::from_node_and_options(pb, 3, 0, Box::new(body))?;
    let direction = pb.get_attr_opt::<String>("direction")?.unwrap_or_else(|| "forward".into());
    let direction = Direction::from_onnx(&direction)
        .with_context(|| format!("LSTM direction {direction:?}: ONNX has forward, reverse and bidirectional"))?;
    let clip = pb.get_attr_opt::<f32>("clip")?;
    if let Some(c) = clip {
        ensure!(c > 0.0, "LSTM clip {c}: a threshold must be positive");
    }
    let fast = unsupported(pb)?.is_none().then_some(Fast { direction, clip });
    Ok((expand(Lstm { common, fast }), vec![]))
}

#[derive(Debug, Clone)]
struct Fast {
    direction: Direction,
    clip: Option<f32>,
}

#[derive(Debug, Clone)]
struct Lstm {
    /// tract's LSTM: its inference rules always, its lowering when `fast` is None.
    common: tract_onnx::ops::rec::common::CommonRec,
    fast: Option<Fast>,
}

impl Expansion for Lstm {
    fn name(&self) -> StaticName {
        "LSTM".into()
    }

    fn validation(&self) -> Validation {
        Validation::Rounding
    }

    fn nboutputs(&self) -> TractResult<usize> {
        self.common.nboutputs()
    }

    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> InferenceResult {
        self.common.rules(s, inputs, outputs)
    }

    fn wire(&self, prefix: &str, model: &mut TypedModel, inputs: &[OutletId]) -> TractResult<TVec<OutletId>> {
        let x = model.outlet_fact(inputs[0])?.clone();
        let r = model.outlet_fact(inputs[2])?.clone();
        let hidden = r.shape.get(2).and_then(|d| d.to_usize().ok());
        let (Some(fast), Some(hidden), true) =
            (&self.fast, hidden, x.datum_type == f32::datum_type() || x.datum_type == f16::datum_type())
        else {
            return self.common.wire(prefix, model, inputs);
        };
        let c = &self.common;
        let mut empty = |name: &str, dt: DatumType| -> TractResult<OutletId> {
            model.add_const(format!("{prefix}.no_{name}"), Tensor::zero_dt(dt, &[0])?)
        };
        let optional = |slot: Option<usize>| slot.map(|s| inputs[s]);
        let dt = x.datum_type;
        let wires = [
            inputs[0],
            inputs[1],
            inputs[2],
            match optional(c.optional_bias_input) {
                Some(o) => o,
                None => empty("b", dt)?,
            },
            match optional(c.optional_sequence_lens_input) {
                Some(o) => o,
                None => empty("sequence_lens", i64::datum_type())?,
            },
            match optional(c.optional_initial_h_input) {
                Some(o) => o,
                None => empty("initial_h", dt)?,
            },
            match optional(c.optional_initial_c_input) {
                Some(o) => o,
                None => empty("initial_c", dt)?,
            },
            match optional(c.optional_p_input) {
                Some(o) => o,
                None => empty("p", dt)?,
            },
        ];
        let op = LstmSeq::new(hidden, fast.direction, c.batch_first, fast.clip);
        let outs = model.wire_node(prefix, op, &wires)?;
        let mut result: TVec<OutletId> = tvec![outs[0]; self.nboutputs()?];
        for (slot, out) in
            [(c.optional_y_output, outs[0]), (c.optional_y_h_output, outs[1]), (c.optional_y_c_output, outs[2])]
        {
            if let Some(s) = slot {
                result[s] = out;
            }
        }
        Ok(result)
    }
}
