//! Borrowing numpy arrays: C-contiguous float32 and float16 arrays are read in place; anything
//! else is refused with a clear message. Code that needs f32 from a float16 array widens it
//! (one copy, stated where it happens).

use crate::errors::{ShapeError, UnsupportedError};
use numpy::{PyArrayDyn, PyArrayMethods, PyReadonlyArrayDyn, PyUntypedArray, PyUntypedArrayMethods};
use pyo3::prelude::*;

/// A borrowed C-contiguous float array.
pub(crate) enum FloatArray<'py> {
    /// float32.
    F32(PyReadonlyArrayDyn<'py, f32>),
    /// float16.
    F16(PyReadonlyArrayDyn<'py, half::f16>),
}

/// A float32 or float16 numpy array, borrowed, and its shape.
pub(crate) struct F32Input<'py> {
    pub array: FloatArray<'py>,
    pub shape: Vec<usize>,
    widened: Option<Vec<f32>>,
}

impl F32Input<'_> {
    /// The elements as f32: the array itself for float32, a widened copy for float16.
    pub fn data(&self) -> &[f32] {
        match (&self.array, &self.widened) {
            (FloatArray::F32(a), _) => a.as_slice().expect("contiguity checked in f32_input"),
            (FloatArray::F16(_), Some(w)) => w,
            (FloatArray::F16(_), None) => unreachable!("float16 inputs are widened when f32 is asked for"),
        }
    }
}

fn not_contiguous() -> PyErr {
    ShapeError::new_err("array must be C-contiguous; pass numpy.ascontiguousarray(a)")
}

/// Borrows a float32 array; a float16 one is widened to f32 (one copy).
pub(crate) fn f32_input<'py>(obj: &Bound<'py, PyAny>) -> PyResult<F32Input<'py>> {
    let mut input = float_input(obj)?;
    if let FloatArray::F16(a) = &input.array {
        input.widened = Some(a.as_slice().expect("contiguity checked").iter().map(|h| h.to_f32()).collect());
    }
    Ok(input)
}

/// Borrows a float32 or float16 array without copying.
pub(crate) fn float_input<'py>(obj: &Bound<'py, PyAny>) -> PyResult<F32Input<'py>> {
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
        return Ok(F32Input { array: FloatArray::F32(ro), shape, widened: None });
    }
    if let Ok(a) = obj.cast::<PyArrayDyn<half::f16>>() {
        let ro = a.try_readonly()?;
        ro.as_slice().map_err(|_| not_contiguous())?;
        return Ok(F32Input { array: FloatArray::F16(ro), shape, widened: None });
    }
    let dtype = untyped.dtype().str()?.to_string();
    Err(UnsupportedError::new_err(format!(
        "expected a float32 or float16 array, got dtype {dtype}; convert with a.astype(numpy.float32)"
    )))
}
