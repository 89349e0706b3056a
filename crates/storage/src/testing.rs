//! Conformance suite: every [`LogStore`] and [`KvStore`] implementation runs these checks
//! (`storage-disk` runs them against its engines and the in-memory stores). Each check panics
//! with a message naming the broken contract point.

use crate::{
    ConfState, Entry, HardState, KvSnapshot, KvStore, LogStore, ShardId, ShardLogWrite,
    StorageError, Table, WriteOp,
};

fn entry(index: u64, term: u64) -> Entry {
    Entry {
        index,
        term,
        data: format!("entry-{index}-{term}").into_bytes().into(),
        ..Default::default()
    }
}

fn append(shard: ShardId, range: std::ops::RangeInclusive<u64>, term: u64) -> ShardLogWrite {
    ShardLogWrite {
        shard,
        entries: range.map(|i| entry(i, term)).collect(),
        ..Default::default()
    }
}

/// Every `LogStore` contract point. `reopen` closes the given store and opens it again on the
/// same medium (return a fresh handle to the same state), so persistence is checked too.
///
/// # Panics
/// On the first contract violation.
pub fn log_store_conformance<L: LogStore>(store: L, reopen: impl Fn(L) -> L) {
    let a = ShardId(1);
    let b = ShardId(2);
    // Fresh: defaults.
    assert_eq!(
        store.state(a).unwrap(),
        crate::ShardLogState::default(),
        "default state"
    );
    assert_eq!(
        (store.first_index(a), store.last_index(a)),
        (1, 0),
        "empty bounds"
    );

    // Append across two shards in one batch, with hard and conf state.
    let hard_state = HardState {
        term: 2,
        vote: 7,
        commit: 3,
        ..Default::default()
    };
    let conf_state = ConfState {
        voters: vec![7, 8, 9],
        ..Default::default()
    };
    let mut first = append(a, 1..=5, 1);
    first.hard_state = Some(hard_state.clone());
    first.conf_state = Some(conf_state.clone());
    store.write(vec![first, append(b, 1..=2, 1)], true).unwrap();
    assert_eq!(store.last_index(a), 5);
    assert_eq!(store.last_index(b), 2);
    let got = store.entries(a, 2, 5, u64::MAX).unwrap();
    assert_eq!(
        got.iter().map(|e| e.index).collect::<Vec<_>>(),
        vec![2, 3, 4],
        "range"
    );
    assert_eq!(
        store.entries(a, 1, 6, 1).unwrap().len(),
        1,
        "max_bytes returns at least one"
    );
    assert!(matches!(
        store.entries(a, 1, 7, u64::MAX),
        Err(StorageError::Unavailable)
    ));

    // Overwrite a conflicting suffix.
    store.write(vec![append(a, 4..=6, 2)], true).unwrap();
    assert_eq!(store.last_index(a), 6, "suffix replaced");
    assert_eq!(store.term(a, 3).unwrap(), 1);
    assert_eq!(
        store.term(a, 4).unwrap(),
        2,
        "overwritten entry has the new term"
    );

    // A gap is refused and changes nothing.
    assert!(
        store.write(vec![append(a, 9..=9, 2)], true).is_err(),
        "gap refused"
    );
    assert_eq!(store.last_index(a), 6);

    // Compaction.
    store
        .write(
            vec![ShardLogWrite {
                shard: a,
                compact_to: Some((3, 1)),
                ..Default::default()
            }],
            true,
        )
        .unwrap();
    assert_eq!(store.first_index(a), 4, "compacted");
    assert_eq!(store.term(a, 3).unwrap(), 1, "term at truncated index");
    assert!(matches!(
        store.entries(a, 3, 5, u64::MAX),
        Err(StorageError::Compacted)
    ));
    assert!(matches!(store.term(a, 2), Err(StorageError::Compacted)));

    let store = reopen(store);
    let state = store.state(a).unwrap();
    assert_eq!(state.hard_state, hard_state, "hard state persisted");
    assert_eq!(state.conf_state, conf_state, "conf state persisted");
    assert_eq!((state.truncated_index, state.truncated_term), (3, 1));
    assert_eq!(
        (store.first_index(a), store.last_index(a)),
        (4, 6),
        "bounds persisted"
    );
    assert_eq!(store.entries(a, 4, 7, u64::MAX).unwrap()[2], entry(6, 2));
    assert_eq!(store.last_index(b), 2, "other shard persisted");
    assert_eq!(store.shards(), vec![a, b]);

    // Snapshot install: everything goes, appends continue after the snapshot.
    store
        .write(
            vec![ShardLogWrite {
                shard: a,
                install_snapshot: Some((20, 3)),
                entries: vec![entry(21, 3)],
                ..Default::default()
            }],
            true,
        )
        .unwrap();
    assert_eq!((store.first_index(a), store.last_index(a)), (21, 21));
    assert_eq!(store.term(a, 20).unwrap(), 3);
    store.write(vec![append(a, 22..=23, 3)], true).unwrap();
    let store = reopen(store);
    assert_eq!(
        (store.first_index(a), store.last_index(a)),
        (21, 23),
        "snapshot persisted"
    );
    assert_eq!(
        store.state(a).unwrap().conf_state,
        conf_state,
        "conf state kept"
    );
    assert_eq!(
        store.state(a).unwrap().hard_state,
        hard_state,
        "hard state kept"
    );
    store.purge().unwrap();
}

