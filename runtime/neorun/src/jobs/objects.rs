//! Where a job's objects are: a local file or directory (`PATH` or
//! `file://PATH`), or a prefix on an S3-compatible store (`s3://BUCKET/KEY`,
//! with the `s3` feature, through the `object_store` crate).
//!
//! Both directions stream: an input is read through a `Read` that pulls the
//! object's body as it goes, an output is written through a `Write` that
//! uploads parts as they fill (S3 multipart upload), so memory does not grow
//! with the size of an object. An output appears under its final name only
//! when complete: a local file is written under a hidden `.NAME.partial`
//! name and renamed; an S3 object exists only once its upload is completed
//! (an aborted or killed upload never becomes an object).
//!
//! The S3 store is found the way the AWS CLI finds it: `AWS_ENDPOINT_URL`
//! (or `AWS_ENDPOINT_URL_S3`), `AWS_REGION` / `AWS_DEFAULT_REGION`, the
//! credentials in `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` /
//! `AWS_SESSION_TOKEN`, and where those are not set, the profile
//! (`AWS_PROFILE`, else `default`) in `~/.aws/credentials` and
//! `~/.aws/config` (`AWS_SHARED_CREDENTIALS_FILE`, `AWS_CONFIG_FILE`).
//! Requests are path-style (`http://HOST/BUCKET/KEY`), as local stores
//! (MinIO, Ceph RGW, SeaweedFS, moto) need and AWS S3 still accepts.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// One input object.
#[derive(Clone, Debug)]
pub struct Object {
    /// Its name under the input, `/`-separated; the output is `<rel>.out`.
    pub rel: String,
    /// The local path, or the S3 key.
    pub key: String,
    pub size: u64,
    /// What changes when the object does: the modification time of a file,
    /// the ETag of an S3 object.
    pub version: String,
}

/// An input or output location.
pub enum Place {
    Local(PathBuf),
    #[cfg(feature = "s3")]
    S3(super::s3::S3Place),
}

/// Reads the location from `PATH`, `file://PATH` or `s3://BUCKET/KEY`.
/// `rt` runs the S3 client (its requests are async).
pub fn place(loc: &str, rt: Option<&tokio::runtime::Handle>) -> Result<Place, String> {
    if let Some(rest) = loc.strip_prefix("s3://") {
        #[cfg(feature = "s3")]
        {
            let rt = rt.ok_or("s3:// needs the job's runtime (internal)")?;
            return super::s3::S3Place::new(rest, rt.clone()).map(Place::S3);
        }
        #[cfg(not(feature = "s3"))]
        {
            let _ = (rest, rt);
            return Err(format!(
                "{loc}: this neorun was built without S3 support (the `s3` feature); use a local path"
            ));
        }
    }
    if loc.contains("://") && !loc.starts_with("file://") {
        return Err(format!("{loc}: unknown scheme; use a local path, file://PATH or s3://BUCKET/PREFIX"));
    }
    let path = loc.strip_prefix("file://").unwrap_or(loc);
    if path.is_empty() {
        return Err("an empty location; use a local path, file://PATH or s3://BUCKET/PREFIX".into());
    }
    Ok(Place::Local(PathBuf::from(path)))
}

impl Place {
    /// The location of `rel` under this place, as a user would write it.
    pub fn show(&self, rel: &str) -> String {
        match self {
            Place::Local(p) => p.join(rel).display().to_string(),
            #[cfg(feature = "s3")]
            Place::S3(s) => s.uri(rel),
        }
    }

    /// An input object, as a user would write it.
    pub fn show_object(&self, o: &Object) -> String {
        match self {
            Place::Local(_) => o.key.clone(),
            #[cfg(feature = "s3")]
            Place::S3(s) => s.uri_of_key(&o.key),
        }
    }

    /// The place itself, as a user wrote it.
    pub fn show_root(&self) -> String {
        match self {
            Place::Local(p) => p.display().to_string(),
            #[cfg(feature = "s3")]
            Place::S3(s) => s.uri(""),
        }
    }

    /// Every object under this input: a file, every file under a directory
    /// (walked in name order), or every object whose key starts with the
    /// S3 prefix (named relative to the prefix's last `/`). An input with
    /// no object is an error.
    pub fn list_inputs(&self) -> Result<Vec<Object>, String> {
        let objects = match self {
            Place::Local(p) => list_local(p)?,
            #[cfg(feature = "s3")]
            Place::S3(s) => s.list_inputs()?,
        };
        if objects.is_empty() {
            return Err(format!("input {}: no object to transform there", self.show_root()));
        }
        Ok(objects)
    }

    /// Opens an input object for streaming.
    pub fn open(&self, o: &Object) -> Result<Box<dyn Read + Send>, String> {
        match self {
            Place::Local(_) => {
                File::open(&o.key).map(|f| Box::new(f) as Box<dyn Read + Send>).map_err(|e| format!("{}: {e}", o.key))
            }
            #[cfg(feature = "s3")]
            Place::S3(s) => s.open(&o.key),
        }
    }

