//! Chaos testing: real member processes on their own network, faults injected on a seeded
//! schedule, client operations recorded as a history, and a checker that decides whether the
//! history is one a linearizable store could have produced.
//!
//! - [`history`]: what the clients did and saw, with outcomes classified as definite or
//!   indeterminate (a timeout may or may not have taken effect).
//! - [`checker`]: the Wing–Gong–Lowe linearizability search over a register per key, with
//!   memoisation; it gives up with [`checker::Verdict::Unknown`] rather than run forever, and
//!   an unknown verdict is never a pass.
//! - [`net`]: one network namespace per member, partitions as packet filter rules.
//! - [`cluster`]: the member processes (kill -9, SIGSTOP, restart).
//! - [`nemesis`]: the faults and their seeded schedule.
//! - [`workload`]: clients through the `etcd-client` crate.
//! - [`run`]: one scenario end to end, and its report.
//!
//! Running a scenario needs root (namespaces, packet filters), `ip`, `nft` and `setpriv`.

pub mod checker;
pub mod cluster;
pub mod history;
pub mod nemesis;
pub mod net;
pub mod run;
pub mod workload;
