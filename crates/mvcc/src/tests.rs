use std::collections::BTreeMap;

use proptest::prelude::*;
use storage::{MemKvStore, WriteOp};

use super::*;

struct Harness {
    store: Store<std::sync::Arc<MemKvStore>>,
    kv: std::sync::Arc<MemKvStore>,
    index: u64,
}

impl Harness {
    fn new() -> Self {
        let kv = std::sync::Arc::new(MemKvStore::new());
        Self {
            store: Store::open(kv.clone()).unwrap(),
            kv,
            index: 0,
        }
    }

    fn apply(&mut self, command: Command) -> Applied {
        self.index += 1;
        let entry = ApplyEntry {
            index: self.index,
            term: 1,
            command: Some(&command),
        };
        self.store.apply_batch(&[entry], false).unwrap().remove(0)
    }

    /// Applies `command`, returning its result and the events it made (with previous
    /// versions).
    fn apply_with_events(&mut self, command: Command) -> (Applied, Vec<Event>) {
        self.index += 1;
        let entry = ApplyEntry {
            index: self.index,
            term: 1,
            command: Some(&command),
        };
        let (mut results, events) = self
            .store
            .apply_batch_with_events(&[entry], false, EventsWanted::WithPrevKv)
            .unwrap();
        (results.remove(0), events)
    }

    /// Every event from `from` on, read back in pages of about `page` bytes.
    fn history(&self, from: i64, page: usize) -> Result<Vec<Event>, MvccError> {
        let current = self.store.current_revision();
        let mut events = Vec::new();
        let mut next = from;
        loop {
            let read = self.store.history(next, current, page, true)?;
            assert!(read.through >= next.min(current), "a read makes progress");
            events.extend(read.events);
            if read.through >= current {
                return Ok(events);
            }
            next = read.through + 1;
        }
    }

    fn put(&mut self, key: &str, value: &str) -> Applied {
        self.apply(Command::Put(PutRequest {
            key: key.into(),
            value: value.into(),
            ..Default::default()
        }))
    }

    fn delete(&mut self, key: &str, range_end: &[u8]) -> Applied {
        self.apply(Command::DeleteRange(DeleteRangeRequest {
            key: key.into(),
            range_end: range_end.to_vec(),
            prev_kv: true,
        }))
    }

    fn range(&self, req: RangeRequest) -> Result<RangeResponse, MvccError> {
        self.store.range(&req).map(|(r, _)| r)
    }

    fn get(&self, key: &str, revision: i64) -> Result<Option<KeyValue>, MvccError> {
        self.range(RangeRequest {
            key: key.into(),
            revision,
            ..Default::default()
        })
        .map(|r| r.kvs.into_iter().next())
    }
}

fn keys(response: &RangeResponse) -> Vec<String> {
    response
        .kvs
        .iter()
        .map(|kv| String::from_utf8(kv.key.clone()).unwrap())
        .collect()
}

// Proves etcd's revision model: a fresh store is at 1, each write bumps by one, a put of the
// same value still bumps, a delete of nothing and a failed command do not, and versions and
// create revisions follow puts, deletes and re-creations.
#[test]
fn revisions_and_versions_follow_etcd() {
    let mut h = Harness::new();
    assert_eq!(h.store.current_revision(), 1);
    assert_eq!(h.put("a", "1").revision, 2);
    assert_eq!(h.put("a", "1").revision, 3);
    let kv = h.get("a", 0).unwrap().unwrap();
    assert_eq!((kv.create_revision, kv.mod_revision, kv.version), (2, 3, 2));
    let nothing = h.delete("zzz", b"");
    assert_eq!(nothing.revision, 3);
    assert_eq!(
        nothing.result,
        Ok(CommandResponse::DeleteRange(DeleteRangeResponse {
            revision: 3,
            ..DeleteRangeResponse::default()
        }))
    );
    assert_eq!(h.delete("a", b"").revision, 4);
    assert_eq!(h.get("a", 0).unwrap(), None);
    assert_eq!(h.put("a", "2").revision, 5);
    let kv = h.get("a", 0).unwrap().unwrap();
    assert_eq!((kv.create_revision, kv.mod_revision, kv.version), (5, 5, 1));
    let failed = h.apply(Command::Put(PutRequest {
        key: b"missing".to_vec(),
        ignore_value: true,
        ..Default::default()
    }));
    assert_eq!(failed.result, Err(MvccError::KeyNotFound));
    assert_eq!(failed.revision, 5);
    // History is readable at every retained revision.
    assert_eq!(h.get("a", 3).unwrap().unwrap().value, b"1");
    assert_eq!(h.get("a", 4).unwrap(), None);
    assert_eq!(h.get("a", 6), Err(MvccError::FutureRevision));
}

// Proves range_end forms, limit with `more` and `count`, keys_only, count_only, sorting and
// the revision filters.
#[test]
fn range_options() {
    let mut h = Harness::new();
    for (k, v) in [("a", "3"), ("b", "1"), ("c", "2"), ("d", "0")] {
        h.put(k, v);
    }
    h.put("b", "9");
    let all = |end: &[u8]| RangeRequest {
        key: b"a".to_vec(),
        range_end: end.to_vec(),
        ..Default::default()
    };
    assert_eq!(keys(&h.range(all(b"c")).unwrap()), ["a", "b"]);
    assert_eq!(keys(&h.range(all(&[0])).unwrap()), ["a", "b", "c", "d"]);
    let from_zero = RangeRequest {
        key: vec![0],
        range_end: vec![0],
        ..Default::default()
    };
    assert_eq!(h.range(from_zero).unwrap().count, 4);
    let limited = h
        .range(RangeRequest {
            limit: 2,
            ..all(&[0])
        })
        .unwrap();
    assert_eq!(
        (keys(&limited), limited.more, limited.count),
        (vec!["a".into(), "b".into()], true, 4)
    );
    let counted = h
        .range(RangeRequest {
            count_only: true,
            ..all(&[0])
        })
        .unwrap();
    assert!(counted.kvs.is_empty());
    assert_eq!(counted.count, 4);
    let keys_only = h
        .range(RangeRequest {
            keys_only: true,
            ..all(&[0])
        })
        .unwrap();
    assert!(keys_only.kvs.iter().all(|kv| kv.value.is_empty()));
    let by_value = h
        .range(RangeRequest {
            sort_target: SortTarget::Value,
            ..all(&[0])
        })
        .unwrap();
    assert_eq!(keys(&by_value), ["d", "c", "a", "b"]);
    // etcd's quirk: with no sort order, a non-key target sorts only the first `limit + 1`
    // keys in key order (here a and b), then truncates.
    let first_page_by_value = h
        .range(RangeRequest {
            sort_target: SortTarget::Value,
            limit: 1,
            ..all(&[0])
        })
        .unwrap();
    assert_eq!(
        (keys(&first_page_by_value), first_page_by_value.more),
        (vec!["a".into()], true)
    );
    let by_create_desc = h
        .range(RangeRequest {
            sort_target: SortTarget::Create,
            sort_order: SortOrder::Descend,
            limit: 1,
            ..all(&[0])
        })
        .unwrap();
    assert_eq!(
        (keys(&by_create_desc), by_create_desc.more),
        (vec!["d".into()], true)
    );
    let modified_late = h
        .range(RangeRequest {
            min_mod_revision: 6,
            ..all(&[0])
        })
        .unwrap();
    assert_eq!(keys(&modified_late), ["b"]);
    assert_eq!(modified_late.count, 4);
    let created_early = h
        .range(RangeRequest {
            max_create_revision: 3,
            ..all(&[0])
        })
        .unwrap();
    assert_eq!(keys(&created_early), ["a", "b"]);
}

