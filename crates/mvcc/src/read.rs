//! Reads: values from a batch's pending writes or from storage ([`ValueSource`]), range
//! reads at a revision ([`range_at`]), and the read-only [`View`] of one revision that a
//! txn's compares and checks see and that serves read-only txns.

use std::collections::HashMap;

use storage::{KvSnapshot, Table};

use crate::encoding::{decode_record, rev_key};
use crate::index::{check_lease, Index, Rev, Version};
use crate::types::*;
use crate::MvccError;

/// Reads values: from what this batch wrote, else from storage.
pub(crate) struct ValueSource<'a> {
    pub(crate) pending: &'a HashMap<Rev, Vec<u8>>,
    pub(crate) snapshot: &'a dyn KvSnapshot,
}

impl ValueSource<'_> {
    fn value(&self, rev: Rev) -> Result<Vec<u8>, MvccError> {
        if let Some(value) = self.pending.get(&rev) {
            return Ok(value.clone());
        }
        let bytes = self
            .snapshot
            .get(Table::Revisions, &rev_key(rev))?
            .ok_or_else(|| {
                MvccError::Storage(format!("revision {rev:?} is indexed but not stored"))
            })?;
        Ok(decode_record(rev, &bytes)?.2)
    }

    pub(crate) fn key_value(
        &self,
        key: &[u8],
        version: &Version,
        with_value: bool,
    ) -> Result<KeyValue, MvccError> {
        Ok(KeyValue {
            key: key.to_vec(),
            create_revision: version.create_revision,
            mod_revision: version.rev.0,
            version: version.version,
            value: if with_value {
                self.value(version.rev)?
            } else {
                Vec::new()
            },
            lease: version.lease,
        })
    }
}

/// Serves a range from `index` at revision `at` (`current` is the header revision).
pub(crate) fn range_at(
    index: &Index,
    values: &ValueSource<'_>,
    req: &RangeRequest,
    current: i64,
) -> Result<RangeResponse, MvccError> {
    let at = if req.revision <= 0 {
        current
    } else {
        req.revision
    };
    if at > current {
        return Err(MvccError::FutureRevision);
    }
    if at < index.compacted {
        return Err(MvccError::Compacted);
    }
    let mut live = index.live_iter(&req.key, &req.range_end, at);
    // As etcd (server/etcdserver/txn/range.go): `count` is every live key in the range at
    // that revision, before filters and limit.
    if req.count_only {
        return Ok(RangeResponse {
            revision: current,
            kvs: Vec::new(),
            more: false,
            count: live.count() as i64,
        });
    }
    let filters = req.max_mod_revision != 0
        || req.min_mod_revision != 0
        || req.max_create_revision != 0
        || req.min_create_revision != 0;
    let limit = usize::try_from(req.limit).unwrap_or(0);
    // etcd (server/etcdserver/txn/range.go) reads everything when a sort order or a filter is
    // given, and otherwise only `limit + 1` keys in key order, which it then sorts: a request
    // with no sort order but a non-key sort target sorts just that first page. Clients see
    // the difference, so it is kept. Only what is read is held: the rest of the range is
    // counted as it is walked, never collected.
    let fetch = if req.sort_order != SortOrder::None || filters || limit == 0 {
        usize::MAX
    } else {
        limit + 1
    };
    let first: Vec<(&Vec<u8>, Version)> = live.by_ref().take(fetch).collect();
    let count = (first.len() + live.count()) as i64;
    let filtered = first.into_iter().filter(|(_, v)| {
        (req.max_mod_revision == 0 || v.rev.0 <= req.max_mod_revision)
            && (req.min_mod_revision == 0 || v.rev.0 >= req.min_mod_revision)
            && (req.max_create_revision == 0 || v.create_revision <= req.max_create_revision)
            && (req.min_create_revision == 0 || v.create_revision >= req.min_create_revision)
    });
    let sort_order = match (req.sort_order, req.sort_target) {
        (SortOrder::None, SortTarget::Key) => SortOrder::None,
        (SortOrder::None, _) => SortOrder::Ascend,
        (order, _) => order,
    };
    let needs_value =
        !req.keys_only || (sort_order != SortOrder::None && req.sort_target == SortTarget::Value);
    let mut kvs = Vec::new();
    for (key, version) in filtered {
        kvs.push(values.key_value(key, &version, needs_value)?);
    }
    // Stable sorts, the descending one by a reversed comparison: equal elements stay in key
    // order, as etcd's insertion sort leaves them for the small results this matters for.
    let ordering = |a: &KeyValue, b: &KeyValue| match req.sort_target {
        SortTarget::Key => a.key.cmp(&b.key),
        SortTarget::Version => a.version.cmp(&b.version),
        SortTarget::Create => a.create_revision.cmp(&b.create_revision),
        SortTarget::Mod => a.mod_revision.cmp(&b.mod_revision),
        SortTarget::Value => a.value.cmp(&b.value),
    };
    match sort_order {
        SortOrder::None => {}
        SortOrder::Ascend => kvs.sort_by(ordering),
        SortOrder::Descend => kvs.sort_by(|a, b| ordering(b, a)),
    }
    let mut more = false;
    if limit > 0 && kvs.len() > limit {
        kvs.truncate(limit);
        more = true;
    }
    if req.keys_only {
        kvs.iter_mut().for_each(|kv| kv.value.clear());
    }
    Ok(RangeResponse {
        revision: current,
        kvs,
        more,
        count,
    })
}

