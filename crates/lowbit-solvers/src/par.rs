//! faer's parallelism, following lowbit's one switch (`lowbit_core::par`, the `parallel` feature).

use faer::Par;

/// The faer parallelism used for the heavy GEMMs: all cores with `parallel`, sequential without.
pub(crate) fn faer_par() -> Par {
    if lowbit_core::par::ENABLED {
        Par::rayon(0)
    } else {
        Par::Seq
    }
}
