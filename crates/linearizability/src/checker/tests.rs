use proptest::prelude::*;

use super::*;
use crate::history::{Call, History, Op, Outcome};

const BUDGET: u64 = 1_000_000;

fn cas(expected: Option<u64>, new: u64) -> Call {
    Call::Cas { expected, new }
}

/// Builds a history on key `k` from `(call, invoked, completed, outcome)`; times in ms.
fn history(ops: &[(Call, u64, u64, Outcome)]) -> History {
    let mut history = History::new();
    for (process, (call, invoked, completed, outcome)) in ops.iter().cloned().enumerate() {
        history.push(Op::on_k(process, call, (invoked, completed), outcome, None));
    }
    history
}

fn read(v: Option<Value>) -> Outcome {
    Outcome::Read(v)
}

fn unknown() -> Outcome {
    Outcome::Unknown("request timed out".into())
}

fn violation(verdict: Verdict) -> Violation {
    match verdict {
        Verdict::Violation(v) => v,
        other => panic!("expected a violation, got {other:?}"),
    }
}

// Proves sequential histories that follow a register pass, and ones that do not fail.
#[test]
fn sequential_histories() {
    let ok = history(&[
        (Call::Read, 0, 1, read(None)),
        (Call::Write(1), 2, 3, Outcome::Written),
        (Call::Read, 4, 5, read(Some(1))),
        (cas(Some(1), 2), 6, 7, Outcome::Cas(true)),
        (cas(Some(1), 3), 8, 9, Outcome::Cas(false)),
        (Call::Read, 10, 11, read(Some(2))),
    ]);
    assert_eq!(check(&ok, BUDGET), Verdict::Linearizable);

    // A stale read: the write had completed before the read began.
    let stale = history(&[
        (Call::Write(1), 0, 1, Outcome::Written),
        (Call::Write(2), 2, 3, Outcome::Written),
        (Call::Read, 4, 5, read(Some(1))),
    ]);
    let v = violation(check(&stale, BUDGET));
    assert_eq!(v.key, "k");
    assert_eq!(v.longest_prefix, vec![0, 1]);
    assert_eq!(v.state_after_prefix, Some(2));
    assert_eq!(v.stuck_on, vec![2]);

    // A value no one wrote.
    let invented = history(&[(Call::Read, 0, 1, read(Some(9)))]);
    assert!(matches!(check(&invented, BUDGET), Verdict::Violation(_)));

    // A compare that "did not hold" although the register held exactly that.
    let lying_cas = history(&[
        (Call::Write(1), 0, 1, Outcome::Written),
        (cas(Some(1), 2), 2, 3, Outcome::Cas(false)),
    ]);
    assert!(matches!(check(&lying_cas, BUDGET), Verdict::Violation(_)));
}

// Proves concurrency is honoured: overlapping operations may take effect in either order, but
// both orders must explain every read.
#[test]
fn concurrent_histories() {
    // The read overlaps both writes: it may see either.
    for seen in [Some(1), Some(2), None] {
        let h = history(&[
            (Call::Write(1), 0, 10, Outcome::Written),
            (Call::Write(2), 0, 10, Outcome::Written),
            (Call::Read, 0, 10, read(seen)),
        ]);
        assert_eq!(check(&h, BUDGET), Verdict::Linearizable, "{seen:?}");
    }
    // Two reads after both writes must agree with one final order; seeing 1 then 2 then 1 is
    // impossible.
    let flip = history(&[
        (Call::Write(1), 0, 10, Outcome::Written),
        (Call::Write(2), 0, 10, Outcome::Written),
        (Call::Read, 11, 12, read(Some(2))),
        (Call::Read, 13, 14, read(Some(1))),
    ]);
    assert!(matches!(check(&flip, BUDGET), Verdict::Violation(_)));
    // Two compare-and-sets from the same expected value cannot both hold.
    let double = history(&[
        (Call::Write(1), 0, 1, Outcome::Written),
        (cas(Some(1), 2), 2, 5, Outcome::Cas(true)),
        (cas(Some(1), 3), 2, 5, Outcome::Cas(true)),
    ]);
    assert!(matches!(check(&double, BUDGET), Verdict::Violation(_)));
    // Another key's operations do not affect this one's.
    let mut two_keys = history(&[(Call::Write(1), 0, 1, Outcome::Written)]);
    two_keys.push(Op {
        id: 0,
        process: 9,
        key: "other".into(),
        call: Call::Read,
        invoked_ns: 2_000_000,
        completed_ns: Some(3_000_000),
        outcome: read(None),
        revisions: None,
    });
    assert_eq!(check(&two_keys, BUDGET), Verdict::Linearizable);
}

