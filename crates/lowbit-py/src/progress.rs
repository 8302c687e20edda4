//! The Python end of `lowbit_core::progress`: a sink that forwards phases to a Python renderer
//! (an object with `start(name, total)`, `advance(n)`, `metric(name, value)` and `finish()`,
//! see `lowbit.progress`) and makes every cancellation point a Ctrl-C check.
//!
//! The work runs detached from the GIL on the calling (main) thread; [`PySink::check`]
//! re-acquires the GIL briefly to run Python's signal handlers, at most every [`POLL`]. A
//! `KeyboardInterrupt` raised there (or any exception from the renderer) is kept, the work stops
//! at its next cancellation point with `Cancelled`, and [`PySink::result`] re-raises it.

use crate::errors::PyLowbitError;
use lowbit_core::progress::{Cancelled, Progress};
use pyo3::prelude::*;
use std::time::{Duration, Instant};

/// How often the cancellation point takes the GIL to look for signals: well under the second a
/// Ctrl-C may take, and negligible next to a layer of work.
const POLL: Duration = Duration::from_millis(20);
/// How often a running phase sends the renderer `advance(0)`, a heartbeat that lets it print a
/// status line during a phase whose units each take minutes.
const HEARTBEAT: Duration = Duration::from_secs(1);

/// A [`Progress`] sink over an optional Python renderer that also checks for Ctrl-C.
pub(crate) struct PySink<'a> {
    renderer: Option<&'a Py<PyAny>>,
    error: Option<PyErr>,
    last_poll: Instant,
    last_beat: Instant,
}

impl<'a> PySink<'a> {
    pub(crate) fn new(renderer: Option<&'a Py<PyAny>>) -> Self {
        PySink { renderer, error: None, last_poll: Instant::now(), last_beat: Instant::now() }
    }

    fn call<A: for<'py> pyo3::call::PyCallArgs<'py>>(&mut self, method: &str, args: A) {
        let Some(r) = self.renderer else { return };
        Python::attach(|py| {
            if let Err(e) = r.call_method1(py, method, args) {
                self.error.get_or_insert(e);
            }
        });
    }

    /// The work's outcome as a Python result: an exception raised while it ran (Ctrl-C, a
    /// failing renderer) comes first, since it is why the work stopped.
    pub(crate) fn result<T, E: Into<PyLowbitError>>(self, r: Result<T, E>) -> PyResult<T> {
        if let Some(e) = self.error {
            return Err(e);
        }
        r.map_err(|e| PyErr::from(e.into()))
    }
}

impl Progress for PySink<'_> {
    fn start(&mut self, name: &str, total: u64) {
        self.call("start", (name, total));
    }
    fn advance(&mut self, n: u64) {
        self.last_beat = Instant::now();
        self.call("advance", (n,));
    }
    fn metric(&mut self, name: &str, value: f64) {
        self.call("metric", (name, value));
    }
    fn finish(&mut self) {
        self.call("finish", ());
    }
    fn check(&mut self) -> Result<(), Cancelled> {
        if self.error.is_some() {
            return Err(Cancelled);
        }
        if self.last_poll.elapsed() < POLL {
            return Ok(());
        }
        self.last_poll = Instant::now();
        if let Err(e) = Python::attach(|py| py.check_signals()) {
            self.error = Some(e);
            return Err(Cancelled);
        }
        if self.last_beat.elapsed() >= HEARTBEAT {
            self.last_beat = Instant::now();
            self.advance(0);
        }
        Ok(())
    }
}
