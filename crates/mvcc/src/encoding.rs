//! How the state is stored in the [`storage::KvStore`] tables: the revision keys and version
//! records of `Table::Revisions`, the lease records of `Table::Leases`, and the alarm keys and
//! counters (applied index, current and compacted revision) of `Table::Meta`; also the event
//! a stored version stands for.

use storage::{KvSnapshot, Table, WriteOp};

use crate::codec;
use crate::index::{LeaseEntry, Rev, Version};
use crate::types::*;
use crate::MvccError;

pub(crate) const META_APPLIED_INDEX: &[u8] = b"applied_index";
pub(crate) const META_APPLIED_TERM: &[u8] = b"applied_term";
pub(crate) const META_CURRENT_REVISION: &[u8] = b"current_revision";
pub(crate) const META_COMPACT_REVISION: &[u8] = b"compact_revision";
/// Prefix of the active alarms in `Meta`: `alarm/` + member id (u64 BE) + alarm type code.
pub(crate) const META_ALARM_PREFIX: &[u8] = b"alarm/";
/// Prefix of the members in `Meta`: `member/` + member id (u64 BE) -> the member's record.
pub(crate) const META_MEMBER_PREFIX: &[u8] = b"member/";
/// Prefix of the removed member ids in `Meta`: `removed/` + member id (u64 BE).
pub(crate) const META_REMOVED_PREFIX: &[u8] = b"removed/";
const RECORD_FORMAT_V1: u8 = 1;
/// The compaction revision of a store never compacted, as etcd's `compactMainRev`: it shows
/// in HashKV, lets a first compaction to revision 0 succeed, and makes a txn's range at
/// revision -1 valid until the first compaction.
pub(crate) const NEVER_COMPACTED: i64 = -1;

pub(crate) fn rev_key(rev: Rev) -> Vec<u8> {
    let mut key = Vec::with_capacity(16);
    key.extend_from_slice(&rev.0.to_be_bytes());
    key.extend_from_slice(&rev.1.to_be_bytes());
    key
}

pub(crate) fn decode_rev_key(key: &[u8]) -> Result<Rev, MvccError> {
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
pub(crate) fn encode_record(key: &[u8], version: &Version, value: &[u8]) -> Vec<u8> {
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
pub(crate) fn record_bytes(encoded: usize) -> u32 {
    u32::try_from(encoded + 16).unwrap_or(u32::MAX)
}

pub(crate) fn decode_record(
    rev: Rev,
    bytes: &[u8],
) -> Result<(Vec<u8>, Version, Vec<u8>), MvccError> {
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
pub(crate) fn event(
    key: &[u8],
    version: &Version,
    value: Vec<u8>,
    prev_kv: Option<KeyValue>,
) -> Event {
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
pub(crate) fn lease_key(id: LeaseId) -> Vec<u8> {
    id.to_be_bytes().to_vec()
}

pub(crate) fn encode_lease(lease: &LeaseEntry) -> Vec<u8> {
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

pub(crate) fn decode_lease(key: &[u8], value: &[u8]) -> Result<(LeaseId, LeaseEntry), MvccError> {
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

pub(crate) fn meta_i64(snapshot: &dyn KvSnapshot, name: &[u8]) -> Result<i64, MvccError> {
    meta_i64_or(snapshot, name, 0)
}

pub(crate) fn meta_i64_or(
    snapshot: &dyn KvSnapshot,
    name: &[u8],
    absent: i64,
) -> Result<i64, MvccError> {
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

pub(crate) fn alarm_key(alarm: &AlarmMember) -> Vec<u8> {
    let mut key = META_ALARM_PREFIX.to_vec();
    key.extend_from_slice(&alarm.member_id.to_be_bytes());
    key.push(codec::alarm_code(Some(alarm.alarm)));
    key
}

pub(crate) fn decode_alarm_key(key: &[u8]) -> Result<AlarmMember, MvccError> {
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

pub(crate) fn put_meta(ops: &mut Vec<WriteOp>, name: &[u8], value: i64) {
    ops.push(WriteOp::Put {
        table: Table::Meta,
        key: name.to_vec(),
        value: value.to_be_bytes().to_vec(),
    });
}

pub(crate) fn member_key(prefix: &[u8], id: u64) -> Vec<u8> {
    let mut key = prefix.to_vec();
    key.extend_from_slice(&id.to_be_bytes());
    key
}

pub(crate) fn decode_member_id(prefix: &[u8], key: &[u8]) -> Result<u64, MvccError> {
    key.strip_prefix(prefix)
        .and_then(|rest| rest.try_into().ok())
        .map(u64::from_be_bytes)
        .ok_or_else(|| MvccError::Storage(format!("member key {key:?} is malformed")))
}

pub(crate) fn encode_member(member: &Member) -> Vec<u8> {
    let mut b = Vec::new();
    codec::enc_member(&mut codec::W { b: &mut b }, member);
    b
}

pub(crate) fn decode_member(value: &[u8]) -> Result<Member, MvccError> {
    let mut r = codec::R { b: value };
    let member = codec::dec_member(&mut r)?;
    if !r.b.is_empty() {
        return Err(MvccError::Storage("trailing bytes after a member".into()));
    }
    Ok(member)
}
