//! Bounded retries with exponential backoff for transient adapter errors. Used where a caller
//! must not give up on the first blip (notifications) — everything else is retried by the
//! controller's requeue with the same ids.

use std::{future::Future, time::Duration};

use super::AdapterError;

/// How many times and how fast to retry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Total attempts, including the first.
    pub attempts: u32,
    /// Delay before the second attempt; doubles each time.
    pub base_delay: Duration,
    /// Upper bound of any single delay (also caps a server's `Retry-After`).
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            attempts: 4,
            base_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(10),
        }
    }
}

impl RetryPolicy {
    /// The delay after failed attempt `n` (1-based), honouring a server's `Retry-After`.
    pub fn delay(&self, n: u32, retry_after: Option<Duration>) -> Duration {
        let exp = self
            .base_delay
            .saturating_mul(2u32.saturating_pow(n.saturating_sub(1)));
        retry_after.unwrap_or(exp).min(self.max_delay)
    }
}

/// Run `op` until it succeeds, fails permanently, or the attempts run out.
pub async fn retry_transient<T, F, Fut>(policy: RetryPolicy, mut op: F) -> Result<T, AdapterError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, AdapterError>>,
{
    let mut n = 0;
    loop {
        n += 1;
        match op().await {
            Ok(v) => return Ok(v),
            Err(e) if e.is_transient() && n < policy.attempts => {
                tokio::time::sleep(policy.delay(n, e.retry_after)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    const FAST: RetryPolicy = RetryPolicy {
        attempts: 3,
        base_delay: Duration::from_millis(1),
        max_delay: Duration::from_millis(5),
    };

    #[test]
    fn delays_double_and_are_capped() {
        let p = RetryPolicy {
            attempts: 5,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_millis(350),
        };
        assert_eq!(p.delay(1, None), Duration::from_millis(100));
        assert_eq!(p.delay(2, None), Duration::from_millis(200));
        assert_eq!(p.delay(3, None), Duration::from_millis(350));
        assert_eq!(
            p.delay(1, Some(Duration::from_secs(60))),
            Duration::from_millis(350)
        );
    }

    #[tokio::test]
    async fn transient_errors_are_retried_until_the_budget_ends() {
        let calls = AtomicU32::new(0);
        let r: Result<(), _> = retry_transient(FAST, || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err(AdapterError::transient("x", "down"))
        })
        .await;
        assert!(r.is_err());
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn permanent_errors_stop_at_once_and_success_returns() {
        let calls = AtomicU32::new(0);
        let r: Result<(), _> = retry_transient(FAST, || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err(AdapterError::permanent("x", "no"))
        })
        .await;
        assert_eq!(r.unwrap_err().kind, "x");
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        let calls = AtomicU32::new(0);
        let r = retry_transient(FAST, || async {
            if calls.fetch_add(1, Ordering::SeqCst) == 0 {
                Err(AdapterError::transient("x", "blip"))
            } else {
                Ok(7)
            }
        })
        .await;
        assert_eq!(r.unwrap(), 7);
    }
}
