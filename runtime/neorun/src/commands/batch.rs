//! `neorun batch`: batch transform of a line-split CSV or JSON Lines file,
//! the results written in input order, to a temporary file renamed over the
//! output only when every line succeeded.

use std::io::{BufRead, Write};
use std::path::PathBuf;

use anyhow::anyhow;
use neoc_runtime::codec::{self, Format};

use crate::cli::BatchArgs;
use crate::exit::Failure;
use crate::settings::batch_format;

pub fn run(a: BatchArgs) -> Result<(), Failure> {
    let name = a.input.to_string_lossy().to_string();
    let in_lines = match &a.content_type {
        Some(c) => batch_format(c)?,
        None => name.ends_with(".jsonl") || name.ends_with(".jsonlines"),
    };
    let out_lines = match &a.accept {
        Some(x) => batch_format(x)?,
        None => in_lines,
    };
    let options = crate::settings::open_options(&a.load, Some(a.threads))?;
    let model = super::open(&a.bundle, &options)?;
    let names = model.output_names();
    let input = &a.input;
    let reader = std::io::BufReader::new(std::fs::File::open(input).map_err(|e| anyhow!("{}: {e}", input.display()))?);
    let output = &a.output;
    let dir = output
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map(|p| p.to_path_buf())
        .unwrap_or_else(|| PathBuf::from("."));
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        output.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default(),
        std::process::id()
    ));
    let max_rows = a.max_rows.max(1);
    let result = (|| -> Result<usize, Failure> {
        let mut out =
            std::io::BufWriter::new(std::fs::File::create(&tmp).map_err(|e| anyhow!("{}: {e}", tmp.display()))?);
        let mut chunk: Vec<String> = Vec::new();
        let mut first_line = 1;
        let mut done = 0;
        let flush = |chunk: &mut Vec<String>, first_line: usize, out: &mut dyn Write| -> Result<usize, Failure> {
            if chunk.is_empty() {
                return Ok(0);
            }
            let lines = format!("lines {}-{}", first_line, first_line + chunk.len() - 1);
            let body = chunk.join("\n");
            let body = if in_lines {
                codec::jsonlines_to_instances(body.as_bytes()).map_err(|e| Failure::BadRequest(e.0))?
            } else {
                body.into_bytes()
            };
            let fmt = if in_lines { Format::Json } else { Format::Csv };
            let b = codec::parse(&body, fmt, &model.manifest.inputs)
                .map_err(|e| Failure::BadRequest(format!("{lines}: {e}")))?;
            let rows = b.rows;
            let outputs = model.predict(b).map_err(|e| Failure::BadRequest(format!("{lines}: {e}")))?;
            let bytes = if out_lines {
                codec::to_jsonlines(&names, &outputs, rows)
            } else {
                codec::to_csv(&names, &outputs, rows)
            }
            .map_err(|e| Failure::Other(anyhow!("{e}")))?;
            out.write_all(&bytes).map_err(|e| anyhow!("writing the output: {e}"))?;
            let n = chunk.len();
            chunk.clear();
            Ok(n)
        };
        for (i, line) in reader.lines().enumerate() {
            let line = line.map_err(|e| anyhow!("{}: line {}: {e}", input.display(), i + 1))?;
            if line.trim().is_empty() {
                continue;
            }
            if chunk.is_empty() {
                first_line = i + 1;
            }
            chunk.push(line);
            if chunk.len() >= max_rows {
                done += flush(&mut chunk, first_line, &mut out)?;
            }
        }
        done += flush(&mut chunk, first_line, &mut out)?;
        out.flush().map_err(|e| anyhow!("writing the output: {e}"))?;
        Ok(done)
    })();
    match result {
        Ok(n) => {
            std::fs::rename(&tmp, output).map_err(|e| anyhow!("{}: {e}", output.display()))?;
            eprintln!("{n} rows -> {}", output.display());
            Ok(())
        }
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    }
}
