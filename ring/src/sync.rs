//! Atomics and fences: `core`'s normally, loom's under `cfg(loom)` so the ring protocol
//! can be model-checked with the same code.

#[cfg(loom)]
pub use loom::sync::atomic::{fence, AtomicU32, Ordering};

#[cfg(not(loom))]
pub use core::sync::atomic::{fence, AtomicU32, Ordering};
