//! The in-memory index: every key's versions (metadata only; values stay in storage), the
//! leases with their attached keys, and the counters published with them; the queries
//! reads and commands make of it, and its rebuild from storage at open.

use std::collections::BTreeMap;
use std::ops::Bound;

use storage::{KvSnapshot, Table};

use crate::encoding::{
    decode_alarm_key, decode_lease, decode_member, decode_member_id, decode_record, decode_rev_key,
    meta_i64, meta_i64_or, META_ALARM_PREFIX, META_APPLIED_INDEX, META_APPLIED_TERM,
    META_COMPACT_REVISION, META_CURRENT_REVISION, META_MEMBER_PREFIX, META_REMOVED_PREFIX,
    NEVER_COMPACTED,
};
use crate::types::*;
use crate::{prefix_end, AppliedIndex, MvccError};

/// A main and sub revision: the position of one change.
pub(crate) type Rev = (i64, i64);

/// The metadata of one version of a key. The value lives in storage under `rev`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Version {
    pub(crate) rev: Rev,
    pub(crate) create_revision: i64,
    pub(crate) version: i64,
    pub(crate) lease: i64,
    pub(crate) tombstone: bool,
    /// Bytes its record occupies in storage (key and value of the `Revisions` entry).
    pub(crate) bytes: u32,
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
pub(crate) struct LeaseEntry {
    pub(crate) ttl: i64,
    pub(crate) renewals: u64,
    pub(crate) remaining_ttl: i64,
    pub(crate) keys: std::collections::BTreeSet<Vec<u8>>,
}

impl LeaseEntry {
    pub(crate) fn to_lease(&self, id: LeaseId) -> Lease {
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
pub(crate) struct Index {
    pub(crate) keys: BTreeMap<Vec<u8>, Vec<Version>>,
    pub(crate) current: i64,
    pub(crate) compacted: i64,
    pub(crate) applied: AppliedIndex,
    pub(crate) durable: AppliedIndex,
    /// Bytes of every stored record: the data's share of the database, which the backend
    /// quota is measured against.
    pub(crate) bytes: u64,
    /// The active alarms.
    pub(crate) alarms: std::collections::BTreeSet<AlarmMember>,
    /// The leases.
    pub(crate) leases: BTreeMap<LeaseId, LeaseEntry>,
    /// The cluster's members, by id.
    pub(crate) members: BTreeMap<u64, Member>,
    /// Ids of removed members: never used again.
    pub(crate) removed: std::collections::BTreeSet<u64>,
}

impl Index {
    /// The version of `key` visible at revision `at` (tombstones included).
    pub(crate) fn version_at(&self, key: &[u8], at: i64) -> Option<&Version> {
        let versions = self.keys.get(key)?;
        let position = versions.partition_point(|v| v.rev.0 <= at);
        position.checked_sub(1).map(|i| &versions[i])
    }

    /// The live version of `key` just before revision `rev`, if it is retained.
    pub(crate) fn previous(&self, key: &[u8], rev: Rev) -> Option<Version> {
        let versions = self.keys.get(key)?;
        let position = versions.partition_point(|v| v.rev < rev);
        let previous = versions[..position].last()?;
        (!previous.tombstone).then_some(*previous)
    }

    /// Live keys in the range at revision `at`, in key order.
    pub(crate) fn live(&self, start: &[u8], end: &[u8], at: i64) -> Vec<(&Vec<u8>, Version)> {
        self.live_iter(start, end, at).collect()
    }

    /// [`Index::live`] one key at a time: a limited read walks the range without collecting
    /// it.
    pub(crate) fn live_iter<'a>(
        &'a self,
        start: &[u8],
        end: &[u8],
        at: i64,
    ) -> impl Iterator<Item = (&'a Vec<u8>, Version)> + 'a {
        let keys = bounds(start, end).map(|range| self.keys.range::<[u8], _>(range));
        keys.into_iter()
            .flatten()
            .filter_map(move |(key, versions)| {
                let position = versions.partition_point(|v| v.rev.0 <= at);
                let version = versions[..position].last()?;
                (!version.tombstone).then_some((key, *version))
            })
    }
}

/// Whether a put may attach `lease`: 0 (none) or a lease that exists.
pub(crate) fn check_lease(index: &Index, lease: LeaseId) -> Result<(), MvccError> {
    if lease == 0 || index.leases.contains_key(&lease) {
        Ok(())
    } else {
        Err(MvccError::LeaseNotFound)
    }
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

/// Visits every Meta record whose key starts with `prefix`, in key order.
fn scan_meta_prefix(
    snapshot: &dyn KvSnapshot,
    prefix: &[u8],
    visit: impl FnMut(&[u8], &[u8]) -> Result<(), MvccError>,
) -> Result<(), MvccError> {
    let end = prefix_end(prefix);
    scan_decoded(snapshot, Table::Meta, prefix, Some(&end), visit)
}

/// The members recorded in `snapshot`, in id order.
pub(crate) fn members_of(snapshot: &dyn KvSnapshot) -> Result<Vec<Member>, MvccError> {
    let mut members = Vec::new();
    scan_meta_prefix(snapshot, META_MEMBER_PREFIX, |_, value| {
        members.push(decode_member(value)?);
        Ok(())
    })?;
    Ok(members)
}

pub(crate) fn load_index(snapshot: &dyn KvSnapshot) -> Result<Index, MvccError> {
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
    scan_meta_prefix(snapshot, META_ALARM_PREFIX, |key, _| {
        index.alarms.insert(decode_alarm_key(key)?);
        Ok(())
    })?;
    scan_meta_prefix(snapshot, META_MEMBER_PREFIX, |key, value| {
        let id = decode_member_id(META_MEMBER_PREFIX, key)?;
        let member = decode_member(value)?;
        if member.id != id {
            return Err(MvccError::Storage(format!(
                "member record {} stored under id {id}",
                member.id
            )));
        }
        index.members.insert(id, member);
        Ok(())
    })?;
    scan_meta_prefix(snapshot, META_REMOVED_PREFIX, |key, _| {
        index
            .removed
            .insert(decode_member_id(META_REMOVED_PREFIX, key)?);
        Ok(())
    })?;
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
