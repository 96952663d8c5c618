//! Where a model comes from: a tarball, a bare model file, `NAME[:VERSION]`
//! in the local registry, or `oci://HOST/REPO:TAG` in a remote one.
//!
//! Whatever the source, the result is a fresh working directory holding the
//! model file(s), the sha256 of what was fetched, and the tarball's
//! `model.json` and ONNX-style `test_data_set_*` if it had them. A tarball's
//! other files are listed, never unpacked: a checkpoint or a notebook beside
//! the model costs the time to decompress it, not disk or memory. The
//! external data files an ONNX model names are fetched once the model has
//! been read ([`Source::fetch_external`]).

use std::io::Read;
use std::path::{Component, Path, PathBuf};

use anyhow::{bail, Context, Result};
use neoc_bundle::unpack::{self, Limits, Listed};

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
    /// Every regular file the source holds, relative to `workdir`, with its
    /// size and first bytes; on disk only those a model needs (see
    /// `unpack_needed`), and its external data once fetched.
    pub listing: Vec<Listed>,
    /// Where more of the model's files can come from.
    origin: Origin,
}

#[derive(Debug)]
enum Origin {
    /// A tarball (the file given, or the fetched blob inside `workdir`),
    /// unpacked under this directory of `workdir`.
    Archive(PathBuf, PathBuf),
    /// A model file given alone: the directory it was in.
    Beside(PathBuf),
    None,
}

impl Source {
    pub fn root(&self) -> &Path {
        self.workdir.path()
    }

    /// Brings the external data files that the ONNX model at `model` (in
    /// `workdir`) names into `workdir` beside it: from the tarball, or from
    /// beside a model file given alone. Each location must be a plain
    /// relative path the source holds.
    pub fn fetch_external(&self, model: &Path, proto: &tract_onnx::pb::ModelProto) -> Result<()> {
        let mut locations = std::collections::BTreeMap::new();
        if let Some(g) = &proto.graph {
            external_locations(g, &mut locations);
        }
        if locations.is_empty() {
            return Ok(());
        }
        let dir = model.parent().unwrap_or(Path::new(""));
        let mut wanted = std::collections::HashSet::new();
        for (location, tensor) in &locations {
            let rel = Path::new(location);
            if location.is_empty() || !rel.components().all(|c| matches!(c, Component::Normal(_) | Component::CurDir)) {
                bail!(
                    "tensor `{tensor}`: its external data location {location:?} is not a relative path inside the model's directory"
                );
            }
            let on_disk = self.root().join(dir).join(rel);
            if on_disk.is_file() {
                continue;
            }
            match &self.origin {
                Origin::Archive(_, under) => {
                    let in_archive = dir.strip_prefix(under).unwrap_or(dir).join(rel);
                    let in_archive: PathBuf = in_archive.components().filter(|c| !matches!(c, Component::CurDir)).collect();
                    if !self.listing.iter().any(|l| l.path == under.join(&in_archive)) {
                        bail!(
                            "tensor `{tensor}` keeps its data in `{location}`, which the tarball does not hold\nhint: pack the model's external data files beside it (`onnx.save(..., save_as_external_data=True)` writes them next to the .onnx)"
                        );
                    }
                    wanted.insert(in_archive);
                }
                Origin::Beside(from) => {
                    let src = from.join(rel);
                    if !src.is_file() {
                        bail!(
                            "tensor `{tensor}` keeps its data in `{location}`, which is not beside the model ({} is missing)\nhint: keep the external data files next to the .onnx, or pack them all in a model tarball",
                            src.display()
                        );
                    }
                    if let Some(p) = on_disk.parent() {
                        std::fs::create_dir_all(p)?;
                    }
                    std::fs::copy(&src, &on_disk).with_context(|| format!("copying {}", src.display()))?;
                }
                Origin::None => bail!(
                    "tensor `{tensor}` keeps its data in `{location}`, but the model came as one file\nhint: push a tarball holding the model and its external data files"
                ),
            }
        }
        if let Origin::Archive(archive, under) = &self.origin {
            if !wanted.is_empty() {
                unpack::unpack_only(archive, &self.root().join(under), Limits::default(), &|p| wanted.contains(p))?;
            }
        }
        Ok(())
    }
}

