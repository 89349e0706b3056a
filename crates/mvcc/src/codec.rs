//! The persisted encoding of a [`Command`]: what a Raft log entry carries.
//!
//! A hand-written binary format, versioned by its first byte:
//!
//! ```text
//! command  = [format: u8 = 1][kind: u8][fields...]
//! bytes    = [length: u32 BE][bytes]
//! integers = i64 BE; flags = u8 bit sets
//! ```
//!
//! Every member must decode every entry ever committed, so fields are only ever appended in a
//! new format version. Decoding never panics: malformed input is an error.

use crate::types::*;
use crate::MvccError;

const FORMAT_V1: u8 = 1;
/// Nested txns deeper than this are refused (the API layer refuses them far earlier).
const TXN_DEPTH_MAX: u32 = 128;

pub(crate) struct W<'a> {
    pub(crate) b: &'a mut Vec<u8>,
}
impl W<'_> {
    pub(crate) fn u8(&mut self, v: u8) {
        self.b.push(v)
    }
    pub(crate) fn i64(&mut self, v: i64) {
        self.b.extend_from_slice(&v.to_be_bytes())
    }
    pub(crate) fn bytes(&mut self, v: &[u8]) {
        self.b.extend_from_slice(&(v.len() as u32).to_be_bytes());
        self.b.extend_from_slice(v);
    }
}
pub(crate) struct R<'a> {
    pub(crate) b: &'a [u8],
}
pub(crate) fn bad() -> MvccError {
    MvccError::Storage("malformed encoding".into())
}
impl R<'_> {
    pub(crate) fn take(&mut self, n: usize) -> Result<&[u8], MvccError> {
        if self.b.len() < n {
            return Err(bad());
        }
        let (a, rest) = self.b.split_at(n);
        self.b = rest;
        Ok(a)
    }
    pub(crate) fn u8(&mut self) -> Result<u8, MvccError> {
        Ok(self.take(1)?[0])
    }
    pub(crate) fn i64(&mut self) -> Result<i64, MvccError> {
        Ok(i64::from_be_bytes(self.take(8)?.try_into().unwrap()))
    }
    pub(crate) fn bytes(&mut self) -> Result<Vec<u8>, MvccError> {
        let n = u32::from_be_bytes(self.take(4)?.try_into().unwrap()) as usize;
        Ok(self.take(n)?.to_vec())
    }
}

fn enc_range(w: &mut W, r: &RangeRequest) {
    w.bytes(&r.key);
    w.bytes(&r.range_end);
    w.i64(r.limit);
    w.i64(r.revision);
    w.u8(u8::from(r.serializable) | u8::from(r.keys_only) << 1 | u8::from(r.count_only) << 2);
    w.u8(match r.sort_order {
        SortOrder::None => 0,
        SortOrder::Ascend => 1,
        SortOrder::Descend => 2,
    });
    w.u8(match r.sort_target {
        SortTarget::Key => 0,
        SortTarget::Version => 1,
        SortTarget::Create => 2,
        SortTarget::Mod => 3,
        SortTarget::Value => 4,
    });
    w.i64(r.min_mod_revision);
    w.i64(r.max_mod_revision);
    w.i64(r.min_create_revision);
    w.i64(r.max_create_revision);
}
fn dec_range(r: &mut R) -> Result<RangeRequest, MvccError> {
    let key = r.bytes()?;
    let range_end = r.bytes()?;
    let limit = r.i64()?;
    let revision = r.i64()?;
    let f = r.u8()?;
    let sort_order = match r.u8()? {
        0 => SortOrder::None,
        1 => SortOrder::Ascend,
        2 => SortOrder::Descend,
        _ => return Err(bad()),
    };
    let sort_target = match r.u8()? {
        0 => SortTarget::Key,
        1 => SortTarget::Version,
        2 => SortTarget::Create,
        3 => SortTarget::Mod,
        4 => SortTarget::Value,
        _ => return Err(bad()),
    };
    Ok(RangeRequest {
        key,
        range_end,
        limit,
        revision,
        serializable: f & 1 != 0,
        keys_only: f & 2 != 0,
        count_only: f & 4 != 0,
        sort_order,
        sort_target,
        min_mod_revision: r.i64()?,
        max_mod_revision: r.i64()?,
        min_create_revision: r.i64()?,
        max_create_revision: r.i64()?,
    })
}
fn enc_op(w: &mut W, op: &RequestOp) {
    match op {
        RequestOp::Range(r) => {
            w.u8(0);
            enc_range(w, r)
        }
        RequestOp::Put(p) => {
            w.u8(1);
            enc_put(w, p)
        }
        RequestOp::DeleteRange(d) => {
            w.u8(2);
            enc_delete(w, d)
        }
        RequestOp::Txn(t) => {
            w.u8(3);
            enc_txn(w, t)
        }
    }
}
fn enc_delete(w: &mut W, d: &DeleteRangeRequest) {
    w.bytes(&d.key);
    w.bytes(&d.range_end);
    w.u8(u8::from(d.prev_kv));
}