// Proves outcomes are classified as they must be: an unknown write may appear at any later
// time or never; a definite failure must never appear; an unknown read constrains nothing.
#[test]
fn unknown_and_failed_outcomes() {
    // Seen long after it timed out: fine, it took effect late.
    let late = history(&[
        (Call::Write(1), 0, 1, unknown()),
        (Call::Read, 5, 6, read(None)),
        (Call::Read, 7, 8, read(Some(1))),
    ]);
    assert_eq!(check(&late, BUDGET), Verdict::Linearizable);
    // Never seen: fine too.
    let never = history(&[
        (Call::Write(1), 0, 1, unknown()),
        (Call::Read, 5, 6, read(None)),
    ]);
    assert_eq!(check(&never, BUDGET), Verdict::Linearizable);
    // But not seen before it was invoked.
    let early = history(&[
        (Call::Read, 0, 1, read(Some(1))),
        (Call::Write(1), 2, 3, unknown()),
    ]);
    assert!(matches!(check(&early, BUDGET), Verdict::Violation(_)));
    // Once seen, it cannot un-happen.
    let undone = history(&[
        (Call::Write(1), 0, 1, unknown()),
        (Call::Read, 5, 6, read(Some(1))),
        (Call::Read, 7, 8, read(None)),
    ]);
    assert!(matches!(check(&undone, BUDGET), Verdict::Violation(_)));
    // A definite failure that shows up is a lost guarantee.
    let failed = history(&[
        (
            Call::Write(1),
            0,
            1,
            Outcome::Failed("etcdserver: request is too large".into()),
        ),
        (Call::Read, 5, 6, read(Some(1))),
    ]);
    assert!(matches!(check(&failed, BUDGET), Verdict::Violation(_)));
    // An unknown compare-and-set takes effect only if its compare held where it lands.
    let cas_can = history(&[
        (Call::Write(1), 0, 1, Outcome::Written),
        (cas(Some(1), 2), 2, 3, unknown()),
        (Call::Read, 4, 5, read(Some(2))),
    ]);
    assert_eq!(check(&cas_can, BUDGET), Verdict::Linearizable);
    let cas_cannot = history(&[
        (Call::Write(5), 0, 1, Outcome::Written),
        (cas(Some(1), 2), 2, 3, unknown()),
        (Call::Read, 4, 5, read(Some(2))),
    ]);
    assert!(matches!(check(&cas_cannot, BUDGET), Verdict::Violation(_)));
    // An unknown read is left out, whatever it claims.
    let unknown_read = history(&[(Call::Read, 0, 1, unknown())]);
    assert_eq!(check(&unknown_read, BUDGET), Verdict::Linearizable);
}

// Proves the checker gives up instead of passing when the budget runs out.
#[test]
fn out_of_budget_is_unknown_not_a_pass() {
    let mut ops = Vec::new();
    for i in 0..12 {
        ops.push((Call::Write(i), 0, 100, Outcome::Written));
    }
    ops.push((Call::Read, 101, 102, read(Some(99))));
    let h = history(&ops);
    assert!(matches!(check(&h, 50), Verdict::Unknown { steps: 51, .. }));
    // With budget it finds the violation (every write order ends in a written value).
    assert!(matches!(check(&h, 100_000_000), Verdict::Violation(_)));
}

