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

fn keys(byte: u8) -> Option<Arc<KeyRing>> {
    Some(Arc::new(KeyRing::from_keys(&[[byte; 32]])))
}

/// Every file under `dir`, read whole.
fn all_bytes(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(all_bytes(&path));
        } else {
            out.push((path.clone(), std::fs::read(&path).unwrap()));
        }
    }
    out
}

// Proves the encrypted log store keeps every LogStore promise, across reopen.
#[test]
fn encrypted_raft_log_store_conforms() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log");
    log_store_conformance(RaftLogStore::open_with(&path, keys(1)).unwrap(), |store| {
        drop(store);
        RaftLogStore::open_with(&path, keys(1)).unwrap()
    });
}

// Proves the encrypted state store keeps every KvStore promise, across reopen.
#[test]
fn encrypted_redb_kv_store_conforms() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.redb");
    kv_store_conformance(RedbKvStore::open_with(&path, keys(1)).unwrap(), |store| {
        drop(store);
        RedbKvStore::open_with(&path, keys(1)).unwrap()
    });
}

// Proves that with encryption no key or value written reaches a file in the clear (in the
// log, the state file, or a defragmented state file), and that the data reads back after
// reopening.
#[test]
fn encrypted_stores_write_no_plaintext() {
    use raft_proto::eraftpb::Entry;
    let dir = tempfile::tempdir().unwrap();
    let log_dir = dir.path().join("log");
    let state = dir.path().join("state.redb");
    let needle = b"plaintext-needle-0123456789";
    {
        let log = RaftLogStore::open_with(&log_dir, keys(1)).unwrap();
        let entries: Vec<Entry> = (1..=50)
            .map(|i| Entry {
                index: i,
                term: 1,
                data: needle.repeat(40).into(),
                ..Default::default()
            })
            .collect();
        log.write(
            vec![ShardLogWrite {
                shard: ShardId(1),
                entries,
                ..Default::default()
            }],
            true,
        )
        .unwrap();
        let kv = RedbKvStore::open_with(&state, keys(1)).unwrap();
        let ops = (0..200u32)
            .map(|i| WriteOp::Put {
                table: Table::ALL[0],
                key: [&needle[..], &i.to_be_bytes()].concat(),
                value: needle.repeat(10),
            })
            .collect();
        kv.write(ops, true).unwrap();
        kv.defragment().unwrap();
    }
    for (path, bytes) in all_bytes(dir.path()) {
        assert!(
            !bytes.windows(needle.len()).any(|w| w == needle),
            "{} holds plaintext",
            path.display()
        );
    }
    let log = RaftLogStore::open_with(&log_dir, keys(1)).unwrap();
    let entries = log.entries(ShardId(1), 1, 51, u64::MAX).unwrap();
    assert_eq!(entries.len(), 50);
    assert_eq!(&entries[49].data[..needle.len()], needle);
    let kv = RedbKvStore::open_with(&state, keys(1)).unwrap();
    let key = [&needle[..], &7u32.to_be_bytes()].concat();
    let value = kv.snapshot().unwrap().get(Table::ALL[0], &key).unwrap();
    assert_eq!(value, Some(needle.repeat(10)));
}

// Proves the wrong key, no key, or a key for a plain directory each stop the open with an
// error that says which.
#[test]
fn encryption_mismatches_are_refused_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let log_dir = dir.path().join("log");
    let state = dir.path().join("state.redb");
    drop(RaftLogStore::open_with(&log_dir, keys(1)).unwrap());
    drop(RedbKvStore::open_with(&state, keys(1)).unwrap());

    let error = |r: Result<()>| match r {
        Err(StorageError::Corruption(detail)) => detail,
        other => panic!("expected corruption, got {other:?}"),
    };
    let wrong = error(RedbKvStore::open_with(&state, keys(2)).map(drop));
    assert!(
        wrong.contains("which the key file does not hold"),
        "{wrong}"
    );
    let wrong = error(RaftLogStore::open_with(&log_dir, keys(2)).map(drop));
    assert!(
        wrong.contains("which the key file does not hold"),
        "{wrong}"
    );
    let missing = error(RedbKvStore::open(&state).map(drop));
    assert!(missing.contains("is encrypted"), "{missing}");
    let missing = error(RaftLogStore::open(&log_dir).map(drop));
    assert!(missing.contains("is encrypted"), "{missing}");

    let plain = dir.path().join("plain.redb");
    drop(RedbKvStore::open(&plain).unwrap());
    let unexpected = error(RedbKvStore::open_with(&plain, keys(1)).map(drop));
    assert!(unexpected.contains("is not encrypted"), "{unexpected}");
}

// Proves a state file sealed with an old key stays readable after the key file rotates,
// and that a defragmentation rewrites it under the new key only.
#[test]
fn rotated_keys_read_old_data_and_defragment_moves_it_to_the_new_key() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.redb");
    let (old, new) = ([1u8; 32], [2u8; 32]);
    let ring = |keys: &[[u8; 32]]| Some(Arc::new(KeyRing::from_keys(keys)));
    {
        let kv = RedbKvStore::open_with(&state, ring(&[old])).unwrap();
        let put = WriteOp::Put {
            table: Table::ALL[0],
            key: b"k".to_vec(),
            value: b"v".to_vec(),
        };
        kv.write(vec![put], true).unwrap();
    }
    {
        let kv = RedbKvStore::open_with(&state, ring(&[new, old])).unwrap();
        let value = kv.snapshot().unwrap().get(Table::ALL[0], b"k").unwrap();
        assert_eq!(value.as_deref(), Some(&b"v"[..]));
        kv.defragment().unwrap();
    }
    let kv = RedbKvStore::open_with(&state, ring(&[new])).unwrap();
    let value = kv.snapshot().unwrap().get(Table::ALL[0], b"k").unwrap();
    assert_eq!(value.as_deref(), Some(&b"v"[..]));
}
