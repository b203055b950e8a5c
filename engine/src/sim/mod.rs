//! The simulated kernel and what checks the engine against it (tests and fuzz targets).

pub mod kernel;
mod legacy;

pub use legacy::*;
