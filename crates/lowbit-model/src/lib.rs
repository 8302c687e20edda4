//! lowbit-model
