//! Batch transform with SageMaker's semantics (`CreateTransformJob`'s
//! `TransformInput`, `TransformOutput`, `BatchStrategy`, `MaxPayloadInMB`,
//! `MaxConcurrentTransforms` and `DataProcessing`), over local files.
//!
//! (Over 600 lines because one pipeline — reader, workers, ordered writer,
//! the job record — shares its message types and its halt and failure
//! flags; the record-level transforms (filters, join, the re-run that names
//! the failing line) are the rest, with their unit tests. Splitting the
//! stages apart would spread one set of ordering and cleanup invariants
//! over several files.)
//!
//! Every object (file) under the input is transformed into `<object>.out`
//! under the output directory, one line per input record, in input order.
//! One reader thread splits objects into runs of records (mini-batches), a
//! pool of workers transforms them (parallel within an object and across
//! objects), and the calling thread puts the answers back in order and
//! writes them. Records in flight are bounded, so memory does not grow
//! with the size of an object.
//!
//! Outputs are written under a temporary name and renamed when complete;
//! the job's state file (`.neorun-batch.json` in the output directory)
//! records each completed output with the input it came from, so a job run
//! again skips what is complete, redoes what is not, and refuses to
//! overwrite files it did not write.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Read, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{channel, sync_channel, Receiver, Sender};
use std::sync::Mutex;

use neoc_runtime::codec::{self, Format};
use neoc_runtime::{Model, PredictError};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

pub use super::jsonpath::JsonPath;
use super::objects::{Object, Output, Place};

/// The content type of the input objects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InFormat {
    Csv,
    JsonLines,
    /// One JSON document per object (`SplitType None` only).
    Json,
    /// One `.npy` array per object (`SplitType None` only).
    Npy,
}

/// The `Accept` of the output.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutFormat {
    Csv,
    JsonLines,
    /// Split input: one JSON object per record and line (as JSON Lines);
    /// whole objects: the JSON response.
    Json,
}

impl InFormat {
    pub fn parse(s: &str) -> Option<InFormat> {
        match s.split(';').next().unwrap_or("").trim().to_ascii_lowercase().as_str() {
            "csv" | "text/csv" => Some(InFormat::Csv),
            "jsonlines" | "jsonl" | "application/jsonlines" | "application/x-jsonlines" => Some(InFormat::JsonLines),
            "json" | "application/json" => Some(InFormat::Json),
            "npy" | "application/x-npy" => Some(InFormat::Npy),
            _ => None,
        }
    }
}

impl InFormat {
    /// The content type of requests in this format.
    #[cfg_attr(not(feature = "s3"), allow(dead_code))]
    pub fn mime(self) -> &'static str {
        match self {
            InFormat::Csv => "text/csv",
            InFormat::JsonLines => "application/jsonlines",
            InFormat::Json => "application/json",
            InFormat::Npy => "application/x-npy",
        }
    }

    /// The output format when no `Accept` is given.
    pub fn default_accept(self) -> OutFormat {
        match self {
            InFormat::Csv => OutFormat::Csv,
            InFormat::JsonLines => OutFormat::JsonLines,
            InFormat::Json | InFormat::Npy => OutFormat::Json,
        }
    }
}

/// The content type the object names suggest (`.gz` aside) when none is
/// given: JSON Lines, JSON or `.npy` when every object says so, else CSV.
pub fn guess_format(objects: &[Object], split_line: bool) -> InFormat {
    let ext = |rel: &str| {
        let r = rel.strip_suffix(".gz").unwrap_or(rel);
        r.rsplit_once('.').map(|(_, e)| e.to_ascii_lowercase()).unwrap_or_default()
    };
    let exts: std::collections::BTreeSet<String> = objects.iter().map(|o| ext(&o.rel)).collect();
    match exts.iter().next().map(String::as_str) {
        Some("jsonl" | "jsonlines") if exts.len() == 1 => InFormat::JsonLines,
        Some("json") if exts.len() == 1 => {
            if split_line {
                InFormat::JsonLines
            } else {
                InFormat::Json
            }
        }
        Some("npy") if exts.len() == 1 && !split_line => InFormat::Npy,
        _ => InFormat::Csv,
    }
}

impl OutFormat {
    /// The content type of answers in this format.
    #[cfg_attr(not(feature = "s3"), allow(dead_code))]
    pub fn mime(self) -> &'static str {
        match self {
            OutFormat::Csv => "text/csv",
            OutFormat::JsonLines => "application/jsonlines",
            OutFormat::Json => "application/json",
        }
    }

    pub fn parse(s: &str) -> Option<OutFormat> {
        match s.split(';').next().unwrap_or("").trim().to_ascii_lowercase().as_str() {
            "csv" | "text/csv" => Some(OutFormat::Csv),
            "jsonlines" | "jsonl" | "application/jsonlines" | "application/x-jsonlines" => Some(OutFormat::JsonLines),
            "json" | "application/json" => Some(OutFormat::Json),
            _ => None,
        }
    }
}

