//! Hop-by-hop stripping and the client address (`gatehouse-edge` `forwarding.rs`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| gatehouse_fuzz::edge::check_forwarding_bytes(data));
