//! The etcd data model over a [`storage::KvStore`]: revisions, keys, txn, compaction.
//!
//! Like etcd's bbolt backend, every version of every key is stored under its revision in
//! [`Table::Revisions`], and an index `key -> versions` is kept in memory and rebuilt from
//! storage at open. The index holds each version's metadata (revision, create revision,
//! version, lease, tombstone); values are read from storage.
//!
//! Revisions follow etcd exactly: a fresh store is at revision 1; every command that changes
//! something gets the next main revision, and its changes get sub-revisions 0, 1, ... in
//! order. Commands that change nothing, and commands that fail, leave the revision alone.
//!
//! Invariants:
//! - The applied index is written in the same storage batch as the data it describes.
//! - Readers never see an index entry whose value storage cannot serve: the index lock is
//!   held while a batch is committed to storage, and a reader opens its storage snapshot
//!   while holding the lock.
//! - One writer (the apply task); any number of readers.
//!
//! This crate reads no clock, draws no randomness, knows no protobuf and does IO only through
//! `KvStore`.

mod codec;
mod types;

use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;

use parking_lot::RwLock;
pub use types::*;

use storage::{KvSnapshot, KvStore, StorageError, Table, WriteOp};

/// Errors etcd returns from the data model. `api` maps each to etcd's code and message.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MvccError {
    /// `etcdserver: mvcc: required revision has been compacted`
    #[error("mvcc: required revision has been compacted")]
    Compacted,
    /// `etcdserver: mvcc: required revision is a future revision`
    #[error("mvcc: required revision is a future revision")]
    FutureRevision,
    /// `etcdserver: key not found` (ignore_value / ignore_lease on a missing key)
    #[error("key not found")]
    KeyNotFound,
    /// `etcdserver: requested lease not found`
    #[error("requested lease not found")]
    LeaseNotFound,
    /// `etcdserver: lease already exists`
    #[error("lease already exists")]
    LeaseExists,
    /// `etcdserver: too large lease TTL`
    #[error("too large lease TTL")]
    LeaseTtlTooLarge,
    /// `etcdserver: mvcc: database space exceeded`: the NOSPACE alarm is raised and the
    /// command would add data.
    #[error("mvcc: database space exceeded")]
    NoSpace,
    /// `etcdserver: corrupt cluster`: the CORRUPT alarm is raised and the command writes.
    #[error("corrupt cluster")]
    Corrupt,
    /// The storage engine failed or holds data that does not decode. Fail-stop for the
    /// applier.
    #[error("storage: {0}")]
    Storage(String),
}

impl From<StorageError> for MvccError {
    fn from(e: StorageError) -> Self {
        MvccError::Storage(e.to_string())
    }
}

/// Position of the state machine in the Raft log of its shard.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AppliedIndex {
    /// Index of the last applied entry.
    pub index: u64,
    /// Term of that entry.
    pub term: u64,
}

/// One committed log entry for [`Store::apply_batch`].
pub struct ApplyEntry<'a> {
    /// Log index of the entry.
    pub index: u64,
    /// Term of the entry.
    pub term: u64,
    /// The command, or `None` for entries that change nothing (empty entries, conf changes).
    pub command: Option<&'a Command>,
}

/// A main and sub revision: the position of one change.
type Rev = (i64, i64);

/// The metadata of one version of a key. The value lives in storage under `rev`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Version {
    rev: Rev,
    create_revision: i64,
    version: i64,
    lease: i64,
    tombstone: bool,
    /// Bytes its record occupies in storage (key and value of the `Revisions` entry).
    bytes: u32,
}

/// The longest lease TTL etcd grants, in seconds (`MaxLeaseTTL`).
pub const MAX_LEASE_TTL: i64 = 9_000_000_000;

const META_APPLIED_INDEX: &[u8] = b"applied_index";
const META_APPLIED_TERM: &[u8] = b"applied_term";
const META_CURRENT_REVISION: &[u8] = b"current_revision";
const META_COMPACT_REVISION: &[u8] = b"compact_revision";
/// Prefix of the active alarms in `Meta`: `alarm/` + member id (u64 BE) + alarm type code.
const META_ALARM_PREFIX: &[u8] = b"alarm/";
const RECORD_FORMAT_V1: u8 = 1;
/// The compaction revision of a store never compacted, as etcd's `compactMainRev`: it shows
/// in HashKV, lets a first compaction to revision 0 succeed, and makes a txn's range at
/// revision -1 valid until the first compaction.
const NEVER_COMPACTED: i64 = -1;

fn rev_key(rev: Rev) -> Vec<u8> {
    let mut key = Vec::with_capacity(16);
    key.extend_from_slice(&rev.0.to_be_bytes());
    key.extend_from_slice(&rev.1.to_be_bytes());
    key
}

fn decode_rev_key(key: &[u8]) -> Result<Rev, MvccError> {
    if key.len() != 16 {
        return Err(MvccError::Storage(format!(
            "revision key of {} bytes",
            key.len()
        )));
    }
    let main = i64::from_be_bytes(key[..8].try_into().expect("8 bytes"));
    let sub = i64::from_be_bytes(key[8..].try_into().expect("8 bytes"));
    Ok((main, sub))
}

/// A stored version: `[format][tombstone][key][create][version][lease][value]`.
fn encode_record(key: &[u8], version: &Version, value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(key.len() + value.len() + 34);
    out.push(RECORD_FORMAT_V1);
    out.push(u8::from(version.tombstone));
    let mut w = codec::W { b: &mut out };
    w.bytes(key);
    w.i64(version.create_revision);
    w.i64(version.version);
    w.i64(version.lease);
    w.bytes(value);
    out
}

/// What a record of `encoded` bytes occupies in storage, its revision key included.
fn record_bytes(encoded: usize) -> u32 {
    u32::try_from(encoded + 16).unwrap_or(u32::MAX)
}

