//! A persistent thread pool for the short parallel regions of batch-1 decode.
//!
//! A decode step of a small model is a few hundred products of 5 to 50 µs each. rayon's
//! fork/join puts idle workers to sleep on a futex, and waking them costs several µs (far more
//! when the other core is busy), so small products used to run on one thread. This pool keeps
//! `par::threads() - 1` workers that, between jobs, spin briefly, then yield, then park:
//!
//! * **Low latency when the machine is quiet**: a worker that spun or yielded sees a new job
//!   within a fraction of a µs.
//! * **No collapse when it is busy**: after [`SPIN`] a waiting worker only yields (it runs again
//!   only when no other thread wants the core) and after [`YIELD`] it parks.
//! * **Nobody waits on a descheduled worker**: a job is cut into chunks that the caller and the
//!   workers claim one at a time with a compare-and-swap; whatever a sleeping worker did not
//!   claim, the caller runs. The caller waits only for chunks already claimed.
//!
//! * **Back-off when the machine is oversubscribed**: a caller that waited more than [`STALL`]
//!   for a descheduled worker's chunk runs the next [`BACKOFF_JOBS`] jobs alone, then tries
//!   again.
//!
//! The shared words sit on their own cache lines. One job runs at a time: a caller that finds
//! the pool busy (another thread's job, or a call from inside a job) runs its chunks itself.
//! A panicking chunk is caught, the job still completes, and the caller re-panics after every
//! chunk is done, so no thread is left holding borrowed data.

use lowbit_core::clock::Instant;
use std::cell::UnsafeCell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::thread::Thread;
use std::time::Duration;

/// How long an idle worker spins before it starts yielding.
const SPIN: Duration = Duration::from_micros(100);
/// How long an idle worker yields before it parks.
const YIELD: Duration = Duration::from_millis(5);
/// Most chunks in one job (the chunk counter is 16 bits of the state word).
pub(crate) const MAX_CHUNKS: usize = u16::MAX as usize;
/// A caller that waited for a worker's chunk longer than this and than [`STALL_CHUNKS`] of its
/// own chunks (a worker descheduled mid-chunk: the machine has more runnable threads than cores)
/// runs the next [`BACKOFF_JOBS`] jobs alone: a stalled fork-join costs milliseconds, a job on
/// one core microseconds.
const STALL: Duration = Duration::from_micros(300);
const STALL_CHUNKS: u32 = 3;
/// Jobs run on the caller alone after a stall (a few decode steps of a small model).
const BACKOFF_JOBS: u64 = 1000;

/// A value alone on its cache line(s) (128 bytes: adjacent-line prefetch pairs lines).
#[repr(align(128))]
struct Line<T>(T);

/// A job: a chunk function whose borrows the caller keeps alive until every chunk is done.
type Job = *const (dyn Fn(usize) + Sync);

struct Shared {
    /// `epoch << 32 | total << 16 | next`: the current job's number, its chunks, the next
    /// unclaimed chunk.
    state: Line<AtomicU64>,
    /// Chunks of the current job finished.
    done: Line<AtomicUsize>,
    /// Whether a chunk of the current job panicked.
    panicked: Line<AtomicBool>,
    /// The current job; written by the owner of `busy` before it publishes a new epoch.
    job: Line<UnsafeCell<Option<Job>>>,
    /// Held by the thread whose job runs.
    busy: Line<AtomicBool>,
    /// Jobs started, and the job count below which jobs run on the caller alone (after a stall).
    jobs: Line<AtomicU64>,
    alone_until: Line<AtomicU64>,
    /// Per worker: parked (or about to park) waiting for a job.
    sleeping: Vec<Line<AtomicBool>>,
    /// Per worker: its thread, set by the worker itself when it starts (to unpark it).
    handles: Vec<OnceLock<Thread>>,
}

// SAFETY: `job` is written only by the holder of `busy` while no chunk of a job is claimable
// (before the epoch that makes it visible, after every chunk of the previous job is done), and
// read only by a thread that has claimed a chunk of that epoch (acquire on `state`, after the
// release that published it). The pointee is `Sync`, so calling it from several threads is fine.
unsafe impl Sync for Shared {}
// SAFETY: as above; the raw pointer is only dereferenced under that protocol.
unsafe impl Send for Shared {}

const fn pack(epoch: u32, total: usize, next: usize) -> u64 {
    ((epoch as u64) << 32) | ((total as u64) << 16) | next as u64
}
const fn epoch_of(s: u64) -> u32 {
    (s >> 32) as u32
}

