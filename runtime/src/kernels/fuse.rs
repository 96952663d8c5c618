//! What neorun's convolution and product kernels do to their output before
//! handing it on: a ReLU (and for products, a bias per row), which tract
//! would otherwise run as separate operators, each another pass over the
//! whole tensor. `fuse` moves them into the kernels after `substitute`;
//! the kernels apply them band by band or plane by plane, while the output
//! is still in cache.

use tract_core::internal::*;
use tract_core::model::Rewriter;
use tract_core::ops::binary::TypedBinOp;
use tract_core::ops::math::{Add, Max};

use super::depthwise::PlaneDepthwise;
use super::gemm::{GemmConv, GemmEinSum};

/// Moves ReLUs (a maximum with a constant zero) after `GemmConv`,
/// `PlaneDepthwise` and `GemmEinSum`, and constant per-row additions after
/// `GemmEinSum`, into those operators, when they are the only users of the
/// operator's output.
pub fn fuse(model: &mut TypedModel) -> TractResult<()> {
    Rewriter::default().with_rule_for("fuse_epilogue", fuse_rule).rewrite(&(), model)
}

fn fuse_rule(
    _: &(),
    model: &TypedModel,
    node: &TypedNode,
    _: &str,
    op: &TypedBinOp,
) -> TractResult<Option<TypedModelPatch>> {
    let (is_max, is_add) = (op.0.is::<Max>(), op.0.is::<Add>());
    if !(is_max || is_add) || op.1.is_some() {
        return Ok(None);
    }
    for (data, other) in [(0, 1), (1, 0)] {
        let producer = model.node(node.inputs[data].node);
        let y = model.outlet_fact(node.inputs[data])?;
        if producer.outputs.len() != 1
            || producer.outputs[0].successors.len() != 1
            || model.output_outlets()?.contains(&node.inputs[data])
            || node.outputs[0].fact.shape != y.shape
            || y.datum_type != f32::datum_type()
        {
            continue;
        }
        let Some(konst) = model.outlet_fact(node.inputs[other])?.konst.clone() else { continue };
        if konst.datum_type() != f32::datum_type() {
            continue;
        }
        let fused: Option<Box<dyn TypedOp>> = if is_max {
            if !konst.try_as_plain_ram()?.as_slice::<f32>()?.iter().all(|v| *v == 0.0) {
                continue;
            }
            if let Some(c) = producer.op_as::<GemmConv>() {
                (!c.relu).then(|| Box::new(GemmConv { relu: true, ..c.clone() }) as _)
            } else if let Some(d) = producer.op_as::<PlaneDepthwise>() {
                (!d.relu).then(|| Box::new(PlaneDepthwise { relu: true, ..d.clone() }) as _)
            } else if let Some(e) = producer.op_as::<GemmEinSum>() {
                (!e.relu).then(|| {
                    let mut e = e.clone();
                    e.relu = true;
                    Box::new(e) as _
                })
            } else {
                None
            }
        } else {
            // a constant varying at most along the product's rows
            let Some(e) = producer.op_as::<GemmEinSum>() else { continue };
            let weight = model.outlet_fact(producer.inputs[e.weight_slot])?;
            let (Some(m), None, false) = (e.rows(weight), &e.bias, e.relu) else { continue };
            let Some(bias) = crate::tensors::values_along(&konst, y.rank(), e.row_axis(), m)? else { continue };
            let mut e = e.clone();
            e.bias = Some(tensor1(&bias).into_arc_tensor());
            Some(Box::new(e) as _)
        };
        let Some(fused) = fused else { continue };
        let mut patch = TypedModelPatch::default();
        let inputs: TVec<OutletId> =
            producer.inputs.iter().map(|i| patch.tap_model(model, *i)).collect::<TractResult<_>>()?;
        let out = patch.wire_node(&producer.name, fused, &inputs)?;
        patch.shunt_outside(model, node.id.into(), out[0])?;
        patch.obliterate(producer.id)?;
        return Ok(Some(patch));
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::tract::TractEngine;
    use tract_core::ops::cnn::{Conv, KernelFormat, PaddingSpec, PoolSpec};
    use tract_core::ops::einsum::EinSum;
    use tract_core::ops::nn::DataFormat;

    fn random(shape: &[usize], next: &mut impl FnMut() -> f32) -> TractResult<Tensor> {
        let len: usize = shape.iter().product();
        Tensor::from_shape(shape, &(0..len).map(|_| next()).collect::<Vec<f32>>())
    }

    fn conv(
        m: &mut TypedModel,
        x: OutletId,
        c: usize,
        o: usize,
        group: usize,
        next: &mut impl FnMut() -> f32,
    ) -> TractResult<OutletId> {
        let spec = PoolSpec {
            data_format: DataFormat::NCHW,
            kernel_shape: tvec![3, 3],
            padding: PaddingSpec::Explicit(tvec![1, 1], tvec![1, 1]),
            dilations: None,
            strides: None,
            input_channels: c,
            output_channels: o,
        };
        let k = m.add_const("k", random(&[o, c / group, 3, 3], next)?)?;
        let b = m.add_const("b", random(&[o], next)?)?;
        let op = Conv { pool_spec: spec, kernel_fmt: KernelFormat::OIHW, group, q_params: None };
        Ok(m.wire_node("conv", op, &[x, k, b])?[0])
    }

    fn relu_of(m: &mut TypedModel, y: OutletId) -> TractResult<OutletId> {
        let zero = m.add_const("zero", tensor0(0f32).broadcast_into_rank(4)?)?;
        Ok(m.wire_node("relu", tract_core::ops::math::max(), &[y, zero])?[0])
    }

    /// neorun's engine (substitute, fuse) against tract's optimized plan on
    /// the same input; returns the prepared model's operator names.
    fn compare(m: TypedModel, x: Tensor) -> TractResult<Vec<String>> {
        let theirs = m.clone().into_optimized()?.into_runnable()?.run(tvec![x.clone().into_tvalue()])?;
        let engine = TractEngine::from_typed(m, crate::options::Kernels::Own, 1)?;
        let ours = engine.run(vec![x])?;
        for (t, o) in theirs.iter().zip(&ours) {
            let (t, o) = (t.try_as_plain_ram()?, o.try_as_plain_ram()?);
            for (p, q) in t.as_slice::<f32>()?.iter().zip(o.as_slice::<f32>()?) {
                assert!((p - q).abs() <= 1e-4 * (1.0 + p.abs()), "{p} vs {q}");
            }
        }
        Ok(engine.prepared_model().expect("a typed plan").nodes().iter().map(|n| n.op.name().to_string()).collect())
    }

    /// ReLUs after convolutions (grouped and depthwise too) run inside them.
    #[test]
    fn relu_goes_into_convolutions() -> TractResult<()> {
        if !super::super::simd::available() {
            return Ok(());
        }
        let mut next = crate::seeded_values(0x2545_f491_u64);
        for (group, kernel) in [(1, "GemmConv"), (2, "GemmConv"), (8, "PlaneDepthwise")] {
            let mut m = TypedModel::default();
            let x = m.add_source("x", f32::fact([1, 8, 9, 7]))?;
            let y = conv(&mut m, x, 8, 8, group, &mut next)?;
            let r = relu_of(&mut m, y)?;
            m.select_output_outlets(&[r])?;
            let ops = compare(m, random(&[1, 8, 9, 7], &mut next)?)?;
            assert!(ops.iter().any(|o| o == kernel), "{group}: {ops:?}");
            assert!(!ops.iter().any(|o| o.contains("Max")), "{group}: {ops:?}");
        }
        Ok(())
    }

    /// A 1x1 convolution as tract declutters it (a product with a [O, C]
    /// weight, then the bias added and a ReLU), and a dense layer (rows along
    /// the output's last axis), become one `GemmEinSum` with both; a product
    /// whose output is also used elsewhere keeps them.
    #[test]
    fn bias_and_relu_go_into_products() -> TractResult<()> {
        if !super::super::simd::available() {
            return Ok(());
        }
        let mut next = crate::seeded_values(0x9e37_79b9_u64);
        let layouts: [(&str, &[usize], &[usize]); 2] =
            [("mk,nkhw->nmhw", &[1, 64, 12, 12], &[1, 96, 1, 1]), ("nk,mk->nm", &[48, 64], &[1, 96])];
        for (expr, x_shape, bias_shape) in layouts {
            for shared in [false, true] {
                let mut m = TypedModel::default();
                let x = m.add_source("x", f32::fact(x_shape))?;
                let w = m.add_const("w", random(&[96, 64], &mut next)?)?;
                let inputs = if expr.starts_with('m') { [w, x] } else { [x, w] };
                let p = m.wire_node("p", EinSum::new(expr.parse()?, f32::datum_type()), &inputs)?[0];
                let b = m.add_const("bias", random(bias_shape, &mut next)?)?;
                let y = m.wire_node("add", tract_core::ops::math::add(), &[p, b])?[0];
                let zero = m.add_const("zero", tensor0(0f32).broadcast_into_rank(x_shape.len())?)?;
                let r = m.wire_node("relu", tract_core::ops::math::max(), &[y, zero])?[0];
                let outputs = if shared { vec![r, p] } else { vec![r] };
                m.select_output_outlets(&outputs)?;
                let ops = compare(m, random(x_shape, &mut next)?)?;
                assert!(ops.iter().any(|o| o == "GemmEinSum"), "{expr}: {ops:?}");
                let separate = ops.iter().any(|o| o.contains("Max") || o.contains("Add"));
                assert_eq!(separate, shared, "{expr}: {ops:?}");
            }
        }
        Ok(())
    }
}
