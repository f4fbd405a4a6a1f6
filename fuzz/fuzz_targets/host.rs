//! `Host` / `:authority` normalisation before site matching (`gatehouse-edge` `router.rs`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| gatehouse_fuzz::edge::check_host(data));
