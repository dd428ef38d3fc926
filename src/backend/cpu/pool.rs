//! The CPU backend's threads: a fixed set of helper threads (`gemm_threads() − 1` of them, started on first
//! use) that work with the calling thread on one job at a time. Used by the GEMM and by the element-wise ops
//! of large batches. Helpers spin for a short while after each job (the next op of a training step comes
//! within microseconds), then sleep on a condition variable.
//!
//! Work is handed out in chunks from an atomic counter, so a thread the OS (or a busy host) delays simply
//! takes fewer chunks. Callers choose chunk boundaries that do not depend on the thread count, so results
//! are the same with any number of threads.
//!
//! A caller that finds the pool busy (another backend on another thread, or a nested call from inside a
//! job) runs its chunks alone: nothing waits on anything else.
//!
//! On a machine busy with other work a helper can lose its core in the middle of a chunk, and every op then
//! waits for it: with another process spinning on one of 2 cores, two threads ran a step at half the speed of
//! one (bench/speed-notes.md, "A busy machine"). So the caller notes how long it waited for the helpers after
//! its own share: when, over a window of WINDOW_JOBS jobs, it waited more than WAIT_SHARE of the time it
//! worked, it runs the next SOLO_JOBS jobs alone, then tries the helpers again. Results do not depend on the
//! thread count, so this changes only the speed.

use std::ops::Range;
use std::time::{Duration, Instant};

/// Elements per chunk of the element-wise ops (64 KiB of f32): smaller work is not worth a second thread.
pub const CHUNK: usize = 1 << 14;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, OnceLock};

/// Runs `f(i)` for every i in 0..chunks, on up to `threads` threads (this one included), each chunk once.
pub fn for_each(threads: usize, chunks: usize, f: &(dyn Fn(usize) + Sync)) {
    if threads > 1 && chunks > 1 {
        if let Some(pool) = Pool::get(threads) {
            let next = AtomicUsize::new(0);
            let work = |_thread: usize| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= chunks {
                    break;
                }
                f(i);
            };
            if pool.run(&work) {
                return;
            }
        }
    }
    (0..chunks).for_each(f);
}

/// Runs `f(range)` over `0..len` cut into ranges of `chunk` (the last one shorter), like [`for_each`].
pub fn for_each_range(threads: usize, len: usize, chunk: usize, f: &(dyn Fn(Range<usize>) + Sync)) {
    let chunk = chunk.max(1);
    for_each(threads, len.div_ceil(chunk), &|i| {
        f(i * chunk..((i + 1) * chunk).min(len))
    });
}

/// A mutable slice that the chunks of one [`for_each`] cut into disjoint parts.
pub struct SharedMut<'a, T> {
    ptr: *mut T,
    len: usize,
    _borrow: std::marker::PhantomData<&'a mut [T]>,
}

// SAFETY: only disjoint parts are handed out (the contract of `part`), each to one thread.
unsafe impl<T: Send> Sync for SharedMut<'_, T> {}

impl<'a, T> SharedMut<'a, T> {
    pub fn new(slice: &'a mut [T]) -> Self {
        SharedMut {
            ptr: slice.as_mut_ptr(),
            len: slice.len(),
            _borrow: std::marker::PhantomData,
        }
    }

    /// `slice[r]`.
    ///
    /// # Safety
    /// No two live parts may overlap (give each chunk of a `for_each` its own range).
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn part(&self, r: Range<usize>) -> &mut [T] {
        assert!(r.start <= r.end && r.end <= self.len, "part out of range");
        // SAFETY: in bounds (asserted); disjointness is the caller's contract.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(r.start), r.end - r.start) }
    }
}

struct Pool {
    helpers: usize,
    /// Held by the thread that is running a job (another caller meanwhile works alone), with the weighing of
    /// its waits for the helpers (see the module doc).
    busy: Mutex<Balance>,
    /// Bumped once per job; helpers wait for it to change.
    generation: AtomicUsize,
    /// The current job: a `&(dyn Fn(usize) + Sync)` with its lifetime erased, valid while `pending > 0`.
    job: Mutex<Option<JobRef>>,
    /// Helpers that have not finished the current job.
    pending: AtomicUsize,
    panicked: AtomicBool,
    wake: Condvar,
    sleep_lock: Mutex<()>,
}

