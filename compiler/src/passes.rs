//! neoc's own rewrites of a decluttered tract model, run for every target
//! before the model is written: each gives the same values (the verify
//! stage checks the result against the source model) and a model that runs
//! faster or on more devices.

use anyhow::{Context, Result};
use tract_core::internal::*;
use tract_core::model::Rewriter;
use tract_core::ops::binary::TypedBinOp;
use tract_core::ops::cnn::{Conv, KernelFormat};
use tract_core::ops::math::{Add, Mul};
use tract_core::ops::nn::Softmax;

use neoc_runtime::tensors::values_along;

/// Runs every pass to a fixed point.
pub fn run(model: &mut TypedModel) -> Result<()> {
    Rewriter::default()
        .with_rule_for("drop_unit_softmax_axes", drop_unit_softmax_axes)
        .with_rule_for("fold_channel_affine_into_conv", fold_channel_affine_into_conv)
        .rewrite(&(), model)
        .context("neoc's rewrites (softmax axes, per-channel scale and shift into convolutions)")
}

/// Softmax over several axes where all but one have length 1 (ONNX's
/// opset < 13 Softmax flattens from its axis: SqueezeNet's over [1000,1,1])
/// as softmax over that one axis: the same values, and tract-cuda's GPU
/// softmax takes one axis only (it refuses to translate the model otherwise).
fn drop_unit_softmax_axes(
    _: &(),
    model: &TypedModel,
    node: &TypedNode,
    _: &str,
    op: &Softmax,
) -> TractResult<Option<TypedModelPatch>> {
    let shape = &model.outlet_fact(node.inputs[0])?.shape;
    let mut axes: TVec<usize> = op.axes.iter().copied().filter(|&a| !shape[a].is_one()).collect();
    if axes.is_empty() {
        axes.push(op.axes[0]);
    }
    if axes.len() == op.axes.len() {
        return Ok(None);
    }
    let single = Softmax { axes, ..op.clone() };
    TypedModelPatch::replace_single_op(model, node, &node.inputs, single).map(Some)
}

