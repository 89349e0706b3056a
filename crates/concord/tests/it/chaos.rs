//! The chaos scenarios CI runs: the register workload under every fault kind, each other
//! workload (bank, watch, lease, lock, election) under five of them (`CHAOS_FULL=1`: every
//! workload under every fault), each on its own seeded schedule, and the run that proves the
//! harness can fail. Each scenario's history, timeline
//! and member logs are kept under the system's temp directory; a failure prints the command
//! that reproduces it.
//!
//! The members run in network namespaces, so these tests need root (CI runs as root).

use std::path::PathBuf;
use std::time::Duration;

use chaos::checker::Verdict;
use chaos::elections::ElectionConfig;
use chaos::leases::LeaseConfig;
use chaos::locks::LockConfig;
use chaos::nemesis::NemesisKind;
use chaos::run::{run, Scenario, Workload};
use chaos::watches::WatchConfig;
use chaos::workload::{BankConfig, RegisterConfig};

use crate::{binary, slow_tests_enabled};

/// Seconds of workload under faults per scenario.
const DURATION: Duration = Duration::from_secs(12);

/// Seconds of workload under faults per election scenario.
const ELECTION_DURATION: Duration = Duration::from_secs(8);

fn scenario(seed: u64, nemesis: NemesisKind, workload: Workload) -> Scenario {
    let serializable = matches!(&workload, Workload::Register(c) if c.serializable_reads);
    let out: PathBuf = std::env::temp_dir().join(format!(
        "concord-chaos-ci-{}/{}-seed-{seed}-{}{}",
        std::process::id(),
        workload.name(),
        nemesis.name(),
        if serializable { "-serializable" } else { "" }
    ));
    Scenario {
        seed,
        nemesis,
        members: 3,
        duration: DURATION,
        workload,
        checker_budget: 20_000_000,
        binary: binary().to_path_buf(),
        out,
        tls: false,
        encrypted: false,
    }
}

/// A minute of faults that pile up and end with the leader paused (what once left a paused
/// leader stale for a minute): every member must serve again within seconds of the heal.
fn long_overlapping(seed: u64) -> Scenario {
    let mut long = scenario(
        seed,
        NemesisKind::Overlapping,
        Workload::Register(RegisterConfig::default()),
    );
    long.duration = Duration::from_secs(60);
    long
}

/// Every fault kind, each with its own seed counting up from `first_seed`.
fn faults(first_seed: u64) -> Vec<(u64, NemesisKind)> {
    NemesisKind::ALL
        .into_iter()
        .filter(|&kind| kind != NemesisKind::None)
        .zip(first_seed..)
        .map(|(kind, seed)| (seed, kind))
        .collect()
}

/// The fault kinds of `kinds` with the seeds [`faults`] gives them, or every fault kind when
/// `CHAOS_FULL` is set. CI runs the register workload under every fault and each other
/// workload under five (every kind is covered by at least two of them), which keeps the
/// whole run within its time budget; `CHAOS_FULL=1` runs the full matrix.
fn some_faults(first_seed: u64, kinds: [NemesisKind; 5]) -> Vec<(u64, NemesisKind)> {
    let full = std::env::var_os("CHAOS_FULL").is_some();
    faults(first_seed)
        .into_iter()
        .filter(|(_, kind)| full || kinds.contains(kind))
        .collect()
}

/// Runs every scenario, then fails listing each one that did not pass (or in which too
/// little got through to mean anything: half the operations, and 100 of them).
async fn run_all(scenarios: &[Scenario]) {
    run_all_with(scenarios, |(ops, ok, _, _)| ok * 2 > ops && ops >= 100).await;
}

/// [`run_all`] with the workload's own idea of enough: `enough(counts)` on the report's
/// `(ops, ok, failed, unknown)`.
async fn run_all_with(
    scenarios: &[Scenario],
    enough: impl Fn((usize, usize, usize, usize)) -> bool,
) {
    let mut failed = Vec::new();
    for scenario in scenarios {
        let report = run(scenario).await.expect("the scenario runs");
        eprint!("{}", report.summary(scenario));
        if !report.passed() || !enough(report.counts) {
            failed.push(report.summary(scenario));
        }
    }
    assert!(
        failed.is_empty(),
        "failed scenarios:\n{}",
        failed.join("\n")
    );
}

