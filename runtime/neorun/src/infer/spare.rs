//! Spare capacity: work that must never slow live traffic (shadow copies)
//! runs here, on its own few threads in Linux's `SCHED_IDLE` class (and
//! nice 19 where that is refused), never in the live admission queue and
//! never holding a live slot. `SCHED_IDLE` matters: a live thread waking
//! on a CPU that runs an idle-class thread preempts it at once, where a
//! nice-19 thread of the normal class can hold the CPU until the next tick
//! — measured here, that put 4 ms on the caller's p99. A job
//! that finds every spare thread busy is refused at once (the caller counts
//! it as shed): nothing queues, so memory does not grow with load.

use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};

type Job = Box<dyn FnOnce() + Send + 'static>;

pub struct SparePool {
    size: usize,
    tx: Mutex<Option<SyncSender<Job>>>,
    threads: Mutex<Vec<std::thread::JoinHandle<()>>>,
}

impl SparePool {
    /// `threads` workers; each takes one job at a time and none waits.
    /// With `cpus`, the workers run only on those CPUs.
    pub fn new(threads: usize, cpus: Vec<usize>) -> Arc<SparePool> {
        // a rendezvous channel: a send succeeds only when a worker is idle
        let (tx, rx) = sync_channel::<Job>(0);
        let rx = Arc::new(Mutex::new(rx));
        let mut handles = Vec::new();
        for i in 0..threads.max(1) {
            let (rx, cpus) = (rx.clone(), cpus.clone());
            let h = std::thread::Builder::new()
                .name(format!("neorun-spare-{i}"))
                .spawn(move || {
                    if !cpus.is_empty() {
                        if let Err(e) = crate::cpus::pin_current_thread(&cpus) {
                            tracing::warn!("a spare thread could not be confined to {cpus:?}: {e}");
                        }
                    }
                    lower_priority();
                    loop {
                        let job = {
                            let rx = rx.lock().unwrap_or_else(|e| e.into_inner());
                            rx.recv()
                        };
                        match job {
                            // a panic in a job ends that job, not the worker
                            Ok(job) => {
                                let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
                            }
                            Err(_) => break,
                        }
                    }
                })
                .expect("starting a spare-capacity thread");
            handles.push(h);
        }
        Arc::new(SparePool { size: threads.max(1), tx: Mutex::new(Some(tx)), threads: Mutex::new(handles) })
    }

    /// How many spare threads there are.
    pub fn size(&self) -> usize {
        self.size
    }

    /// Runs `job` on an idle spare thread; `false` (the job dropped) when
    /// there is none.
    pub fn try_run(&self, job: impl FnOnce() + Send + 'static) -> bool {
        let tx = self.tx.lock().unwrap_or_else(|e| e.into_inner()).clone();
        match tx {
            Some(tx) => match tx.try_send(Box::new(job)) {
                Ok(()) => true,
                Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => false,
            },
            None => false,
        }
    }

    /// Takes no more jobs; waits for the running ones.
    pub fn close(&self) {
        self.tx.lock().unwrap_or_else(|e| e.into_inner()).take();
        for h in self.threads.lock().unwrap_or_else(|e| e.into_inner()).drain(..) {
            let _ = h.join();
        }
    }
}

/// `SCHED_IDLE` (and nice 19) for the calling thread: Linux schedules
/// threads by their own policy, so live threads always get the CPU first.
pub fn lower_priority() {
    #[cfg(target_os = "linux")]
    // SAFETY: both calls act on this thread only (pid 0 / its own tid);
    // failure leaves the priority as it was
    unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, tid, 19);
        let param = libc::sched_param { sched_priority: 0 };
        if libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) != 0 {
            tracing::debug!("SCHED_IDLE refused for the spare threads; they run at nice 19");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_busy_pool_refuses_at_once_and_takes_work_again_when_idle() {
        let pool = SparePool::new(1, Vec::new());
        let (release, wait) = std::sync::mpsc::channel::<()>();
        let (started_tx, started) = std::sync::mpsc::channel::<()>();
        // the worker may not be at recv yet: retry until it takes the job
        let wait = Arc::new(Mutex::new(wait));
        let mut taken = false;
        for _ in 0..200 {
            let (w, s) = (wait.clone(), started_tx.clone());
            if pool.try_run(move || {
                s.send(()).unwrap();
                let _ = w.lock().unwrap().recv();
            }) {
                taken = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(taken);
        started.recv_timeout(Duration::from_secs(5)).unwrap();
        assert!(!pool.try_run(|| {}), "a second job was taken while the only worker was busy");
        release.send(()).unwrap();
        let (done_tx, done) = std::sync::mpsc::channel();
        let t0 = std::time::Instant::now();
        loop {
            let d = done_tx.clone();
            if pool.try_run(move || d.send(()).unwrap()) {
                break;
            }
            assert!(t0.elapsed() < Duration::from_secs(5));
            std::thread::sleep(Duration::from_millis(5));
        }
        done.recv_timeout(Duration::from_secs(5)).unwrap();
        pool.close();
        assert!(!pool.try_run(|| {}));
    }
}