fn decode_record(rev: Rev, bytes: &[u8]) -> Result<(Vec<u8>, Version, Vec<u8>), MvccError> {
    let mut r = codec::R { b: bytes };
    if r.u8()? != RECORD_FORMAT_V1 {
        return Err(MvccError::Storage(format!(
            "record at revision {rev:?}: unknown format"
        )));
    }
    let tombstone = r.u8()? != 0;
    let key = r.bytes()?;
    let version = Version {
        rev,
        create_revision: r.i64()?,
        version: r.i64()?,
        lease: r.i64()?,
        tombstone,
        bytes: record_bytes(bytes.len()),
    };
    let value = r.bytes()?;
    Ok((key, version, value))
}

/// The event that stored `version` of `key` with `value` stands for.
fn event(key: &[u8], version: &Version, value: Vec<u8>, prev_kv: Option<KeyValue>) -> Event {
    if version.tombstone {
        Event {
            kind: EventKind::Delete,
            kv: KeyValue {
                key: key.to_vec(),
                mod_revision: version.rev.0,
                ..KeyValue::default()
            },
            prev_kv,
        }
    } else {
        Event {
            kind: EventKind::Put,
            kv: KeyValue {
                key: key.to_vec(),
                create_revision: version.create_revision,
                mod_revision: version.rev.0,
                version: version.version,
                value,
                lease: version.lease,
            },
            prev_kv,
        }
    }
}

/// A lease's record in `Table::Leases`: key = id (i64 BE), value =
/// `[format][ttl][renewals]`, followed by `[remaining ttl]` when a checkpoint set one
/// (records written before checkpoints existed end after the renewals).
fn lease_key(id: LeaseId) -> Vec<u8> {
    id.to_be_bytes().to_vec()
}

fn encode_lease(lease: &LeaseEntry) -> Vec<u8> {
    let mut out = Vec::with_capacity(25);
    out.push(RECORD_FORMAT_V1);
    let mut w = codec::W { b: &mut out };
    w.i64(lease.ttl);
    w.i64(lease.renewals as i64);
    if lease.remaining_ttl != 0 {
        w.i64(lease.remaining_ttl);
    }
    out
}

fn decode_lease(key: &[u8], value: &[u8]) -> Result<(LeaseId, LeaseEntry), MvccError> {
    let malformed = || MvccError::Storage(format!("lease record {key:?} is malformed"));
    let id = i64::from_be_bytes(key.try_into().map_err(|_| malformed())?);
    let mut r = codec::R { b: value };
    if r.u8().map_err(|_| malformed())? != RECORD_FORMAT_V1 {
        return Err(malformed());
    }
    let ttl = r.i64().map_err(|_| malformed())?;
    let renewals = r.i64().map_err(|_| malformed())? as u64;
    let remaining_ttl = if r.b.is_empty() {
        0
    } else {
        r.i64().map_err(|_| malformed())?
    };
    if !r.b.is_empty() {
        return Err(malformed());
    }
    Ok((
        id,
        LeaseEntry {
            ttl,
            renewals,
            remaining_ttl,
            keys: std::collections::BTreeSet::new(),
        },
    ))
}

fn meta_i64(snapshot: &dyn KvSnapshot, name: &[u8]) -> Result<i64, MvccError> {
    meta_i64_or(snapshot, name, 0)
}

fn meta_i64_or(snapshot: &dyn KvSnapshot, name: &[u8], absent: i64) -> Result<i64, MvccError> {
    match snapshot.get(Table::Meta, name)? {
        None => Ok(absent),
        Some(bytes) => bytes
            .as_slice()
            .try_into()
            .map(i64::from_be_bytes)
            .map_err(|_| {
                MvccError::Storage(format!(
                    "meta {} is malformed",
                    String::from_utf8_lossy(name)
                ))
            }),
    }
}

/// etcd's range end for every key starting with `prefix`: the prefix with trailing 0xff
/// bytes dropped and its last byte incremented; `[0]` (every key from `prefix` on) when
/// nothing is left.
#[must_use]
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

fn alarm_key(alarm: &AlarmMember) -> Vec<u8> {
    let mut key = META_ALARM_PREFIX.to_vec();
    key.extend_from_slice(&alarm.member_id.to_be_bytes());
    key.push(codec::alarm_code(Some(alarm.alarm)));
    key
}

fn decode_alarm_key(key: &[u8]) -> Result<AlarmMember, MvccError> {
    let malformed = || MvccError::Storage(format!("alarm key {key:?} is malformed"));
    let rest = key
        .strip_prefix(META_ALARM_PREFIX)
        .filter(|rest| rest.len() == 9)
        .ok_or_else(malformed)?;
    let member_id = u64::from_be_bytes(rest[..8].try_into().expect("8 bytes"));
    let alarm = codec::alarm_from_code(rest[8])
        .ok()
        .flatten()
        .ok_or_else(malformed)?;
    Ok(AlarmMember { member_id, alarm })
}

fn put_meta(ops: &mut Vec<WriteOp>, name: &[u8], value: i64) {
    ops.push(WriteOp::Put {
        table: Table::Meta,
        key: name.to_vec(),
        value: value.to_be_bytes().to_vec(),
    });
}

/// Bounds of a key range for a `BTreeMap` lookup.
type KeyBounds<'a> = (Bound<&'a [u8]>, Bound<&'a [u8]>);

/// Map bounds for etcd's range. `None` when the range is empty.
fn bounds<'a>(start: &'a [u8], end: &'a [u8]) -> Option<KeyBounds<'a>> {
    if end.is_empty() {
        Some((Bound::Included(start), Bound::Included(start)))
    } else if end == [0] {
        Some((Bound::Included(start), Bound::Unbounded))
    } else if end <= start {
        None
    } else {
        Some((Bound::Included(start), Bound::Excluded(end)))
    }
}

/// A lease in the index: what is stored, and the keys attached (derived from the versions).
#[derive(Clone, Debug, Default)]
struct LeaseEntry {
    ttl: i64,
    renewals: u64,
    remaining_ttl: i64,
    keys: std::collections::BTreeSet<Vec<u8>>,
}

