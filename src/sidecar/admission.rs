//! Admission of CLI turns: a semaphore of turn slots plus a bounded queue, so a burst gets a fast
//! 429 instead of a pile of processes, and the [`Slot`] that ties one slot to one CLI process
//! until it is reaped — wherever the process goes (a request, the warm pool, a kept
//! conversation) — because a CLI costs memory until it is gone, not until it answered.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::adapters::claude::Reaped;

/// Admission control: at most `permits` turns run; at most `max_queue` wait.
#[derive(Debug)]
pub struct Limiter {
    permits: Arc<Semaphore>,
    queued: AtomicUsize,
    max_queue: usize,
    max_wait: Duration,
}

/// Why a request was not admitted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The queue is full: 429 with `Retry-After`.
    QueueFull,
    /// Waited `max_wait` in the queue: 503.
    QueueTimeout,
}

impl Limiter {
    /// A limiter for `concurrent` turns and `max_queue` waiting requests.
    pub fn new(concurrent: usize, max_queue: usize, max_wait: Duration) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(concurrent.max(1))),
            queued: AtomicUsize::new(0),
            max_queue,
            max_wait,
        }
    }

    /// Wait for a slot, or refuse at once when the queue is full.
    pub async fn admit(&self) -> Result<OwnedSemaphorePermit, Refusal> {
        if let Ok(permit) = self.permits.clone().try_acquire_owned() {
            return Ok(permit);
        }
        let position = self.queued.fetch_add(1, Ordering::SeqCst);
        let _leave = QueueSlot(&self.queued);
        if position >= self.max_queue {
            return Err(Refusal::QueueFull);
        }
        match tokio::time::timeout(self.max_wait, self.permits.clone().acquire_owned()).await {
            Ok(Ok(permit)) => Ok(permit),
            _ => Err(Refusal::QueueTimeout),
        }
    }

    /// A slot now, only when one is free and nobody is waiting for it (warm processes use spare
    /// capacity only; they never overtake a queued request).
    pub fn try_admit(&self) -> Option<OwnedSemaphorePermit> {
        if self.queued() > 0 {
            return None;
        }
        self.permits.clone().try_acquire_owned().ok()
    }

    /// Slots free now.
    pub fn available(&self) -> usize {
        self.permits.available_permits()
    }

    /// Requests waiting now.
    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::SeqCst)
    }
}

struct QueueSlot<'a>(&'a AtomicUsize);

impl Drop for QueueSlot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A concurrency slot held by one CLI process, wherever that process goes (a request, the warm
/// pool, a live conversation): dropping it hands the slot on only once the process is reaped.
#[derive(Debug)]
pub struct Slot {
    permit: Option<OwnedSemaphorePermit>,
    reaped: Reaped,
}

impl Slot {
    /// `permit`, held for the process behind `reaped`.
    pub fn new(permit: OwnedSemaphorePermit, reaped: Reaped) -> Self {
        Self {
            permit: Some(permit),
            reaped,
        }
    }
}

impl Slot {
    /// The permit back, once the process is reaped (to start its replacement in the same slot).
    pub async fn reclaim(mut self) -> OwnedSemaphorePermit {
        self.reaped.clone().wait().await;
        self.permit.take().expect("a slot holds its permit until dropped")
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(permit) = self.permit.take() {
            release_when_reaped(permit, Some(self.reaped.clone()));
        }
    }
}

/// Drop `permit` once `reaped` resolves (at once without a process).
pub fn release_when_reaped(permit: OwnedSemaphorePermit, reaped: Option<Reaped>) {
    if let Some(reaped) = reaped {
        tokio::spawn(async move {
            reaped.wait().await;
            drop(permit);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn limiter_queues_then_refuses() {
        let limiter = Arc::new(Limiter::new(1, 1, Duration::from_secs(5)));
        let held = limiter.admit().await.unwrap();
        let waiter = {
            let limiter = limiter.clone();
            tokio::spawn(async move { limiter.admit().await.map(|_| ()) })
        };
        while limiter.queued() == 0 {
            tokio::task::yield_now().await;
        }
        assert_eq!(limiter.admit().await.unwrap_err(), Refusal::QueueFull);
        drop(held);
        waiter.await.unwrap().unwrap();
        assert_eq!(limiter.queued(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn limiter_times_out_in_the_queue() {
        let limiter = Limiter::new(1, 4, Duration::from_secs(2));
        let _held = limiter.admit().await.unwrap();
        assert_eq!(limiter.admit().await.unwrap_err(), Refusal::QueueTimeout);
        assert_eq!(limiter.queued(), 0);
    }
}
