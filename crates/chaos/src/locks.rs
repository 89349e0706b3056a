//! The lock workload: locks guarding a fenced resource.
//!
//! Clients take one lock (etcd's Lock service, each round with a fresh lease they keep alive)
//! and, while they hold it, write a shared resource through a fence: a txn that succeeds only
//! if the fence holds a smaller token than theirs, and then raises the fence to their token.
//! The token is the creation revision of the lock key, which orders the holders. A lease can
//! expire under a paused or cut-off holder, so two clients may both believe they hold the lock;
//! the fence is what keeps the resource safe, and the checks say so:
//! - owner: when Lock answered at revision `r` with key `k`, `k` was the oldest key of the
//!   lock's queue at `r` (read back at `r` after the run);
//! - unique and ordered tokens: no token is handed out twice, and a lock acquired after
//!   another was released (in real time) has a larger token;
//! - fenced writes: the accepted writes, in revision order, carry strictly increasing tokens;
//! - live: after the heal, the lock can be taken again.

use std::time::{Duration, Instant};

use etcd_client::{
    Client, Compare, CompareOp, GetOptions, LockOptions, SortOrder, SortTarget, Txn, TxnOp,
};

use crate::nemesis::Rng;
use crate::workload::{connect, connect_until, run_clients, Connect};

/// The lock's name, the fence's key and the resource's key.
const LOCK: &str = "lock/resource";
const FENCE: &str = "fence";
const RESOURCE: &str = "resource";

/// How the lock workload runs.
#[derive(Clone, Debug)]
pub struct LockConfig {
    /// Clients per member.
    pub clients_per_member: usize,
    /// TTL of each holder's lease, in seconds.
    pub ttl: i64,
    /// How long a client waits for the lock before giving up on this round.
    pub wait: Duration,
    /// How long a client waits for any other answer.
    pub op_timeout: Duration,
}

impl Default for LockConfig {
    fn default() -> Self {
        Self {
            clients_per_member: 2,
            ttl: 3,
            wait: Duration::from_secs(6),
            op_timeout: Duration::from_secs(2),
        }
    }
}

/// One acquisition of the lock.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Acquisition {
    /// The client.
    pub client: usize,
    /// The lock key it got.
    pub key: String,
    /// The header revision of the Lock answer.
    pub revision: i64,
    /// The key's creation revision: the fencing token (0 if it could not be read).
    pub token: i64,
    /// When the Lock call was sent and answered, since the run started.
    pub invoked: Duration,
    /// When it was answered.
    pub acquired: Duration,
    /// When the client unlocked (answered), if it did.
    pub released: Option<Duration>,
    /// The fenced write: `Some(revision)` if accepted, `None` if refused or unknown.
    pub write: Option<i64>,
}

/// What a lock run recorded.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct LockHistory {
    /// Every acquisition, with what the holder did.
    pub acquisitions: Vec<Acquisition>,
    /// For each acquisition, the oldest key of the queue at its answer's revision.
    pub owners: Vec<Option<String>>,
    /// Fenced writes refused because a newer token had written.
    pub fenced_off: usize,
    /// Rounds given up (no lock within the wait, or errors).
    pub abandoned: usize,
    /// Whether the lock could be taken after the heal.
    pub live: bool,
}

impl LockHistory {
    /// Everything wrong; empty for a pass.
    #[must_use]
    pub fn anomalies(&self) -> Vec<String> {
        let mut problems = Vec::new();
        for (a, owner) in self.acquisitions.iter().zip(&self.owners) {
            if owner.as_deref() != Some(a.key.as_str()) {
                problems.push(format!(
                    "client {} got {} at revision {}, but the oldest waiter there was {owner:?}",
                    a.client, a.key, a.revision
                ));
            }
        }
        let mut tokens: Vec<i64> = self.acquisitions.iter().map(|a| a.token).collect();
        tokens.sort_unstable();
        if let Some(pair) = tokens.windows(2).find(|w| w[0] == w[1] && w[0] != 0) {
            problems.push(format!("token {} handed out twice", pair[0]));
        }
        for a in &self.acquisitions {
            let Some(released) = a.released else { continue };
            for b in &self.acquisitions {
                if b.invoked > released && b.token != 0 && a.token != 0 && b.token <= a.token {
                    problems.push(format!(
                        "client {} locked after client {} released (token {}), with token {}",
                        b.client, a.client, a.token, b.token
                    ));
                }
            }
        }
        let mut writes: Vec<(i64, i64)> = self
            .acquisitions
            .iter()
            .filter_map(|a| a.write.map(|revision| (revision, a.token)))
            .collect();
        writes.sort_unstable();
        if let Some(pair) = writes.windows(2).find(|w| w[1].1 <= w[0].1) {
            problems.push(format!(
                "fenced write with token {} at revision {} accepted after token {} at {}",
                pair[1].1, pair[1].0, pair[0].1, pair[0].0
            ));
        }
        if !self.live {
            problems.push("the lock could not be taken after the heal".to_string());
        }
        problems
    }

