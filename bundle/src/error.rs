use std::path::PathBuf;

/// Everything that can be wrong with a bundle, a key or a tarball.
///
/// Variants name whose fault it is: the file given (`NotABundle`,
/// `NotCanonical`, `DigestMismatch`, `Manifest`, `Unpack`), the trust set-up
/// (`Unsigned`, `UntrustedKey`, `BadSignature`, `Key`), or the environment (`Io`).
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    /// The I/O error is part of the message, not a `source` (an error
    /// printed with its chain would say it twice).
    #[error("{}: {error}", path.display())]
    Io { path: PathBuf, error: std::io::Error },
    #[error("not a valid neoc bundle: {0}")]
    NotABundle(String),
    #[error("bundle container was modified or corrupted: {0}")]
    NotCanonical(String),
    #[error("bundle file `{file}` does not match its digest in manifest.json (expected {expected}, found {actual}); the bundle was modified or corrupted")]
    DigestMismatch { file: String, expected: String, actual: String },
    #[error("invalid manifest.json: {0}")]
    Manifest(String),
    #[error(
        "bundle is not signed\nhint: sign it with `neoc compile --key KEY`; neorun runs an unsigned bundle only with --allow-unsigned"
    )]
    Unsigned,
    #[error("bundle is signed by key {found}, {}\nhint: trust the signer's public key (neorun --trusted-key KEY.pub, neoc verify --key KEY.pub)",
        if trusted.is_empty() { "and no key is trusted".to_string() } else { format!("which is not trusted (trusted: {})", trusted.join(", ")) })]
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
        BundleError::Io { path: path.into(), error: source }
    }
}