/// `location` → a tensor that keeps its data there, for every tensor of the
/// graph and its sub-graphs stored outside the model file.
fn external_locations(g: &tract_onnx::pb::GraphProto, out: &mut std::collections::BTreeMap<String, String>) {
    let mut note = |t: &tract_onnx::pb::TensorProto| {
        if let Some(loc) = t.external_data.iter().find(|e| e.key == "location") {
            out.entry(loc.value.clone()).or_insert_with(|| t.name.clone());
        }
    };
    for t in &g.initializer {
        note(t);
    }
    for s in &g.sparse_initializer {
        s.values.iter().chain(s.indices.iter()).for_each(&mut note);
    }
    let mut graphs = Vec::new();
    for n in &g.node {
        for a in &n.attribute {
            a.t.iter().chain(a.tensors.iter()).for_each(&mut note);
            graphs.extend(a.g.iter().chain(a.graphs.iter()));
        }
    }
    for sub in graphs {
        external_locations(sub, out);
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
    let (listing, digest, origin) = if path.is_dir() {
        bail!("{given} is a directory; pass a model file or a model tarball")
    } else if is_archive(path)? {
        let digest = registry::digest_file(path)?.0;
        let listing = unpack_needed(path, dir.path(), Path::new(""))?;
        (listing, digest, Origin::Archive(path.to_path_buf(), PathBuf::new()))
    } else {
        let digest = registry::digest_file(path)?.0;
        let copy = dir.path().join(&file_name);
        std::fs::copy(path, &copy).with_context(|| format!("copying {given}"))?;
        let beside = path.parent().map(Path::to_path_buf).unwrap_or_default();
        (vec![listed(&copy, &file_name)?], digest, Origin::Beside(beside))
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
        listing,
        origin,
    })
}

/// A file on disk as a listing entry.
fn listed(path: &Path, rel: impl AsRef<Path>) -> Result<Listed> {
    let mut head = Vec::with_capacity(unpack::HEAD_BYTES);
    let f = std::fs::File::open(path).with_context(|| path.display().to_string())?;
    let size = f.metadata()?.len();
    f.take(unpack::HEAD_BYTES as u64).read_to_end(&mut head)?;
    Ok(Listed { path: rel.as_ref().to_path_buf(), size, head })
}

/// Lists the tarball and unpacks into `dest` what a model can need of it:
/// what `import::detect` takes for a model file, `model.json`, ONNX-style
/// test sets, every file in the directory of an NNEF `graph.nnef` and
/// below (its tensors), or the one file of a one-file tarball. Returns the
/// whole listing, paths under `under`.
fn unpack_needed(archive: &Path, dest: &Path, under: &Path) -> Result<Vec<Listed>> {
    let limits = Limits::default();
    let mut listing = unpack::list(archive, limits)?;
    let nnef_dirs: Vec<&Path> = listing
        .iter()
        .filter(|l| l.path.file_name().is_some_and(|n| n == "graph.nnef"))
        .map(|l| parent(&l.path))
        .collect();
    let one = listing.len() == 1;
    let wanted: std::collections::HashSet<PathBuf> = listing
        .iter()
        .filter(|l| one || crate::import::needed(&l.path, &l.head) || nnef_dirs.iter().any(|d| l.path.starts_with(d)))
        .map(|l| l.path.clone())
        .collect();
    unpack::unpack_only(archive, dest, limits, &|p| wanted.contains(p))?;
    for l in &mut listing {
        l.path = under.join(&l.path);
    }
    Ok(listing)
}

fn parent(p: &Path) -> &Path {
    p.parent().unwrap_or(Path::new(""))
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
    // the blob stays in `.fetched` while the source lives: the ONNX model's
    // external data files are unpacked from it once the model has been read
    let (mut listing, origin) = if is_archive(&blob)? {
        let listing = unpack_needed(&blob, &unpacked, Path::new("model"))?;
        if listing.iter().any(|l| l.path.to_string_lossy().to_ascii_lowercase().ends_with(".onnx")) {
            (listing, Origin::Archive(blob, PathBuf::from("model")))
        } else {
            std::fs::remove_dir_all(&fetched).ok();
            (listing, Origin::None)
        }
    } else {
        // one model file (a ModelPack weight, an `oras push model.onnx`)
        let to = unpacked.join(&file_name);
        std::fs::rename(&blob, &to)?;
        std::fs::remove_dir_all(&fetched).ok();
        let rel = Path::new("model").join(&file_name);
        (vec![listed(&to, &rel)?], Origin::None)
    };
    // the artifact's input configuration, when the tarball carries none
    if let Some(cfg) = m.annotations.get(ANN_INPUT_CONFIG) {
        if !listing.iter().any(|f| f.path.file_name().is_some_and(|n| n == "model.json")) {
            let doc = serde_json::json!({ "DataInputConfig": cfg });
            let path = unpacked.join("model.json");
            std::fs::write(&path, serde_json::to_vec(&doc)?)?;
            let rel = Path::new("model").join("model.json");
            listing.push(listed(&path, &rel)?);
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
        listing,
        origin,
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
