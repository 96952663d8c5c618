//! Writing and reading the bundle container (a canonical ustar file).
//!
//! Canonical means: entries `manifest.json`, `manifest.json.minisig` (when
//! signed), then the manifest's files in its order; every header a plain
//! ustar regular-file header with mode 0644, uid/gid 0, empty user/group names
//! and mtime = `manifest.created`; zero padding; a trailer of two zero blocks
//! and nothing after it. The reader checks the container against this form
//! byte by byte, so the only bytes that can vary are covered by the signature.

use std::fs::File;
use std::io::{BufReader, Read, Write};
use std::path::{Path, PathBuf};

use crate::digest::{sha256, Hasher};
use crate::manifest::{check_entry_name, Manifest, MANIFEST_NAME, MAX_MANIFEST_BYTES, SIGNATURE_NAME};
use crate::sign::{self, SigningKey, TrustedKey};
use crate::BundleError;

const BLOCK: usize = 512;
const MAX_SIGNATURE_BYTES: u64 = 4096;

/// How the reader treats signatures.
#[derive(Clone, Debug)]
pub enum Trust {
    /// Require a signature by one of these keys.
    Keys(Vec<TrustedKey>),
    /// Require a signature by one of these keys if there is one; accept an
    /// unsigned bundle (`--allow-unsigned`). A signed bundle is still checked.
    KeysOrUnsigned(Vec<TrustedKey>),
    /// Do not check the signature at all (for `neoc inspect` without a key);
    /// digests and the container are still checked. Never for running a bundle.
    Unchecked,
}

/// How a bundle's signature was checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Signer {
    Key { key_id: String, trusted_comment: String },
    Unsigned,
}

/// A bundle whose signature, digests and container were verified.
#[derive(Debug)]
pub struct VerifiedBundle {
    pub manifest: Manifest,
    pub manifest_bytes: Vec<u8>,
    pub signer: Signer,
    /// The manifest's files, in order, with their verified contents.
    pub files: Vec<(String, Vec<u8>)>,
    /// sha256 of the whole bundle file.
    pub digest: String,
}

impl VerifiedBundle {
    pub fn file(&self, path: &str) -> Option<&[u8]> {
        self.files.iter().find(|(p, _)| p == path).map(|(_, d)| d.as_slice())
    }
}

fn header(path: &str, size: u64, mtime: u64) -> Result<tar::Header, BundleError> {
    let mut h = tar::Header::new_ustar();
    h.set_path(path).map_err(|e| BundleError::NotABundle(format!("entry name {path:?}: {e}")))?;
    h.set_size(size);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(mtime);
    h.set_entry_type(tar::EntryType::Regular);
    h.set_username("").expect("empty name fits");
    h.set_groupname("").expect("empty name fits");
    h.set_cksum();
    Ok(h)
}

fn padding(size: u64) -> usize {
    (BLOCK - (size as usize % BLOCK)) % BLOCK
}

/// Builds the manifest's `files` entries for these contents.
pub fn file_entries(files: &[(String, Vec<u8>)]) -> Vec<crate::manifest::FileEntry> {
    files
        .iter()
        .map(|(p, d)| crate::manifest::FileEntry { path: p.clone(), size: d.len() as u64, sha256: sha256(d) })
        .collect()
}

/// Encodes a bundle in canonical form. `manifest.files` must describe `files`.
pub fn encode(
    manifest: &Manifest,
    files: &[(String, Vec<u8>)],
    key: Option<&SigningKey>,
    trusted_comment: &str,
) -> Result<Vec<u8>, BundleError> {
    if file_entries(files) != manifest.files {
        return Err(BundleError::Manifest("manifest file list does not describe the bundle's files".into()));
    }
    let manifest_bytes = manifest.to_bytes();
    let mut entries: Vec<(&str, Vec<u8>)> = vec![(MANIFEST_NAME, manifest_bytes.clone())];
    if let Some(key) = key {
        entries.push((SIGNATURE_NAME, key.sign(&manifest_bytes, trusted_comment).into_bytes()));
    }
    let mut out = Vec::new();
    for (name, data) in
        entries.iter().map(|(n, d)| (*n, d.as_slice())).chain(files.iter().map(|(n, d)| (n.as_str(), d.as_slice())))
    {
        check_entry_name(name).map_err(BundleError::Manifest)?;
        out.extend_from_slice(header(name, data.len() as u64, manifest.created)?.as_bytes());
        out.extend_from_slice(data);
        out.resize(out.len() + padding(data.len() as u64), 0);
    }
    out.resize(out.len() + 2 * BLOCK, 0);
    Ok(out)
}