/// What one job does, in SageMaker's terms.
#[derive(Clone, Debug)]
pub struct Spec {
    pub content_type: InFormat,
    pub accept: OutFormat,
    /// `CompressionType: Gzip`: every input object is gzip-compressed.
    pub gzip: bool,
    /// `SplitType: Line` (else `None`: each object is one request).
    pub split_line: bool,
    /// `BatchStrategy: MultiRecord` (else `SingleRecord`).
    pub multi_record: bool,
    /// `MaxPayloadInMB` in bytes; `None` for 0 (no limit).
    pub max_payload: Option<usize>,
    /// At most this many records in one model run.
    pub max_records: usize,
    /// `MaxConcurrentTransforms`: model runs at once.
    pub workers: usize,
    /// The workers yield to everything else (`SCHED_IDLE`): a job inside
    /// a server never slows its live traffic.
    pub background: bool,
    /// `AssembleWith: Line`: each record's answer ends with a newline.
    pub assemble_line: bool,
    pub input_filter: Option<JsonPath>,
    /// `JoinSource: Input`.
    pub join_input: bool,
    pub output_filter: Option<JsonPath>,
    /// Records the model cannot take are reported and answered with an
    /// empty line instead of failing the job.
    pub skip_malformed: bool,
    /// A resumable job: complete outputs are recorded in the output's
    /// `.neorun-batch.json` (and kept by a run again), outputs it did not
    /// write are refused, a local output is locked. Off for one-off
    /// transforms (an asynchronous invocation), whose output name is new.
    pub record: bool,
    /// Appended to an object's name to name its output (`.out`).
    pub out_suffix: &'static str,
}

impl Spec {
    /// Refuses combinations SageMaker refuses or that have no meaning.
    pub fn check(&self) -> Result<(), String> {
        if !self.split_line && (self.input_filter.is_some() || self.join_input || self.output_filter.is_some()) {
            return Err("InputFilter, JoinSource and OutputFilter apply to records: they need SplitType Line".into());
        }
        if self.split_line && matches!(self.content_type, InFormat::Json | InFormat::Npy) {
            return Err(format!(
                "content type {:?} is one document per object: use SplitType None, or text/csv / application/jsonlines for records split by line",
                self.content_type
            ));
        }
        if self.join_input {
            let same = matches!(
                (self.content_type, self.accept),
                (InFormat::Csv, OutFormat::Csv) | (InFormat::JsonLines, OutFormat::JsonLines | OutFormat::Json)
            );
            if !same {
                return Err("JoinSource Input writes each input record with its answer, so Accept must be the input's format (text/csv for CSV input, application/jsonlines for JSON Lines)".into());
            }
        }
        if let Some(m) = self.max_payload {
            if m > 100 << 20 {
                return Err("MaxPayloadInMB is at most 100 (SageMaker's limit)".into());
            }
        }
        if self.workers == 0 || self.max_records == 0 {
            return Err("MaxConcurrentTransforms and the records per run must be at least 1".into());
        }
        Ok(())
    }
}

/// Live counts, for a progress bar.
#[derive(Default)]
pub struct Progress {
    /// Bytes of input objects read (compressed bytes for gzip).
    pub bytes: AtomicU64,
    /// Records answered.
    pub records: AtomicU64,
}

/// How a job ended.
#[derive(Debug, Default)]
pub struct Summary {
    pub objects: usize,
    /// Objects whose complete output an earlier run of the job had written.
    pub already_done: usize,
    pub records: u64,
    /// Records skipped as malformed (`skip_malformed`), with the reports.
    pub skipped: u64,
    pub reports: Vec<String>,
}

/// Why a job failed.
#[derive(Debug)]
pub enum JobError {
    /// A record the model cannot take (exit 4 on the command line).
    Record(String),
    /// The set-up: flags, files, the output directory, the disk.
    Other(String),
    Stopped,
}

impl std::fmt::Display for JobError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            JobError::Record(m) | JobError::Other(m) => f.write_str(m),
            JobError::Stopped => f.write_str("the job was stopped"),
        }
    }
}

const STATE: &str = ".neorun-batch.json";

/// The name of the output of input `rel`.
pub fn output_name(rel: &str) -> String {
    format!("{rel}.out")
}

fn output_name_of(spec: &Spec, rel: &str) -> String {
    format!("{rel}{}", spec.out_suffix)
}

/// The report of records skipped, beside the output `fin`.
fn report_name(fin: &str) -> String {
    format!("{fin}.errors.jsonl")
}

