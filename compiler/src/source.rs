//! Where a model comes from: a tarball, a bare model file, `NAME[:VERSION]`
//! in the local registry, or `oci://HOST/REPO:TAG` in a remote one.
//!
//! Whatever the source, the result is a fresh working directory holding the
//! model file(s), the sha256 of what was fetched, and the tarball's
//! `model.json` and ONNX-style `test_data_set_*` if it had them.

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use neoc_bundle::unpack::{self, Limits};

use crate::registry::{self, Access, Fetched, Reference, Store};

/// Annotations of a model artifact.
pub const ANN_MODEL_NAME: &str = "dev.neoc.model.name";
pub const ANN_MODEL_VERSION: &str = "dev.neoc.model.version";
pub const ANN_FRAMEWORK: &str = "dev.neoc.model.framework";
pub const ANN_INPUT_CONFIG: &str = "dev.neoc.model.input-config";

#[derive(Debug)]
pub struct Source {
    /// As given on the command line.
    pub given: String,
    /// What the manifest records as the source: a registry reference as
    /// given, a local file by its name only (the digest identifies it), so
    /// that the same model compiled from two folders gives the same bundle
    /// and no build path leaks into it.
    pub recorded: String,
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
pub fn resolve(given: &str, registry: Option<&Path>, access: &Access) -> Result<Source> {
    if given.starts_with("oci:") {
        let r = Reference::parse(given, || unreachable!("remote references need no local registry"))?;
        return from_store(given, &r, access);
    }
    let path = Path::new(given);
    if path.exists() {
        return from_path(given, path);
    }
    if looks_like_reference(given) {
        let r = Reference::parse(given, || local_registry(registry, given))?;
        return from_store(given, &r, access);
    }
    bail!("{given}: no such file, and not a NAME[:VERSION] registry reference\nhint: {}", registry::REFERENCE_FORMS)
}

/// The local registry: `--registry`, `NEOC_REGISTRY`, or `models/registry` in
/// the current directory or a parent.
pub fn local_registry(flag: Option<&Path>, given: &str) -> Result<PathBuf> {
    match flag {
        Some(r) => Ok(r.to_path_buf()),
        None => default_registry().with_context(|| {
            format!("`{given}` is not a file, and no local registry was found\nhint: pass --registry DIR or set NEOC_REGISTRY, or give a path to a model file or tarball")
        }),
    }
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
    crate::cleanup::tempdir("neoc-").context("creating a temporary directory")
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
        let digest = registry::digest_file(path)?.0;
        let u = unpack::unpack(path, dir.path(), Limits::default())?;
        (u.files, digest)
    } else {
        let digest = registry::digest_file(path)?.0;
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
    Ok(Source {
        given: given.into(),
        recorded: file_name,
        name: sanitize(&name),
        version: "0".into(),
        digest,
        workdir: dir,
        files,
    })
}

fn sanitize(s: &str) -> String {
    let v: String = s.chars().map(|c| if c.is_ascii_alphanumeric() || "._-".contains(c) { c } else { '-' }).collect();
    if v.is_empty() {
        "model".into()
    } else {
        v
    }
}

/// Fetches a model artifact from a registry (local or remote) and unpacks it.
fn from_store(given: &str, r: &Reference, access: &Access) -> Result<Source> {
    let store = Store::open(r, access)?;
    let (desc, bytes) = store.resolve(r)?;
    let m = match registry::parse_manifest(&bytes, &r.to_string())? {
        Fetched::Manifest(m) => m,
        Fetched::Index(i) => bail!(
            "{r} is an image index ({} manifests), not one model artifact\nhint: name one of them by digest: {}",
            i.manifests.len(),
            i.manifests.iter().map(|d| r.with_digest(&d.digest).to_string()).collect::<Vec<_>>().join(", ")
        ),
    };
    if m.kind() == registry::BUNDLE_ARTIFACT_TYPE {
        bail!("{r} is a compiled neoc bundle, not a model\nhint: fetch it with `neoc pull {r}` and run it with neorun");
    }
    let layer = registry::model_layer(&m, &r.to_string())?;
    let dir = workdir()?;
    let fetched = dir.path().join(".fetched");
    std::fs::create_dir(&fetched)?;
    let file_name = registry::layer_file_name(layer);
    let blob = fetched.join(&file_name);
    store.fetch_blob(layer, &blob)?;
    let unpacked = dir.path().join("model");
    std::fs::create_dir(&unpacked)?;
    let mut files: Vec<PathBuf> = if is_archive(&blob)? {
        let u = unpack::unpack(&blob, &unpacked, Limits::default())?;
        u.files.into_iter().map(|f| Path::new("model").join(f)).collect()
    } else {
        // one model file (a ModelPack weight, an `oras push model.onnx`)
        std::fs::rename(&blob, unpacked.join(&file_name))?;
        vec![Path::new("model").join(&file_name)]
    };
    std::fs::remove_dir_all(&fetched).ok();
    // the artifact's input configuration, when the tarball carries none
    if let Some(cfg) = m.annotations.get(ANN_INPUT_CONFIG) {
        if !files.iter().any(|f| f.file_name().is_some_and(|n| n == "model.json")) {
            let doc = serde_json::json!({ "DataInputConfig": cfg });
            std::fs::write(unpacked.join("model.json"), serde_json::to_vec(&doc)?)?;
            files.push(Path::new("model").join("model.json"));
        }
    }
    let name = m
        .annotations
        .get(ANN_MODEL_NAME)
        .cloned()
        .unwrap_or_else(|| r.repo.rsplit('/').next().unwrap_or(&r.repo).to_string());
    let version = m.annotations.get(ANN_MODEL_VERSION).cloned().or_else(|| r.tag.clone()).unwrap_or_else(|| {
        let hex = desc.digest.trim_start_matches("sha256:");
        format!("sha256-{}", &hex[..12])
    });
    Ok(Source {
        given: given.into(),
        recorded: given.into(),
        name: sanitize(&name),
        version: sanitize(&version),
        digest: layer.digest.clone(),
        workdir: dir,
        files,
    })
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
