//! Registries: the local one (a directory of OCI image layouts, one per
//! repository) and any remote registry speaking the OCI distribution API are
//! one abstraction, [`Store`]. Both serve and accept the same artifacts:
//!
//! | artifact | `artifactType` | layer media type |
//! |---|---|---|
//! | model | `application/vnd.neoc.model.v1` | `application/vnd.neoc.model.layer.v1.tar+gzip` (a model tarball) or `application/vnd.neoc.model.layer.v1.raw` (one model file) |
//! | bundle | `application/vnd.neoc.bundle.v1` | `application/vnd.neoc.bundle.layer.v1.tar` |
//! | multi-target bundle set | `application/vnd.neoc.bundle.v1` (an image index) | — |
//! | provenance | `application/vnd.in-toto+json` | `application/vnd.dsse.envelope.v1+json` |
//!
//! Every blob is checked against its digest while it streams to disk, and
//! lands under its final name only once it matched.
//!
//! (Over 600 lines by its tests: about 50 lines of reference-parsing and
//! store tests at the bottom.)

pub mod layout;
mod pull;
pub mod remote;

pub use pull::{file_descriptor, pull, PulledFile, ANN_BUNDLE_TARGET};

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use neoc_bundle::digest::Hasher;
use serde::{Deserialize, Serialize};

pub const MODEL_ARTIFACT_TYPE: &str = "application/vnd.neoc.model.v1";
pub const MODEL_LAYER_TAR_GZIP: &str = "application/vnd.neoc.model.layer.v1.tar+gzip";
pub const MODEL_LAYER_TAR: &str = "application/vnd.neoc.model.layer.v1.tar";
pub const MODEL_LAYER_RAW: &str = "application/vnd.neoc.model.layer.v1.raw";
pub const BUNDLE_ARTIFACT_TYPE: &str = "application/vnd.neoc.bundle.v1";
pub const BUNDLE_LAYER: &str = "application/vnd.neoc.bundle.layer.v1.tar";
pub const PROVENANCE_ARTIFACT_TYPE: &str = "application/vnd.in-toto+json";
pub const DSSE_LAYER: &str = "application/vnd.dsse.envelope.v1+json";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_EMPTY: &str = "application/vnd.oci.empty.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// The empty JSON config (`{}`) every artifact here carries.
pub const EMPTY_DIGEST: &str = "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a";

pub const ANN_TITLE: &str = "org.opencontainers.image.title";
pub const ANN_CREATED: &str = "org.opencontainers.image.created";
pub const ANN_REF_NAME: &str = "org.opencontainers.image.ref.name";

/// Manifests larger than this are refused before they are read.
pub const MAX_MANIFEST: u64 = 4 << 20;

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Descriptor {
    #[serde(rename = "mediaType", default)]
    pub media_type: String,
    pub digest: String,
    pub size: u64,
    #[serde(rename = "artifactType", default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<serde_json::Value>,
}

impl Descriptor {
    pub fn of(media_type: &str, bytes: &[u8]) -> Descriptor {
        Descriptor {
            media_type: media_type.into(),
            digest: neoc_bundle::digest::sha256(bytes),
            size: bytes.len() as u64,
            artifact_type: None,
            annotations: BTreeMap::new(),
            data: None,
            platform: None,
        }
    }

    pub fn empty_config() -> Descriptor {
        let mut d = Descriptor::of(OCI_EMPTY, b"{}");
        d.data = Some("e30=".into());
        d
    }

    pub fn title(&self) -> Option<&str> {
        self.annotations.get(ANN_TITLE).map(String::as_str)
    }
}

#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct Manifest {
    #[serde(rename = "schemaVersion")]
    pub schema_version: u32,
    #[serde(rename = "mediaType", default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    #[serde(rename = "artifactType", default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    pub config: Descriptor,
    #[serde(default)]
    pub layers: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<Descriptor>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

