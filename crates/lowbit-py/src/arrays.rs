//! Borrowing numpy arrays: contiguous f32 arrays are read in place; f16 arrays are widened to
//! f32 (one copy, the cost of the format); anything else is refused with a clear message.

use crate::errors::{ShapeError, UnsupportedError};
use numpy::{PyArrayDyn, PyArrayMethods, PyReadonlyArrayDyn, PyUntypedArray, PyUntypedArrayMethods};
use pyo3::prelude::*;

/// The elements of an input array as f32.
pub(crate) enum F32Data<'py> {
    /// A C-contiguous float32 array, borrowed without copying.
    Borrowed(PyReadonlyArrayDyn<'py, f32>),
    /// A float16 array widened to f32.
    Widened(Vec<f32>),
}

/// An f32 view of a numpy array and its shape.
pub(crate) struct F32Input<'py> {
    data: F32Data<'py>,
    pub shape: Vec<usize>,
}

impl F32Input<'_> {
    pub fn data(&self) -> &[f32] {
        match &self.data {
            F32Data::Borrowed(a) => a.as_slice().expect("contiguity checked in f32_input"),
            F32Data::Widened(v) => v,
        }
    }
}

fn not_contiguous() -> PyErr {
    ShapeError::new_err("array must be C-contiguous; pass numpy.ascontiguousarray(a)")
}

/// Borrows an f32 array (no copy) or widens an f16 one.
pub(crate) fn f32_input<'py>(obj: &Bound<'py, PyAny>) -> PyResult<F32Input<'py>> {
    let Ok(untyped) = obj.cast::<PyUntypedArray>() else {
        let got = obj.get_type().name()?;
        return Err(UnsupportedError::new_err(format!("expected a numpy array, got {got}")));
    };
    let shape = untyped.shape().to_vec();
    if shape.is_empty() {
        return Err(ShapeError::new_err("expected an array of rank >= 1, got a 0-d array"));
    }
    // `as_slice` also accepts Fortran order, whose elements would be read transposed.
    if !untyped.is_c_contiguous() {
        return Err(not_contiguous());
    }
    if let Ok(a) = obj.cast::<PyArrayDyn<f32>>() {
        let ro = a.try_readonly()?;
        ro.as_slice().map_err(|_| not_contiguous())?;
        return Ok(F32Input { data: F32Data::Borrowed(ro), shape });
    }
    if let Ok(a) = obj.cast::<PyArrayDyn<half::f16>>() {
        let ro = a.try_readonly()?;
        let data = ro.as_slice().map_err(|_| not_contiguous())?.iter().map(|h| h.to_f32()).collect();
        return Ok(F32Input { data: F32Data::Widened(data), shape });
    }
    let dtype = untyped.dtype().str()?.to_string();
    Err(UnsupportedError::new_err(format!(
        "expected a float32 or float16 array, got dtype {dtype}; convert with a.astype(numpy.float32)"
    )))
}
