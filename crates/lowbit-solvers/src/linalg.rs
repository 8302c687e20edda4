//! Damped Cholesky factorizations for GPTQ (Frantar et al. 2022, Section 4, "Cholesky
//! reformulation"), through faer.
//!
//! GPTQ needs the upper Cholesky factor `U` of `H^-1` (`H^-1 = U^T U`), computed in the reference
//! code as `cholesky(cholesky_inverse(cholesky(H + lambda I)), upper=True)`. This module does the
//! same in f64, with the damping `lambda = percdamp * mean(diag H)` raised by
//! [`DampingConfig::factor`] until both factorizations succeed and the result is finite.

use crate::{Result, SolverError};
use faer::linalg::solvers::DenseSolveCore;
use faer::{Mat, Side};

/// How GPTQ damps its Hessian.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DampingConfig {
    /// First damping, relative to `mean(diag H)` (0.01 in the GPTQ reference).
    pub percdamp: f64,
    /// Factor applied to lambda after each failed factorization.
    pub factor: f64,
    /// How many times lambda may be raised before the Hessian is declared singular.
    pub max_raises: u32,
}

impl Default for DampingConfig {
    fn default() -> Self {
        DampingConfig { percdamp: 0.01, factor: 10.0, max_raises: 6 }
    }
}

impl DampingConfig {
    /// Rejects negative or non-finite settings.
    pub fn validate(&self) -> Result<()> {
        if !(self.percdamp >= 0.0 && self.percdamp.is_finite()) {
            return Err(SolverError::param("percdamp", self.percdamp, "it must be finite and >= 0"));
        }
        if !(self.factor > 1.0 && self.factor.is_finite()) {
            return Err(SolverError::param("damping factor", self.factor, "it must be finite and > 1"));
        }
        Ok(())
    }
}

/// The damping that made the factorization succeed.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Damping {
    /// `lambda` added to the diagonal.
    pub lambda: f64,
    /// `lambda / mean(diag H)`: equals `percdamp` unless it was raised.
    pub relative: f64,
    /// How many times lambda was raised (0 when the first attempt succeeded).
    pub raises: u32,
}

/// Applies GPTQ's dead-input rule to a symmetric `H`: every `H_ii == 0` becomes 1 (the caller
/// zeroes the matching weight columns). Returns the dead indices.
pub fn fix_dead_inputs(h: &mut Mat<f64>) -> Vec<usize> {
    let dead: Vec<usize> = (0..h.nrows()).filter(|&i| h[(i, i)] == 0.0).collect();
    for &i in &dead {
        h[(i, i)] = 1.0;
    }
    dead
}

/// `U` with `(H + lambda I)^-1 = U^T U`, upper triangular, raising lambda until it exists.
///
/// `h` must be symmetric (both triangles are read by nothing but the lower one is used).
pub fn inverse_cholesky_upper(h: &Mat<f64>, cfg: &DampingConfig) -> Result<(Mat<f64>, Damping)> {
    cfg.validate()?;
    let n = h.nrows();
    if h.ncols() != n {
        return Err(SolverError::shape("inverse_cholesky_upper", "a square matrix", format!("{}x{}", n, h.ncols())));
    }
    let mean_diag = (0..n).map(|i| h[(i, i)]).sum::<f64>() / n.max(1) as f64;
    let finite = (0..n).all(|j| (j..n).all(|i| h[(i, j)].is_finite()));
    if !finite || n == 0 {
        return Err(SolverError::SingularHessian { last_lambda: f64::NAN, attempts: 0, pivot: None });
    }
    let scale = mean_diag.abs().max(f64::MIN_POSITIVE);
    let mut lambda = cfg.percdamp * scale;
    let mut pivot = None;
    for attempt in 0..=cfg.max_raises {
        if attempt > 0 {
            // A zero percdamp still escalates, from a tiny relative damping.
            lambda = (lambda * cfg.factor).max(1e-8 * scale);
        }
        let mut damped = h.clone();
        for i in 0..n {
            damped[(i, i)] += lambda;
        }
        match try_factor(&damped) {
            Ok(u) => {
                return Ok((u, Damping { lambda, relative: lambda / scale, raises: attempt }));
            }
            Err(p) => pivot = p,
        }
    }
    Err(SolverError::SingularHessian { last_lambda: lambda, attempts: cfg.max_raises + 1, pivot })
}

/// `U = chol(chol_inverse(chol(A)), upper)`; `Err(pivot)` when `A` or its inverse is not
/// numerically positive definite.
fn try_factor(a: &Mat<f64>) -> std::result::Result<Mat<f64>, Option<usize>> {
    let llt = a.llt(Side::Lower).map_err(pivot_of)?;
    let inv = llt.inverse();
    if !inv.col_iter().all(|c| c.iter().all(|v| v.is_finite())) {
        return Err(None);
    }
    let llt_inv = inv.llt(Side::Lower).map_err(pivot_of)?;
    let u = llt_inv.L().transpose().to_owned();
    if (0..u.nrows()).any(|i| !(u[(i, i)] > 0.0 && u[(i, i)].is_finite())) {
        return Err(None);
    }
    Ok(u)
}

fn pivot_of(e: faer::linalg::cholesky::llt::factor::LltError) -> Option<usize> {
    match e {
        faer::linalg::cholesky::llt::factor::LltError::NonPositivePivot { index } => Some(index),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upper_factor_inverts_the_damped_matrix() {
        let n = 5;
        let a = Mat::from_fn(n, n, |i, j| ((i * 3 + j * 5) % 7) as f64 - 3.0);
        let h = &a * a.transpose();
        let (u, d) = inverse_cholesky_upper(&h, &DampingConfig::default()).unwrap();
        assert_eq!(d.raises, 0);
        let mut damped = h.clone();
        for i in 0..n {
            damped[(i, i)] += d.lambda;
        }
        // (H + lambda I) * U^T U == I
        let prod = &damped * (u.transpose() * &u);
        for i in 0..n {
            for j in 0..n {
                assert!((prod[(i, j)] - f64::from(u8::from(i == j))).abs() < 1e-8, "{i},{j}: {}", prod[(i, j)]);
                if i > j {
                    assert_eq!(u[(i, j)], 0.0);
                }
            }
        }
    }
}
