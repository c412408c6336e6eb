//! Storage: the only module that knows RocksDB. The log is the truth; every other column
//! family is derived from it and can be rebuilt.

pub mod codec;
pub mod db;
pub mod keys;
pub mod log;
pub mod materialize;
pub mod recovery;
pub mod snapshot;
pub mod verify;
pub mod wal;

pub use db::{ProjectRecord, Store, StoreError};