/// Whether the chaos scenario `name` runs: only with the slow tests, and then it needs root
/// (network namespaces and packet filters), which it asserts rather than pass unnoticed.
fn enabled(name: &str) -> bool {
    if !slow_tests_enabled(name) {
        return false;
    }
    assert!(
        is_root(),
        "the chaos scenarios need root (network namespaces)"
    );
    true
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

// Proves the register workload stays linearizable, and every member serves again within
// seconds of the heal, under each fault: kill -9, SIGSTOP, an isolated leader, a split into
// majority and minority, one-way link cuts, a mix, leader kills, faults that pile up, and a
// minute of those ending with the leader paused. Seeds are fixed so a failure replays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_is_linearizable_under_every_fault() {
    if !enabled("register_is_linearizable_under_every_fault") {
        return;
    }
    let scenarios = faults(101)
        .into_iter()
        .map(|(seed, nemesis)| {
            scenario(seed, nemesis, Workload::Register(RegisterConfig::default()))
        })
        .chain(std::iter::once(long_overlapping(120)))
        .collect::<Vec<_>>();
    run_all(&scenarios).await;
}

// Proves the same with 5 members under the mixed faults: kills, pauses, an isolated leader, a
// split into three and two, and one-way cuts; over TLS, with client certificates required on
// the client and peer ports (the workload's clients and the members' Raft streams reconnect
// through TLS after every fault), and with the data encrypted at rest (every kill -9 restarts
// a member from its sealed log and state file).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_members_stay_linearizable_under_mixed_faults() {
    if !enabled("five_members_stay_linearizable_under_mixed_faults") {
        return;
    }
    let scenario = Scenario {
        members: 5,
        tls: true,
        encrypted: true,
        ..scenario(
            107,
            NemesisKind::Mixed,
            Workload::Register(RegisterConfig::default()),
        )
    };
    run_all(&[scenario]).await;
}

// Proves the harness can fail: with reads served member-locally (serializable) while the
// leader is cut off, clients of a stale member read old values, and the checker must report
// the violation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serializable_reads_under_partition_are_caught() {
    if !enabled("serializable_reads_under_partition_are_caught") {
        return;
    }
    let register = RegisterConfig {
        serializable_reads: true,
        ..RegisterConfig::default()
    };
    let scenario = scenario(
        201,
        NemesisKind::PartitionLeader,
        Workload::Register(register),
    );
    let report = run(&scenario).await.expect("the scenario runs");
    eprint!("{}", report.summary(&scenario));
    assert!(
        matches!(report.verdict, Some(Verdict::Violation(_))),
        "the checker missed stale reads: {:?}",
        report.verdict
    );
    assert!(std::fs::read_to_string(report.out.join("violation.txt")).is_ok());
}

// Proves no money is created or lost and no transfer is applied twice: transfers between
// accounts are txns guarded by the accounts' mod revisions, and every read of all accounts,
// under faults (kills, a split in halves, one-way cuts, faults that pile up, members
// replaced), shows the opening total with no negative balance, at
// a revision that never goes back for its client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bank_keeps_its_total_under_faults() {
    if !enabled("bank_keeps_its_total_under_faults") {
        return;
    }
    let scenarios = some_faults(
        301,
        [
            NemesisKind::Kill,
            NemesisKind::PartitionHalves,
            NemesisKind::OneWay,
            NemesisKind::Overlapping,
            NemesisKind::Membership,
        ],
    )
    .into_iter()
    .map(|(seed, nemesis)| scenario(seed, nemesis, Workload::Bank(BankConfig::default())))
    .collect::<Vec<_>>();
    run_all(&scenarios).await;
}

// Proves etcd's watch guarantees hold under faults: a watcher per member follows every change
// (requiring a leader, resuming on the next member from the revision after the last one it
// saw whenever its stream breaks) under pauses, an isolated leader, leader kills, mixed faults
// and members replaced; every
// watcher's events are exactly the history's, in order, never duplicated or split within a
// revision, progress notifications never run ahead of events, every acknowledged write is
// in the history, and every watcher reaches the final write after the heal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watches_keep_their_guarantees_under_faults() {
    if !enabled("watches_keep_their_guarantees_under_faults") {
        return;
    }
    let scenarios = some_faults(
        401,
        [
            NemesisKind::Pause,
            NemesisKind::PartitionLeader,
            NemesisKind::KillLeader,
            NemesisKind::Mixed,
            NemesisKind::Membership,
        ],
    )
    .into_iter()
    .map(|(seed, nemesis)| scenario(seed, nemesis, Workload::Watch(WatchConfig::default())))
    .collect::<Vec<_>>();
    run_all(&scenarios).await;
}