    /// A readable account.
    #[must_use]
    pub fn timeline(&self) -> String {
        use std::fmt::Write as _;
        let mut out = String::new();
        for (a, owner) in self.acquisitions.iter().zip(&self.owners) {
            let _ = writeln!(
                out,
                "client {} {} token {} at revision {} (owner there: {owner:?}): invoked {:?}, acquired {:?}, released {:?}, write {:?}",
                a.client, a.key, a.token, a.revision, a.invoked, a.acquired, a.released, a.write
            );
        }
        let _ = writeln!(
            out,
            "fenced off: {}, abandoned: {}, live: {}",
            self.fenced_off, self.abandoned, self.live
        );
        out
    }
}

fn pad(token: i64) -> String {
    format!("{token:020}")
}

/// The outcome of one round.
enum Round {
    Done(Acquisition, bool),
    Abandoned,
}

/// One round: a lease, the lock, a fenced write, the unlock.
async fn round(
    client: &mut Client,
    index: usize,
    n: u64,
    config: &LockConfig,
    clock: Instant,
    hold: Duration,
) -> Round {
    let t = config.op_timeout;
    let Ok(Ok(lease)) = tokio::time::timeout(t, client.lease_grant(config.ttl, None)).await else {
        return Round::Abandoned;
    };
    let id = lease.id();
    // Keep the lease alive while this round lasts.
    let mut keeper_client = client.clone();
    let keeper = tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(800)).await;
            let renew = async {
                let (mut keeper, mut stream) = keeper_client.lease_keep_alive(id).await?;
                keeper.keep_alive().await?;
                stream.message().await
            };
            let _ = tokio::time::timeout(Duration::from_secs(1), renew).await;
        }
    });
    let invoked = clock.elapsed();
    let options = LockOptions::new().with_lease(id);
    let locked = tokio::time::timeout(config.wait, client.lock(LOCK, Some(options))).await;
    let outcome = match locked {
        Ok(Ok(response)) => {
            let acquired = clock.elapsed();
            let key = String::from_utf8_lossy(response.key()).into_owned();
            let revision = response.header().map_or(0, |h| h.revision());
            let token = match tokio::time::timeout(t, client.get(key.as_str(), None)).await {
                Ok(Ok(r)) => r.kvs().first().map_or(0, |kv| kv.create_revision()),
                _ => 0,
            };
            tokio::time::sleep(hold).await;
            let mut write = None;
            let mut fenced_off = false;
            if token != 0 {
                let fenced = Txn::new()
                    .when(vec![Compare::value(FENCE, CompareOp::Less, pad(token))])
                    .and_then(vec![
                        TxnOp::put(FENCE, pad(token), None),
                        TxnOp::put(RESOURCE, format!("{index}-{n}"), None),
                    ]);
                match tokio::time::timeout(t, client.txn(fenced)).await {
                    Ok(Ok(r)) if r.succeeded() => {
                        write = r.header().map(|h| h.revision());
                    }
                    Ok(Ok(_)) => fenced_off = true,
                    _ => {}
                }
            }
            let unlocked = tokio::time::timeout(t, client.unlock(key.as_str())).await;
            let released = matches!(unlocked, Ok(Ok(_))).then(|| clock.elapsed());
            Round::Done(
                Acquisition {
                    client: index,
                    key,
                    revision,
                    token,
                    invoked,
                    acquired,
                    released,
                    write,
                },
                fenced_off,
            )
        }
        _ => Round::Abandoned,
    };
    keeper.abort();
    let _ = tokio::time::timeout(t, client.lease_revoke(id)).await;
    outcome
}

