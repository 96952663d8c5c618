//! Data capture as SageMaker writes it: one JSON object per line,
//! `captureData.endpointInput` / `endpointOutput` and `eventMetadata`, in
//! files under `DIR/{EndpointName}/{VariantName}/yyyy/mm/dd/hh/` (UTC hours)
//! named `{MM-SS-mmm}-{uuid}.jsonl`, so a team's monitoring jobs read
//! neorun's records as they read SageMaker's.
//!
//! (Over 600 lines by its tests: about 140 lines at the bottom write real
//! files and read them back.)
//!
//! Off the request path and bounded: a request hands its record (the body
//! and answer bytes, shared, not copied) to a channel with `try_send` and
//! goes on; one writer thread encodes and writes. What is waiting is bounded
//! in records and in bytes; a record that does not fit, that arrives while
//! the disk is over its high-water mark, or that cannot be written is
//! counted in `neorun_capture_dropped_total{reason}`, never lost silently.
//! Above the high-water mark capture pauses (`neorun_capture_paused` is 1)
//! and resumes by itself when space comes back. Files rotate on the hour,
//! after `rotate_after` and at `max_file_bytes`; everything is flushed when
//! the channel runs dry and on shutdown (`Capture::close`).

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use axum::body::Bytes;
use base64::Engine as _;
use chrono::{DateTime, Utc};

use crate::metrics::CaptureMetrics;

/// How often the writer looks for records: what a record may wait before
/// it is written (and what capture adds to shutdown).
const POLL: Duration = Duration::from_millis(5);

/// How capture writes, for the whole server.
#[derive(Clone, Debug)]
pub struct CaptureSettings {
    /// Records waiting for the writer, at most.
    pub max_pending_records: usize,
    /// Bytes of bodies and answers waiting for the writer, at most.
    pub max_pending_bytes: usize,
    /// A file is closed and a new one started after this long.
    pub rotate_after: Duration,
    /// ... or once it is this large.
    pub max_file_bytes: u64,
    /// Capture pauses while the destination's file system is fuller than
    /// this (a fraction: 0.9 = 90% used).
    pub disk_high_water: f64,
}

impl Default for CaptureSettings {
    fn default() -> Self {
        CaptureSettings {
            max_pending_records: 16_384,
            max_pending_bytes: 64 << 20,
            rotate_after: Duration::from_secs(300),
            max_file_bytes: 64 << 20,
            disk_high_water: 0.9,
        }
    }
}

/// What an endpoint captures (its `DataCaptureConfig`, resolved).
#[derive(Debug)]
pub struct CaptureSpec {
    pub dir: PathBuf,
    /// 0..=100.
    pub sampling_percentage: u32,
    pub input: bool,
    pub output: bool,
    /// Content types written as text with encoding `CSV` / `JSON`; any
    /// other is written as `BASE64` (SageMaker's default with none listed).
    pub csv_types: Vec<String>,
    pub json_types: Vec<String>,
    /// Set by the writer while the destination is over the high-water mark.
    paused: AtomicBool,
}

impl CaptureSpec {
    pub fn new(
        dir: PathBuf,
        sampling_percentage: u32,
        input: bool,
        output: bool,
        csv_types: Vec<String>,
        json_types: Vec<String>,
    ) -> CaptureSpec {
        CaptureSpec { dir, sampling_percentage, input, output, csv_types, json_types, paused: AtomicBool::new(false) }
    }

    /// Whether this request is captured (one draw per request).
    pub fn sampled(&self) -> bool {
        self.sampling_percentage >= 100 || fastrand::u32(0..100) < self.sampling_percentage
    }

    fn encoding(&self, content_type: &str) -> &'static str {
        let base = content_type.split(';').next().unwrap_or("").trim();
        let listed =
            |l: &[String]| l.iter().any(|t| t.split(';').next().unwrap_or("").trim().eq_ignore_ascii_case(base));
        if listed(&self.csv_types) {
            "CSV"
        } else if listed(&self.json_types) {
            "JSON"
        } else {
            "BASE64"
        }
    }
}

/// Checks that capture can write under `dir` (creating it): the check
/// endpoint creation makes, so an unwritable destination fails the call
/// instead of every record later.
pub fn check_writable(dir: &Path) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let probe = dir.join(format!(".neorun-probe-{}", uuid::Uuid::new_v4()));
    File::create(&probe).map_err(|e| format!("cannot write in {}: {e}", dir.display()))?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

/// A body or an answer.
#[derive(Debug)]
pub struct Payload {
    pub content_type: String,
    pub data: Bytes,
}

