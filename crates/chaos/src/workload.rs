//! Client workloads through the `etcd-client` crate, recording every operation.

use std::time::{Duration, Instant};

use etcd_client::{Client, Compare, CompareOp, GetOptions, Txn, TxnOp};
use tonic::Code;

use crate::history::{Call, History, Op, Outcome, Revisions, Value};
use crate::nemesis::Rng;

/// How the register workload runs.
#[derive(Clone, Debug)]
pub struct RegisterConfig {
    /// Concurrent clients; client `c` talks only to endpoint `c % endpoints.len()`, so every
    /// member, the cut-off ones included, serves clients.
    pub clients: usize,
    /// Keys in use at a time.
    pub keys: usize,
    /// How long the same set of keys is used before moving to fresh ones. Short windows keep
    /// each key's history small enough for the checker.
    pub key_window: Duration,
    /// How long a client waits for an answer before recording the outcome as unknown.
    pub op_timeout: Duration,
    /// Reads ask for serializable (member-local) answers: not linearizable, so a run with a
    /// cut-off member must be found out. Only for proving the harness can fail.
    pub serializable_reads: bool,
}

impl Default for RegisterConfig {
    fn default() -> Self {
        Self {
            clients: 6,
            keys: 3,
            key_window: Duration::from_secs(4),
            op_timeout: Duration::from_secs(2),
            serializable_reads: false,
        }
    }
}

/// Whether an error means the operation certainly did not take effect (etcd's definite
/// failures, refused before reaching consensus) rather than that its fate is unknown.
#[must_use]
pub fn is_definite_failure(code: Code, message: &str) -> bool {
    match code {
        Code::InvalidArgument
        | Code::FailedPrecondition
        | Code::OutOfRange
        | Code::NotFound
        | Code::PermissionDenied
        | Code::Unauthenticated => true,
        // "too many requests" is refused before a proposal exists; "database space exceeded"
        // before one, or by the apply, which then changes nothing.
        Code::ResourceExhausted => true,
        // The client could not open a connection, so the request was never sent.
        Code::Unavailable => message.starts_with("tcp connect error"),
        _ => false,
    }
}

fn outcome_of_error(error: &etcd_client::Error) -> Outcome {
    match error {
        etcd_client::Error::GRpcStatus(status)
            if is_definite_failure(status.code(), status.message()) =>
        {
            Outcome::Failed(format!("{:?}: {}", status.code(), status.message()))
        }
        etcd_client::Error::GRpcStatus(status) => {
            Outcome::Unknown(format!("{:?}: {}", status.code(), status.message()))
        }
        other => Outcome::Unknown(other.to_string()),
    }
}

fn parse_value(bytes: &[u8]) -> Option<Value> {
    std::str::from_utf8(bytes).ok()?.parse().ok()
}

/// How a chaos client connects.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Connect {
    /// Every request also gives up after the connect timeout (not for watch streams).
    pub(crate) request_timeout: bool,
    /// etcd's `hasleader`: watches end when the member loses its leader.
    pub(crate) require_leader: bool,
}

/// A client of one member; connecting gives up after `timeout` (`None`).
pub(crate) async fn connect(endpoint: &str, timeout: Duration, how: Connect) -> Option<Client> {
    let mut options = crate::security::options()
        .with_connect_timeout(timeout)
        .with_require_leader(how.require_leader);
    if how.request_timeout {
        options = options.with_timeout(timeout);
    }
    tokio::time::timeout(timeout, Client::connect([endpoint], Some(options)))
        .await
        .ok()?
        .ok()
}

