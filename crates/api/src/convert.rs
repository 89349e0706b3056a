//! Protobuf <-> domain conversions, with etcd's request checks (etcd: v3rpc/key.go) applied
//! on the way in, so the node only ever sees valid commands.
//!
//! A client's request is converted here once, by the one function the KV service calls for
//! it (`range_request`, `put_request`, `delete_request`, `txn_request`), which also makes
//! every check made before consensus, in the order that decides which error a client sees:
//! the request's size, its own rules, and for a txn then the rule that no key is written
//! twice. A write that adds data also comes back with its quota cost, charged before all of
//! them.

use mvcc as m;
use proto::etcdserverpb as pb;
use proto::mvccpb;

use crate::errors::RequestError;
use crate::ApiConfig;

/// A write that adds data, as the KV service proposes it.
#[derive(Debug)]
pub struct Checked<T> {
    /// etcd's quota cost. The service charges it before it looks at `request`: etcd's quota
    /// check runs before every other one, so a write over the quota is refused for space
    /// (and raises the alarm) even when it is also invalid.
    pub cost: u64,
    /// The domain request, or the first check it failed.
    pub request: Result<T, RequestError>,
}

fn require_key(key: &[u8]) -> Result<(), RequestError> {
    if key.is_empty() {
        Err(RequestError::KeyNotProvided)
    } else {
        Ok(())
    }
}

/// The request size limit, checked on the message as it arrived: etcd limits the encoded
/// request it proposes.
fn require_size(message: &impl prost::Message, limits: &ApiConfig) -> Result<(), RequestError> {
    if message.encoded_len() > limits.max_request_bytes {
        Err(RequestError::TooLarge)
    } else {
        Ok(())
    }
}

/// A client's range: size, then the range's own rules.
///
/// # Errors
/// Too large, empty key, unknown sort order or target.
pub fn range_request(
    r: pb::RangeRequest,
    limits: &ApiConfig,
) -> Result<m::RangeRequest, RequestError> {
    require_size(&r, limits)?;
    range_op(r)
}

/// A client's put: its quota cost; size, then the put's own rules.
#[must_use]
pub fn put_request(r: pb::PutRequest, limits: &ApiConfig) -> Checked<m::PutRequest> {
    Checked {
        cost: put_cost(&r),
        request: require_size(&r, limits).and_then(|()| put_op(r)),
    }
}

/// A client's delete: size, then the delete's own rules.
///
/// # Errors
/// Too large, empty key.
pub fn delete_request(
    r: pb::DeleteRangeRequest,
    limits: &ApiConfig,
) -> Result<m::DeleteRangeRequest, RequestError> {
    require_size(&r, limits)?;
    delete_op(r)
}

/// A client's txn: its quota cost; size, then, in one walk, the operation budget (counted as
/// etcd does, nested txns drawing on what their parent left), keys and empty operations;
/// then, on the converted txn, the rule that no key is written twice.
#[must_use]
pub fn txn_request(r: pb::TxnRequest, limits: &ApiConfig) -> Checked<m::TxnRequest> {
    let cost = txn_cost(&r);
    let request = require_size(&r, limits).and_then(|()| {
        let txn = txn_op(r, limits.max_txn_ops as i64)?;
        // After the whole txn, as etcd does: the budget bounds the work this check does.
        check_intervals(&txn.success)?;
        check_intervals(&txn.failure)?;
        Ok(txn)
    });
    Checked { cost, request }
}

/// etcd's quota cost of a put (`server/etcdserver/quota.go`): its key and value plus a
/// fixed overhead.
fn put_cost(r: &pb::PutRequest) -> u64 {
    const KV_OVERHEAD: u64 = 256;
    KV_OVERHEAD + r.key.len() as u64 + r.value.len() as u64
}

/// etcd's quota cost of a txn: the costlier branch's puts. Only puts at the top level
/// count, as in etcd. Counted on the message, not the converted txn: the cost is charged
/// before the checks, so a txn that fails them has one too.
fn txn_cost(r: &pb::TxnRequest) -> u64 {
    let branch = |ops: &[pb::RequestOp]| -> u64 {
        ops.iter()
            .map(|op| match &op.request {
                Some(pb::request_op::Request::RequestPut(put)) => put_cost(put),
                _ => 0,
            })
            .sum()
    };
    branch(&r.success).max(branch(&r.failure))
}

