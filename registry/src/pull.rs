//! Pulling an artifact: every layer of a manifest, or of each entry of an
//! index (only one target's with `target`), streamed to disk digest-checked.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::Serialize;

use crate::{Descriptor, Fetched, Manifest, Reference, Store};

/// The annotation naming a bundle artifact's target.
pub const ANN_BUNDLE_TARGET: &str = "dev.neoc.bundle.target";

/// sha256 and size of a file, as a descriptor of `media_type`.
pub fn file_descriptor(path: &Path, media_type: &str) -> Result<Descriptor> {
    let (digest, size) = crate::digest_file(path)?;
    let mut d = Descriptor::of(media_type, b"");
    d.digest = digest;
    d.size = size;
    Ok(d)
}

/// One file a pull wrote.
#[derive(Serialize, Debug)]
pub struct PulledFile {
    pub path: PathBuf,
    pub digest: String,
    pub size: u64,
    #[serde(rename = "mediaType")]
    pub media_type: String,
    /// The manifest it came from, pinned by digest.
    pub from: String,
}

/// Pulls the artifact `r` names into `out`: every layer of a manifest, or,
/// for an index, every entry (only `target`'s with `--target`).
pub fn pull(store: &Store, r: &Reference, out: &Path, target: Option<&str>) -> Result<Vec<PulledFile>> {
    let (desc, bytes) = store.resolve(r)?;
    let manifests: Vec<(Reference, Manifest)> = match crate::parse_manifest(&bytes, &r.to_string())? {
        Fetched::Manifest(m) => {
            if let Some(t) = target {
                let has = m.annotations.get(ANN_BUNDLE_TARGET);
                if has.is_some_and(|h| h != t) {
                    bail!("{r} is a bundle for {}, not {t}", has.unwrap());
                }
            }
            vec![(r.with_digest(&desc.digest), m)]
        }
        Fetched::Index(i) => {
            let targets: Vec<String> =
                i.manifests.iter().filter_map(|d| d.annotations.get(ANN_BUNDLE_TARGET).cloned()).collect();
            let chosen: Vec<&Descriptor> = match target {
                Some(t) => {
                    let c: Vec<&Descriptor> = i
                        .manifests
                        .iter()
                        .filter(|d| d.annotations.get(ANN_BUNDLE_TARGET).map(String::as_str) == Some(t))
                        .collect();
                    if c.is_empty() {
                        bail!(
                            "{r} has no bundle for target {t}\nhint: it has: {}",
                            if targets.is_empty() { "no neoc bundles".into() } else { targets.join(", ") }
                        );
                    }
                    c
                }
                None => i.manifests.iter().collect(),
            };
            let mut v = Vec::new();
            for d in chosen {
                let pinned = r.with_digest(&d.digest);
                let (_, b) = store.resolve(&pinned)?;
                match crate::parse_manifest(&b, &pinned.to_string())? {
                    Fetched::Manifest(m) => v.push((pinned, m)),
                    Fetched::Index(_) => bail!("{pinned}: nested indexes are not supported"),
                }
            }
            v
        }
    };
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let mut files = Vec::new();
    let mut names = std::collections::BTreeSet::new();
    for (pinned, m) in &manifests {
        if m.layers.is_empty() {
            bail!("{pinned} has no layers: nothing to pull");
        }
        for layer in &m.layers {
            let name = crate::layer_file_name(layer);
            if !names.insert(name.clone()) {
                bail!("{r}: two layers would be written to {name}; pull them one at a time by digest");
            }
            let dest = out.join(&name);
            let already = dest.is_file()
                && file_descriptor(&dest, "").is_ok_and(|d| d.digest == layer.digest && d.size == layer.size);
            if !already {
                store.fetch_blob(layer, &dest)?;
            }
            files.push(PulledFile {
                path: dest,
                digest: layer.digest.clone(),
                size: layer.size,
                media_type: layer.media_type.clone(),
                from: pinned.to_string(),
            });
        }
    }
    Ok(files)
}
