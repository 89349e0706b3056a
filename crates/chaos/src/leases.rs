//! The lease workload: expiry bounds.
//!
//! Each client (one per member) grants a lease, attaches a key to it, keeps it alive for a
//! random while and then lets it go, reading the key with linearizable reads all along. It
//! knows the earliest moment the lease may expire: the TTL after the sending of the last
//! keepalive the cluster acknowledged (or of the grant), since a member restarts a lease's
//! clock only when it applies the renewal, which is after it was sent. Checks:
//! - never early: no read that completed before that moment finds the key gone, and no
//!   keepalive answered before it says the lease is gone;
//! - eventually: once let go, the key disappears within a bound: the TTL plus the leader's
//!   tick and a commit when no fault intervenes; with faults, a new leader restarts every
//!   lease's TTL, so the bound allows for one more TTL and the longest fault.

use std::time::{Duration, Instant};

use etcd_client::{Client, PutOptions};

use crate::nemesis::Rng;
use crate::workload::{connect, run_clients, Connect};

/// How the lease workload runs.
#[derive(Clone, Debug)]
pub struct LeaseConfig {
    /// Clients per member.
    pub clients_per_member: usize,
    /// The TTL every lease is granted, in seconds.
    pub ttl: i64,
    /// Longest time a client keeps a lease alive.
    pub keep_alive_for: Duration,
    /// How often a client renews and reads.
    pub every: Duration,
    /// How long a client waits for an answer.
    pub op_timeout: Duration,
    /// How late, past its earliest expiry, a lease may disappear.
    pub late_bound: Duration,
}

impl LeaseConfig {
    /// Settings for a run with faults (`faults`) or without.
    #[must_use]
    pub fn new(faults: bool) -> Self {
        let ttl = 3;
        Self {
            clients_per_member: 4,
            ttl,
            keep_alive_for: Duration::from_secs(5),
            every: Duration::from_millis(400),
            op_timeout: Duration::from_secs(2),
            // A tick (0.5 s), a commit and a read; with faults, one more TTL from a new
            // leader plus the longest fault and the election after it.
            late_bound: if faults {
                Duration::from_secs(2 * ttl as u64 + 12)
            } else {
                Duration::from_millis(1500)
            },
        }
    }
}

/// One lease's story, as its client saw it.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct LeaseRecord {
    /// The client.
    pub client: usize,
    /// The lease id.
    pub id: i64,
    /// Since the run started: when the grant was sent.
    pub granted: Duration,
    /// Keepalives acknowledged with the TTL.
    pub renewals: usize,
    /// The earliest moment the lease may expire (since the run started).
    pub earliest_expiry: Duration,
    /// When the client stopped renewing.
    pub let_go: Duration,
    /// When a read (or a keepalive) first found the lease gone, if it did.
    pub gone: Option<Duration>,
    /// What showed the lease gone before its earliest expiry, if anything did.
    pub early: Option<String>,
}

impl LeaseRecord {
    /// How long after its earliest expiry the lease was seen gone.
    #[must_use]
    pub fn lateness(&self) -> Option<Duration> {
        self.gone
            .map(|gone| gone.saturating_sub(self.earliest_expiry))
    }
}

/// Everything a lease run recorded.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct LeaseHistory {
    /// Every lease whose key was attached.
    pub leases: Vec<LeaseRecord>,
    /// Grants or attaching puts that failed or timed out (those leases are not judged).
    pub abandoned: usize,
}

impl LeaseHistory {
    /// Everything wrong; empty for a pass.
    #[must_use]
    pub fn anomalies(&self, config: &LeaseConfig) -> Vec<String> {
        let mut problems = Vec::new();
        for lease in &self.leases {
            if let Some(early) = &lease.early {
                problems.push(format!(
                    "lease {:x} of client {} expired early: {early} (earliest expiry {:?})",
                    lease.id, lease.client, lease.earliest_expiry
                ));
            }
            match lease.lateness() {
                None => problems.push(format!(
                    "lease {:x} of client {} never expired (let go at {:?})",
                    lease.id, lease.client, lease.let_go
                )),
                Some(late) if late > config.late_bound => problems.push(format!(
                    "lease {:x} of client {} expired {late:?} after its earliest expiry (bound {:?})",
                    lease.id, lease.client, config.late_bound
                )),
                Some(_) => {}
            }
        }
        problems
    }

    /// A readable account.
    #[must_use]
    pub fn timeline(&self) -> String {
        use std::fmt::Write as _;
        let mut out = String::new();
        for lease in &self.leases {
            let _ = writeln!(
                out,
                "client {} lease {:x}: granted {:?}, {} renewals, let go {:?}, earliest expiry {:?}, gone {:?} (late {:?}){}",
                lease.client,
                lease.id,
                lease.granted,
                lease.renewals,
                lease.let_go,
                lease.earliest_expiry,
                lease.gone,
                lease.lateness(),
                lease.early.as_deref().map(|e| format!(" EARLY: {e}")).unwrap_or_default()
            );
        }
        let _ = writeln!(out, "abandoned: {}", self.abandoned);
        out
    }
}

/// Whether the key exists, by a linearizable read; `None` if the read failed.
async fn present(client: &mut Client, key: &str, timeout: Duration) -> Option<bool> {
    match tokio::time::timeout(timeout, client.get(key, None)).await {
        Ok(Ok(response)) => Some(!response.kvs().is_empty()),
        _ => None,
    }
}