/// The running caller's weighing of its waits for the helpers (see the module doc).
#[derive(Default)]
struct Balance {
    /// Jobs in the current window, and the time this thread worked and then waited for helpers in it.
    jobs: usize,
    worked: Duration,
    waited: Duration,
    /// Jobs still to run alone before the helpers are tried again.
    solo_left: usize,
}

impl Balance {
    /// Adds one job to the current window; at the window's end, leaves the helpers out for SOLO_JOBS jobs if
    /// this thread waited for them more than WAIT_SHARE of the time it worked.
    fn note(&mut self, worked: Duration, waited: Duration) {
        self.jobs += 1;
        self.worked += worked;
        self.waited += waited;
        if self.jobs < WINDOW_JOBS {
            return;
        }
        if self.waited.as_secs_f64() > WAIT_SHARE * self.worked.as_secs_f64() {
            self.solo_left = SOLO_JOBS;
        }
        (self.jobs, self.worked, self.waited) = (0, Duration::ZERO, Duration::ZERO);
    }
}

#[derive(Clone, Copy)]
struct JobRef(*const (dyn Fn(usize) + Sync + 'static));
// SAFETY: the job is Sync and outlives every use (see `Pool::run`).
unsafe impl Send for JobRef {}

/// Spin iterations a helper waits for the next job before it sleeps (a few milliseconds).
const SPIN_ROUNDS: usize = 1 << 16;
/// Jobs per window over which the caller's waiting for helpers is weighed.
const WINDOW_JOBS: usize = 32;
/// Waiting for helpers longer than this share of the caller's own work time, over a window, means they cost
/// more than they bring. Measured on mnist, 2 cores: 0.08 on an idle machine, 2.55 with another process
/// spinning on one core.
const WAIT_SHARE: f64 = 0.5;
/// Jobs the caller then runs alone before it tries the helpers again (about 10 mnist steps).
const SOLO_JOBS: usize = 256;

impl Pool {
    /// A pool of `helpers` helper threads, not started yet.
    fn new(helpers: usize) -> Pool {
        Pool {
            helpers,
            busy: Mutex::new(Balance::default()),
            generation: AtomicUsize::new(0),
            job: Mutex::new(None),
            pending: AtomicUsize::new(0),
            panicked: AtomicBool::new(false),
            wake: Condvar::new(),
            sleep_lock: Mutex::new(()),
        }
    }

    /// The pool for `threads` threads (the caller plus `threads − 1` helpers), created on first use; `None`
    /// when asked for another count than the first caller (the count is fixed per process).
    fn get(threads: usize) -> Option<&'static Pool> {
        static POOL: OnceLock<&'static Pool> = OnceLock::new();
        let pool = *POOL.get_or_init(|| {
            let pool: &'static Pool = Box::leak(Box::new(Pool::new(threads - 1)));
            for h in 0..pool.helpers {
                std::thread::Builder::new()
                    .name(format!("tiedae-cpu-{}", h + 1))
                    .spawn(move || pool.helper(h + 1))
                    .expect("spawn a CPU backend thread");
            }
            pool
        });
        (pool.helpers + 1 == threads).then_some(pool)
    }

    /// Runs `work(t)` on every thread of the pool, t = 0 on this one, and returns when all are done; false
    /// (nothing run) when the pool is busy with another caller's job.
    fn run(&self, work: &(dyn Fn(usize) + Sync)) -> bool {
        let Ok(mut balance) = self.busy.try_lock() else {
            return false;
        };
        // Left alone for a while after the helpers kept this thread waiting (see the module doc).
        if balance.solo_left > 0 {
            balance.solo_left -= 1;
            return false;
        }
        // SAFETY: the lifetime is erased only for the duration of this call: helpers call the job between the
        // generation bump below and their decrement of `pending`, and this function returns only after
        // `pending` is 0 (also when `work` panics here: see the guard).
        let erased: *const (dyn Fn(usize) + Sync + 'static) =
            unsafe { std::mem::transmute(work as *const (dyn Fn(usize) + Sync + '_)) };
        *self.job.lock().unwrap_or_else(|e| e.into_inner()) = Some(JobRef(erased));
        self.pending.store(self.helpers, Ordering::SeqCst);
        self.generation.fetch_add(1, Ordering::SeqCst);
        {
            let _g = self.sleep_lock.lock().unwrap_or_else(|e| e.into_inner());
            self.wake.notify_all();
        }
        /// Waits for the helpers even when this thread's share panics, so the job is never left dangling.
        struct WaitForHelpers<'p>(&'p Pool);
        impl Drop for WaitForHelpers<'_> {
            fn drop(&mut self) {
                while self.0.pending.load(Ordering::Acquire) != 0 {
                    std::hint::spin_loop();
                }
                *self.0.job.lock().unwrap_or_else(|e| e.into_inner()) = None;
            }
        }
        let wait = WaitForHelpers(self);
        let start = Instant::now();
        work(0);
        let worked = start.elapsed();
        drop(wait);
        let waited = start.elapsed() - worked;
        balance.note(worked, waited);
        assert!(
            !self.panicked.load(Ordering::SeqCst),
            "a CPU backend thread panicked"
        );
        true
    }

    fn helper(&self, index: usize) {
        let mut seen = 0usize;
        loop {
            let mut spins = 0;
            loop {
                let g = self.generation.load(Ordering::Acquire);
                if g != seen {
                    seen = g;
                    break;
                }
                if spins < SPIN_ROUNDS {
                    spins += 1;
                    std::hint::spin_loop();
                } else {
                    let guard = self.sleep_lock.lock().unwrap_or_else(|e| e.into_inner());
                    if self.generation.load(Ordering::Acquire) == seen {
                        drop(self.wake.wait(guard).unwrap_or_else(|e| e.into_inner()));
                    }
                }
            }
            let job = *self.job.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(JobRef(f)) = job {
                // SAFETY: the job stays valid until `pending` reaches 0 (see `run`).
                let f = unsafe { &*f };
                if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(index))).is_err() {
                    self.panicked.store(true, Ordering::SeqCst);
                }
            }
            self.pending.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn helpers_are_left_out_after_a_window_of_long_waits_only() {
        let us = Duration::from_micros;
        let pool = Pool::new(1);
        let balance = || pool.busy.lock().unwrap();
        // An idle machine: the caller waits a little at the end of each job.
        for _ in 0..3 * WINDOW_JOBS {
            balance().note(us(400), us(30));
        }
        assert_eq!(balance().solo_left, 0);
        // A busy one: now and then a helper loses its core for milliseconds.
        for job in 0..WINDOW_JOBS {
            assert_eq!(balance().solo_left, 0, "early, at job {job}");
            balance().note(us(400), if job % 8 == 0 { us(3000) } else { us(10) });
        }
        assert_eq!(balance().solo_left, SOLO_JOBS);
        // Jobs meanwhile run alone: `run` declines them, one by one, then uses the helpers again.
        let ran = AtomicUsize::new(0);
        for _ in 0..SOLO_JOBS {
            assert!(!pool.run(&|_| {
                ran.fetch_add(1, Ordering::Relaxed);
            }));
        }
        assert_eq!(ran.load(Ordering::Relaxed), 0);
        assert_eq!(balance().solo_left, 0);
    }

    #[test]
    fn every_chunk_runs_once() {
        for threads in [1, 2] {
            let mut out = vec![0u32; 1000];
            let shared = SharedMut::new(&mut out);
            for_each_range(threads, 1000, 64, &|r| {
                // SAFETY: the ranges of one for_each_range are disjoint.
                for x in unsafe { shared.part(r) } {
                    *x += 1;
                }
            });
            assert!(out.iter().all(|&x| x == 1));
        }
    }
}
