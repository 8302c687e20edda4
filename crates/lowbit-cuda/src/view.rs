//! Borrowed ranges of a [`CudaBuffer`], the same in both builds: a device address and a length,
//! so a view is `Copy` like a slice reference and kernels take plain pointer arguments.

use crate::CudaBuffer;
use std::marker::PhantomData;

/// A borrowed range of a [`CudaBuffer`].
#[derive(Clone, Copy, Debug)]
pub struct CuView<'a> {
    // Without the `cuda` feature no view is ever made, so nothing reads the address.
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    pub(crate) ptr: u64,
    pub(crate) len: usize,
    pub(crate) _buf: PhantomData<&'a CudaBuffer>,
}

/// A borrowed, writable range of a [`CudaBuffer`].
#[derive(Debug)]
pub struct CuViewMut<'a> {
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    pub(crate) ptr: u64,
    pub(crate) len: usize,
    pub(crate) _buf: PhantomData<&'a mut CudaBuffer>,
}

macro_rules! view_len {
    ($($view:ident),*) => {$(
        impl $view<'_> {
            /// Values in the view.
            pub fn len(&self) -> usize {
                self.len
            }
            /// Whether it is empty.
            pub fn is_empty(&self) -> bool {
                self.len == 0
            }
        }
    )*};
}
view_len!(CuView, CuViewMut);