// Proves txn semantics: compares on absent keys, range compares, one revision for all
// writes, reads that see earlier writes of the same txn, nested txns.
#[test]
fn txn_semantics() {
    let mut h = Harness::new();
    h.put("x", "1");
    let compare = |key: &str, target: CompareTarget, result: CompareResult| Compare {
        result,
        target,
        key: key.into(),
        range_end: Vec::new(),
    };
    let put = |key: &str, value: &str| {
        RequestOp::Put(PutRequest {
            key: key.into(),
            value: value.into(),
            ..Default::default()
        })
    };
    let get = |key: &str| {
        RequestOp::Range(RangeRequest {
            key: key.into(),
            ..Default::default()
        })
    };
    // create_revision == 0 holds for an absent key; a value compare on it is false.
    let txn = TxnRequest {
        compare: vec![compare(
            "absent",
            CompareTarget::Create(0),
            CompareResult::Equal,
        )],
        success: vec![put("y", "a"), put("z", "b"), get("y")],
        failure: vec![],
    };
    let applied = h.apply(Command::Txn(txn));
    assert_eq!(applied.revision, 3);
    let Ok(CommandResponse::Txn(response)) = applied.result else {
        panic!()
    };
    assert!(response.succeeded);
    let ResponseOp::Range(read) = &response.responses[2] else {
        panic!()
    };
    assert_eq!(read.kvs[0].value, b"a");
    assert_eq!(read.kvs[0].mod_revision, 3);
    assert_eq!(h.get("z", 0).unwrap().unwrap().mod_revision, 3);

    let value_on_absent = TxnRequest {
        compare: vec![compare(
            "absent",
            CompareTarget::Value(Vec::new()),
            CompareResult::Equal,
        )],
        success: vec![put("w", "1")],
        failure: vec![get("x")],
    };
    let applied = h.apply(Command::Txn(value_on_absent));
    let Ok(CommandResponse::Txn(response)) = applied.result else {
        panic!()
    };
    assert!(!response.succeeded);
    assert_eq!(
        applied.revision, 3,
        "a read-only branch does not bump the revision"
    );

    // A range compare must hold for every key in the range.
    let mut range_compare = compare("x", CompareTarget::Version(1), CompareResult::Equal);
    range_compare.range_end = b"zz".to_vec();
    let nested = TxnRequest {
        compare: vec![range_compare],
        success: vec![RequestOp::Txn(TxnRequest {
            compare: vec![],
            success: vec![put("n", "nested")],
            failure: vec![],
        })],
        failure: vec![put("n", "outer-failure")],
    };
    h.apply(Command::Txn(nested));
    assert_eq!(h.get("n", 0).unwrap().unwrap().value, b"nested");
}

// Proves compaction keeps the newest version at or below the compaction revision, drops
// tombstones and older history, refuses reads below it, and allows reads exactly at it.
// Proves the order in which etcd applies a txn: every compare on the path (nested ones too)
// sees the state before the txn; puts are checked before ranges; each operation reports the
// revision it saw or made; a failure leaves nothing applied.
#[test]
fn txn_phases_follow_etcd() {
    let mut h = Harness::new();
    h.put("a", "1"); // revision 2
    let put = |key: &str, ignore_value: bool| {
        RequestOp::Put(PutRequest {
            key: key.into(),
            value: if ignore_value {
                Vec::new()
            } else {
                b"v".to_vec()
            },
            ignore_value,
            ..Default::default()
        })
    };
    let range_at = |revision: i64| {
        RequestOp::Range(RangeRequest {
            key: b"a".to_vec(),
            revision,
            ..Default::default()
        })
    };
    // The nested compare "b is absent" is evaluated before the parent's put of b runs.
    let nested = TxnRequest {
        compare: vec![Compare {
            result: CompareResult::Equal,
            target: CompareTarget::Version(0),
            key: b"b".to_vec(),
            range_end: Vec::new(),
        }],
        success: vec![range_at(0)],
        failure: vec![],
    };
    let txn = TxnRequest {
        compare: vec![],
        success: vec![range_at(0), put("b", false), RequestOp::Txn(nested)],
        failure: vec![],
    };
    let applied = h.apply(Command::Txn(txn));
    assert_eq!(applied.revision, 3);
    let Ok(CommandResponse::Txn(response)) = applied.result else {
        panic!("{applied:?}")
    };
    let ResponseOp::Txn(inner) = &response.responses[2] else {
        panic!()
    };
    assert!(
        inner.succeeded,
        "the nested compare saw the state before the txn"
    );
    let revisions: Vec<i64> = response
        .responses
        .iter()
        .map(|op| match op {
            ResponseOp::Range(r) => r.revision,
            ResponseOp::Put(r) => r.revision,
            ResponseOp::DeleteRange(r) => r.revision,
            ResponseOp::Txn(_) => 0,
        })
        .collect();
    assert_eq!(revisions, [2, 3, 0], "a read before the write sees 2");

    // Puts are checked before ranges: a future-revision range before an ignore_value put of
    // a missing key fails with the put's error.
    let txn = TxnRequest {
        compare: vec![],
        success: vec![range_at(99), put("missing", true)],
        failure: vec![],
    };
    assert_eq!(
        h.apply(Command::Txn(txn)).result,
        Err(MvccError::KeyNotFound)
    );
    // A lone put checks its lease before the key.
    let applied = h.apply(Command::Put(PutRequest {
        key: b"missing".to_vec(),
        ignore_value: true,
        lease: 5,
        ..Default::default()
    }));
    assert_eq!(applied.result, Err(MvccError::LeaseNotFound));
    assert_eq!(applied.revision, 3);

    // A txn's range at a negative revision is valid until the first compaction, as in etcd
    // (whose compaction revision starts at -1); a compaction to 0 is accepted.
    let negative = TxnRequest {
        compare: vec![],
        success: vec![range_at(-1)],
        failure: vec![],
    };
    assert!(h.apply(Command::Txn(negative.clone())).result.is_ok());
    assert_eq!(h.store.compact_revision(), -1);
    let compact = h.apply(Command::Compact(CompactRequest {
        revision: 0,
        physical: false,
    }));
    assert_eq!(compact.result, Ok(CommandResponse::Compact));
    assert_eq!(
        h.apply(Command::Txn(negative)).result,
        Err(MvccError::Compacted)
    );
}

