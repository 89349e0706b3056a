//! Faults, and the seeded schedule that decides when and where they strike.
//!
//! The schedule is pure: the same seed, kind, member count and duration always give the same
//! steps. Whom a step hits may depend on the cluster at that moment ("the leader"), which is
//! resolved when the step runs and recorded in the run's log.

use std::time::Duration;

pub use seeded::Rng;

/// Which kind of fault a run injects.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NemesisKind {
    /// No faults: the control run.
    None,
    /// kill -9 a member, then restart it.
    Kill,
    /// SIGSTOP a member, then SIGCONT.
    Pause,
    /// Cut the leader off from every other member.
    PartitionLeader,
    /// Split the members into a majority and a minority.
    PartitionHalves,
    /// Cut links in one direction only.
    OneWay,
    /// Each step one of the above, drawn at random.
    Mixed,
    /// kill -9 whoever leads, then restart it: elections, again and again.
    KillLeader,
    /// Faults that pile up: groups of two or three of the above, each struck before the
    /// previous one healed; the run ends with the leader paused for 5.5 s.
    Overlapping,
    /// Membership changes: a member (the leader half the time) is removed from the cluster,
    /// its data wiped, and added back as a new member that joins and catches up, as an
    /// operator replaces a machine.
    Membership,
}

impl NemesisKind {
    /// Every kind, for listing and parsing.
    pub const ALL: [NemesisKind; 10] = [
        NemesisKind::None,
        NemesisKind::Kill,
        NemesisKind::Pause,
        NemesisKind::PartitionLeader,
        NemesisKind::PartitionHalves,
        NemesisKind::OneWay,
        NemesisKind::Mixed,
        NemesisKind::KillLeader,
        NemesisKind::Overlapping,
        NemesisKind::Membership,
    ];

    /// The name used on the command line and in reports.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            NemesisKind::None => "none",
            NemesisKind::Kill => "kill",
            NemesisKind::Pause => "pause",
            NemesisKind::PartitionLeader => "partition-leader",
            NemesisKind::PartitionHalves => "partition-halves",
            NemesisKind::OneWay => "one-way",
            NemesisKind::Mixed => "mixed",
            NemesisKind::KillLeader => "kill-leader",
            NemesisKind::Overlapping => "overlapping",
            NemesisKind::Membership => "membership",
        }
    }

    /// The kind named `name`.
    #[must_use]
    pub fn parse(name: &str) -> Option<NemesisKind> {
        Self::ALL.into_iter().find(|k| k.name() == name)
    }
}

/// A member, named directly or by its role when the step runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// Whoever leads when the step runs (any member if none does).
    Leader,
    /// Member `i`.
    Member(usize),
}

/// One fault.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// kill -9, restarted at the heal.
    Kill(Target),
    /// SIGSTOP, continued at the heal.
    Pause(Target),
    /// The target alone on one side, everyone else on the other.
    Isolate(Target),
    /// These members on one side, the rest on the other.
    Split(Vec<usize>),
    /// `(from, to)`: `to` stops hearing `from`.
    Cut(Vec<(Target, usize)>),
    /// Removed from the cluster, its data wiped, added again as a new member and started to
    /// join; the heal has nothing to undo.
    Replace(Target),
}

/// A fault, when it starts and how long it lasts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    /// Quiet time before the fault.
    pub wait: Duration,
    /// The fault.
    pub fault: Fault,
    /// How long it lasts before the next step, or before everything is healed.
    pub hold: Duration,
    /// Whether everything is healed after the hold; otherwise the next step's fault strikes
    /// while this one still holds.
    pub heal: bool,
}

/// How long the leader stays paused at the end of an [`NemesisKind::Overlapping`] run.
const FINAL_PAUSE: Duration = Duration::from_millis(5500);

/// The steps a run of `duration` injects into `members` members.
#[must_use]
pub fn schedule(kind: NemesisKind, seed: u64, members: usize, duration: Duration) -> Vec<Step> {
    let mut rng = Rng::new(seed ^ 0x6e65_6d65_7369_7300);
    let mut steps = Vec::new();
    let mut elapsed = Duration::ZERO;
    if kind == NemesisKind::None {
        return steps;
    }
    if kind == NemesisKind::Overlapping {
        return overlapping(&mut rng, members, duration);
    }
    loop {
        let wait = rng.millis(800, 2000);
        let hold = rng.millis(1000, 4000);
        if elapsed + wait + hold > duration {
            return steps;
        }
        elapsed += wait + hold;
        let kind = if kind == NemesisKind::Mixed {
            NemesisKind::ALL[1 + rng.below(5) as usize]
        } else {
            kind
        };
        let target = |rng: &mut Rng| {
            if rng.chance(50) {
                Target::Leader
            } else {
                Target::Member(rng.below(members as u64) as usize)
            }
        };
        let fault = match kind {
            NemesisKind::Kill => Fault::Kill(target(&mut rng)),
            NemesisKind::KillLeader => Fault::Kill(Target::Leader),
            NemesisKind::Pause => Fault::Pause(target(&mut rng)),
            NemesisKind::PartitionLeader => Fault::Isolate(Target::Leader),
            NemesisKind::Membership => Fault::Replace(target(&mut rng)),
            NemesisKind::PartitionHalves => {
                let mut order: Vec<usize> = (0..members).collect();
                for i in (1..order.len()).rev() {
                    order.swap(i, rng.below(i as u64 + 1) as usize);
                }
                order.truncate((members - 1) / 2);
                order.sort_unstable();
                Fault::Split(order)
            }
            NemesisKind::OneWay => {
                let cuts = 1 + rng.below(2) as usize;
                let mut links = Vec::new();
                for _ in 0..cuts {
                    let from = target(&mut rng);
                    let to = rng.below(members as u64) as usize;
                    links.push((from, to));
                }
                Fault::Cut(links)
            }
            NemesisKind::None | NemesisKind::Mixed | NemesisKind::Overlapping => {
                unreachable!("resolved above")
            }
        };
        steps.push(Step {
            wait,
            fault,
            hold,
            heal: true,
        });
    }
}