#[derive(serde::Serialize, serde::Deserialize, Clone, PartialEq, Debug)]
struct Done {
    input_size: u64,
    input_version: String,
    output_size: u64,
    output_sha256: String,
    #[serde(default)]
    skipped: u64,
}

#[derive(serde::Serialize, serde::Deserialize, Default)]
struct State {
    format: u32,
    outputs: BTreeMap<String, Done>,
}

fn read_state(out: &Place) -> Result<State, String> {
    match out.get(STATE)? {
        Some(b) => serde_json::from_slice(&b).map_err(|e| {
            format!(
                "{}: {e}; this job's record of completed outputs is damaged: remove it to redo every object",
                out.show(STATE)
            )
        }),
        None => Ok(State { format: 1, ..Default::default() }),
    }
}

/// Which objects still need transforming: the complete outputs of an
/// earlier run are kept; an output the job did not write is refused.
fn plan(objects: &[Object], out: &Place, state: &State) -> Result<Vec<bool>, String> {
    let existing = out.existing()?;
    let mut todo = Vec::with_capacity(objects.len());
    let mut seen = std::collections::HashSet::new();
    for o in objects {
        let fin = output_name(&o.rel);
        if !seen.insert(fin.clone()) {
            return Err(format!("two inputs would both write {}", out.show(&fin)));
        }
        match (state.outputs.get(&o.rel), existing.get(&fin)) {
            (Some(d), Some(&len)) => {
                let same = d.input_size == o.size && d.input_version == o.version && d.output_size == len;
                todo.push(!same);
            }
            (None, Some(_)) => {
                return Err(format!(
                    "{} exists and this job did not write it; remove it, or choose an empty output location",
                    out.show(&fin)
                ))
            }
            _ => todo.push(true),
        }
    }
    Ok(todo)
}

struct Chunk {
    obj: usize,
    seq: u64,
    buf: Vec<u8>,
    /// (line number, start, end) of each record in `buf`; line 0 is a whole object.
    recs: Vec<(u64, usize, usize)>,
}

enum Msg {
    Answer { obj: usize, seq: u64, bytes: Vec<u8>, records: u64, skipped: Vec<(u64, String)> },
    Failed { error: String, record: bool },
    Ended { obj: usize, chunks: u64 },
}

/// Runs a job to the end: every object whose output is not complete is
/// transformed. `stop` stops it between records (outputs not complete are
/// removed; complete ones stay, so running it again goes on from there).
pub fn run(
    model: &Model,
    spec: &Spec,
    input: &Place,
    objects: &[Object],
    out: &Place,
    progress: &Progress,
    stop: &AtomicBool,
) -> Result<Summary, JobError> {
    spec.check().map_err(JobError::Other)?;
    let (_lock, mut state, todo) = if spec.record {
        out.prepare_output().map_err(JobError::Other)?;
        let lock = out.lock().map_err(JobError::Other)?;
        let state = read_state(out).map_err(JobError::Other)?;
        let todo = plan(objects, out, &state).map_err(JobError::Other)?;
        (lock, Some(state), todo)
    } else {
        (None, None, vec![true; objects.len()])
    };
    let mut summary = Summary { objects: objects.len(), ..Default::default() };
    summary.already_done = todo.iter().filter(|t| !**t).count();
    for (o, t) in objects.iter().zip(&todo) {
        if !*t {
            progress.bytes.fetch_add(o.size, Ordering::Relaxed);
        }
    }
    let names = model.output_names();
    let inflight = 2 * spec.workers + 2;
    let (work_tx, work_rx) = channel::<Chunk>();
    let work_rx = Mutex::new(work_rx);
    let (msg_tx, msg_rx) = channel::<Msg>();
    let (tok_tx, tok_rx) = sync_channel::<()>(inflight);
    let failed = AtomicBool::new(false);
    let halt = || stop.load(Ordering::Relaxed) || failed.load(Ordering::Relaxed);

    let result = std::thread::scope(|s| {
        let reader_tx = msg_tx.clone();
        let halt_r = &halt;
        s.spawn(move || {
            for (i, o) in objects.iter().enumerate() {
                if !todo[i] {
                    continue;
                }
                if halt_r() {
                    break;
                }
                match read_object(input, i, o, spec, &work_tx, &tok_tx, progress, halt_r) {
                    Ok(Some(chunks)) => {
                        let _ = reader_tx.send(Msg::Ended { obj: i, chunks });
                    }
                    Ok(None) => break,
                    Err(error) => {
                        let _ = reader_tx.send(Msg::Failed { error, record: false });
                        break;
                    }
                }
            }
        });
        for _ in 0..spec.workers {
            let tx = msg_tx.clone();
            let (rx, names, halt_w) = (&work_rx, &names, &halt);
            s.spawn(move || {
                if spec.background {
                    crate::infer::spare::lower_priority();
                }
                loop {
                    let next = rx.lock().unwrap_or_else(|p| p.into_inner()).recv();
                    let Ok(chunk) = next else { break };
                    if halt_w() {
                        continue;
                    }
                    let rel = input.show_object(&objects[chunk.obj]);
                    let m = match transform(model, spec, names, &chunk) {
                        Ok((bytes, skipped)) => Msg::Answer {
                            obj: chunk.obj,
                            seq: chunk.seq,
                            bytes,
                            records: chunk.recs.len() as u64,
                            skipped,
                        },
                        Err((0, e)) => Msg::Failed { error: format!("{rel}: {e}"), record: true },
                        Err((line, e)) => Msg::Failed { error: format!("{rel}: line {line}: {e}"), record: true },
                    };
                    if tx.send(m).is_err() {
                        break;
                    }
                }
            });
        }
        drop(msg_tx);
        write_all(objects, out, spec, state.take(), msg_rx, tok_rx, progress, &mut summary, &failed, stop)
    });
    result?;
    if stop.load(Ordering::Relaxed) {
        return Err(JobError::Stopped);
    }
    Ok(summary)
}

