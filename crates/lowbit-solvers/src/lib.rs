//! lowbit-solvers
