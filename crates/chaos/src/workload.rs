//! Client workloads through the `etcd-client` crate, recording every operation.

use std::time::{Duration, Instant};

use etcd_client::{Client, Compare, CompareOp, ConnectOptions, GetOptions, Txn, TxnOp};
use tonic::Code;

use crate::history::{Call, History, Op, Outcome, Value};
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
        // Refused at admission, before a proposal exists.
        Code::ResourceExhausted => message == "etcdserver: too many requests",
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

async fn connect(endpoint: &str, config: &RegisterConfig) -> anyhow::Result<Client> {
    let options = ConnectOptions::new()
        .with_connect_timeout(config.op_timeout)
        .with_timeout(config.op_timeout);
    Ok(Client::connect([endpoint], Some(options)).await?)
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
    let mut client = connect(&endpoint, &config).await?;
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
                            Outcome::Read(r.kvs().first().and_then(|kv| parse_value(kv.value())))
                        })
                    })
            }
            Call::Write(v) => tokio::time::timeout(
                config.op_timeout,
                client.put(key.as_str(), v.to_string(), None),
            )
            .await
            .map(|r| r.map(|_| Outcome::Written)),
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
                    .map(|r| r.map(|r| Outcome::Cas(r.succeeded())))
            }
        };
        let outcome = match answer {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(e)) => outcome_of_error(&e),
            Err(_) => Outcome::Unknown("no answer within the client timeout".into()),
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
        });
        if failed {
            // Give a fault a moment rather than hammer a member that cannot answer.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    Ok(ops)
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