impl LeaseEntry {
    fn to_lease(&self, id: LeaseId) -> Lease {
        Lease {
            id,
            ttl: self.ttl,
            renewals: self.renewals,
            remaining_ttl: self.remaining_ttl,
            keys: self.keys.iter().cloned().collect(),
        }
    }
}

/// The in-memory index and the counters published with it.
#[derive(Default)]
struct Index {
    keys: BTreeMap<Vec<u8>, Vec<Version>>,
    current: i64,
    compacted: i64,
    applied: AppliedIndex,
    durable: AppliedIndex,
    /// Bytes of every stored record: the data's share of the database, which the backend
    /// quota is measured against.
    bytes: u64,
    /// The active alarms.
    alarms: std::collections::BTreeSet<AlarmMember>,
    /// The leases.
    leases: BTreeMap<LeaseId, LeaseEntry>,
}

impl Index {
    /// The version of `key` visible at revision `at` (tombstones included).
    fn version_at(&self, key: &[u8], at: i64) -> Option<&Version> {
        let versions = self.keys.get(key)?;
        let position = versions.partition_point(|v| v.rev.0 <= at);
        position.checked_sub(1).map(|i| &versions[i])
    }

    /// The live version of `key` just before revision `rev`, if it is retained.
    fn previous(&self, key: &[u8], rev: Rev) -> Option<Version> {
        let versions = self.keys.get(key)?;
        let position = versions.partition_point(|v| v.rev < rev);
        let previous = versions[..position].last()?;
        (!previous.tombstone).then_some(*previous)
    }

    /// Live keys in the range at revision `at`, in key order.
    fn live(&self, start: &[u8], end: &[u8], at: i64) -> Vec<(&Vec<u8>, Version)> {
        let Some(range) = bounds(start, end) else {
            return Vec::new();
        };
        self.keys
            .range::<[u8], _>(range)
            .filter_map(|(key, versions)| {
                let position = versions.partition_point(|v| v.rev.0 <= at);
                let version = versions[..position].last()?;
                (!version.tombstone).then_some((key, *version))
            })
            .collect()
    }
}

