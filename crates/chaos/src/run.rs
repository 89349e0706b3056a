//! One chaos run: a cluster on its own network, a workload, a nemesis on a seeded schedule,
//! then heal, a liveness check and the checker's verdict. Everything the run saw is written to
//! its directory.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context as _;

use crate::checker::{self, Verdict};
use crate::cluster::{Members, CLIENT_PORT};
use crate::elections::{self, ElectionConfig};
use crate::history::{History, Outcome};
use crate::leases::{self, LeaseConfig};
use crate::locks::{self, LockConfig};
use crate::nemesis::{schedule, Fault, NemesisKind, Rng, Target};
use crate::net::Network;
use crate::revisions;
use crate::watches::{self, WatchConfig};
use crate::workload::{self, BankConfig, RegisterConfig};

/// What the clients do.
#[derive(Clone, Debug)]
pub enum Workload {
    /// Reads, writes and compare-and-sets on registers, checked for linearizability.
    Register(RegisterConfig),
    /// Transfers between accounts as txns, every read of all accounts checked for the total.
    Bank(BankConfig),
    /// Writes followed by a watcher per member, checked against etcd's watch guarantees.
    Watch(WatchConfig),
    /// Leases kept alive and let go, checked never to expire early and always to expire.
    Lease(LeaseConfig),
    /// Locks guarding a fenced resource.
    Lock(LockConfig),
    /// Campaigners on one election writing a fenced resource, and observers.
    Election(ElectionConfig),
}

impl Workload {
    /// The name used on the command line.
    #[must_use]
    pub fn name(&self) -> &'static str {
        match self {
            Workload::Register(_) => "register",
            Workload::Bank(_) => "bank",
            Workload::Watch(_) => "watch",
            Workload::Lease(_) => "lease",
            Workload::Lock(_) => "lock",
            Workload::Election(_) => "election",
        }
    }
}

/// What to run.
#[derive(Clone, Debug)]
pub struct Scenario {
    /// The seed every random choice derives from.
    pub seed: u64,
    /// The fault kind.
    pub nemesis: NemesisKind,
    /// Members (3 or 5).
    pub members: usize,
    /// How long the workload runs under faults.
    pub duration: Duration,
    /// The workload.
    pub workload: Workload,
    /// Search steps the checker may spend per key.
    pub checker_budget: u64,
    /// The `concord` binary.
    pub binary: PathBuf,
    /// Where the run writes its history, timeline, verdict and member logs.
    pub out: PathBuf,
    /// Whether members serve clients and peers over TLS, with client certificates required
    /// on both ports (the run makes its own CA in `<out>/pki`).
    pub tls: bool,
    /// Whether members encrypt their data at rest (the run makes its key file,
    /// `<out>/at-rest.key`).
    pub encrypted: bool,
}

impl Scenario {
    /// The command that runs this scenario again.
    #[must_use]
    pub fn repro_command(&self) -> String {
        let mut command = format!(
            "cargo run --release -p chaos -- --workload {} --seed {} --nemesis {} --members {} --duration {}",
            self.workload.name(),
            self.seed,
            self.nemesis.name(),
            self.members,
            self.duration.as_secs()
        );
        if matches!(&self.workload, Workload::Register(c) if c.serializable_reads) {
            command.push_str(" --serializable-reads");
        }
        if self.tls {
            command.push_str(" --tls");
        }
        if self.encrypted {
            command.push_str(" --encrypted");
        }
        command
    }
}

/// What a run found.
#[derive(Debug)]
pub struct Report {
    /// The linearizability checker's verdict (register workload).
    pub verdict: Option<Verdict>,
    /// Everything the checks found wrong with the history; empty for a pass.
    pub problems: Vec<String>,
    /// Whether every member served a linearizable read within [`RECOVERY_BOUND`] of the
    /// final heal.
    pub live: bool,
    /// Operations recorded, and how many were acknowledged, failed, unknown.
    pub counts: (usize, usize, usize, usize),
    /// Members that exited without being killed.
    pub crashed: Vec<(usize, String)>,
    /// The run's directory.
    pub out: PathBuf,
}

impl Report {
    /// A pass: linearizable, live, nothing crashed. An unknown verdict is not a pass.
    #[must_use]
    pub fn passed(&self) -> bool {
        self.problems.is_empty() && self.live && self.crashed.is_empty()
    }

