//! A simulated kernel driving the sans-IO core, for fuzz targets and tests.