fn range_op(r: pb::RangeRequest) -> Result<m::RangeRequest, RequestError> {
    require_key(&r.key)?;
    let sort_order = match pb::range_request::SortOrder::try_from(r.sort_order) {
        Ok(pb::range_request::SortOrder::None) => m::SortOrder::None,
        Ok(pb::range_request::SortOrder::Ascend) => m::SortOrder::Ascend,
        Ok(pb::range_request::SortOrder::Descend) => m::SortOrder::Descend,
        Err(_) => return Err(RequestError::InvalidSortOption),
    };
    let sort_target = match pb::range_request::SortTarget::try_from(r.sort_target) {
        Ok(pb::range_request::SortTarget::Key) => m::SortTarget::Key,
        Ok(pb::range_request::SortTarget::Version) => m::SortTarget::Version,
        Ok(pb::range_request::SortTarget::Create) => m::SortTarget::Create,
        Ok(pb::range_request::SortTarget::Mod) => m::SortTarget::Mod,
        Ok(pb::range_request::SortTarget::Value) => m::SortTarget::Value,
        Err(_) => return Err(RequestError::InvalidSortOption),
    };
    Ok(m::RangeRequest {
        key: r.key,
        range_end: r.range_end,
        limit: r.limit,
        revision: r.revision,
        sort_order,
        sort_target,
        serializable: r.serializable,
        keys_only: r.keys_only,
        count_only: r.count_only,
        min_mod_revision: r.min_mod_revision,
        max_mod_revision: r.max_mod_revision,
        min_create_revision: r.min_create_revision,
        max_create_revision: r.max_create_revision,
    })
}

fn put_op(r: pb::PutRequest) -> Result<m::PutRequest, RequestError> {
    require_key(&r.key)?;
    if r.ignore_value && !r.value.is_empty() {
        return Err(RequestError::ValueProvided);
    }
    if r.ignore_lease && r.lease != 0 {
        return Err(RequestError::LeaseProvided);
    }
    Ok(m::PutRequest {
        key: r.key,
        value: r.value,
        lease: r.lease,
        prev_kv: r.prev_kv,
        ignore_value: r.ignore_value,
        ignore_lease: r.ignore_lease,
    })
}

fn delete_op(r: pb::DeleteRangeRequest) -> Result<m::DeleteRangeRequest, RequestError> {
    require_key(&r.key)?;
    Ok(m::DeleteRangeRequest {
        key: r.key,
        range_end: r.range_end,
        prev_kv: r.prev_kv,
    })
}

/// etcd's `checkTxnRequest` and the conversion in one walk: the budget of this level, the
/// compares' keys, then every operation of success and failure in order.
fn txn_op(r: pb::TxnRequest, max_ops: i64) -> Result<m::TxnRequest, RequestError> {
    let ops = r.compare.len().max(r.success.len()).max(r.failure.len()) as i64;
    if ops > max_ops {
        return Err(RequestError::TooManyOps);
    }
    let compare = r
        .compare
        .into_iter()
        .map(compare)
        .collect::<Result<Vec<_>, _>>()?;
    let branch = |ops_in: Vec<pb::RequestOp>| {
        ops_in
            .into_iter()
            .map(|op| request_op(op, max_ops - ops))
            .collect::<Result<Vec<_>, _>>()
    };
    Ok(m::TxnRequest {
        compare,
        success: branch(r.success)?,
        failure: branch(r.failure)?,
    })
}

fn compare(c: pb::Compare) -> Result<m::Compare, RequestError> {
    use pb::compare::{CompareResult as R, CompareTarget as T, TargetUnion as U};
    require_key(&c.key)?;
    let result = match R::try_from(c.result) {
        Ok(R::Equal) | Err(_) => m::CompareResult::Equal,
        Ok(R::Greater) => m::CompareResult::Greater,
        Ok(R::Less) => m::CompareResult::Less,
        Ok(R::NotEqual) => m::CompareResult::NotEqual,
    };
    // The operand is read according to `target`, as etcd does; a missing or mismatched
    // union member reads as zero.
    let int = match &c.target_union {
        Some(U::Version(v) | U::CreateRevision(v) | U::ModRevision(v) | U::Lease(v)) => *v,
        _ => 0,
    };
    let target = match T::try_from(c.target) {
        Ok(T::Version) | Err(_) => m::CompareTarget::Version(int),
        Ok(T::Create) => m::CompareTarget::Create(int),
        Ok(T::Mod) => m::CompareTarget::Mod(int),
        Ok(T::Lease) => m::CompareTarget::Lease(int),
        Ok(T::Value) => m::CompareTarget::Value(match c.target_union {
            Some(U::Value(v)) => v,
            _ => Vec::new(),
        }),
    };
    Ok(m::Compare {
        result,
        target,
        key: c.key,
        range_end: c.range_end,
    })
}

