//! Pushing models and bundles to a registry and pulling them back.
//!
//! A bundle artifact carries, as manifest annotations, what a device needs to
//! choose it without downloading it: model, version, target, triple,
//! accelerator, the sha256 of the signed `manifest.json` inside, the signer's
//! key id and the runtime version it needs. Several targets of one compile
//! are also pushed as an image index whose entries carry the same
//! annotations, so `neoc pull REF --target T` picks one.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use neoc_bundle::container::{self, Signer, Trust};
use serde::Serialize;

use crate::provenance::rfc3339;
use crate::registry::{self, Descriptor, Fetched, Index, Manifest, Reference, Store, ANN_CREATED, ANN_TITLE};
use crate::source::{ANN_FRAMEWORK, ANN_INPUT_CONFIG, ANN_MODEL_NAME, ANN_MODEL_VERSION};

pub const ANN_BUNDLE_MODEL: &str = "dev.neoc.bundle.model";
pub const ANN_BUNDLE_VERSION: &str = "dev.neoc.bundle.model-version";
pub use crate::registry::ANN_BUNDLE_TARGET;
pub const ANN_BUNDLE_TRIPLE: &str = "dev.neoc.bundle.triple";
pub const ANN_BUNDLE_ACCELERATOR: &str = "dev.neoc.bundle.accelerator";
pub const ANN_BUNDLE_MANIFEST: &str = "dev.neoc.bundle.manifest-digest";
pub const ANN_BUNDLE_SIGNER: &str = "dev.neoc.bundle.signer";
pub const ANN_BUNDLE_MIN_RUNTIME: &str = "dev.neoc.bundle.min-runtime";

/// What a push stored.
#[derive(Serialize, Clone, Debug)]
pub struct Pushed {
    /// `oci://HOST/REPO:TAG` (or the local `NAME:TAG`).
    pub reference: String,
    /// The same, pinned by digest.
    pub pinned: String,
    pub digest: String,
    pub size: u64,
    #[serde(rename = "artifactType")]
    pub artifact_type: String,
}

fn pushed(r: &Reference, tag: Option<&str>, d: &Descriptor, kind: &str) -> Pushed {
    Pushed {
        reference: tag.map(|t| r.with_tag(t).to_string()).unwrap_or_else(|| r.with_digest(&d.digest).to_string()),
        pinned: r.with_digest(&d.digest).to_string(),
        digest: d.digest.clone(),
        size: d.size,
        artifact_type: kind.into(),
    }
}

use crate::registry::file_descriptor;

fn title(path: &Path) -> String {
    path.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_else(|| "model".into())
}

/// The annotations of a bundle artifact.
pub fn bundle_annotations(b: &container::VerifiedBundle) -> BTreeMap<String, String> {
    let m = &b.manifest;
    let mut a = BTreeMap::new();
    a.insert(ANN_BUNDLE_MODEL.into(), m.model.name.clone());
    a.insert(ANN_BUNDLE_VERSION.into(), m.model.version.clone());
    a.insert(ANN_BUNDLE_TARGET.into(), m.target.name.clone());
    a.insert(ANN_BUNDLE_TRIPLE.into(), m.target.triple.clone());
    a.insert(ANN_BUNDLE_ACCELERATOR.into(), m.target.accelerator.clone());
    a.insert(ANN_BUNDLE_MANIFEST.into(), neoc_bundle::digest::sha256(&b.manifest_bytes));
    a.insert(ANN_BUNDLE_MIN_RUNTIME.into(), m.min_runtime_version.clone());
    let signer = match &b.signer {
        Signer::Key { key_id, .. } => key_id.clone(),
        Signer::Unsigned => "unsigned".into(),
    };
    a.insert(ANN_BUNDLE_SIGNER.into(), signer);
    a.insert(ANN_CREATED.into(), rfc3339(m.created));
    a
}

/// Pushes a bundle file as a bundle artifact under `tag`.
pub fn push_bundle(store: &Store, r: &Reference, tag: Option<&str>, path: &Path) -> Result<(Pushed, Descriptor)> {
    // digests and container are checked; the signature is the device's business
    let b = container::read(path, &Trust::Unchecked)?;
    let mut layer = file_descriptor(path, registry::BUNDLE_LAYER)?;
    layer.annotations.insert(ANN_TITLE.into(), title(path));
    store.push_blob_file(path, &layer)?;
    store.push_blob_bytes(registry::OCI_EMPTY, b"{}")?;
    let m = Manifest::artifact(registry::BUNDLE_ARTIFACT_TYPE, vec![layer], bundle_annotations(&b));
    let mut d = store.push_manifest(tag, registry::OCI_MANIFEST, &m.to_bytes())?;
    d.artifact_type = Some(registry::BUNDLE_ARTIFACT_TYPE.into());
    d.annotations = m.annotations.clone();
    Ok((pushed(r, tag, &d, registry::BUNDLE_ARTIFACT_TYPE), d))
}

