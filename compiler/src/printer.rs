//! Everything neoc shows a person on stderr, decided in one place: a spinner
//! per stage when stderr is a terminal, nothing of it in CI logs, with
//! `--json` or with `--quiet`.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressStyle};

pub struct Printer {
    bar: Option<ProgressBar>,
    quiet: bool,
}

impl Printer {
    pub fn new(json: bool, quiet: bool, no_progress: bool) -> Printer {
        let interactive = std::io::stderr().is_terminal() && std::env::var_os("CI").is_none();
        let bar = (interactive && !json && !quiet && !no_progress).then(|| {
            let b = ProgressBar::new_spinner();
            b.set_style(ProgressStyle::with_template("{spinner} [{prefix}] {msg} ({elapsed})").expect("template"));
            b.enable_steady_tick(std::time::Duration::from_millis(100));
            b
        });
        Printer { bar, quiet: quiet || json }
    }

    /// A stage starts.
    pub fn stage(&self, stage: &str, what: &str) {
        if let Some(b) = &self.bar {
            b.set_prefix(stage.to_string());
            b.set_message(what.to_string());
        }
    }

    /// A line for a person (stderr), unless quiet.
    pub fn note(&self, line: &str) {
        if self.quiet {
            return;
        }
        match &self.bar {
            Some(b) => b.suspend(|| eprintln!("{line}")),
            None => eprintln!("{line}"),
        }
    }

    pub fn done(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

impl Drop for Printer {
    fn drop(&mut self) {
        self.done();
    }
}