#[test]
fn compaction() {
    let mut h = Harness::new();
    h.put("a", "1"); // 2
    h.put("a", "2"); // 3
    h.put("b", "1"); // 4
    h.delete("b", b""); // 5
    h.put("c", "1"); // 6
    let compact = |rev| {
        Command::Compact(CompactRequest {
            revision: rev,
            physical: true,
        })
    };
    assert_eq!(h.apply(compact(5)).result, Ok(CommandResponse::Compact));
    assert_eq!(h.store.compact_revision(), 5);
    assert_eq!(h.get("a", 4), Err(MvccError::Compacted));
    assert_eq!(h.get("a", 5).unwrap().unwrap().value, b"2");
    assert_eq!(h.get("b", 5).unwrap(), None);
    assert_eq!(h.apply(compact(5)).result, Err(MvccError::Compacted));
    assert_eq!(h.apply(compact(99)).result, Err(MvccError::FutureRevision));
    // The dropped versions are gone from storage too: reopening sees the same state.
    let reopened = Store::open(h.kv.clone()).unwrap();
    assert_eq!(reopened.compact_revision(), 5);
    assert_eq!(reopened.hash_kv(0).unwrap(), h.store.hash_kv(0).unwrap());
    // HashKV as etcd 3.5.5 and later answer it: revisions before the compaction are
    // refused, the compacted one, later ones and the current one hashed, future ones refused.
    assert_eq!(h.store.hash_kv(4), Err(MvccError::Compacted));
    assert_eq!(h.store.hash_kv(5).unwrap().1, 5);
    assert_eq!(
        h.store.hash_kv(6).unwrap().1..=h.store.hash_kv(6).unwrap().2,
        5..=6
    );
    assert_eq!(h.store.hash_kv(0).unwrap().2, 6);
    assert_eq!(h.store.hash_kv(7), Err(MvccError::FutureRevision));
    let snapshot = h.kv.snapshot().unwrap();
    let mut stored = 0;
    snapshot
        .scan(Table::Revisions, &[], None, &mut |_, _| {
            stored += 1;
            true
        })
        .unwrap();
    assert_eq!(stored, 2, "a@3 and c@6 remain");
}

// Proves snapshots: restoring another store's snapshot view yields the same state, applied
// index and hash; and HashKV differs when histories differ.
#[test]
fn restore_and_hash() {
    let mut a = Harness::new();
    for i in 0..20 {
        a.put(&format!("k{i}"), &format!("v{i}"));
    }
    let mut b = Harness::new();
    b.put("other", "state");
    assert_ne!(a.store.hash_kv(0).unwrap().0, b.store.hash_kv(0).unwrap().0);
    let (view, applied) = a.store.snapshot_view().unwrap();
    assert_eq!(applied.index, 20);
    let mut records = Vec::new();
    for table in Table::ALL {
        view.scan(table, &[], None, &mut |k, v| {
            records.push(Ok((table, k.to_vec(), v.to_vec())));
            true
        })
        .unwrap();
    }
    let restored = b.store.restore(&mut records.into_iter()).unwrap();
    assert_eq!(restored, applied);
    assert_eq!(b.store.durable_applied(), applied);
    assert_eq!(b.store.hash_kv(0).unwrap(), a.store.hash_kv(0).unwrap());
    assert_eq!(b.get("k7", 0).unwrap().unwrap().value, b"v7");
    assert_eq!(b.get("other", 0).unwrap(), None);
}

fn alarm(action: AlarmAction, member_id: u64, alarm: Option<AlarmType>) -> Command {
    Command::Alarm(AlarmRequest {
        action,
        member_id,
        alarm,
    })
}

// Proves alarms as etcd applies them: deactivate reports only a change, GET
// filters by type, NOSPACE refuses puts and txns with a top-level put but not deletes,
// compactions, read-only or nested-put txns, CORRUPT refuses every write, alarm commands
// leave the revision alone, and alarms survive reopening and travel in snapshots.
#[test]
fn alarms_gate_writes_as_etcd() {
    use AlarmAction::{Activate, Deactivate, Get};
    let mut h = Harness::new();
    h.put("a", "1");
    let nospace = |m| AlarmMember {
        member_id: m,
        alarm: AlarmType::NoSpace,
    };
    let result = |applied: Applied| applied.result;
    assert_eq!(
        result(h.apply(alarm(Activate, 7, Some(AlarmType::NoSpace)))),
        Ok(CommandResponse::Alarm(vec![nospace(7)]))
    );
    assert_eq!(
        result(h.apply(alarm(Activate, 7, Some(AlarmType::NoSpace)))),
        Ok(CommandResponse::Alarm(vec![nospace(7)])),
        "already active: etcd answers with the alarm all the same"
    );
    assert_eq!(
        result(h.apply(alarm(Activate, 7, None))),
        Ok(CommandResponse::Alarm(vec![]))
    );
    assert_eq!(h.store.current_revision(), 2, "alarms are not revisions");
    assert_eq!(h.put("a", "2").result, Err(MvccError::NoSpace));
    let put = |key: &str| {
        RequestOp::Put(PutRequest {
            key: key.into(),
            ..Default::default()
        })
    };
    let delete = RequestOp::DeleteRange(DeleteRangeRequest {
        key: b"a".to_vec(),
        ..Default::default()
    });
    let txn = |success: Vec<RequestOp>, failure: Vec<RequestOp>| {
        Command::Txn(TxnRequest {
            compare: vec![],
            success,
            failure,
        })
    };
    assert_eq!(
        h.apply(txn(vec![], vec![put("x")])).result,
        Err(MvccError::NoSpace),
        "a put on either branch counts"
    );
    let nested = RequestOp::Txn(TxnRequest {
        compare: vec![],
        success: vec![put("n")],
        failure: vec![],
    });
    assert!(h.apply(txn(vec![nested], vec![])).result.is_ok());
    assert_eq!(h.store.current_revision(), 3, "a nested put is not counted");
    assert!(h.apply(txn(vec![delete.clone()], vec![])).result.is_ok());
    assert!(h
        .apply(Command::Compact(CompactRequest {
            revision: 2,
            physical: false
        }))
        .result
        .is_ok());
    h.apply(alarm(Activate, 9, Some(AlarmType::Corrupt)));
    assert_eq!(
        h.apply(alarm(Get, 0, None)).result,
        Ok(CommandResponse::Alarm(vec![
            nospace(7),
            AlarmMember {
                member_id: 9,
                alarm: AlarmType::Corrupt
            }
        ]))
    );
    assert_eq!(
        h.apply(alarm(Get, 0, Some(AlarmType::NoSpace))).result,
        Ok(CommandResponse::Alarm(vec![nospace(7)]))
    );
    assert_eq!(h.delete("n", b"").result, Err(MvccError::Corrupt));
    assert_eq!(
        h.apply(txn(vec![delete], vec![])).result,
        Err(MvccError::Corrupt)
    );
    let read = RequestOp::Range(RangeRequest {
        key: b"a".to_vec(),
        ..Default::default()
    });
    assert!(h.apply(txn(vec![read], vec![])).result.is_ok());
    // Reopened and restored stores keep the alarms.
    let reopened = Store::open(h.kv.clone()).unwrap();
    assert_eq!(reopened.alarms(), h.store.alarms());
    assert_eq!(reopened.alarms().len(), 2);
    assert_eq!(
        h.apply(alarm(Deactivate, 9, Some(AlarmType::Corrupt)))
            .result,
        Ok(CommandResponse::Alarm(vec![AlarmMember {
            member_id: 9,
            alarm: AlarmType::Corrupt
        }]))
    );
    assert_eq!(
        h.apply(alarm(Deactivate, 9, Some(AlarmType::Corrupt)))
            .result,
        Ok(CommandResponse::Alarm(vec![]))
    );
    assert_eq!(h.put("a", "3").result, Err(MvccError::NoSpace));
    h.apply(alarm(Deactivate, 7, Some(AlarmType::NoSpace)));
    assert!(h.put("a", "3").result.is_ok());
    assert!(Store::open(h.kv.clone()).unwrap().alarms().is_empty());
}