/// Reads one object into chunks; `Ok(None)` when the job was halted.
#[allow(clippy::too_many_arguments)]
fn read_object(
    input: &Place,
    obj: usize,
    o: &Object,
    spec: &Spec,
    work: &Sender<Chunk>,
    tokens: &std::sync::mpsc::SyncSender<()>,
    progress: &Progress,
    halt: &dyn Fn() -> bool,
) -> Result<Option<u64>, String> {
    struct Counting<'a, R>(R, &'a AtomicU64);
    impl<R: Read> Read for Counting<'_, R> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = self.0.read(buf)?;
            self.1.fetch_add(n as u64, Ordering::Relaxed);
            Ok(n)
        }
    }
    let name = input.show_object(o);
    let f = input.open(o)?;
    let raw = Counting(f, &progress.bytes);
    let inner: Box<dyn Read + '_> =
        if spec.gzip { Box::new(flate2::read::MultiGzDecoder::new(raw)) } else { Box::new(raw) };
    let mut r = BufReader::with_capacity(1 << 16, inner);
    let io = |e: std::io::Error| {
        if spec.gzip
            && matches!(
                e.kind(),
                std::io::ErrorKind::InvalidInput | std::io::ErrorKind::InvalidData | std::io::ErrorKind::UnexpectedEof
            )
        {
            format!("{}: not a complete gzip stream ({e}); CompressionType Gzip says every input object is gzip", name)
        } else {
            let hint = if name.starts_with("s3://") { super::objects::store_hint(&e.to_string()) } else { "" };
            format!("{name}: reading: {e}{hint}")
        }
    };
    if !spec.gzip && r.fill_buf().map_err(io)?.starts_with(&[0x1f, 0x8b]) {
        return Err(format!(
            "{}: the object is gzip-compressed; pass CompressionType Gzip (--compression-type gzip)",
            name
        ));
    }
    let limit = spec.max_payload.unwrap_or(usize::MAX);
    let send = |c: Chunk| -> bool { tokens.send(()).is_ok() && work.send(c).is_ok() };
    if !spec.split_line {
        let mut buf = Vec::new();
        let cap = spec.max_payload.map(|m| m as u64 + 1).unwrap_or(u64::MAX);
        (&mut r).take(cap).read_to_end(&mut buf).map_err(io)?;
        if buf.len() > limit {
            return Err(format!(
                "{}: the object is over MaxPayloadInMB ({} MB) and SplitType is None; split it by line or raise the limit (at most 100)",
                name,
                limit >> 20
            ));
        }
        let n = buf.len();
        if !send(Chunk { obj, seq: 0, buf, recs: vec![(0, 0, n)] }) {
            return Ok(None);
        }
        return Ok(Some(1));
    }
    let per_run = if spec.multi_record { spec.max_records } else { 1 };
    let mut seq = 0;
    let mut chunk = Chunk { obj, seq, buf: Vec::with_capacity(1 << 16), recs: Vec::new() };
    let mut line_no = 0u64;
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = (&mut r).take(limit as u64 + 2).read_until(b'\n', &mut line).map_err(io)?;
        if n == 0 {
            break;
        }
        line_no += 1;
        if line.last() != Some(&b'\n') && n as u64 == limit as u64 + 2 {
            return Err(format!(
                "{}: line {line_no}: the record is over MaxPayloadInMB ({} MB); raise the limit (at most 100)",
                name,
                limit >> 20
            ));
        }
        while matches!(line.last(), Some(b'\n' | b'\r')) {
            line.pop();
        }
        if line.len() > limit {
            return Err(format!(
                "{}: line {line_no}: the record is {} bytes, over MaxPayloadInMB ({} MB); raise the limit (at most 100)",
                name,
                line.len(),
                limit >> 20
            ));
        }
        if line.iter().all(|b| b.is_ascii_whitespace()) {
            continue;
        }
        if !chunk.recs.is_empty() && (chunk.recs.len() >= per_run || chunk.buf.len() + line.len() + 1 > limit) {
            let next = Chunk { obj, seq: seq + 1, buf: Vec::with_capacity(chunk.buf.capacity()), recs: Vec::new() };
            if halt() || !send(std::mem::replace(&mut chunk, next)) {
                return Ok(None);
            }
            seq += 1;
        }
        let start = chunk.buf.len();
        chunk.buf.extend_from_slice(&line);
        chunk.recs.push((line_no, start, chunk.buf.len()));
        chunk.buf.push(b'\n');
    }
    if chunk.recs.is_empty() {
        return Ok(Some(seq));
    }
    if !send(chunk) {
        return Ok(None);
    }
    Ok(Some(seq + 1))
}

