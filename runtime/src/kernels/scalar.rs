//! Arithmetic between an f32 tensor and one constant value (`1 - p`,
//! `x * 0.5`, `x + b` with a single bias), in place where the input is not
//! shared. tract's own binary operators took a generic broadcasting path
//! for such pairs when the constant is the left operand of a subtraction:
//! fraud-mlp's `1 - p` over 8192 rows took 164 µs (`neorun bench
//! --profile`), for 8192 subtractions.
//!
//! Same arithmetic as tract's: `x + c`, `x - c`, `c - x` and `x · c`, each
//! one IEEE operation per element in the order the model wrote it (no
//! rewriting of `x - c` as `x + (-c)` or of a division as a product), so
//! the results are bit for bit tract's.

use tract_core::internal::*;
use tract_core::ops::binary::TypedBinOp;
use tract_core::ops::math::{Add, Mul, Sub};

/// Which operation, with the constant where the model put it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Kind {
    /// `x + c` (either order: addition commutes exactly)
    Add,
    /// `x · c` (either order)
    Mul,
    /// `x - c`
    SubConst,
    /// `c - x`
    ConstSub,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ScalarOp {
    pub kind: Kind,
    pub c: f32,
}

impl Eq for ScalarOp {}

impl std::hash::Hash for ScalarOp {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        std::mem::discriminant(&self.kind).hash(state);
        self.c.to_bits().hash(state);
    }
}

impl Op for ScalarOp {
    fn name(&self) -> StaticName {
        "ScalarOp".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![match self.kind {
            Kind::Add => format!("x + {}", self.c),
            Kind::Mul => format!("x * {}", self.c),
            Kind::SubConst => format!("x - {}", self.c),
            Kind::ConstSub => format!("{} - x", self.c),
        }])
    }

    op_as_typed_op!();
}

impl ScalarOp {
    fn apply(&self, y: &mut [f32]) {
        let c = self.c;
        match self.kind {
            Kind::Add => y.iter_mut().for_each(|v| *v += c),
            Kind::Mul => y.iter_mut().for_each(|v| *v *= c),
            Kind::SubConst => y.iter_mut().for_each(|v| *v -= c),
            Kind::ConstSub => y.iter_mut().for_each(|v| *v = c - *v),
        }
    }
}

impl EvalOp for ScalarOp {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let x = args_1!(inputs);
        // the input's own memory when nothing else holds it, else a copy
        let mut y = x.into_tensor();
        ensure!(y.datum_type() == f32::datum_type(), "ScalarOp on {:?}", y.datum_type());
        self.apply(y.try_as_plain_ram_mut()?.as_slice_mut::<f32>()?);
        Ok(tvec!(y.into_tvalue()))
    }
}

impl TypedOp for ScalarOp {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        Ok(tvec!(f32::fact(inputs[0].shape.clone())))
    }

    as_op!();
}

/// The single value of a constant whose elements are all equal.
fn uniform(t: &Tensor) -> Option<f32> {
    let v = t.try_as_plain_ram().ok()?;
    let v = v.as_slice::<f32>().ok()?;
    let first = *v.first()?;
    v.iter().all(|x| x.to_bits() == first.to_bits()).then_some(first)
}

