//! faer's parallelism, following lowbit's one switch (`lowbit_core::par`, the `parallel` feature).

use faer::Par;

/// The faer parallelism used for the heavy GEMMs: all cores with `parallel`, sequential without
/// (and on wasm32, where faer is built without its thread pool).
pub(crate) fn faer_par() -> Par {
    #[cfg(not(target_arch = "wasm32"))]
    if lowbit_core::par::ENABLED {
        return Par::rayon(0);
    }
    Par::Seq
}