/// Writes `bytes` to `path` atomically: a temporary file in the same
/// directory, renamed into place, so no partial bundle is ever left under the
/// final name.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), BundleError> {
    let tmp = temporary_for(path)?;
    let result = (|| {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(BundleError::io(path, e));
    }
    Ok(())
}

/// The temporary file [`write_atomic`] writes `path` through (in the same
/// directory, named after this process), for a caller that must remove it
/// if the process is stopped mid-write.
pub fn temporary_for(path: &Path) -> Result<PathBuf, BundleError> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path.file_name().ok_or_else(|| BundleError::io(path, std::io::Error::other("not a file path")))?;
    Ok(dir.join(format!(".{}.tmp-{}", name.to_string_lossy(), std::process::id())))
}

/// Reads a tar header block and the entry's name and size, and checks the
/// header is exactly the canonical one.
fn read_header(r: &mut impl Read, mtime: Option<u64>) -> Result<Option<(String, u64, u64)>, BundleError> {
    let mut block = [0u8; BLOCK];
    read_exact(r, &mut block, "an entry header")?;
    if block.iter().all(|b| *b == 0) {
        return Ok(None);
    }
    let h = tar::Header::from_byte_slice(&block);
    let name = h
        .path()
        .map_err(|e| BundleError::NotABundle(format!("unreadable entry name: {e}")))?
        .to_str()
        .ok_or_else(|| BundleError::NotABundle("entry name is not UTF-8".into()))?
        .to_string();
    let size = h.size().map_err(|e| BundleError::NotABundle(format!("entry `{name}`: bad size: {e}")))?;
    let found_mtime = h.mtime().map_err(|e| BundleError::NotABundle(format!("entry `{name}`: bad mtime: {e}")))?;
    check_entry_name(&name).map_err(BundleError::NotABundle)?;
    let canonical = header(&name, size, mtime.unwrap_or(found_mtime))?;
    if canonical.as_bytes()[..] != block[..] {
        return Err(BundleError::NotCanonical(format!("header of entry `{name}` is not in canonical form")));
    }
    Ok(Some((name, size, found_mtime)))
}

fn read_exact(r: &mut impl Read, buf: &mut [u8], what: &str) -> Result<(), BundleError> {
    r.read_exact(buf).map_err(|e| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => BundleError::NotABundle(format!("file is truncated (ends inside {what})")),
        _ => BundleError::NotABundle(format!("reading {what}: {e}")),
    })
}

/// Reads an entry's data (already bounded by the caller) and checks its padding.
fn read_data(r: &mut impl Read, name: &str, size: u64, hasher: &mut Hasher) -> Result<Vec<u8>, BundleError> {
    let mut data = vec![0u8; size as usize];
    read_exact(r, &mut data, &format!("entry `{name}`"))?;
    hasher.update(&data);
    let mut pad = vec![0u8; padding(size)];
    read_exact(r, &mut pad, &format!("padding of `{name}`"))?;
    if pad.iter().any(|b| *b != 0) {
        return Err(BundleError::NotCanonical(format!("padding after `{name}` is not zero")));
    }
    Ok(data)
}

/// Opens a bundle file and verifies it: the signature (per `trust`), then every
/// file's digest, then the canonical form. Nothing but the manifest and its
/// signature is parsed before the signature check, and no file listed in the
/// manifest is returned unless its digest matches.
pub fn read(path: &Path, trust: &Trust) -> Result<VerifiedBundle, BundleError> {
    let f = File::open(path).map_err(|e| BundleError::io(path, e))?;
    let len = f.metadata().map_err(|e| BundleError::io(path, e))?.len();
    read_from(BufReader::new(f), len, trust).map_err(|e| match e {
        BundleError::NotABundle(m) => BundleError::NotABundle(format!("{}: {m}", path.display())),
        other => other,
    })
}

