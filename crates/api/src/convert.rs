//! Protobuf <-> domain conversions, with etcd's request checks (etcd: v3rpc/key.go) applied
//! on the way in, so the node only ever sees valid commands.

use mvcc as m;
use proto::etcdserverpb as pb;
use proto::mvccpb;

use crate::errors::RequestError;

fn require_key(key: &[u8]) -> Result<(), RequestError> {
    if key.is_empty() {
        Err(RequestError::KeyNotProvided)
    } else {
        Ok(())
    }
}

/// Converts and checks a range request.
///
/// # Errors
/// Empty key, unknown sort order or target.
pub fn range_request(r: &pb::RangeRequest) -> Result<m::RangeRequest, RequestError> {
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
        key: r.key.clone(),
        range_end: r.range_end.clone(),
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

/// Converts and checks a put.
///
/// # Errors
/// Empty key, `ignore_value` with a value, `ignore_lease` with a lease.
pub fn put_request(r: &pb::PutRequest) -> Result<m::PutRequest, RequestError> {
    require_key(&r.key)?;
    if r.ignore_value && !r.value.is_empty() {
        return Err(RequestError::ValueProvided);
    }
    if r.ignore_lease && r.lease != 0 {
        return Err(RequestError::LeaseProvided);
    }
    Ok(m::PutRequest {
        key: r.key.clone(),
        value: r.value.clone(),
        lease: r.lease,
        prev_kv: r.prev_kv,
        ignore_value: r.ignore_value,
        ignore_lease: r.ignore_lease,
    })
}

/// Converts and checks a delete.
///
/// # Errors
/// Empty key.
pub fn delete_request(r: &pb::DeleteRangeRequest) -> Result<m::DeleteRangeRequest, RequestError> {
    require_key(&r.key)?;
    Ok(m::DeleteRangeRequest {
        key: r.key.clone(),
        range_end: r.range_end.clone(),
        prev_kv: r.prev_kv,
    })
}

/// Converts and checks a txn: operation budget (counted as etcd does, nested txns drawing on
/// what their parent left), keys, and the rule that no key is written twice.
///
/// # Errors
/// The first rule broken.
pub fn txn_request(r: &pb::TxnRequest, max_ops: usize) -> Result<m::TxnRequest, RequestError> {
    let txn = txn_checked(r, max_ops as i64)?;
    check_intervals(&txn.success)?;
    check_intervals(&txn.failure)?;
    Ok(txn)
}

fn txn_checked(r: &pb::TxnRequest, max_ops: i64) -> Result<m::TxnRequest, RequestError> {
    let ops = r.compare.len().max(r.success.len()).max(r.failure.len()) as i64;
    if ops > max_ops {
        return Err(RequestError::TooManyOps);
    }
    let compare = r
        .compare
        .iter()
        .map(compare)
        .collect::<Result<Vec<_>, _>>()?;
    let branch = |ops_in: &[pb::RequestOp]| {
        ops_in
            .iter()
            .map(|op| request_op(op, max_ops - ops))
            .collect::<Result<Vec<_>, _>>()
    };
    Ok(m::TxnRequest {
        compare,
        success: branch(&r.success)?,
        failure: branch(&r.failure)?,
    })
}

fn compare(c: &pb::Compare) -> Result<m::Compare, RequestError> {
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
    let int = |u: &Option<U>| match u {
        Some(U::Version(v) | U::CreateRevision(v) | U::ModRevision(v) | U::Lease(v)) => *v,
        _ => 0,
    };
    let target = match T::try_from(c.target) {
        Ok(T::Version) | Err(_) => m::CompareTarget::Version(int(&c.target_union)),
        Ok(T::Create) => m::CompareTarget::Create(int(&c.target_union)),
        Ok(T::Mod) => m::CompareTarget::Mod(int(&c.target_union)),
        Ok(T::Lease) => m::CompareTarget::Lease(int(&c.target_union)),
        Ok(T::Value) => m::CompareTarget::Value(match &c.target_union {
            Some(U::Value(v)) => v.clone(),
            _ => Vec::new(),
        }),
    };
    Ok(m::Compare {
        result,
        target,
        key: c.key.clone(),
        range_end: c.range_end.clone(),
    })
}

fn request_op(op: &pb::RequestOp, max_ops: i64) -> Result<m::RequestOp, RequestError> {
    use pb::request_op::Request;
    match &op.request {
        Some(Request::RequestRange(r)) => Ok(m::RequestOp::Range(range_request(r)?)),
        Some(Request::RequestPut(r)) => Ok(m::RequestOp::Put(put_request(r)?)),
        Some(Request::RequestDeleteRange(r)) => Ok(m::RequestOp::DeleteRange(delete_request(r)?)),
        Some(Request::RequestTxn(r)) => Ok(m::RequestOp::Txn(txn_checked(r, max_ops)?)),
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
/// `isTxnSerializable`): such a read-only txn is served without a ReadIndex round.
#[must_use]
pub fn txn_is_serializable(r: &pb::TxnRequest) -> bool {
    r.success.iter().chain(&r.failure).all(|op| {
        matches!(&op.request, Some(pb::request_op::Request::RequestRange(range)) if range.serializable)
    })
}

/// etcd's quota cost of a put (`server/etcdserver/quota.go`): its key and value plus a
/// fixed overhead.
#[must_use]
pub fn put_cost(r: &pb::PutRequest) -> u64 {
    const KV_OVERHEAD: u64 = 256;
    KV_OVERHEAD + r.key.len() as u64 + r.value.len() as u64
}

/// etcd's quota cost of a txn: the costlier branch's puts. Only puts at the top level
/// count, as in etcd.
#[must_use]
pub fn txn_cost(r: &pb::TxnRequest) -> u64 {
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
