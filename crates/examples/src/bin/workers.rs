//! `workers`: Registration by lease, a leader by election, the leader's work fenced.
//! See the crate's README. Exits 0 if every invariant held, 1 if one broke, 2 on an error.

fn main() {
    examples::main(
        "workers",
        "Registration by lease, a leader by election, the leader's work fenced",
        examples::workers::run,
    );
}
