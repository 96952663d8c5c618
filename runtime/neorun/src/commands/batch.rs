//! `neorun batch`: a batch transform job (see `crate::jobs::batch`) from the
//! command line, with a progress bar on a terminal.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::anyhow;

use crate::cli::{AssembleWith, BatchArgs, BatchStrategy, Compression, JoinSource, SplitType};
use crate::exit::Failure;
use crate::jobs::batch::{self, InFormat, JobError, JsonPath, OutFormat, Progress, Spec};
use crate::jobs::objects;

pub fn run(a: BatchArgs) -> Result<(), Failure> {
    let rt = objects::runtime_for(&[&a.input, &a.output]).map_err(|e| anyhow!("{e}"))?;
    let handle = rt.as_ref().map(|r| r.handle().clone());
    let input = objects::place(&a.input, handle.as_ref()).map_err(Failure::Usage)?;
    let output = objects::place(&a.output, handle.as_ref()).map_err(Failure::Usage)?;
    let objects = input.list_inputs().map_err(|e| anyhow!("{e}"))?;
    if input.contains(&output) {
        return Err(anyhow!(
            "the output {} is inside the input {}: outputs would be read as inputs; choose an output outside it",
            a.output,
            a.input
        )
        .into());
    }
    let split_line = a.split_type == SplitType::Line;
    let content_type = match &a.content_type {
        Some(c) => InFormat::parse(c).ok_or_else(|| {
            Failure::Usage(format!("--content-type {c:?}: use text/csv or application/jsonlines (or, with --split-type none, application/json or application/x-npy)"))
        })?,
        None => batch::guess_format(&objects, split_line),
    };
    let accept = match &a.accept {
        Some(x) => OutFormat::parse(x).ok_or_else(|| {
            Failure::Usage(format!("--accept {x:?}: use text/csv, application/jsonlines or application/json"))
        })?,
        None => content_type.default_accept(),
    };
    let path = |flag: &str, p: &Option<String>| -> Result<Option<JsonPath>, Failure> {
        match p.as_deref() {
            None | Some("$") => Ok(None),
            Some(t) => Ok(Some(JsonPath::parse(t).map_err(|e| Failure::Usage(format!("{flag} {t:?}: {e}")))?)),
        }
    };
    let workers =
        a.max_concurrent_transforms.unwrap_or_else(|| crate::cpus::allowed().map(|c| c.len()).unwrap_or(1).max(1));
    let spec = Spec {
        content_type,
        accept,
        gzip: a.compression_type == Compression::Gzip,
        split_line,
        multi_record: a.batch_strategy == BatchStrategy::MultiRecord,
        max_payload: (a.max_payload_in_mb > 0).then(|| a.max_payload_in_mb.min(1 << 20) << 20),
        max_records: a.max_records,
        workers,
        assemble_line: a.assemble_with == AssembleWith::Line,
        background: false,
        input_filter: path("--input-filter", &a.input_filter)?,
        join_input: a.join_source == JoinSource::Input,
        output_filter: path("--output-filter", &a.output_filter)?,
        skip_malformed: a.skip_malformed,
        record: true,
        out_suffix: ".out",
    };
    spec.check().map_err(Failure::Usage)?;
    let options = crate::settings::open_options(&a.load, Some(a.threads))?;
    let model = super::open(&a.bundle, &options)?;

    let progress = Progress::default();
    let total: u64 = objects.iter().map(|o| o.size).sum();
    let started = Instant::now();
    let stop = AtomicBool::new(false);
    let finished = AtomicBool::new(false);
    let show = !a.quiet && std::io::stderr().is_terminal();
    let result = std::thread::scope(|s| {
        if show {
            s.spawn(|| {
                let bar = indicatif::ProgressBar::new(total);
                bar.set_style(
                    indicatif::ProgressStyle::with_template("{bar:30} {bytes}/{total_bytes} {msg} ETA {eta}")
                        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
                );
                while !finished.load(Ordering::Relaxed) {
                    let rows = progress.records.load(Ordering::Relaxed);
                    let secs = started.elapsed().as_secs_f64().max(1e-3);
                    bar.set_position(progress.bytes.load(Ordering::Relaxed));
                    bar.set_message(format!("{rows} records, {:.0} records/s", rows as f64 / secs));
                    std::thread::sleep(Duration::from_millis(200));
                }
                bar.finish_and_clear();
            });
        }
        let r = batch::run(&model, &spec, &input, &objects, &output, &progress, &stop);
        finished.store(true, Ordering::Relaxed);
        r
    });
    let secs = started.elapsed().as_secs_f64();
    match result {
        Ok(s) => {
            let done = s.objects - s.already_done;
            let mut line = format!(
                "{done} object(s), {} records in {secs:.2} s ({:.0} records/s) -> {}",
                s.records,
                s.records as f64 / secs.max(1e-9),
                output.show_root()
            );
            if s.already_done > 0 {
                line.push_str(&format!("; {} object(s) already complete from an earlier run, kept", s.already_done));
            }
            eprintln!("{line}");
            if s.skipped > 0 {
                eprintln!(
                    "warning: {} malformed record(s) skipped (--skip-malformed), each answered by an empty line; reports: {}",
                    s.skipped,
                    s.reports.join(", ")
                );
            }
            Ok(())
        }
        Err(JobError::Record(m)) => Err(Failure::BadRequest(format!(
            "{m}\nhint: no output is left for that object (complete ones are kept); fix the record, or pass --skip-malformed to answer it with an empty line and report it"
        ))),
        Err(e) => Err(Failure::Other(anyhow!("{e}"))),
    }
}
