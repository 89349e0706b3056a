//! A bank: concurrent transfers between accounts as txns guarded by mod revisions.
//!
//! Each transfer reads both accounts, then writes both new balances in a txn that applies only
//! if neither account changed since the read (`mod_revision` unchanged) and the transfer's own
//! id key does not exist yet (`create_revision == 0`); the same txn writes that id key. A
//! transfer whose answer is lost (a member killed mid-request) is retried with the same id:
//! if the first attempt was applied, the id key is there and the retry stops. Checks:
//! - the total of every account never changes (every audit read, and at the end);
//! - no balance is ever negative;
//! - the final balances are exactly the opening balances moved by the recorded transfers, one
//!   record per transfer id: nothing applied twice, nothing lost;
//! - every transfer acknowledged as applied has its record.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd_client::{Client, Compare, CompareOp, GetOptions, Txn, TxnOp, TxnOpResponse};

use crate::{connect, run_clients, within, Common, Report};

/// The bank's flags.
#[derive(clap::Args, Clone, Debug)]
pub struct Config {
    #[command(flatten)]
    #[allow(missing_docs)]
    pub common: Common,
    /// Accounts.
    #[arg(long, default_value_t = 5)]
    pub accounts: usize,
    /// Each account's opening balance.
    #[arg(long, default_value_t = 100)]
    pub opening_balance: i64,
    /// Concurrent clients making transfers.
    #[arg(long, default_value_t = 8)]
    pub clients: usize,
    /// Seconds of transfers.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
}

/// What one client did.
#[derive(Default)]
struct Tally {
    /// Transfer ids acknowledged as applied.
    applied: Vec<String>,
    /// Transfers not made for want of money.
    declined: usize,
    /// Attempts refused because an account changed in between (then retried).
    conflicts: usize,
    /// Attempts with no answer (then retried under the same id).
    unknown: usize,
    /// Transfers given up with their outcome unknown.
    abandoned: usize,
}

/// The balances and mod revisions of every account, and whether `transfer` is recorded, at
/// one revision.
struct Snapshot {
    balances: Vec<Option<i64>>,
    revisions: Vec<i64>,
    recorded: bool,
}

fn account(prefix: &str, i: usize) -> String {
    format!("{prefix}account/{i:03}")
}

fn parse_balances(prefix: &str, accounts: usize, kvs: &[etcd_client::KeyValue]) -> Snapshot {
    let mut snapshot = Snapshot {
        balances: vec![None; accounts],
        revisions: vec![0; accounts],
        recorded: false,
    };
    for kv in kvs {
        let index = kv
            .key_str()
            .ok()
            .and_then(|k| k.strip_prefix(&format!("{prefix}account/")))
            .and_then(|i| i.parse::<usize>().ok());
        if let Some(i) = index.filter(|&i| i < accounts) {
            snapshot.balances[i] = kv.value_str().ok().and_then(|v| v.parse().ok());
            snapshot.revisions[i] = kv.mod_revision();
        }
    }
    snapshot
}

/// Reads every account and the transfer's id key in one read-only txn (one revision).
async fn read(
    client: &mut Client,
    prefix: &str,
    accounts: usize,
    transfer: &str,
    timeout: Duration,
) -> Option<Snapshot> {
    let txn = Txn::new().and_then(vec![
        TxnOp::get(
            format!("{prefix}account/"),
            Some(GetOptions::new().with_prefix()),
        ),
        TxnOp::get(transfer, None),
    ]);
    let response = within(timeout, client.txn(txn)).await?;
    let mut ranges = response.op_responses().into_iter().map(|op| match op {
        TxnOpResponse::Get(r) => r.kvs().to_vec(),
        _ => Vec::new(),
    });
    let accounts_kvs = ranges.next()?;
    let transfer_kvs = ranges.next()?;
    let mut snapshot = parse_balances(prefix, accounts, &accounts_kvs);
    snapshot.recorded = !transfer_kvs.is_empty();
    Some(snapshot)
}

