use super::*;

/// Seeds CI runs: each a 3-member cluster for 10 s of virtual time under drops,
/// duplicates, reordering and partitions.
const SEEDS: std::ops::Range<u64> = 1..21;

fn seeds() -> Vec<u64> {
    match std::env::var("SIM_SEED") {
        Ok(seed) => vec![seed.parse().expect("SIM_SEED is a number")],
        Err(_) => SEEDS.collect(),
    }
}

// Proves the cluster keeps every safety property and stays live across a fixed list of
// seeds (or the one in SIM_SEED); a failure names the command that replays it.
#[test]
fn seeded_runs_keep_every_property() {
    let config = SimConfig::default();
    for seed in seeds() {
        match run(seed, &config) {
            Ok(report) => {
                assert!(report.acknowledged > 50, "seed {seed}: {report:?}");
                assert!(!report.leaders.is_empty());
            }
            Err(failure) => {
                panic!("seed {seed}: {failure}\nreplay: SIM_SEED={seed} cargo test -p sim")
            }
        }
    }
}

// Proves a seed replays exactly: two runs of the same seed see the same trace, and
// different seeds different ones.
#[test]
fn same_seed_same_trace() {
    let config = SimConfig {
        duration: Duration::from_secs(4),
        ..SimConfig::default()
    };
    let a = run(7, &config).unwrap();
    let b = run(7, &config).unwrap();
    assert_eq!(a, b);
    let c = run(8, &config).unwrap();
    assert_ne!(a.trace, c.trace);
}

// Proves the election-safety check fails when two members lead one term.
#[test]
fn election_safety_check_can_fail() {
    let mut safety = ElectionSafety::default();
    safety.observe(3, 1).unwrap();
    safety.observe(3, 1).unwrap();
    safety.observe(4, 2).unwrap();
    assert!(safety
        .observe(3, 2)
        .unwrap_err()
        .contains("both led term 3"));
}
