//! idstitch: PostHog-compatible identity resolution as one small daemon.
//!
//! Layers, each depending only on those below it:
//! - [`domain`]: the identity rules as pure functions (`normalize`, `decide`, `apply`).
//! - [`store`]: RocksDB; the log is the truth, everything else is derived from it.
//! - [`actors`]: the router and person actors and the group-commit log writer: ordering.
//! - [`api`]: HTTP over a Unix socket and TCP: capture decoding and the read/admin API.
//! - [`cli`]: the subcommands of the `idstitch` binary.
pub mod actors;
pub mod api;
pub mod cli;
pub mod domain;
pub mod metrics;
pub mod store;
