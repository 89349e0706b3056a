//! `bank`: Concurrent transfers as txns guarded by mod revisions: the total never changes.
//! See the crate's README. Exits 0 if every invariant held, 1 if one broke, 2 on an error.

fn main() {
    examples::main(
        "bank",
        "Concurrent transfers as txns guarded by mod revisions: the total never changes",
        examples::bank::run,
    );
}
