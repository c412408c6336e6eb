//! A RocksDB write batch written directly in RocksDB's own serialized form.
//!
//! RocksDB's `WriteBatch` is a byte string (`rep_`, described at the top of RocksDB's
//! `db/write_batch.cc`): a fixed64 sequence, a fixed32 count, then one record per operation:
//! a type byte, the column family's id as a varint32 (omitted for the default column family,
//! which has its own type bytes), and the key (and value) each as a varint32 length and the
//! bytes. `WriteBatch::put_cf` builds that string one FFI call at a time, and each call looks
//! up the column family's id and checks sizes and save points: ~550 instructions per put, 2.7k
//! per event on the log writer's thread (`benches/README.md`, session 17). [`RawBatch`]
//! appends the same bytes to a `Vec` and hands them to RocksDB once, through
//! `WriteBatch::from_data` (RocksDB's constructor from a serialized batch).
//!
//! The bytes are RocksDB's: a test builds random batches both ways and compares them byte for
//! byte.

use rocksdb::WriteBatch;

use super::db::StoreError;

/// `kTypeDeletion` of RocksDB's `dbformat.h`: a delete in the default column family.
const TYPE_DELETION: u8 = 0x0;
/// `kTypeValue`: a put in the default column family.
const TYPE_VALUE: u8 = 0x1;
/// `kTypeColumnFamilyDeletion`: a delete in another column family.
const TYPE_CF_DELETION: u8 = 0x4;
/// `kTypeColumnFamilyValue`: a put in another column family.
const TYPE_CF_VALUE: u8 = 0x5;
/// `kTypeColumnFamilyRangeDeletion`: a range delete in another column family.
const TYPE_CF_RANGE_DELETION: u8 = 0xE;
/// `kTypeRangeDeletion`: a range delete in the default column family.
const TYPE_RANGE_DELETION: u8 = 0xF;

/// RocksDB's `kMaxWriteBatchKeySize`: a key becomes an internal key 8 bytes longer, whose length
/// must fit a `u32`.
const MAX_KEY: usize = u32::MAX as usize - 8;
/// RocksDB's limit for a value.
const MAX_VALUE: usize = u32::MAX as usize;

/// The header: the sequence (RocksDB sets it when it writes the batch) and the count.
const HEADER: usize = 12;

/// A column family's id in a RocksDB database (RocksDB's `ColumnFamilyHandle::GetID`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CfId(pub u32);

impl CfId {
    /// The id of `cf`, read off the one-put batch RocksDB builds for it (the binding does not
    /// expose the id itself).
    pub fn of(cf: &rocksdb::ColumnFamily) -> Result<CfId, StoreError> {
        let mut probe = WriteBatch::default();
        probe.put_cf(cf, b"", b"");
        let bad = || StoreError::Corrupt("RocksDB built a write batch of an unknown form".into());
        let rec = probe.data().get(HEADER..).ok_or_else(bad)?;
        match rec.first() {
            Some(&TYPE_VALUE) => Ok(CfId(0)),
            Some(&TYPE_CF_VALUE) => read_varint32(&rec[1..]).map(CfId).ok_or_else(bad),
            _ => Err(bad()),
        }
    }
}

/// A write batch being built; [`RawBatch::finish`] makes it RocksDB's.
pub struct RawBatch {
    rep: Vec<u8>,
    count: u32,
    /// The first operation that did not fit RocksDB's limits ([`MAX_KEY`], [`MAX_VALUE`]).
    error: Option<StoreError>,
}

impl RawBatch {
    /// An empty batch with room for `bytes`.
    pub fn with_capacity(bytes: usize) -> RawBatch {
        let mut rep = Vec::with_capacity(HEADER + bytes);
        rep.resize(HEADER, 0);
        RawBatch {
            rep,
            count: 0,
            error: None,
        }
    }

    /// Put `key` = `value` in column family `cf`.
    pub fn put(&mut self, cf: CfId, key: &[u8], value: &[u8]) {
        self.record(
            cf,
            [TYPE_VALUE, TYPE_CF_VALUE],
            key,
            Some((value, MAX_VALUE)),
        );
    }

    /// Delete `key` from column family `cf`.
    pub fn delete(&mut self, cf: CfId, key: &[u8]) {
        self.record(cf, [TYPE_DELETION, TYPE_CF_DELETION], key, None);
    }

    /// Delete the keys from `from` (included) to `to` (excluded) in column family `cf`.
    pub fn delete_range(&mut self, cf: CfId, from: &[u8], to: &[u8]) {
        self.record(
            cf,
            [TYPE_RANGE_DELETION, TYPE_CF_RANGE_DELETION],
            from,
            Some((to, MAX_KEY)),
        );
    }

    /// Operations so far.
    pub fn len(&self) -> usize {
        self.count as usize
    }

    /// Whether no operation was added.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// RocksDB's batch, or the error of an operation that did not fit.
    pub fn finish(mut self) -> Result<WriteBatch, StoreError> {
        if let Some(e) = self.error {
            return Err(e);
        }
        self.rep[8..HEADER].copy_from_slice(&self.count.to_le_bytes());
        Ok(WriteBatch::from_data(&self.rep))
    }

