//! A persistent team of threads for the parallel work of generating one token: the caller and
//! `threads - 1` workers that spin between jobs instead of sleeping.
//!
//! Why not rayon here: a generated token runs about 240 short parallel operations, tens of
//! microseconds each (the ternary GEMVs, attention, the output head), with serial work between
//! them (norms, quantisation, residual adds). Between two of them rayon's idle workers fall
//! asleep, and waking one through the kernel costs tens of microseconds on a virtual machine, so
//! the many short ternary matmuls streamed far below the read bandwidth while the output head,
//! one long operation, nearly reached it (docs/performance-notes.md, "Threads and the spinning
//! team"). A team worker notices a new job within a few hundred nanoseconds. Prompts keep rayon:
//! their operations are long and uneven, and work stealing balances them.
//!
//! Workers spin for [`SPIN_FOR`] after their last job and then park, so an idle session (or one
//! running a prompt on rayon's threads) costs no CPU beyond that.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long a worker keeps spinning after its last job before it parks. Longer than the serial
/// gaps inside a token (a few to a few hundred microseconds), short enough that a prompt on
/// rayon's threads right after generation barely competes with it.
const SPIN_FOR: Duration = Duration::from_millis(1);

/// One job: `f(member)` for every member of the team, member 0 being the caller.
struct Job<'a> {
    f: &'a (dyn Fn(usize) + Sync),
}

struct Shared {
    /// Bumped once per job; a worker runs a job when it sees a new value.
    epoch: AtomicU64,
    /// The current job (a `*const Job` on the caller's stack, valid until `pending` reaches 0).
    job: AtomicPtr<()>,
    /// Workers still running the current job.
    pending: AtomicUsize,
    /// Set when a worker's part of the current job panicked.
    panicked: AtomicBool,
    /// Workers parked on `wake` (they add themselves before re-checking `epoch`).
    parked: AtomicUsize,
    lock: Mutex<()>,
    wake: Condvar,
    stop: AtomicBool,
}

/// The caller plus `threads - 1` spinning workers (none for one thread).
pub struct Team {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
    /// Held while a job runs: a second caller (or a job that runs a job) works alone instead.
    running: Mutex<()>,
}

impl Team {
    /// A team of `threads` (at least 1) members: this thread and `threads - 1` new ones.
    pub fn new(threads: usize) -> Team {
        let shared = Arc::new(Shared {
            epoch: AtomicU64::new(0),
            job: AtomicPtr::new(std::ptr::null_mut()),
            pending: AtomicUsize::new(0),
            panicked: AtomicBool::new(false),
            parked: AtomicUsize::new(0),
            lock: Mutex::new(()),
            wake: Condvar::new(),
            stop: AtomicBool::new(false),
        });
        let workers = (1..threads.max(1))
            .map(|member| {
                let shared = Arc::clone(&shared);
                std::thread::Builder::new()
                    .name(format!("tern-team-{member}"))
                    .spawn(move || work(&shared, member))
                    .expect("spawning a team thread")
            })
            .collect();
        Team { shared, workers, running: Mutex::new(()) }
    }

    /// How many threads run a job, the caller included.
    pub fn threads(&self) -> usize {
        self.workers.len() + 1
    }

    /// `f(member)` on every member at once (`member` in `0..threads()`, 0 on this thread);
    /// returns when all have finished. A panic in any member's part is raised here.
    pub fn run(&self, f: &(dyn Fn(usize) + Sync)) {
        let _running = match self.running.try_lock() {
            Ok(guard) => guard,
            // A job that panicked earlier left the lock poisoned; the team itself is intact.
            Err(std::sync::TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => {
                // Another job is running on this team: do this one alone rather than wait or nest.
                (0..self.threads()).for_each(f);
                return;
            }
        };
        if self.workers.is_empty() {
            return f(0);
        }
        let s = &*self.shared;
        let job = Job { f };
        s.job.store(&job as *const Job as *mut (), Ordering::Relaxed);
        s.pending.store(self.workers.len(), Ordering::Relaxed);
        s.panicked.store(false, Ordering::Relaxed);
        // SeqCst pairs with the parking worker's `parked` increment and `epoch` re-check: either
        // it sees the new epoch or this sees it parked and wakes it.
        s.epoch.fetch_add(1, Ordering::SeqCst);
        if s.parked.load(Ordering::SeqCst) > 0 {
            let _guard = s.lock.lock().unwrap_or_else(|e| e.into_inner());
            s.wake.notify_all();
        }
        let mine = catch_unwind(AssertUnwindSafe(|| f(0)));
        // The job (and what it borrows) must outlive every worker's use of it, panic or not.
        while s.pending.load(Ordering::Acquire) != 0 {
            std::hint::spin_loop();
        }
        if let Err(payload) = mine {
            std::panic::resume_unwind(payload);
        }
        assert!(!s.panicked.load(Ordering::Relaxed), "a team thread panicked in a parallel operation");
    }

    /// `f(i, chunk)` for each `chunk`-long piece of `data` (the last may be shorter), the pieces
    /// handed out in order to whichever member is free.
    pub fn for_each_chunk_mut<T: Send>(
        &self,
        data: &mut [T],
        chunk: usize,
        f: impl Fn(usize, &mut [T]) + Sync,
    ) {
        let chunk = chunk.max(1);
        let (len, chunks) = (data.len(), data.len().div_ceil(chunk));
        let base = SendPtr(data.as_mut_ptr());
        let next = AtomicUsize::new(0);
        self.run(&|_member| {
            let base = &base;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= chunks {
                    break;
                }
                let start = i * chunk;
                // SAFETY: each index i is taken by exactly one member (the atomic counter), so
                // the pieces are disjoint, within `data`, and `data` is borrowed mutably for the
                // whole call, which returns only after every member is done.
                let piece =
                    unsafe { std::slice::from_raw_parts_mut(base.0.add(start), chunk.min(len - start)) };
                f(i, piece);
            }
        });
    }
}

