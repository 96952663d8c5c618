//! `neorun predict`: one request from a file or stdin, the answer on stdout.

use std::io::{Read, Write};

use anyhow::anyhow;
use neoc_runtime::codec::{self, Format};
use neoc_runtime::PredictError;

use crate::cli::PredictArgs;
use crate::exit::Failure;

pub fn run(a: PredictArgs) -> Result<(), Failure> {
    let accept = Format::parse(&a.accept)
        .filter(|f| *f != Format::Npy)
        .ok_or_else(|| anyhow!("--accept {:?} is not supported; use json or csv", a.accept))?;
    let given = match &a.content_type {
        Some(ct) => Some(
            Format::parse(ct).ok_or_else(|| anyhow!("--content-type {ct:?} is not supported; use csv, json or npy"))?,
        ),
        None => None,
    };
    let options = crate::settings::open_options(&a.load, None)?;
    let model = super::open(&a.bundle, &options)?;
    let body = if a.input == "-" {
        let mut v = Vec::new();
        std::io::stdin().read_to_end(&mut v).map_err(|e| anyhow!("reading stdin: {e}"))?;
        v
    } else {
        std::fs::read(&a.input).map_err(|e| anyhow!("{}: {e}", a.input))?
    };
    let format = given.unwrap_or_else(|| {
        if a.input.ends_with(".csv") {
            Format::Csv
        } else if a.input.ends_with(".json") {
            Format::Json
        } else if a.input.ends_with(".npy") {
            Format::Npy
        } else {
            Format::sniff(&body)
        }
    });
    let inputs = &model.manifest.inputs;
    let batch = codec::parse(&body, format, inputs).map_err(|e| {
        Failure::BadRequest(format!("{e}\nhint: the model's inputs are {}", codec::describe_inputs(inputs)))
    })?;
    let rows = batch.rows;
    let outputs = model.predict(batch).map_err(|e| match e {
        PredictError::BadRequest(b) => Failure::BadRequest(b.0),
        // the engine panicked on this input (a zero divisor inside the graph, say): exit 4, bad
        // request; an engine or device that failed otherwise (a Neuron hardware error) is exit 1
        PredictError::Engine(m) if m.starts_with(neoc_runtime::guard::FAILED_ON_INPUT) => {
            Failure::BadRequest(format!("inference failed: {m}"))
        }
        PredictError::Engine(m) => Failure::Other(anyhow!("inference failed: {m}")),
    })?;
    let names = model.output_names();
    let out = match accept {
        Format::Json => codec::to_json(&names, &outputs),
        Format::Csv => codec::to_csv(&names, &outputs, rows),
        Format::Npy => unreachable!("refused as --accept above"),
    }
    .map_err(|e| Failure::BadRequest(e.to_string()))?;
    std::io::stdout().write_all(&out).map_err(|e| anyhow!("writing stdout: {e}"))?;
    Ok(())
}
