use storage::testing::{kv_store_conformance, log_store_conformance};
use storage::{MemKvStore, MemLogStore};

use super::*;

// Proves the raft-engine log store keeps every LogStore promise, across reopen.
#[test]
fn raft_log_store_conforms() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log");
    log_store_conformance(RaftLogStore::open(&path).unwrap(), |store| {
        drop(store);
        RaftLogStore::open(&path).unwrap()
    });
}

// Proves the redb state store keeps every KvStore promise, across reopen.
#[test]
fn redb_kv_store_conforms() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.redb");
    kv_store_conformance(RedbKvStore::open(&path).unwrap(), |store| {
        drop(store);
        RedbKvStore::open(&path).unwrap()
    });
}

// Proves the in-memory stores used by tests and simulation keep the same promises.
#[test]
fn memory_stores_conform() {
    log_store_conformance(MemLogStore::new(), |store| store);
    kv_store_conformance(MemKvStore::new(), |store| store);
}

// Proves the simulation's faulty stores keep them too, across a crash that loses nothing
// unsynced (the suite syncs what it expects to survive a reopen).
#[test]
fn faulty_stores_conform() {
    use storage::faulty::{Faulty, FaultyKvStore, FaultyLogStore};
    log_store_conformance(FaultyLogStore::new(), |store| {
        store.crash(usize::MAX);
        store
    });
    kv_store_conformance(FaultyKvStore::new(), |store| {
        store.crash(usize::MAX);
        store
    });
}

// Proves a file that is not a redb database is refused with an error, not a panic.
#[test]
fn foreign_state_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.redb");
    std::fs::write(&path, b"this is not a database, just some bytes").unwrap();
    assert!(RedbKvStore::open(&path).is_err());
}

// Proves the corruption locator reads raft-engine's log line into a file and an offset.
#[test]
fn corruption_location_is_parsed() {
    let dir = Path::new("/data/log");
    let line = "Failed to open log file due to broken batch (queue=Append,seq=3,offset=4093): \
                Corruption: Checksum expected 1 but got 2";
    let (file, offset, detail) = locate_corruption(dir, line).unwrap();
    assert_eq!(file, dir.join("0000000000000003.raftlog"));
    assert_eq!(offset, 4093);
    assert_eq!(detail, "Corruption: Checksum expected 1 but got 2");
    assert_eq!(
        parse_location("Append, seq: 12 }, offset: 77, len: 5"),
        Some((false, 12, 77))
    );
}

// Proves defragmenting returns the space of deleted data to the file system: the file
// shrinks, keeps what is left, and a leftover partial copy from a crash is cleared at open.
#[test]
fn defragment_shrinks_the_state_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.redb");
    let store = RedbKvStore::open(&path).unwrap();
    let value = vec![7u8; 4096];
    for batch in 0..40u32 {
        let ops = (0..100u32)
            .map(|i| WriteOp::Put {
                table: Table::Revisions,
                key: (batch * 100 + i).to_be_bytes().to_vec(),
                value: value.clone(),
            })
            .collect();
        store.write(ops, true).unwrap();
    }
    // Delete all but the first hundred keys.
    let ops = (100..4000u32)
        .map(|i| WriteOp::Delete {
            table: Table::Revisions,
            key: i.to_be_bytes().to_vec(),
        })
        .collect();
    store.write(ops, true).unwrap();
    let full = store.size_bytes();
    assert!(full > 16 << 20, "4000 values of 4 KiB take {full} bytes");

    store.defragment().unwrap();
    let compact = store.size_bytes();
    assert!(
        compact < full / 4,
        "defragmenting left {compact} of {full} bytes for a fortieth of the data"
    );
    assert_eq!(compact, std::fs::metadata(&path).unwrap().len());

    std::fs::write(defragment_path(&path), b"half a copy").unwrap();
    drop(store);
    let store = RedbKvStore::open(&path).unwrap();
    assert!(!defragment_path(&path).exists(), "partial copy left behind");
    let mut keys = 0;
    store
        .snapshot()
        .unwrap()
        .scan(Table::Revisions, b"", None, &mut |_, v| {
            assert_eq!(v, value.as_slice());
            keys += 1;
            true
        })
        .unwrap();
    assert_eq!(keys, 100);
}
