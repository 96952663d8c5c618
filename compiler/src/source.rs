//! Where a model comes from: a tarball, a bare model file, or `NAME[:VERSION]`
//! in the local registry (an OCI image layout per repository).
//!
//! Whatever the source, the result is a fresh working directory holding the
//! model file(s), the sha256 of what was fetched, and the tarball's
//! `model.json` and ONNX-style `test_data_set_*` if it had them.

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use neoc_bundle::digest::Hasher;
use neoc_bundle::unpack::{self, Limits};
use serde::Deserialize;

/// Media type of a model artifact in a registry.
pub const MODEL_ARTIFACT_TYPE: &str = "application/vnd.neoc.model.v1";

#[derive(Debug)]
pub struct Source {
    /// As given on the command line.
    pub given: String,
    pub name: String,
    pub version: String,
    /// sha256 of the fetched tarball or file.
    pub digest: String,
    /// Holds everything unpacked; dropped (deleted) with the source.
    pub workdir: tempfile::TempDir,
    /// Regular files unpacked, relative to `workdir`.
    pub files: Vec<PathBuf>,
}

impl Source {
    pub fn root(&self) -> &Path {
        self.workdir.path()
    }
}

/// Resolves MODEL into a working directory.
pub fn resolve(given: &str, registry: Option<&Path>) -> Result<Source> {
    if let Some(rest) = given.strip_prefix("oci://") {
        bail!(
            "remote registries (oci://{rest}) are not supported by this build yet\nhint: fetch the tarball with `oras pull` or `skopeo copy`, then pass its path"
        );
    }
    let path = Path::new(given);
    if path.exists() {
        return from_path(given, path);
    }
    if looks_like_reference(given) {
        let root = match registry {
            Some(r) => r.to_path_buf(),
            None => default_registry().with_context(|| {
                format!("`{given}` is not a file, and no local registry was found\nhint: pass --registry DIR or set NEOC_REGISTRY, or give a path to a model file or tarball")
            })?,
        };
        return from_registry(given, &root);
    }
    bail!("{given}: no such file, and not a NAME[:VERSION] registry reference")
}

fn looks_like_reference(s: &str) -> bool {
    let (name, tag) = s.split_once(':').unwrap_or((s, "x"));
    let ok = |p: &str, extra: &[u8]| {
        !p.is_empty() && p.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b) || extra.contains(&b))
    };
    ok(name, b"/") && ok(tag, b"") && !name.contains("..")
}

/// `NEOC_REGISTRY`, else `models/registry` in the current directory or a parent.
fn default_registry() -> Option<PathBuf> {
    if let Some(r) = std::env::var_os("NEOC_REGISTRY") {
        return Some(PathBuf::from(r));
    }
    let mut dir = std::env::current_dir().ok()?;
    loop {
        let cand = dir.join("models").join("registry");
        if cand.is_dir() {
            return Some(cand);
        }
        if !dir.pop() {
            return None;
        }
    }
}

fn workdir() -> Result<tempfile::TempDir> {
    tempfile::Builder::new().prefix("neoc-").tempdir().context("creating a temporary directory")
}

fn digest_file(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path).with_context(|| format!("{}", path.display()))?;
    let mut h = Hasher::default();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf).with_context(|| format!("reading {}", path.display()))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finish())
}

fn is_archive(path: &Path) -> Result<bool> {
    let mut head = vec![0u8; 512];
    let mut f = std::fs::File::open(path).with_context(|| format!("{}", path.display()))?;
    let mut n = 0;
    while n < head.len() {
        let k = f.read(&mut head[n..])?;
        if k == 0 {
            break;
        }
        n += k;
    }
    let name = path.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
    // NNEF models ship as tarballs too; those are model files, not model tarballs
    if name.ends_with(".nnef.tgz") || name.ends_with(".nnef.tar") || name.ends_with(".nnef.tar.gz") {
        return Ok(false);
    }
    Ok(unpack::is_gzip(&head[..n]) || unpack::is_tar(&head[..n]))
}