// Proves the command codec round-trips and never panics on malformed input.
#[test]
fn command_codec() {
    let command = Command::Txn(TxnRequest {
        compare: vec![Compare {
            result: CompareResult::NotEqual,
            target: CompareTarget::Value(b"v".to_vec()),
            key: b"k".to_vec(),
            range_end: b"z".to_vec(),
        }],
        success: vec![RequestOp::Range(RangeRequest {
            key: b"a".to_vec(),
            sort_order: SortOrder::Descend,
            sort_target: SortTarget::Create,
            max_create_revision: 9,
            limit: 1,
            ..Default::default()
        })],
        failure: vec![RequestOp::DeleteRange(DeleteRangeRequest {
            key: b"d".to_vec(),
            range_end: vec![0],
            prev_kv: true,
        })],
    });
    for command in [
        command,
        alarm(AlarmAction::Deactivate, u64::MAX, Some(AlarmType::Corrupt)),
        alarm(AlarmAction::Get, 0, None),
        Command::LeaseGrant(LeaseGrantRequest {
            id: i64::MAX,
            ttl: MAX_LEASE_TTL,
        }),
        Command::LeaseRevoke(1),
        Command::LeaseKeepAlive(-3),
        Command::LeaseExpire(LeaseExpireRequest {
            id: 42,
            renewals: u64::MAX,
        }),
        Command::LeaseCheckpoint(vec![
            LeaseCheckpoint {
                id: 5,
                remaining_ttl: 17,
            },
            LeaseCheckpoint {
                id: -1,
                remaining_ttl: 0,
            },
        ]),
        Command::LeaseCheckpoint(Vec::new()),
    ] {
        let bytes = command.encode();
        assert_eq!(Command::decode(&bytes).unwrap(), command);
        for cut in 0..bytes.len() {
            assert!(Command::decode(&bytes[..cut]).is_err());
        }
    }
}

/// The model: the full state after every revision.
#[derive(Default)]
struct Model {
    history: Vec<BTreeMap<Vec<u8>, KeyValue>>,
    compacted: i64,
}

impl Model {
    fn new() -> Self {
        // Revision 1 is the empty store; index 0 unused.
        Self {
            history: vec![BTreeMap::new(), BTreeMap::new()],
            compacted: -1, // never compacted, as etcd
        }
    }

    fn current(&self) -> i64 {
        self.history.len() as i64 - 1
    }

    fn latest(&self) -> BTreeMap<Vec<u8>, KeyValue> {
        self.history.last().unwrap().clone()
    }

    /// A put of `value` under `key` at the next revision.
    fn put(&mut self, key: &[u8], value: u8) {
        let mut state = self.latest();
        let rev = self.current() + 1;
        let previous = state.get(key).cloned();
        state.insert(
            key.to_vec(),
            KeyValue {
                key: key.to_vec(),
                create_revision: previous.as_ref().map_or(rev, |p| p.create_revision),
                mod_revision: rev,
                version: previous.as_ref().map_or(1, |p| p.version + 1),
                value: vec![value],
                lease: 0,
            },
        );
        self.history.push(state);
    }
}

#[derive(Clone, Debug)]
enum Op {
    Put(u8, u8),
    Delete(u8, u8),
    Compact(u8),
    Read(u8, u8),
}

