//! Where tract's CUDA runtime will run a CUDA bundle's operators, found at
//! compile time on a build host without a GPU.
//!
//! neorun prepares a CUDA bundle with tract-cuda's transform, which opens a
//! CUDA context before anything else, so it cannot run here. Its node
//! translation, which decides placement, needs the device only to upload
//! constants. The dry run makes the rewrites that precede the translation
//! (tract's public ones, and neoc's own versions of the two tract-cuda keeps
//! private that change placement: untransposing matrix products' outputs and
//! splitting multi-axis reductions), then calls tract-cuda's own
//! `translate_node` on every node, except that constants keep their values
//! on the host, with the device fact the GPU operators expect.
//!
//! Left out: tract-cuda's fusions after the translation (of GPU operators
//! into each other: they change counts, not what runs where), its broadcast
//! rewrite of batched matrix products and its transformer fusions (RMS norm,
//! attention), so placement for transformer models is less certain.

use neoc_bundle::manifest::GpuPlacement;
use neoc_runtime::engine::TRACT_VERSION;
use tract_core::internal::*;
use tract_core::model::translator::Translate;
use tract_core::model::Rewriter;
use tract_core::ops::einsum::prefix_matmul::{rewrite_einsum_to_prefix_matmul, PrefixMatMul};
use tract_core::ops::konst::Const;
use tract_core::ops::nn::{Reduce, Reducer};
use tract_cuda::CudaTransform;
use tract_gpu::fact::DeviceFact;
use tract_gpu::tensor::DeviceTensor;

/// How [`dry_run`] finds placement, as the manifest says it.
pub fn method() -> String {
    format!("dry run of tract-cuda {TRACT_VERSION}'s node translation on the build host, without a GPU")
}

/// The placement of `model` (a bundle's NNEF model, as neorun reads it).
/// A model tract-cuda cannot translate gives a placement whose status says
/// why; on a GPU it loads only with `neorun --cpu-fallback`.
pub fn dry_run(model: &TypedModel) -> GpuPlacement {
    let translated = neoc_runtime::guard::guarded(|| -> TractResult<TypedModel> {
        // decluttered after loading, as neorun does before handing it to
        // tract's CUDA runtime
        let mut m = model.clone().into_decluttered()?;
        rewrite_einsum_to_prefix_matmul(&mut m, false)?;
        Rewriter::default()
            .with_rule_for("untranspose_matmul_output", untranspose_matmul_output)
            .with_rule_for("rewrite_kernel_conv_in_oihw", tract_core::ops::cnn::conv::rewrite_kernel_conv_in_oihw)
            .with_rule_for("rewrite_conv_with_n_axis", tract_core::ops::cnn::rewrite_conv_with_n_axis)
            .with_rule_for("nearest_upsample_to_broadcast", tract_core::ops::nn::rewrite_nearest_upsample_to_broadcast)
            .with_rule_for("split_multi_axis_reduce", split_multi_axis_reduce)
            .rewrite(&(), &mut m)?;
        DryRun.translate_model(&m)
    });
    match translated {
        Ok(Ok(t)) => neoc_runtime::engine::placement::read(&t, &method()),
        Ok(Err(e)) => failed(format!("{e:#}")),
        Err(panic) => failed(format!("tract-cuda panicked: {panic}")),
    }
}

fn failed(why: String) -> GpuPlacement {
    // tract's error chain names the node first, then the cause
    let why = why.lines().next().unwrap_or_default().replace(" DryRun:", ":");
    GpuPlacement { method: method(), status: why, ..Default::default() }
}

/// tract-cuda's translation, with constants left on the host.
#[derive(Debug)]
struct DryRun;

impl Translate<TypedFact, Box<dyn TypedOp>, TypedFact, Box<dyn TypedOp>> for DryRun {
    fn translate_node(
        &self,
        source: &TypedModel,
        node: &TypedNode,
        target: &mut TypedModel,
        mapping: &HashMap<OutletId, OutletId>,
    ) -> TractResult<TVec<OutletId>> {
        if let Some(k) = node.op_as::<Const>() {
            if k.exotic_fact().is_none() && DeviceTensor::is_supported_dt(k.val().datum_type()) {
                let fact = DeviceFact::from_host(TypedFact::try_from(k.val().clone())?)?;
                let on_device = Const::new_with_exotic_fact(k.val().clone(), Box::new(fact))?;
                let wire = target.wire_node(&node.name, on_device, &[])?;
                return tract_gpu::sync::sync_model_outputs_if_required(source, node, target, wire);
            }
        }
        CudaTransform.translate_node(source, node, target, mapping)
    }
}