impl Manifest {
    /// An artifact manifest with the empty config.
    pub fn artifact(artifact_type: &str, layers: Vec<Descriptor>, annotations: BTreeMap<String, String>) -> Manifest {
        Manifest {
            schema_version: 2,
            media_type: Some(OCI_MANIFEST.into()),
            artifact_type: Some(artifact_type.into()),
            config: Descriptor::empty_config(),
            layers,
            subject: None,
            annotations,
        }
    }

    /// What kind of artifact this is: `artifactType`, else the config's media type.
    pub fn kind(&self) -> &str {
        self.artifact_type.as_deref().unwrap_or(&self.config.media_type)
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(self).expect("manifest serializes")
    }
}

#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct Index {
    #[serde(rename = "schemaVersion")]
    pub schema_version: u32,
    #[serde(rename = "mediaType", default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    #[serde(rename = "artifactType", default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    pub manifests: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

impl Index {
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(self).expect("index serializes")
    }
}

/// A fetched manifest, parsed.
#[allow(clippy::large_enum_variant)] // one per pull, never stored in bulk
pub enum Fetched {
    Manifest(Manifest),
    Index(Index),
}

/// Parses what a registry returned for a reference; anything that is not an
/// OCI image manifest or index is refused with what it is.
pub fn parse_manifest(bytes: &[u8], what: &str) -> Result<Fetched> {
    let v: serde_json::Value = serde_json::from_slice(bytes)
        .map_err(|e| anyhow::anyhow!("{what}: the registry returned something that is not a manifest ({e})"))?;
    let media = v.get("mediaType").and_then(|m| m.as_str()).unwrap_or_default().to_string();
    let schema = v.get("schemaVersion").and_then(|s| s.as_u64()).unwrap_or(0);
    match media.as_str() {
        DOCKER_MANIFEST | DOCKER_LIST => bail!(
            "{what} is a Docker image manifest ({media}), not an OCI artifact\nhint: push models with `neoc push`, `oras push`, or any OCI client that writes {OCI_MANIFEST}"
        ),
        _ if schema == 1 => bail!("{what} is a Docker schema 1 manifest, not an OCI artifact"),
        OCI_INDEX => Ok(Fetched::Index(
            serde_json::from_value(v).map_err(|e| anyhow::anyhow!("{what}: malformed OCI image index: {e}"))?,
        )),
        "" if v.get("manifests").is_some() => Ok(Fetched::Index(
            serde_json::from_value(v).map_err(|e| anyhow::anyhow!("{what}: malformed OCI image index: {e}"))?,
        )),
        OCI_MANIFEST | "" => {
            if schema != 2 {
                bail!("{what}: not an OCI manifest (schemaVersion {schema}, expected 2)");
            }
            let m: Manifest =
                serde_json::from_value(v).map_err(|e| anyhow::anyhow!("{what}: malformed OCI image manifest: {e}"))?;
            Ok(Fetched::Manifest(m))
        }
        other => bail!("{what}: not an OCI manifest (media type {other})"),
    }
}

/// Where a reference points.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Place {
    /// A directory holding one OCI image layout per repository.
    Local(PathBuf),
    /// `HOST[:PORT]` of a registry speaking the OCI distribution API.
    Remote(String),
}

/// `oci://HOST[:PORT]/REPO[:TAG][@DIGEST]`, or `REPO[:TAG][@DIGEST]` in the local registry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reference {
    pub place: Place,
    pub repo: String,
    pub tag: Option<String>,
    pub digest: Option<String>,
}

pub const REFERENCE_FORMS: &str = "expected oci://HOST[:PORT]/REPOSITORY[:TAG][@sha256:DIGEST] \
(e.g. oci://127.0.0.1:5000/models/fraud-xgb:1) or, in the local registry, NAME[:TAG] (e.g. fraud-xgb:1)";

