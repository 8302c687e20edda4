//! Wall-clock timing for reports. std's clock panics on wasm32-unknown-unknown (no OS), so there
//! the browser's `Date.now()` (milliseconds) stands in; elsewhere this is `std::time::Instant`.

#[cfg(not(all(target_arch = "wasm32", target_os = "unknown")))]
pub use std::time::Instant;

/// A point in time from the JS clock.
#[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
#[derive(Clone, Copy, Debug)]
pub struct Instant(f64);

#[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
impl Instant {
    /// Now.
    pub fn now() -> Self {
        Instant(js_sys::Date::now())
    }

    /// Time since `self`.
    pub fn elapsed(&self) -> std::time::Duration {
        std::time::Duration::from_secs_f64(((js_sys::Date::now() - self.0) / 1000.0).max(0.0))
    }
}

#[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
impl std::ops::Sub for Instant {
    type Output = std::time::Duration;
    /// Time from `rhs` to `self` (zero if `rhs` is later), as std's saturating difference.
    fn sub(self, rhs: Instant) -> std::time::Duration {
        std::time::Duration::from_secs_f64(((self.0 - rhs.0) / 1000.0).max(0.0))
    }
}