/// One request's record.
#[derive(Debug)]
pub struct Record {
    pub spec: Arc<CaptureSpec>,
    pub endpoint: Arc<str>,
    pub variant: Arc<str>,
    pub input: Option<Payload>,
    pub output: Option<Payload>,
    pub inference_id: Option<String>,
    pub custom_attributes: Option<String>,
    pub time: SystemTime,
}

impl Record {
    fn bytes(&self) -> usize {
        self.input.as_ref().map_or(0, |p| p.data.len()) + self.output.as_ref().map_or(0, |p| p.data.len())
    }

    /// The JSON line, with the documented field names (serialized from
    /// borrowed parts: the body and answer are not copied on the way).
    fn to_line(&self) -> serde_json::Result<Vec<u8>> {
        fn payload<'p>(spec: &CaptureSpec, p: &'p Payload, mode: &'static str) -> Io<'p> {
            let encoding = spec.encoding(&p.content_type);
            let data = match encoding {
                "BASE64" => std::borrow::Cow::Owned(base64::engine::general_purpose::STANDARD.encode(&p.data)),
                _ => String::from_utf8_lossy(&p.data),
            };
            Io { observed_content_type: &p.content_type, mode, data, encoding }
        }
        let t: DateTime<Utc> = self.time.into();
        let line = Line {
            capture_data: CaptureData {
                endpoint_input: self.input.as_ref().map(|p| payload(&self.spec, p, "INPUT")),
                endpoint_output: self.output.as_ref().map(|p| payload(&self.spec, p, "OUTPUT")),
            },
            event_metadata: Meta {
                event_id: event_id(),
                inference_id: self.inference_id.as_deref(),
                custom_attributes: self.custom_attributes.as_deref(),
                inference_time: t.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
            },
            event_version: "0",
        };
        let mut out = serde_json::to_vec(&line)?;
        out.push(b'\n');
        Ok(out)
    }
}

/// A random (version 4) UUID from a fast non-cryptographic generator: an
/// event id must be unique, not secret, and a system call per record was
/// measurable.
fn event_id() -> String {
    let bytes = fastrand::u128(..).to_le_bytes();
    uuid::Builder::from_random_bytes(bytes).into_uuid().to_string()
}

#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct Line<'a> {
    capture_data: CaptureData<'a>,
    event_metadata: Meta<'a>,
    event_version: &'static str,
}

#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct CaptureData<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    endpoint_input: Option<Io<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    endpoint_output: Option<Io<'a>>,
}

#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct Io<'a> {
    observed_content_type: &'a str,
    mode: &'static str,
    data: std::borrow::Cow<'a, str>,
    encoding: &'static str,
}

#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct Meta<'a> {
    event_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    inference_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    custom_attributes: Option<&'a str>,
    inference_time: String,
}

enum Msg {
    Record(Record),
}

/// The capture writer's handle: cheap to clone, never blocks.
#[derive(Clone)]
pub struct Capture {
    tx: Arc<Mutex<Option<SyncSender<Msg>>>>,
    pending: Arc<AtomicUsize>,
    settings: CaptureSettings,
    metrics: CaptureMetrics,
    /// Destinations seen, so the writer can re-check a paused one's disk.
    specs: Arc<Mutex<Vec<std::sync::Weak<CaptureSpec>>>>,
    writer: Arc<Mutex<Option<std::thread::JoinHandle<()>>>>,
}

impl Capture {
    pub fn start(settings: CaptureSettings, metrics: CaptureMetrics) -> Capture {
        let (tx, rx) = std::sync::mpsc::sync_channel(settings.max_pending_records.max(1));
        let pending = Arc::new(AtomicUsize::new(0));
        let specs = Arc::new(Mutex::new(Vec::new()));
        let w = Writer {
            rx,
            pending: pending.clone(),
            settings: settings.clone(),
            metrics: metrics.clone(),
            specs: specs.clone(),
            files: HashMap::new(),
            last_check: Instant::now(),
        };
        let handle = std::thread::Builder::new()
            .name("neorun-capture".into())
            .spawn(move || w.run())
            .expect("starting the capture writer thread");
        Capture {
            tx: Arc::new(Mutex::new(Some(tx))),
            pending,
            settings,
            metrics,
            specs,
            writer: Arc::new(Mutex::new(Some(handle))),
        }
    }

    /// Registers a destination (so its disk is watched) and returns it.
    pub fn spec(&self, spec: CaptureSpec) -> Arc<CaptureSpec> {
        let spec = Arc::new(spec);
        let mut specs = self.specs.lock().unwrap_or_else(|e| e.into_inner());
        specs.retain(|w| w.strong_count() > 0);
        specs.push(Arc::downgrade(&spec));
        spec
    }

