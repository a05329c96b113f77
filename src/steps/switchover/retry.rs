//! After the point of no return a route failure cannot be undone, so each provider call is
//! retried with backoff before the run stops for the operator.

use std::time::Duration;

use anyhow::Result;

use crate::engine::Cx;
use crate::steps::id::StepId;

/// The waits between tries: five retries, about 15 s in all.
pub const BACKOFF_MS: [u64; 5] = [500, 1000, 2000, 4000, 8000];

/// Pure: the wait before retry number `retry` (0-based), or `None` when there is none left.
pub fn backoff(retry: usize) -> Option<Duration> {
    BACKOFF_MS.get(retry).map(|ms| Duration::from_millis(*ms))
}

pub async fn with_retries<T, F, Fut>(cx: &Cx, step: &StepId, what: &str, mut f: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let mut retry = 0;
    loop {
        match f().await {
            Ok(v) => return Ok(v),
            Err(e) => match backoff(retry) {
                Some(wait) => {
                    cx.progress(
                        step,
                        format!("{what} failed ({e:#}); retrying in {} ms", wait.as_millis()),
                    );
                    tokio::time::sleep(wait).await;
                    retry += 1;
                }
                None => {
                    return Err(e.context(format!(
                        "{what}: still failing after {} retries",
                        BACKOFF_MS.len()
                    )))
                }
            },
        }
    }
}

/// What a route points at, for a failure message (the provider may be what is failing).
pub async fn where_it_points(r: &dyn crate::route::Router) -> String {
    match r.current().await {
        Ok(v) => format!("{} still points at {v}", r.describe()),
        Err(e) => format!("{} cannot even be read ({e:#})", r.describe()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_backoff_doubles_and_ends() {
        let waits: Vec<u128> = (0..6).map_while(backoff).map(|d| d.as_millis()).collect();
        assert_eq!(waits, vec![500, 1000, 2000, 4000, 8000]);
        assert_eq!(backoff(5), None);
        assert!(BACKOFF_MS.windows(2).all(|w| w[1] == 2 * w[0]));
    }
}
