//! Python bindings of lowbit: the private module `lowbit._lowbit`.
//!
//! Thin by design: arguments are converted and validated with the GIL held, the work runs in
//! the Rust crates with the GIL released, and every crate error is converted once in
//! [`errors`].

mod arrays;
mod errors;
mod export;
mod model;
mod pipeline;
mod progress;
mod qtensor;
mod solvers;
mod train;

use pyo3::prelude::*;

#[pymodule]
fn _lowbit(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    errors::register(m)?;
    qtensor::register(m)?;
    model::register(m)?;
    solvers::register(m)?;
    pipeline::register(m)?;
    export::register(m)?;
    train::register(m)?;
    Ok(())
}
