//! SmoothQuant (in progress).
