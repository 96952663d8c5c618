//! Admission: a request's right to wait for, and then to hold, an inference
//! slot, as owned values released on drop. No path — a timeout that drops
//! the request's future, a client that hangs up, an early return — can
//! forget to give a queue place or a slot back, and a slot moves with the
//! inference into the blocking task, so it is held until the engine returns
//! even when nobody waits for the answer any more.
//!
//! Queue places number `max_queue + threads` (the requests allowed in the
//! server at once); slots number `threads` (model runs at once).

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::error::InferError;
use crate::metrics::{Metrics, Tracked};

pub struct Admission {
    places: Arc<Semaphore>,
    slots: Arc<Semaphore>,
    metrics: Arc<Metrics>,
}

/// A queue place: the request may wait for a slot.
#[derive(Debug)]
pub struct Queued {
    place: OwnedSemaphorePermit,
    since: Instant,
    _waiting: Tracked,
}

impl Queued {
    /// When the request was admitted.
    pub fn since(&self) -> Instant {
        self.since
    }
}

/// The right to run: one slot, and the queue places of the requests it
/// runs (one, or a merged batch). Dropping it frees them all.
#[derive(Debug)]
pub struct Running {
    _slot: OwnedSemaphorePermit,
    _places: Vec<(OwnedSemaphorePermit, Tracked)>,
}

impl Admission {
    pub fn new(max_queue: usize, threads: usize, metrics: Arc<Metrics>) -> Admission {
        let threads = threads.max(1);
        Admission {
            places: Arc::new(Semaphore::new(max_queue + threads)),
            slots: Arc::new(Semaphore::new(threads)),
            metrics,
        }
    }

    /// Takes a queue place, or refuses at once when all are taken.
    pub fn admit(&self) -> Result<Queued, InferError> {
        match self.places.clone().try_acquire_owned() {
            Ok(place) => Ok(Queued { place, since: Instant::now(), _waiting: Tracked::new(&self.metrics.waiting) }),
            Err(tokio::sync::TryAcquireError::NoPermits) => {
                self.metrics.rejected();
                Err(InferError::Overloaded)
            }
            Err(tokio::sync::TryAcquireError::Closed) => Err(InferError::ShuttingDown),
        }
    }

    /// Waits for a slot for these requests. Cancelling the wait (dropping
    /// the future) drops the places with it.
    pub async fn start(&self, queued: Vec<Queued>) -> Result<Running, InferError> {
        let slot = self.slots.clone().acquire_owned().await.map_err(|_| InferError::ShuttingDown)?;
        let places = queued.into_iter().map(|q| (q.place, Tracked::new(&self.metrics.running))).collect::<Vec<_>>();
        Ok(Running { _slot: slot, _places: places })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gauges(m: &Metrics) -> (i64, i64) {
        (m.waiting.get(), m.running.get())
    }

    #[tokio::test]
    async fn places_and_slots_come_back_on_every_path() {
        let m = Arc::new(Metrics::new("v"));
        let a = Admission::new(1, 1, m.clone());
        let q1 = a.admit().unwrap();
        let q2 = a.admit().unwrap();
        assert_eq!(a.admit().unwrap_err(), InferError::Overloaded);
        assert_eq!(gauges(&m), (2, 0));
        let r1 = a.start(vec![q1]).await.unwrap();
        assert_eq!(gauges(&m), (1, 1));
        // the second waits for the slot; a timeout cancels the wait
        let waited = tokio::time::timeout(std::time::Duration::from_millis(20), a.start(vec![q2])).await;
        assert!(waited.is_err());
        assert_eq!(gauges(&m), (0, 1));
        // its place is free again; the first still runs
        let q3 = a.admit().unwrap();
        drop(r1);
        assert_eq!(gauges(&m), (1, 0));
        let r3 = a.start(vec![q3]).await.unwrap();
        drop(r3);
        assert_eq!(gauges(&m), (0, 0));
        assert_eq!(a.places.available_permits(), 2);
        assert_eq!(a.slots.available_permits(), 1);
    }

    #[tokio::test]
    async fn a_slot_moved_into_a_blocking_task_is_held_until_the_task_ends() {
        let m = Arc::new(Metrics::new("v"));
        let a = Arc::new(Admission::new(4, 1, m.clone()));
        let running = a.start(vec![a.admit().unwrap()]).await.unwrap();
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let task = tokio::task::spawn_blocking(move || {
            let _running = running;
            rx.recv().ok();
        });
        // the caller gives up on the task; the slot stays taken
        drop(task);
        let second =
            tokio::time::timeout(std::time::Duration::from_millis(50), a.start(vec![a.admit().unwrap()])).await;
        assert!(second.is_err(), "a second run started while the first still ran");
        assert_eq!(m.running.get(), 1);
        tx.send(()).unwrap();
        let r = tokio::time::timeout(std::time::Duration::from_secs(5), a.start(vec![a.admit().unwrap()])).await;
        assert!(r.is_ok());
    }
}
