//! neoc: imports, compiles, verifies, signs and packages models into bundles.
//!
//! The pipeline is [`pipeline::compile`]; [`source`] fetches models, [`import`]
//! reads them. This crate runs on the build host and is never linked into
//! the runtime.

pub mod backend;
pub mod cleanup;
pub mod forest;
pub mod gpu_placement;
pub mod import;
pub mod onnx_prep;
pub mod passes;
pub mod pipeline;
pub mod printer;
pub mod provenance;
pub mod publish;
pub mod recurrent;
/// The registry client, shared with neorun (`neoc-registry`).
pub use neoc_registry as registry;
pub mod source;
pub mod trees;