/// One transfer, retried until it is applied or declined (or the time is up): whether it
/// was applied.
#[allow(clippy::too_many_arguments)]
async fn transfer(
    client: &mut Client,
    config: &Config,
    prefix: &str,
    id: &str,
    from: usize,
    to: usize,
    amount: i64,
    give_up: Instant,
    tally: &mut Tally,
) -> Option<bool> {
    let timeout = config.common.timeout();
    let record = format!("{prefix}transfer/{id}");
    while Instant::now() < give_up {
        let Some(snapshot) = read(client, prefix, config.accounts, &record, timeout).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        if snapshot.recorded {
            // An earlier attempt whose answer was lost was applied.
            return Some(true);
        }
        let (Some(from_balance), Some(to_balance)) =
            (snapshot.balances[from], snapshot.balances[to])
        else {
            return Some(false);
        };
        if from_balance < amount {
            return Some(false);
        }
        let txn = Txn::new()
            .when(vec![
                Compare::mod_revision(
                    account(prefix, from),
                    CompareOp::Equal,
                    snapshot.revisions[from],
                ),
                Compare::mod_revision(
                    account(prefix, to),
                    CompareOp::Equal,
                    snapshot.revisions[to],
                ),
                Compare::create_revision(record.as_str(), CompareOp::Equal, 0),
            ])
            .and_then(vec![
                TxnOp::put(
                    account(prefix, from),
                    (from_balance - amount).to_string(),
                    None,
                ),
                TxnOp::put(account(prefix, to), (to_balance + amount).to_string(), None),
                TxnOp::put(record.as_str(), format!("{from} {to} {amount}"), None),
            ]);
        match within(timeout, client.txn(txn)).await {
            Some(r) if r.succeeded() => return Some(true),
            Some(_) => tally.conflicts += 1,
            None => {
                tally.unknown += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    None
}

async fn client_loop(index: usize, config: Config, prefix: String, until: Instant) -> Tally {
    let mut tally = Tally::default();
    let mut rng = seeded::Rng::new(config.common.seed ^ ((index as u64 + 1) * 0x9e37_79b9));
    let Ok(mut client) = connect(config.common.endpoint(index)).await else {
        return tally;
    };
    let mut n = 0;
    while Instant::now() < until {
        n += 1;
        let id = format!("{index}-{n}");
        let from = rng.below(config.accounts as u64) as usize;
        let to = (from + 1 + rng.below(config.accounts as u64 - 1) as usize) % config.accounts;
        let amount = 1 + rng.below(20) as i64;
        // A transfer begun keeps trying a while past the end, so few stay unknown.
        let give_up = until + Duration::from_secs(10);
        let done = transfer(
            &mut client,
            &config,
            &prefix,
            &id,
            from,
            to,
            amount,
            give_up,
            &mut tally,
        )
        .await;
        match done {
            Some(true) => tally.applied.push(id),
            Some(false) => tally.declined += 1,
            None => tally.abandoned += 1,
        }
    }
    tally
}

/// Reads every account now and then while the transfers run: `(reads, bad reads)`.
async fn audit(config: Config, prefix: String, stop: Arc<AtomicBool>) -> (usize, Vec<String>) {
    let mut reads = 0;
    let mut bad = Vec::new();
    let Ok(mut client) = connect(config.common.endpoint(0)).await else {
        return (0, vec!["the auditor could not connect".to_string()]);
    };
    let total = config.opening_balance * config.accounts as i64;
    while !stop.load(Ordering::Relaxed) {
        let options = GetOptions::new().with_prefix();
        let read = within(
            config.common.timeout(),
            client.get(format!("{prefix}account/"), Some(options)),
        )
        .await;
        if let Some(r) = read {
            reads += 1;
            let snapshot = parse_balances(&prefix, config.accounts, r.kvs());
            let sum: i64 = snapshot.balances.iter().flatten().sum();
            let negative = snapshot.balances.iter().flatten().any(|b| *b < 0);
            if sum != total || negative || snapshot.balances.contains(&None) {
                bad.push(format!(
                    "at revision {}: balances {:?} (sum {sum})",
                    r.header().map_or(0, |h| h.revision()),
                    snapshot.balances
                ));
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    (reads, bad)
}

/// Runs the bank: opens the accounts, runs the transfers and the auditor, checks the books.
///
/// # Errors
/// If the accounts cannot be opened or the books cannot be read at the end.
pub async fn run(config: &Config) -> anyhow::Result<Report> {
    anyhow::ensure!(config.accounts >= 2, "a transfer needs two accounts");
    let prefix = config.common.prefix("bank");
    let mut admin = connect(config.common.endpoint(0)).await?;
    // The accounts open in one txn: no reader ever sees half a bank.
    let puts: Vec<TxnOp> = (0..config.accounts)
        .map(|i| {
            TxnOp::put(
                account(&prefix, i),
                config.opening_balance.to_string(),
                None,
            )
        })
        .collect();
    let opened = Txn::new()
        .when(vec![Compare::create_revision(
            account(&prefix, 0),
            CompareOp::Equal,
            0,
        )])
        .and_then(puts);
    admin.txn(opened).await?;
    let until = Instant::now() + Duration::from_secs(config.seconds);
    let stop = Arc::new(AtomicBool::new(false));
    let auditor = tokio::spawn(audit(config.clone(), prefix.clone(), stop.clone()));
    let parts = run_clients(config.clients, |i| {
        client_loop(i, config.clone(), prefix.clone(), until)
    })
    .await?;
    let mut tally = Tally::default();
    for part in parts {
        tally.applied.extend(part.applied);
        tally.declined += part.declined;
        tally.conflicts += part.conflicts;
        tally.unknown += part.unknown;
        tally.abandoned += part.abandoned;
    }
    stop.store(true, Ordering::Relaxed);
    let (audits, bad_audits) = auditor.await?;

    // The books at one revision: accounts and transfer records.
    let mut report = Report::default();
    let books = {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let options = GetOptions::new().with_prefix();
            match within(
                config.common.timeout(),
                admin.get(prefix.as_str(), Some(options)),
            )
            .await
            {
                Some(r) => break r,
                None if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                None => anyhow::bail!("cannot read the books"),
            }
        }
    };
    let snapshot = parse_balances(&prefix, config.accounts, books.kvs());
    let mut records = BTreeMap::new();
    let mut moved = vec![0i64; config.accounts];
    for kv in books.kvs() {
        let Some(id) = kv
            .key_str()
            .ok()
            .and_then(|k| k.strip_prefix(&format!("{prefix}transfer/")))
        else {
            continue;
        };
        let parts: Vec<i64> = kv
            .value_str()
            .unwrap_or("")
            .split(' ')
            .filter_map(|p| p.parse().ok())
            .collect();
        if let [from, to, amount] = parts[..] {
            moved[from as usize] -= amount;
            moved[to as usize] += amount;
        }
        records.insert(id.to_string(), kv.version());
    }
    let total = config.opening_balance * config.accounts as i64;
    let sum: i64 = snapshot.balances.iter().flatten().sum();
    report.note(format!(
        "{} transfers applied, {} declined (not enough money), {} attempts refused by the mod-revision guard and retried, {} answers lost and retried, {} given up unknown; {audits} audit reads",
        tally.applied.len(),
        tally.declined,
        tally.conflicts,
        tally.unknown,
        tally.abandoned
    ));
    report.note(format!(
        "final balances {:?} at revision {}",
        snapshot.balances,
        books.header().map_or(0, |h| h.revision())
    ));
    report.check(
        format!(
            "every audit read during the run showed the total {total} and no negative balance ({} did not{})",
            bad_audits.len(),
            bad_audits
                .first()
                .map_or(String::new(), |b| format!(", first {b}"))
        ),
        bad_audits.is_empty(),
    );
    report.check(
        format!("the final total is {total} (it is {sum})"),
        sum == total && !snapshot.balances.contains(&None),
    );
    report.check(
        "no final balance is negative",
        snapshot.balances.iter().flatten().all(|b| *b >= 0),
    );
    let expected: Vec<Option<i64>> = moved
        .iter()
        .map(|m| Some(config.opening_balance + m))
        .collect();
    report.check(
        format!(
            "the final balances are the opening ones moved by the {} recorded transfers, each once (expected {expected:?})",
            records.len()
        ),
        expected == snapshot.balances && records.values().all(|&version| version == 1),
    );
    let missing: Vec<&String> = tally
        .applied
        .iter()
        .filter(|id| !records.contains_key(*id))
        .collect();
    report.check(
        format!(
            "every transfer acknowledged as applied is recorded ({} missing)",
            missing.len()
        ),
        missing.is_empty(),
    );
    report.check(
        format!("transfers were made ({} applied)", tally.applied.len()),
        !tally.applied.is_empty(),
    );
    Ok(report)
}