impl Reference {
    /// Parses a reference. Local references are resolved against `local`
    /// (called only when the reference is local).
    pub fn parse(s: &str, local: impl FnOnce() -> Result<PathBuf>) -> Result<Reference> {
        let bad = |why: &str| anyhow::anyhow!("`{s}` is not a registry reference: {why}\nhint: {REFERENCE_FORMS}");
        let (place, rest) = if let Some(rest) = s.strip_prefix("oci://") {
            let (host, rest) = rest.split_once('/').ok_or_else(|| bad("no repository after the host"))?;
            check_host(host).map_err(|w| bad(&w))?;
            (Some(host.to_string()), rest)
        } else if s.starts_with("oci:") || s.contains("://") {
            return Err(bad("remote references start with oci://"));
        } else {
            (None, s)
        };
        let (rest, digest) = match rest.split_once('@') {
            Some((r, d)) => {
                check_digest(d).map_err(|w| bad(&w))?;
                (r, Some(d.to_string()))
            }
            None => (rest, None),
        };
        // a ':' after the last '/' starts the tag
        let last = rest.rfind('/').map(|i| i + 1).unwrap_or(0);
        let (repo, tag) = match rest[last..].find(':') {
            Some(i) => (&rest[..last + i], Some(&rest[last + i + 1..])),
            None => (rest, None),
        };
        check_repo(repo).map_err(|w| bad(&w))?;
        if let Some(t) = tag {
            check_tag(t).map_err(|w| bad(&w))?;
        }
        let place = match place {
            Some(h) => Place::Remote(h),
            None => Place::Local(local()?),
        };
        Ok(Reference { place, repo: repo.into(), tag: tag.map(String::from), digest })
    }

    pub fn is_remote(&self) -> bool {
        matches!(self.place, Place::Remote(_))
    }

    /// The same repository with another tag (and no digest).
    pub fn with_tag(&self, tag: &str) -> Reference {
        Reference { place: self.place.clone(), repo: self.repo.clone(), tag: Some(tag.into()), digest: None }
    }

    /// The same repository, pinned to a digest.
    pub fn with_digest(&self, digest: &str) -> Reference {
        Reference { place: self.place.clone(), repo: self.repo.clone(), tag: None, digest: Some(digest.into()) }
    }

    /// The tag or digest to resolve; `latest` when neither was given.
    pub fn selector(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(d), _) => d.clone(),
            (None, Some(t)) => t.clone(),
            (None, None) => "latest".into(),
        }
    }
}

impl std::fmt::Display for Reference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.place {
            Place::Remote(h) => write!(f, "oci://{h}/{}", self.repo)?,
            Place::Local(_) => write!(f, "{}", self.repo)?,
        }
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

fn check_host(h: &str) -> std::result::Result<(), String> {
    let (name, port) = match h.rsplit_once(':') {
        Some((n, p)) if !n.ends_with(']') || h.starts_with('[') => (n, Some(p)),
        _ => (h, None),
    };
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b".-[]:".contains(&b)) {
        return Err(format!("`{h}` is not a host name"));
    }
    if let Some(p) = port {
        if p.parse::<u16>().map_or(true, |p| p == 0) {
            return Err(format!("`{p}` in `{h}` is not a port number"));
        }
    }
    Ok(())
}

/// Repository names per the distribution spec: lowercase components of
/// `[a-z0-9]+` joined by `.`, `_`, `__` or `-`, separated by `/`.
fn check_repo(r: &str) -> std::result::Result<(), String> {
    if r.is_empty() {
        return Err("the repository name is empty".into());
    }
    if r.len() > 255 {
        return Err("the repository name is longer than 255 characters".into());
    }
    for comp in r.split('/') {
        let ok = !comp.is_empty()
            && comp.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
            && comp.as_bytes()[0].is_ascii_alphanumeric()
            && comp.as_bytes()[comp.len() - 1].is_ascii_alphanumeric()
            && !comp.contains("..");
        if !ok {
            return Err(format!(
                "repository component `{comp}` must be lowercase letters and digits, separated by '.', '_' or '-'"
            ));
        }
    }
    Ok(())
}

fn check_tag(t: &str) -> std::result::Result<(), String> {
    let ok = !t.is_empty()
        && t.len() <= 128
        && (t.as_bytes()[0].is_ascii_alphanumeric() || t.as_bytes()[0] == b'_')
        && t.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(format!("tag `{t}` must be 1-128 of [A-Za-z0-9_.-], not starting with '.' or '-'"))
    }
}

