use pb::request_op::Request;
use proto::etcdserverpb as pb;

use super::*;

fn put(key: &str) -> pb::RequestOp {
    pb::RequestOp {
        request: Some(Request::RequestPut(pb::PutRequest {
            key: key.into(),
            ..Default::default()
        })),
    }
}

fn delete(key: &str, end: &str) -> pb::RequestOp {
    pb::RequestOp {
        request: Some(Request::RequestDeleteRange(pb::DeleteRangeRequest {
            key: key.into(),
            range_end: end.into(),
            ..Default::default()
        })),
    }
}

fn txn(success: Vec<pb::RequestOp>, failure: Vec<pb::RequestOp>) -> pb::TxnRequest {
    pb::TxnRequest {
        compare: vec![],
        success,
        failure,
    }
}

fn nested(t: pb::TxnRequest) -> pb::RequestOp {
    pb::RequestOp {
        request: Some(Request::RequestTxn(t)),
    }
}

// Proves etcd's rule against writing a key twice in one txn branch, including through
// nested txns and deletes, and the exceptions etcd allows.
#[test]
fn duplicate_keys_in_a_txn() {
    let check = |t: pb::TxnRequest| txn_request(&t, 128);
    assert_eq!(
        check(txn(vec![put("a"), put("a")], vec![])).unwrap_err(),
        RequestError::DuplicateKey
    );
    assert_eq!(
        check(txn(vec![delete("a", "c"), put("b")], vec![])).unwrap_err(),
        RequestError::DuplicateKey
    );
    assert_eq!(
        check(txn(
            vec![put("a"), nested(txn(vec![put("a")], vec![]))],
            vec![]
        ))
        .unwrap_err(),
        RequestError::DuplicateKey
    );
    // Allowed: the same key in both branches, in both arms of a nested txn, overlapping
    // deletes, and a put outside a deleted range.
    assert!(check(txn(vec![put("a")], vec![put("a")])).is_ok());
    assert!(check(txn(
        vec![nested(txn(vec![put("a")], vec![put("a")]))],
        vec![]
    ))
    .is_ok());
    assert!(check(txn(vec![delete("a", "c"), delete("b", "d")], vec![])).is_ok());
    assert!(check(txn(vec![delete("a", "c"), put("c")], vec![])).is_ok());
    // etcd takes a from-key delete's "\0" end literally: an empty interval, so a put after it
    // is allowed (the differential test against etcd found this).
    assert!(check(txn(vec![delete("a", "\0"), put("b")], vec![])).is_ok());
}

// Proves the operation budget: too many ops in any list is refused, and nested txns draw on
// what their parent left.
#[test]
fn operation_budget() {
    let many: Vec<pb::RequestOp> = (0..4).map(|i| put(&format!("k{i}"))).collect();
    assert!(txn_request(&txn(many.clone(), vec![]), 4).is_ok());
    assert_eq!(
        txn_request(&txn(many.clone(), vec![]), 3).unwrap_err(),
        RequestError::TooManyOps
    );
    let inner = txn((0..3).map(|i| put(&format!("n{i}"))).collect(), vec![]);
    let outer = txn(vec![nested(inner.clone()), put("x")], vec![]);
    assert!(txn_request(&outer, 5).is_ok());
    assert_eq!(
        txn_request(&outer, 4).unwrap_err(),
        RequestError::TooManyOps
    );
}

// Proves request checks: empty keys (also in compares), an empty op, ignore_* misuse and
// unknown sort options.
#[test]
fn request_checks() {
    assert_eq!(
        put_request(&pb::PutRequest::default()).unwrap_err(),
        RequestError::KeyNotProvided
    );
    let with_value = pb::PutRequest {
        key: b"k".to_vec(),
        value: b"v".to_vec(),
        ignore_value: true,
        ..Default::default()
    };
    assert_eq!(
        put_request(&with_value).unwrap_err(),
        RequestError::ValueProvided
    );
    let with_lease = pb::PutRequest {
        key: b"k".to_vec(),
        lease: 5,
        ignore_lease: true,
        ..Default::default()
    };
    assert_eq!(
        put_request(&with_lease).unwrap_err(),
        RequestError::LeaseProvided
    );
    let bad_sort = pb::RangeRequest {
        key: b"k".to_vec(),
        sort_order: 9,
        ..Default::default()
    };
    assert_eq!(
        range_request(&bad_sort).unwrap_err(),
        RequestError::InvalidSortOption
    );
    let empty_op = txn(vec![pb::RequestOp { request: None }], vec![]);
    assert_eq!(
        txn_request(&empty_op, 128).unwrap_err(),
        RequestError::EmptyRequestOp
    );
    let empty_compare = pb::TxnRequest {
        compare: vec![pb::Compare::default()],
        ..Default::default()
    };
    assert_eq!(
        txn_request(&empty_compare, 128).unwrap_err(),
        RequestError::KeyNotProvided
    );
}

// Proves deep nesting is handled without overflowing the stack.
#[test]
fn deep_nesting() {
    let mut t = txn(vec![put("leaf")], vec![]);
    for _ in 0..90 {
        t = txn(vec![nested(t)], vec![]);
    }
    assert!(txn_request(&t, 128).is_ok());
}
