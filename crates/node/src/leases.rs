//! The lessor: lease clocks, kept by the leader alone, as etcd's primary lessor.
//!
//! Time never enters the state machine. The member that leads keeps, in memory, when each
//! lease expires, and answers keepalives from that memory once a ReadIndex round has
//! confirmed that it still leads: a keepalive costs no log write, and can be answered as
//! soon as a new leader has applied its first entry (a keepalive through the log could not
//! be committed during an election, which takes longer than a short lease's TTL). The
//! leader proposes the expiry of the leases past due, at most [`EXPIRIES_PER_TICK`] per
//! tick (etcd revokes at most 1,000 leases a second).
//!
//! A member becomes the primary lessor when it leads and has applied an entry of its own
//! term: every entry of earlier terms that will ever be applied has been applied by then, so
//! no expiry a former leader proposed can undo a keepalive this leader answers. It then gives
//! every lease its checkpointed remaining TTL, or a full TTL if none was recorded, from that
//! moment: keepalives the former leader answered are covered, since it answered them before
//! this member could be elected.
//!
//! Checkpoints (etcd's lease checkpointing): every [`NodeConfig::lease_checkpoint_interval`]
//! the primary records through the log how long the leases that nobody renews have left, so
//! that an election does not give a long, forgotten lease its full TTL again. A checkpoint
//! must never shorten a lease that a client renewed after it: a renewal of a lease whose
//! checkpoint is recorded, or may still be on its way through the log, first commits a
//! clearing checkpoint (remaining 0) and is only answered after that.
//!
//! [`NodeConfig::lease_checkpoint_interval`]: crate::NodeConfig::lease_checkpoint_interval

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use mvcc::{
    Applied, Command, CommandResponse, Lease, LeaseCheckpoint, LeaseExpireRequest, LeaseId,
    MvccError,
};
use parking_lot::Mutex;
use tokio::sync::oneshot;

use crate::shared::Shared;
use crate::{NodeError, FIRST_SHARD};

/// How often the leader looks for expired leases.
pub(crate) const TICK: Duration = Duration::from_millis(500);
/// Expiries proposed per tick at most.
const EXPIRIES_PER_TICK: usize = 500;
/// Leases in one checkpoint command at most (etcd: 1,000).
const CHECKPOINTS_PER_COMMAND: usize = 1000;

#[derive(Clone, Copy, Debug)]
struct Clock {
    expires: Instant,
    ttl: i64,
    /// Log keepalives applied (the state machine's count), named by expiries.
    renewals: u64,
    /// The remaining TTL last checkpointed for it, in seconds; 0 if none.
    checkpointed: i64,
}

/// The clocks of the primary lessor, for one term of leadership.
struct Primary {
    term: u64,
    clocks: BTreeMap<LeaseId, Clock>,
    /// A checkpoint command proposed and not applied yet: renewals must clear behind it.
    checkpoint_in_flight: Option<InFlight>,
    next_checkpoint: Instant,
}

/// A proposal this lessor waits for: its request id and its answer.
type InFlight = (u64, oneshot::Receiver<Result<Applied, NodeError>>);

/// What renewing a lease needs.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Renewal {
    /// Renewed: the granted TTL.
    Renewed(i64),
    /// A checkpoint of the lease is recorded or on its way: clear it first, then renew.
    ClearCheckpoint,
}

/// What a member knows of its leases' clocks.
#[derive(Default)]
pub(crate) struct Lessor {
    primary: Mutex<Option<Primary>>,
    /// Expiries proposed and not applied yet: lease -> (request id, give up at).
    in_flight: Mutex<HashMap<LeaseId, (u64, Instant)>>,
    /// The term of the last entry applied.
    applied_term: std::sync::atomic::AtomicU64,
}

fn ttl_duration(ttl: i64) -> Duration {
    Duration::from_secs(u64::try_from(ttl).unwrap_or(0))
}

impl Lessor {
    /// The state machine was replaced (startup, snapshot install): a primary starts over.
    pub(crate) fn reset(&self) {
        *self.primary.lock() = None;
        self.in_flight.lock().clear();
    }

    /// Entries up to one of `term` were applied.
    pub(crate) fn applied_term(&self, term: u64) {
        self.applied_term.store(term, Ordering::Release);
    }

