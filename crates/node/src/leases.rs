//! Lease expiry. Time never enters the state machine: every member keeps, beside it, when
//! each lease expires, restarted at its own clock whenever it applies the lease's grant or a
//! keepalive (both go through the log, so every member hears of every renewal). Only the
//! leader acts on it: it proposes the expiry of leases past due, at most
//! [`EXPIRIES_PER_TICK`] per tick (etcd revokes at most 1,000 leases a second). An expiry
//! carries the lease's renewal count as the leader saw it, so a keepalive applied before it
//! wins and a client's acknowledged renewal is never undone.
//!
//! A member that becomes leader first gives every lease a full TTL from that moment, as
//! etcd's lessor does on promotion: keepalives that could not be committed while there was
//! no leader must not cost a client its lease. A lease may thus outlive its TTL, never die
//! before it.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use mvcc::{Applied, Command, CommandResponse, Lease, LeaseExpireRequest, LeaseId};
use parking_lot::Mutex;

use crate::{Shared, FIRST_SHARD};

/// How often the leader looks for expired leases.
pub(crate) const TICK: Duration = Duration::from_millis(500);
/// Expiries proposed per tick at most.
const EXPIRIES_PER_TICK: usize = 500;

#[derive(Clone, Copy, Debug)]
struct Clock {
    expires: Instant,
    ttl: i64,
    renewals: u64,
}

/// What a member knows of its leases' clocks.
#[derive(Default)]
pub(crate) struct Lessor {
    clocks: Mutex<BTreeMap<LeaseId, Clock>>,
    /// Expiries proposed and not applied yet: lease -> (request id, give up at).
    in_flight: Mutex<HashMap<LeaseId, (u64, Instant)>>,
    /// Whether this member led at the last tick.
    leading: AtomicBool,
}

fn ttl_duration(ttl: i64) -> Duration {
    Duration::from_secs(u64::try_from(ttl).unwrap_or(0))
}

impl Lessor {
    /// Every lease starts a full TTL now: at startup and after a snapshot replaced the state.
    pub(crate) fn reset(&self, now: Instant, leases: &[Lease]) {
        let mut clocks = self.clocks.lock();
        clocks.clear();
        for lease in leases {
            clocks.insert(
                lease.id,
                Clock {
                    expires: now + ttl_duration(lease.ttl),
                    ttl: lease.ttl,
                    renewals: lease.renewals,
                },
            );
        }
        self.in_flight.lock().clear();
    }

    /// A command was applied at `now` with `applied`'s result.
    pub(crate) fn applied(&self, now: Instant, command: &Command, applied: &Applied) {
        let lease_command = matches!(
            command,
            Command::LeaseGrant(_)
                | Command::LeaseKeepAlive(_)
                | Command::LeaseRevoke(_)
                | Command::LeaseExpire(_)
        );
        let (true, Ok(response)) = (lease_command, &applied.result) else {
            return;
        };
        let mut clocks = self.clocks.lock();
        match (command, response) {
            (Command::LeaseGrant(_), CommandResponse::LeaseGrant(granted)) => {
                clocks.insert(
                    granted.id,
                    Clock {
                        expires: now + ttl_duration(granted.ttl),
                        ttl: granted.ttl,
                        renewals: 0,
                    },
                );
            }
            (Command::LeaseKeepAlive(id), CommandResponse::LeaseKeepAlive(ttl)) => {
                if let Some(clock) = clocks.get_mut(id) {
                    clock.expires = now + ttl_duration(*ttl);
                    clock.renewals += 1;
                }
            }
            (Command::LeaseRevoke(id), _) => {
                clocks.remove(id);
            }
            (Command::LeaseExpire(req), CommandResponse::LeaseExpire(expired)) => {
                if *expired {
                    clocks.remove(&req.id);
                }
                self.in_flight.lock().remove(&req.id);
            }
            _ => {}
        }
    }

    /// The time a lease has left, as this member's clock says.
    pub(crate) fn remaining(&self, id: LeaseId, now: Instant) -> Option<Duration> {
        let clocks = self.clocks.lock();
        Some(clocks.get(&id)?.expires.saturating_duration_since(now))
    }

    /// The leases to expire now (past due, not already being expired), at most `max`.
    fn due(&self, now: Instant, max: usize) -> Vec<LeaseExpireRequest> {
        let clocks = self.clocks.lock();
        let mut in_flight = self.in_flight.lock();
        in_flight.retain(|_, (_, give_up)| *give_up > now);
        clocks
            .iter()
            .filter(|(id, clock)| clock.expires <= now && !in_flight.contains_key(id))
            .take(max)
            .map(|(id, clock)| LeaseExpireRequest {
                id: *id,
                renewals: clock.renewals,
            })
            .collect()
    }

    /// A full TTL for every lease from `now` (this member just became leader).
    fn promote(&self, now: Instant) {
        for clock in self.clocks.lock().values_mut() {
            clock.expires = clock.expires.max(now + ttl_duration(clock.ttl));
        }
    }
}

/// One lessor tick: if this member leads, propose the expiry of the leases past due.
pub(crate) fn tick(shared: &Shared) {
    let lessor = &shared.lessor;
    let now = shared.config.clock.now();
    let leads = shared.leader.load(Ordering::Acquire) == shared.config.node_id.0;
    let led = lessor.leading.swap(leads, Ordering::AcqRel);
    if leads && !led {
        lessor.promote(now);
    }
    if !leads {
        return;
    }
    // Waiters of expiries that were never applied (lost with a leader change) go.
    let expired_waiters: Vec<u64> = {
        let in_flight = lessor.in_flight.lock();
        in_flight
            .values()
            .filter(|(_, give_up)| *give_up <= now)
            .map(|(request_id, _)| *request_id)
            .collect()
    };
    if !expired_waiters.is_empty() {
        let mut proposals = shared.proposals.lock();
        for request_id in expired_waiters {
            proposals.remove(&request_id);
        }
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
}

/// Runs lessor ticks until the node stops.
pub(crate) fn run(shared: &Shared) {
    while !shared.is_stopped() {
        tick(shared);
        std::thread::sleep(TICK);
    }
}
