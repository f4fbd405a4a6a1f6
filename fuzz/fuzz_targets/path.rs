//! Request-path normalisation before routing (`gatehouse-edge` `path.rs`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(path) = std::str::from_utf8(data) {
        gatehouse_fuzz::edge::check_path(path);
    }
});