/// Pushes an index of several targets' bundle manifests under `tag`.
pub fn push_bundle_index(store: &Store, r: &Reference, tag: &str, entries: &[Descriptor]) -> Result<Pushed> {
    let mut annotations = BTreeMap::new();
    if let Some(first) = entries.first() {
        for k in [ANN_BUNDLE_MODEL, ANN_BUNDLE_VERSION, ANN_CREATED] {
            if let Some(v) = first.annotations.get(k) {
                annotations.insert(k.to_string(), v.clone());
            }
        }
    }
    let idx = Index {
        schema_version: 2,
        media_type: Some(registry::OCI_INDEX.into()),
        artifact_type: Some(registry::BUNDLE_ARTIFACT_TYPE.into()),
        manifests: entries.to_vec(),
        annotations,
    };
    let d = store.push_manifest(Some(tag), registry::OCI_INDEX, &idx.to_bytes())?;
    Ok(pushed(r, Some(tag), &d, registry::BUNDLE_ARTIFACT_TYPE))
}

/// Attaches a signed provenance envelope to `subject` (a pushed manifest):
/// an artifact whose `subject` is the bundle, listed in the OCI 1.1
/// referrers tag (`sha256-HEX`) so registries without the referrers API
/// serve it too.
pub fn attach_provenance(
    store: &Store,
    r: &Reference,
    subject: &Descriptor,
    envelope: &[u8],
    created: u64,
) -> Result<Pushed> {
    let layer = store.push_blob_bytes(registry::DSSE_LAYER, envelope)?;
    store.push_blob_bytes(registry::OCI_EMPTY, b"{}")?;
    let mut ann = BTreeMap::new();
    ann.insert(ANN_CREATED.to_string(), rfc3339(created));
    let mut m = Manifest::artifact(registry::PROVENANCE_ARTIFACT_TYPE, vec![layer], ann.clone());
    let mut subj = subject.clone();
    subj.annotations.clear();
    subj.artifact_type = None;
    m.subject = Some(subj);
    let mut d = store.push_manifest(None, registry::OCI_MANIFEST, &m.to_bytes())?;
    d.artifact_type = Some(registry::PROVENANCE_ARTIFACT_TYPE.into());
    d.annotations = ann;
    // the referrers tag schema: an index of everything that refers to the subject
    let tag = subject.digest.replace(':', "-");
    let mut idx = match store.resolve(&r.with_tag(&tag)) {
        Ok((_, bytes)) => match registry::parse_manifest(&bytes, &tag) {
            Ok(Fetched::Index(i)) => i,
            _ => bail!("{} holds something other than a referrers index", r.with_tag(&tag)),
        },
        Err(_) => Index {
            schema_version: 2,
            media_type: Some(registry::OCI_INDEX.into()),
            artifact_type: None,
            manifests: vec![],
            annotations: BTreeMap::new(),
        },
    };
    idx.manifests.retain(|e| e.digest != d.digest);
    idx.manifests.push(d.clone());
    store.push_manifest(Some(&tag), registry::OCI_INDEX, &idx.to_bytes())?;
    Ok(pushed(r, None, &d, registry::PROVENANCE_ARTIFACT_TYPE))
}

/// Pushes a model file or tarball as a model artifact under `tag`.
pub fn push_model(store: &Store, r: &Reference, tag: &str, path: &Path, created: u64) -> Result<Pushed> {
    // read it the way compile will, so a broken model is refused before it is published
    let src = crate::source::resolve(&path.display().to_string(), None, &registry::Access::default())?;
    let located = crate::import::locate(&src, None)
        .with_context(|| format!("{} is not a model neoc can read, so it was not pushed", path.display()))?;
    let head = {
        let mut h = vec![0u8; 512];
        let mut f = std::fs::File::open(path)?;
        let n = std::io::Read::read(&mut f, &mut h)?;
        h.truncate(n);
        h
    };
    let name = title(path);
    let media = if name.ends_with(".nnef.tgz") || name.ends_with(".nnef.tar") {
        registry::MODEL_LAYER_RAW
    } else if neoc_bundle::unpack::is_gzip(&head) {
        registry::MODEL_LAYER_TAR_GZIP
    } else if neoc_bundle::unpack::is_tar(&head) {
        registry::MODEL_LAYER_TAR
    } else {
        registry::MODEL_LAYER_RAW
    };
    let mut layer = file_descriptor(path, media)?;
    layer.annotations.insert(ANN_TITLE.into(), name);
    let mut ann = BTreeMap::new();
    ann.insert(ANN_MODEL_NAME.to_string(), r.repo.rsplit('/').next().unwrap_or(&r.repo).to_string());
    ann.insert(ANN_MODEL_VERSION.to_string(), tag.to_string());
    ann.insert(ANN_FRAMEWORK.to_string(), located.framework.as_str().to_string());
    if !located.model_json.is_empty() {
        let cfg: BTreeMap<&String, Vec<serde_json::Value>> = located
            .model_json
            .iter()
            .map(|(k, c)| {
                (k, c.shape.iter().map(|d| d.map(serde_json::Value::from).unwrap_or_else(|| "N".into())).collect())
            })
            .collect();
        ann.insert(ANN_INPUT_CONFIG.to_string(), serde_json::to_string(&cfg)?);
    }
    ann.insert(ANN_CREATED.to_string(), rfc3339(created));
    store.push_blob_file(path, &layer)?;
    store.push_blob_bytes(registry::OCI_EMPTY, b"{}")?;
    let m = Manifest::artifact(registry::MODEL_ARTIFACT_TYPE, vec![layer], ann);
    let d = store.push_manifest(Some(tag), registry::OCI_MANIFEST, &m.to_bytes())?;
    Ok(pushed(r, Some(tag), &d, registry::MODEL_ARTIFACT_TYPE))
}

pub use crate::registry::{pull, PulledFile};