/// One fault of a kind from kill to one-way, drawn at random.
fn any_fault(rng: &mut Rng, members: usize) -> Fault {
    let target = |rng: &mut Rng| {
        if rng.chance(50) {
            Target::Leader
        } else {
            Target::Member(rng.below(members as u64) as usize)
        }
    };
    match 1 + rng.below(5) {
        1 => Fault::Kill(target(rng)),
        2 => Fault::Pause(target(rng)),
        3 => Fault::Isolate(Target::Leader),
        4 => Fault::Split(vec![rng.below(members as u64) as usize]),
        _ => {
            let to = rng.below(members as u64) as usize;
            Fault::Cut(vec![(target(rng), to)])
        }
    }
}

/// Groups of two or three faults struck one after another without a heal in between, then
/// the leader paused at the end (what once left a paused leader stale for a minute).
fn overlapping(rng: &mut Rng, members: usize, duration: Duration) -> Vec<Step> {
    let mut steps = Vec::new();
    let final_wait = Duration::from_millis(1000);
    let budget = duration.saturating_sub(final_wait + FINAL_PAUSE);
    let mut elapsed = Duration::ZERO;
    'groups: loop {
        let group = 2 + rng.below(2) as usize;
        let mut planned = Vec::new();
        let mut group_time = Duration::ZERO;
        for i in 0..group {
            let wait = if i == 0 {
                rng.millis(800, 2000)
            } else {
                rng.millis(100, 600)
            };
            let hold = rng.millis(300, 1500);
            group_time += wait + hold;
            planned.push(Step {
                wait,
                fault: any_fault(rng, members),
                hold,
                heal: i + 1 == group,
            });
        }
        if elapsed + group_time > budget {
            break 'groups;
        }
        elapsed += group_time;
        steps.extend(planned);
    }
    steps.push(Step {
        wait: final_wait,
        fault: Fault::Pause(Target::Leader),
        hold: FINAL_PAUSE,
        heal: true,
    });
    steps
}

#[cfg(test)]
mod tests {
    use super::*;

    // Proves the schedule is a function of its inputs, fits in the run, and that each kind
    // yields its own faults (a minority for splits).
    #[test]
    fn schedules_are_seeded_and_fit() {
        let run = Duration::from_secs(30);
        for kind in NemesisKind::ALL {
            let a = schedule(kind, 7, 5, run);
            assert_eq!(a, schedule(kind, 7, 5, run), "{kind:?}");
            let total: Duration = a.iter().map(|s| s.wait + s.hold).sum();
            assert!(total <= run);
            assert_eq!(a.is_empty(), kind == NemesisKind::None);
            assert_eq!(NemesisKind::parse(kind.name()), Some(kind));
            for step in &a {
                match (&step.fault, kind) {
                    (Fault::Split(minority), NemesisKind::PartitionHalves | NemesisKind::Mixed) => {
                        assert_eq!(minority.len(), 2);
                    }
                    (_, NemesisKind::Overlapping) => {}
                    (Fault::Kill(Target::Leader), NemesisKind::KillLeader)
                    | (Fault::Kill(_), NemesisKind::Kill | NemesisKind::Mixed)
                    | (Fault::Pause(_), NemesisKind::Pause | NemesisKind::Mixed)
                    | (Fault::Isolate(_), NemesisKind::PartitionLeader | NemesisKind::Mixed)
                    | (Fault::Cut(_), NemesisKind::OneWay | NemesisKind::Mixed)
                    | (Fault::Replace(_), NemesisKind::Membership) => {}
                    (fault, kind) => panic!("{kind:?} scheduled {fault:?}"),
                }
            }
        }
        assert_ne!(
            schedule(NemesisKind::Mixed, 1, 3, run),
            schedule(NemesisKind::Mixed, 2, 3, run)
        );
        // Overlapping runs pile faults up and end with the leader paused.
        let piled = schedule(NemesisKind::Overlapping, 3, 3, Duration::from_secs(60));
        assert!(piled.iter().filter(|s| !s.heal).count() >= 5, "{piled:?}");
        let last = piled.last().unwrap();
        assert_eq!(last.fault, Fault::Pause(Target::Leader));
        assert_eq!((last.hold, last.heal), (FINAL_PAUSE, true));
    }
}
