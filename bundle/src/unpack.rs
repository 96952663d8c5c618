//! Defensive unpacking of model tarballs (`model.tar.gz`, `.tgz`, `.tar`).
//!
//! Refused: absolute paths, `..`, links of any kind, device files and FIFOs,
//! names that are not UTF-8, more than [`Limits::max_entries`] entries, more
//! than [`Limits::max_bytes`] unpacked bytes, and gzip streams that expand
//! more than [`Limits::max_ratio`] times once past 16 MiB (a decompression
//! bomb). Nothing is ever written outside the destination directory, which
//! the caller should create fresh (a temporary directory) and drop on error.

use std::io::Read;
use std::path::{Component, Path, PathBuf};

use crate::BundleError;

#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_entries: usize,
    pub max_bytes: u64,
    pub max_ratio: u64,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits { max_entries: 10_000, max_bytes: 16 << 30, max_ratio: 200 }
    }
}

/// What was unpacked: regular files relative to the destination, in archive order.
#[derive(Debug)]
pub struct Unpacked {
    pub files: Vec<PathBuf>,
    pub bytes: u64,
}

/// True when the file starts with the gzip magic number.
pub fn is_gzip(head: &[u8]) -> bool {
    head.starts_with(&[0x1f, 0x8b])
}

/// True when the bytes look like a tar header (ustar magic or a valid checksum).
pub fn is_tar(head: &[u8]) -> bool {
    if head.len() < 512 {
        return false;
    }
    if &head[257..262] == b"ustar" {
        return true;
    }
    let h = tar::Header::from_byte_slice(&head[..512]);
    match h.cksum() {
        Ok(sum) => {
            let computed: u32 =
                head[..512].iter().enumerate().map(|(i, b)| if (148..156).contains(&i) { 32 } else { *b as u32 }).sum();
            sum == computed && head[..100].iter().any(|b| *b != 0)
        }
        Err(_) => false,
    }
}

struct Counting<R> {
    inner: R,
    read: u64,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read += n as u64;
        Ok(n)
    }
}

/// Ratio and size guard on the decompressed stream.
struct Guard<R> {
    inner: R,
    out: u64,
    compressed: std::rc::Rc<std::cell::Cell<u64>>,
    limits: Limits,
}

impl<R: Read> Read for Guard<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.out += n as u64;
        let compressed = self.compressed.get().max(1);
        if self.out > self.limits.max_bytes.saturating_add(1 << 20) {
            return Err(std::io::Error::other(format!(
                "archive expands beyond the {} byte limit",
                self.limits.max_bytes
            )));
        }
        if self.out > (16 << 20) && self.out / compressed > self.limits.max_ratio {
            return Err(std::io::Error::other(format!(
                "gzip stream expands more than {}x ({} bytes from {}): refusing a likely decompression bomb",
                self.limits.max_ratio, self.out, compressed
            )));
        }
        Ok(n)
    }
}

struct SharedCount<R> {
    inner: R,
    count: std::rc::Rc<std::cell::Cell<u64>>,
}

impl<R: Read> Read for SharedCount<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count.set(self.count.get() + n as u64);
        Ok(n)
    }
}

/// Unpacks the tarball at `archive` (gzip'd or not) into `dest`.
pub fn unpack(archive: &Path, dest: &Path, limits: Limits) -> Result<Unpacked, BundleError> {
    let mut f = std::fs::File::open(archive).map_err(|e| BundleError::io(archive, e))?;
    let mut head = [0u8; 2];
    let n = f.read(&mut head).map_err(|e| BundleError::io(archive, e))?;
    drop(f);
    let f = std::fs::File::open(archive).map_err(|e| BundleError::io(archive, e))?;
    let count = std::rc::Rc::new(std::cell::Cell::new(0));
    let raw = SharedCount { inner: std::io::BufReader::new(f), count: count.clone() };
    let reader: Box<dyn Read> = if is_gzip(&head[..n]) {
        Box::new(Guard { inner: flate2::read::GzDecoder::new(raw), out: 0, compressed: count, limits })
    } else {
        Box::new(Guard { inner: raw, out: 0, compressed: std::rc::Rc::new(std::cell::Cell::new(u64::MAX)), limits })
    };
    unpack_reader(reader, dest, limits).map_err(|e| BundleError::Unpack(format!("{}: {e}", archive.display())))
}

