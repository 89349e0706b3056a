//! Chaos testing: real member processes on their own network, faults injected on a seeded
//! schedule, client operations recorded as a history, and a checker that decides whether the
//! history is one a linearizable store could have produced.
//!
//! - [`history`] and [`checker`] (from the `linearizability` crate): what the clients did and
//!   saw, and the Wing–Gong–Lowe search that judges it; an unknown verdict is never a pass.
//! - [`net`]: one network namespace per member, partitions as packet filter rules.
//! - [`cluster`]: the member processes (kill -9, SIGSTOP, restart).
//! - [`nemesis`]: the faults and their seeded schedule.
//! - [`workload`]: clients through the `etcd-client` crate.
//! - [`run`]: one scenario end to end, and its report.
//!
//! Running a scenario needs root (namespaces, packet filters), `ip`, `nft` and `setpriv`.

pub use linearizability::{checker, history};
pub mod cluster;
pub mod nemesis;
pub mod net;
pub mod run;
pub mod workload;