/// Reads values: from what this batch wrote, else from storage.
struct ValueSource<'a> {
    pending: &'a HashMap<Rev, Vec<u8>>,
    snapshot: &'a dyn KvSnapshot,
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

    fn key_value(
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
fn range_at(
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
    let live = index.live(&req.key, &req.range_end, at);
    // As etcd (server/etcdserver/txn/range.go): `count` is every live key in the range at
    // that revision, before filters and limit.
    let count = live.len() as i64;
    if req.count_only {
        return Ok(RangeResponse {
            revision: current,
            kvs: Vec::new(),
            more: false,
            count,
        });
    }
    let filters = req.max_mod_revision != 0
        || req.min_mod_revision != 0
        || req.max_create_revision != 0
        || req.min_create_revision != 0;
    let filtered = live.into_iter().filter(|(_, v)| {
        (req.max_mod_revision == 0 || v.rev.0 <= req.max_mod_revision)
            && (req.min_mod_revision == 0 || v.rev.0 >= req.min_mod_revision)
            && (req.max_create_revision == 0 || v.create_revision <= req.max_create_revision)
            && (req.min_create_revision == 0 || v.create_revision >= req.min_create_revision)
    });
    let limit = usize::try_from(req.limit).unwrap_or(0);
    // etcd (server/etcdserver/txn/range.go) reads everything when a sort order or a filter is
    // given, and otherwise only `limit + 1` keys in key order, which it then sorts: a request
    // with no sort order but a non-key sort target sorts just that first page. Clients see
    // the difference, so it is kept.
    let fetch = if req.sort_order != SortOrder::None || filters || limit == 0 {
        usize::MAX
    } else {
        limit + 1
    };
    let sort_order = match (req.sort_order, req.sort_target) {
        (SortOrder::None, SortTarget::Key) => SortOrder::None,
        (SortOrder::None, _) => SortOrder::Ascend,
        (order, _) => order,
    };
    let needs_value =
        !req.keys_only || (sort_order != SortOrder::None && req.sort_target == SortTarget::Value);
    let mut kvs = Vec::new();
    for (key, version) in filtered.take(fetch) {
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
struct View<'a> {
    index: &'a Index,
    values: ValueSource<'a>,
    at: i64,
}

impl View<'_> {
    /// The path `req` takes (see [`View::compare_path`]), after checking its puts, then its
    /// ranges, as etcd does before running anything.
    fn checked_path(&self, req: &TxnRequest) -> Result<Vec<bool>, MvccError> {
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
    fn read_path(
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

/// One command's execution against the index: changes are applied to the index as they are
/// made (so later ops of a txn see them) and undone if the command fails.
struct Execution<'a> {
    index: &'a mut Index,
    snapshot: &'a dyn KvSnapshot,
    pending: &'a mut HashMap<Rev, Vec<u8>>,
    ops: Vec<WriteOp>,
    main: i64,
    sub: i64,
    /// Keys touched, with their number of versions before: the undo log.
    touched: Vec<(Vec<u8>, usize)>,
    /// Which events to report, and those of this command so far.
    wanted: EventsWanted,
    events: Vec<Event>,
}

impl Execution<'_> {
    fn values(&self) -> ValueSource<'_> {
        ValueSource {
            pending: self.pending,
            snapshot: self.snapshot,
        }
    }

    fn view(&self) -> View<'_> {
        View {
            index: self.index,
            values: self.values(),
            at: self.read_revision(),
        }
    }

    /// The revision reads inside the command see: its own, once it has written.
    fn read_revision(&self) -> i64 {
        if self.sub > 0 {
            self.main
        } else {
            self.index.current
        }
    }

    fn record(
        &mut self,
        key: &[u8],
        mut version: Version,
        value: Vec<u8>,
    ) -> Result<(), MvccError> {
        if self.wanted != EventsWanted::None {
            self.record_event(key, &version, &value)?;
        }
        let record = encode_record(key, &version, &value);
        version.bytes = record_bytes(record.len());
        self.index.bytes += u64::from(version.bytes);
        let versions = self.index.keys.entry(key.to_vec()).or_default();
        self.touched.push((key.to_vec(), versions.len()));
        versions.push(version);
        self.ops.push(WriteOp::Put {
            table: Table::Revisions,
            key: rev_key(version.rev),
            value: record,
        });
        self.pending.insert(version.rev, value);
        self.sub += 1;
        Ok(())
    }

    /// Records the deletion of `key` (a tombstone) at the next sub-revision.
    fn record_deletion(&mut self, key: &[u8]) -> Result<(), MvccError> {
        let tombstone = Version {
            rev: (self.main, self.sub),
            create_revision: 0,
            version: 0,
            lease: 0,
            tombstone: true,
            bytes: 0,
        };
        self.record(key, tombstone, Vec::new())
    }

    /// The event `version` of `key` makes, before it is recorded.
    fn record_event(
        &mut self,
        key: &[u8],
        version: &Version,
        value: &[u8],
    ) -> Result<(), MvccError> {
        let prev_kv = match self.wanted {
            EventsWanted::WithPrevKv => match self.live_version(key) {
                Some(previous) => Some(self.values().key_value(key, &previous, true)?),
                None => None,
            },
            _ => None,
        };
        self.events
            .push(event(key, version, value.to_vec(), prev_kv));
        Ok(())
    }

    fn undo(&mut self) {
        for (key, len) in self.touched.drain(..).rev() {
            if let Some(versions) = self.index.keys.get_mut(&key) {
                for undone in versions.drain(len..) {
                    self.index.bytes -= u64::from(undone.bytes);
                }
                if versions.is_empty() {
                    self.index.keys.remove(&key);
                }
            }
        }
        for op in &self.ops {
            if let WriteOp::Put {
                table: Table::Revisions,
                key,
                ..
            } = op
            {
                if let Ok(rev) = decode_rev_key(key) {
                    self.pending.remove(&rev);
                }
            }
        }
        self.ops.clear();
        self.events.clear();
        self.sub = 0;
    }

    fn run(&mut self, command: &Command) -> Result<CommandResponse, MvccError> {
        match command {
            // etcd checks a lone put's lease before the key (`ignore_*` on a missing key).
            Command::Put(req) => check_lease(self.index, req.lease)
                .and_then(|()| self.put(req))
                .map(CommandResponse::Put),
            Command::DeleteRange(req) => self.delete(req).map(CommandResponse::DeleteRange),
            Command::Txn(req) => self.txn(req).map(CommandResponse::Txn),
            Command::Compact(req) => self
                .compact(req.revision)
                .map(|()| CommandResponse::Compact),
            Command::Alarm(req) => Ok(CommandResponse::Alarm(self.alarm(req))),
            Command::LeaseGrant(req) => self.grant(*req).map(CommandResponse::LeaseGrant),
            Command::LeaseRevoke(id) => self.revoke(*id).map(|()| CommandResponse::LeaseRevoke),
            Command::LeaseKeepAlive(id) => self.renew(*id).map(CommandResponse::LeaseKeepAlive),
            Command::LeaseExpire(req) => {
                let renewed = self
                    .index
                    .leases
                    .get(&req.id)
                    .is_none_or(|lease| lease.renewals != req.renewals);
                if renewed {
                    return Ok(CommandResponse::LeaseExpire(false));
                }
                self.revoke(req.id)
                    .map(|()| CommandResponse::LeaseExpire(true))
            }
            Command::LeaseCheckpoint(checkpoints) => {
                for checkpoint in checkpoints {
                    self.checkpoint(*checkpoint);
                }
                Ok(CommandResponse::LeaseCheckpoint)
            }
        }
    }

    /// Records the time a lease has left (etcd ignores checkpoints of unknown leases).
    fn checkpoint(&mut self, checkpoint: LeaseCheckpoint) {
        let Some(lease) = self.index.leases.get_mut(&checkpoint.id) else {
            return;
        };
        if lease.remaining_ttl == checkpoint.remaining_ttl {
            return;
        }
        lease.remaining_ttl = checkpoint.remaining_ttl;
        let record = encode_lease(lease);
        self.ops.push(WriteOp::Put {
            table: Table::Leases,
            key: lease_key(checkpoint.id),
            value: record,
        });
    }

    /// etcd's lessor `Grant`: a new lease; an id in use is refused.
    fn grant(&mut self, req: LeaseGrantRequest) -> Result<LeaseGrantRequest, MvccError> {
        if req.ttl > MAX_LEASE_TTL {
            return Err(MvccError::LeaseTtlTooLarge);
        }
        if self.index.leases.contains_key(&req.id) {
            return Err(MvccError::LeaseExists);
        }
        let lease = LeaseEntry {
            ttl: req.ttl,
            ..LeaseEntry::default()
        };
        self.ops.push(WriteOp::Put {
            table: Table::Leases,
            key: lease_key(req.id),
            value: encode_lease(&lease),
        });
        self.index.leases.insert(req.id, lease);
        Ok(req)
    }

    /// Deletes every key attached to the lease (in key order, at one revision, as etcd's
    /// revoke), then the lease.
    fn revoke(&mut self, id: LeaseId) -> Result<(), MvccError> {
        let lease = self
            .index
            .leases
            .remove(&id)
            .ok_or(MvccError::LeaseNotFound)?;
        for key in &lease.keys {
            if self.live_version(key).is_some() {
                self.record_deletion(key)?;
            }
        }
        self.ops.push(WriteOp::Delete {
            table: Table::Leases,
            key: lease_key(id),
        });
        Ok(())
    }

    /// A keepalive: counts the renewal; returns the granted TTL.
    fn renew(&mut self, id: LeaseId) -> Result<i64, MvccError> {
        let lease = self
            .index
            .leases
            .get_mut(&id)
            .ok_or(MvccError::LeaseNotFound)?;
        lease.renewals += 1;
        lease.remaining_ttl = 0;
        let (ttl, record) = (lease.ttl, encode_lease(lease));
        self.ops.push(WriteOp::Put {
            table: Table::Leases,
            key: lease_key(id),
            value: record,
        });
        Ok(ttl)
    }

    /// After a command succeeded: moves every key it changed from the lease of its previous
    /// live version (if any) to the lease of its new one (if any).
    fn attach_touched(&mut self) {
        let mut done = std::collections::BTreeSet::new();
        for (key, before) in std::mem::take(&mut self.touched) {
            if !done.insert(key.clone()) {
                continue;
            }
            let Some(versions) = self.index.keys.get(&key) else {
                continue;
            };
            let lease_of = |v: Option<&Version>| v.filter(|v| !v.tombstone).map_or(0, |v| v.lease);
            let old = lease_of(before.checked_sub(1).map(|i| &versions[i]));
            let new = lease_of(versions.last());
            if old == new {
                continue;
            }
            if let Some(lease) = self.index.leases.get_mut(&old) {
                lease.keys.remove(&key);
            }
            if let Some(lease) = self.index.leases.get_mut(&new) {
                lease.keys.insert(key);
            }
        }
    }

    /// etcd's alarm apply: `Get` lists the alarms of a type (all for `None`); `Activate`
    /// returns the alarm, new or already active; `Deactivate` returns it only if it was
    /// active. Both do nothing for `None`.
    fn alarm(&mut self, req: &AlarmRequest) -> Vec<AlarmMember> {
        let alarms = &mut self.index.alarms;
        let Some(alarm) = req.alarm else {
            return match req.action {
                AlarmAction::Get => alarms.iter().copied().collect(),
                AlarmAction::Activate | AlarmAction::Deactivate => Vec::new(),
            };
        };
        let member = AlarmMember {
            member_id: req.member_id,
            alarm,
        };
        match req.action {
            AlarmAction::Get => alarms
                .iter()
                .filter(|a| a.alarm == alarm)
                .copied()
                .collect(),
            AlarmAction::Activate => {
                if alarms.insert(member) {
                    self.ops.push(WriteOp::Put {
                        table: Table::Meta,
                        key: alarm_key(&member),
                        value: Vec::new(),
                    });
                }
                vec![member]
            }
            AlarmAction::Deactivate => {
                if !alarms.remove(&member) {
                    return Vec::new();
                }
                self.ops.push(WriteOp::Delete {
                    table: Table::Meta,
                    key: alarm_key(&member),
                });
                vec![member]
            }
        }
    }

    fn live_version(&self, key: &[u8]) -> Option<Version> {
        self.index
            .version_at(key, i64::MAX)
            .filter(|v| !v.tombstone)
            .copied()
    }

    fn put(&mut self, req: &PutRequest) -> Result<PutResponse, MvccError> {
        let previous = self.live_version(&req.key);
        let previous_kv = match &previous {
            Some(v) if req.prev_kv || req.ignore_value => {
                Some(self.values().key_value(&req.key, v, true)?)
            }
            Some(v) => Some(self.values().key_value(&req.key, v, false)?),
            None => None,
        };
        if (req.ignore_value || req.ignore_lease) && previous.is_none() {
            return Err(MvccError::KeyNotFound);
        }
        let value = if req.ignore_value {
            previous_kv
                .as_ref()
                .map(|kv| kv.value.clone())
                .unwrap_or_default()
        } else {
            req.value.clone()
        };
        let lease = match (&previous, req.ignore_lease) {
            (Some(v), true) => v.lease,
            _ => req.lease,
        };
        if !req.ignore_lease {
            check_lease(self.index, lease)?;
        }
        let version = Version {
            rev: (self.main, self.sub),
            create_revision: previous.map_or(self.main, |v| v.create_revision),
            version: previous.map_or(1, |v| v.version + 1),
            lease,
            tombstone: false,
            bytes: 0,
        };
        self.record(&req.key, version, value)?;
        Ok(PutResponse {
            revision: self.main,
            prev_kv: if req.prev_kv { previous_kv } else { None },
        })
    }

    fn delete(&mut self, req: &DeleteRangeRequest) -> Result<DeleteRangeResponse, MvccError> {
        let live: Vec<(Vec<u8>, Version)> = self
            .index
            .live(&req.key, &req.range_end, i64::MAX)
            .into_iter()
            .map(|(k, v)| (k.clone(), v))
            .collect();
        let mut prev_kvs = Vec::new();
        for (key, version) in &live {
            if req.prev_kv {
                prev_kvs.push(self.values().key_value(key, version, true)?);
            }
            self.record_deletion(key)?;
        }
        Ok(DeleteRangeResponse {
            revision: self.read_revision(),
            deleted: live.len() as i64,
            prev_kvs,
        })
    }

    /// A txn as etcd applies it (server/etcdserver/txn/txn.go): first every compare on the
    /// path taken, nested txns' included, is evaluated against the state before the txn;
    /// then the puts on that path are checked, then the ranges; only then do the operations
    /// run. So a nested compare does not see its parent's writes, and which error a bad txn
    /// gets follows that order.
    fn txn(&mut self, req: &TxnRequest) -> Result<TxnResponse, MvccError> {
        let view = self.view();
        let path = view.checked_path(req)?;
        self.run_path(req, &path, &mut 0)
    }

    fn run_path(
        &mut self,
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
                    let current = self.read_revision();
                    ResponseOp::Range(range_at(self.index, &self.values(), req, current)?)
                }
                RequestOp::Put(req) => ResponseOp::Put(self.put(req)?),
                RequestOp::DeleteRange(req) => ResponseOp::DeleteRange(self.delete(req)?),
                RequestOp::Txn(nested) => ResponseOp::Txn(self.run_path(nested, path, at)?),
            });
        }
        Ok(TxnResponse {
            succeeded,
            responses,
        })
    }

    fn compact(&mut self, revision: i64) -> Result<(), MvccError> {
        if revision <= self.index.compacted {
            return Err(MvccError::Compacted);
        }
        if revision > self.index.current {
            return Err(MvccError::FutureRevision);
        }
        let mut emptied = Vec::new();
        for (key, versions) in &mut self.index.keys {
            // Keep the newest version at or below `revision` unless it is a tombstone, and
            // everything after it.
            let position = versions.partition_point(|v| v.rev.0 <= revision);
            if position == 0 {
                continue;
            }
            let keep_from = if versions[position - 1].tombstone {
                position
            } else {
                position - 1
            };
            for dead in versions.drain(..keep_from) {
                self.index.bytes -= u64::from(dead.bytes);
                self.ops.push(WriteOp::Delete {
                    table: Table::Revisions,
                    key: rev_key(dead.rev),
                });
            }
            if versions.is_empty() {
                emptied.push(key.clone());
            }
        }
        for key in emptied {
            self.index.keys.remove(&key);
        }
        self.index.compacted = revision;
        put_meta(&mut self.ops, META_COMPACT_REVISION, revision);
        Ok(())
    }
}