    /// Hands a record to the writer, or counts why it could not.
    pub fn submit(&self, r: Record) {
        if r.spec.paused.load(Ordering::Relaxed) {
            self.metrics.dropped("disk_high_water");
            return;
        }
        let size = r.bytes();
        let before = self.pending.fetch_add(size, Ordering::Relaxed);
        if before + size > self.settings.max_pending_bytes {
            self.pending.fetch_sub(size, Ordering::Relaxed);
            self.metrics.dropped("queue_full");
            return;
        }
        let tx = self.tx.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let Some(tx) = tx else {
            self.pending.fetch_sub(size, Ordering::Relaxed);
            self.metrics.dropped("shutting_down");
            return;
        };
        match tx.try_send(Msg::Record(r)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                self.pending.fetch_sub(size, Ordering::Relaxed);
                self.metrics.dropped("queue_full");
            }
            Err(TrySendError::Disconnected(_)) => {
                self.pending.fetch_sub(size, Ordering::Relaxed);
                self.metrics.dropped("shutting_down");
            }
        }
    }

    /// Stops taking records, writes and flushes the rest, closes the files.
    pub fn close(&self) {
        self.tx.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(h) = self.writer.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = h.join();
        }
    }
}

struct OpenFile {
    out: BufWriter<File>,
    path: PathBuf,
    opened: Instant,
    /// `yyyy/mm/dd/hh` it belongs to.
    hour: String,
    bytes: u64,
}

struct Writer {
    rx: Receiver<Msg>,
    pending: Arc<AtomicUsize>,
    settings: CaptureSettings,
    metrics: CaptureMetrics,
    specs: Arc<Mutex<Vec<std::sync::Weak<CaptureSpec>>>>,
    /// By (directory, endpoint, variant).
    files: HashMap<(PathBuf, Arc<str>, Arc<str>), OpenFile>,
    last_check: Instant,
}

impl Writer {
    fn run(mut self) {
        // below live traffic (nice 10: about a tenth of a contended CPU),
        // above shadow work; under sustained overload the queue fills and
        // records are dropped and counted rather than slowing requests
        #[cfg(target_os = "linux")]
        // SAFETY: setpriority on this thread's own id; failure leaves it as it was
        unsafe {
            let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
            libc::setpriority(libc::PRIO_PROCESS, tid, 10);
        }
        // the writer polls: a request's send never has to wake it (a
        // wake-up per record cost the request path more than the write)
        loop {
            let mut wrote = false;
            let mut closed = false;
            loop {
                match self.rx.try_recv() {
                    Ok(Msg::Record(r)) => {
                        self.write(r);
                        wrote = true;
                    }
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        closed = true;
                        break;
                    }
                }
            }
            if wrote {
                self.flush_all();
            }
            if closed {
                break;
            }
            if self.last_check.elapsed() >= Duration::from_secs(1) {
                self.last_check = Instant::now();
                self.rotate_old();
                self.check_disks();
            }
            std::thread::sleep(POLL);
        }
        self.flush_all();
        for (_, mut f) in self.files.drain() {
            let _ = f.out.flush();
            let _ = f.out.get_ref().sync_data();
        }
    }

    fn write(&mut self, r: Record) {
        let size = r.bytes();
        let outcome = self.write_one(&r);
        self.pending.fetch_sub(size, Ordering::Relaxed);
        match outcome {
            Ok(()) => self.metrics.written(&r.endpoint, &r.variant),
            Err(e) => {
                self.metrics.dropped("write_error");
                tracing::warn!(endpoint = %r.endpoint, variant = %r.variant, "data capture: a record was not written: {e}");
            }
        }
    }

    fn write_one(&mut self, r: &Record) -> std::io::Result<()> {
        let line = r.to_line().map_err(std::io::Error::other)?;
        let t: DateTime<Utc> = r.time.into();
        let hour = t.format("%Y/%m/%d/%H").to_string();
        let key = (r.spec.dir.clone(), r.endpoint.clone(), r.variant.clone());
        let stale = self.files.get(&key).is_some_and(|f| {
            f.hour != hour
                || f.opened.elapsed() >= self.settings.rotate_after
                || f.bytes + line.len() as u64 > self.settings.max_file_bytes
        });
        if stale {
            if let Some(mut f) = self.files.remove(&key) {
                close_file(&mut f);
            }
        }
        if !self.files.contains_key(&key) {
            let dir = r.spec.dir.join(&*r.endpoint).join(&*r.variant).join(&hour);
            std::fs::create_dir_all(&dir)?;
            let name = format!("{}-{}.jsonl", t.format("%M-%S-%3f"), uuid::Uuid::new_v4());
            let path = dir.join(name);
            let file = std::fs::OpenOptions::new().create_new(true).write(true).open(&path)?;
            self.files.insert(
                key.clone(),
                OpenFile {
                    out: BufWriter::with_capacity(256 << 10, file),
                    path,
                    opened: Instant::now(),
                    hour,
                    bytes: 0,
                },
            );
        }
        let f = self.files.get_mut(&key).expect("opened above");
        f.out.write_all(&line)?;
        f.bytes += line.len() as u64;
        Ok(())
    }

    fn flush_all(&mut self) {
        let mut failed = Vec::new();
        for (k, f) in self.files.iter_mut() {
            if let Err(e) = f.out.flush() {
                tracing::warn!(file = %f.path.display(), "data capture: flushing: {e}");
                failed.push(k.clone());
            }
        }
        for k in failed {
            // what the buffer held is gone with the file: counted once
            self.metrics.dropped("write_error");
            self.files.remove(&k);
        }
    }

    fn rotate_old(&mut self) {
        let after = self.settings.rotate_after;
        let old: Vec<_> =
            self.files.iter().filter(|(_, f)| f.opened.elapsed() >= after).map(|(k, _)| k.clone()).collect();
        for k in old {
            if let Some(mut f) = self.files.remove(&k) {
                close_file(&mut f);
            }
        }
    }

    fn check_disks(&mut self) {
        let specs: Vec<Arc<CaptureSpec>> = {
            let mut s = self.specs.lock().unwrap_or_else(|e| e.into_inner());
            s.retain(|w| w.strong_count() > 0);
            s.iter().filter_map(|w| w.upgrade()).collect()
        };
        let mut paused_any = false;
        for spec in specs {
            let over = disk_used_fraction(&spec.dir).is_some_and(|used| used > self.settings.disk_high_water);
            let was = spec.paused.swap(over, Ordering::Relaxed);
            if over && !was {
                tracing::warn!(dir = %spec.dir.display(), high_water = self.settings.disk_high_water, "data capture paused: the disk is over its high-water mark (records are counted as dropped until space comes back)");
            } else if was && !over {
                tracing::info!(dir = %spec.dir.display(), "data capture resumed");
            }
            paused_any |= over;
        }
        self.metrics.set_paused(paused_any);
    }
}

