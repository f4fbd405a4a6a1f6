#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Integration tests of gatehouse-tls over real sockets: SNI selection, protocol
//! versions, the internal CA checked by curl and openssl, the file store, the manager's
//! schedule with a controllable clock, on-demand refusals, file reloads, and real ACME
//! issuance against Pebble (`GATEHOUSE_TEST_PEBBLE`; skipped without it unless `CI=true`).

mod common;
mod files;
mod manager;
mod pebble;
mod resolver;
mod store;
