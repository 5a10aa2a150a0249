//! The end-to-end tests as one test binary (`cargo test --test e2e`): one module per
//! former `tests/<name>.rs` file, plus the shared support in `common/` and
//! `webhook_support/`. One crate compiles that support once and links once, where
//! seventeen binaries compiled and linked it seventeen times, and `cargo test` runs all
//! the tests in one process, two at a time on two cores, instead of one binary after the
//! other waiting for each one's slowest test.
//!
//! The support lives beside the tests (`tests/e2e/common/`, not `#[path]` to
//! `tests/common/`) so the directory is the whole crate: a plain `mod common;` finds it
//! and cargo does not take it for a test target. The benches include it by `#[path]`.
//!
//! Every test now runs as a thread of one shared process. A test must not change what
//! the others see: no `set_var`, no `set_current_dir`, no `setrlimit`, no signal handler;
//! pass environment and working directory to the child `Command` instead (as
//! `Server::start_in` does), and make names derived from the process id unique per test.
//! Each test starts its own servers and receivers on ephemeral ports under its own
//! temporary directory, so no test waits for another; none needs to run alone.
//!
//! One module: `cargo test --test e2e slow_clients::`; one test: add `-- --exact` and
//! its full path.
// End-to-end tests time the real binary from outside: wall-clock reads are
// the point here, not a way around the driven clock (clippy.toml). Crate-wide,
// for the support modules; each test module also says so for itself.
#![allow(clippy::disallowed_methods)]

mod common;
mod webhook_support;

mod auth;
mod clients;
mod crash;
mod full_disk;
mod fuzz_regressions;
mod garbage_collection;
mod hostile_peers;
mod http_protocol;
mod immutable_tags;
mod operator_page;
mod pull_through;
mod refusals;
mod registry_api;
mod registry_manifests;
mod retention;
mod s3_backend;
mod s3_server;
mod scrub;
mod slow_clients;
mod storage_check;
mod tls_inbound;
mod webhook_formats;
mod webhook_simulation;
mod webhooks_delivery;
mod webhooks_durable;
mod webhooks_https;
mod webhooks_manners;
mod webhooks_policies;
mod webhooks_reload;
