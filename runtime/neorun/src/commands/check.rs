//! `neorun check`: the device health check — verify, load, run the
//! bundle's own test vectors.

use std::collections::BTreeSet;

use anyhow::anyhow;
use neoc_bundle::container::Signer;
use neoc_bundle::manifest::GpuPlacement;
use neoc_runtime::engine::placement::summary;

use crate::cli::CheckArgs;
use crate::exit::Failure;

pub fn run(a: CheckArgs) -> Result<(), Failure> {
    let options = crate::settings::open_options(&a.load, None)?;
    let model = super::open(&a.bundle, &options)?;
    let m = &model.manifest;
    let signer = match &model.signer {
        Signer::Key { key_id, .. } => format!("signed by {key_id}"),
        Signer::Unsigned => "UNSIGNED".to_string(),
    };
    let st = model.self_test().map_err(|e| anyhow!("health check failed: {e}"))?;
    println!(
        "ok: {}:{} for {} ({signer}), running {}: {} test vectors pass (max abs error {:.2e})",
        m.model.name, m.model.version, m.target.name, model.running, st.cases, st.max_abs_error
    );
    if let Some(here) = model.gpu_placement() {
        println!("GPU placement on this GPU: {}", summary(&here));
        if let Some(compiled) = &m.gpu_placement {
            println!("GPU placement found by neoc ({}): {}", compiled.method, summary(compiled));
            let names = |p: &GpuPlacement| -> BTreeSet<String> { p.cpu_ops.iter().map(|o| o.node.clone()).collect() };
            let (here_cpu, compiled_cpu) = (names(&here), names(compiled));
            for n in here_cpu.difference(&compiled_cpu) {
                println!("  on the CPU here, not in neoc's placement: {n}");
            }
            for n in compiled_cpu.difference(&here_cpu) {
                println!("  on the CPU in neoc's placement, not here: {n}");
            }
        }
    }
    Ok(())
}