fn op_strategy() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0u8..6, any::<u8>()).prop_map(|(k, v)| Op::Put(k, v)),
        1 => (0u8..6, 0u8..3).prop_map(|(k, n)| Op::Delete(k, n)),
        1 => any::<u8>().prop_map(Op::Compact),
        2 => (any::<u8>(), 0u8..3).prop_map(|(r, l)| Op::Read(r, l)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    // Proves the store against a model that keeps the whole history: every write's revision
    // and result, and every read at any retained revision (with limits), match.
    #[test]
    fn store_matches_model(ops in proptest::collection::vec(op_strategy(), 1..60)) {
        let mut h = Harness::new();
        let mut model = Model::new();
        for op in ops {
            match op {
                Op::Put(k, v) => {
                    let key = vec![b'a' + k];
                    let mut state = model.latest();
                    let rev = model.current() + 1;
                    let previous = state.get(&key).cloned();
                    let kv = KeyValue {
                        key: key.clone(),
                        create_revision: previous.as_ref().map_or(rev, |p| p.create_revision),
                        mod_revision: rev,
                        version: previous.as_ref().map_or(1, |p| p.version + 1),
                        value: vec![v],
                        lease: 0,
                    };
                    state.insert(key.clone(), kv);
                    model.history.push(state);
                    let applied = h.apply(Command::Put(PutRequest { key, value: vec![v], prev_kv: true, ..Default::default() }));
                    prop_assert_eq!(applied.revision, rev);
                    prop_assert_eq!(applied.result, Ok(CommandResponse::Put(PutResponse { revision: rev, prev_kv: previous })));
                }
                Op::Delete(k, n) => {
                    let start = vec![b'a' + k];
                    let end = vec![b'a' + k + n];
                    let mut state = model.latest();
                    let deleted: Vec<KeyValue> = state.range(start.clone()..end.clone()).map(|(_, kv)| kv.clone()).collect();
                    let range_end = if n == 0 { Vec::new() } else { end.clone() };
                    let deleted = if n == 0 { state.get(&start).cloned().into_iter().collect() } else { deleted };
                    for kv in &deleted {
                        state.remove(&kv.key);
                    }
                    if !deleted.is_empty() {
                        model.history.push(state);
                    }
                    let applied = h.apply(Command::DeleteRange(DeleteRangeRequest { key: start, range_end, prev_kv: true }));
                    prop_assert_eq!(applied.revision, model.current());
                    prop_assert_eq!(applied.result, Ok(CommandResponse::DeleteRange(DeleteRangeResponse { revision: model.current(), deleted: deleted.len() as i64, prev_kvs: deleted })));
                }
                Op::Compact(r) => {
                    let rev = i64::from(r) % (model.current() + 2);
                    let expected = if rev <= model.compacted {
                        Err(MvccError::Compacted)
                    } else if rev > model.current() {
                        Err(MvccError::FutureRevision)
                    } else {
                        model.compacted = rev;
                        Ok(CommandResponse::Compact)
                    };
                    let applied = h.apply(Command::Compact(CompactRequest { revision: rev, physical: false }));
                    prop_assert_eq!(applied.result, expected);
                }
                Op::Read(r, limit) => {
                    let rev = i64::from(r) % (model.current() + 2);
                    let req = RangeRequest { key: b"a".to_vec(), range_end: vec![0], revision: rev, limit: i64::from(limit), ..Default::default() };
                    let at = if rev == 0 { model.current() } else { rev };
                    let expected = if at > model.current() {
                        Err(MvccError::FutureRevision)
                    } else if at < model.compacted {
                        Err(MvccError::Compacted)
                    } else {
                        let state = &model.history[at as usize];
                        let all: Vec<KeyValue> = state.values().cloned().collect();
                        let count = all.len() as i64;
                        let take = if limit == 0 { all.len() } else { usize::from(limit).min(all.len()) };
                        Ok(RangeResponse { revision: model.current(), more: take < all.len(), kvs: all[..take].to_vec(), count })
                    };
                    prop_assert_eq!(h.range(req.clone()), expected);
                    // The same read inside a read-only txn, nested on one branch, served
                    // without the log, answers exactly as the txn applied through the log.
                    let txn = TxnRequest {
                        compare: vec![Compare { result: CompareResult::Equal, target: CompareTarget::Version(1), key: b"a".to_vec(), range_end: vec![] }],
                        success: vec![RequestOp::Range(req.clone())],
                        failure: vec![RequestOp::Txn(TxnRequest { compare: vec![], success: vec![RequestOp::Range(req)], failure: vec![] })],
                    };
                    let read = h.store.read_txn(&txn);
                    let applied = h.apply(Command::Txn(txn));
                    prop_assert_eq!(read.as_ref().map(|(_, rev)| *rev).unwrap_or(applied.revision), applied.revision);
                    prop_assert_eq!(read.map(|(r, _)| CommandResponse::Txn(r)), applied.result);
                }
            }
        }
        // Reopening from storage rebuilds the same index.
        let reopened = Store::open(h.kv.clone()).unwrap();
        prop_assert_eq!(reopened.current_revision(), h.store.current_revision());
        prop_assert_eq!(reopened.hash_kv(0).unwrap(), h.store.hash_kv(0).unwrap());
        let all = RangeRequest { key: vec![0], range_end: vec![0], ..Default::default() };
        prop_assert_eq!(reopened.range(&all).unwrap(), h.store.range(&all).unwrap());
        // The bytes in use are exactly what the stored records occupy, kept through
        // overwrites, deletes and compactions, and rebuilt the same at open.
        let mut stored = 0u64;
        h.kv.snapshot().unwrap().scan(Table::Revisions, &[], None, &mut |k, v| {
            stored += (k.len() + v.len()) as u64;
            true
        }).unwrap();
        prop_assert_eq!(h.store.bytes_in_use(), stored);
        prop_assert_eq!(reopened.bytes_in_use(), stored);
    }
}