impl Shared {
    /// Claims the next chunk of job `epoch`, if any is left.
    fn claim(&self, epoch: u32) -> Option<usize> {
        let mut s = self.state.0.load(Ordering::Acquire);
        loop {
            let (total, next) = (((s >> 16) & 0xffff) as usize, (s & 0xffff) as usize);
            if epoch_of(s) != epoch || next >= total {
                return None;
            }
            match self.state.0.compare_exchange_weak(s, s + 1, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return Some(next),
                Err(now) => s = now,
            }
        }
    }

    /// Runs chunks of job `epoch` until none is left; returns how many it ran.
    fn work(&self, epoch: u32) -> u32 {
        let mut ran = 0;
        while let Some(i) = self.claim(epoch) {
            ran += 1;
            // SAFETY: a chunk of `epoch` is claimed and not yet done, so its job is still the one
            // in `job` and its borrows are alive (the caller waits for `done`; see `Shared`).
            let job = unsafe { (*self.job.0.get()).expect("a published job") };
            // SAFETY: as above: the pointee outlives every claimed chunk.
            let f = unsafe { &*job };
            if catch_unwind(AssertUnwindSafe(|| f(i))).is_err() {
                self.panicked.0.store(true, Ordering::Relaxed);
            }
            self.done.0.fetch_add(1, Ordering::Release);
        }
        ran
    }

    fn worker(&self, me: usize) {
        // Before the worker can park (`sleeping`), so a sleeping worker always has its handle.
        let _ = self.handles[me].set(std::thread::current());
        let mut seen = 0u32;
        loop {
            let start = Instant::now();
            let mut n = 0u32;
            let epoch = loop {
                let e = epoch_of(self.state.0.load(Ordering::Acquire));
                if e != seen {
                    break e;
                }
                n = n.wrapping_add(1);
                if !n.is_multiple_of(64) {
                    std::hint::spin_loop();
                    continue;
                }
                let idle = start.elapsed();
                if idle < SPIN {
                    std::hint::spin_loop();
                } else if idle < YIELD {
                    std::thread::yield_now();
                } else {
                    let flag = &self.sleeping[me].0;
                    flag.store(true, Ordering::SeqCst);
                    if epoch_of(self.state.0.load(Ordering::SeqCst)) == seen {
                        std::thread::park();
                    }
                    flag.store(false, Ordering::SeqCst);
                }
            };
            seen = epoch;
            let _ = self.work(epoch);
        }
    }
}

/// How a thread is started: std's spawn, or what [`set_thread_spawner`] installed.
pub type ThreadSpawner = fn(Box<dyn FnOnce() + Send>) -> std::io::Result<()>;

static SPAWNER: OnceLock<ThreadSpawner> = OnceLock::new();

/// Installs the function that starts lowbit's threads where std cannot (the browser's threaded
/// build: wasm32 with atomics, where JS starts a Web Worker on the same memory). Call it before
/// the first parallel product; returns false if one was installed already.
pub fn set_thread_spawner(spawner: ThreadSpawner) -> bool {
    SPAWNER.set(spawner).is_ok()
}

/// Starts a thread running `f`.
fn spawn(name: String, f: Box<dyn FnOnce() + Send>) -> std::io::Result<()> {
    match SPAWNER.get() {
        Some(s) => s(f),
        None => std::thread::Builder::new().name(name).spawn(f).map(|_| ()),
    }
}

struct Pool {
    shared: &'static Shared,
    /// Threads of a job, the caller included.
    threads: usize,
}

fn pool() -> &'static Pool {
    static POOL: OnceLock<Pool> = OnceLock::new();
    POOL.get_or_init(|| {
        let threads = crate::par::threads().clamp(1, 64);
        let workers = threads - 1;
        let shared: &'static Shared = Box::leak(Box::new(Shared {
            state: Line(AtomicU64::new(0)),
            done: Line(AtomicUsize::new(0)),
            panicked: Line(AtomicBool::new(false)),
            job: Line(UnsafeCell::new(None)),
            busy: Line(AtomicBool::new(false)),
            jobs: Line(AtomicU64::new(0)),
            alone_until: Line(AtomicU64::new(0)),
            sleeping: (0..workers).map(|_| Line(AtomicBool::new(false))).collect(),
            handles: (0..workers).map(|_| OnceLock::new()).collect(),
        }));
        let mut started = 0;
        for me in 0..workers {
            match spawn(format!("lowbit-pool-{me}"), Box::new(move || shared.worker(me))) {
                Ok(()) => started += 1,
                // Without its workers the pool still runs every job on the caller.
                Err(_) => break,
            }
        }
        Pool { shared, threads: started + 1 }
    })
}

/// Starts the pool now (rather than at the first parallel product); returns its threads, the
/// caller included.
pub fn start() -> usize {
    threads()
}

/// Threads a job of the pool runs on, the caller included.
pub(crate) fn threads() -> usize {
    if crate::par::threads() <= 1 {
        1
    } else {
        pool().threads
    }
}

