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

/// `f` tried, then retried with backoff while it fails. Each try is bounded by `limit`: a
/// provider that stops answering mid-call (a link cut after the request went out: a kept
/// console connection would wait for TCP to give up, many minutes) fails that try, and the
/// next one starts afresh (a kept connection dropped by the cancelled try is not handed out
/// again).
pub async fn with_retries<T, F, Fut>(
    cx: &Cx,
    step: &StepId,
    what: &str,
    limit: Duration,
    mut f: F,
) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let mut retry = 0;
    loop {
        let tried = tokio::time::timeout(limit, f())
            .await
            .unwrap_or_else(|_| Err(anyhow::anyhow!("no answer within {limit:?}")));
        match tried {
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

/// Pure: the bound on one try of a route's call: the switchover's time box, or the provider's
/// own limit on its calls (an `exec` plugin's `timeout`) with a margin to report its own
/// time-out, whichever is longer.
pub fn try_limit(time_box: Duration, own: Option<Duration>) -> Duration {
    own.map_or(time_box, |own| time_box.max(own + Duration::from_secs(5)))
}

/// What a route points at, for a failure message (the provider may be what is failing).
pub async fn where_it_points(r: &dyn crate::route::Router) -> String {
    match tokio::time::timeout(READ_LIMIT, r.current()).await {
        Ok(Ok(v)) => format!("{} still points at {v}", r.describe()),
        Ok(Err(e)) => format!("{} cannot even be read ({e:#})", r.describe()),
        Err(_) => format!(
            "{} cannot even be read (no answer within {READ_LIMIT:?})",
            r.describe()
        ),
    }
}

/// How long a failure message waits to read where a route points.
const READ_LIMIT: Duration = Duration::from_secs(10);

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

    #[test]
    fn a_providers_own_longer_limit_is_not_cut_short() {
        let s = Duration::from_secs;
        assert_eq!(try_limit(s(30), None), s(30));
        assert_eq!(try_limit(s(30), Some(s(300))), s(305));
        assert_eq!(try_limit(s(30), Some(s(10))), s(30));
    }

    /// A try that never answers is given up at the limit and tried again.
    #[tokio::test]
    async fn a_try_that_never_answers_is_cut_at_the_limit_and_retried() {
        let cx = Cx::new("t".into(), Default::default(), Default::default(), None);
        let tries = std::sync::atomic::AtomicUsize::new(0);
        let got = with_retries(
            &cx,
            &StepId::Release,
            "release",
            Duration::from_millis(50),
            || async {
                match tries.fetch_add(1, std::sync::atomic::Ordering::SeqCst) {
                    0 => std::future::pending().await,
                    n => Ok(n),
                }
            },
        )
        .await
        .unwrap();
        assert_eq!(got, 1, "the second try answered");
    }
}
