//! Upstream answers read by the proxy's HTTP/1.1 client (`gatehouse-edge` `h1.rs`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| gatehouse_fuzz::edge::check_upstream_response(data));