// Proves many unknown writes no one observed do not blow up the search, while one that was
// observed, or a refused compare-and-set after them, keeps them in play.
#[test]
fn unobserved_unknown_writes_are_cheap() {
    let mut ops = vec![(Call::Write(1), 0, 1, Outcome::Written)];
    for i in 0..60 {
        ops.push((Call::Write(100 + i), 2, 3, unknown()));
    }
    ops.push((Call::Read, 10, 11, read(Some(1))));
    assert_eq!(check(&history(&ops), 10_000), Verdict::Linearizable);
    // Observed: the read of 130 needs write 130 to have happened.
    let mut observed = ops.clone();
    observed.push((Call::Read, 12, 13, read(Some(130))));
    assert_eq!(check(&history(&observed), 10_000), Verdict::Linearizable);
    // A refused compare-and-set that only an unknown write explains: the register held 1,
    // "did not hold 1" needs a write in between, and one of the unknown writes provides it.
    let refused = vec![
        (Call::Write(1), 0, 1, Outcome::Written),
        (Call::Write(7), 2, 3, unknown()),
        (cas(Some(1), 8), 4, 5, Outcome::Cas(false)),
    ];
    assert_eq!(check(&history(&refused), BUDGET), Verdict::Linearizable);
    let unexplained = vec![
        (Call::Write(1), 0, 1, Outcome::Written),
        (cas(Some(1), 8), 4, 5, Outcome::Cas(false)),
        (Call::Write(7), 6, 7, unknown()),
    ];
    assert!(matches!(
        check(&history(&unexplained), BUDGET),
        Verdict::Violation(_)
    ));
}

/// A register run by concurrent clients, each operation taking effect at a point inside its
/// interval: a history that is linearizable by construction.
fn simulated(ops: &[(u8, u8, u8, u8)]) -> History {
    let mut history = History::new();
    let mut state: Option<Value> = None;
    // (invoked, takes effect, completed, call, process) sorted by the effect time.
    let mut planned: Vec<(u64, u64, u64, Call, usize)> = ops
        .iter()
        .enumerate()
        .map(|(i, &(kind, start, effect, end))| {
            let invoked = u64::from(start);
            let effect_at = invoked + u64::from(effect);
            let completed = effect_at + u64::from(end);
            let call = match kind % 3 {
                0 => Call::Read,
                1 => Call::Write(i as u64 + 1),
                _ => cas(if i % 2 == 0 { None } else { Some(i as u64) }, i as u64 + 1),
            };
            (invoked, effect_at, completed, call, i)
        })
        .collect();
    planned.sort_by_key(|p| (p.1, p.4));
    for (invoked, _, completed, call, process) in planned {
        let outcome = match call {
            Call::Read => Outcome::Read(state),
            Call::Write(v) => {
                state = Some(v);
                Outcome::Written
            }
            Call::Cas { expected, new } => {
                let held = state == expected;
                if held {
                    state = Some(new);
                }
                Outcome::Cas(held)
            }
        };
        history.push(Op {
            id: 0,
            process,
            key: "k".into(),
            call,
            invoked_ns: invoked,
            completed_ns: Some(completed),
            outcome,
            revisions: None,
        });
    }
    history
}

proptest! {
    // Proves histories linearizable by construction pass, also with some outcomes turned
    // unknown; and that changing one read to a value never written makes them fail.
    #[test]
    fn constructed_histories(
        ops in proptest::collection::vec((0u8..3, 0u8..40, 0u8..20, 0u8..20), 1..14),
        blur in proptest::collection::vec(any::<bool>(), 14),
    ) {
        let h = simulated(&ops);
        prop_assert_eq!(check(&h, BUDGET), Verdict::Linearizable);
        let mut blurred = History::new();
        for (op, blur) in h.ops().iter().zip(&blur) {
            let mut op = op.clone();
            if *blur && op.call != Call::Read {
                op.outcome = unknown();
            }
            blurred.push(op);
        }
        prop_assert_eq!(check(&blurred, BUDGET), Verdict::Linearizable);
        if let Some(position) = h.ops().iter().position(|op| op.call == Call::Read) {
            let mut broken = History::new();
            for (i, op) in h.ops().iter().enumerate() {
                let mut op = op.clone();
                if i == position {
                    op.outcome = Outcome::Read(Some(1000));
                }
                broken.push(op);
            }
            prop_assert!(matches!(check(&broken, BUDGET), Verdict::Violation(_)));
        }
    }
}