fn from_path(given: &str, path: &Path) -> Result<Source> {
    let dir = workdir()?;
    let file_name = path.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_else(|| "model".into());
    let (files, digest) = if path.is_dir() {
        bail!("{given} is a directory; pass a model file or a model tarball")
    } else if is_archive(path)? {
        let digest = digest_file(path)?;
        let u = unpack::unpack(path, dir.path(), Limits::default())?;
        (u.files, digest)
    } else {
        let digest = digest_file(path)?;
        std::fs::copy(path, dir.path().join(&file_name)).with_context(|| format!("copying {given}"))?;
        (vec![PathBuf::from(&file_name)], digest)
    };
    let stem = file_name
        .trim_end_matches(".tar.gz")
        .trim_end_matches(".tgz")
        .trim_end_matches(".tar")
        .split('.')
        .next()
        .unwrap_or("model")
        .to_string();
    let name = if stem == "model" || stem.is_empty() {
        path.parent()
            .and_then(|p| p.file_name())
            .map(|n| n.to_string_lossy().to_string())
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| "model".into())
    } else {
        stem
    };
    Ok(Source { given: given.into(), name: sanitize(&name), version: "0".into(), digest, workdir: dir, files })
}

fn sanitize(s: &str) -> String {
    let v: String = s.chars().map(|c| if c.is_ascii_alphanumeric() || "._-".contains(c) { c } else { '-' }).collect();
    if v.is_empty() {
        "model".into()
    } else {
        v
    }
}

#[derive(Deserialize)]
struct Index {
    manifests: Vec<Descriptor>,
}

#[derive(Deserialize, Clone)]
struct Descriptor {
    #[serde(rename = "mediaType", default)]
    media_type: String,
    digest: String,
    size: u64,
    #[serde(default)]
    annotations: std::collections::BTreeMap<String, String>,
}

#[derive(Deserialize)]
struct ImageManifest {
    layers: Vec<Descriptor>,
}

const REF_NAME: &str = "org.opencontainers.image.ref.name";

fn from_registry(given: &str, root: &Path) -> Result<Source> {
    let (name, tag) = match given.split_once(':') {
        Some((n, t)) => (n, Some(t)),
        None => (given, None),
    };
    let repo = root.join(name);
    let index_path = repo.join("index.json");
    if !repo.join("oci-layout").is_file() || !index_path.is_file() {
        let known = list_repos(root);
        bail!(
            "model `{name}` is not in the local registry {}{}",
            root.display(),
            if known.is_empty() { String::new() } else { format!("\nhint: it has: {}", known.join(", ")) }
        );
    }
    let index: Index =
        serde_json::from_slice(&std::fs::read(&index_path).with_context(|| index_path.display().to_string())?)
            .with_context(|| format!("{}: not an OCI image index", index_path.display()))?;
    let tags: Vec<&str> =
        index.manifests.iter().filter_map(|d| d.annotations.get(REF_NAME).map(String::as_str)).collect();
    let tag = match tag {
        Some(t) => t.to_string(),
        None if tags.contains(&"latest") => "latest".into(),
        None if tags.len() == 1 => tags[0].to_string(),
        None => bail!("`{name}` has several versions ({}); say which: {name}:VERSION", tags.join(", ")),
    };
    let desc = index
        .manifests
        .iter()
        .find(|d| d.annotations.get(REF_NAME) == Some(&tag))
        .with_context(|| {
            format!("`{name}` has no version `{tag}` in {}\nhint: versions: {}", root.display(), tags.join(", "))
        })?
        .clone();
    let manifest_bytes = read_blob(&repo, &desc)?;
    let manifest: ImageManifest = serde_json::from_slice(&manifest_bytes)
        .with_context(|| format!("{name}:{tag}: manifest {} is not an OCI image manifest", desc.digest))?;
    let layer =
        pick_layer(&manifest.layers).with_context(|| format!("{name}:{tag}: artifact has no model tarball layer"))?;
    let dir = workdir()?;
    let tarball = dir.path().join(".fetched-model.tar.gz");
    copy_blob(&repo, layer, &tarball)?;
    let unpacked = dir.path().join("model");
    std::fs::create_dir(&unpacked)?;
    let u = unpack::unpack(&tarball, &unpacked, Limits::default())?;
    std::fs::remove_file(&tarball).ok();
    let files = u.files.into_iter().map(|f| Path::new("model").join(f)).collect();
    Ok(Source {
        given: given.into(),
        name: name.rsplit('/').next().unwrap_or(name).to_string(),
        version: tag,
        digest: layer.digest.clone(),
        workdir: dir,
        files,
    })
}