/// Every `KvStore` contract point. `reopen` as for [`log_store_conformance`].
///
/// # Panics
/// On the first contract violation.
pub fn kv_store_conformance<K: KvStore>(store: K, reopen: impl Fn(K) -> K) {
    let put = |table, key: &str, value: &str| WriteOp::Put {
        table,
        key: key.into(),
        value: value.into(),
    };
    store
        .write(
            vec![
                put(Table::Revisions, "b", "2"),
                put(Table::Revisions, "a", "1"),
                put(Table::Revisions, "c", "3"),
                put(Table::Meta, "a", "meta"),
            ],
            true,
        )
        .unwrap();
    let before = store.snapshot().unwrap();
    store
        .write(
            vec![
                WriteOp::Delete {
                    table: Table::Revisions,
                    key: b"b".to_vec(),
                },
                put(Table::Revisions, "d", "4"),
            ],
            false,
        )
        .unwrap();
    let after = store.snapshot().unwrap();
    let scan = |view: &K::Snapshot, start: &str, end: Option<&str>| {
        let mut keys = Vec::new();
        view.scan(
            Table::Revisions,
            start.as_bytes(),
            end.map(str::as_bytes),
            &mut |k, _| {
                keys.push(String::from_utf8(k.to_vec()).unwrap());
                true
            },
        )
        .unwrap();
        keys
    };
    assert_eq!(
        scan(&before, "", None),
        ["a", "b", "c"],
        "snapshot isolation"
    );
    assert_eq!(
        scan(&after, "", None),
        ["a", "c", "d"],
        "later writes visible"
    );
    assert_eq!(scan(&after, "b", Some("d")), ["c"], "bounds");
    assert_eq!(
        scan(&after, "d", Some("a")),
        Vec::<String>::new(),
        "empty range"
    );
    let mut first = Vec::new();
    after
        .scan(Table::Revisions, b"", None, &mut |k, _| {
            first.push(k.to_vec());
            false
        })
        .unwrap();
    assert_eq!(first, vec![b"a".to_vec()], "visitor stops the scan");
    assert_eq!(
        after.get(Table::Meta, b"a").unwrap(),
        Some(b"meta".to_vec()),
        "tables apart"
    );
    assert_eq!(after.get(Table::Leases, b"a").unwrap(), None);
    drop((before, after));

    // A restore aborted by an error leaves everything as it was.
    let mut failing = vec![
        Ok((Table::Revisions, b"x".to_vec(), b"1".to_vec())),
        Err(StorageError::Corruption("test".into())),
    ]
    .into_iter();
    assert!(store.restore(&mut failing).is_err());
    assert_eq!(
        scan(&store.snapshot().unwrap(), "", None),
        ["a", "c", "d"],
        "aborted restore"
    );

    let mut replacement = vec![Ok((Table::Revisions, b"z".to_vec(), b"26".to_vec()))].into_iter();
    store.restore(&mut replacement).unwrap();
    let store = reopen(store);
    let view = store.snapshot().unwrap();
    assert_eq!(
        scan(&view, "", None),
        ["z"],
        "restore replaced everything, durably"
    );
    assert_eq!(
        view.get(Table::Meta, b"a").unwrap(),
        None,
        "restore cleared every table"
    );
    assert!(store.size_bytes() > 0);

    // Defragmenting keeps the content, durably, and a view taken before it stays readable.
    let before = store.snapshot().unwrap();
    store
        .write(vec![put(Table::Meta, "m", "meta")], false)
        .unwrap();
    store.defragment().unwrap();
    assert_eq!(
        scan(&before, "", None),
        ["z"],
        "earlier view after defragment"
    );
    assert_eq!(before.get(Table::Meta, b"m").unwrap(), None);
    drop(before);
    store
        .write(vec![put(Table::Revisions, "y", "25")], true)
        .unwrap();
    let store = reopen(store);
    let view = store.snapshot().unwrap();
    assert_eq!(
        scan(&view, "", None),
        ["y", "z"],
        "defragmented, then written"
    );
    assert_eq!(view.get(Table::Meta, b"m").unwrap(), Some(b"meta".to_vec()));
}
