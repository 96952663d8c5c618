//! One file per subcommand, each with one `run`.

pub mod batch;
pub mod bench;
pub mod check;
pub mod client;
pub mod container;
pub mod predict;
pub mod serve;
pub mod store;

use std::path::Path;

use neoc_runtime::{Model, OpenOptions, Placement};

use crate::exit::Failure;

/// Opens a bundle and says on stderr when a fallback the operator allowed was taken.
pub fn open(bundle: &Path, options: &OpenOptions) -> Result<Model, Failure> {
    let m = Model::open(bundle, options)?;
    if m.running.contains("fallback for") {
        eprintln!("note: {}: running {} (--engine-fallback)", bundle.display(), m.running);
    }
    if m.placement == Placement::CpuFallback {
        eprintln!(
            "note: {} targets {} ({}); running its CPU model on this host (--cpu-fallback)",
            bundle.display(),
            m.manifest.target.name,
            m.manifest.target.accelerator
        );
    }
    Ok(m)
}