/// The events the model's revision `rev` stands for: every key that changed, in key order.
fn model_events(model: &Model, rev: usize) -> Vec<Event> {
    let (before, after) = (&model.history[rev - 1], &model.history[rev]);
    let keys: std::collections::BTreeSet<&Vec<u8>> = before.keys().chain(after.keys()).collect();
    keys.into_iter()
        .filter_map(|key| match (before.get(key), after.get(key)) {
            (prev, Some(kv)) if kv.mod_revision == rev as i64 => Some(Event {
                kind: EventKind::Put,
                kv: kv.clone(),
                prev_kv: prev.cloned(),
            }),
            (Some(prev), None) => Some(Event {
                kind: EventKind::Delete,
                kv: KeyValue {
                    key: key.clone(),
                    mod_revision: rev as i64,
                    ..KeyValue::default()
                },
                prev_kv: Some(prev.clone()),
            }),
            _ => None,
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    // Proves the events watchers get: those each write reports as it is applied are exactly
    // the changes the model sees between two revisions (previous versions included), and
    // reading them back from history, from any retained revision and in pages of any size,
    // gives the same events; below the compaction revision history answers `Compacted`.
    #[test]
    fn events_match_model_live_and_from_history(
        ops in proptest::collection::vec(op_strategy(), 1..50),
        page in 1usize..64,
    ) {
        let mut h = Harness::new();
        let mut model = Model::new();
        for op in ops {
            let before = model.current();
            let (command, compact) = match op {
                Op::Put(k, v) => {
                    let key = vec![b'a' + k];
                    model.put(&key, v);
                    (Command::Put(PutRequest { key, value: vec![v], ..Default::default() }), None)
                }
                Op::Delete(k, n) => {
                    let (start, end) = (vec![b'a' + k], vec![b'a' + k + n.max(1)]);
                    let mut state = model.latest();
                    let deleted: Vec<Vec<u8>> = state.range(start.clone()..end.clone()).map(|(k, _)| k.clone()).collect();
                    for key in &deleted {
                        state.remove(key);
                    }
                    if !deleted.is_empty() {
                        model.history.push(state);
                    }
                    (Command::DeleteRange(DeleteRangeRequest { key: start, range_end: end, prev_kv: false }), None)
                }
                Op::Compact(r) => {
                    let rev = i64::from(r) % (model.current() + 1);
                    let ok = rev > model.compacted;
                    if ok {
                        model.compacted = rev;
                    }
                    (Command::Compact(CompactRequest { revision: rev, physical: false }), Some(ok))
                }
                // A txn whose compare fails and whose failure branch puts, then a failed
                // command: only the first makes an event.
                Op::Read(r, _) => {
                    let key = vec![b'a' + r % 6];
                    model.put(&key, r);
                    let put = RequestOp::Put(PutRequest { key: key.clone(), value: vec![r], ..Default::default() });
                    (Command::Txn(TxnRequest {
                        compare: vec![Compare { result: CompareResult::Equal, target: CompareTarget::Version(-1), key, range_end: vec![] }],
                        success: vec![],
                        failure: vec![put],
                    }), None)
                }
            };
            let (applied, events) = h.apply_with_events(command);
            if let Some(ok) = compact {
                prop_assert_eq!(applied.result.is_ok(), ok);
            }
            let expected: Vec<Event> = ((before + 1)..=model.current())
                .flat_map(|rev| model_events(&model, rev as usize))
                .collect();
            prop_assert_eq!(events, expected);
            // A command that fails makes no event.
            let (failed, events) = h.apply_with_events(Command::Put(PutRequest { key: b"z".to_vec(), ignore_value: true, ..Default::default() }));
            prop_assert_eq!(failed.result, Err(MvccError::KeyNotFound));
            prop_assert!(events.is_empty());
        }
        let current = model.current();
        for from in (model.compacted + 1).max(1)..=current + 1 {
            let expected: Vec<Event> = (from..=current).flat_map(|rev| model_events(&model, rev as usize)).collect();
            prop_assert_eq!(h.history(from, page), Ok(expected));
        }
        if model.compacted > 0 {
            prop_assert_eq!(h.history(model.compacted - 1, page), Err(MvccError::Compacted));
            // From the compaction revision itself: what is retained there, then everything.
            let at = h.history(model.compacted, page).unwrap();
            let after: Vec<Event> = at.into_iter().filter(|e| e.revision() > model.compacted).collect();
            let expected: Vec<Event> = (model.compacted + 1..=current).flat_map(|rev| model_events(&model, rev as usize)).collect();
            prop_assert_eq!(after, expected);
        }
        prop_assert_eq!(h.store.history(model.compacted.max(1), current + 1, page, false), Err(MvccError::FutureRevision));
    }
}

// Proves leases as etcd's lessor applies them: grants (an id in use and a TTL over the
// maximum refused), puts that attach keys (an unknown lease refused), keys moving between
// leases and leaving them when deleted, a revoke deleting every attached key at one revision
// in key order (with events), keepalives counted, an expiry that a renewal in between
// cancels, and the whole state rebuilt the same from storage.
#[test]
fn leases_follow_etcd() {
    let mut h = Harness::new();
    let grant = |id, ttl| Command::LeaseGrant(LeaseGrantRequest { id, ttl });
    assert_eq!(
        h.apply(grant(7, 10)).result,
        Ok(CommandResponse::LeaseGrant(LeaseGrantRequest {
            id: 7,
            ttl: 10
        }))
    );
    assert_eq!(h.store.current_revision(), 1, "a grant makes no revision");
    assert_eq!(h.apply(grant(7, 5)).result, Err(MvccError::LeaseExists));
    assert_eq!(
        h.apply(grant(8, MAX_LEASE_TTL + 1)).result,
        Err(MvccError::LeaseTtlTooLarge)
    );
    h.apply(grant(8, 20)).result.unwrap();
    let put = |key: &str, lease| {
        Command::Put(PutRequest {
            key: key.into(),
            value: b"v".to_vec(),
            lease,
            ..Default::default()
        })
    };
    assert_eq!(h.apply(put("x", 9)).result, Err(MvccError::LeaseNotFound));
    for key in ["c", "a", "b"] {
        h.apply(put(key, 7)).result.unwrap();
    }
    h.apply(put("d", 8)).result.unwrap();
    h.apply(put("b", 8)).result.unwrap(); // moves b to lease 8
    h.delete("c", b""); // c leaves lease 7
    let keys = |h: &Harness, id| -> Vec<Vec<u8>> { h.store.lease(id).unwrap().keys };
    assert_eq!(keys(&h, 7), vec![b"a".to_vec()]);
    assert_eq!(keys(&h, 8), vec![b"b".to_vec(), b"d".to_vec()]);

    // Keepalives count; an expiry decided before the latest renewal does nothing.
    assert_eq!(
        h.apply(Command::LeaseKeepAlive(8)).result,
        Ok(CommandResponse::LeaseKeepAlive(20))
    );
    assert_eq!(
        h.apply(Command::LeaseKeepAlive(9)).result,
        Err(MvccError::LeaseNotFound)
    );
    let expire = |renewals| Command::LeaseExpire(LeaseExpireRequest { id: 8, renewals });
    assert_eq!(
        h.apply(expire(0)).result,
        Ok(CommandResponse::LeaseExpire(false))
    );
    assert!(h.store.lease(8).is_some());

    // Checkpoints record remaining TTLs without a revision, survive a reopen, ignore
    // unknown leases, and a log keepalive clears them.
    let before = h.store.current_revision();
    let checkpoint = |id, remaining_ttl| {
        Command::LeaseCheckpoint(vec![
            LeaseCheckpoint { id, remaining_ttl },
            LeaseCheckpoint {
                id: 99,
                remaining_ttl: 3,
            },
        ])
    };
    assert_eq!(
        h.apply(checkpoint(7, 4)).result,
        Ok(CommandResponse::LeaseCheckpoint)
    );
    assert_eq!(h.store.current_revision(), before);
    assert_eq!(h.store.lease(7).unwrap().remaining_ttl, 4);
    assert!(h.store.lease(99).is_none());
    assert_eq!(
        Store::open(h.kv.clone())
            .unwrap()
            .lease(7)
            .unwrap()
            .remaining_ttl,
        4
    );
    h.apply(Command::LeaseKeepAlive(7)).result.unwrap();
    assert_eq!(h.store.lease(7).unwrap().remaining_ttl, 0);
    h.apply(checkpoint(7, 2)).result.unwrap();
    h.apply(checkpoint(7, 0)).result.unwrap();
    assert_eq!(h.store.lease(7).unwrap().remaining_ttl, 0);
    let expire = |renewals| Command::LeaseExpire(LeaseExpireRequest { id: 8, renewals });

    // Reopening rebuilds leases and their keys.
    let reopened = Store::open(h.kv.clone()).unwrap();
    assert_eq!(reopened.leases(), h.store.leases());

    // The expiry with the current count revokes: both keys go at one revision, in key order.
    let before = h.store.current_revision();
    let (applied, events) = h.apply_with_events(expire(1));
    assert_eq!(applied.result, Ok(CommandResponse::LeaseExpire(true)));
    assert_eq!(applied.revision, before + 1);
    let deleted: Vec<(EventKind, Vec<u8>, i64)> = events
        .iter()
        .map(|e| (e.kind, e.kv.key.clone(), e.revision()))
        .collect();
    assert_eq!(
        deleted,
        vec![
            (EventKind::Delete, b"b".to_vec(), before + 1),
            (EventKind::Delete, b"d".to_vec(), before + 1)
        ]
    );
    assert!(h.get("b", 0).unwrap().is_none() && h.get("d", 0).unwrap().is_none());
    assert_eq!(
        h.apply(expire(1)).result,
        Ok(CommandResponse::LeaseExpire(false)),
        "already gone"
    );
    assert_eq!(
        h.apply(Command::LeaseRevoke(8)).result,
        Err(MvccError::LeaseNotFound)
    );
    // A revoke of a lease without keys makes no revision.
    h.apply(grant(10, 5)).result.unwrap();
    let before = h.store.current_revision();
    assert_eq!(
        h.apply(Command::LeaseRevoke(10)).result,
        Ok(CommandResponse::LeaseRevoke)
    );
    assert_eq!(h.store.current_revision(), before);
    assert_eq!(
        h.store.leases().iter().map(|l| l.id).collect::<Vec<_>>(),
        vec![7]
    );
    let reopened = Store::open(h.kv.clone()).unwrap();
    assert_eq!(reopened.leases(), h.store.leases());

    // Alarms: NOSPACE refuses grants; CORRUPT refuses grants and revokes but not keepalives.
    h.apply(Command::Alarm(AlarmRequest {
        action: AlarmAction::Activate,
        member_id: 1,
        alarm: Some(AlarmType::NoSpace),
    }));
    assert_eq!(h.apply(grant(11, 5)).result, Err(MvccError::NoSpace));
    h.apply(Command::Alarm(AlarmRequest {
        action: AlarmAction::Activate,
        member_id: 1,
        alarm: Some(AlarmType::Corrupt),
    }));
    assert_eq!(
        h.apply(Command::LeaseRevoke(7)).result,
        Err(MvccError::Corrupt)
    );
    assert!(h.apply(Command::LeaseKeepAlive(7)).result.is_ok());
}

/// A store whose reads fail once `fail` is set, as a disk's can.
#[derive(Clone)]
struct FailingReads {
    inner: std::sync::Arc<MemKvStore>,
    fail: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

struct FailingSnapshot {
    inner: <MemKvStore as KvStore>::Snapshot,
    fail: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl FailingSnapshot {
    fn check(&self) -> storage::Result<()> {
        if self.fail.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(storage::StorageError::Io("read failed".into()));
        }
        Ok(())
    }
}

impl KvSnapshot for FailingSnapshot {
    fn get(&self, table: Table, key: &[u8]) -> storage::Result<Option<Vec<u8>>> {
        self.check()?;
        self.inner.get(table, key)
    }

    fn scan(
        &self,
        table: Table,
        start: &[u8],
        end: Option<&[u8]>,
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> storage::Result<()> {
        self.check()?;
        self.inner.scan(table, start, end, visit)
    }
}

impl KvStore for FailingReads {
    type Snapshot = FailingSnapshot;

    fn write(&self, ops: Vec<WriteOp>, durable: bool) -> storage::Result<()> {
        self.inner.write(ops, durable)
    }

    fn snapshot(&self) -> storage::Result<FailingSnapshot> {
        Ok(FailingSnapshot {
            inner: self.inner.snapshot()?,
            fail: self.fail.clone(),
        })
    }

    fn restore(
        &self,
        records: &mut dyn Iterator<Item = storage::Result<(Table, Vec<u8>, Vec<u8>)>>,
    ) -> storage::Result<()> {
        self.inner.restore(records)
    }

    fn size_bytes(&self) -> u64 {
        self.inner.size_bytes()
    }

    fn defragment(&self) -> storage::Result<()> {
        self.inner.defragment()
    }
}

/// A store whose defragmentation says it started, then waits until released.
struct GatedDefragment {
    inner: MemKvStore,
    started: std::sync::mpsc::SyncSender<()>,
    release: parking_lot::Mutex<std::sync::mpsc::Receiver<()>>,
}

impl KvStore for GatedDefragment {
    type Snapshot = <MemKvStore as KvStore>::Snapshot;

    fn write(&self, ops: Vec<WriteOp>, durable: bool) -> storage::Result<()> {
        self.inner.write(ops, durable)
    }

    fn snapshot(&self) -> storage::Result<Self::Snapshot> {
        self.inner.snapshot()
    }

    fn restore(
        &self,
        records: &mut dyn Iterator<Item = storage::Result<(Table, Vec<u8>, Vec<u8>)>>,
    ) -> storage::Result<()> {
        self.inner.restore(records)
    }

    fn size_bytes(&self) -> u64 {
        self.inner.size_bytes()
    }

    fn defragment(&self) -> storage::Result<()> {
        self.started.send(()).unwrap();
        self.release.lock().recv().unwrap();
        self.inner.defragment()
    }
}

// Proves a defragmentation holds writes back but not reads: while it runs, a range is
// served, and a batch waits until it is done (a write made during the rewrite would be
// lost with the old file).
#[test]
fn defragmenting_holds_writes_back_and_lets_reads_go_on() {
    let (started_tx, started) = std::sync::mpsc::sync_channel(1);
    let (release, release_rx) = std::sync::mpsc::sync_channel(1);
    let store = std::sync::Arc::new(
        Store::open(GatedDefragment {
            inner: MemKvStore::new(),
            started: started_tx,
            release: parking_lot::Mutex::new(release_rx),
        })
        .unwrap(),
    );
    let put = |key: &str| {
        Command::Put(PutRequest {
            key: key.into(),
            value: b"v".to_vec(),
            ..Default::default()
        })
    };
    let first = put("a");
    let entry = |index, command| ApplyEntry {
        index,
        term: 1,
        command: Some(command),
    };
    store.apply_batch(&[entry(1, &first)], true).unwrap();

    let defragmenting = std::thread::spawn({
        let store = store.clone();
        move || store.defragment()
    });
    started.recv().unwrap();
    let writing = std::thread::spawn({
        let store = store.clone();
        move || {
            let second = put("b");
            let entry = ApplyEntry {
                index: 2,
                term: 1,
                command: Some(&second),
            };
            store.apply_batch(&[entry], true).unwrap();
        }
    });
    let read = |key: &str| {
        store
            .range(&RangeRequest {
                key: key.into(),
                ..Default::default()
            })
            .unwrap()
            .0
            .count
    };
    assert_eq!(read("a"), 1, "a read during the defragmentation");
    std::thread::sleep(std::time::Duration::from_millis(100));
    assert!(!writing.is_finished(), "a write went on during the rewrite");
    assert_eq!(read("b"), 0);
    release.send(()).unwrap();
    defragmenting.join().unwrap().unwrap();
    writing.join().unwrap();
    assert_eq!(read("b"), 1);
}

// Proves a storage failure met while executing a command stops the member: the batch fails
// as a whole and nothing of it is written, instead of the command failing alone while the
// member goes on at revisions no other member has.
#[test]
fn a_storage_failure_inside_a_command_fails_the_batch() {
    let fail = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let kv = FailingReads {
        inner: std::sync::Arc::new(MemKvStore::new()),
        fail: fail.clone(),
    };
    let store = Store::open(kv.clone()).unwrap();
    let put = |key: &str, value: &str| {
        Command::Put(PutRequest {
            key: key.into(),
            value: value.into(),
            ..Default::default()
        })
    };
    let first = put("k", "v1");
    let entry = |index, command| ApplyEntry {
        index,
        term: 1,
        command: Some(command),
    };
    store.apply_batch(&[entry(1, &first)], true).unwrap();
    // A put that returns the previous value must read it.
    let second = Command::Put(PutRequest {
        key: b"k".to_vec(),
        value: b"v2".to_vec(),
        prev_kv: true,
        ..Default::default()
    });
    fail.store(true, std::sync::atomic::Ordering::Relaxed);
    let failed = store.apply_batch(&[entry(2, &second)], true);
    assert!(
        matches!(failed, Err(MvccError::Storage(_))),
        "a read failure was answered as the command's own error: {failed:?}"
    );
    fail.store(false, std::sync::atomic::Ordering::Relaxed);
    let reopened = Store::open(kv).unwrap();
    assert_eq!(
        reopened.current_revision(),
        2,
        "part of the failed batch was written"
    );
}

// Proves the applied index advances by exactly one: an entry applied twice, or one that
// skips an index, stops the member instead of being applied.
#[test]
fn entries_must_follow_the_applied_index_one_by_one() {
    for bad in [1, 3] {
        let mut h = Harness::new();
        h.apply(Command::Put(PutRequest {
            key: b"k".to_vec(),
            ..Default::default()
        }));
        let command = Command::Put(PutRequest {
            key: b"k".to_vec(),
            ..Default::default()
        });
        let entry = ApplyEntry {
            index: bad,
            term: 1,
            command: Some(&command),
        };
        let applied = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            h.store.apply_batch(&[entry], false)
        }));
        assert!(applied.is_err(), "entry {bad} applied after entry 1");
    }
}

/// A command of the batching test: every kind the log carries, some of which fail.
fn batch_command_strategy() -> impl Strategy<Value = Command> {
    let key = (0u8..5).prop_map(|k| vec![b'a' + k]);
    let lease = prop_oneof![Just(0i64), 1i64..4];
    prop_oneof![
        4 => (key.clone(), any::<u8>(), lease.clone()).prop_map(|(key, v, lease)| {
            Command::Put(PutRequest { key, value: vec![v], lease, prev_kv: true, ..Default::default() })
        }),
        // Fails when the key does not exist: an etcd error in the middle of a batch.
        1 => key.clone().prop_map(|key| {
            Command::Put(PutRequest { key, ignore_value: true, ..Default::default() })
        }),
        1 => (key.clone(), 0u8..3).prop_map(|(key, n)| {
            let range_end = if n == 0 { Vec::new() } else { vec![key[0] + n] };
            Command::DeleteRange(DeleteRangeRequest { key, range_end, prev_kv: true })
        }),
        2 => (key.clone(), any::<u8>(), 0i64..3, lease).prop_map(|(key, v, version, lease)| {
            let put = |value: u8| RequestOp::Put(PutRequest { key: key.clone(), value: vec![value], lease, ..Default::default() });
            Command::Txn(TxnRequest {
                compare: vec![Compare { result: CompareResult::Equal, target: CompareTarget::Version(version), key: key.clone(), range_end: vec![] }],
                success: vec![put(v), RequestOp::Range(RangeRequest { key: key.clone(), ..Default::default() })],
                failure: vec![RequestOp::DeleteRange(DeleteRangeRequest { key: key.clone(), ..Default::default() }), put(v.wrapping_add(1))],
            })
        }),
        1 => (1i64..4, 1i64..100).prop_map(|(id, ttl)| Command::LeaseGrant(LeaseGrantRequest { id, ttl })),
        1 => (1i64..4).prop_map(Command::LeaseRevoke),
        1 => (1i64..4, 0i64..50).prop_map(|(id, remaining_ttl)| Command::LeaseCheckpoint(vec![LeaseCheckpoint { id, remaining_ttl }])),
        1 => (0i64..30).prop_map(|revision| Command::Compact(CompactRequest { revision, physical: false })),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    // Proves that batching changes nothing: the same commands (puts, txns that write,
    // deletes, leases, checkpoints, compactions, and commands that fail in the middle) give
    // the same results, events, revisions, leases and stored bytes whether each is applied
    // in a batch of its own or many share one batch, as the apply task merges them.
    #[test]
    fn batches_apply_as_one_command_at_a_time(
        commands in proptest::collection::vec(batch_command_strategy(), 1..80),
        cuts in proptest::collection::vec(1usize..25, 1..20),
    ) {
        let mut single = Harness::new();
        let mut one_by_one = Vec::new();
        for command in &commands {
            one_by_one.push(single.apply_with_events(command.clone()));
        }

        let batched = Harness::new();
        let mut results = Vec::new();
        let mut events = Vec::new();
        let mut next = 0;
        let mut index = 0;
        for cut in cuts.iter().cycle() {
            if next >= commands.len() {
                break;
            }
            let end = (next + cut).min(commands.len());
            let entries: Vec<ApplyEntry<'_>> = commands[next..end]
                .iter()
                .map(|command| {
                    index += 1;
                    ApplyEntry { index, term: 1, command: Some(command) }
                })
                .collect();
            let (applied, made) = batched
                .store
                .apply_batch_with_events(&entries, false, EventsWanted::WithPrevKv)
                .unwrap();
            results.extend(applied);
            events.extend(made);
            next = end;
        }
        let expected_results: Vec<Applied> = one_by_one.iter().map(|(a, _)| a.clone()).collect();
        let expected_events: Vec<Event> = one_by_one.into_iter().flat_map(|(_, e)| e).collect();
        prop_assert_eq!(results, expected_results);
        prop_assert_eq!(events, expected_events);
        prop_assert_eq!(batched.store.current_revision(), single.store.current_revision());
        prop_assert_eq!(batched.store.leases(), single.store.leases());
        prop_assert_eq!(batched.store.hash_kv(0).unwrap(), single.store.hash_kv(0).unwrap());
        prop_assert_eq!(batched.store.bytes_in_use(), single.store.bytes_in_use());
        let reopened = Store::open(batched.kv.clone()).unwrap();
        prop_assert_eq!(reopened.leases(), single.store.leases());
        let all = RangeRequest { key: vec![0], range_end: vec![0], ..Default::default() };
        prop_assert_eq!(reopened.range(&all).unwrap(), single.store.range(&all).unwrap());
    }
}
