use pb::request_op::Request;
use proto::etcdserverpb as pb;

use super::*;

/// The default limits with at most `max_txn_ops` operations per txn level.
fn limits(max_txn_ops: usize) -> ApiConfig {
    ApiConfig {
        max_txn_ops,
        ..ApiConfig::default()
    }
}

/// A txn's checked result under `max_txn_ops`.
fn checked(t: pb::TxnRequest, max_txn_ops: usize) -> Result<m::TxnRequest, RequestError> {
    txn_request(t, &limits(max_txn_ops)).request
}

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
    let check = |t: pb::TxnRequest| checked(t, 128);
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
    assert!(checked(txn(many.clone(), vec![]), 4).is_ok());
    assert_eq!(
        checked(txn(many.clone(), vec![]), 3).unwrap_err(),
        RequestError::TooManyOps
    );
    let inner = txn((0..3).map(|i| put(&format!("n{i}"))).collect(), vec![]);
    let outer = txn(vec![nested(inner.clone()), put("x")], vec![]);
    assert!(checked(outer.clone(), 5).is_ok());
    assert_eq!(checked(outer, 4).unwrap_err(), RequestError::TooManyOps);
}

// Proves request checks: empty keys (also in compares), an empty op, ignore_* misuse and
// unknown sort options.
#[test]
fn request_checks() {
    assert_eq!(
        put_request(pb::PutRequest::default(), &limits(128))
            .request
            .unwrap_err(),
        RequestError::KeyNotProvided
    );
    let with_value = pb::PutRequest {
        key: b"k".to_vec(),
        value: b"v".to_vec(),
        ignore_value: true,
        ..Default::default()
    };
    assert_eq!(
        put_request(with_value, &limits(128)).request.unwrap_err(),
        RequestError::ValueProvided
    );
    let with_lease = pb::PutRequest {
        key: b"k".to_vec(),
        lease: 5,
        ignore_lease: true,
        ..Default::default()
    };
    assert_eq!(
        put_request(with_lease, &limits(128)).request.unwrap_err(),
        RequestError::LeaseProvided
    );
    let bad_sort = pb::RangeRequest {
        key: b"k".to_vec(),
        sort_order: 9,
        ..Default::default()
    };
    assert_eq!(
        range_request(bad_sort, &limits(128)).unwrap_err(),
        RequestError::InvalidSortOption
    );
    let empty_op = txn(vec![pb::RequestOp { request: None }], vec![]);
    assert_eq!(
        checked(empty_op, 128).unwrap_err(),
        RequestError::EmptyRequestOp
    );
    let empty_compare = pb::TxnRequest {
        compare: vec![pb::Compare::default()],
        ..Default::default()
    };
    assert_eq!(
        checked(empty_compare, 128).unwrap_err(),
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
    assert!(checked(t, 128).is_ok());
}

fn put_kv(key: &str, value: &str) -> pb::RequestOp {
    pb::RequestOp {
        request: Some(Request::RequestPut(pb::PutRequest {
            key: key.into(),
            value: value.into(),
            ..Default::default()
        })),
    }
}

/// A txn's quota cost and checked outcome under both limits, as the KV service sees them.
fn flow(
    t: pb::TxnRequest,
    max_request_bytes: usize,
    max_txn_ops: usize,
) -> (u64, Result<(), RequestError>) {
    let limits = ApiConfig {
        max_request_bytes,
        max_txn_ops,
        ..ApiConfig::default()
    };
    let Checked { cost, request } = txn_request(t, &limits);
    (cost, request.map(|_| ()))
}

// Proves that the one conversion answers as the service did when the quota cost, the size
// check, the conversion and the duplicate-key check were separate steps on the message (the
// expected values were taken from that code): the cost counts only top-level puts of the
// costlier branch and is known even when a check fails, the size is checked first, the
// operation budget before the keys and empty operations it meets, and duplicate keys last.
#[test]
fn txn_checks_in_order_with_cost() {
    use RequestError::*;
    let many = |n: usize| -> Vec<pb::RequestOp> { (0..n).map(|i| put(&format!("k{i}"))).collect() };
    let with_dup = |n: usize| {
        let mut ops = many(n);
        ops.push(put("k0"));
        ops
    };
    // (txn, max request bytes, max txn ops, cost, outcome)
    let cases = [
        // Too many operations and a duplicate key: the budget is checked first.
        (
            txn(with_dup(4), vec![]),
            1 << 20,
            4,
            5 * 258,
            Err(TooManyOps),
        ),
        // Within the budget, the duplicate key.
        (
            txn(with_dup(3), vec![]),
            1 << 20,
            4,
            4 * 258,
            Err(DuplicateKey),
        ),
        // Too large as well: the size comes before both.
        (txn(with_dup(4), vec![]), 10, 4, 5 * 258, Err(TooLarge)),
        (txn(with_dup(3), vec![]), 10, 4, 4 * 258, Err(TooLarge)),
        // An empty operation in a txn over budget; the cost is the costlier branch's.
        (
            txn(vec![pb::RequestOp { request: None }], many(5)),
            1 << 20,
            4,
            5 * 258,
            Err(TooManyOps),
        ),
        // A duplicate key before an empty one: every operation is checked before intervals.
        (
            txn(vec![put("a"), put("a"), put("")], vec![]),
            1 << 20,
            4,
            3 * 256 + 2,
            Err(KeyNotProvided),
        ),
        // The nested txn has 3 - 2 = 1 operation left, not enough; with 4 it has 2.
        (
            txn(
                vec![put("a"), nested(txn(vec![put("b"), put("c")], vec![]))],
                vec![],
            ),
            1 << 20,
            3,
            257,
            Err(TooManyOps),
        ),
        (
            txn(
                vec![put("a"), nested(txn(vec![put("b"), put("c")], vec![]))],
                vec![],
            ),
            1 << 20,
            4,
            257,
            Ok(()),
        ),
        (
            txn(
                vec![
                    put_kv("a", "12345"),
                    nested(txn(vec![put_kv("big", &"x".repeat(100))], vec![])),
                ],
                // Nested puts cost nothing; the failure branch costs more.
                vec![put_kv("bb", "1"), put_kv("cc", "12")],
            ),
            1 << 20,
            128,
            (256 + 3) + (256 + 4),
            Ok(()),
        ),
    ];
    for (i, (request, max_bytes, max_ops, cost, checked)) in cases.into_iter().enumerate() {
        assert_eq!(
            flow(request, max_bytes, max_ops),
            (cost, checked),
            "case {i}"
        );
    }
}

// Proves a put's quota cost (key, value and etcd's 256-byte overhead) comes with it whether
// or not it passes its checks, and that the size is checked before the put's own rules.
#[test]
fn put_cost_and_order() {
    let big = pb::PutRequest {
        value: vec![b'v'; 100],
        ..Default::default()
    };
    let small = ApiConfig {
        max_request_bytes: 50,
        ..ApiConfig::default()
    };
    let refused = put_request(big.clone(), &small);
    assert_eq!(
        (refused.cost, refused.request.unwrap_err()),
        (356, RequestError::TooLarge)
    );
    let refused = put_request(big, &limits(128));
    assert_eq!(
        (refused.cost, refused.request.unwrap_err()),
        (356, RequestError::KeyNotProvided)
    );
}

// Proves etcd's isTxnSerializable on the converted txn: every top-level operation of both
// branches must be a serializable range; a nested txn is not one.
#[test]
fn serializable_txns() {
    let range = |serializable| pb::RequestOp {
        request: Some(Request::RequestRange(pb::RangeRequest {
            key: b"k".to_vec(),
            serializable,
            ..Default::default()
        })),
    };
    let serializable = |t: pb::TxnRequest| txn_is_serializable(&checked(t, 128).unwrap());
    assert!(serializable(txn(vec![], vec![])));
    assert!(serializable(txn(vec![range(true)], vec![range(true)])));
    assert!(!serializable(txn(vec![range(true)], vec![range(false)])));
    assert!(!serializable(txn(
        vec![nested(txn(vec![range(true)], vec![]))],
        vec![]
    )));
}
