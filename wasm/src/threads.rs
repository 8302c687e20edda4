//! The threaded build (wasm32 with atomics, shared memory): lowbit's threads are Web Workers on
//! the module's memory. JS (`lowbit.js`) starts the workers first, each instantiating this module
//! on the shared memory and then idling, and defines `globalThis.lowbitSpawnThread(id)`, which
//! hands task `id` to an idle worker; the worker calls [`thread_entry`], which runs the task (a
//! rayon worker or a decode-pool worker: loops that never return). This replaces std's thread
//! spawning, which wasm32-unknown-unknown lacks, for both pools.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use wasm_bindgen::prelude::*;

type Task = Box<dyn FnOnce() + Send>;

/// Tasks handed to JS by id and not yet taken by their worker.
static TASKS: Mutex<BTreeMap<u32, Task>> = Mutex::new(BTreeMap::new());
static NEXT: AtomicU32 = AtomicU32::new(0);

#[wasm_bindgen]
extern "C" {
    /// Defined by lowbit.js before [`init_thread_pool`]: posts `id` to an idle worker.
    #[wasm_bindgen(catch, js_name = lowbitSpawnThread)]
    fn spawn_thread(id: u32) -> std::result::Result<(), JsValue>;
}

fn tasks() -> std::sync::MutexGuard<'static, BTreeMap<u32, Task>> {
    TASKS.lock().unwrap_or_else(|e| e.into_inner())
}

/// lowbit-cpu's and rayon's way to start a thread here.
fn spawn(task: Task) -> std::io::Result<()> {
    let id = NEXT.fetch_add(1, Ordering::Relaxed);
    tasks().insert(id, task);
    spawn_thread(id).map_err(|e| {
        tasks().remove(&id);
        std::io::Error::other(format!(
            "no worker for a lowbit thread: {}",
            e.as_string().unwrap_or_else(|| format!("{e:?}"))
        ))
    })
}

/// Runs task `id` on the calling worker (returns only when the task does, i.e. never for a
/// pool's worker loop).
#[wasm_bindgen(js_name = threadEntry)]
pub fn thread_entry(id: u32) {
    let task = tasks().remove(&id);
    if let Some(task) = task {
        task();
    }
}

/// The module and the shared memory, for the workers to instantiate: `[module, memory]`.
#[wasm_bindgen(js_name = threadSetup)]
pub fn thread_setup() -> js_sys::Array {
    js_sys::Array::of2(&wasm_bindgen::module(), &wasm_bindgen::memory())
}

/// Starts `threads` threads in all for the products: rayon's pool (`threads` workers) and
/// lowbit-cpu's decode pool (`threads - 1` workers and the caller). JS must have started
/// `2 * threads - 1` idle workers. Call once, from a worker (the browser's main thread may not
/// block); returns the decode pool's thread count.
#[wasm_bindgen(js_name = initThreadPool)]
pub fn init_thread_pool(threads: usize) -> std::result::Result<usize, JsError> {
    let threads = threads.max(1);
    lowbit_cpu::set_thread_spawner(spawn);
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .spawn_handler(|t| spawn(Box::new(move || t.run())))
        .build_global()
        .map_err(|e| JsError::new(&format!("starting lowbit's threads: {e}")))?;
    Ok(lowbit_cpu::start_thread_pool())
}