fn dec_delete(r: &mut R) -> Result<DeleteRangeRequest, MvccError> {
    Ok(DeleteRangeRequest {
        key: r.bytes()?,
        range_end: r.bytes()?,
        prev_kv: r.u8()? != 0,
    })
}

fn enc_put(w: &mut W, p: &PutRequest) {
    w.bytes(&p.key);
    w.bytes(&p.value);
    w.i64(p.lease);
    w.u8(p.prev_kv as u8 | (p.ignore_value as u8) << 1 | (p.ignore_lease as u8) << 2);
}
fn dec_put(r: &mut R) -> Result<PutRequest, MvccError> {
    let key = r.bytes()?;
    let value = r.bytes()?;
    let lease = r.i64()?;
    let f = r.u8()?;
    Ok(PutRequest {
        key,
        value,
        lease,
        prev_kv: f & 1 != 0,
        ignore_value: f & 2 != 0,
        ignore_lease: f & 4 != 0,
    })
}
fn enc_txn(w: &mut W, t: &TxnRequest) {
    w.i64(t.compare.len() as i64);
    for c in &t.compare {
        w.u8(c.result as u8);
        match &c.target {
            CompareTarget::Version(v) => {
                w.u8(0);
                w.i64(*v)
            }
            CompareTarget::Create(v) => {
                w.u8(1);
                w.i64(*v)
            }
            CompareTarget::Mod(v) => {
                w.u8(2);
                w.i64(*v)
            }
            CompareTarget::Value(v) => {
                w.u8(3);
                w.bytes(v)
            }
            CompareTarget::Lease(v) => {
                w.u8(4);
                w.i64(*v)
            }
        }
        w.bytes(&c.key);
        w.bytes(&c.range_end);
    }
    for ops in [&t.success, &t.failure] {
        w.i64(ops.len() as i64);
        for op in ops {
            enc_op(w, op);
        }
    }
}
fn dec_txn(r: &mut R, depth: u32) -> Result<TxnRequest, MvccError> {
    if depth > TXN_DEPTH_MAX {
        return Err(bad());
    }
    let n = r.i64()?;
    let mut compare = Vec::new();
    for _ in 0..n {
        let result = match r.u8()? {
            0 => CompareResult::Equal,
            1 => CompareResult::Greater,
            2 => CompareResult::Less,
            3 => CompareResult::NotEqual,
            _ => return Err(bad()),
        };
        let target = match r.u8()? {
            0 => CompareTarget::Version(r.i64()?),
            1 => CompareTarget::Create(r.i64()?),
            2 => CompareTarget::Mod(r.i64()?),
            3 => CompareTarget::Value(r.bytes()?),
            4 => CompareTarget::Lease(r.i64()?),
            _ => return Err(bad()),
        };
        compare.push(Compare {
            result,
            target,
            key: r.bytes()?,
            range_end: r.bytes()?,
        });
    }
    let mut branches = Vec::new();
    for _ in 0..2 {
        let n = r.i64()?;
        let mut ops = Vec::new();
        for _ in 0..n {
            ops.push(match r.u8()? {
                0 => RequestOp::Range(dec_range(r)?),
                1 => RequestOp::Put(dec_put(r)?),
                2 => RequestOp::DeleteRange(dec_delete(r)?),
                3 => RequestOp::Txn(dec_txn(r, depth + 1)?),
                _ => return Err(bad()),
            });
        }
        branches.push(ops);
    }
    let failure = branches.pop().unwrap();
    let success = branches.pop().unwrap();
    Ok(TxnRequest {
        compare,
        success,
        failure,
    })
}