fn request_op(op: pb::RequestOp, max_ops: i64) -> Result<m::RequestOp, RequestError> {
    use pb::request_op::Request;
    match op.request {
        Some(Request::RequestRange(r)) => Ok(m::RequestOp::Range(range_op(r)?)),
        Some(Request::RequestPut(r)) => Ok(m::RequestOp::Put(put_op(r)?)),
        Some(Request::RequestDeleteRange(r)) => Ok(m::RequestOp::DeleteRange(delete_op(r)?)),
        Some(Request::RequestTxn(r)) => Ok(m::RequestOp::Txn(txn_op(r, max_ops)?)),
        None => Err(RequestError::EmptyRequestOp),
    }
}

/// A deleted interval: `[start, end)`, a single key when `end` is empty.
type Interval = (Vec<u8>, Vec<u8>);

/// Whether a put of `key` falls in a deleted interval, as etcd's `checkIntervals` decides it:
/// `end` is taken literally, so a from-key delete (`end` = `"\0"`) covers no key there, and a
/// put after it in the same txn is allowed (the delete runs first).
fn covers(interval: &Interval, key: &[u8]) -> bool {
    let (start, end) = interval;
    if end.is_empty() {
        key == start.as_slice()
    } else {
        key >= start.as_slice() && key < end.as_slice()
    }
}

/// etcd's `checkIntervals`: within one branch (nested txns included) a key may be put once
/// and never inside a range the same branch deletes. The same key put in both arms of one
/// nested txn is fine: only one arm runs.
fn check_intervals(ops: &[m::RequestOp]) -> Result<(Vec<Vec<u8>>, Vec<Interval>), RequestError> {
    let mut dels: Vec<Interval> = ops
        .iter()
        .filter_map(|op| match op {
            m::RequestOp::DeleteRange(d) => Some((d.key.clone(), d.range_end.clone())),
            _ => None,
        })
        .collect();
    let mut puts: Vec<Vec<u8>> = Vec::new();
    let deleted = |dels: &[Interval], key: &[u8]| dels.iter().any(|d| covers(d, key));
    for op in ops {
        let m::RequestOp::Txn(txn) = op else { continue };
        let (puts_then, dels_then) = check_intervals(&txn.success)?;
        let (puts_else, dels_else) = check_intervals(&txn.failure)?;
        for key in &puts_then {
            if puts.contains(key) || deleted(&dels, key) {
                return Err(RequestError::DuplicateKey);
            }
            puts.push(key.clone());
        }
        for key in &puts_else {
            if (puts.contains(key) && !puts_then.contains(key)) || deleted(&dels, key) {
                return Err(RequestError::DuplicateKey);
            }
            if !puts.contains(key) {
                puts.push(key.clone());
            }
        }
        dels.extend(dels_then);
        dels.extend(dels_else);
    }
    for op in ops {
        let m::RequestOp::Put(put) = op else { continue };
        if puts.contains(&put.key) || deleted(&dels, &put.key) {
            return Err(RequestError::DuplicateKey);
        }
        puts.push(put.key.clone());
    }
    Ok((puts, dels))
}

/// A domain key-value as etcd's message.
#[must_use]
pub fn key_value(kv: m::KeyValue) -> mvccpb::KeyValue {
    mvccpb::KeyValue {
        key: kv.key,
        create_revision: kv.create_revision,
        mod_revision: kv.mod_revision,
        version: kv.version,
        value: kv.value,
        lease: kv.lease,
    }
}

/// A range result as etcd's message (header filled by the caller).
#[must_use]
pub fn range_response(r: m::RangeResponse) -> pb::RangeResponse {
    pb::RangeResponse {
        header: None,
        kvs: r.kvs.into_iter().map(key_value).collect(),
        more: r.more,
        count: r.count,
    }
}

/// A put result as etcd's message (header filled by the caller).
#[must_use]
pub fn put_response(r: m::PutResponse) -> pb::PutResponse {
    pb::PutResponse {
        header: None,
        prev_kv: r.prev_kv.map(key_value),
    }
}

