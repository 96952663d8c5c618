//! Temporary directories (and an output's temporary file) that must not
//! outlive neoc: made here and remembered, so that a SIGTERM, SIGINT or
//! SIGHUP (a CI job cancelled, a Ctrl-C) removes them before neoc exits
//! with 128 + the signal. A normal
//! exit or an error removes them as `TempDir`s do, on drop.

use std::path::PathBuf;
use std::sync::Mutex;

static TRACKED: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());
/// Files being written (an output's temporary file), removed on a signal.
static FILES: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// Remembers `path` (a file about to be written) to remove on a signal.
pub fn track_file(path: PathBuf) {
    let mut f = FILES.lock().unwrap_or_else(|e| e.into_inner());
    f.retain(|p| p.exists());
    f.push(path);
}

/// A temporary directory named `PREFIX…`, removed on drop or on a signal.
pub fn tempdir(prefix: &str) -> std::io::Result<tempfile::TempDir> {
    let d = tempfile::Builder::new().prefix(prefix).tempdir()?;
    let mut t = TRACKED.lock().unwrap_or_else(|e| e.into_inner());
    // forget the ones already dropped
    t.retain(|p| p.exists());
    t.push(d.path().to_path_buf());
    Ok(d)
}

/// Starts the thread that cleans up on SIGTERM, SIGINT and SIGHUP.
pub fn on_signals() {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let Ok(mut signals) = signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP]) else { return };
    std::thread::spawn(move || {
        let Some(sig) = signals.forever().next() else { return };
        let dirs = std::mem::take(&mut *TRACKED.lock().unwrap_or_else(|e| e.into_inner()));
        let files = std::mem::take(&mut *FILES.lock().unwrap_or_else(|e| e.into_inner()));
        let partial = files.iter().filter(|f| std::fs::remove_file(f).is_ok()).count();
        let mut removed = 0;
        for d in dirs.iter().filter(|d| d.exists()) {
            // the main thread may still be writing into it: try again
            for _ in 0..5 {
                if std::fs::remove_dir_all(d).is_ok() || !d.exists() {
                    removed += 1;
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        }
        eprintln!(
            "neoc: stopped by signal {sig}; removed {removed} temporary director{} and {partial} partly written output{}",
            if removed == 1 { "y" } else { "ies" },
            if partial == 1 { "" } else { "s" }
        );
        std::process::exit(128 + sig);
    });
}
