//! Support code for wshub's fuzz targets: the invariant checks live in `checks.rs`, which the
//! stable replay test (`tests/fuzz_replay.rs`) includes as well.

pub mod backplane_checks;
pub mod checks;
pub mod config_checks;
pub mod http_checks;
pub mod hub_checks;
pub mod tls_checks;
