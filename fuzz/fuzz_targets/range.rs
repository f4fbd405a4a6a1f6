//! `Range: bytes=…` evaluation (`gatehouse-files` `range.rs`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| gatehouse_fuzz::edge::check_range_bytes(data));