impl Drop for Team {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        {
            let _guard = self.shared.lock.lock().unwrap_or_else(|e| e.into_inner());
            self.shared.wake.notify_all();
        }
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

/// A pointer to the start of a slice that members write disjoint parts of.
struct SendPtr<T>(*mut T);
// SAFETY: the members only write disjoint pieces of the slice (`Team::for_each_chunk_mut`),
// whose elements are Send.
unsafe impl<T: Send> Sync for SendPtr<T> {}

/// A worker's life: wait for a new epoch (spinning, then parked), run its part, report done.
fn work(s: &Shared, member: usize) {
    // The epoch the team was made with, not a fresh load: a job started before this thread
    // first looked must still be run.
    let mut seen = 0;
    loop {
        let mut idle_since = Instant::now();
        let mut spins = 0u32;
        loop {
            let epoch = s.epoch.load(Ordering::Acquire);
            if epoch != seen {
                seen = epoch;
                break;
            }
            if s.stop.load(Ordering::Relaxed) {
                return;
            }
            std::hint::spin_loop();
            spins = spins.wrapping_add(1);
            if spins.is_multiple_of(256) && idle_since.elapsed() > SPIN_FOR {
                s.parked.fetch_add(1, Ordering::SeqCst);
                let mut guard = s.lock.lock().unwrap_or_else(|e| e.into_inner());
                while s.epoch.load(Ordering::SeqCst) == seen && !s.stop.load(Ordering::SeqCst) {
                    guard = s.wake.wait(guard).unwrap_or_else(|e| e.into_inner());
                }
                drop(guard);
                s.parked.fetch_sub(1, Ordering::SeqCst);
                idle_since = Instant::now();
            }
        }
        // SAFETY: the caller stored a live job before bumping the epoch and keeps it alive until
        // `pending` reaches 0, which this worker's decrement below is part of.
        let job = unsafe { &*(s.job.load(Ordering::Relaxed) as *const Job) };
        if catch_unwind(AssertUnwindSafe(|| (job.f)(member))).is_err() {
            s.panicked.store(true, Ordering::Relaxed);
        }
        s.pending.fetch_sub(1, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_chunk_is_visited_once_with_its_index() {
        for threads in [1, 2, 3] {
            let team = Team::new(threads);
            for (len, chunk) in [(0, 4), (1, 4), (10, 3), (1000, 7), (64, 64)] {
                let mut data = vec![usize::MAX; len];
                team.for_each_chunk_mut(&mut data, chunk, |i, piece| {
                    for (j, x) in piece.iter_mut().enumerate() {
                        assert_eq!(*x, usize::MAX, "visited twice");
                        *x = i * chunk + j;
                    }
                });
                assert_eq!(data, (0..len).collect::<Vec<_>>(), "threads {threads}, len {len}, chunk {chunk}");
            }
        }
    }

    #[test]
    fn every_member_runs_each_job_after_parking() {
        let team = Team::new(3);
        for round in 0..3 {
            let hits = AtomicUsize::new(0);
            team.run(&|member| {
                hits.fetch_add(1 << (8 * member), Ordering::Relaxed);
            });
            assert_eq!(hits.into_inner(), 0x01_01_01, "round {round}");
            // Long enough for the workers to park: the next job must wake them.
            std::thread::sleep(SPIN_FOR * 3);
        }
    }

    #[test]
    fn a_panic_in_a_worker_reaches_the_caller_and_the_team_survives() {
        let team = Team::new(2);
        let result = catch_unwind(AssertUnwindSafe(|| {
            team.run(&|member| {
                if member == 1 {
                    panic!("worker part");
                }
            })
        }));
        assert!(result.is_err());
        // Both members still take part (not the caller alone, as for a team already busy).
        let members = Mutex::new(Vec::new());
        team.run(&|member| {
            members.lock().unwrap().push((member, std::thread::current().id()));
        });
        let mut members = members.into_inner().unwrap();
        members.sort_by_key(|m| m.0);
        assert_eq!(members.iter().map(|m| m.0).collect::<Vec<_>>(), [0, 1]);
        assert_ne!(members[0].1, members[1].1, "the worker ran its part on its own thread");
    }
}
