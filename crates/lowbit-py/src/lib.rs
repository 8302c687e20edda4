//! python bindings
