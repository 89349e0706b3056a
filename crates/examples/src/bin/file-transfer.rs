//! `file-transfer`: A file in checksummed chunks, interrupted and resumed, verified with SHA-256.
//! See the crate's README. Exits 0 if every invariant held, 1 if one broke, 2 on an error.

fn main() {
    examples::main(
        "file-transfer",
        "A file in checksummed chunks, interrupted and resumed, verified with SHA-256",
        examples::file_transfer::run,
    );
}
