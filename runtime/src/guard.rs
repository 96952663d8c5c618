//! Panics inside an engine (tract panics on some inputs, e.g. an integer
//! remainder by zero) become errors naming the cause, instead of killing a
//! server worker or the process; nothing is printed for them by the panic
//! hook, since the error is reported where it is caught. Panics anywhere
//! else still print as usual.

use std::cell::Cell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Once;

thread_local! {
    static GUARDED: Cell<bool> = const { Cell::new(false) };
}

static HOOK: Once = Once::new();

/// How [`guarded`] words a panic: the start of its message.
pub const FAILED_ON_INPUT: &str = "the engine failed on this input";

/// Runs `f`; a panic inside becomes `Err(message)`, worded as an engine
/// failure on the request's input.
pub fn guarded<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    caught(f).map_err(|msg| format!("{FAILED_ON_INPUT}: {msg}"))
}

/// Runs `f`; a panic inside becomes `Err` with the panic's own message, for
/// callers that word it themselves (an importer, say).
pub fn caught<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    HOOK.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !GUARDED.with(|g| g.get()) {
                default(info)
            }
        }));
    });
    let was = GUARDED.with(|g| g.replace(true));
    let r = catch_unwind(AssertUnwindSafe(f));
    GUARDED.with(|g| g.set(was));
    r.map_err(|p| {
        p.downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| p.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".into())
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_panic_becomes_an_error_and_the_guard_is_reset() {
        let r: Result<(), String> = super::guarded(|| panic!("boom"));
        assert_eq!(r.unwrap_err(), "the engine failed on this input: boom");
        assert_eq!(super::guarded(|| 3).unwrap(), 3);
        assert!(!super::GUARDED.with(|g| g.get()));
    }
}