/// The error the active alarms answer `command` with, as etcd's corrupt and capped
/// appliers: CORRUPT refuses every write; NOSPACE refuses what adds data, a put or a txn
/// with a put at its top level (what etcd's quota counts, so a nested put passes there too).
/// Read-only txns are reads and pass, as they bypass etcd's applier.
fn refused_by_alarms(
    alarms: &std::collections::BTreeSet<AlarmMember>,
    command: &Command,
) -> Option<MvccError> {
    let active = |alarm: AlarmType| alarms.iter().any(|a| a.alarm == alarm);
    if active(AlarmType::Corrupt) {
        let writes = match command {
            Command::Put(_)
            | Command::DeleteRange(_)
            | Command::Compact(_)
            | Command::LeaseGrant(_)
            | Command::LeaseRevoke(_)
            | Command::LeaseExpire(_) => true,
            Command::Txn(txn) => !txn.is_read_only(),
            Command::Alarm(_) | Command::LeaseKeepAlive(_) | Command::LeaseCheckpoint(_) => false,
        };
        return writes.then_some(MvccError::Corrupt);
    }
    if active(AlarmType::NoSpace) {
        let adds = match command {
            Command::Put(_) | Command::LeaseGrant(_) => true,
            Command::Txn(txn) => txn
                .success
                .iter()
                .chain(&txn.failure)
                .any(|op| matches!(op, RequestOp::Put(_))),
            _ => false,
        };
        return adds.then_some(MvccError::NoSpace);
    }
    None
}

