//! The one progress abstraction of lowbit: every long phase (model loading, data-free sampling,
//! calibration, the quantization pipeline's blocks, perplexity, generation) reports through a
//! [`Progress`] sink and polls it for cancellation.
//!
//! A phase is opened with [`phase`], which returns a guard that ends the phase when dropped (on
//! success and on error alike, so a front end never leaves a bar open). Long loops call
//! [`Progress::check`] often (at least every few hundred milliseconds of work): it is the
//! cancellation point, returning [`Cancelled`] once the front end asked to stop (the Python
//! bindings check for Ctrl-C there).
//!
//! ```
//! use lowbit_core::progress::{phase, Cancelled, NoProgress, Progress};
//!
//! fn work(progress: &mut dyn Progress) -> Result<u32, Cancelled> {
//!     let mut p = phase(progress, "count", 3);
//!     let mut sum = 0;
//!     for i in 0..3 {
//!         p.check()?;
//!         sum += i;
//!         p.advance(1);
//!     }
//!     Ok(sum)
//! }
//! assert_eq!(work(&mut NoProgress), Ok(3));
//! ```

use std::ops::{Deref, DerefMut};

/// Returned by a cancellation point when the front end asked the work to stop (Ctrl-C).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("interrupted")]
pub struct Cancelled;

/// A progress sink and cancellation point. Every method has a do-nothing default, so a sink
/// implements only what it shows.
pub trait Progress {
    /// A phase begins: `name` (`"load"`, `"calibrate"`, `"blocks"`, `"perplexity"`, ...) with
    /// `total` units of work (0 when unknown). Phases do not nest: a new one ends the last.
    fn start(&mut self, _name: &str, _total: u64) {}
    /// `n` more units of the current phase are done.
    fn advance(&mut self, _n: u64) {}
    /// A figure worth showing beside the bar (`loss` of the last block, `ppl` so far).
    fn metric(&mut self, _name: &str, _value: f64) {}
    /// The current phase ended (called by the [`Phase`] guard).
    fn finish(&mut self) {}
    /// The cancellation point: `Err(Cancelled)` once the work should stop. Cheap enough to call
    /// per layer of a forward pass.
    fn check(&mut self) -> Result<(), Cancelled> {
        Ok(())
    }
}

/// A sink that shows nothing and never cancels.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoProgress;

impl Progress for NoProgress {}

/// An open phase: derefs to the sink, ends the phase when dropped.
pub struct Phase<'a> {
    sink: &'a mut dyn Progress,
}

/// Starts phase `name` of `total` units on `sink`; the phase ends when the guard drops.
pub fn phase<'a>(sink: &'a mut dyn Progress, name: &str, total: u64) -> Phase<'a> {
    sink.start(name, total);
    Phase { sink }
}

impl<'a> Deref for Phase<'a> {
    type Target = dyn Progress + 'a;
    fn deref(&self) -> &Self::Target {
        self.sink
    }
}

impl DerefMut for Phase<'_> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        self.sink
    }
}

impl Drop for Phase<'_> {
    fn drop(&mut self) {
        self.sink.finish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Log {
        events: Vec<String>,
        stop_after: Option<u64>,
        done: u64,
    }

    impl Progress for Log {
        fn start(&mut self, name: &str, total: u64) {
            self.events.push(format!("start {name} {total}"));
        }
        fn advance(&mut self, n: u64) {
            self.done += n;
        }
        fn finish(&mut self) {
            self.events.push(format!("finish {}", self.done));
        }
        fn check(&mut self) -> Result<(), Cancelled> {
            match self.stop_after {
                Some(s) if self.done >= s => Err(Cancelled),
                _ => Ok(()),
            }
        }
    }

    fn run(sink: &mut dyn Progress) -> Result<(), Cancelled> {
        let mut p = phase(sink, "work", 5);
        for _ in 0..5 {
            p.check()?;
            p.advance(1);
        }
        Ok(())
    }

    #[test]
    fn the_guard_ends_the_phase_on_success_and_on_cancellation() {
        let mut log = Log::default();
        assert_eq!(run(&mut log), Ok(()));
        assert_eq!(log.events, ["start work 5", "finish 5"]);
        let mut log = Log { stop_after: Some(2), ..Log::default() };
        assert_eq!(run(&mut log), Err(Cancelled));
        assert_eq!(log.events, ["start work 5", "finish 2"]);
    }
}