pub fn check_digest(d: &str) -> std::result::Result<(), String> {
    match d.strip_prefix("sha256:") {
        Some(h) if h.len() == 64 && h.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) => Ok(()),
        _ => Err(format!("`{d}` is not a digest (sha256: and 64 lowercase hex digits)")),
    }
}

/// How to reach remote registries.
#[derive(Clone, Debug, Default)]
pub struct Access {
    /// Hosts allowed over plain HTTP besides loopback ones.
    pub insecure: Vec<String>,
}

/// A registry holding `reference`'s repository.
pub enum Store {
    Local(layout::Layout),
    Remote(Box<remote::Remote>),
}

impl Store {
    pub fn open(r: &Reference, access: &Access) -> Result<Store> {
        Ok(match &r.place {
            Place::Local(root) => Store::Local(layout::Layout::new(root, &r.repo)),
            Place::Remote(host) => Store::Remote(Box::new(remote::Remote::new(host, &r.repo, access)?)),
        })
    }

    /// Resolves a tag or digest to its manifest; the bytes are checked
    /// against the digest. Returns the manifest's descriptor and bytes.
    pub fn resolve(&self, r: &Reference) -> Result<(Descriptor, Vec<u8>)> {
        let (media, bytes) = match self {
            Store::Local(l) => l.manifest(&r.selector())?,
            Store::Remote(x) => x.manifest(r)?,
        };
        let digest = neoc_bundle::digest::sha256(&bytes);
        if let Some(want) = &r.digest {
            if *want != digest {
                bail!("manifest of {r} does not match its digest (got {digest})");
            }
        }
        let mut d = Descriptor::of(&media, &bytes);
        d.digest = digest;
        Ok((d, bytes))
    }

    /// Streams a blob into `dest`, checking size and digest; only a blob that
    /// matched is renamed to `dest`.
    pub fn fetch_blob(&self, d: &Descriptor, dest: &Path) -> Result<()> {
        match self {
            Store::Local(l) => l.fetch_blob(d, dest),
            Store::Remote(x) => x.fetch_blob(d, dest),
        }
    }

    pub fn push_blob_file(&self, path: &Path, d: &Descriptor) -> Result<()> {
        match self {
            Store::Local(l) => l.push_blob_file(path, d),
            Store::Remote(x) => x.push_blob_file(path, d),
        }
    }

    pub fn push_blob_bytes(&self, media_type: &str, bytes: &[u8]) -> Result<Descriptor> {
        let d = Descriptor::of(media_type, bytes);
        match self {
            Store::Local(l) => l.push_blob_bytes(bytes, &d)?,
            Store::Remote(x) => x.push_blob_bytes(bytes, &d)?,
        }
        Ok(d)
    }

    /// Stores a manifest (by digest, and under `tag` when given); returns its descriptor.
    pub fn push_manifest(&self, tag: Option<&str>, media_type: &str, bytes: &[u8]) -> Result<Descriptor> {
        let d = Descriptor::of(media_type, bytes);
        match self {
            Store::Local(l) => l.push_manifest(tag, &d, bytes)?,
            Store::Remote(x) => x.push_manifest(tag, &d, bytes)?,
        }
        Ok(d)
    }

    pub fn tags(&self) -> Result<Vec<String>> {
        let mut t = match self {
            Store::Local(l) => l.tags()?,
            Store::Remote(x) => x.tags()?,
        };
        t.sort();
        Ok(t)
    }
}

/// sha256 (`sha256:HEX`) and size of a file, read in 64 KiB pieces.
pub fn digest_file(path: &Path) -> Result<(String, u64)> {
    let mut f = std::fs::File::open(path).with_context(|| path.display().to_string())?;
    let mut h = Hasher::default();
    let n = std::io::copy(&mut f, &mut HashWriter(&mut h)).with_context(|| format!("reading {}", path.display()))?;
    Ok((h.finish(), n))
}

