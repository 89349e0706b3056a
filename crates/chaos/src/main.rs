//! `chaos`: runs fault-injection scenarios against real Concord members and checks the
//! history. Needs root. Exits non-zero unless every scenario passed.
//!
//! ```text
//! chaos --seed 7 --nemesis partition-leader --duration 20
//! chaos --soak 3600            # random scenarios until an hour has passed
//! ```

use std::path::PathBuf;
use std::time::{Duration, Instant};

use chaos::elections::ElectionConfig;
use chaos::leases::LeaseConfig;
use chaos::locks::LockConfig;
use chaos::nemesis::{NemesisKind, Rng};
use chaos::run::{run, Scenario, Workload};
use chaos::watches::WatchConfig;
use chaos::workload::{BankConfig, RegisterConfig};
use clap::Parser;

#[derive(Parser, Debug)]
#[command(about = "Fault-injection runs against Concord with a linearizability checker")]
struct Args {
    /// Seed of the run (random if not given; always printed).
    #[arg(long)]
    seed: Option<u64>,
    /// Workload: register (linearizability of reads, writes, compare-and-sets), bank
    /// (transfers as txns; every read must show the same total), watch (a watcher per
    /// member checked against etcd's watch guarantees), lease (leases never expire early,
    /// and do expire), lock (locks guarding a fenced resource) or election (campaigners on
    /// one election writing a fenced resource, observers following it).
    #[arg(long, default_value = "register")]
    workload: String,
    /// Fault kind: none, kill, pause, partition-leader, partition-halves, one-way, mixed,
    /// kill-leader, overlapping or membership (members removed and added back).
    #[arg(long, default_value = "mixed")]
    nemesis: String,
    /// Members: 3 or 5.
    #[arg(long, default_value_t = 3)]
    members: usize,
    /// Seconds of workload under faults.
    #[arg(long, default_value_t = 20)]
    duration: u64,
    /// Read with serializable (member-local) reads: not linearizable, the checker must say so.
    #[arg(long)]
    serializable_reads: bool,
    /// Members serve clients and peers over TLS with client certificates required (the run
    /// makes its own CA).
    #[arg(long)]
    tls: bool,
    /// Members encrypt their data at rest (the run makes its own key file).
    #[arg(long)]
    encrypted: bool,
    /// Keep running random scenarios (mixed faults, new seeds) for this many seconds.
    #[arg(long)]
    soak: Option<u64>,
    /// The concord binary (default: the one next to this program).
    #[arg(long)]
    concord: Option<PathBuf>,
    /// Where runs write their histories (default: a new directory under the system's temp).
    #[arg(long)]
    out: Option<PathBuf>,
}

fn default_binary() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join("concord")))
        .unwrap_or_else(|| PathBuf::from("concord"))
}

#[tokio::main]
async fn main() {
    if let Err(e) = chaos_main(Args::parse()).await {
        eprintln!("chaos: {e:#}");
        std::process::exit(1);
    }
}

async fn chaos_main(args: Args) -> anyhow::Result<()> {
    let Some(nemesis) = NemesisKind::parse(&args.nemesis) else {
        anyhow::bail!(
            "unknown nemesis {:?}; one of: {}",
            args.nemesis,
            NemesisKind::ALL.map(NemesisKind::name).join(", ")
        );
    };
    anyhow::ensure!(matches!(args.members, 3 | 5), "--members must be 3 or 5");
    let base = match &args.out {
        Some(dir) => dir.clone(),
        None => std::env::temp_dir().join(format!("concord-chaos-{}", std::process::id())),
    };
    let first_seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
    });
    let soak_until = args.soak.map(|s| Instant::now() + Duration::from_secs(s));
    let mut seeds = Rng::new(first_seed);
    let mut seed = first_seed;
    let mut failures = 0;
    loop {
        // A soak's later runs mix every fault.
        let kind = if seed == first_seed {
            nemesis
        } else {
            NemesisKind::Mixed
        };
        let scenario = Scenario {
            seed,
            nemesis: kind,
            members: args.members,
            duration: Duration::from_secs(args.duration),
            workload: match args.workload.as_str() {
                "register" => Workload::Register(RegisterConfig {
                    serializable_reads: args.serializable_reads,
                    ..RegisterConfig::default()
                }),
                "bank" => Workload::Bank(BankConfig::default()),
                "watch" => Workload::Watch(WatchConfig::default()),
                "lease" => Workload::Lease(LeaseConfig::new(kind != NemesisKind::None)),
                "lock" => Workload::Lock(LockConfig::default()),
                "election" => Workload::Election(ElectionConfig::default()),
                other => anyhow::bail!(
                    "unknown workload {other:?}; one of: register, bank, watch, lease, lock, election"
                ),
            },
            checker_budget: 20_000_000,
            binary: args.concord.clone().unwrap_or_else(default_binary),
            out: base.join(format!("{}-seed-{seed}-{}", args.workload, kind.name())),
            tls: args.tls,
            encrypted: args.encrypted,
        };
        println!("running: {}", scenario.repro_command());
        let report = run(&scenario).await?;
        print!("{}", report.summary(&scenario));
        if !report.passed() {
            failures += 1;
        }
        match soak_until {
            Some(until) if Instant::now() < until => seed = seeds.next_u64(),
            _ => break,
        }
    }
    if failures > 0 {
        anyhow::bail!("{failures} run(s) failed");
    }
    Ok(())
}
