//! Finding an engine's shared library at run time (OpenVINO, onnxruntime):
//! the places pip installs a package, and the newest `libNAME.so*` in a folder.

use std::path::{Path, PathBuf};

/// The site-packages folders a pip-installed package may be in, most likely
/// first: the active virtualenv's, the user's, then the system's (newest
/// Python first in each); with the roots looked in, for error messages.
pub fn site_packages() -> (Vec<PathBuf>, Vec<PathBuf>) {
    let mut roots: Vec<PathBuf> = Vec::new();
    if let Some(venv) = std::env::var_os("VIRTUAL_ENV") {
        roots.push(PathBuf::from(venv).join("lib"));
    }
    if let Some(home) = std::env::var_os("HOME") {
        roots.push(PathBuf::from(home).join(".local/lib"));
    }
    roots.extend(["/usr/local/lib", "/usr/lib"].map(PathBuf::from));
    let mut sites = Vec::new();
    for root in &roots {
        let Ok(entries) = std::fs::read_dir(root) else { continue };
        let mut pythons: Vec<PathBuf> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("python3")))
            .collect();
        pythons.sort();
        for py in pythons.iter().rev() {
            sites.extend(["site-packages", "dist-packages"].map(|s| py.join(s)));
        }
    }
    (sites, roots)
}

/// `p` itself if it is a file, else the newest file in it whose name starts
/// with `prefix` (`libonnxruntime.so`: the versioned names sort after it).
pub fn in_place(p: &Path, prefix: &str) -> Option<PathBuf> {
    if p.is_file() {
        return Some(p.to_path_buf());
    }
    let mut libs: Vec<PathBuf> = std::fs::read_dir(p)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .filter(|f| f.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(prefix)))
        .collect();
    libs.sort();
    libs.pop()
}
