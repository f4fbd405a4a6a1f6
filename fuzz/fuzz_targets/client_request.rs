//! Client request heads read by the client-facing HTTP/1.1 loop (`gatehouse-edge` `front.rs`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| gatehouse_fuzz::edge::check_client_requests(data));
