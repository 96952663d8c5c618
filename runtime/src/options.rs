//! How a bundle is opened: who is trusted, which fallbacks the operator
//! allows, whose kernels run and on how many threads. The binary resolves
//! these from its flags and environment; nothing in this library reads
//! either.

use neoc_bundle::sign::TrustedKey;

/// Whose kernels run tract models.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Kernels {
    /// neorun's own where they apply (`kernels::install`), tract's elsewhere.
    #[default]
    Own,
    /// tract's everywhere: to compare, or to rule neorun's out.
    Tract,
}

/// Who to trust and what to allow when opening bundles.
#[derive(Clone, Debug, Default)]
pub struct OpenOptions {
    pub trusted_keys: Vec<TrustedKey>,
    pub allow_unsigned: bool,
    /// Run an accelerator bundle's CPU model when this neorun cannot drive
    /// its accelerator.
    pub allow_cpu_fallback: bool,
    /// Run the bundle's fallback engine (tract) when its primary engine
    /// (OpenVINO) cannot be loaded here.
    pub allow_engine_fallback: bool,
    pub kernels: Kernels,
    /// Threads inside one run of this model (tract's matrix products, the
    /// trees engine's row split, OpenVINO's streams). `None`: one for tract
    /// and trees (a server runs several requests at once instead), the
    /// target's default for OpenVINO.
    pub threads: Option<usize>,
}
