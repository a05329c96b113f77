//! Crash injection for the crash-matrix tests (cargo feature `failpoints`).
//!
//! `MIGRATE_CRASH_AT=<step-id>:<point>` kills the process with SIGKILL at that point, exactly
//! like `kill -9`: no unwinding, no destructors, no flushing. `MIGRATE_STALL_AT=<step-id>:<point>`
//! stops there for ten minutes instead (so a test can observe a run holding its locks). Points:
//! `before` (the start is journaled, the side effect not begun), `after` (the side effect done,
//! its success not journaled), `compensate` (compensation journaled as started, not run).
//! Builds without the feature ignore both variables.

#[cfg(feature = "failpoints")]
pub async fn point(step: &str, at: &str) {
    let here = format!("{step}:{at}");
    if std::env::var("MIGRATE_CRASH_AT").is_ok_and(|v| v == here) {
        let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
        std::process::abort();
    }
    if std::env::var("MIGRATE_STALL_AT").is_ok_and(|v| v == here) {
        tokio::time::sleep(std::time::Duration::from_secs(600)).await;
    }
}

#[cfg(not(feature = "failpoints"))]
pub async fn point(_step: &str, _at: &str) {}
