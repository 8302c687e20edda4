//! lowbit-cpu
