//! The embedded xenstored (work in progress: see the crate doc).