    /// One paragraph for a person.
    #[must_use]
    pub fn summary(&self, scenario: &Scenario) -> String {
        let (ops, ok, failed, unknown) = self.counts;
        let mut text = format!(
            "{} seed {} nemesis {} members {}: {} ({ops} ops: {ok} ok, {failed} failed, {unknown} unknown); live: {}; crashed: {:?}\n",
            scenario.workload.name(),
            scenario.seed,
            scenario.nemesis.name(),
            scenario.members,
            match self.problems.first() {
                None => "ok".to_string(),
                Some(first) => format!("{} PROBLEM(S), first: {first}", self.problems.len()),
            },
            self.live,
            self.crashed,
        );
        let _ = writeln!(
            text,
            "history, timeline and member logs: {}",
            self.out.display()
        );
        let _ = writeln!(text, "reproduce: {}", scenario.repro_command());
        text
    }
}

/// A line in the run's nemesis log, with the time since the start.
fn note(log: &mut String, clock: Instant, text: &str) {
    let _ = writeln!(log, "{:>9.3}s {text}", clock.elapsed().as_secs_f64());
}

/// A member's status, or `None` if it does not answer within half a second.
async fn status(endpoint: &str) -> Option<etcd_client::StatusResponse> {
    let ask = async {
        let mut client =
            etcd_client::Client::connect([endpoint], Some(crate::security::options())).await?;
        client.status().await
    };
    tokio::time::timeout(Duration::from_millis(500), ask)
        .await
        .ok()?
        .ok()
}

/// The index of the member that leads now, as the members that answer say.
async fn leader(endpoints: &[String]) -> Option<usize> {
    let mut ids = Vec::new();
    let mut leaders = Vec::new();
    for endpoint in endpoints {
        let status = status(endpoint).await;
        ids.push(
            status
                .as_ref()
                .and_then(|s| s.header())
                .map(|h| h.member_id()),
        );
        leaders.extend(status.map(|s| s.leader()).filter(|&l| l != 0));
    }
    leaders
        .iter()
        .find_map(|&l| ids.iter().position(|&id| id == Some(l)))
}

async fn resolve(target: Target, endpoints: &[String], rng: &mut Rng) -> usize {
    match target {
        Target::Member(i) => i,
        Target::Leader => match leader(endpoints).await {
            Some(i) => i,
            None => rng.below(endpoints.len() as u64) as usize,
        },
    }
}

/// Injects `fault`; returns what was done, for the log.
async fn inject(
    fault: &Fault,
    network: &Network,
    members: &mut Members,
    endpoints: &[String],
    rng: &mut Rng,
) -> anyhow::Result<String> {
    let n = members.len();
    Ok(match fault {
        Fault::Kill(target) => {
            let i = resolve(*target, endpoints, rng).await;
            members.kill(i);
            format!("kill -9 m{i}")
        }
        Fault::Pause(target) => {
            let i = resolve(*target, endpoints, rng).await;
            members.pause(i);
            format!("SIGSTOP m{i}")
        }
        Fault::Isolate(target) => {
            let i = resolve(*target, endpoints, rng).await;
            let rest: Vec<usize> = (0..n).filter(|&j| j != i).collect();
            network.partition(&[i], &rest)?;
            format!("isolate m{i}")
        }
        Fault::Split(minority) => {
            let rest: Vec<usize> = (0..n).filter(|j| !minority.contains(j)).collect();
            network.partition(minority, &rest)?;
            format!("partition {minority:?} | {rest:?}")
        }
        Fault::Cut(links) => {
            let mut done = Vec::new();
            for (from, to) in links {
                let from = resolve(*from, endpoints, rng).await;
                if from != *to {
                    network.cut(from, *to)?;
                    done.push(format!("m{from}->m{to}"));
                }
            }
            format!("cut {}", done.join(" "))
        }
        Fault::Replace(target) => {
            let i = resolve(*target, endpoints, rng).await;
            replace(i, members, endpoints).await?
        }
    })
}

/// How long each part of a replacement may take: the removal (refusals while the cluster
/// settles are retried), the removed member's stop, the addition.
const MEMBERSHIP_DEADLINE: Duration = Duration::from_secs(10);

/// The member of `list` whose peer URLs include `peer`.
fn member_at(list: &[etcd_client::Member], peer: &str) -> Option<u64> {
    list.iter()
        .find(|m| m.peer_urls().iter().any(|u| u == peer))
        .map(etcd_client::Member::id)
}

