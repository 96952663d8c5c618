//! Defensive unpacking of model tarballs (`model.tar.gz`, `.tgz`, `.tar`).
//!
//! Refused: absolute paths, `..`, links of any kind, device files and FIFOs,
//! names that are not UTF-8, a file named twice, more than
//! [`Limits::max_entries`] entries, more than [`Limits::max_bytes`] written,
//! a stream longer than [`Limits::max_stream`], and gzip streams that expand
//! more than [`Limits::max_ratio`] times once past 16 MiB (a decompression
//! bomb). Nothing is ever written outside the destination directory, which
//! the caller should create fresh (a temporary directory) and drop on error.
//!
//! A model tarball may carry files its model does not use (notebooks,
//! checkpoints, padding): [`list`] reads the headers and the first bytes of
//! each file without writing anything, so the caller can tell which files
//! the model needs, and [`unpack_only`] writes just those. What a tarball's
//! other files cost is the time to decompress them, never disk or memory.

use std::io::Read;
use std::path::{Component, Path, PathBuf};

use crate::BundleError;

#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_entries: usize,
    /// Bytes written (the files unpacked).
    pub max_bytes: u64,
    /// Bytes of tar stream read, files skipped or not.
    pub max_stream: u64,
    pub max_ratio: u64,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits { max_entries: 10_000, max_bytes: 16 << 30, max_stream: 32 << 30, max_ratio: 200 }
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
        if self.out > self.limits.max_stream {
            return Err(std::io::Error::other(format!(
                "archive expands beyond the {} byte limit",
                self.limits.max_stream
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

/// A regular file of an archive as [`list`] sees it: its path, size and
/// first [`HEAD_BYTES`] bytes (enough to tell what kind of file it is).
#[derive(Clone, Debug)]
pub struct Listed {
    pub path: PathBuf,
    pub size: u64,
    pub head: Vec<u8>,
}

/// How much of each file [`list`] keeps.
pub const HEAD_BYTES: usize = 4096;

fn open(archive: &Path, limits: Limits) -> Result<Box<dyn Read>, BundleError> {
    let mut f = std::fs::File::open(archive).map_err(|e| BundleError::io(archive, e))?;
    let mut head = [0u8; 2];
    let n = f.read(&mut head).map_err(|e| BundleError::io(archive, e))?;
    drop(f);
    let f = std::fs::File::open(archive).map_err(|e| BundleError::io(archive, e))?;
    let count = std::rc::Rc::new(std::cell::Cell::new(0));
    let raw = SharedCount { inner: std::io::BufReader::new(f), count: count.clone() };
    Ok(if is_gzip(&head[..n]) {
        Box::new(Guard { inner: flate2::read::GzDecoder::new(raw), out: 0, compressed: count, limits })
    } else {
        Box::new(Guard { inner: raw, out: 0, compressed: std::rc::Rc::new(std::cell::Cell::new(u64::MAX)), limits })
    })
}

/// Lists the regular files of the tarball at `archive` (gzip'd or not)
/// without writing anything, with every check [`unpack`] makes: a file's
/// data past its first [`HEAD_BYTES`] is read through, never kept.
pub fn list(archive: &Path, limits: Limits) -> Result<Vec<Listed>, BundleError> {
    let mut listed = Vec::new();
    walk(open(archive, limits)?, limits, &mut Mode::List(&mut listed))
        .map_err(|e| BundleError::Unpack(format!("{}: {e}", archive.display())))?;
    Ok(listed)
}

/// Unpacks the tarball at `archive` (gzip'd or not) into `dest`.
pub fn unpack(archive: &Path, dest: &Path, limits: Limits) -> Result<Unpacked, BundleError> {
    unpack_only(archive, dest, limits, &|_| true)
}

/// Unpacks only the regular files `keep` accepts (paths as [`list`] gives
/// them); the others are checked as in [`unpack`] and read through, never
/// written, and do not count towards [`Limits::max_bytes`].
pub fn unpack_only(
    archive: &Path,
    dest: &Path,
    limits: Limits,
    keep: &dyn Fn(&Path) -> bool,
) -> Result<Unpacked, BundleError> {
    let mut files = Vec::new();
    let bytes = walk(open(archive, limits)?, limits, &mut Mode::Unpack { dest, keep, files: &mut files })
        .map_err(|e| BundleError::Unpack(format!("{}: {e}", archive.display())))?;
    Ok(Unpacked { files, bytes })
}

enum Mode<'a> {
    List(&'a mut Vec<Listed>),
    Unpack { dest: &'a Path, keep: &'a dyn Fn(&Path) -> bool, files: &'a mut Vec<PathBuf> },
}

/// Checks every entry; lists or writes the regular files. Returns the bytes written.
fn walk(reader: impl Read, limits: Limits, mode: &mut Mode) -> Result<u64, String> {
    let mut ar = tar::Archive::new(Counting { inner: reader, read: 0 });
    let mut seen = std::collections::HashSet::new();
    let mut written = 0u64;
    let entries = ar.entries().map_err(|e| format!("not a tar archive: {e}"))?;
    for (i, entry) in entries.enumerate() {
        let mut entry = entry.map_err(|e| format!("corrupt or truncated archive: {e}"))?;
        if i >= limits.max_entries {
            return Err(format!("more than {} entries", limits.max_entries));
        }
        let raw_path = entry.path().map_err(|e| format!("unreadable entry name: {e}"))?.into_owned();
        let shown = raw_path.display().to_string();
        // a header with no name is what a damaged end-of-archive block looks like
        let what = if shown.is_empty() { format!("entry {} (no name)", i + 1) } else { format!("entry `{shown}`") };
        let rel =
            safe_relative(&raw_path).ok_or_else(|| format!("{what} escapes the archive (absolute path or `..`)"))?;
        let kind = entry.header().entry_type();
        match kind {
            tar::EntryType::Directory => {}
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let size = entry
                    .header()
                    .size()
                    .map_err(|e| format!("{what}: unreadable size field ({e}): the archive is corrupt or truncated"))?;
                if rel.as_os_str().is_empty() {
                    return Err(format!("{what} is a file named like the archive's top directory"));
                }
                if !seen.insert(rel.clone()) {
                    return Err(format!("{what} appears twice"));
                }
                match mode {
                    Mode::List(listed) => {
                        let mut head = Vec::with_capacity(HEAD_BYTES.min(size as usize));
                        (&mut entry)
                            .take(HEAD_BYTES as u64)
                            .read_to_end(&mut head)
                            .map_err(|e| format!("{what}: {e}"))?;
                        // the rest is read through (and checked) by the next entry
                        listed.push(Listed { path: rel, size, head });
                    }
                    Mode::Unpack { dest, keep, files } => {
                        if !keep(&rel) {
                            continue;
                        }
                        written = written.saturating_add(size);
                        if written > limits.max_bytes {
                            return Err(format!("the model's files exceed the {} byte limit", limits.max_bytes));
                        }
                        let target = dest.join(&rel);
                        if let Some(parent) = target.parent() {
                            std::fs::create_dir_all(parent)
                                .map_err(|e| format!("creating {}: {e}", parent.display()))?;
                        }
                        // refuse to write through anything but real directories we made
                        let mut out = std::fs::OpenOptions::new()
                            .write(true)
                            .create_new(true)
                            .open(&target)
                            .map_err(|e| format!("writing {}: {e}", rel.display()))?;
                        let copied = std::io::copy(&mut (&mut entry).take(size), &mut out)
                            .map_err(|e| format!("{what}: {e}"))?;
                        if copied != size {
                            return Err(format!("{what} is truncated"));
                        }
                        files.push(rel);
                    }
                }
            }
            tar::EntryType::XHeader | tar::EntryType::XGlobalHeader | tar::EntryType::GNULongName => {}
            tar::EntryType::Symlink | tar::EntryType::Link => {
                return Err(format!("{what} is a link; model tarballs may only hold files and directories"))
            }
            other => return Err(format!("{what} has unsupported type {other:?}")),
        }
    }
    Ok(written)
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

    /// Two entries, the second 1 MiB: listing keeps 4 KiB of each and writes
    /// nothing; `unpack_only` writes the one chosen.
    #[test]
    fn listing_reads_heads_and_only_chosen_files_are_written() {
        let mut tar = raw_tar("model.onnx", b'0', "", b"\x08\x07model");
        tar.truncate(tar.len() - 1024);
        tar.extend(raw_tar("extra/padding.bin", b'0', "", &vec![7u8; 1 << 20]));
        let dir = tempfile::tempdir().unwrap();
        let archive = dir.path().join("m.tar");
        std::fs::write(&archive, &tar).unwrap();
        let listed = list(&archive, Limits::default()).unwrap();
        assert_eq!(listed.len(), 2);
        assert_eq!(
            (listed[0].path.as_path(), listed[0].size, &listed[0].head[..]),
            (Path::new("model.onnx"), 7, &b"\x08\x07model"[..])
        );
        assert_eq!((listed[1].size, listed[1].head.len()), (1 << 20, HEAD_BYTES));
        let dest = dir.path().join("out");
        std::fs::create_dir(&dest).unwrap();
        let u =
            unpack_only(&archive, &dest, Limits::default(), &|p| p.extension().is_some_and(|e| e == "onnx")).unwrap();
        assert_eq!((u.files, u.bytes), (vec![PathBuf::from("model.onnx")], 7));
        assert!(!dest.join("extra").exists(), "a file not chosen was written");
        // a limit on what is written does not count the files skipped
        let small = Limits { max_bytes: 100, ..Limits::default() };
        let dest2 = dir.path().join("out2");
        std::fs::create_dir(&dest2).unwrap();
        assert!(unpack_only(&archive, &dest2, small, &|p| p == Path::new("model.onnx")).is_ok());
        let msg = unpack_only(&archive, &dir.path().join("out3"), small, &|_| true).unwrap_err().to_string();
        assert!(msg.contains("exceed the 100 byte limit"), "{msg}");
    }

    #[test]
    fn a_name_given_twice_and_a_damaged_header_are_named() {
        let mut tar = raw_tar("m.onnx", b'0', "", b"a");
        tar.truncate(tar.len() - 1024);
        tar.extend(raw_tar("./m.onnx", b'0', "", b"b"));
        let msg = try_unpack(&tar, false).0.unwrap_err().to_string();
        assert!(msg.contains("entry `./m.onnx` appears twice"), "{msg}");
        let msg = try_unpack(&raw_tar("./", b'0', "", b"x"), false).0.unwrap_err().to_string();
        assert!(msg.contains("named like the archive's top directory"), "{msg}");
        // an end-of-archive block with garbage in its size field
        let mut tar = raw_tar("m.onnx", b'0', "", b"a");
        let end = tar.len() - 1024;
        tar[end + 124..end + 136].copy_from_slice(b"zzzzzzzzzzz\0");
        let sum: u32 = tar[end..end + 512]
            .iter()
            .enumerate()
            .map(|(i, b)| if (148..156).contains(&i) { 32 } else { *b as u32 })
            .sum();
        tar[end + 148..end + 156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        let msg = try_unpack(&tar, false).0.unwrap_err().to_string();
        assert!(msg.contains("corrupt or truncated"), "{msg}");
    }
}
