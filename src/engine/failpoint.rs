//! Crash injection for the crash-matrix tests (cargo feature `failpoints`).
//!
//! `MIGRATE_CRASH_AT=<step-id>:<point>` kills the process with SIGKILL at that point, exactly
//! like `kill -9`: no unwinding, no destructors, no flushing. `MIGRATE_STALL_AT=<step-id>:<point>`
//! stops there for ten minutes instead (so a test can observe a run holding its locks), and
//! `MIGRATE_WAIT_AT=<step-id>:<point>` waits there until the file `MIGRATE_WAIT_FILE` exists (so a
//! test can inject a fault at that instant). Points:
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
    if std::env::var("MIGRATE_WAIT_AT").is_ok_and(|v| v == here) {
        if let Some(file) = std::env::var_os("MIGRATE_WAIT_FILE") {
            for _ in 0..6000 {
                if std::path::Path::new(&file).exists() {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
}

#[cfg(not(feature = "failpoints"))]
pub async fn point(_step: &str, _at: &str) {}
