//! Chaos testing: real member processes on their own network, faults injected on a seeded
//! schedule, client operations recorded as a history, and a checker that decides whether the
//! history is one a linearizable store could have produced.
//!
//! - [`history`], [`checker`] and [`revisions`] (from the `linearizability` crate): what the
//!   clients did and saw, the Wing–Gong–Lowe search that judges it (an unknown verdict is
//!   never a pass), and the revision-order verifier that checks it without a search.
//! - [`net`]: one network namespace per member, partitions as packet filter rules.
//! - [`cluster`]: the member processes (kill -9, SIGSTOP, restart).
//! - [`nemesis`]: the faults and their seeded schedule.
//! - [`workload`]: clients through the `etcd-client` crate (registers, bank).
//! - [`watches`]: the watch workload and the validator of etcd's watch guarantees.
//! - [`leases`]: the lease workload: leases never expire early, and do expire.
//! - [`locks`]: the lock workload: locks guarding a fenced resource.
//! - [`elections`]: the election workload: one leader per term, ordered observers, a fenced
//!   resource.
//! - [`run`]: one scenario end to end, and its report; a scenario may run over TLS (its own
//!   CA, client certificates required on both ports).
//!
//! Running a scenario needs root (namespaces, packet filters), `ip`, `nft` and `setpriv`.

pub use linearizability::{checker, history, revisions};
pub mod cluster;
pub mod elections;
pub mod leases;
pub mod locks;
pub mod nemesis;
pub mod net;
pub mod run;
mod security;
pub mod watches;
pub mod workload;