fn unpack_reader(reader: impl Read, dest: &Path, limits: Limits) -> Result<Unpacked, String> {
    let mut ar = tar::Archive::new(Counting { inner: reader, read: 0 });
    let mut files = Vec::new();
    let mut total = 0u64;
    let entries = ar.entries().map_err(|e| format!("not a tar archive: {e}"))?;
    for (i, entry) in entries.enumerate() {
        let mut entry = entry.map_err(|e| format!("corrupt or truncated archive: {e}"))?;
        if i >= limits.max_entries {
            return Err(format!("more than {} entries", limits.max_entries));
        }
        let raw_path = entry.path().map_err(|e| format!("unreadable entry name: {e}"))?.into_owned();
        let shown = raw_path.display().to_string();
        let rel = safe_relative(&raw_path)
            .ok_or_else(|| format!("entry `{shown}` escapes the archive (absolute path or `..`)"))?;
        let kind = entry.header().entry_type();
        match kind {
            tar::EntryType::Directory => {
                if !rel.as_os_str().is_empty() {
                    std::fs::create_dir_all(dest.join(&rel)).map_err(|e| format!("creating {}: {e}", rel.display()))?;
                }
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let size = entry.header().size().map_err(|e| format!("entry `{shown}`: bad size: {e}"))?;
                total = total.saturating_add(size);
                if total > limits.max_bytes {
                    return Err(format!("archive expands beyond the {} byte limit", limits.max_bytes));
                }
                let target = dest.join(&rel);
                if target.exists() {
                    return Err(format!("entry `{shown}` appears twice"));
                }
                if let Some(parent) = target.parent() {
                    std::fs::create_dir_all(parent).map_err(|e| format!("creating {}: {e}", parent.display()))?;
                }
                // refuse to write through anything but real directories we made
                let mut out = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&target)
                    .map_err(|e| format!("writing {}: {e}", rel.display()))?;
                let copied = std::io::copy(&mut (&mut entry).take(size), &mut out)
                    .map_err(|e| format!("entry `{shown}`: {e}"))?;
                if copied != size {
                    return Err(format!("entry `{shown}` is truncated"));
                }
                files.push(rel);
            }
            tar::EntryType::XHeader | tar::EntryType::XGlobalHeader | tar::EntryType::GNULongName => {}
            tar::EntryType::Symlink | tar::EntryType::Link => {
                return Err(format!("entry `{shown}` is a link; model tarballs may only hold files and directories"))
            }
            other => return Err(format!("entry `{shown}` has unsupported type {other:?}")),
        }
    }
    Ok(Unpacked { files, bytes: total })
}

/// `p` as a plain relative path, or `None` if absolute or containing `..`.
fn safe_relative(p: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::Normal(s) => out.push(s),
            Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// A tar with one entry whose header we write by hand, so that names the
    /// `tar` crate refuses to create (`../x`, `/x`) can be tested.
    fn raw_tar(name: &str, kind: u8, link: &str, data: &[u8]) -> Vec<u8> {
        let mut h = tar::Header::new_ustar();
        {
            let old = h.as_old_mut();
            old.name[..name.len()].copy_from_slice(name.as_bytes());
            old.linkname[..link.len()].copy_from_slice(link.as_bytes());
        }
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.as_old_mut().linkflag = [kind];
        h.set_cksum();
        let mut out = h.as_bytes().to_vec();
        out.extend_from_slice(data);
        out.resize(out.len() + (512 - data.len() % 512) % 512, 0);
        out.resize(out.len() + 1024, 0);
        out
    }

    fn try_unpack(bytes: &[u8], gz: bool) -> (Result<Unpacked, BundleError>, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let archive = dir.path().join("m.tar.gz");
        let mut f = std::fs::File::create(&archive).unwrap();
        if gz {
            let mut enc = flate2::write::GzEncoder::new(f, flate2::Compression::default());
            enc.write_all(bytes).unwrap();
            enc.finish().unwrap();
        } else {
            f.write_all(bytes).unwrap();
        }
        let dest = dir.path().join("out");
        std::fs::create_dir(&dest).unwrap();
        (unpack(&archive, &dest, Limits::default()), dir)
    }

    #[test]
    fn plain_files_unpack() {
        let (r, dir) = try_unpack(&raw_tar("model.onnx", b'0', "", b"abc"), true);
        let u = r.unwrap();
        assert_eq!(u.files, vec![PathBuf::from("model.onnx")]);
        assert_eq!(std::fs::read(dir.path().join("out/model.onnx")).unwrap(), b"abc");
    }

    #[test]
    fn escaping_entries_are_refused_and_nothing_is_written_outside() {
        for name in ["../evil.onnx", "/tmp/neoc-evil.onnx", "a/../../evil.onnx"] {
            let (r, dir) = try_unpack(&raw_tar(name, b'0', "", b"x"), true);
            let msg = r.unwrap_err().to_string();
            assert!(msg.contains("escapes the archive"), "{name}: {msg}");
            assert!(!dir.path().join("evil.onnx").exists());
        }
        assert!(!Path::new("/tmp/neoc-evil.onnx").exists());
    }

    #[test]
    fn links_are_refused() {
        for kind in [b'2', b'1'] {
            let (r, _dir) = try_unpack(&raw_tar("model.onnx", kind, "/etc/passwd", b""), false);
            let msg = r.unwrap_err().to_string();
            assert!(msg.contains("is a link"), "{msg}");
        }
    }

    #[test]
    fn gzip_bomb_is_refused() {
        // 64 MiB of zeros inside a tar compresses about 1000:1
        let (r, dir) = try_unpack(&raw_tar("model.onnx", b'0', "", &vec![0u8; 64 << 20]), true);
        let msg = r.unwrap_err().to_string();
        assert!(msg.contains("decompression bomb"), "{msg}");
        let written = std::fs::metadata(dir.path().join("out/model.onnx")).map(|m| m.len()).unwrap_or(0);
        assert!(written < 64 << 20);
    }

    #[test]
    fn garbage_is_not_a_tar() {
        let (r, _dir) = try_unpack(&[7u8; 3000], true);
        assert!(r.is_err());
        let (r, _dir) = try_unpack(&[0x1f, 0x8b, 1, 2, 3], false);
        assert!(r.is_err());
    }
}