/// Replaces member `i` as an operator replaces a machine, through the other members:
/// `member remove`, wait for it to stop (a removed member stops on its own; it is killed if
/// it has not within the deadline), wipe its data, `member add` its peer URL again, and
/// start it with `--initial-cluster-state existing`. A removal still refused at the deadline
/// skips the step; a member removed but never added back fails the run.
async fn replace(i: usize, members: &mut Members, endpoints: &[String]) -> anyhow::Result<String> {
    let others: Vec<&str> = endpoints
        .iter()
        .enumerate()
        .filter(|&(j, _)| j != i)
        .map(|(_, e)| e.as_str())
        .collect();
    let options = crate::security::options()
        .with_connect_timeout(Duration::from_secs(2))
        .with_timeout(Duration::from_secs(3));
    let mut client = etcd_client::Client::connect(others, Some(options))
        .await
        .context("connect for a membership change")?;
    let peer = members.peer_url(i).to_string();
    let list = |client: &mut etcd_client::Client| {
        let mut client = client.clone();
        async move { client.member_list().await.map(|l| l.members().to_vec()) }
    };

    let deadline = Instant::now() + MEMBERSHIP_DEADLINE;
    let removed = loop {
        let outcome = match list(&mut client).await {
            Ok(listed) => match member_at(&listed, &peer) {
                // An earlier attempt that timed out took effect.
                None => break None,
                Some(id) => client.member_remove(id).await.map(|_| Some(id)),
            },
            Err(e) => Err(e),
        };
        match outcome {
            Ok(id) => break id,
            Err(e) if Instant::now() >= deadline => {
                return Ok(format!(
                    "replace m{i}: removal refused until the deadline: {e}"
                ));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(300)).await,
        }
    };
    let on_its_own = members.wait_exit(i, MEMBERSHIP_DEADLINE).await;

    let deadline = Instant::now() + MEMBERSHIP_DEADLINE;
    let listed = loop {
        let added = client.member_add([peer.as_str()], None).await;
        // Read back, whether or not the answer arrived: a timed-out addition may have
        // been applied.
        match list(&mut client).await {
            Ok(listed) if member_at(&listed, &peer).is_some() => break listed,
            _ if Instant::now() >= deadline => anyhow::bail!(
                "m{i} was removed but could not be added back within {MEMBERSHIP_DEADLINE:?}: \
                 {added:?}"
            ),
            _ => tokio::time::sleep(Duration::from_millis(300)).await,
        }
    };
    let added = member_at(&listed, &peer).expect("listed");
    // Names by host: the member on host j is m{j}, whoever it replaced.
    let initial: Vec<String> = listed
        .iter()
        .filter_map(|m| {
            let url = m.peer_urls().first()?;
            let host = (0..members.len()).find(|&j| members.peer_url(j) == url)?;
            Some(format!("m{host}={url}"))
        })
        .collect();
    members.start_replacement(i, &initial.join(","))?;
    Ok(format!(
        "replace m{i}: removed {} ({}), added {added:x}",
        removed.map_or("earlier".to_string(), |id| format!("{id:x}")),
        if on_its_own {
            "it stopped on its own"
        } else {
            "killed: it had not stopped"
        }
    ))
}

/// How soon after the final heal every member must serve linearizable reads again: killed
/// members restart, paused ones continue, a stale leader steps down within an election
/// timeout of running again, and a new leader is elected.
pub const RECOVERY_BOUND: Duration = Duration::from_secs(10);