// Proves lease expiry keeps its bounds: clients keep leases alive for a while, then let them
// go, reading their keys all along. No lease ever expires before the TTL after the last
// keepalive the cluster acknowledged (under kills, pauses, an isolated leader, leader kills and
// faults that pile up, and without faults), and every
// lease expires after it is let go: within 1.5 s of that moment without faults, within a TTL
// and the longest fault more with them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_never_expire_early_and_always_expire() {
    if !enabled("leases_never_expire_early_and_always_expire") {
        return;
    }
    let mut scenarios: Vec<Scenario> = std::iter::once((500, NemesisKind::None))
        .chain(some_faults(
            501,
            [
                NemesisKind::Kill,
                NemesisKind::Pause,
                NemesisKind::PartitionLeader,
                NemesisKind::KillLeader,
                NemesisKind::Overlapping,
            ],
        ))
        .map(|(seed, nemesis)| {
            let config = LeaseConfig::new(nemesis != NemesisKind::None);
            scenario(seed, nemesis, Workload::Lease(config))
        })
        .collect();
    // etcd's minimum TTL (2 s) while the leader is killed again and again: keepalives must
    // be answered by each new leader before the client gives its lease up.
    let mut shortest = LeaseConfig::new(true);
    shortest.ttl = 2;
    scenarios.push(scenario(
        520,
        NemesisKind::KillLeader,
        Workload::Lease(shortest),
    ));
    // Each judged lease lives several seconds: 10 to 40 per run (fewest while the leader is
    // cut off again and again, when a member's clients wait out every partition).
    run_all_with(&scenarios, |(_, judged, _, _)| judged >= 8).await;
}

// Proves locks guard a fenced resource under faults (a split in halves, one-way cuts, mixed
// faults, leader kills, members replaced): when Lock answers, its key is
// the oldest of the lock's queue at the answer's revision; no token (the key's creation
// revision) is handed out twice, and a lock taken after another was released has a larger
// one; the resource's fence accepts writes only in token order; and after the heal the lock
// can be taken again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locks_guard_a_fenced_resource_under_faults() {
    if !enabled("locks_guard_a_fenced_resource_under_faults") {
        return;
    }
    let scenarios = some_faults(
        601,
        [
            NemesisKind::PartitionHalves,
            NemesisKind::OneWay,
            NemesisKind::Mixed,
            NemesisKind::KillLeader,
            NemesisKind::Membership,
        ],
    )
    .into_iter()
    .map(|(seed, nemesis)| scenario(seed, nemesis, Workload::Lock(LockConfig::default())))
    .collect::<Vec<_>>();
    // Holders wait out each other's leases under faults: a handful of acquisitions is a run.
    run_all_with(&scenarios, |(_, acquired, _, _)| acquired >= 8).await;
}

// Proves elections keep one leader per term under faults (kills, pauses, an isolated leader,
// one-way cuts, faults that pile up): every Campaign answer names
// the oldest live key of the election at its revision, no creation revision is handed out
// twice, and the answers' leader keys never overlap (each is deleted no later than the next
// leader is told it leads); every observer sees leaders in creation-revision order, only
// keys that led, with the values they had; every write the fenced resource accepted (read
// back from its history, answered or not) was made under the key that led at its revision,
// also by leaders whose lease lapsed while they went on writing; and after the heal someone
// wins again. The runs are shorter than the others' to keep CI's time in bounds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn elections_keep_one_leader_per_term_under_faults() {
    if !enabled("elections_keep_one_leader_per_term_under_faults") {
        return;
    }
    let scenarios = some_faults(
        701,
        [
            NemesisKind::Kill,
            NemesisKind::Pause,
            NemesisKind::PartitionLeader,
            NemesisKind::OneWay,
            NemesisKind::Overlapping,
        ],
    )
    .into_iter()
    .map(|(seed, nemesis)| Scenario {
        duration: ELECTION_DURATION,
        ..scenario(seed, nemesis, Workload::Election(ElectionConfig::default()))
    })
    .collect::<Vec<_>>();
    // Terms last a fraction of a second, or a TTL and more when a lease lapses; with the
    // members split for most of an 8 s run only a few get through (3 on a loaded machine):
    // at least two, one of them after the heal (the liveness check), make a run mean
    // something.
    run_all_with(&scenarios, |(_, terms, _, _)| terms >= 2).await;
}