/// Replaces f32 additions, subtractions and multiplications of a tensor by
/// a constant holding one value (of any shape that does not widen the
/// tensor) with `ScalarOp`; returns how many. Run after `fuse`, which
/// moves such additions into the products before them where it can.
pub fn substitute(model: &mut TypedModel) -> TractResult<usize> {
    let f32_dt = f32::datum_type();
    let mut replaced = 0;
    for id in 0..model.nodes().len() {
        let node = model.node(id);
        let Some(bin) = node.op_as::<TypedBinOp>() else { continue };
        if bin.1.is_some() || node.inputs.len() != 2 {
            continue;
        }
        let facts: TVec<TypedFact> =
            node.inputs.iter().map(|i| model.outlet_fact(*i).cloned()).collect::<TractResult<_>>()?;
        if facts.iter().any(|f| f.datum_type != f32_dt || !f.is_plain()) {
            continue;
        }
        for (data, konst) in [(0usize, 1usize), (1, 0)] {
            let (Some(k), None) = (&facts[konst].konst, &facts[data].konst) else { continue };
            let Some(c) = uniform(k) else { continue };
            // the constant must not widen the tensor (nor add axes to it)
            if node.outputs[0].fact.shape != facts[data].shape {
                continue;
            }
            let kind = if bin.0.is::<Add>() {
                Kind::Add
            } else if bin.0.is::<Mul>() {
                Kind::Mul
            } else if bin.0.is::<Sub>() {
                if konst == 1 {
                    Kind::SubConst
                } else {
                    Kind::ConstSub
                }
            } else {
                break;
            };
            let mut patch = TypedModelPatch::default();
            let x = patch.tap_model(model, node.inputs[data])?;
            let y = patch.wire_node(&node.name, ScalarOp { kind, c }, &[x])?;
            patch.shunt_outside(model, OutletId::new(id, 0), y[0])?;
            patch.obliterate(id)?;
            patch.apply(model)?;
            replaced += 1;
            break;
        }
    }
    if replaced > 0 {
        // the replaced nodes and the constants no longer read by anything
        model.compact()?;
    }
    Ok(replaced)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bit for bit tract's, for each operation and either operand order,
    /// over values with signed zeros, infinities and NaN; a constant that
    /// widens the tensor, or holds several values, is left to tract.
    #[test]
    fn equals_tracts_operators_bit_for_bit() -> TractResult<()> {
        use tract_core::ops::math::{add, mul, sub};
        let xs = [1.5f32, -0.0, 0.0, f32::INFINITY, f32::NEG_INFINITY, f32::NAN, 3.25e-39, -7.0];
        for c in [1.0f32, -0.0, 0.5, f32::INFINITY] {
            for (name, op) in [("add", add()), ("sub", sub()), ("mul", mul())] {
                for konst_first in [false, true] {
                    let build = || -> TractResult<TypedModel> {
                        let mut m = TypedModel::default();
                        let x = m.add_source("x", f32::fact([2, 4]))?;
                        let k = m.add_const("c", tensor2(&[[c]]))?;
                        let ins = if konst_first { [k, x] } else { [x, k] };
                        let y = m.wire_node("op", op.clone(), &ins)?;
                        m.select_output_outlets(&y)?;
                        Ok(m)
                    };
                    let input = Tensor::from_shape(&[2, 4], &xs)?;
                    let theirs = build()?.into_runnable()?.run(tvec!(input.clone().into_tvalue()))?;
                    let mut ours = build()?;
                    assert_eq!(substitute(&mut ours)?, 1, "{name} {c}");
                    assert!(ours.nodes().iter().any(|n| n.op_is::<ScalarOp>()));
                    let ours = ours.into_runnable()?.run(tvec!(input.into_tvalue()))?;
                    let bits = |t: &Tensor| -> TractResult<Vec<u32>> {
                        Ok(t.try_as_plain_ram()?.as_slice::<f32>()?.iter().map(|v| v.to_bits()).collect())
                    };
                    assert_eq!(bits(&ours[0])?, bits(&theirs[0])?, "{name} c={c} konst_first={konst_first}");
                }
            }
        }
        // left to tract: a constant that widens the tensor, one of several values
        for k in [Tensor::from_shape(&[3, 4], &[1f32; 12])?, tensor2(&[[1f32, 2.0]])] {
            let mut m = TypedModel::default();
            let x = m.add_source("x", f32::fact([1, if k.len() == 2 { 2 } else { 4 }]))?;
            let k = m.add_const("c", k)?;
            let y = m.wire_node("op", sub(), &[k, x])?;
            m.select_output_outlets(&y)?;
            assert_eq!(substitute(&mut m)?, 0);
        }
        Ok(())
    }
}