    /// One record: `a` is a key; `b`, when there is one, a value or a key with its limit.
    fn record(&mut self, cf: CfId, [default, other]: [u8; 2], a: &[u8], b: Option<(&[u8], usize)>) {
        let b_len = b.map_or(0, |(b, _)| b.len());
        if a.len() > MAX_KEY || b.is_some_and(|(b, max)| b.len() > max) {
            self.error.get_or_insert_with(|| {
                StoreError::Corrupt(format!(
                    "a record of {} + {b_len} bytes is over RocksDB's limit of 4 GiB per key \
                     or value",
                    a.len()
                ))
            });
            return;
        }
        self.count += 1;
        if cf.0 == 0 {
            self.rep.push(default);
        } else {
            self.rep.push(other);
            push_varint32(&mut self.rep, cf.0);
        }
        push_varint32(&mut self.rep, a.len() as u32);
        self.rep.extend_from_slice(a);
        if let Some((b, _)) = b {
            push_varint32(&mut self.rep, b_len as u32);
            self.rep.extend_from_slice(b);
        }
    }
}

/// RocksDB's `PutVarint32`: seven bits at a time, low first, the top bit set on all but the
/// last byte.
fn push_varint32(out: &mut Vec<u8>, mut v: u32) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn read_varint32(bytes: &[u8]) -> Option<u32> {
    let mut v = 0u32;
    for (i, &b) in bytes.iter().take(5).enumerate() {
        v |= u32::from(b & 0x7f) << (7 * i);
        if b < 0x80 {
            return Some(v);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{keys, Store};
    use proptest::prelude::*;
    use proptest::test_runner::{Config, TestRunner};

    #[derive(Clone, Debug)]
    enum Op {
        Put(Vec<u8>, Vec<u8>),
        Delete(Vec<u8>),
        DeleteRange(Vec<u8>, Vec<u8>),
    }

    fn bytes() -> impl Strategy<Value = Vec<u8>> {
        // Lengths on both sides of each varint byte boundary (127/128, 16383/16384).
        prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..140),
            proptest::collection::vec(any::<u8>(), 16_380..16_390),
        ]
    }

    fn op() -> impl Strategy<Value = (usize, Op)> {
        let op = prop_oneof![
            4 => (bytes(), bytes()).prop_map(|(k, v)| Op::Put(k, v)),
            1 => bytes().prop_map(Op::Delete),
            1 => (bytes(), bytes()).prop_map(|(a, b)| Op::DeleteRange(a, b)),
        ];
        (0..keys::CFS.len() + 1, op)
    }

    #[test]
    fn the_bytes_are_those_rocksdb_builds() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let default = store.db().cf_handle("default").unwrap();
        let cf = |i: usize| keys::CFS.get(i).map_or(default, |n| store.cf(n));
        let ids: Vec<CfId> = (0..=keys::CFS.len())
            .map(|i| CfId::of(cf(i)).unwrap())
            .collect();
        assert_eq!(ids[keys::CFS.len()], CfId(0), "the default column family");
        assert!(ids[..keys::CFS.len()].iter().all(|id| id.0 > 0));
        let mut runner = TestRunner::new(Config {
            cases: 64,
            ..Config::default()
        });
        runner
            .run(&proptest::collection::vec(op(), 0..40), |ops| {
                let mut theirs = WriteBatch::default();
                let mut ours = RawBatch::with_capacity(0);
                for (i, op) in &ops {
                    match op {
                        Op::Put(k, v) => {
                            theirs.put_cf(cf(*i), k, v);
                            ours.put(ids[*i], k, v);
                        }
                        Op::Delete(k) => {
                            theirs.delete_cf(cf(*i), k);
                            ours.delete(ids[*i], k);
                        }
                        Op::DeleteRange(a, b) => {
                            theirs.delete_range_cf(cf(*i), a, b);
                            ours.delete_range(ids[*i], a, b);
                        }
                    }
                }
                prop_assert_eq!(ours.len(), ops.len());
                let ours = ours.finish().unwrap();
                prop_assert_eq!(ours.len(), theirs.len());
                prop_assert_eq!(ours.data(), theirs.data());
                Ok(())
            })
            .unwrap();
    }

    #[test]
    fn a_batch_built_here_is_written_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let (meta, evdid) = (store.cf("meta"), store.cf("evdid"));
        let mut b = RawBatch::with_capacity(64);
        b.put(CfId::of(meta).unwrap(), b"k1", b"v1");
        b.put(CfId::of(evdid).unwrap(), b"a", b"");
        b.put(CfId::of(evdid).unwrap(), b"b", b"");
        b.delete(CfId::of(meta).unwrap(), b"k1");
        b.put(CfId::of(meta).unwrap(), b"k2", b"v2");
        b.delete_range(CfId::of(evdid).unwrap(), b"a", b"b");
        store.db().write(b.finish().unwrap()).unwrap();
        let db = store.db();
        assert_eq!(db.get_cf(meta, b"k1").unwrap(), None);
        assert_eq!(db.get_cf(meta, b"k2").unwrap().as_deref(), Some(&b"v2"[..]));
        assert_eq!(db.get_cf(evdid, b"a").unwrap(), None);
        assert_eq!(db.get_cf(evdid, b"b").unwrap().as_deref(), Some(&b""[..]));
    }
}