/// A delete result as etcd's message (header filled by the caller).
#[must_use]
pub fn delete_response(r: m::DeleteRangeResponse) -> pb::DeleteRangeResponse {
    pb::DeleteRangeResponse {
        header: None,
        deleted: r.deleted,
        prev_kvs: r.prev_kvs.into_iter().map(key_value).collect(),
    }
}

/// A txn result as etcd's message, under `header`.
///
/// The operations' own headers are as etcd fills them: only the revision each operation saw
/// or made (etcd stamps cluster, member and term on the outermost header alone), and a nested
/// txn's header is empty.
#[must_use]
pub fn txn_response(r: m::TxnResponse, header: &pb::ResponseHeader) -> pb::TxnResponse {
    pb::TxnResponse {
        header: Some(*header),
        ..nested_txn_response(r)
    }
}

/// Whether every operation of both branches is a serializable range (etcd's
/// `isTxnSerializable`; a nested txn is not a range): such a read-only txn is served without
/// a ReadIndex round.
#[must_use]
pub fn txn_is_serializable(t: &m::TxnRequest) -> bool {
    t.success
        .iter()
        .chain(&t.failure)
        .all(|op| matches!(op, m::RequestOp::Range(range) if range.serializable))
}

/// What an alarm request asks, or `None` for a request that can match nothing (an alarm
/// type or action this version does not know): etcd answers those with an empty list.
#[must_use]
pub fn alarm_request(r: &pb::AlarmRequest) -> Option<m::AlarmRequest> {
    let action = match pb::alarm_request::AlarmAction::try_from(r.action).ok()? {
        pb::alarm_request::AlarmAction::Get => m::AlarmAction::Get,
        pb::alarm_request::AlarmAction::Activate => m::AlarmAction::Activate,
        pb::alarm_request::AlarmAction::Deactivate => m::AlarmAction::Deactivate,
    };
    let alarm = match pb::AlarmType::try_from(r.alarm).ok()? {
        pb::AlarmType::None => None,
        pb::AlarmType::Nospace => Some(m::AlarmType::NoSpace),
        pb::AlarmType::Corrupt => Some(m::AlarmType::Corrupt),
    };
    Some(m::AlarmRequest {
        action,
        member_id: r.member_id,
        alarm,
    })
}

/// An active alarm as etcd sends it.
#[must_use]
pub fn alarm_member(a: m::AlarmMember) -> pb::AlarmMember {
    pb::AlarmMember {
        member_id: a.member_id,
        alarm: alarm_type(a.alarm) as i32,
    }
}

fn alarm_type(alarm: m::AlarmType) -> pb::AlarmType {
    match alarm {
        m::AlarmType::NoSpace => pb::AlarmType::Nospace,
        m::AlarmType::Corrupt => pb::AlarmType::Corrupt,
    }
}

/// An active alarm as etcd lists it in `Status.errors`: the alarm message in protobuf's
/// compact text form.
#[must_use]
pub fn alarm_error(a: m::AlarmMember) -> String {
    format!(
        "memberID:{} alarm:{} ",
        a.member_id,
        alarm_type(a.alarm).as_str_name()
    )
}

fn nested_txn_response(r: m::TxnResponse) -> pb::TxnResponse {
    use pb::response_op::Response;
    let only = |revision| {
        Some(pb::ResponseHeader {
            revision,
            ..Default::default()
        })
    };
    let responses = r
        .responses
        .into_iter()
        .map(|op| pb::ResponseOp {
            response: Some(match op {
                m::ResponseOp::Range(r) => Response::ResponseRange(pb::RangeResponse {
                    header: only(r.revision),
                    ..range_response(r)
                }),
                m::ResponseOp::Put(r) => Response::ResponsePut(pb::PutResponse {
                    header: only(r.revision),
                    ..put_response(r)
                }),
                m::ResponseOp::DeleteRange(r) => {
                    Response::ResponseDeleteRange(pb::DeleteRangeResponse {
                        header: only(r.revision),
                        ..delete_response(r)
                    })
                }
                m::ResponseOp::Txn(r) => Response::ResponseTxn(pb::TxnResponse {
                    header: Some(pb::ResponseHeader::default()),
                    ..nested_txn_response(r)
                }),
            }),
        })
        .collect();
    pb::TxnResponse {
        header: None,
        succeeded: r.succeeded,
        responses,
    }
}

#[cfg(test)]
mod tests;