/// Calls `f(i)` for every `i < chunks`, on the pool's workers and the calling thread; returns
/// when all calls have returned. A panic in any call is re-raised here, after all are done.
///
/// # Panics
/// If `chunks > MAX_CHUNKS`, or a call of `f` panicked.
pub(crate) fn run(chunks: usize, f: &(dyn Fn(usize) + Sync)) {
    assert!(chunks <= MAX_CHUNKS, "pool job of {chunks} chunks");
    if chunks <= 1 || threads() <= 1 {
        (0..chunks).for_each(f);
        return;
    }
    let p = pool();
    let sh = p.shared;
    let job_no = sh.jobs.0.fetch_add(1, Ordering::Relaxed);
    if job_no < sh.alone_until.0.load(Ordering::Relaxed)
        || sh.busy.0.compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed).is_err()
    {
        // Backing off after a stall, or another job runs (another thread's, or this is a call
        // from inside a chunk).
        (0..chunks).for_each(f);
        return;
    }
    // SAFETY: only the lifetime is erased. The pointer is reachable by workers only through
    // chunks of the epoch published below, and this function returns only after every one of
    // them is done (`done == chunks`), so no worker calls `f` after its borrows end.
    let job: Job = unsafe { std::mem::transmute::<&(dyn Fn(usize) + Sync), Job>(f) };
    // SAFETY: `busy` is ours and the previous job is complete, so no thread reads `job` now.
    unsafe { *sh.job.0.get() = Some(job) };
    sh.done.0.store(0, Ordering::Relaxed);
    sh.panicked.0.store(false, Ordering::Relaxed);
    let epoch = epoch_of(sh.state.0.load(Ordering::Relaxed)).wrapping_add(1);
    sh.state.0.store(pack(epoch, chunks, 0), Ordering::SeqCst);
    for (flag, t) in sh.sleeping.iter().zip(&sh.handles) {
        if flag.0.load(Ordering::SeqCst) {
            if let Some(t) = t.get() {
                t.unpark();
            }
        }
    }
    let began = Instant::now();
    let mine = sh.work(epoch);
    let start = Instant::now();
    let own_chunk = (start - began) / mine.max(1);
    let mut n = 0u32;
    while sh.done.0.load(Ordering::Acquire) < chunks {
        n = n.wrapping_add(1);
        if n.is_multiple_of(64) && start.elapsed() > SPIN {
            std::thread::yield_now();
        } else {
            std::hint::spin_loop();
        }
    }
    let waited = start.elapsed();
    if waited > STALL && waited > own_chunk * STALL_CHUNKS {
        sh.alone_until.0.store(job_no + BACKOFF_JOBS, Ordering::Relaxed);
    }
    let panicked = sh.panicked.0.load(Ordering::Relaxed);
    sh.busy.0.store(false, Ordering::Release);
    if panicked {
        panic!("lowbit-cpu: a parallel kernel task panicked");
    }
}

/// Calls `f(i, chunk)` for each `chunk_len`-sized chunk of `out` (the last may be shorter) on
/// the pool.
pub(crate) fn for_each_chunk<T: Send>(out: &mut [T], chunk_len: usize, f: impl Fn(usize, &mut [T]) + Sync) {
    let chunks: Vec<std::sync::Mutex<&mut [T]>> = out.chunks_mut(chunk_len.max(1)).map(std::sync::Mutex::new).collect();
    run(chunks.len(), &|i| {
        let mut c = chunks[i].lock().unwrap_or_else(|e| e.into_inner());
        f(i, &mut c);
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU32;

    #[test]
    fn every_chunk_runs_once_over_many_jobs() {
        for job in 0..2000usize {
            let chunks = 1 + job % 37;
            let hits: Vec<AtomicU32> = (0..chunks).map(|_| AtomicU32::new(0)).collect();
            run(chunks, &|i| {
                hits[i].fetch_add(1, Ordering::Relaxed);
            });
            assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1), "job {job}");
        }
    }

    #[test]
    fn concurrent_and_nested_callers_complete() {
        let total = AtomicUsize::new(0);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..200 {
                        run(8, &|_| {
                            // a nested job runs inline on this thread
                            run(3, &|_| {
                                total.fetch_add(1, Ordering::Relaxed);
                            });
                        });
                    }
                });
            }
        });
        assert_eq!(total.load(Ordering::Relaxed), 4 * 200 * 8 * 3);
    }

    #[test]
    fn a_panicking_chunk_panics_the_caller_and_the_pool_recovers() {
        let caught = catch_unwind(|| {
            run(16, &|i| {
                if i == 11 {
                    panic!("chunk {i}");
                }
            })
        });
        assert!(caught.is_err());
        let n = AtomicUsize::new(0);
        run(16, &|_| {
            n.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(n.load(Ordering::Relaxed), 16);
    }
}
