//! The one integration-test binary: a module per area.

mod access;
mod buffer;
mod capture;
mod domain;
mod durability;
mod flows;
mod format;
mod insights;
mod model;
mod model_daemon;
mod operators;
mod settings;
mod snapshots;
mod support;
mod world;