/// Splits a CSV line into its fields, leaving quoted fields as they are.
fn csv_fields(line: &str) -> Vec<&str> {
    let mut fields = Vec::new();
    let (mut start, mut quoted) = (0, false);
    for (i, c) in line.char_indices() {
        match c {
            '"' => quoted = !quoted,
            ',' if !quoted => {
                fields.push(&line[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    fields.push(&line[start..]);
    fields
}

fn predict_error(e: PredictError) -> String {
    match e {
        PredictError::BadRequest(b) => b.0,
        PredictError::Engine(m) => format!("the model failed on this input: {m}"),
    }
}

/// The model's answer for `n` records (model-ready lines in `body`), one
/// line each, in the output format.
fn answer_lines(model: &Model, spec: &Spec, names: &[String], body: &[u8], n: usize) -> Result<Vec<u8>, String> {
    let batch = match spec.content_type {
        InFormat::Csv => codec::parse(body, Format::Csv, &model.manifest.inputs),
        _ => codec::jsonlines_to_instances(body).and_then(|b| codec::parse(&b, Format::Json, &model.manifest.inputs)),
    }
    .map_err(|e| e.0)?;
    if batch.rows != n {
        return Err(format!("{n} records became {} rows for the model; one record must be one row", batch.rows));
    }
    let outputs = model.predict(batch).map_err(predict_error)?;
    match spec.accept {
        OutFormat::Csv => codec::to_csv(names, &outputs, n),
        OutFormat::JsonLines | OutFormat::Json => codec::to_jsonlines(names, &outputs, n),
    }
    .map_err(|e| format!("{e:#}"))
}

/// One parsed input record, for the filters and the join.
enum Rec<'a> {
    Csv(Vec<&'a str>),
    Json(Value),
}

fn parse_rec<'a>(spec: &Spec, text: &'a str) -> Result<Rec<'a>, String> {
    match spec.content_type {
        InFormat::Csv => Ok(Rec::Csv(csv_fields(text))),
        _ => serde_json::from_str(text).map(Rec::Json).map_err(|e| format!("not JSON: {e}")),
    }
}

/// The record as the model gets it (after `InputFilter`).
fn model_line(spec: &Spec, rec: &Rec) -> Result<String, String> {
    match (rec, &spec.input_filter) {
        (Rec::Csv(f), None) => Ok(f.join(",")),
        (Rec::Csv(f), Some(p)) => {
            let (idx, _) = p.select_fields(f.len())?;
            Ok(idx.iter().map(|&i| f[i]).collect::<Vec<_>>().join(","))
        }
        (Rec::Json(v), None) => Ok(v.to_string()),
        (Rec::Json(v), Some(p)) => Ok(p.apply(v)?.to_string()),
    }
}

/// The output line of one record: its answer, joined with the input
/// (`JoinSource Input`) and filtered (`OutputFilter`).
fn output_line(spec: &Spec, rec: &Rec, answer: &str) -> Result<String, String> {
    match rec {
        Rec::Csv(input) => {
            let mut fields: Vec<&str> = if spec.join_input { input.clone() } else { Vec::new() };
            fields.extend(csv_fields(answer));
            match &spec.output_filter {
                None => Ok(fields.join(",")),
                Some(p) => {
                    let (idx, _) = p.select_fields(fields.len())?;
                    Ok(idx.iter().map(|&i| fields[i]).collect::<Vec<_>>().join(","))
                }
            }
        }
        Rec::Json(input) => {
            let ans: Value = serde_json::from_str(answer).map_err(|e| format!("the answer is not JSON: {e}"))?;
            let joined = if !spec.join_input {
                ans
            } else if let Value::Object(o) = input {
                let mut o = o.clone();
                o.insert("SageMakerOutput".into(), ans);
                Value::Object(o)
            } else {
                json!({"SageMakerInput": input, "SageMakerOutput": ans})
            };
            match &spec.output_filter {
                None => Ok(joined.to_string()),
                Some(p) => Ok(p.apply(&joined)?.to_string()),
            }
        }
    }
}

type Skipped = Vec<(u64, String)>;

/// Transforms one chunk: its output bytes and the records skipped, or the
/// first record that failed (line 0: the whole object).
fn transform(model: &Model, spec: &Spec, names: &[String], c: &Chunk) -> Result<(Vec<u8>, Skipped), (u64, String)> {
    if !spec.split_line {
        let body = &c.buf;
        let batch = match spec.content_type {
            InFormat::Csv => codec::parse(body, Format::Csv, &model.manifest.inputs),
            InFormat::Json => codec::parse(body, Format::Json, &model.manifest.inputs),
            InFormat::Npy => codec::parse(body, Format::Npy, &model.manifest.inputs),
            InFormat::JsonLines => {
                codec::jsonlines_to_instances(body).and_then(|b| codec::parse(&b, Format::Json, &model.manifest.inputs))
            }
        }
        .map_err(|e| (0, e.0))?;
        let rows = batch.rows;
        let outputs = model.predict(batch).map_err(|e| (0, predict_error(e)))?;
        let mut bytes = match spec.accept {
            OutFormat::Csv => codec::to_csv(names, &outputs, rows),
            OutFormat::JsonLines => codec::to_jsonlines(names, &outputs, rows),
            OutFormat::Json => codec::to_json(names, &outputs),
        }
        .map_err(|e| (0, format!("{e:#}")))?;
        if spec.assemble_line && bytes.last() != Some(&b'\n') {
            bytes.push(b'\n');
        }
        return Ok((bytes, Vec::new()));
    }
    let plain = spec.input_filter.is_none() && !spec.join_input && spec.output_filter.is_none();
    if plain {
        if let Ok(bytes) = answer_lines(model, spec, names, &c.buf, c.recs.len()) {
            return Ok((bytes, Vec::new()));
        }
    } else if let Ok(r) = transform_records(model, spec, names, c) {
        return Ok((r, Vec::new()));
    }
    // the run failed: find the records that fail on their own
    let mut out = Vec::new();
    let mut skipped = Vec::new();
    for &(line, a, z) in &c.recs {
        let one = Chunk { obj: c.obj, seq: c.seq, buf: c.buf[a..z].to_vec(), recs: vec![(line, 0, z - a)] };
        let r = if plain {
            let mut b = one.buf.clone();
            b.push(b'\n');
            answer_lines(model, spec, names, &b, 1)
        } else {
            transform_records(model, spec, names, &one)
        };
        match r {
            Ok(b) => out.extend_from_slice(&b),
            Err(e) if spec.skip_malformed => {
                skipped.push((line, e));
                out.push(b'\n');
            }
            Err(e) => return Err((line, e)),
        }
    }
    // every record that runs alone has its answer from that run
    Ok((out, skipped))
}

/// The general path: filters and join record by record around one run.
fn transform_records(model: &Model, spec: &Spec, names: &[String], c: &Chunk) -> Result<Vec<u8>, String> {
    let mut recs = Vec::with_capacity(c.recs.len());
    let mut body = Vec::with_capacity(c.buf.len());
    for &(_, a, z) in &c.recs {
        let text = std::str::from_utf8(&c.buf[a..z]).map_err(|_| "the record is not UTF-8 text".to_string())?;
        let rec = parse_rec(spec, text)?;
        body.extend_from_slice(model_line(spec, &rec)?.as_bytes());
        body.push(b'\n');
        recs.push(rec);
    }
    let answers = answer_lines(model, spec, names, &body, recs.len())?;
    let answers = std::str::from_utf8(&answers).map_err(|e| e.to_string())?;
    if answers.lines().count() != recs.len() {
        // a join needs one answer line per record: never pair them wrongly
        return Err(format!(
            "the model's answer has {} lines for {} records; JoinSource and the filters need one line per record",
            answers.lines().count(),
            recs.len()
        ));
    }
    let mut out = String::with_capacity(answers.len() * 2);
    for (rec, ans) in recs.iter().zip(answers.lines()) {
        out.push_str(&output_line(spec, rec, ans)?);
        out.push('\n');
    }
    Ok(out.into_bytes())
}

struct Open {
    /// The output's name under the output place.
    fin: String,
    file: Output,
    hash: Sha256,
    size: u64,
    next: u64,
    pending: BTreeMap<u64, Vec<u8>>,
    chunks: Option<u64>,
    skipped: Skipped,
}

fn open_output(out: &Place, fin: &str) -> Result<Open, String> {
    let fin = fin.to_string();
    let file = out.create(&fin)?;
    Ok(Open {
        fin,
        file,
        hash: Sha256::new(),
        size: 0,
        next: 0,
        pending: BTreeMap::new(),
        chunks: None,
        skipped: Vec::new(),
    })
}

#[allow(clippy::too_many_arguments)]
fn write_all(
    objects: &[Object],
    out: &Place,
    spec: &Spec,
    mut state: Option<State>,
    msgs: Receiver<Msg>,
    tokens: Receiver<()>,
    progress: &Progress,
    summary: &mut Summary,
    failed: &AtomicBool,
    stop: &AtomicBool,
) -> Result<(), JobError> {
    let mut open: HashMap<usize, Open> = HashMap::new();
    let mut tokens = Some(tokens);
    let mut error: Option<JobError> = None;
    let fail = |e: JobError, error: &mut Option<JobError>, tokens: &mut Option<Receiver<()>>| {
        failed.store(true, Ordering::Relaxed);
        // the reader may wait for a token: dropping the receiver frees it
        *tokens = None;
        if error.is_none() {
            *error = Some(e);
        }
    };
    for m in msgs {
        if error.is_some() {
            continue;
        }
        if stop.load(Ordering::Relaxed) {
            fail(JobError::Stopped, &mut error, &mut tokens);
            continue;
        }
        let (obj, answer, ended) = match m {
            Msg::Failed { error: e, record } => {
                fail(if record { JobError::Record(e) } else { JobError::Other(e) }, &mut error, &mut tokens);
                continue;
            }
            Msg::Answer { obj, seq, bytes, records, skipped } => (obj, Some((seq, bytes, records, skipped)), None),
            Msg::Ended { obj, chunks } => (obj, None, Some(chunks)),
        };
        let o = match open.entry(obj) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(v) => {
                match open_output(out, &output_name_of(spec, &objects[obj].rel)) {
                    Ok(x) => v.insert(x),
                    Err(e) => {
                        fail(JobError::Other(e), &mut error, &mut tokens);
                        continue;
                    }
                }
            }
        };
        if ended.is_some() {
            o.chunks = ended;
        }
        if let Some((seq, bytes, records, skipped)) = answer {
            progress.records.fetch_add(records, Ordering::Relaxed);
            summary.records += records;
            summary.skipped += skipped.len() as u64;
            o.skipped.extend(skipped);
            o.pending.insert(seq, bytes);
        }
        // write what is next in order
        while let Some(bytes) = o.pending.remove(&o.next) {
            o.hash.update(&bytes);
            o.size += bytes.len() as u64;
            if let Err(e) = o.file.write_all(&bytes) {
                let msg = format!("writing {}: {e}", out.show(&o.fin));
                fail(JobError::Other(msg), &mut error, &mut tokens);
                break;
            }
            o.next += 1;
            if let Some(t) = &tokens {
                let _ = t.try_recv();
            }
        }
        if error.is_some() {
            continue;
        }
        if o.chunks == Some(o.next) {
            let o = open.remove(&obj).expect("open");
            match finish(o, &objects[obj], spec, state.as_mut(), out) {
                Ok(report) => summary.reports.extend(report),
                Err(e) => fail(JobError::Other(e), &mut error, &mut tokens),
            }
        }
    }
    for (_, o) in open.drain() {
        o.file.abort();
    }
    match error {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Makes one output final: its report written, the job's record updated,
/// then the output committed (a crash between the two leaves a record of
/// an output that is not there, which a run again redoes).
fn finish(
    o: Open,
    obj: &Object,
    spec: &Spec,
    state: Option<&mut State>,
    out: &Place,
) -> Result<Option<String>, String> {
    let report = report_name(&output_name_of(spec, &obj.rel));
    let Some(state) = state else {
        // a one-off: its report, then the output
        if !o.skipped.is_empty() {
            let text: String = o
                .skipped
                .iter()
                .map(|(line, e)| json!({"object": obj.rel, "line": line, "error": e}).to_string() + "\n")
                .collect();
            if let Err(e) = out.put(&report, text.as_bytes()) {
                o.file.abort();
                return Err(e);
            }
        }
        o.file.commit()?;
        return Ok((!o.skipped.is_empty()).then(|| out.show(&report)));
    };
    let skipped = o.skipped.len() as u64;
    let result = (|| {
        if !o.skipped.is_empty() {
            let mut text = String::new();
            for (line, e) in &o.skipped {
                text.push_str(&json!({"object": obj.rel, "line": line, "error": e}).to_string());
                text.push('\n');
            }
            out.put(&report, text.as_bytes())?;
        } else if spec.skip_malformed || state.outputs.get(&obj.rel).is_some_and(|d| d.skipped > 0) {
            out.remove(&report)?;
        }
        state.outputs.insert(
            obj.rel.clone(),
            Done {
                input_size: obj.size,
                input_version: obj.version.clone(),
                output_size: o.size,
                output_sha256: hex::encode(o.hash.clone().finalize()),
                skipped,
            },
        );
        save_state(state, out)
    })();
    if let Err(e) = result {
        o.file.abort();
        return Err(e);
    }
    if let Err(e) = o.file.commit() {
        state.outputs.remove(&obj.rel);
        let _ = save_state(state, out);
        return Err(e);
    }
    Ok((skipped > 0).then(|| out.show(&report)))
}

fn save_state(state: &mut State, out: &Place) -> Result<(), String> {
    state.format = 1;
    let bytes = serde_json::to_vec_pretty(&*state).map_err(|e| e.to_string())?;
    out.put(STATE, &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_fields_keep_quoted_commas() {
        assert_eq!(csv_fields("a,\"b,c\",3"), vec!["a", "\"b,c\"", "3"]);
        assert_eq!(csv_fields("1"), vec!["1"]);
        assert_eq!(csv_fields("1,,2"), vec!["1", "", "2"]);
        assert_eq!(csv_fields("\"x\"\"y\",2"), vec!["\"x\"\"y\"", "2"]);
    }

    fn spec() -> Spec {
        Spec {
            content_type: InFormat::Csv,
            accept: OutFormat::Csv,
            gzip: false,
            split_line: true,
            multi_record: true,
            max_payload: Some(6 << 20),
            max_records: 1000,
            workers: 1,
            background: false,
            assemble_line: true,
            input_filter: None,
            join_input: false,
            output_filter: None,
            skip_malformed: false,
            record: true,
            out_suffix: ".out",
        }
    }

    #[test]
    fn join_and_filters_follow_sagemaker() {
        let mut s = spec();
        s.input_filter = Some(JsonPath::parse("$[1:]").unwrap());
        s.join_input = true;
        s.output_filter = Some(JsonPath::parse("$[0,-1]").unwrap());
        let rec = parse_rec(&s, "id-7,1.5,2.5").unwrap();
        assert_eq!(model_line(&s, &rec).unwrap(), "1.5,2.5");
        assert_eq!(output_line(&s, &rec, "0.25,0.75").unwrap(), "id-7,0.75");
        let mut j = spec();
        j.content_type = InFormat::JsonLines;
        j.accept = OutFormat::JsonLines;
        j.input_filter = Some(JsonPath::parse("$.features").unwrap());
        j.join_input = true;
        let rec = parse_rec(&j, r#"{"id":"a","features":[1,2]}"#).unwrap();
        assert_eq!(model_line(&j, &rec).unwrap(), "[1,2]");
        let v: Value = serde_json::from_str(&output_line(&j, &rec, r#"{"p":[0.5]}"#).unwrap()).unwrap();
        assert_eq!(v, json!({"id":"a","features":[1,2],"SageMakerOutput":{"p":[0.5]}}));
        // an array record is wrapped, as SageMaker does
        let rec = parse_rec(&j, "[1,2]").unwrap();
        let v: Value = serde_json::from_str(&output_line(&j, &rec, r#"{"p":1}"#).unwrap()).unwrap();
        assert_eq!(v, json!({"SageMakerInput":[1,2],"SageMakerOutput":{"p":1}}));
        j.output_filter = Some(JsonPath::parse("$['id','SageMakerOutput']").unwrap());
        let rec = parse_rec(&j, r#"{"id":"a","features":[1,2]}"#).unwrap();
        let v: Value = serde_json::from_str(&output_line(&j, &rec, r#"{"p":[0.5]}"#).unwrap()).unwrap();
        assert_eq!(v, json!({"id":"a","SageMakerOutput":{"p":[0.5]}}));
    }

    #[test]
    fn meaningless_combinations_are_refused() {
        let mut s = spec();
        s.split_line = false;
        s.join_input = true;
        assert!(s.check().unwrap_err().contains("SplitType Line"));
        let mut s = spec();
        s.join_input = true;
        s.accept = OutFormat::JsonLines;
        assert!(s.check().unwrap_err().contains("Accept must be the input's format"));
        let mut s = spec();
        s.content_type = InFormat::Npy;
        assert!(s.check().unwrap_err().contains("SplitType None"));
        let mut s = spec();
        s.max_payload = Some(101 << 20);
        assert!(s.check().unwrap_err().contains("at most 100"));
    }
}
