//! `shop`: A flash sale with reservations held by leases: never oversold.
//! See the crate's README. Exits 0 if every invariant held, 1 if one broke, 2 on an error.

fn main() {
    examples::main(
        "shop",
        "A flash sale with reservations held by leases: never oversold",
        examples::shop::run,
    );
}