/// [`read`] over any reader; `len` is the total size of the bundle.
pub fn read_from(r: impl Read, len: u64, trust: &Trust) -> Result<VerifiedBundle, BundleError> {
    let mut all = Hasher::default();
    let mut r = TeeHash { inner: r, hasher: &mut all };
    let mut ignored = Hasher::default();

    // 1. the manifest, bounded, not interpreted yet beyond JSON parsing after the signature
    let (name, size, manifest_mtime) =
        read_header(&mut r, None)?.ok_or_else(|| BundleError::NotABundle("empty archive".into()))?;
    if name != MANIFEST_NAME {
        return Err(BundleError::NotABundle(format!("first entry is `{name}`, expected `{MANIFEST_NAME}`")));
    }
    if size > MAX_MANIFEST_BYTES {
        return Err(BundleError::NotABundle(format!("manifest.json is implausibly large ({size} bytes)")));
    }
    if size > len {
        return Err(BundleError::NotABundle(format!(
            "the file ends inside manifest.json ({size} bytes declared, {len} in the file): the bundle is truncated"
        )));
    }
    let manifest_bytes = read_data(&mut r, MANIFEST_NAME, size, &mut ignored)?;

    // 2. the signature, if present
    let next = read_header(&mut r, None)?;
    let mut header_mtimes = vec![manifest_mtime];
    let (signer, mut next) = match next {
        Some((name, size, sig_mtime)) if name == SIGNATURE_NAME => {
            header_mtimes.push(sig_mtime);
            if size > MAX_SIGNATURE_BYTES {
                return Err(BundleError::NotABundle(format!("{SIGNATURE_NAME} is implausibly large ({size} bytes)")));
            }
            let sig = read_data(&mut r, SIGNATURE_NAME, size, &mut ignored)?;
            let (key_id, trusted_comment) = match trust {
                Trust::Keys(k) | Trust::KeysOrUnsigned(k) => sign::verify(&manifest_bytes, &sig, k)?,
                Trust::Unchecked => sign::inspect(&sig)?,
            };
            (Signer::Key { key_id, trusted_comment }, read_header(&mut r, None)?)
        }
        other => match trust {
            Trust::Keys(_) => return Err(BundleError::Unsigned),
            Trust::KeysOrUnsigned(_) | Trust::Unchecked => (Signer::Unsigned, other),
        },
    };

    // 3. the manifest itself (now authenticated, or explicitly allowed unsigned)
    let manifest = Manifest::from_bytes(&manifest_bytes)?;
    if header_mtimes.iter().any(|t| *t != manifest.created) {
        return Err(BundleError::NotCanonical("entry times differ from manifest.json's `created`".into()));
    }

    // 4. the files, in manifest order, each bounded by its signed size
    let mut files = Vec::with_capacity(manifest.files.len());
    let mut consumed = 0u64;
    for entry in &manifest.files {
        let (name, size, mtime) = next.ok_or_else(|| {
            BundleError::NotABundle(format!("file `{}` listed in manifest.json is missing", entry.path))
        })?;
        if mtime != manifest.created {
            return Err(BundleError::NotCanonical(format!(
                "time of entry `{name}` differs from manifest.json's `created`"
            )));
        }
        if name != entry.path {
            return Err(BundleError::NotCanonical(format!(
                "found entry `{name}` where manifest.json lists `{}`",
                entry.path
            )));
        }
        if size != entry.size {
            return Err(BundleError::DigestMismatch {
                file: name,
                expected: format!("{} bytes", entry.size),
                actual: format!("{size} bytes"),
            });
        }
        consumed += size;
        if consumed > len {
            return Err(BundleError::NotABundle("file is truncated".into()));
        }
        let mut h = Hasher::default();
        let data = read_data(&mut r, &name, size, &mut h)?;
        let actual = h.finish();
        if actual != entry.sha256 {
            return Err(BundleError::DigestMismatch { file: name, expected: entry.sha256.clone(), actual });
        }
        files.push((name, data));
        next = read_header(&mut r, None)?;
    }
    if let Some((name, _, _)) = next {
        return Err(BundleError::NotCanonical(format!("entry `{name}` is not listed in manifest.json")));
    }
    // 5. the trailer: one more zero block (the first was read as "no header"), then EOF
    let mut block = [0u8; BLOCK];
    read_exact(&mut r, &mut block, "the end-of-archive marker")?;
    if block.iter().any(|b| *b != 0) {
        return Err(BundleError::NotCanonical("end-of-archive marker is not zero".into()));
    }
    let mut rest = [0u8; 1];
    match r.read(&mut rest) {
        Ok(0) => {}
        Ok(_) => return Err(BundleError::NotCanonical("data after the end-of-archive marker".into())),
        Err(e) => return Err(BundleError::NotABundle(format!("reading past the end: {e}"))),
    }
    let canonical = sha256_of_encoding(&manifest, &manifest_bytes, &files, &signer)?;
    drop(r);
    let digest = all.finish();
    if canonical.is_some_and(|c| c != digest) {
        return Err(BundleError::NotCanonical("container differs from its canonical encoding".into()));
    }
    Ok(VerifiedBundle { manifest, manifest_bytes, signer, files, digest })
}