/// A convolution followed by a multiplication or an addition by a constant
/// per output channel (a batch norm, which tract declutters into both) as
/// one convolution with the scale folded into its kernel and bias and the
/// shift into its bias. tract folds them itself only for ungrouped
/// convolutions: ShuffleNet's grouped 1x1 and depthwise convolutions each
/// kept a separate pass over their output (21% of its time in neorun).
fn fold_channel_affine_into_conv(
    _: &(),
    model: &TypedModel,
    node: &TypedNode,
    name: &str,
    op: &TypedBinOp,
) -> TractResult<Option<TypedModelPatch>> {
    let scale = op.0.is::<Mul>();
    if !(scale || op.0.is::<Add>()) || op.1.is_some() || model.output_outlets()?.contains(&node.id.into()) {
        return Ok(None);
    }
    for (data, other) in [(0, 1), (1, 0)] {
        let producer = model.node(node.inputs[data].node);
        let Some(conv) = producer.op_as::<Conv>() else { continue };
        let y = model.outlet_fact(node.inputs[data])?;
        if conv.q_params.is_some()
            || conv.kernel_fmt != KernelFormat::OIHW
            || y.datum_type != f32::datum_type()
            || producer.outputs[0].successors.len() != 1
            || model.output_outlets()?.contains(&node.inputs[data])
            || node.outputs[0].fact.shape != y.shape
        {
            continue;
        }
        let o = conv.pool_spec.output_channels;
        let c_axis = conv.pool_spec.data_format.shape(y.shape.to_tvec())?.c_axis();
        let Some(values) = model.outlet_fact(node.inputs[other])?.konst.clone() else { continue };
        let Some(per_channel) = values_along(&values, y.rank(), c_axis, o)? else { continue };
        let (Some(kernel), Some(bias)) = (
            model.outlet_fact(producer.inputs[1])?.konst.clone(),
            model.outlet_fact(producer.inputs[2])?.konst.clone(),
        ) else {
            continue;
        };
        if kernel.datum_type() != f32::datum_type() || bias.datum_type() != f32::datum_type() {
            continue;
        }
        let bias = bias.try_as_plain_ram()?.as_slice::<f32>()?.to_vec();
        let mut bias = match bias.len() {
            1 => vec![bias[0]; o],
            n if n == o => bias,
            _ => continue,
        };
        let mut kernel = kernel.into_tensor();
        if scale {
            let mut view = kernel.try_as_plain_ram_mut()?;
            let k = view.as_slice_mut::<f32>()?;
            let per_output = k.len() / o;
            for (row, s) in k.chunks_mut(per_output).zip(&per_channel) {
                row.iter_mut().for_each(|w| *w *= s);
            }
            bias.iter_mut().zip(&per_channel).for_each(|(b, s)| *b *= s);
        } else {
            bias.iter_mut().zip(&per_channel).for_each(|(b, s)| *b += s);
        }
        let mut patch = TypedModelPatch::default();
        let x = patch.tap_model(model, producer.inputs[0])?;
        let k = patch.add_const(format!("{name}.folded_kernel"), kernel)?;
        let b = patch.add_const(format!("{name}.folded_bias"), tensor1(&bias))?;
        let folded = patch.wire_node(format!("{name}.folded"), conv.clone(), &[x, k, b])?;
        patch.shunt_outside(model, node.id.into(), folded[0])?;
        return Ok(Some(patch));
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tract_core::ops::nn::{Softmax, SoftmaxKind};

    fn softmax_model(shape: [usize; 4], axes: &[usize]) -> TractResult<TypedModel> {
        let mut m = TypedModel::default();
        let x = m.add_source("x", f32::fact(shape))?;
        let op = Softmax { axes: axes.into(), quant_output_dt: None, kind: SoftmaxKind::default() };
        let s = m.wire_node("s", op, &[x])?;
        m.select_output_outlets(&s)?;
        Ok(m)
    }

    fn values(len: usize, seed: f32) -> Vec<f32> {
        (0..len).map(|i| ((i as f32 + seed) * 0.61).sin() * 2.0).collect()
    }

    fn konst(m: &mut TypedModel, name: &str, shape: &[usize], seed: f32) -> TractResult<OutletId> {
        let len = shape.iter().product();
        m.add_const(name, Tensor::from_shape(shape, &values(len, seed))?)
    }

    /// An NCHW convolution of `x` with `group` groups, `o` outputs, 3x3.
    fn conv(m: &mut TypedModel, name: &str, x: OutletId, c: usize, o: usize, group: usize) -> TractResult<OutletId> {
        use tract_core::ops::cnn::{PaddingSpec, PoolSpec};
        use tract_core::ops::nn::DataFormat;
        let spec = PoolSpec {
            data_format: DataFormat::NCHW,
            kernel_shape: tvec![3, 3],
            padding: PaddingSpec::Explicit(tvec![1, 1], tvec![1, 1]),
            dilations: None,
            strides: None,
            input_channels: c,
            output_channels: o,
        };
        let k = konst(m, &format!("{name}.k"), &[o, c / group, 3, 3], 1.0)?;
        let b = m.add_const(format!("{name}.b"), tensor0(0.5f32))?;
        let op = Conv { pool_spec: spec, kernel_fmt: KernelFormat::OIHW, group, q_params: None };
        Ok(m.wire_node(name, op, &[x, k, b])?[0])
    }

    fn bin(m: &mut TypedModel, name: &str, op: TypedBinOp, a: OutletId, b: OutletId) -> TractResult<OutletId> {
        Ok(m.wire_node(name, op, &[a, b])?[0])
    }

    fn count(m: &TypedModel, name: &str) -> usize {
        m.nodes().iter().filter(|n| n.op.name() == name).count()
    }

    fn same_outputs(original: &TypedModel, rewritten: &TypedModel) -> TractResult<()> {
        let shape: Vec<usize> = original.input_fact(0)?.shape.as_concrete().unwrap().to_vec();
        let x = Tensor::from_shape(&shape, &values(shape.iter().product(), 7.0))?;
        let want = original.clone().into_runnable()?.run(tvec![x.clone().into_tvalue()])?;
        let got = rewritten.clone().into_runnable()?.run(tvec![x.into_tvalue()])?;
        want[0].close_enough(&got[0], true)
    }

    /// Batch norms after grouped and depthwise convolutions (as tract
    /// declutters them: a multiplication and an addition by per-channel
    /// constants, in either operand order) go into the
    /// convolutions; the ReLU after them stays. Same outputs.
    #[test]
    fn channel_scales_and_shifts_fold_into_convolutions() -> TractResult<()> {
        for group in [1, 2, 6] {
            let mut m = TypedModel::default();
            let x = m.add_source("x", f32::fact([1, 6, 5, 7]))?;
            let y = conv(&mut m, "conv", x, 6, 6, group)?;
            let s = konst(&mut m, "scale", &[1, 6, 1, 1], 2.0)?;
            let y = bin(&mut m, "mul", tract_core::ops::math::mul(), s, y)?;
            let t = konst(&mut m, "shift", &[1, 6, 1, 1], 3.0)?;
            let y = bin(&mut m, "add", tract_core::ops::math::add(), y, t)?;
            let zero = m.add_const("zero", tensor0(0f32).broadcast_into_rank(4)?)?;
            let y = bin(&mut m, "relu", tract_core::ops::math::max(), y, zero)?;
            m.select_output_outlets(&[y])?;
            let mut r = m.clone();
            run(&mut r)?;
            assert_eq!(
                (count(&r, "Mul"), count(&r, "Add"), count(&r, "Max"), count(&r, "Conv")),
                (0, 0, 1, 1),
                "group {group}"
            );
            same_outputs(&m, &r)?;
        }
        Ok(())
    }

    /// Left alone: a scale that varies along a spatial axis, a convolution
    /// whose output is used twice, and an addition that is the model's
    /// output (its name is the bundle's output name).
    #[test]
    fn other_scales_stay() -> TractResult<()> {
        type Wire = dyn Fn(&mut TypedModel, OutletId) -> TractResult<TVec<OutletId>>;
        let cases: [(&str, &Wire); 3] = [
            ("spatial", &|m, y| {
                let s = konst(m, "scale", &[1, 1, 5, 1], 2.0)?;
                let y = bin(m, "mul", tract_core::ops::math::mul(), y, s)?;
                let one = m.add_const("one", tensor0(1f32).broadcast_into_rank(4)?)?;
                Ok(tvec![bin(m, "add", tract_core::ops::math::add(), y, one)?])
            }),
            ("used twice", &|m, y| {
                let s = konst(m, "scale", &[1, 6, 1, 1], 2.0)?;
                Ok(tvec![bin(m, "mul", tract_core::ops::math::mul(), y, s)?, y])
            }),
            ("output", &|m, y| {
                let t = konst(m, "shift", &[1, 6, 1, 1], 2.0)?;
                Ok(tvec![bin(m, "add", tract_core::ops::math::add(), y, t)?])
            }),
        ];
        for (what, tail) in cases {
            let mut m = TypedModel::default();
            let x = m.add_source("x", f32::fact([1, 6, 5, 7]))?;
            let y = conv(&mut m, "conv", x, 6, 6, 2)?;
            let outs = tail(&mut m, y)?;
            m.select_output_outlets(&outs)?;
            let mut r = m.clone();
            run(&mut r)?;
            assert_eq!(count(&r, "Mul") + count(&r, "Add"), count(&m, "Mul") + count(&m, "Add"), "{what}");
            same_outputs(&m, &r)?;
        }
        Ok(())
    }

    /// SqueezeNet's softmax over [1000,1,1] becomes one over its 1000
    /// values, with the same output; a softmax over two real axes keeps both.
    #[test]
    fn softmax_over_unit_axes_drops_them() -> Result<()> {
        for (shape, axes, kept) in [
            ([1, 10, 1, 1], vec![1, 2, 3], vec![1]),
            ([1, 1, 1, 1], vec![1, 2, 3], vec![1]),
            ([1, 3, 4, 1], vec![1, 2, 3], vec![1, 2]),
            ([2, 5, 1, 1], vec![1], vec![1]),
        ] {
            let original = softmax_model(shape, &axes)?;
            let mut rewritten = original.clone();
            run(&mut rewritten)?;
            let op = rewritten.nodes().iter().find_map(|n| n.op_as::<Softmax>()).expect("still a softmax");
            assert_eq!(op.axes.to_vec(), kept, "{shape:?} {axes:?}");
            let len: usize = shape.iter().product();
            let x = Tensor::from_shape(&shape, &(0..len).map(|i| (i as f32 * 0.37).sin() * 3.0).collect::<Vec<_>>())?;
            let want = original.into_runnable()?.run(tvec![x.clone().into_tvalue()])?;
            let got = rewritten.into_runnable()?.run(tvec![x.into_tvalue()])?;
            want[0].close_enough(&got[0], true)?;
        }
        Ok(())
    }
}
