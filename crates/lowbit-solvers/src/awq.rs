//! AWQ (in progress).
