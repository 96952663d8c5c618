use std::path::PathBuf;

/// Everything that can be wrong with a bundle, a key or a tarball.
///
/// Variants name whose fault it is: the file given (`NotABundle`,
/// `NotCanonical`, `DigestMismatch`, `Manifest`, `Unpack`), the trust set-up
/// (`Unsigned`, `UntrustedKey`, `BadSignature`, `Key`), or the environment (`Io`).
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("not a valid neoc bundle: {0}")]
    NotABundle(String),
    #[error("bundle container was modified or corrupted: {0}")]
    NotCanonical(String),
    #[error("bundle file `{file}` does not match its digest in manifest.json (expected {expected}, found {actual}); the bundle was modified or corrupted")]
    DigestMismatch { file: String, expected: String, actual: String },
    #[error("invalid manifest.json: {0}")]
    Manifest(String),
    #[error(
        "bundle is not signed\nhint: sign it with `neoc compile --key KEY`, or pass --allow-unsigned to run it anyway"
    )]
    Unsigned,
    #[error("bundle is signed by key {found}, which is not trusted (trusted: {})\nhint: pass the signer's public key with --trusted-key", trusted.join(", "))]
    UntrustedKey { found: String, trusted: Vec<String> },
    #[error(
        "bad signature on manifest.json: {0}; the bundle was modified after signing or its signature is corrupted"
    )]
    BadSignature(String),
    #[error("{}: {reason}", path.display())]
    Key { path: PathBuf, reason: String },
    #[error("unsafe or invalid tarball: {0}")]
    Unpack(String),
}

impl BundleError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> BundleError {
        BundleError::Io { path: path.into(), source }
    }
}
