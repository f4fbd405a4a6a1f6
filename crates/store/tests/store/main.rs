//! Integration tests of the store: one binary, one module per concern.
//!
//! Every repository behaviour is an `async fn(&Store)` run on SQLite and on the real
//! PostgreSQL named by `GATEHOUSE_TEST_POSTGRES_URL` (each test in a fresh schema, so they
//! run in parallel and repeatedly). Without the variable the PostgreSQL half prints
//! `skipped: set GATEHOUSE_TEST_POSTGRES_URL` and passes, unless `CI=true`.

// Test code: a failed unwrap is a failed test, with the location in the message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

mod availability;
mod backup;
mod migrate;
mod repo;