async fn lock_client(
    index: usize,
    endpoint: String,
    config: LockConfig,
    seed: u64,
    clock: Instant,
    until: Instant,
) -> LockHistory {
    let mut rng = Rng::new(seed ^ 0x6c6f_636b ^ (index as u64).wrapping_mul(0x9e37_79b9));
    let mut history = LockHistory::default();
    let mut n = 0;
    while let Some(mut client) = connect_until(&endpoint, config.op_timeout, until).await {
        while Instant::now() < until {
            n += 1;
            let hold = Duration::from_millis(rng.below(300));
            match round(&mut client, index, n, &config, clock, hold).await {
                Round::Done(acquisition, fenced_off) => {
                    history.fenced_off += usize::from(fenced_off);
                    history.acquisitions.push(acquisition);
                }
                Round::Abandoned => {
                    history.abandoned += 1;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    break;
                }
            }
        }
    }
    history
}

/// Runs the lock workload until `until`, then checks every acquisition's ownership at its
/// revision and takes the lock once more.
///
/// # Errors
/// If the fence cannot be set up or a client task fails.
pub async fn run_locks(
    endpoints: Vec<String>,
    config: LockConfig,
    seed: u64,
    clock: Instant,
    until: Instant,
) -> anyhow::Result<LockHistory> {
    let how = Connect {
        request_timeout: true,
        require_leader: false,
    };
    let mut admin = connect(&endpoints[0], Duration::from_secs(5), how)
        .await
        .ok_or_else(|| anyhow::anyhow!("cannot connect to {}", endpoints[0]))?;
    admin.put(FENCE, pad(0), None).await?;
    let parts = run_clients(&endpoints, config.clients_per_member, |i, endpoint| {
        lock_client(i, endpoint, config.clone(), seed, clock, until)
    })
    .await?;
    let mut history = LockHistory::default();
    for part in parts {
        history.acquisitions.extend(part.acquisitions);
        history.fenced_off += part.fenced_off;
        history.abandoned += part.abandoned;
    }
    history.acquisitions.sort_by_key(|a| a.revision);
    // After the heal: the lock can be taken, and every answer's owner is read back.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut member = 0;
    while !history.live && Instant::now() < deadline {
        if let Some(mut client) = connect(&endpoints[member], config.op_timeout, how).await {
            let hold = Duration::ZERO;
            history.live = matches!(
                round(&mut client, usize::MAX, 0, &config, clock, hold).await,
                Round::Done(..)
            );
        }
        member = (member + 1) % endpoints.len();
    }
    for a in &history.acquisitions {
        let oldest = GetOptions::new()
            .with_prefix()
            .with_revision(a.revision)
            .with_sort(SortTarget::Create, SortOrder::Ascend)
            .with_limit(1);
        let read = admin.get(format!("{LOCK}/"), Some(oldest)).await?;
        history.owners.push(
            read.kvs()
                .first()
                .map(|kv| String::from_utf8_lossy(kv.key()).into_owned()),
        );
    }
    Ok(history)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acquisition(client: usize, token: i64, write: Option<i64>) -> Acquisition {
        let at = Duration::from_secs(token as u64);
        Acquisition {
            client,
            key: format!("{LOCK}/{token:x}"),
            revision: token,
            token,
            invoked: at,
            acquired: at,
            released: Some(at + Duration::from_millis(500)),
            write,
        }
    }

    // Proves the checks: a correct history passes; a wrong owner, a token handed out twice,
    // a later acquisition with a smaller token, fenced writes out of token order and a lock
    // that cannot be taken after the heal are each reported.
    #[test]
    fn lock_checks_catch_each_broken_guarantee() {
        let good = || LockHistory {
            acquisitions: vec![acquisition(0, 2, Some(3)), acquisition(1, 5, Some(6))],
            owners: vec![
                Some(format!("{LOCK}/{:x}", 2)),
                Some(format!("{LOCK}/{:x}", 5)),
            ],
            live: true,
            ..LockHistory::default()
        };
        assert_eq!(good().anomalies(), Vec::<String>::new());
        let mut wrong_owner = good();
        wrong_owner.owners[1] = Some(format!("{LOCK}/{:x}", 2));
        let mut twice = good();
        twice.acquisitions[1].token = 2;
        let mut backwards = good();
        backwards.acquisitions[1].token = 1;
        backwards.acquisitions[1].write = Some(7);
        let mut out_of_order = good();
        out_of_order.acquisitions[0].write = Some(9);
        let mut dead = good();
        dead.live = false;
        for (name, bad) in [
            ("owner", wrong_owner),
            ("twice", twice),
            ("backwards", backwards),
            ("fence", out_of_order),
            ("live", dead),
        ] {
            assert!(!bad.anomalies().is_empty(), "{name} not caught");
        }
    }
}