/// A client of `endpoint` for calls that wait as long as they must (Lock, Campaign): no
/// request timeout. Tries again every 200 ms until it connects, or `until` passes (`None`).
pub(crate) async fn connect_until(
    endpoint: &str,
    timeout: Duration,
    until: Instant,
) -> Option<Client> {
    let how = Connect {
        request_timeout: false,
        require_leader: false,
    };
    while Instant::now() < until {
        if let Some(client) = connect(endpoint, timeout, how).await {
            return Some(client);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    None
}

/// Runs `per_member` clients per member at once, client `i` talking to member
/// `i % members`; their results, in client order.
///
/// # Errors
/// If a client task panics.
pub(crate) async fn run_clients<T, F, Fut>(
    endpoints: &[String],
    per_member: usize,
    client: F,
) -> anyhow::Result<Vec<T>>
where
    T: Send + 'static,
    F: Fn(usize, String) -> Fut,
    Fut: std::future::Future<Output = T> + Send + 'static,
{
    let tasks: Vec<_> = (0..endpoints.len() * per_member)
        .map(|i| tokio::spawn(client(i, endpoints[i % endpoints.len()].clone())))
        .collect();
    let mut results = Vec::with_capacity(tasks.len());
    for task in tasks {
        results.push(task.await?);
    }
    Ok(results)
}

/// A client whose requests give up after `op_timeout`, for the register and bank loops.
async fn connect_client(endpoint: &str, op_timeout: Duration) -> anyhow::Result<Client> {
    let how = Connect {
        request_timeout: true,
        require_leader: false,
    };
    connect(endpoint, op_timeout, how)
        .await
        .ok_or_else(|| anyhow::anyhow!("cannot connect to {endpoint}"))
}

/// One client's loop: random reads, writes and compare-and-sets on the current window's
/// keys until `until`.
async fn register_client(
    process: usize,
    endpoint: String,
    config: RegisterConfig,
    seed: u64,
    clock: Instant,
    until: Instant,
) -> anyhow::Result<Vec<Op>> {
    let mut rng = Rng::new(seed ^ (process as u64).wrapping_mul(0x9e37_79b9));
    let mut client = connect_client(&endpoint, config.op_timeout).await?;
    let mut ops = Vec::new();
    let mut written = 0u64;
    // The last value this client saw per key: what its compare-and-sets expect.
    let mut last_seen: std::collections::HashMap<String, Option<Value>> = Default::default();
    let now_ns = || clock.elapsed().as_nanos() as u64;
    while Instant::now() < until {
        let window =
            clock.elapsed().as_millis() as u64 / config.key_window.as_millis().max(1) as u64;
        let key = format!("r/{window}/{}", rng.below(config.keys as u64));
        let mut fresh_value = || {
            written += 1;
            (process as u64 + 1) * 1_000_000_000 + written
        };
        let call = match rng.below(10) {
            0..=3 => Call::Read,
            4..=6 => Call::Write(fresh_value()),
            _ => Call::Cas {
                expected: last_seen.get(&key).copied().flatten(),
                new: fresh_value(),
            },
        };
        let invoked_ns = now_ns();
        let answer = match call {
            Call::Read => {
                let options = config
                    .serializable_reads
                    .then(|| GetOptions::new().with_serializable());
                tokio::time::timeout(config.op_timeout, client.get(key.as_str(), options))
                    .await
                    .map(|r| {
                        r.map(|r| {
                            let kv = r.kvs().first();
                            let revisions = Revisions {
                                header: header_revision(r.header()),
                                modified: kv.map(|kv| kv.mod_revision() as u64),
                            };
                            let value = kv.and_then(|kv| parse_value(kv.value()));
                            (Outcome::Read(value), Some(revisions))
                        })
                    })
            }
            Call::Write(v) => tokio::time::timeout(
                config.op_timeout,
                client.put(key.as_str(), v.to_string(), None),
            )
            .await
            .map(|r| r.map(|r| (Outcome::Written, Some(header_only(r.header()))))),
            Call::Cas { expected, new } => {
                let compare = match expected {
                    Some(v) => Compare::value(key.as_str(), CompareOp::Equal, v.to_string()),
                    None => Compare::create_revision(key.as_str(), CompareOp::Equal, 0),
                };
                let txn = Txn::new().when(vec![compare]).and_then(vec![TxnOp::put(
                    key.as_str(),
                    new.to_string(),
                    None,
                )]);
                tokio::time::timeout(config.op_timeout, client.txn(txn))
                    .await
                    .map(|r| {
                        r.map(|r| (Outcome::Cas(r.succeeded()), Some(header_only(r.header()))))
                    })
            }
        };
        let (outcome, revisions) = match answer {
            Ok(Ok(answered)) => answered,
            Ok(Err(e)) => (outcome_of_error(&e), None),
            Err(_) => (
                Outcome::Unknown("no answer within the client timeout".into()),
                None,
            ),
        };
        match (&call, &outcome) {
            (_, Outcome::Read(v)) => {
                last_seen.insert(key.clone(), *v);
            }
            (Call::Write(v), Outcome::Written) | (Call::Cas { new: v, .. }, Outcome::Cas(true)) => {
                last_seen.insert(key.clone(), Some(*v));
            }
            _ => {}
        }
        let failed = matches!(outcome, Outcome::Unknown(_) | Outcome::Failed(_));
        ops.push(Op {
            id: 0,
            process,
            key,
            call,
            invoked_ns,
            completed_ns: Some(now_ns()),
            outcome,
            revisions,
        });
        if failed {
            // Give a fault a moment rather than hammer a member that cannot answer.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    Ok(ops)
}

/// The revision in a response header (0 if the header is missing, which etcd never does).
fn header_revision(header: Option<&etcd_client::ResponseHeader>) -> u64 {
    header.map_or(0, |h| h.revision() as u64)
}

fn header_only(header: Option<&etcd_client::ResponseHeader>) -> Revisions {
    Revisions {
        header: header_revision(header),
        modified: None,
    }
}

/// Runs the register workload against `endpoints` until `until`; returns every operation,
/// ordered by completion.
///
/// # Errors
/// If a client cannot be created.
pub async fn run_register(
    endpoints: Vec<String>,
    config: RegisterConfig,
    seed: u64,
    clock: Instant,
    until: Instant,
) -> anyhow::Result<History> {
    let mut tasks = Vec::new();
    for process in 0..config.clients {
        let endpoint = endpoints[process % endpoints.len()].clone();
        tasks.push(tokio::spawn(register_client(
            process,
            endpoint,
            config.clone(),
            seed,
            clock,
            until,
        )));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await??);
    }
    all.sort_by_key(|op| (op.completed_ns, op.invoked_ns, op.process));
    let mut history = History::new();
    for op in all {
        history.push(op);
    }
    Ok(history)
}

/// How the bank workload runs.
#[derive(Clone, Debug)]
pub struct BankConfig {
    /// Concurrent clients, spread over the endpoints as in the register workload.
    pub clients: usize,
    /// Accounts (`bank/<i>`).
    pub accounts: usize,
    /// Each account's opening balance.
    pub opening_balance: i64,
    /// How long a client waits for an answer.
    pub op_timeout: Duration,
}

impl Default for BankConfig {
    fn default() -> Self {
        Self {
            clients: 6,
            accounts: 5,
            opening_balance: 100,
            op_timeout: Duration::from_secs(2),
        }
    }
}

/// What the bank's clients saw: every read of all accounts, and the transfers.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct BankHistory {
    /// `(client, header revision, balances by account)` of every successful read of all
    /// accounts.
    pub reads: Vec<(usize, i64, Vec<Option<i64>>)>,
    /// Transfers acknowledged as applied.
    pub transfers: usize,
    /// Transfers refused because an account changed in between (no effect).
    pub conflicts: usize,
    /// Transfers with no answer (may have been applied).
    pub unknown: usize,
}

impl BankHistory {
    /// Every read that does not show all accounts holding the opening total between them,
    /// with no balance below zero: money created, lost or spent twice.
    #[must_use]
    pub fn anomalies(&self, config: &BankConfig) -> Vec<String> {
        let total = config.opening_balance * config.accounts as i64;
        let mut last_revision = std::collections::HashMap::new();
        let mut anomalies: Vec<String> = self
            .reads
            .iter()
            .filter_map(|(client, revision, _)| {
                // Each client talks to one member with linearizable reads: the revision it
                // sees never goes back.
                let last = last_revision.insert(*client, *revision).unwrap_or(0);
                (*revision < last).then(|| {
                    format!("client {client} read at revision {revision} after reading at {last}")
                })
            })
            .collect();
        anomalies.extend(self.reads
            .iter()
            .filter_map(|(client, revision, balances)| {
                let sum: i64 = balances.iter().map(|b| b.unwrap_or(0)).sum();
                let missing = balances.iter().any(Option::is_none);
                let negative = balances.iter().any(|b| b.is_some_and(|b| b < 0));
                (sum != total || missing || negative).then(|| {
                    format!(
                        "client {client} read at revision {revision}: balances {balances:?} sum to {sum}, not {total}"
                    )
                })
            }));
        anomalies
    }
}

fn account(i: usize) -> String {
    format!("bank/{i}")
}

/// Reads every account in one linearizable range: `(header revision, balances, mod revisions)`.
async fn read_accounts(
    client: &mut Client,
    accounts: usize,
) -> Result<(i64, Vec<Option<i64>>, Vec<i64>), etcd_client::Error> {
    let response = client
        .get("bank/", Some(GetOptions::new().with_prefix()))
        .await?;
    let mut balances = vec![None; accounts];
    let mut revisions = vec![0; accounts];
    for kv in response.kvs() {
        let index = std::str::from_utf8(kv.key())
            .ok()
            .and_then(|k| k.strip_prefix("bank/"))
            .and_then(|i| i.parse::<usize>().ok());
        if let Some(i) = index.filter(|&i| i < accounts) {
            balances[i] = std::str::from_utf8(kv.value())
                .ok()
                .and_then(|v| v.parse().ok());
            revisions[i] = kv.mod_revision();
        }
    }
    let revision = response.header().map_or(0, |h| h.revision());
    Ok((revision, balances, revisions))
}

/// Opens the accounts in one txn, so that no read ever sees a partial bank.
///
/// # Errors
/// If the cluster does not answer.
pub async fn open_bank(endpoint: &str, config: &BankConfig) -> anyhow::Result<()> {
    let mut client = Client::connect([endpoint], Some(crate::security::options())).await?;
    let puts: Vec<TxnOp> = (0..config.accounts)
        .map(|i| TxnOp::put(account(i), config.opening_balance.to_string(), None))
        .collect();
    client.txn(Txn::new().and_then(puts)).await?;
    Ok(())
}

async fn bank_client(
    process: usize,
    endpoint: String,
    config: BankConfig,
    seed: u64,
    until: Instant,
) -> anyhow::Result<BankHistory> {
    let mut rng = Rng::new(seed ^ 0x62616e6b ^ (process as u64).wrapping_mul(0x9e37_79b9));
    let mut client = connect_client(&endpoint, config.op_timeout).await?;
    let mut history = BankHistory::default();
    while Instant::now() < until {
        let read = tokio::time::timeout(
            config.op_timeout,
            read_accounts(&mut client, config.accounts),
        )
        .await;
        let Ok(Ok((revision, balances, revisions))) = read else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        history.reads.push((process, revision, balances.clone()));
        if rng.chance(25) {
            continue;
        }
        let from = rng.below(config.accounts as u64) as usize;
        let to = (from + 1 + rng.below(config.accounts as u64 - 1) as usize) % config.accounts;
        let (Some(from_balance), Some(to_balance)) = (balances[from], balances[to]) else {
            continue;
        };
        let amount = 1 + rng.below(5) as i64;
        if from_balance < amount {
            continue;
        }
        // Applied only if neither account changed since the read: no lost update, no
        // double spend.
        let txn = Txn::new()
            .when(vec![
                Compare::mod_revision(account(from), CompareOp::Equal, revisions[from]),
                Compare::mod_revision(account(to), CompareOp::Equal, revisions[to]),
            ])
            .and_then(vec![
                TxnOp::put(account(from), (from_balance - amount).to_string(), None),
                TxnOp::put(account(to), (to_balance + amount).to_string(), None),
            ]);
        match tokio::time::timeout(config.op_timeout, client.txn(txn)).await {
            Ok(Ok(r)) if r.succeeded() => history.transfers += 1,
            Ok(Ok(_)) => history.conflicts += 1,
            _ => {
                history.unknown += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    Ok(history)
}

/// Runs the bank workload until `until` (the accounts must be open).
///
/// # Errors
/// If a client cannot be created.
pub async fn run_bank(
    endpoints: Vec<String>,
    config: BankConfig,
    seed: u64,
    until: Instant,
) -> anyhow::Result<BankHistory> {
    let mut tasks = Vec::new();
    for process in 0..config.clients {
        let endpoint = endpoints[process % endpoints.len()].clone();
        tasks.push(tokio::spawn(bank_client(
            process,
            endpoint,
            config.clone(),
            seed,
            until,
        )));
    }
    let mut all = BankHistory::default();
    for task in tasks {
        let part = task.await??;
        all.reads.extend(part.reads);
        all.transfers += part.transfers;
        all.conflicts += part.conflicts;
        all.unknown += part.unknown;
    }
    Ok(all)
}

#[cfg(test)]
mod tests {
    use super::*;

    // Proves the bank check flags money created or lost, a missing account, a negative
    // balance and a client's revision going back, and passes a consistent history.
    #[test]
    fn bank_anomalies() {
        let config = BankConfig {
            accounts: 2,
            opening_balance: 10,
            ..BankConfig::default()
        };
        let history = |reads: Vec<(usize, i64, Vec<Option<i64>>)>| BankHistory {
            reads,
            ..BankHistory::default()
        };
        let fine = history(vec![
            (0, 2, vec![Some(10), Some(10)]),
            (0, 3, vec![Some(7), Some(13)]),
            (1, 2, vec![Some(10), Some(10)]),
        ]);
        assert_eq!(fine.anomalies(&config), Vec::<String>::new());
        for bad in [
            vec![(0, 2, vec![Some(10), Some(11)])],
            vec![(0, 2, vec![Some(20), None])],
            vec![(0, 2, vec![Some(-1), Some(21)])],
            vec![
                (0, 3, vec![Some(10), Some(10)]),
                (0, 2, vec![Some(10), Some(10)]),
            ],
        ] {
            assert_eq!(history(bad.clone()).anomalies(&config).len(), 1, "{bad:?}");
        }
        assert!(is_definite_failure(
            Code::InvalidArgument,
            "etcdserver: key is not provided"
        ));
        assert!(is_definite_failure(Code::Unavailable, "tcp connect error"));
        assert!(!is_definite_failure(
            Code::Unavailable,
            "etcdserver: request timed out"
        ));
        assert!(is_definite_failure(
            Code::ResourceExhausted,
            "etcdserver: mvcc: database space exceeded"
        ));
        assert!(!is_definite_failure(Code::Unknown, "transport error"));
    }
}