impl Command {
    /// Encodes the command for the Raft log.
    #[must_use]
    pub fn encode(&self) -> Vec<u8> {
        let mut b = vec![FORMAT_V1];
        let mut w = W { b: &mut b };
        match self {
            Command::Put(p) => {
                w.u8(1);
                enc_put(&mut w, p)
            }
            Command::DeleteRange(d) => {
                w.u8(2);
                enc_delete(&mut w, d)
            }
            Command::Txn(t) => {
                w.u8(3);
                enc_txn(&mut w, t)
            }
            Command::Compact(c) => {
                w.u8(4);
                w.i64(c.revision);
                w.u8(c.physical as u8)
            }
            Command::Alarm(a) => {
                w.u8(5);
                w.u8(match a.action {
                    AlarmAction::Get => 0,
                    AlarmAction::Activate => 1,
                    AlarmAction::Deactivate => 2,
                });
                w.i64(a.member_id as i64);
                w.u8(alarm_code(a.alarm));
            }
            Command::LeaseGrant(g) => {
                w.u8(6);
                w.i64(g.id);
                w.i64(g.ttl);
            }
            Command::LeaseRevoke(id) => {
                w.u8(7);
                w.i64(*id);
            }
            Command::LeaseKeepAlive(id) => {
                w.u8(8);
                w.i64(*id);
            }
            Command::LeaseExpire(e) => {
                w.u8(9);
                w.i64(e.id);
                w.i64(e.renewals as i64);
            }
            Command::LeaseCheckpoint(checkpoints) => {
                w.u8(10);
                w.i64(checkpoints.len() as i64);
                for checkpoint in checkpoints {
                    w.i64(checkpoint.id);
                    w.i64(checkpoint.remaining_ttl);
                }
            }
            Command::Membership(change) => {
                w.u8(11);
                match change {
                    MembershipChange::Add(member) => {
                        w.u8(1);
                        enc_member(&mut w, member);
                    }
                    MembershipChange::Remove(id) => {
                        w.u8(2);
                        w.i64(*id as i64);
                    }
                    MembershipChange::Promote(id) => {
                        w.u8(3);
                        w.i64(*id as i64);
                    }
                    MembershipChange::UpdatePeers { id, peer_urls } => {
                        w.u8(4);
                        w.i64(*id as i64);
                        enc_strings(&mut w, peer_urls);
                    }
                    MembershipChange::Publish {
                        id,
                        name,
                        client_urls,
                    } => {
                        w.u8(5);
                        w.i64(*id as i64);
                        w.bytes(name.as_bytes());
                        enc_strings(&mut w, client_urls);
                    }
                }
            }
        }
        b
    }