/// The operations of the branch of `req` that runs.
fn branch(req: &TxnRequest, succeeded: bool) -> &[RequestOp] {
    if succeeded {
        &req.success
    } else {
        &req.failure
    }
}

/// Whether a put may attach `lease`: 0 (none) or a lease that exists.
fn check_lease(index: &Index, lease: LeaseId) -> Result<(), MvccError> {
    if lease == 0 || index.leases.contains_key(&lease) {
        Ok(())
    } else {
        Err(MvccError::LeaseNotFound)
    }
}

/// The multi-version store of one shard.
pub struct Store<S: KvStore> {
    kv: S,
    index: RwLock<Index>,
}

/// Visits every record of `table` in `[start, end)`, stopping at the first error `visit`
/// returns.
fn scan_decoded(
    snapshot: &dyn KvSnapshot,
    table: Table,
    start: &[u8],
    end: Option<&[u8]>,
    mut visit: impl FnMut(&[u8], &[u8]) -> Result<(), MvccError>,
) -> Result<(), MvccError> {
    let mut failure = None;
    snapshot.scan(
        table,
        start,
        end,
        &mut |key, value| match visit(key, value) {
            Ok(()) => true,
            Err(e) => {
                failure = Some(e);
                false
            }
        },
    )?;
    failure.map_or(Ok(()), Err)
}

fn load_index(snapshot: &dyn KvSnapshot) -> Result<Index, MvccError> {
    let mut index = Index {
        current: meta_i64(snapshot, META_CURRENT_REVISION)?.max(1),
        compacted: meta_i64_or(snapshot, META_COMPACT_REVISION, NEVER_COMPACTED)?,
        ..Index::default()
    };
    index.applied = AppliedIndex {
        index: meta_i64(snapshot, META_APPLIED_INDEX)? as u64,
        term: meta_i64(snapshot, META_APPLIED_TERM)? as u64,
    };
    index.durable = index.applied;
    let end = prefix_end(META_ALARM_PREFIX);
    scan_decoded(
        snapshot,
        Table::Meta,
        META_ALARM_PREFIX,
        Some(&end),
        |key, _| {
            index.alarms.insert(decode_alarm_key(key)?);
            Ok(())
        },
    )?;
    scan_decoded(snapshot, Table::Leases, &[], None, |key, value| {
        let (id, lease) = decode_lease(key, value)?;
        index.leases.insert(id, lease);
        Ok(())
    })?;
    scan_decoded(snapshot, Table::Revisions, &[], None, |key, value| {
        let (key, version, _) = decode_record(decode_rev_key(key)?, value)?;
        index.bytes += u64::from(version.bytes);
        index.keys.entry(key).or_default().push(version);
        Ok(())
    })?;
    // The keys attached to each lease: those whose live version names it.
    let Index { keys, leases, .. } = &mut index;
    for (key, versions) in keys.iter() {
        let Some(last) = versions.last().filter(|v| !v.tombstone && v.lease != 0) else {
            continue;
        };
        let lease = leases.get_mut(&last.lease).ok_or_else(|| {
            MvccError::Storage(format!(
                "key {key:?} is attached to lease {} which does not exist",
                last.lease
            ))
        })?;
        lease.keys.insert(key.clone());
    }
    Ok(index)
}

