//! Property checks for gatehouse's parsers, shared by the fuzz targets in
//! `fuzz_targets/` and the property tests that run in `cargo test`
//! (`crates/config/tests/properties.rs` and `crates/edge/tests/properties.rs`
//! include these modules with `#[path]`). See `docs/fuzzing.md`.

pub mod config;
pub mod edge;
pub mod rng;