/// A product whose output is transposed, as the product of the transposed
/// operands in the other order (Cᵀ = Bᵀ·Aᵀ): tract-cuda's GPU matrix
/// product takes only untransposed outputs.
fn untranspose_matmul_output(
    _: &(),
    model: &TypedModel,
    node: &TypedNode,
    _: &str,
    op: &PrefixMatMul,
) -> TractResult<Option<TypedModelPatch>> {
    if !op.transpose_c {
        return Ok(None);
    }
    let swapped =
        PrefixMatMul { transpose_a: !op.transpose_b, transpose_b: !op.transpose_a, transpose_c: false, ..*op };
    TypedModelPatch::replace_single_op(model, node, &[node.inputs[1], node.inputs[0]], swapped).map(Some)
}

/// A reduction over several axes, as one reduction per axis (from the last
/// axis, so the others keep their indices): tract-cuda's reductions take
/// one axis. Only for the reducers where that is exact.
fn split_multi_axis_reduce(
    _: &(),
    model: &TypedModel,
    node: &TypedNode,
    name: &str,
    op: &Reduce,
) -> TractResult<Option<TypedModelPatch>> {
    use Reducer::*;
    if op.axes.len() < 2 || !matches!(op.reducer, Sum | Prod | Min | Max | Any | All) {
        return Ok(None);
    }
    let mut axes = op.axes.clone();
    axes.sort_unstable();
    let mut patch = TypedModelPatch::default();
    let mut wire = patch.tap_model(model, node.inputs[0])?;
    for (i, &axis) in axes.iter().rev().enumerate() {
        let single = Reduce { axes: tvec![axis], reducer: op.reducer };
        wire = patch.wire_node(format!("{name}.axis_{i}"), single, &[wire])?[0];
    }
    patch.shunt_outside(model, node.id.into(), wire)?;
    Ok(Some(patch))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tract_core::ops::cnn::{MaxPool, PaddingSpec, PoolSpec};
    use tract_core::ops::einsum::EinSum;
    use tract_core::ops::nn::{DataFormat, Softmax, SoftmaxKind};

    fn cpu_ops(p: &GpuPlacement) -> Vec<(&str, &str)> {
        p.cpu_ops.iter().map(|o| (o.node.as_str(), o.op.as_str())).collect()
    }

    /// An operator tract-cuda has no kernel for stays on the CPU, with a
    /// copy to the host before it and back to the device after it; the
    /// constants feeding GPU operators are not counted.
    #[test]
    fn a_pool_stays_on_the_cpu_between_copies() -> TractResult<()> {
        let mut m = TypedModel::default();
        let x = m.add_source("x", f32::fact([1, 2, 6, 6]))?;
        let two = m.add_const("two", tensor0(2f32).broadcast_into_rank(4)?)?;
        let a = m.wire_node("before", tract_core::ops::math::add(), &[x, two])?;
        let spec = PoolSpec {
            data_format: DataFormat::NCHW,
            kernel_shape: tvec![2, 2],
            padding: PaddingSpec::Valid,
            dilations: None,
            strides: Some(tvec![2, 2]),
            input_channels: 2,
            output_channels: 2,
        };
        let p = m.wire_node("pool", MaxPool { pool_spec: spec, with_index_outputs: None }, &a)?;
        let b = m.wire_node("after", tract_core::ops::math::mul(), &[p[0], two])?;
        m.select_output_outlets(&b)?;
        let placed = dry_run(&m);
        assert_eq!(placed.status, "translated");
        assert_eq!(cpu_ops(&placed), [("pool", "MaxPool")]);
        assert_eq!(placed.gpu_ops, 2, "{placed:?}");
        // in, to the host for the pool, back, out
        assert_eq!(placed.transfers, 4, "{placed:?}");
        Ok(())
    }

    /// A slice with constant bounds, as tract-nnef reads one (DynSlice,
    /// which tract-cuda leaves on the CPU), runs on the GPU once the model
    /// is decluttered, as neorun does before preparing it.
    #[test]
    fn constant_slices_run_on_the_gpu() -> TractResult<()> {
        let mut m = TypedModel::default();
        let x = m.add_source("x", f32::fact([1, 8, 4]))?;
        let begin = m.add_const("begin", tensor0(TDim::from(2)))?;
        let end = m.add_const("end", tensor0(TDim::from(6)))?;
        let op = tract_core::ops::array::DynSlice { axis: 1, len: 4.into() };
        let s = m.wire_node("slice", op, &[x, begin, end])?;
        let two = m.add_const("two", tensor0(2f32).broadcast_into_rank(3)?)?;
        let y = m.wire_node("y", tract_core::ops::math::mul(), &[s[0], two])?;
        m.select_output_outlets(&y)?;
        let placed = dry_run(&m);
        assert_eq!((placed.status.as_str(), placed.cpu_ops.len()), ("translated", 0), "{placed:?}");
        assert_eq!(placed.gpu_ops, 2, "{placed:?}");
        Ok(())
    }

    /// A sum over two axes goes to the GPU as two one-axis sums; a mean of
    /// squares, which cannot be split that way, stays on the CPU.
    #[test]
    fn multi_axis_sums_are_split_for_the_gpu() -> TractResult<()> {
        for (reducer, on_gpu) in [(Reducer::Sum, true), (Reducer::Max, true), (Reducer::MeanOfSquares, false)] {
            let mut m = TypedModel::default();
            let x = m.add_source("x", f32::fact([2, 3, 4, 5]))?;
            let r = m.wire_node("r", Reduce { axes: tvec![1, 3], reducer }, &[x])?;
            m.select_output_outlets(&r)?;
            let placed = dry_run(&m);
            assert_eq!(placed.status, "translated");
            assert_eq!(placed.cpu_ops.is_empty(), on_gpu, "{reducer:?}: {placed:?}");
            if on_gpu {
                assert_eq!(placed.gpu_ops, 2, "{reducer:?}: {placed:?}");
            }
        }
        Ok(())
    }

    /// Matrix products run on the GPU, whichever layout tract gives their
    /// output (a transposed one is untransposed first).
    #[test]
    fn matrix_products_run_on_the_gpu_in_every_layout() -> TractResult<()> {
        for expr in ["mk,kn->mn", "km,kn->mn", "mk,nk->nm", "km,nk->nm"] {
            let mut m = TypedModel::default();
            let a_shape = if expr.starts_with("mk") { [8, 16] } else { [16, 8] };
            let b_shape = if expr[3..].starts_with("kn") { [16, 4] } else { [4, 16] };
            let a = m.add_source("a", f32::fact(a_shape))?;
            let b = m.add_source("b", f32::fact(b_shape))?;
            let p = m.wire_node("p", EinSum::new(expr.parse()?, f32::datum_type()), &[a, b])?;
            m.select_output_outlets(&p)?;
            let placed = dry_run(&m);
            assert_eq!((placed.status.as_str(), placed.cpu_ops.len()), ("translated", 0), "{expr}: {placed:?}");
            assert!(placed.gpu_ops >= 1, "{expr}: {placed:?}");
        }
        Ok(())
    }

    /// A model tract-cuda refuses to translate (a softmax over two axes of
    /// more than one element) gives a status naming the node and the reason.
    #[test]
    fn an_untranslatable_model_says_which_node_and_why() -> TractResult<()> {
        let mut m = TypedModel::default();
        let x = m.add_source("x", f32::fact([1, 4, 5]))?;
        let sm = Softmax { axes: tvec![1, 2], quant_output_dt: None, kind: SoftmaxKind::default() };
        let s = m.wire_node("probs", sm, &[x])?;
        m.select_output_outlets(&s)?;
        let placed = dry_run(&m);
        assert!(placed.status.contains("\"probs\"") && placed.status.contains("one axis"), "{}", placed.status);
        assert!(!placed.status.contains("DryRun"), "{}", placed.status);
        assert_eq!((placed.gpu_ops, placed.cpu_ops.len()), (0, 0));
        Ok(())
    }
}