    /// The outputs already there, by name relative to this place, with
    /// their sizes.
    pub fn existing(&self) -> Result<BTreeMap<String, u64>, String> {
        match self {
            Place::Local(p) => {
                let mut out = BTreeMap::new();
                if p.exists() {
                    for o in list_local(p)? {
                        out.insert(o.rel, o.size);
                    }
                }
                Ok(out)
            }
            #[cfg(feature = "s3")]
            Place::S3(s) => s.existing(),
        }
    }

    /// Whether the object `rel` is there.
    pub fn exists(&self, rel: &str) -> Result<bool, String> {
        self.size(rel).map(|s| s.is_some())
    }

    /// The size of the object `rel`, if it is there.
    pub fn size(&self, rel: &str) -> Result<Option<u64>, String> {
        match self {
            Place::Local(p) => match std::fs::metadata(p.join(rel)) {
                Ok(m) if m.is_file() => Ok(Some(m.len())),
                Ok(_) => Ok(None),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(format!("{}: {e}", p.join(rel).display())),
            },
            #[cfg(feature = "s3")]
            Place::S3(s) => s.size(rel),
        }
    }

    /// Makes sure outputs can be written here: a local directory is
    /// created. An S3 prefix needs nothing made; whether its bucket is
    /// reachable with these credentials shows at the job's first read of
    /// it (its state object, then the listing of its outputs).
    pub fn prepare_output(&self) -> Result<(), String> {
        match self {
            Place::Local(p) => std::fs::create_dir_all(p).map_err(|e| format!("output {}: {e}", p.display())),
            #[cfg(feature = "s3")]
            Place::S3(_) => Ok(()),
        }
    }

    /// A writer for the output `rel`, seen under that name only after
    /// `commit`.
    pub fn create(&self, rel: &str) -> Result<Output, String> {
        match self {
            Place::Local(p) => {
                let fin = p.join(rel);
                if let Some(dir) = fin.parent() {
                    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
                }
                let tmp = partial_path(&fin);
                let file = File::create(&tmp).map_err(|e| format!("{}: {e}", tmp.display()))?;
                Ok(Output::File { w: std::io::BufWriter::with_capacity(1 << 16, file), tmp, fin })
            }
            #[cfg(feature = "s3")]
            Place::S3(s) => Ok(Output::S3(s.create(rel))),
        }
    }

    /// A small object (the job's records), whole; `None` when absent.
    pub fn get(&self, rel: &str) -> Result<Option<Vec<u8>>, String> {
        match self {
            Place::Local(p) => match std::fs::read(p.join(rel)) {
                Ok(b) => Ok(Some(b)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(format!("{}: {e}", p.join(rel).display())),
            },
            #[cfg(feature = "s3")]
            Place::S3(s) => s.get(rel),
        }
    }

    /// Writes a small object whole, replacing it atomically.
    pub fn put(&self, rel: &str, bytes: &[u8]) -> Result<(), String> {
        let mut w = self.create(rel)?;
        w.write_all(bytes).map_err(|e| format!("writing {}: {e}", self.show(rel)))?;
        w.commit()
    }

    /// Removes an object; absent is fine.
    pub fn remove(&self, rel: &str) -> Result<(), String> {
        match self {
            Place::Local(p) => match std::fs::remove_file(p.join(rel)) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(format!("{}: {e}", p.join(rel).display())),
                _ => Ok(()),
            },
            #[cfg(feature = "s3")]
            Place::S3(s) => s.remove(rel),
        }
    }

    /// Holds a local output directory for one job at a time (an flock on
    /// `.neorun-batch.lock`). S3 has no lock: two jobs must not share an
    /// output prefix (as with SageMaker).
    pub fn lock(&self) -> Result<Option<File>, String> {
        use std::os::fd::AsRawFd;
        // (one arm without the s3 feature)
        #[allow(clippy::infallible_destructuring_match)]
        let p = match self {
            Place::Local(p) => p,
            #[cfg(feature = "s3")]
            Place::S3(_) => return Ok(None),
        };
        let lock = p.join(".neorun-batch.lock");
        let f = File::create(&lock).map_err(|e| format!("{}: {e}", lock.display()))?;
        // SAFETY: flock on a descriptor this function owns
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            return Err(format!(
                "another batch job is writing to {}; wait for it, or choose another output",
                p.display()
            ));
        }
        Ok(Some(f))
    }

    /// Whether `other` (an output) lies inside this input, where outputs
    /// would be read back as inputs.
    pub fn contains(&self, other: &Place) -> bool {
        match (self, other) {
            (Place::Local(i), Place::Local(o)) => {
                let Ok(i) = std::fs::canonicalize(i) else { return false };
                if !i.is_dir() {
                    return false;
                }
                let o = std::path::absolute(o).unwrap_or_else(|_| o.clone());
                let o = std::fs::canonicalize(&o).unwrap_or(o);
                o.starts_with(&i)
            }
            #[cfg(feature = "s3")]
            (Place::S3(i), Place::S3(o)) => i.contains(o),
            #[cfg(feature = "s3")]
            _ => false,
        }
    }
}