    /// A command was applied at `now` with `applied`'s result. Only the primary keeps clocks.
    pub(crate) fn applied(&self, now: Instant, command: &Command, applied: &Applied) {
        let lease_command = matches!(
            command,
            Command::LeaseGrant(_)
                | Command::LeaseKeepAlive(_)
                | Command::LeaseRevoke(_)
                | Command::LeaseExpire(_)
                | Command::LeaseCheckpoint(_)
        );
        let (true, Ok(response)) = (lease_command, &applied.result) else {
            return;
        };
        if let (Command::LeaseExpire(req), CommandResponse::LeaseExpire(_)) = (command, response) {
            self.in_flight.lock().remove(&req.id);
        }
        let mut primary = self.primary.lock();
        let Some(primary) = primary.as_mut() else {
            return;
        };
        let clocks = &mut primary.clocks;
        match (command, response) {
            (Command::LeaseGrant(_), CommandResponse::LeaseGrant(granted)) => {
                clocks.insert(
                    granted.id,
                    Clock {
                        expires: now + ttl_duration(granted.ttl),
                        ttl: granted.ttl,
                        renewals: 0,
                        checkpointed: 0,
                    },
                );
            }
            // Written by members that renewed through the log.
            (Command::LeaseKeepAlive(id), CommandResponse::LeaseKeepAlive(ttl)) => {
                if let Some(clock) = clocks.get_mut(id) {
                    clock.expires = clock.expires.max(now + ttl_duration(*ttl));
                    clock.renewals += 1;
                    clock.checkpointed = 0;
                }
            }
            (Command::LeaseRevoke(id), _) => {
                clocks.remove(id);
            }
            (Command::LeaseExpire(req), CommandResponse::LeaseExpire(true)) => {
                clocks.remove(&req.id);
            }
            (Command::LeaseCheckpoint(checkpoints), _) => {
                for checkpoint in checkpoints {
                    if let Some(clock) = clocks.get_mut(&checkpoint.id) {
                        clock.checkpointed = checkpoint.remaining_ttl;
                    }
                }
            }
            _ => {}
        }
    }

    /// Becomes the primary lessor of `term` (this member leads it and applied an entry of
    /// it), unless it already is: every lease gets its checkpointed remaining TTL, or its
    /// full TTL, from `now`.
    fn promote(&self, term: u64, now: Instant, leases: impl FnOnce() -> Vec<Lease>) {
        let mut primary = self.primary.lock();
        if primary.as_ref().is_some_and(|p| p.term == term) {
            return;
        }
        let clocks = leases()
            .into_iter()
            .map(|lease| {
                let left = if lease.remaining_ttl > 0 {
                    lease.remaining_ttl.min(lease.ttl)
                } else {
                    lease.ttl
                };
                let clock = Clock {
                    expires: now + ttl_duration(left),
                    ttl: lease.ttl,
                    renewals: lease.renewals,
                    checkpointed: lease.remaining_ttl,
                };
                (lease.id, clock)
            })
            .collect::<BTreeMap<_, _>>();
        tracing::info!(term, leases = clocks.len(), "primary lessor");
        *primary = Some(Primary {
            term,
            clocks,
            checkpoint_in_flight: None,
            next_checkpoint: now,
        });
        self.in_flight.lock().clear();
    }

    /// This member no longer leads: returns the request ids of the proposals it no longer
    /// waits for.
    fn demote(&self) -> Vec<u64> {
        let mut abandoned: Vec<u64> = self
            .in_flight
            .lock()
            .drain()
            .map(|(_, (request_id, _))| request_id)
            .collect();
        if let Some(primary) = self.primary.lock().take() {
            tracing::info!(term = primary.term, "no longer the primary lessor");
            abandoned.extend(
                primary
                    .checkpoint_in_flight
                    .map(|(request_id, _)| request_id),
            );
        }
        abandoned
    }

    /// Renews lease `id` at `now` as the primary of `term`.
    ///
    /// # Errors
    /// `NotLeader` if this member is not the primary of `term`; `LeaseNotFound` if the lease
    /// does not exist or has expired (its expiry is on its way; etcd refuses it too).
    pub(crate) fn renew(&self, id: LeaseId, term: u64, now: Instant) -> Result<Renewal, NodeError> {
        let mut primary = self.primary.lock();
        let primary = match primary.as_mut() {
            Some(primary) if primary.term == term => primary,
            _ => return Err(NodeError::NotLeader(0)),
        };
        let checkpoint_in_flight = poll_in_flight(&mut primary.checkpoint_in_flight);
        let clock = primary
            .clocks
            .get_mut(&id)
            .ok_or(NodeError::Mvcc(MvccError::LeaseNotFound))?;
        if clock.expires <= now {
            return Err(NodeError::Mvcc(MvccError::LeaseNotFound));
        }
        if clock.checkpointed != 0 || checkpoint_in_flight {
            return Ok(Renewal::ClearCheckpoint);
        }
        clock.expires = now + ttl_duration(clock.ttl);
        Ok(Renewal::Renewed(clock.ttl))
    }

    /// The time lease `id` has left, as the primary of `term`; `None` if it does not exist.
    ///
    /// # Errors
    /// `NotLeader` if this member is not the primary of `term`.
    pub(crate) fn remaining(
        &self,
        id: LeaseId,
        term: u64,
        now: Instant,
    ) -> Result<Option<Duration>, NodeError> {
        let primary = self.primary.lock();
        match primary.as_ref() {
            Some(primary) if primary.term == term => Ok(primary
                .clocks
                .get(&id)
                .map(|clock| clock.expires.saturating_duration_since(now))),
            _ => Err(NodeError::NotLeader(0)),
        }
    }

