//! PCIe Transaction Layer Packets (PCIe Base Specification, chapter 2).
//!
//! This module will hold the complete header codec; [`class`] is the small, stable contract
//! the layers above use today.

pub mod class;

pub use class::{classify, ClassifyError, Credits, OrderingClass};
