//! The one integration-test binary: a module per area.

mod access;
mod buffer;
mod capture;
mod cli;
mod domain;
mod durability;
mod faults;
mod flows;
mod format;
mod fuzz_corpus;
mod insights;
mod isolation;
mod limits;
mod model;
mod model_daemon;
mod operators;
mod replay;
mod security;
mod settings;
mod setup;
mod snapshots;
mod support;
mod world;