/// A read-only view of the state at one revision: what a txn's compares and checks see, and
/// all a read-only txn needs.
pub(crate) struct View<'a> {
    pub(crate) index: &'a Index,
    pub(crate) values: ValueSource<'a>,
    pub(crate) at: i64,
}

impl View<'_> {
    /// The path `req` takes (see [`View::compare_path`]), after checking its puts, then its
    /// ranges, as etcd does before running anything.
    pub(crate) fn checked_path(&self, req: &TxnRequest) -> Result<Vec<bool>, MvccError> {
        let mut path = Vec::new();
        self.compare_path(req, &mut path)?;
        self.check_path(req, &path, &mut 0, &mut |op| match op {
            RequestOp::Put(put) => self.check_put(put),
            _ => Ok(()),
        })?;
        self.check_path(req, &path, &mut 0, &mut |op| match op {
            RequestOp::Range(range) => self.check_range(range),
            _ => Ok(()),
        })?;
        Ok(path)
    }

    /// Runs a read-only txn along `path`.
    pub(crate) fn read_path(
        &self,
        req: &TxnRequest,
        path: &[bool],
        at: &mut usize,
    ) -> Result<TxnResponse, MvccError> {
        let succeeded = path[*at];
        *at += 1;
        let ops = branch(req, succeeded);
        let mut responses = Vec::with_capacity(ops.len());
        for op in ops {
            responses.push(match op {
                RequestOp::Range(req) => {
                    ResponseOp::Range(range_at(self.index, &self.values, req, self.at)?)
                }
                RequestOp::Txn(nested) => ResponseOp::Txn(self.read_path(nested, path, at)?),
                RequestOp::Put(_) | RequestOp::DeleteRange(_) => {
                    return Err(MvccError::Storage("a write in a read-only txn".into()))
                }
            });
        }
        Ok(TxnResponse {
            succeeded,
            responses,
        })
    }

    fn compare(&self, compare: &Compare) -> Result<bool, MvccError> {
        let matches = |kv: &KeyValue| -> bool {
            let ordering = match &compare.target {
                CompareTarget::Version(v) => kv.version.cmp(v),
                CompareTarget::Create(v) => kv.create_revision.cmp(v),
                CompareTarget::Mod(v) => kv.mod_revision.cmp(v),
                CompareTarget::Value(v) => kv.value.as_slice().cmp(v.as_slice()),
                CompareTarget::Lease(v) => kv.lease.cmp(v),
            };
            match compare.result {
                CompareResult::Equal => ordering.is_eq(),
                CompareResult::Greater => ordering.is_gt(),
                CompareResult::Less => ordering.is_lt(),
                CompareResult::NotEqual => ordering.is_ne(),
            }
        };
        let with_value = matches!(compare.target, CompareTarget::Value(_));
        let live = self.index.live(&compare.key, &compare.range_end, self.at);
        if live.is_empty() {
            // As etcd's applyCompare: an absent key compares as an all-zero KeyValue,
            // except that a value comparison on it is false.
            return Ok(!with_value && matches(&KeyValue::default()));
        }
        for (key, version) in &live {
            if !matches(&self.values.key_value(key, version, with_value)?) {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Appends whether `req`'s compares hold, then the same for every nested txn of the
    /// branch that runs, depth first (etcd's `compareToPath`).
    fn compare_path(&self, req: &TxnRequest, path: &mut Vec<bool>) -> Result<(), MvccError> {
        let mut succeeded = true;
        for compare in &req.compare {
            if !self.compare(compare)? {
                succeeded = false;
                break;
            }
        }
        path.push(succeeded);
        for op in branch(req, succeeded) {
            if let RequestOp::Txn(nested) = op {
                self.compare_path(nested, path)?;
            }
        }
        Ok(())
    }

    /// Calls `check` on every non-txn operation of the path, in order (etcd's
    /// `checkRequests`). `at` is the position of `req`'s entry in `path`.
    fn check_path(
        &self,
        req: &TxnRequest,
        path: &[bool],
        at: &mut usize,
        check: &mut dyn FnMut(&RequestOp) -> Result<(), MvccError>,
    ) -> Result<(), MvccError> {
        let succeeded = path[*at];
        *at += 1;
        for op in branch(req, succeeded) {
            match op {
                RequestOp::Txn(nested) => self.check_path(nested, path, at, check)?,
                other => check(other)?,
            }
        }
        Ok(())
    }

    /// etcd's `checkPut`: what a put in a txn needs of the state before the txn.
    fn check_put(&self, req: &PutRequest) -> Result<(), MvccError> {
        if (req.ignore_value || req.ignore_lease)
            && self.index.live(&req.key, b"", self.at).is_empty()
        {
            return Err(MvccError::KeyNotFound);
        }
        check_lease(self.index, req.lease)
    }

    /// etcd's `checkRange`: a txn's range at a revision the store cannot serve fails the
    /// whole txn. Compared with the compaction revision as etcd does, so a negative revision
    /// is refused once anything was compacted.
    fn check_range(&self, req: &RangeRequest) -> Result<(), MvccError> {
        if req.revision == 0 {
            Ok(())
        } else if req.revision > self.index.current {
            Err(MvccError::FutureRevision)
        } else if req.revision < self.index.compacted {
            Err(MvccError::Compacted)
        } else {
            Ok(())
        }
    }
}

/// The operations of the branch of `req` that runs.
pub(crate) fn branch(req: &TxnRequest, succeeded: bool) -> &[RequestOp] {
    if succeeded {
        &req.success
    } else {
        &req.failure
    }
}
