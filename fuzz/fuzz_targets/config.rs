//! `gatehouse_config::parse_with_env` on arbitrary text and `${VAR}` values.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| gatehouse_fuzz::config::check_config_bytes(data));
