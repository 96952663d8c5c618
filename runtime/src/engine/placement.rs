//! Where tract's CUDA runtime runs a model's operators, read from the model
//! its translation made: tract-cuda and tract-gpu name the operators they
//! put on the GPU `Cuda…` and `Gpu…`, and copy tensors between host and
//! device with `DeviceSync…` nodes; every other operator stays on the CPU.
//!
//! `neoc` reads it from its dry run of the translation (no GPU needed) and
//! records it in CUDA bundles' manifests; a neorun built with `--features
//! cuda` reads it from the model it prepared on the GPU.

use neoc_bundle::manifest::{GpuPlacement, PlacedOp};
use tract_core::internal::*;
use tract_core::ops::konst::Const;
use tract_core::ops::source::TypedSource;

/// Counts a translated model's operators by where they run. Sources and
/// constants (weights, uploaded once) are not operators here.
pub fn read(model: &TypedModel, method: &str) -> GpuPlacement {
    let mut p = GpuPlacement { method: method.into(), status: "translated".into(), ..Default::default() };
    for node in model.nodes() {
        if node.op_is::<TypedSource>() || node.op_is::<Const>() {
            continue;
        }
        let name = node.op.name();
        if name.starts_with("DeviceSync") {
            p.transfers += 1;
        } else if name.starts_with("Cuda") || name.starts_with("Gpu") {
            p.gpu_ops += 1;
        } else {
            p.cpu_ops.push(PlacedOp { node: node.name.clone(), op: name.to_string() });
        }
    }
    p
}

/// One line for a person: `19 on the GPU, 3 on the CPU (MaxPool ×2,
/// Reduce<Sum>), 8 host↔device copies`.
pub fn summary(p: &GpuPlacement) -> String {
    if p.status != "translated" {
        return format!("not translatable for the GPU: {}", p.status);
    }
    let mut ops: Vec<(&str, usize)> = Vec::new();
    for o in &p.cpu_ops {
        match ops.iter_mut().find(|(op, _)| *op == o.op) {
            Some((_, n)) => *n += 1,
            None => ops.push((&o.op, 1)),
        }
    }
    let cpu = if ops.is_empty() {
        "none on the CPU".to_string()
    } else {
        let list: Vec<String> =
            ops.iter().map(|(op, n)| if *n > 1 { format!("{op} ×{n}") } else { op.to_string() }).collect();
        format!("{} on the CPU ({})", p.cpu_ops.len(), list.join(", "))
    };
    format!("{} operators on the GPU, {cpu}, {} host↔device copies", p.gpu_ops, p.transfers)
}