fn list_repos(root: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(root)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter(|e| e.path().join("index.json").is_file())
                .map(|e| e.file_name().to_string_lossy().to_string())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn pick_layer(layers: &[Descriptor]) -> Option<&Descriptor> {
    if layers.len() == 1 {
        return layers.first();
    }
    layers.iter().find(|l| {
        l.media_type.ends_with("tar+gzip")
            || l.media_type.ends_with(".tar")
            || l.annotations.get("org.opencontainers.image.title").is_some_and(|t| t.ends_with(".tar.gz"))
    })
}

fn blob_path(repo: &Path, digest: &str) -> Result<PathBuf> {
    let hex = digest
        .strip_prefix("sha256:")
        .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
        .with_context(|| format!("unsupported or malformed digest `{digest}`"))?;
    Ok(repo.join("blobs").join("sha256").join(hex))
}

fn read_blob(repo: &Path, d: &Descriptor) -> Result<Vec<u8>> {
    if d.size > 4 << 20 {
        bail!("manifest {} is implausibly large ({} bytes)", d.digest, d.size);
    }
    let p = blob_path(repo, &d.digest)?;
    let data = std::fs::read(&p).with_context(|| format!("blob {} is missing from {}", d.digest, repo.display()))?;
    let actual = neoc_bundle::digest::sha256(&data);
    if actual != d.digest || data.len() as u64 != d.size {
        bail!(
            "blob {} in {} does not match its digest (found {actual}, {} bytes): the registry is corrupted",
            d.digest,
            repo.display(),
            data.len()
        );
    }
    Ok(data)
}

/// Copies a blob while hashing it; a mismatch deletes the copy.
fn copy_blob(repo: &Path, d: &Descriptor, to: &Path) -> Result<()> {
    let p = blob_path(repo, &d.digest)?;
    let mut src =
        std::fs::File::open(&p).with_context(|| format!("blob {} is missing from {}", d.digest, repo.display()))?;
    let mut dst = std::fs::File::create(to)?;
    let mut h = Hasher::default();
    let mut buf = vec![0u8; 1 << 16];
    let mut n_total = 0u64;
    loop {
        let n = src.read(&mut buf)?;
        if n == 0 {
            break;
        }
        n_total += n as u64;
        h.update(&buf[..n]);
        std::io::Write::write_all(&mut dst, &buf[..n])?;
    }
    let actual = h.finish();
    if actual != d.digest || n_total != d.size {
        std::fs::remove_file(to).ok();
        bail!(
            "blob {} in {} does not match its digest (found {actual}, {n_total} bytes): the registry is corrupted",
            d.digest,
            repo.display()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_are_told_from_paths() {
        assert!(looks_like_reference("fraud-mlp:1"));
        assert!(looks_like_reference("fraud-mlp"));
        assert!(looks_like_reference("team/fraud-mlp:1-onnx"));
        assert!(!looks_like_reference("../x:1"));
        assert!(!looks_like_reference("a b"));
        assert!(!looks_like_reference("x:"));
    }
}
