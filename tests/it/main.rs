//! The one integration-test binary: a module per area.

mod access;
mod capture;
mod domain;
mod durability;
mod flows;
mod format;
mod model;
mod model_daemon;
mod operators;
mod snapshots;
mod support;
mod world;