/// The members that did not answer a linearizable read within `timeout`.
async fn every_member_serves(endpoints: &[String], timeout: Duration) -> Vec<usize> {
    let deadline = Instant::now() + timeout;
    let mut pending: Vec<usize> = (0..endpoints.len()).collect();
    while !pending.is_empty() && Instant::now() < deadline {
        let mut still = Vec::new();
        for &i in &pending {
            let served = async {
                let mut client = etcd_client::Client::connect(
                    [endpoints[i].as_str()],
                    Some(crate::security::options()),
                )
                .await?;
                client.get("liveness", None).await?;
                anyhow::Ok(())
            };
            if !matches!(
                tokio::time::timeout(Duration::from_secs(2), served).await,
                Ok(Ok(()))
            ) {
                still.push(i);
            }
        }
        pending = still;
        if !pending.is_empty() {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    pending
}

fn write(out: &Path, name: &str, text: &str) -> anyhow::Result<()> {
    std::fs::write(out.join(name), text).with_context(|| format!("write {name}"))
}

/// Writes a workload's history as `history.json`.
fn write_json(out: &Path, history: &impl serde::Serialize) -> anyhow::Result<()> {
    let json = serde_json::to_string(history).context("encode the history")?;
    write(out, "history.json", &json)
}

/// Runs `scenario`. The network and the members are removed when it returns, also on error.
///
/// # Errors
/// If the network or the members cannot be set up, or the workload's clients cannot start.
pub async fn run(scenario: &Scenario) -> anyhow::Result<Report> {
    anyhow::ensure!(
        !scenario.out.exists(),
        "{} already exists; a run writes into a directory of its own",
        scenario.out.display()
    );
    std::fs::create_dir_all(&scenario.out)?;
    let network = Network::create(scenario.members)?;
    let pki = if scenario.tls {
        let ips: Vec<String> = network.hosts().iter().map(|h| h.ip.to_string()).collect();
        Some(crate::security::RunPki::make(&scenario.out, &ips)?)
    } else {
        None
    };
    let _clients = crate::security::RunGuard::begin(
        pki.as_ref()
            .map(crate::security::RunPki::client_tls)
            .transpose()?,
    )?;
    let mut extra_flags = pki
        .as_ref()
        .map(crate::security::RunPki::member_flags)
        .unwrap_or_default();
    if scenario.encrypted {
        let key_file = crate::security::write_key_file(&scenario.out)?;
        extra_flags.push(format!("--encryption-key-file={}", key_file.display()));
    }
    let scheme = if scenario.tls { "https" } else { "http" };
    let mut members = Members::start(
        &scenario.binary,
        &network,
        &scenario.out,
        scheme,
        &extra_flags,
    )?;
    let endpoints: Vec<String> = network
        .hosts()
        .iter()
        .map(|h| format!("{scheme}://{}:{CLIENT_PORT}", h.ip))
        .collect();
    let mut log = String::new();
    let clock = Instant::now();
    note(&mut log, clock, &format!("members at {endpoints:?}"));
    let settled = every_member_serves(&endpoints, Duration::from_secs(30)).await;
    anyhow::ensure!(
        settled.is_empty(),
        "members {settled:?} did not serve within 30 s of starting; logs in {}",
        scenario.out.display()
    );
    note(&mut log, clock, "every member serves");

    let until = Instant::now() + scenario.duration;
    let task = match &scenario.workload {
        Workload::Register(config) => {
            let run = workload::run_register(
                endpoints.clone(),
                config.clone(),
                scenario.seed,
                clock,
                until,
            );
            tokio::spawn(async move { run.await.map(Recorded::Register) })
        }
        Workload::Bank(config) => {
            workload::open_bank(&endpoints[0], config).await?;
            let run = workload::run_bank(endpoints.clone(), config.clone(), scenario.seed, until);
            tokio::spawn(async move { run.await.map(Recorded::Bank) })
        }
        Workload::Watch(config) => {
            let run = watches::run_watch(endpoints.clone(), config.clone(), scenario.seed, until);
            tokio::spawn(async move { run.await.map(Recorded::Watch) })
        }
        Workload::Lease(config) => {
            let run = leases::run_leases(
                endpoints.clone(),
                config.clone(),
                scenario.seed,
                clock,
                until,
            );
            tokio::spawn(async move { run.await.map(Recorded::Lease) })
        }
        Workload::Lock(config) => {
            let run = locks::run_locks(
                endpoints.clone(),
                config.clone(),
                scenario.seed,
                clock,
                until,
            );
            tokio::spawn(async move { run.await.map(Recorded::Lock) })
        }
        Workload::Election(config) => {
            let run = elections::run_elections(
                endpoints.clone(),
                config.clone(),
                scenario.seed,
                clock,
                until,
            );
            tokio::spawn(async move { run.await.map(Recorded::Election) })
        }
    };
    let mut rng = Rng::new(scenario.seed ^ 0x7461_7267_6574);
    for step in schedule(
        scenario.nemesis,
        scenario.seed,
        scenario.members,
        scenario.duration,
    ) {
        tokio::time::sleep(step.wait).await;
        let done = inject(&step.fault, &network, &mut members, &endpoints, &mut rng).await?;
        note(&mut log, clock, &done);
        tokio::time::sleep(step.hold).await;
        if step.heal {
            network.heal()?;
            members.heal()?;
            note(&mut log, clock, "heal");
        }
    }
    let recorded = task.await??;
    network.heal()?;
    members.heal()?;
    note(&mut log, clock, "workload done; healed");
    let healed = Instant::now();
    let not_serving = every_member_serves(&endpoints, RECOVERY_BOUND).await;
    note(
        &mut log,
        clock,
        &if not_serving.is_empty() {
            format!(
                "every member served a linearizable read {} ms after the heal",
                healed.elapsed().as_millis()
            )
        } else {
            format!("not serving {RECOVERY_BOUND:?} after the heal: {not_serving:?}")
        },
    );
    let crashed = members.crashed();
    for (i, status) in &crashed {
        note(
            &mut log,
            clock,
            &format!(
                "m{i} exited on its own: {status}\n{}",
                members.log_tail(*i, 20)
            ),
        );
    }
    drop(members);
    drop(network);
    // The members' data is not needed to understand the run; their logs are kept.
    for i in 0..scenario.members {
        let _ = std::fs::remove_dir_all(scenario.out.join(format!("m{i}")));
    }

    write(&scenario.out, "nemesis.log", &log)?;
    let (verdict, problems, counts) = match (&recorded, &scenario.workload) {
        (Recorded::Register(history), _) => {
            let verdict = checker::check(history, scenario.checker_budget);
            write(&scenario.out, "history.json", &history.to_json())?;
            write(&scenario.out, "timeline.txt", &history.timeline())?;
            let problems = match &verdict {
                Verdict::Linearizable => Vec::new(),
                Verdict::Violation(v) => {
                    write(
                        &scenario.out,
                        "violation.txt",
                        &format!(
                            "{v:#?}\n\nevery operation on {}:\n{}",
                            v.key,
                            history.key_timeline(&v.key)
                        ),
                    )?;
                    vec![format!("not linearizable on {} (see violation.txt)", v.key)]
                }
                Verdict::Unknown { key, steps } => {
                    vec![format!("the checker gave up on {key} after {steps} steps")]
                }
            };
            // The revisions tell the version order too: check it without a search.
            let mut problems = problems;
            problems.extend(
                revisions::verify(history)
                    .into_iter()
                    .map(|anomaly| format!("revision order: {anomaly}")),
            );
            (Some(verdict), problems, count(history))
        }
        (Recorded::Bank(bank), Workload::Bank(config)) => {
            let mut reads = String::new();
            for (client, revision, balances) in &bank.reads {
                let _ = writeln!(
                    reads,
                    "client {client} revision {revision} balances {balances:?}"
                );
            }
            write(&scenario.out, "reads.txt", &reads)?;
            write_json(&scenario.out, bank)?;
            let ok = bank.reads.len() + bank.transfers + bank.conflicts;
            (
                None,
                bank.anomalies(config),
                (ok + bank.unknown, ok, 0, bank.unknown),
            )
        }
        (Recorded::Watch(history), _) => {
            write_json(&scenario.out, history)?;
            write(&scenario.out, "timeline.txt", &watches::timeline(history))?;
            let (ok, failed, unknown) = history.counts();
            (
                None,
                history.anomalies(),
                (history.writes.len(), ok, failed, unknown),
            )
        }
        (Recorded::Lease(history), Workload::Lease(config)) => {
            write_json(&scenario.out, history)?;
            write(&scenario.out, "timeline.txt", &history.timeline())?;
            let judged = history.leases.len();
            (
                None,
                history.anomalies(config),
                (judged + history.abandoned, judged, 0, history.abandoned),
            )
        }
        (Recorded::Lock(history), _) => {
            write_json(&scenario.out, history)?;
            write(&scenario.out, "timeline.txt", &history.timeline())?;
            let acquired = history.acquisitions.len();
            (
                None,
                history.anomalies(),
                (acquired + history.abandoned, acquired, 0, history.abandoned),
            )
        }
        (Recorded::Election(history), _) => {
            write_json(&scenario.out, history)?;
            write(&scenario.out, "timeline.txt", &history.timeline())?;
            let terms = history.terms.len();
            (
                None,
                history.anomalies(),
                (terms + history.abandoned, terms, 0, history.abandoned),
            )
        }
        (Recorded::Bank(_) | Recorded::Lease(_), _) => {
            unreachable!("each workload records its own history")
        }
    };
    let report = Report {
        verdict,
        problems,
        live: not_serving.is_empty(),
        counts,
        crashed,
        out: scenario.out.clone(),
    };
    write(
        &scenario.out,
        "verdict.txt",
        &format!("{}\n{:#?}\n", report.summary(scenario), report.problems),
    )?;
    Ok(report)
}

/// What a workload recorded.
enum Recorded {
    Register(History),
    Bank(workload::BankHistory),
    Watch(watches::WatchHistory),
    Lease(leases::LeaseHistory),
    Lock(locks::LockHistory),
    Election(elections::ElectionHistory),
}

fn count(history: &History) -> (usize, usize, usize, usize) {
    let ops = history.ops();
    let failed = ops
        .iter()
        .filter(|op| matches!(op.outcome, Outcome::Failed(_)))
        .count();
    let unknown = ops.iter().filter(|op| op.outcome.is_unknown()).count();
    (ops.len(), ops.len() - failed - unknown, failed, unknown)
}
