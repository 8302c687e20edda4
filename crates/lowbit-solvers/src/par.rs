//! Parallelism for faer's kernels: all cores with feature `parallel`, sequential without.

use faer::Par;

/// The faer parallelism used for the heavy GEMMs.
pub(crate) fn faer_par() -> Par {
    #[cfg(feature = "parallel")]
    {
        Par::rayon(0)
    }
    #[cfg(not(feature = "parallel"))]
    {
        Par::Seq
    }
}