fn partial_path(fin: &Path) -> PathBuf {
    let name = fin.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
    fin.with_file_name(format!(".{name}.partial"))
}

fn list_local(input: &Path) -> Result<Vec<Object>, String> {
    let meta = std::fs::metadata(input).map_err(|e| format!("input {}: {e}", input.display()))?;
    let mut out = Vec::new();
    if meta.is_file() {
        let rel = input.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_else(|| "input".into());
        out.push(local_object(rel, input, &meta));
        return Ok(out);
    }
    fn walk(dir: &Path, rel: &str, depth: usize, out: &mut Vec<Object>) -> Result<(), String> {
        if depth > 32 {
            return Err(format!("{}: directories nested more than 32 deep", dir.display()));
        }
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .map_err(|e| format!("{}: {e}", dir.display()))?
            .collect::<Result<_, _>>()
            .map_err(|e| format!("{}: {e}", dir.display()))?;
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let name = e.file_name().to_string_lossy().to_string();
            let path = e.path();
            let meta = std::fs::metadata(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            let r = if rel.is_empty() { name } else { format!("{rel}/{name}") };
            if meta.is_dir() {
                walk(&path, &r, depth + 1, out)?;
            } else if meta.is_file() {
                out.push(local_object(r, &path, &meta));
            }
        }
        Ok(())
    }
    walk(input, "", 0, &mut out)?;
    Ok(out)
}

fn local_object(rel: String, path: &Path, meta: &std::fs::Metadata) -> Object {
    let mtime_ns = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    Object { rel, key: path.display().to_string(), size: meta.len(), version: format!("mtime:{mtime_ns}") }
}

/// What to check, after an S3 client's error text (a `hint:` line, or
/// nothing).
pub fn store_hint(text: &str) -> &'static str {
    if text.contains("403")
        || text.contains("AccessDenied")
        || text.contains("Forbidden")
        || text.contains("InvalidAccessKeyId")
    {
        "\nhint: the credentials may not read or write this bucket (AWS_ACCESS_KEY_ID, AWS_PROFILE)"
    } else if text.contains("NoSuchBucket") {
        "\nhint: the bucket does not exist on this store (AWS_ENDPOINT_URL)"
    } else if text.contains("error sending request") || text.contains("onnection") {
        "\nhint: the store did not answer; check AWS_ENDPOINT_URL and that the store is running"
    } else {
        ""
    }
}

/// An output being written; under its final name only after `commit`.
pub enum Output {
    File {
        w: std::io::BufWriter<File>,
        tmp: PathBuf,
        fin: PathBuf,
    },
    #[cfg(feature = "s3")]
    S3(super::s3::Upload),
}

impl Write for Output {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Output::File { w, .. } => w.write(buf),
            #[cfg(feature = "s3")]
            Output::S3(u) => u.write(buf),
        }
    }

    fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        match self {
            Output::File { w, .. } => w.write_all(buf),
            #[cfg(feature = "s3")]
            Output::S3(u) => u.write_all(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Output::File { w, .. } => w.flush(),
            #[cfg(feature = "s3")]
            Output::S3(u) => u.flush(),
        }
    }
}

impl Output {
    /// Makes the output final: a file flushed, synced and renamed (and its
    /// directory synced); an upload completed.
    pub fn commit(self) -> Result<(), String> {
        match self {
            Output::File { mut w, tmp, fin } => {
                let io = |e: std::io::Error| format!("writing {}: {e}", fin.display());
                let done = w.flush().and_then(|_| w.get_ref().sync_all());
                if let Err(e) = done {
                    drop(w);
                    let _ = std::fs::remove_file(&tmp);
                    return Err(io(e));
                }
                drop(w);
                if let Err(e) = std::fs::rename(&tmp, &fin) {
                    let _ = std::fs::remove_file(&tmp);
                    return Err(io(e));
                }
                if let Some(dir) = fin.parent() {
                    let _ = File::open(dir).and_then(|d| d.sync_all());
                }
                Ok(())
            }
            #[cfg(feature = "s3")]
            Output::S3(u) => u.commit(),
        }
    }

    /// Drops what was written: nothing appears under the final name.
    pub fn abort(self) {
        match self {
            Output::File { w, tmp, .. } => {
                drop(w);
                let _ = std::fs::remove_file(&tmp);
            }
            #[cfg(feature = "s3")]
            Output::S3(u) => u.abort(),
        }
    }
}

/// The job's tokio runtime for S3 (its client is async); `None` when no
/// location needs one.
pub fn runtime_for(locations: &[&str]) -> Result<Option<tokio::runtime::Runtime>, String> {
    if !locations.iter().any(|l| l.starts_with("s3://")) {
        return Ok(None);
    }
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("neorun-s3")
        .enable_all()
        .build()
        .map(Some)
        .map_err(|e| format!("starting the S3 client's runtime: {e}"))
}
