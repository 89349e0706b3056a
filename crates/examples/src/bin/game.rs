//! `game`: An item many servers see: exactly one player gets it, every server learns who.
//! See the crate's README. Exits 0 if every invariant held, 1 if one broke, 2 on an error.

fn main() {
    examples::main(
        "game",
        "An item many servers see: exactly one player gets it, every server learns who",
        examples::game::run,
    );
}