impl<S: KvStore> Store<S> {
    /// Opens the store, rebuilding the in-memory key index from `kv`.
    ///
    /// # Errors
    /// Storage errors, or `Storage` if persisted data cannot be decoded.
    pub fn open(kv: S) -> Result<Self, MvccError> {
        let index = load_index(&kv.snapshot()?)?;
        Ok(Self {
            kv,
            index: RwLock::new(index),
        })
    }

    /// Applies committed entries in order in one storage write; returns one result per entry
    /// whose `command` is `Some`. The applied index (the last entry's) is written atomically
    /// with the data. `durable` asks the storage to persist this and every earlier batch.
    ///
    /// # Errors
    /// Only storage failures, including one met while executing a command: the member must
    /// stop (its state now differs from what it reports), never count it as that command's
    /// failure and go on. etcd errors are inside each [`Applied`].
    ///
    /// # Panics
    /// If the entries do not follow the applied index one by one, or their terms go back: a
    /// duplicate or a gap means the log and the state machine disagree, and applying it
    /// would diverge from every other member.
    pub fn apply_batch(
        &self,
        entries: &[ApplyEntry<'_>],
        durable: bool,
    ) -> Result<Vec<Applied>, MvccError> {
        self.apply_batch_with_events(entries, durable, EventsWanted::None)
            .map(|(results, _)| results)
    }

    /// [`Store::apply_batch`], also returning the events of the changes made, in revision
    /// order, as `wanted` asks.
    ///
    /// # Errors
    /// Only storage failures (fail-stop); etcd errors are inside each [`Applied`].
    pub fn apply_batch_with_events(
        &self,
        entries: &[ApplyEntry<'_>],
        durable: bool,
        wanted: EventsWanted,
    ) -> Result<(Vec<Applied>, Vec<Event>), MvccError> {
        let Some(last) = entries.last() else {
            return Ok((Vec::new(), Vec::new()));
        };
        let mut events = Vec::new();
        let snapshot = self.kv.snapshot()?;
        let mut index = self.index.write();
        let (mut previous, mut term) = (index.applied.index, index.applied.term);
        for entry in entries {
            assert_eq!(
                entry.index,
                previous + 1,
                "entry {} applied after entry {previous}",
                entry.index
            );
            assert!(
                entry.term >= term,
                "entry {} of term {} applied after term {term}",
                entry.index,
                entry.term
            );
            (previous, term) = (entry.index, entry.term);
        }
        let revision_before = index.current;
        let mut pending = HashMap::new();
        let mut ops = Vec::new();
        let mut results = Vec::new();
        for entry in entries {
            let Some(command) = entry.command else {
                continue;
            };
            let mut execution = Execution {
                main: index.current + 1,
                index: &mut index,
                snapshot: &snapshot,
                pending: &mut pending,
                ops: Vec::new(),
                sub: 0,
                touched: Vec::new(),
                wanted,
                events: Vec::new(),
            };
            let result = match refused_by_alarms(&execution.index.alarms, command) {
                Some(refused) => Err(refused),
                None => execution.run(command),
            };
            if result.is_err() {
                execution.undo();
            } else {
                execution.attach_touched();
            }
            if let Err(MvccError::Storage(detail)) = result {
                return Err(MvccError::Storage(format!(
                    "applying entry {}: {detail}",
                    entry.index
                )));
            }
            let wrote = execution.sub > 0;
            let main = execution.main;
            ops.append(&mut execution.ops);
            events.append(&mut execution.events);
            if wrote {
                index.current = main;
            }
            results.push(Applied {
                result,
                revision: index.current,
            });
        }
        assert!(index.current >= revision_before, "the revision went back");
        put_meta(&mut ops, META_CURRENT_REVISION, index.current);
        put_meta(&mut ops, META_APPLIED_INDEX, last.index as i64);
        put_meta(&mut ops, META_APPLIED_TERM, last.term as i64);
        // Committed while the index lock is held: no reader sees the new index entries before
        // storage can serve their values.
        self.kv.write(ops, durable)?;
        index.applied = AppliedIndex {
            index: last.index,
            term: last.term,
        };
        if durable {
            index.durable = index.applied;
        }
        Ok((results, events))
    }

    /// Serves a range at `req.revision` (or current). Returns the response and the current
    /// revision (the header revision).
    ///
    /// # Errors
    /// `Compacted`, `FutureRevision`, storage errors.
    pub fn range(&self, req: &RangeRequest) -> Result<(RangeResponse, Revision), MvccError> {
        let index = self.index.read();
        let snapshot = self.kv.snapshot()?;
        let pending = HashMap::new();
        let values = ValueSource {
            pending: &pending,
            snapshot: &snapshot,
        };
        let response = range_at(&index, &values, req, index.current)?;
        Ok((response, index.current))
    }

    /// Serves a read-only txn ([`TxnRequest::is_read_only`]) from the current state, as
    /// etcd serves those without the log. Returns the response and the header revision.
    ///
    /// # Errors
    /// As the same txn applied: `Compacted`, `FutureRevision`; storage errors.
    pub fn read_txn(&self, req: &TxnRequest) -> Result<(TxnResponse, Revision), MvccError> {
        let index = self.index.read();
        let snapshot = self.kv.snapshot()?;
        let pending = HashMap::new();
        let view = View {
            index: &index,
            values: ValueSource {
                pending: &pending,
                snapshot: &snapshot,
            },
            at: index.current,
        };
        let path = view.checked_path(req)?;
        let response = view.read_path(req, &path, &mut 0)?;
        Ok((response, index.current))
    }

    /// The events of revisions `from..=to` as the store retains them, in revision order, for
    /// watchers catching up. The read stops at the end of the first revision at which it has
    /// gathered `max_bytes` of keys and values, so a revision is never split;
    /// [`History::through`] says how far it got. With `with_prev_kv` every event carries the
    /// key's previous version, when that is retained and not a deletion.
    ///
    /// # Errors
    /// `Compacted` if `from` is below the compaction revision (events there are gone),
    /// `FutureRevision` if `to` is past the current revision; storage errors.
    pub fn history(
        &self,
        from: Revision,
        to: Revision,
        max_bytes: usize,
        with_prev_kv: bool,
    ) -> Result<History, MvccError> {
        let index = self.index.read();
        if from < index.compacted {
            return Err(MvccError::Compacted);
        }
        if to > index.current {
            return Err(MvccError::FutureRevision);
        }
        let mut history = History {
            events: Vec::new(),
            through: to,
        };
        if to < from {
            return Ok(history);
        }
        let snapshot = self.kv.snapshot()?;
        let pending = HashMap::new();
        let values = ValueSource {
            pending: &pending,
            snapshot: &snapshot,
        };
        let (start, end) = (rev_key((from.max(0), 0)), rev_key((to + 1, 0)));
        let mut bytes = 0usize;
        let mut failure = None;
        snapshot.scan(Table::Revisions, &start, Some(&end), &mut |key, value| {
            let read = decode_rev_key(key)
                .and_then(|rev| decode_record(rev, value))
                .and_then(|(key, version, value)| {
                    let last = history.events.last().map(Event::revision);
                    if bytes >= max_bytes && last.is_some_and(|last| version.rev.0 > last) {
                        history.through = last.unwrap_or(to);
                        return Ok(false);
                    }
                    bytes += key.len() + value.len();
                    let prev_kv = if with_prev_kv {
                        index
                            .previous(&key, version.rev)
                            .map(|previous| values.key_value(&key, &previous, true))
                            .transpose()?
                    } else {
                        None
                    };
                    history.events.push(event(&key, &version, value, prev_kv));
                    Ok(true)
                });
            read.unwrap_or_else(|e| {
                failure = Some(e);
                false
            })
        })?;
        match failure {
            Some(e) => Err(e),
            None => Ok(history),
        }
    }

    /// Every lease, in id order, with its attached keys.
    pub fn leases(&self) -> Vec<Lease> {
        let index = self.index.read();
        index
            .leases
            .iter()
            .map(|(id, lease)| lease.to_lease(*id))
            .collect()
    }

    /// One lease, with its attached keys.
    pub fn lease(&self, id: LeaseId) -> Option<Lease> {
        self.index
            .read()
            .leases
            .get(&id)
            .map(|lease| lease.to_lease(id))
    }

    /// The current revision.
    pub fn current_revision(&self) -> Revision {
        self.index.read().current
    }

    /// Bytes the stored records occupy (see [`Index`]'s `bytes`): what the backend quota
    /// counts, and what `Status` reports as the database size in use.
    pub fn bytes_in_use(&self) -> u64 {
        self.index.read().bytes
    }

    /// The active alarms, in (member, type) order.
    pub fn alarms(&self) -> Vec<AlarmMember> {
        self.index.read().alarms.iter().copied().collect()
    }

    /// The compacted revision (-1 if never compacted, as etcd reports it).
    pub fn compact_revision(&self) -> Revision {
        self.index.read().compacted
    }

    /// The last applied entry (as visible to readers, durable or not).
    pub fn applied(&self) -> AppliedIndex {
        self.index.read().applied
    }

    /// The last applied entry whose batch was written durably: the log may be compacted up to
    /// here and no further.
    pub fn durable_applied(&self) -> AppliedIndex {
        self.index.read().durable
    }

    /// A consistent view of the whole state machine for a Raft snapshot, with the applied
    /// index that view corresponds to (read from the view itself, so the two always agree).
    ///
    /// # Errors
    /// Storage errors.
    pub fn snapshot_view(&self) -> Result<(S::Snapshot, AppliedIndex), MvccError> {
        let snapshot = self.kv.snapshot()?;
        let applied = AppliedIndex {
            index: meta_i64(&snapshot, META_APPLIED_INDEX)? as u64,
            term: meta_i64(&snapshot, META_APPLIED_TERM)? as u64,
        };
        Ok((snapshot, applied))
    }

    /// Replaces the whole state with a snapshot's `(table, key, value)` stream (as produced by
    /// scanning every table of a [`Store::snapshot_view`] in `Table::ALL` order), durably,
    /// then rebuilds the in-memory index. Afterwards `applied() == durable_applied()` is the
    /// snapshot's applied index.
    ///
    /// # Errors
    /// The stream's error or storage errors; on error the store is unchanged.
    pub fn restore(
        &self,
        entries: &mut dyn Iterator<Item = storage::Result<(Table, Vec<u8>, Vec<u8>)>>,
    ) -> Result<AppliedIndex, MvccError> {
        let mut index = self.index.write();
        self.kv.restore(entries)?;
        *index = load_index(&self.kv.snapshot()?)?;
        Ok(index.applied)
    }

    /// etcd's HashKV: a CRC-32C over every retained version with revision `<= revision`
    /// (0 = current), in revision order. Returns `(hash, compact_revision, hash_revision)`.
    /// Equal state gives equal hashes on every member.
    ///
    /// # Errors
    /// `Compacted`, `FutureRevision`, storage errors.
    pub fn hash_kv(&self, revision: Revision) -> Result<(u32, Revision, Revision), MvccError> {
        let index = self.index.read();
        let snapshot = self.kv.snapshot()?;
        let (current, compacted) = (index.current, index.compacted);
        drop(index);
        let at = if revision <= 0 { current } else { revision };
        if at > current {
            return Err(MvccError::FutureRevision);
        }
        if at < compacted {
            return Err(MvccError::Compacted);
        }
        let mut hash = 0u32;
        let end = rev_key((at + 1, 0));
        snapshot.scan(Table::Revisions, &[], Some(&end), &mut |key, value| {
            hash = crc32c::crc32c_append(hash, key);
            hash = crc32c::crc32c_append(hash, value);
            true
        })?;
        Ok((hash, compacted, at))
    }

    /// The underlying store (for snapshots and size).
    pub fn kv(&self) -> &S {
        &self.kv
    }
}

#[cfg(test)]
mod tests;