    /// Decodes a command written by [`Command::encode`].
    ///
    /// # Errors
    /// `Storage` if the bytes are not a command of a known format.
    pub fn decode(bytes: &[u8]) -> Result<Command, MvccError> {
        let mut r = R { b: bytes };
        if r.u8()? != FORMAT_V1 {
            return Err(MvccError::Storage("command of an unknown format".into()));
        }
        let command = match r.u8()? {
            1 => Command::Put(dec_put(&mut r)?),
            2 => Command::DeleteRange(dec_delete(&mut r)?),
            3 => Command::Txn(dec_txn(&mut r, 0)?),
            4 => Command::Compact(CompactRequest {
                revision: r.i64()?,
                physical: r.u8()? != 0,
            }),
            5 => Command::Alarm(AlarmRequest {
                action: match r.u8()? {
                    0 => AlarmAction::Get,
                    1 => AlarmAction::Activate,
                    2 => AlarmAction::Deactivate,
                    _ => return Err(bad()),
                },
                member_id: r.i64()? as u64,
                alarm: alarm_from_code(r.u8()?)?,
            }),
            6 => Command::LeaseGrant(LeaseGrantRequest {
                id: r.i64()?,
                ttl: r.i64()?,
            }),
            7 => Command::LeaseRevoke(r.i64()?),
            8 => Command::LeaseKeepAlive(r.i64()?),
            9 => Command::LeaseExpire(LeaseExpireRequest {
                id: r.i64()?,
                renewals: r.i64()? as u64,
            }),
            10 => {
                let count = usize::try_from(r.i64()?).map_err(|_| bad())?;
                // Each checkpoint is 16 bytes: a count larger than the rest is malformed,
                // and must not be allocated.
                if count > r.b.len() / 16 {
                    return Err(bad());
                }
                let mut checkpoints = Vec::with_capacity(count);
                for _ in 0..count {
                    checkpoints.push(LeaseCheckpoint {
                        id: r.i64()?,
                        remaining_ttl: r.i64()?,
                    });
                }
                Command::LeaseCheckpoint(checkpoints)
            }
            11 => Command::Membership(match r.u8()? {
                1 => MembershipChange::Add(dec_member(&mut r)?),
                2 => MembershipChange::Remove(r.i64()? as u64),
                3 => MembershipChange::Promote(r.i64()? as u64),
                4 => MembershipChange::UpdatePeers {
                    id: r.i64()? as u64,
                    peer_urls: dec_strings(&mut r)?,
                },
                5 => MembershipChange::Publish {
                    id: r.i64()? as u64,
                    name: dec_string(&mut r)?,
                    client_urls: dec_strings(&mut r)?,
                },
                _ => return Err(bad()),
            }),
            _ => return Err(bad()),
        };
        if !r.b.is_empty() {
            return Err(MvccError::Storage("trailing bytes after a command".into()));
        }
        Ok(command)
    }
}

fn enc_strings(w: &mut W, strings: &[String]) {
    w.i64(strings.len() as i64);
    for s in strings {
        w.bytes(s.as_bytes());
    }
}

fn dec_string(r: &mut R) -> Result<String, MvccError> {
    String::from_utf8(r.bytes()?).map_err(|_| bad())
}

fn dec_strings(r: &mut R) -> Result<Vec<String>, MvccError> {
    let count = usize::try_from(r.i64()?).map_err(|_| bad())?;
    // Each string takes at least its 4-byte length: a larger count is malformed.
    if count > r.b.len() / 4 {
        return Err(bad());
    }
    (0..count).map(|_| dec_string(r)).collect()
}

/// A member's record, as commands carry it and `Table::Meta` stores it.
pub(crate) fn enc_member(w: &mut W, member: &Member) {
    w.i64(member.id as i64);
    w.bytes(member.name.as_bytes());
    enc_strings(w, &member.peer_urls);
    enc_strings(w, &member.client_urls);
    w.u8(u8::from(member.is_learner));
}

pub(crate) fn dec_member(r: &mut R) -> Result<Member, MvccError> {
    Ok(Member {
        id: r.i64()? as u64,
        name: dec_string(r)?,
        peer_urls: dec_strings(r)?,
        client_urls: dec_strings(r)?,
        is_learner: match r.u8()? {
            0 => false,
            1 => true,
            _ => return Err(bad()),
        },
    })
}

/// etcd's number for an alarm type (`NONE` = 0), used in commands and in stored alarms.
pub(crate) fn alarm_code(alarm: Option<AlarmType>) -> u8 {
    match alarm {
        None => 0,
        Some(AlarmType::NoSpace) => 1,
        Some(AlarmType::Corrupt) => 2,
    }
}

/// The alarm type etcd numbers `code`.
pub(crate) fn alarm_from_code(code: u8) -> Result<Option<AlarmType>, MvccError> {
    match code {
        0 => Ok(None),
        1 => Ok(Some(AlarmType::NoSpace)),
        2 => Ok(Some(AlarmType::Corrupt)),
        _ => Err(bad()),
    }
}
