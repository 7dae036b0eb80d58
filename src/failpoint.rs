//! Fail points for crash testing: when the environment variable `MULTIARCH_FAILPOINT` names a
//! point the controller passes, the process aborts there, as a SIGKILL would stop it. The
//! end-to-end suite uses them to prove that a restart at those points creates no duplicate
//! builders and publishes each build once. Unset in production.

/// The variable naming the fail point.
pub const VARIABLE: &str = "MULTIARCH_FAILPOINT";

/// Builders were just created; their platforms' status was not written yet.
pub const AFTER_BUILDERS_CREATED: &str = "after-builders-created";
/// The index was pushed to every tag; the status does not say so yet.
pub const AFTER_INDEX_PUSHED: &str = "after-index-pushed";

/// Publishing waits 10 s after the status says `Publishing` (a window in which the suite takes the
/// registry away).
pub const PAUSE_BEFORE_PUBLISH: &str = "pause-before-publish";

/// Waits 10 s if `point` is the configured fail point.
pub async fn pause(point: &str) {
    if std::env::var(VARIABLE).is_ok_and(|v| v == point) {
        eprintln!("fail point {point} reached: pausing 10 s");
        tokio::time::sleep(std::time::Duration::from_secs(10)).await;
    }
}

/// Aborts the process if `point` is the configured fail point.
pub fn hit(point: &str) {
    if std::env::var(VARIABLE).is_ok_and(|v| v == point) {
        eprintln!("fail point {point} reached: aborting");
        std::process::abort();
    }
}
