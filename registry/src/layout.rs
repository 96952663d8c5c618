//! The local registry: one OCI image layout directory per repository under a
//! root (`models/registry/fraud-xgb/{oci-layout,index.json,blobs/sha256/…}`).
//! Tags are `org.opencontainers.image.ref.name` annotations in `index.json`,
//! as `oras` and `skopeo` (`oci:DIR:TAG`) write them.

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use super::{BlobSink, Descriptor, Index, ANN_REF_NAME, MAX_MANIFEST, OCI_INDEX};

pub struct Layout {
    root: PathBuf,
    repo: String,
    dir: PathBuf,
}

impl Layout {
    pub fn new(root: &Path, repo: &str) -> Layout {
        Layout { root: root.into(), repo: repo.into(), dir: root.join(repo) }
    }

    fn exists(&self) -> bool {
        self.dir.join("oci-layout").is_file() && self.dir.join("index.json").is_file()
    }

    fn missing(&self) -> anyhow::Error {
        let known = list_repos(&self.root);
        anyhow::anyhow!(
            "`{}` is not in the local registry {}{}",
            self.repo,
            self.root.display(),
            if known.is_empty() { String::new() } else { format!("\nhint: it has: {}", known.join(", ")) }
        )
    }

    fn index(&self) -> Result<Index> {
        if !self.exists() {
            return Err(self.missing());
        }
        let p = self.dir.join("index.json");
        let bytes = std::fs::read(&p).with_context(|| p.display().to_string())?;
        serde_json::from_slice(&bytes).with_context(|| format!("{}: not an OCI image index", p.display()))
    }

    pub fn tags(&self) -> Result<Vec<String>> {
        Ok(self.index()?.manifests.iter().filter_map(|d| d.annotations.get(ANN_REF_NAME).cloned()).collect())
    }

    /// The manifest a tag or digest names: (media type, bytes).
    pub fn manifest(&self, selector: &str) -> Result<(String, Vec<u8>)> {
        let index = self.index()?;
        let (media, digest) = if selector.starts_with("sha256:") {
            let media = index.manifests.iter().find(|d| d.digest == selector).map(|d| d.media_type.clone());
            (media.unwrap_or_default(), selector.to_string())
        } else {
            let desc = index
                .manifests
                .iter()
                .find(|d| d.annotations.get(ANN_REF_NAME).map(String::as_str) == Some(selector))
                .with_context(|| {
                    let tags = self.tags().unwrap_or_default();
                    format!(
                        "`{}` has no tag `{selector}` in {}\nhint: tags: {}",
                        self.repo,
                        self.root.display(),
                        if tags.is_empty() { "none".into() } else { tags.join(", ") }
                    )
                })?;
            (desc.media_type.clone(), desc.digest.clone())
        };
        let p = self.blob_path(&digest)?;
        let meta = std::fs::metadata(&p)
            .with_context(|| format!("`{}@{digest}` is not in {}", self.repo, self.root.display()))?;
        if meta.len() > MAX_MANIFEST {
            bail!("manifest {digest} is implausibly large ({} bytes)", meta.len());
        }
        let data = std::fs::read(&p)?;
        if neoc_bundle::digest::sha256(&data) != digest {
            bail!("manifest {digest} in {} does not match its digest: the registry is corrupted", self.dir.display());
        }
        Ok((media, data))
    }

    fn blob_path(&self, digest: &str) -> Result<PathBuf> {
        super::check_digest(digest).map_err(|e| anyhow::anyhow!(e))?;
        Ok(self.dir.join("blobs").join("sha256").join(&digest["sha256:".len()..]))
    }

    pub fn fetch_blob(&self, d: &Descriptor, dest: &Path) -> Result<()> {
        let p = self.blob_path(&d.digest)?;
        let src = std::fs::File::open(&p)
            .with_context(|| format!("blob {} is missing from {}", d.digest, self.dir.display()))?;
        copy_into(src, &p, d, dest).with_context(|| format!("in the local registry {}", self.dir.display()))
    }

    fn init(&self) -> Result<()> {
        std::fs::create_dir_all(self.dir.join("blobs").join("sha256"))
            .with_context(|| format!("creating {}", self.dir.display()))?;
        let layout = self.dir.join("oci-layout");
        if !layout.exists() {
            std::fs::write(&layout, b"{\"imageLayoutVersion\":\"1.0.0\"}")?;
        }
        if !self.dir.join("index.json").exists() {
            let idx = Index {
                schema_version: 2,
                media_type: Some(OCI_INDEX.into()),
                artifact_type: None,
                manifests: vec![],
                annotations: Default::default(),
            };
            neoc_bundle::container::write_atomic(&self.dir.join("index.json"), &idx.to_bytes())?;
        }
        Ok(())
    }

    pub fn push_blob_file(&self, path: &Path, d: &Descriptor) -> Result<()> {
        self.init()?;
        let dest = self.blob_path(&d.digest)?;
        if dest.exists() {
            return Ok(());
        }
        let src = std::fs::File::open(path).with_context(|| path.display().to_string())?;
        copy_into(src, path, d, &dest).with_context(|| format!("{} changed while it was pushed", path.display()))
    }

    pub fn push_blob_bytes(&self, bytes: &[u8], d: &Descriptor) -> Result<()> {
        self.init()?;
        let dest = self.blob_path(&d.digest)?;
        if !dest.exists() {
            neoc_bundle::container::write_atomic(&dest, bytes)?;
        }
        Ok(())
    }

    pub fn push_manifest(&self, tag: Option<&str>, d: &Descriptor, bytes: &[u8]) -> Result<()> {
        self.push_blob_bytes(bytes, d)?;
        let mut index = self.index()?;
        let mut entry = d.clone();
        if let Ok(super::Fetched::Manifest(m)) = super::parse_manifest(bytes, "manifest") {
            entry.artifact_type = m.artifact_type.clone();
        }
        match tag {
            Some(t) => {
                index.manifests.retain(|m| m.annotations.get(ANN_REF_NAME).map(String::as_str) != Some(t));
                entry.annotations.insert(ANN_REF_NAME.into(), t.into());
            }
            None => {
                if index.manifests.iter().any(|m| m.digest == d.digest) {
                    return Ok(());
                }
            }
        }
        index.manifests.push(entry);
        neoc_bundle::container::write_atomic(&self.dir.join("index.json"), &index.to_bytes())?;
        Ok(())
    }
}

/// Copies an open file (`path`, for messages) into `dest` through a
/// [`BlobSink`], which checks it against `d`.
fn copy_into(mut src: std::fs::File, path: &Path, d: &Descriptor, dest: &Path) -> Result<()> {
    let (mut sink, _) = BlobSink::create(d, dest, false)?;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = match src.read(&mut buf) {
            Ok(n) => n,
            Err(e) => {
                sink.abandon();
                return Err(e).context(format!("reading {}", path.display()));
            }
        };
        if n == 0 {
            break;
        }
        sink.write(&buf[..n])?;
    }
    sink.finish()
}

pub fn list_repos(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>, depth: usize) {
        let Ok(rd) = std::fs::read_dir(dir) else { return };
        for e in rd.flatten() {
            let p = e.path();
            if p.join("index.json").is_file() && p.join("oci-layout").is_file() {
                if let Ok(rel) = p.strip_prefix(root) {
                    out.push(rel.to_string_lossy().to_string());
                }
            } else if p.is_dir() && depth < 4 && e.file_name() != "blobs" {
                walk(root, &p, out, depth + 1);
            }
        }
    }
    walk(root, root, &mut out, 0);
    out.sort();
    out
}