fn close_file(f: &mut OpenFile) {
    let _ = f.out.flush();
    let _ = f.out.get_ref().sync_data();
}

/// How full the file system holding `dir` is (0..=1), from statvfs.
fn disk_used_fraction(dir: &Path) -> Option<f64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: a NUL-terminated path and a zeroed statvfs the call fills
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 || st.f_blocks == 0 {
        return None;
    }
    // what an unprivileged writer can use: f_bavail, not f_bfree
    let total = st.f_blocks as f64;
    Some(1.0 - st.f_bavail as f64 / total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;
    use serde_json::Value;

    fn spec(dir: &Path, csv: bool) -> CaptureSpec {
        let csv_types = if csv { vec!["text/csv".to_string()] } else { vec![] };
        CaptureSpec::new(dir.to_path_buf(), 100, true, true, csv_types, vec!["application/json".into()])
    }

    fn record(spec: &Arc<CaptureSpec>, variant: &str, input: &str) -> Record {
        Record {
            spec: spec.clone(),
            endpoint: "ep".into(),
            variant: variant.into(),
            input: Some(Payload { content_type: "text/csv".into(), data: Bytes::from(input.to_string()) }),
            output: Some(Payload { content_type: "application/json".into(), data: Bytes::from_static(b"{\"p\":1}") }),
            inference_id: Some("id-1".into()),
            custom_attributes: None,
            time: SystemTime::now(),
        }
    }

    fn lines_under(dir: &Path) -> Vec<(PathBuf, Value)> {
        let mut out = Vec::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    stack.push(p);
                } else {
                    for l in std::fs::read_to_string(&p).unwrap().lines() {
                        out.push((p.clone(), serde_json::from_str(l).unwrap()));
                    }
                }
            }
        }
        out
    }

    #[test]
    fn records_land_in_sagemakers_layout_with_its_fields() {
        let d = tempfile::tempdir().unwrap();
        let m = Metrics::new("v");
        let c = Capture::start(CaptureSettings::default(), m.capture());
        let s = c.spec(spec(d.path(), true));
        c.submit(record(&s, "A", "1,2"));
        c.submit(record(&s, "B", "3,4"));
        c.close();
        let lines = lines_under(d.path());
        assert_eq!(lines.len(), 2);
        for (path, v) in &lines {
            let rel = path.strip_prefix(d.path()).unwrap().to_string_lossy().into_owned();
            let parts: Vec<&str> = rel.split('/').collect();
            assert_eq!(parts.len(), 7, "{rel}");
            assert_eq!(parts[0], "ep");
            assert!(parts[6].ends_with(".jsonl") && parts[6].len() == "MM-SS-mmm-".len() + 36 + 6, "{rel}");
            let input = &v["captureData"]["endpointInput"];
            assert_eq!(input["mode"], "INPUT");
            assert_eq!(input["encoding"], "CSV");
            assert_eq!(input["observedContentType"], "text/csv");
            assert_eq!(v["captureData"]["endpointOutput"]["encoding"], "JSON");
            assert_eq!(v["eventVersion"], "0");
            assert_eq!(v["eventMetadata"]["inferenceId"], "id-1");
            assert_eq!(v["eventMetadata"]["eventId"].as_str().unwrap().len(), 36);
            assert!(v["eventMetadata"]["inferenceTime"].as_str().unwrap().ends_with('Z'));
        }
        assert!(m.render().contains("neorun_capture_records_total{endpoint_name=\"ep\",variant_name=\"A\"} 1"));
    }

    #[test]
    fn unlisted_content_types_are_base64_and_a_full_queue_is_counted() {
        let d = tempfile::tempdir().unwrap();
        let m = Metrics::new("v");
        let settings = CaptureSettings { max_pending_bytes: 10, ..CaptureSettings::default() };
        let c = Capture::start(settings, m.capture());
        let s = c.spec(spec(d.path(), false));
        let mut r = record(&s, "A", "1,2");
        r.output = None;
        c.submit(r);
        // larger than what may wait: dropped, counted
        c.submit(record(&s, "A", "a body far over ten bytes"));
        c.close();
        let lines = lines_under(d.path());
        assert_eq!(lines.len(), 1);
        let input = &lines[0].1["captureData"]["endpointInput"];
        assert_eq!(input["encoding"], "BASE64");
        assert_eq!(input["data"], "MSwy");
        assert!(lines[0].1["captureData"].get("endpointOutput").is_none());
        assert!(m.render().contains("neorun_capture_dropped_total{reason=\"queue_full\"} 1"), "{}", m.render());
    }

    #[test]
    fn files_rotate_at_their_size_limit_and_every_record_is_kept() {
        let d = tempfile::tempdir().unwrap();
        let m = Metrics::new("v");
        let settings = CaptureSettings { max_file_bytes: 1000, ..CaptureSettings::default() };
        let c = Capture::start(settings, m.capture());
        let s = c.spec(spec(d.path(), true));
        for i in 0..20 {
            c.submit(record(&s, "A", &format!("{i},{i}")));
        }
        c.close();
        let lines = lines_under(d.path());
        assert_eq!(lines.len(), 20);
        let files: std::collections::BTreeSet<_> = lines.iter().map(|(p, _)| p.clone()).collect();
        assert!(files.len() > 2, "{} files for 20 records of ~300 bytes at a 1000-byte limit", files.len());
        for f in &files {
            assert!(std::fs::metadata(f).unwrap().len() <= 1000);
        }
        let mut inputs: Vec<String> = lines
            .iter()
            .map(|(_, v)| v["captureData"]["endpointInput"]["data"].as_str().unwrap().to_string())
            .collect();
        inputs.sort();
        let mut want: Vec<String> = (0..20).map(|i| format!("{i},{i}")).collect();
        want.sort();
        assert_eq!(inputs, want);
    }

    #[test]
    fn a_destination_over_the_high_water_mark_pauses_and_counts() {
        let d = tempfile::tempdir().unwrap();
        let m = Metrics::new("v");
        // any real disk is more than 0% full
        let settings = CaptureSettings { disk_high_water: 0.0, ..CaptureSettings::default() };
        let c = Capture::start(settings, m.capture());
        let s = c.spec(spec(d.path(), true));
        let t0 = Instant::now();
        while !s.paused.load(Ordering::Relaxed) {
            assert!(t0.elapsed() < Duration::from_secs(10), "never paused");
            std::thread::sleep(Duration::from_millis(50));
        }
        c.submit(record(&s, "A", "1,2"));
        c.close();
        assert!(lines_under(d.path()).is_empty());
        let text = m.render();
        assert!(text.contains("neorun_capture_dropped_total{reason=\"disk_high_water\"} 1"), "{text}");
        assert!(text.contains("neorun_capture_paused 1"), "{text}");
    }
}