    /// The leases to expire now (past due, not already being expired), at most `max`.
    fn due(&self, now: Instant, max: usize) -> Vec<LeaseExpireRequest> {
        let primary = self.primary.lock();
        let Some(primary) = primary.as_ref() else {
            return Vec::new();
        };
        let mut in_flight = self.in_flight.lock();
        in_flight.retain(|_, (_, give_up)| *give_up > now);
        primary
            .clocks
            .iter()
            .filter(|(id, clock)| clock.expires <= now && !in_flight.contains_key(id))
            .take(max)
            .map(|(id, clock)| LeaseExpireRequest {
                id: *id,
                renewals: clock.renewals,
            })
            .collect()
    }

    /// The checkpoints to record now, if one is due: leases with less than half their TTL
    /// left (those that clients keep alive, renewed every third of their TTL, never are)
    /// whose remaining TTL changed since their last checkpoint.
    fn checkpoints_due(&self, now: Instant, interval: Duration) -> Vec<LeaseCheckpoint> {
        let mut primary = self.primary.lock();
        let Some(primary) = primary.as_mut() else {
            return Vec::new();
        };
        if now < primary.next_checkpoint || poll_in_flight(&mut primary.checkpoint_in_flight) {
            return Vec::new();
        }
        primary.next_checkpoint = now + interval;
        primary
            .clocks
            .iter()
            .filter_map(|(id, clock)| {
                let left = clock.expires.saturating_duration_since(now);
                // Rounded up: a checkpoint never shortens a lease.
                let remaining_ttl = i64::try_from(left.as_millis().div_ceil(1000)).ok()?;
                let worth = remaining_ttl > 0
                    && remaining_ttl * 2 < clock.ttl
                    && remaining_ttl != clock.checkpointed;
                worth.then_some(LeaseCheckpoint {
                    id: *id,
                    remaining_ttl,
                })
            })
            .take(CHECKPOINTS_PER_COMMAND)
            .collect()
    }

    fn checkpoint_proposed(&self, proposal: InFlight) {
        if let Some(primary) = self.primary.lock().as_mut() {
            primary.checkpoint_in_flight = Some(proposal);
        }
    }
}

/// Whether the checkpoint proposal in `slot` may still be applied.
fn poll_in_flight(slot: &mut Option<InFlight>) -> bool {
    let Some((_, receiver)) = slot else {
        return false;
    };
    match receiver.try_recv() {
        Err(oneshot::error::TryRecvError::Empty) => true,
        // Applied, or answered with an error (no longer proposed): either way, done.
        _ => {
            *slot = None;
            false
        }
    }
}

/// Makes this member the primary lessor if it leads and has applied an entry of its term.
pub(crate) fn maybe_promote(shared: &Shared) {
    let term = shared.raft.term();
    let leads = shared.raft.leader() == shared.config.node_id.0;
    if leads && term != 0 && shared.lessor.applied_term.load(Ordering::Acquire) == term {
        let now = shared.config.clock.now();
        shared.lessor.promote(term, now, || shared.state.leases());
    }
}

/// One lessor tick: if this member leads, propose the expiry of the leases past due and,
/// when one is due, a checkpoint.
pub(crate) fn tick(shared: &Shared) {
    let lessor = &shared.lessor;
    let now = shared.config.clock.now();
    let leads = shared.raft.leader() == shared.config.node_id.0;
    if !leads {
        for request_id in lessor.demote() {
            shared.waiters.forget_proposal(request_id);
        }
        return;
    }
    maybe_promote(shared);
    // Waiters of expiries that were never applied (lost with a leader change) go.
    let expired_waiters: Vec<u64> = {
        let in_flight = lessor.in_flight.lock();
        in_flight
            .values()
            .filter(|(_, give_up)| *give_up <= now)
            .map(|(request_id, _)| *request_id)
            .collect()
    };
    for request_id in expired_waiters {
        shared.waiters.forget_proposal(request_id);
    }
    for expire in lessor.due(now, EXPIRIES_PER_TICK) {
        match crate::submit_command(shared, FIRST_SHARD, &Command::LeaseExpire(expire)) {
            Ok((request_id, _receiver)) => {
                lessor
                    .in_flight
                    .lock()
                    .insert(expire.id, (request_id, now + shared.config.request_timeout));
            }
            // Overloaded or stopping: the next tick tries again.
            Err(_) => break,
        }
    }
    let checkpoints = lessor.checkpoints_due(now, shared.config.lease_checkpoint_interval);
    if !checkpoints.is_empty() {
        let command = Command::LeaseCheckpoint(checkpoints);
        // Refused (overloaded, stopping): the next interval tries again.
        if let Ok(proposal) = crate::submit_command(shared, FIRST_SHARD, &command) {
            lessor.checkpoint_proposed(proposal);
        }
    }
}

/// Runs lessor ticks until the node stops.
pub(crate) fn run(shared: &Shared) {
    while !shared.is_stopped() {
        tick(shared);
        std::thread::sleep(TICK);
    }
}