/// Receives a blob's bytes into a `.partial` file beside `dest`, hashing as
/// they arrive, and renames it to `dest` once size and digest match.
pub struct BlobSink {
    file: std::io::BufWriter<std::fs::File>,
    partial: PathBuf,
    dest: PathBuf,
    hasher: Hasher,
    written: u64,
    want: Descriptor,
}

/// The `.partial` file a download of `d` to `dest` uses.
pub fn partial_path(dest: &Path, d: &Descriptor) -> PathBuf {
    let name = dest.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_else(|| "blob".into());
    let hex = d.digest.strip_prefix("sha256:").unwrap_or(&d.digest);
    dest.with_file_name(format!(".{name}.{}.partial", &hex[..hex.len().min(12)]))
}

impl BlobSink {
    /// Starts a download; with `resume`, keeps what an earlier, interrupted
    /// download of the same blob left and returns how many bytes that was.
    pub fn create(d: &Descriptor, dest: &Path, resume: bool) -> Result<(BlobSink, u64)> {
        let partial = partial_path(dest, d);
        let mut hasher = Hasher::default();
        let mut have = 0u64;
        if resume {
            if let Ok(meta) = std::fs::metadata(&partial) {
                if meta.len() > 0 && meta.len() < d.size {
                    let mut f = std::fs::File::open(&partial)?;
                    have = std::io::copy(&mut f, &mut HashWriter(&mut hasher))?;
                }
            }
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(have > 0)
            .write(true)
            .truncate(have == 0)
            .open(&partial)
            .with_context(|| format!("creating {}", partial.display()))?;
        Ok((
            BlobSink {
                file: std::io::BufWriter::with_capacity(1 << 16, file),
                partial,
                dest: dest.into(),
                hasher,
                written: have,
                want: d.clone(),
            },
            have,
        ))
    }

    pub fn write(&mut self, chunk: &[u8]) -> Result<()> {
        self.written += chunk.len() as u64;
        if self.written > self.want.size {
            let n = self.written;
            self.abandon();
            bail!(
                "blob {} is larger than its descriptor says ({} bytes; got at least {n})",
                self.want.digest,
                self.want.size
            );
        }
        self.hasher.update(chunk);
        self.file.write_all(chunk).with_context(|| format!("writing {}", self.partial.display()))
    }

    /// Checks size and digest; on success renames into place.
    pub fn finish(mut self) -> Result<()> {
        self.file.flush()?;
        self.file.get_ref().sync_all().ok();
        let digest = std::mem::take(&mut self.hasher).finish();
        if self.written != self.want.size || digest != self.want.digest {
            let (n, want) = (self.written, self.want.clone());
            self.abandon();
            bail!(
                "blob {} does not match its digest: received {n} bytes with digest {digest} (expected {} bytes)\nhint: the registry's copy is corrupt or was changed; nothing was kept",
                want.digest,
                want.size
            );
        }
        std::fs::rename(&self.partial, &self.dest)
            .with_context(|| format!("moving the download to {}", self.dest.display()))?;
        Ok(())
    }

    /// Whether every byte the descriptor announces has arrived.
    pub fn complete(&self) -> bool {
        self.written == self.want.size
    }

    /// Deletes the partial file.
    pub fn abandon(&mut self) {
        std::fs::remove_file(&self.partial).ok();
    }
}

struct HashWriter<'a>(&'a mut Hasher);