/// One keepalive on a stream of its own: the TTL answered, `None` if it failed.
async fn renew(client: &mut Client, id: i64, timeout: Duration) -> Option<i64> {
    let ask = async {
        let (mut keeper, mut stream) = client.lease_keep_alive(id).await?;
        keeper.keep_alive().await?;
        let response = stream.message().await?;
        Ok::<_, etcd_client::Error>(response.map(|r| r.ttl()))
    };
    tokio::time::timeout(timeout, ask).await.ok()?.ok()?
}

/// One client: leases one after another until `until`, each followed to its end.
async fn lease_client(
    index: usize,
    endpoint: String,
    config: LeaseConfig,
    seed: u64,
    clock: Instant,
    until: Instant,
) -> LeaseHistory {
    let mut rng = Rng::new(seed ^ 0x6c65_6173 ^ (index as u64).wrapping_mul(0x9e37_79b9));
    let mut history = LeaseHistory::default();
    let ttl = Duration::from_secs(config.ttl as u64);
    let mut n = 0;
    let mut client = None;
    while Instant::now() < until {
        let Some(c) = client.as_mut() else {
            client = connect(
                &endpoint,
                config.op_timeout,
                Connect {
                    request_timeout: true,
                    require_leader: false,
                },
            )
            .await;
            if client.is_none() {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            continue;
        };
        n += 1;
        let key = format!("lease/{index}/{n}");
        let sent = clock.elapsed();
        let granted =
            tokio::time::timeout(config.op_timeout, c.lease_grant(config.ttl, None)).await;
        let Ok(Ok(granted)) = granted else {
            history.abandoned += 1;
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        let id = granted.id();
        let options = PutOptions::new().with_lease(id);
        let put =
            tokio::time::timeout(config.op_timeout, c.put(key.as_str(), "v", Some(options))).await;
        if !matches!(put, Ok(Ok(_))) {
            history.abandoned += 1;
            continue;
        }
        let mut record = LeaseRecord {
            client: index,
            id,
            granted: sent,
            earliest_expiry: sent + ttl,
            ..LeaseRecord::default()
        };
        let keep_for =
            Duration::from_millis(rng.below(config.keep_alive_for.as_millis() as u64 + 1));
        let let_go = clock.elapsed() + keep_for;
        record.let_go = let_go;
        let give_up = let_go + ttl + config.late_bound + Duration::from_secs(5);
        while clock.elapsed() < give_up {
            if clock.elapsed() < let_go {
                let sent = clock.elapsed();
                match renew(c, id, config.op_timeout).await {
                    Some(ttl_left) if ttl_left > 0 => {
                        record.renewals += 1;
                        record.earliest_expiry = record.earliest_expiry.max(sent + ttl);
                    }
                    Some(_) => {
                        let answered = clock.elapsed();
                        record.gone = Some(answered);
                        if answered < record.earliest_expiry {
                            record.early = Some(format!(
                                "a keepalive answered at {answered:?} found it gone"
                            ));
                        }
                        break;
                    }
                    None => {}
                }
            }
            match present(c, &key, config.op_timeout).await {
                Some(false) => {
                    let answered = clock.elapsed();
                    record.gone = Some(answered);
                    if answered < record.earliest_expiry {
                        record.early = Some(format!(
                            "a read answered at {answered:?} found the key gone"
                        ));
                    }
                    break;
                }
                Some(true) => {}
                None => {}
            }
            tokio::time::sleep(config.every).await;
        }
        history.leases.push(record);
    }
    history
}

/// Runs the lease workload: [`LeaseConfig::clients_per_member`] clients per member until
/// `until`, each following its last lease to its end.
///
/// # Errors
/// If a client task fails.
pub async fn run_leases(
    endpoints: Vec<String>,
    config: LeaseConfig,
    seed: u64,
    clock: Instant,
    until: Instant,
) -> anyhow::Result<LeaseHistory> {
    let parts = run_clients(&endpoints, config.clients_per_member, |i, endpoint| {
        lease_client(i, endpoint, config.clone(), seed, clock, until)
    })
    .await?;
    let mut all = LeaseHistory::default();
    for part in parts {
        all.leases.extend(part.leases);
        all.abandoned += part.abandoned;
    }
    Ok(all)
}

#[cfg(test)]
mod tests {
    use super::*;

    // Proves the checks: a lease seen gone before its earliest expiry, one never seen gone,
    // and one gone later than the bound are each reported; one gone on time passes.
    #[test]
    fn lease_checks_catch_early_late_and_never() {
        let config = LeaseConfig::new(false);
        let secs = Duration::from_secs;
        let on_time = LeaseRecord {
            earliest_expiry: secs(5),
            gone: Some(secs(5) + Duration::from_millis(600)),
            ..LeaseRecord::default()
        };
        let history = |lease: LeaseRecord| LeaseHistory {
            leases: vec![lease],
            abandoned: 0,
        };
        assert!(history(on_time.clone()).anomalies(&config).is_empty());
        let early = LeaseRecord {
            early: Some("a read found the key gone".into()),
            gone: Some(secs(4)),
            ..on_time.clone()
        };
        let never = LeaseRecord {
            gone: None,
            ..on_time.clone()
        };
        let late = LeaseRecord {
            gone: Some(secs(9)),
            ..on_time
        };
        for bad in [early, never, late] {
            assert_eq!(history(bad.clone()).anomalies(&config).len(), 1, "{bad:?}");
        }
    }
}
