//! Whether what clients saw is something a linearizable store could have produced.
//!
//! - [`history`]: what the clients did and saw, with outcomes classified as definite or
//!   indeterminate (a timeout may or may not have taken effect).
//! - [`checker`]: the Wing–Gong–Lowe linearizability search over a register per key, with
//!   memoisation; it gives up with [`checker::Verdict::Unknown`] rather than run forever, and
//!   an unknown verdict is never a pass.
//! - [`revisions`]: the revision-order verifier, for histories that recorded etcd's
//!   revisions: no search, so it decides long histories the search cannot.
//!
//! Pure: no IO, no clock. The chaos harness (real processes) and the simulation (one thread)
//! both record histories and judge them here.

pub mod checker;
pub mod history;
pub mod revisions;
