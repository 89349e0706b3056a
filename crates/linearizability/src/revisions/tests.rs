use super::*;
use crate::history::Revisions;

/// An operation on key `k`: `(process, call, invoked ms, completed ms, outcome, header
/// revision, mod revision)`.
type Row = (usize, Call, u64, u64, Outcome, u64, Option<u64>);

fn history(rows: &[Row]) -> History {
    let mut history = History::new();
    for (process, call, invoked, completed, outcome, header, modified) in rows.iter().cloned() {
        let revisions = Some(Revisions { header, modified });
        history.push(Op::on_k(
            process,
            call,
            (invoked, completed),
            outcome,
            revisions,
        ));
    }
    history
}

fn consistent() -> Vec<Row> {
    vec![
        (0, Call::Read, 0, 1, Outcome::Read(None), 1, None),
        (0, Call::Write(10), 2, 3, Outcome::Written, 2, None),
        (1, Call::Read, 2, 4, Outcome::Read(Some(10)), 2, Some(2)),
        (
            1,
            Call::Cas {
                expected: Some(10),
                new: 11,
            },
            5,
            6,
            Outcome::Cas(true),
            3,
            None,
        ),
        (
            0,
            Call::Cas {
                expected: Some(10),
                new: 12,
            },
            7,
            8,
            Outcome::Cas(false),
            3,
            None,
        ),
        (0, Call::Read, 9, 10, Outcome::Read(Some(11)), 4, Some(3)),
    ]
}

// Proves a history whose revisions tell one consistent story passes, and that each kind of
// anomaly is reported: a revision shared by two writes, a read that replaying the writes does
// not explain, and a revision that goes back in real time.
#[test]
fn each_anomaly_is_found() {
    assert_eq!(verify(&history(&consistent())), Vec::<String>::new());

    let mut twice = consistent();
    twice.push((2, Call::Write(13), 11, 12, Outcome::Written, 3, None));
    let found = verify(&history(&twice));
    assert!(
        found
            .iter()
            .any(|a| a.contains("both took effect at revision 3")),
        "{found:?}"
    );

    let mut stale = consistent();
    stale.push((2, Call::Read, 11, 12, Outcome::Read(Some(10)), 4, Some(2)));
    let found = verify(&history(&stale));
    assert!(found.iter().any(|a| a.contains("in between")), "{found:?}");

    let mut absent = consistent();
    absent.push((2, Call::Read, 11, 12, Outcome::Read(None), 2, None));
    let found = verify(&history(&absent));
    assert!(
        found.iter().any(|a| a.contains("found nothing")),
        "{found:?}"
    );

    let mut moved = consistent();
    moved.push((2, Call::Read, 11, 12, Outcome::Read(Some(11)), 4, Some(4)));
    let found = verify(&history(&moved));
    assert!(
        found
            .iter()
            .any(|a| a.contains("its write took effect at revision 3")),
        "{found:?}"
    );

    let mut back = consistent();
    back.push((2, Call::Read, 11, 12, Outcome::Read(Some(10)), 2, Some(2)));
    let found = verify(&history(&back));
    assert!(found.iter().any(|a| a.contains("below 4")), "{found:?}");
}

// Proves unknown outcomes and operations without revisions constrain nothing: a read may
// show the value of a write whose outcome is unknown, at the revision it names.
#[test]
fn unknown_outcomes_are_left_out() {
    let mut rows = consistent();
    rows.push((
        2,
        Call::Write(20),
        11,
        12,
        Outcome::Unknown("timeout".into()),
        0,
        None,
    ));
    rows.push((3, Call::Read, 13, 14, Outcome::Read(Some(20)), 5, Some(5)));
    assert_eq!(verify(&history(&rows)), Vec::<String>::new());
}