impl Write for HashWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Chooses the model layer of an artifact: its only layer; else the one
/// layer of a model media type (neoc's, a tarball, or a CNCF ModelPack
/// weight). Anything else is an error naming what was found.
pub fn model_layer<'m>(m: &'m Manifest, what: &str) -> Result<&'m Descriptor> {
    let list = || {
        m.layers
            .iter()
            .map(|l| format!("{} ({})", l.media_type, l.title().unwrap_or("untitled")))
            .collect::<Vec<_>>()
            .join(", ")
    };
    match m.layers.len() {
        0 => bail!("{what} has no layers, so no model: it is not a model artifact"),
        1 => return Ok(&m.layers[0]),
        _ => {}
    }
    let ours: Vec<&Descriptor> = m
        .layers
        .iter()
        .filter(|l| [MODEL_LAYER_TAR_GZIP, MODEL_LAYER_TAR, MODEL_LAYER_RAW].contains(&l.media_type.as_str()))
        .collect();
    if ours.len() == 1 {
        return Ok(ours[0]);
    }
    let weights: Vec<&Descriptor> = m
        .layers
        .iter()
        .filter(|l| {
            (l.media_type.starts_with("application/vnd.cncf.model.weight.") && !l.media_type.contains(".config."))
                || l.title().is_some_and(|t| {
                    [".onnx", ".tflite", ".nnef.tgz", ".nnef.tar", ".ubj", "xgboost-model", "model.tar.gz"]
                        .iter()
                        .any(|s| t.ends_with(s))
                })
        })
        .collect();
    match weights.len() {
        1 => Ok(weights[0]),
        0 => bail!("{what} has {} layers and none of them is a model: {}", m.layers.len(), list()),
        n => bail!(
            "{what} has {n} model layers ({}); neoc compiles one model per artifact\nhint: push each model as its own artifact",
            list()
        ),
    }
}

/// A safe file name for a layer on disk: its title's last component, or its digest.
pub fn layer_file_name(d: &Descriptor) -> String {
    let title = d.title().and_then(|t| Path::new(t).file_name()).map(|n| n.to_string_lossy().to_string());
    match title {
        Some(t) if !t.starts_with('.') && t.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-+".contains(&b)) => t,
        _ => d.digest.replace(':', "-"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Reference> {
        Reference::parse(s, || Ok(PathBuf::from("/reg")))
    }

    #[test]
    fn references() {
        let r = parse("oci://127.0.0.1:5000/models/fraud-xgb:1").unwrap();
        assert_eq!(r.place, Place::Remote("127.0.0.1:5000".into()));
        assert_eq!((r.repo.as_str(), r.tag.as_deref(), r.digest.as_deref()), ("models/fraud-xgb", Some("1"), None));
        let d = format!("sha256:{}", "a".repeat(64));
        let r = parse(&format!("oci://reg.example.com/a/b@{d}")).unwrap();
        assert_eq!(r.digest.as_deref(), Some(d.as_str()));
        assert_eq!(r.selector(), d);
        let r = parse("fraud-xgb:1-onnx").unwrap();
        assert_eq!(r.place, Place::Local("/reg".into()));
        assert_eq!(r.to_string(), "fraud-xgb:1-onnx");
        assert_eq!(parse("oci://localhost/x").unwrap().selector(), "latest");
    }

    #[test]
    fn reference_typos_show_the_expected_form() {
        for bad in [
            "oci:/127.0.0.1:5000/models/x:1",
            "oci://127.0.0.1:5000",
            "oci://127.0.0.1:50x0/models/x:1",
            "oci://127.0.0.1:5000/Models/x:1",
            "oci://127.0.0.1:5000/models/x:",
            "oci://127.0.0.1:5000/models//x",
            "oci://127.0.0.1:5000/models/x@sha256:abc",
            "https://127.0.0.1:5000/models/x:1",
        ] {
            let e = format!("{:#}", parse(bad).unwrap_err());
            assert!(e.contains("expected oci://HOST[:PORT]/REPOSITORY"), "{bad}: {e}");
        }
    }

    #[test]
    fn manifests_that_are_not_oci_are_named() {
        let docker = br#"{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json","config":{"mediaType":"x","digest":"d","size":1},"layers":[]}"#;
        assert!(format!("{:#}", parse_manifest(docker, "m").err().unwrap()).contains("Docker image manifest"));
        assert!(format!("{:#}", parse_manifest(b"<html>", "m").err().unwrap()).contains("not a manifest"));
        assert!(parse_manifest(br#"{"schemaVersion":1,"name":"x"}"#, "m").is_err());
    }
}
