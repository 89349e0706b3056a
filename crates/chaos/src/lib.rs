//! Chaos testing: real member processes, faults injected on a seeded schedule, client
//! operations recorded as a history, and checkers that decide whether the history is one a
//! linearizable store could have produced.
//!
//! - [`history`]: what the clients did and saw, with outcomes classified as definite or
//!   indeterminate (a timeout may or may not have taken effect).
//! - [`checker`]: the Wing–Gong–Lowe linearizability search over a register per key, with
//!   memoisation; it gives up with [`checker::Verdict::Unknown`] rather than run forever, and
//!   an unknown verdict is never a pass.

pub mod checker;
pub mod history;