/// The digest the canonical encoding of a verified unsigned bundle would have;
/// `None` for signed ones, whose headers were each checked as they were read
/// (the signature block itself is only reproducible with the secret key).
fn sha256_of_encoding(
    manifest: &Manifest,
    manifest_bytes: &[u8],
    files: &[(String, Vec<u8>)],
    signer: &Signer,
) -> Result<Option<String>, BundleError> {
    if manifest.to_bytes() != manifest_bytes {
        return Err(BundleError::NotCanonical("manifest.json is not in canonical form".into()));
    }
    match signer {
        Signer::Unsigned => Ok(Some(sha256(&encode(manifest, files, None, "")?))),
        Signer::Key { .. } => Ok(None),
    }
}

struct TeeHash<'a, R> {
    inner: R,
    hasher: &'a mut Hasher,
}

impl<R: Read> Read for TeeHash<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::*;

    fn sample() -> (Manifest, Vec<(String, Vec<u8>)>) {
        let files = vec![
            ("model.nnef.tar".to_string(), (0..1500u32).map(|i| (i * 7) as u8).collect()),
            ("test_vectors.json".to_string(), b"{\"cases\":[]}\n".to_vec()),
        ];
        let spec = TensorSpec {
            name: "x".into(),
            dtype: "f32".into(),
            shape: vec![Dim::Symbol("N".into()), Dim::Fixed(3)],
            non_finite: false,
        };
        let m = Manifest {
            format: FORMAT.into(),
            format_version: FORMAT_VERSION,
            model: ModelInfo {
                name: "m".into(),
                version: "1".into(),
                framework: "onnx".into(),
                source: "m.onnx".into(),
                source_digest: sha256(b"m"),
                source_file: "m.onnx".into(),
                metadata: Default::default(),
                pinned_inputs: Default::default(),
            },
            target: TargetInfo {
                name: "x86_64".into(),
                triple: "x86_64-unknown-linux-gnu".into(),
                arch: "x86_64".into(),
                features: vec![],
                accelerator: "none".into(),
                accelerator_arch: None,
                cpu_fallback: false,
                precision: "fp32".into(),
                threads: None,
            },
            engine: EngineInfo {
                name: "tract".into(),
                version: "0.23.9".into(),
                model_file: "model.nnef.tar".into(),
                model_format: "tract-nnef-tar".into(),
                registries: vec![],
                options: Default::default(),
            },
            compiler: ToolInfo { name: "neoc".into(), version: "0.1.0".into() },
            min_runtime_version: "0.1.0".into(),
            created: 1_700_000_000,
            inputs: vec![spec.clone()],
            outputs: vec![spec],
            verification: Verification {
                status: "passed".into(),
                reference: "r".into(),
                host: "x86_64".into(),
                inputs: "seeded".into(),
                cases: 1,
                max_abs_error: 0.0,
                max_rel_error: 0.0,
                atol: 1e-4,
                rtol: 1e-4,
                independent: None,
                independent_engine: None,
                precision: "fp32".into(),
                note: None,
            },
            test_vectors: Some("test_vectors.json".into()),
            files: file_entries(&files),
            accelerator_model: None,
            fallback_engine: None,
            engine_selection: None,
            gpu_placement: None,
        };
        (m, files)
    }

    fn keys() -> (SigningKey, TrustedKey) {
        let (sk, _) = sign::generate_keypair().unwrap();
        let sk = SigningKey::from_text(sk.as_bytes()).unwrap();
        let pk = TrustedKey::from_text(sk.public_key_file().as_bytes()).unwrap();
        (sk, pk)
    }

    fn open(bytes: &[u8], trust: &Trust) -> Result<VerifiedBundle, BundleError> {
        read_from(bytes, bytes.len() as u64, trust)
    }

    #[test]
    fn round_trip_signed_and_deterministic() {
        let (m, files) = sample();
        let (sk, pk) = keys();
        let a = encode(&m, &files, Some(&sk), "neoc test").unwrap();
        assert_eq!(a, encode(&m, &files, Some(&sk), "neoc test").unwrap());
        let b = open(&a, &Trust::Keys(vec![pk])).unwrap();
        assert_eq!(b.manifest, m);
        assert_eq!(b.files, files);
        assert!(matches!(b.signer, Signer::Key { .. }));
        // a standard tar reader sees the same entries
        let mut ar = tar::Archive::new(&a[..]);
        let names: Vec<String> =
            ar.entries().unwrap().map(|e| e.unwrap().path().unwrap().display().to_string()).collect();
        assert_eq!(names, ["manifest.json", "manifest.json.minisig", "model.nnef.tar", "test_vectors.json"]);
    }

    #[test]
    fn every_flipped_byte_is_refused() {
        let (m, files) = sample();
        let (sk, pk) = keys();
        let good = encode(&m, &files, Some(&sk), "neoc test").unwrap();
        let trust = Trust::Keys(vec![pk]);
        for i in 0..good.len() {
            let mut bad = good.clone();
            bad[i] ^= 0x01;
            assert!(open(&bad, &trust).is_err(), "flipping byte {i} went unnoticed");
        }
    }

    #[test]
    fn truncated_or_extended_bundles_are_refused() {
        let (m, files) = sample();
        let (sk, pk) = keys();
        let good = encode(&m, &files, Some(&sk), "c").unwrap();
        let trust = Trust::Keys(vec![pk]);
        for len in (0..good.len()).step_by(97) {
            let err = open(&good[..len], &trust).unwrap_err().to_string();
            assert!(!err.is_empty());
        }
        let mut longer = good.clone();
        longer.extend_from_slice(&[0u8; 512]);
        assert!(matches!(open(&longer, &trust), Err(BundleError::NotCanonical(_))));
    }

    #[test]
    fn unsigned_needs_explicit_permission() {
        let (m, files) = sample();
        let (_, pk) = keys();
        let bytes = encode(&m, &files, None, "").unwrap();
        assert!(matches!(open(&bytes, &Trust::Keys(vec![pk.clone()])), Err(BundleError::Unsigned)));
        let b = open(&bytes, &Trust::KeysOrUnsigned(vec![pk.clone()])).unwrap();
        assert_eq!(b.signer, Signer::Unsigned);
        // flips in the container of an unsigned bundle are still caught where they break the canonical form
        let mut bad = bytes.clone();
        let last = bad.len() - 1;
        bad[last] = 1;
        assert!(open(&bad, &Trust::KeysOrUnsigned(vec![pk])).is_err());
    }

    #[test]
    fn signed_by_another_key_is_refused() {
        let (m, files) = sample();
        let (sk, _) = keys();
        let (_, other) = keys();
        let bytes = encode(&m, &files, Some(&sk), "c").unwrap();
        assert!(matches!(open(&bytes, &Trust::Keys(vec![other])), Err(BundleError::UntrustedKey { .. })));
    }
}
