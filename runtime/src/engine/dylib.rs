//! Finding an engine's shared library at run time (OpenVINO, onnxruntime):
//! the places pip installs a package, and the newest `libNAME.so*` in a folder.

use std::path::{Path, PathBuf};

/// Site-packages folders an embedding knows (the Python package gives its
/// interpreter's), looked in before the others.
static KNOWN: std::sync::Mutex<Vec<PathBuf>> = std::sync::Mutex::new(Vec::new());

/// Adds a site-packages folder to look in first (the Python package adds
/// the ones of the interpreter that imported it: a venv's python run
/// without `activate` sets no VIRTUAL_ENV).
pub fn add_site_packages(folder: PathBuf) {
    let mut known = KNOWN.lock().unwrap_or_else(|e| e.into_inner());
    if !known.contains(&folder) {
        known.push(folder);
    }
}

/// The folders `add_site_packages` added.
pub fn added_site_packages() -> Vec<PathBuf> {
    KNOWN.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

/// The site-packages folders a pip-installed package may be in, most likely
/// first: those an embedding added (`add_site_packages`), the active
/// virtualenv's, the user's, then the system's (newest Python first in
/// each); with, for error messages, the added folders and the roots whose
/// `python3*/site-packages` were looked in.
pub fn site_packages() -> (Vec<PathBuf>, Vec<PathBuf>) {
    let known = added_site_packages();
    let mut roots: Vec<PathBuf> = Vec::new();
    if let Some(venv) = std::env::var_os("VIRTUAL_ENV") {
        roots.push(PathBuf::from(venv).join("lib"));
    }
    if let Some(home) = std::env::var_os("HOME") {
        roots.push(PathBuf::from(home).join(".local/lib"));
    }
    roots.extend(["/usr/local/lib", "/usr/lib"].map(PathBuf::from));
    let mut sites = known;
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
