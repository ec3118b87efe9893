//! Threaded drivers (placeholder while the core compiles).
