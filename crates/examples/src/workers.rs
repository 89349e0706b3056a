//! Workers: service registration by lease, a leader among them by the Election service, and
//! the leader's work fenced by its leader key.
//!
//! Each worker opens a session (a lease, kept alive), registers itself under
//! `members/<worker>` with that lease, and campaigns for leadership on `leader` with the same
//! lease. The leader takes the jobs one by one (the lowest job without a `done/<job>` key),
//! works on each a while, and records it done with a txn guarded by its leader key's creation
//! revision (`create_revision(leader key) == rev`). A leader that stalls past its lease's TTL
//! (a pause, its member cut off) loses its registration and its leader key with the lease;
//! another worker is elected and carries on, and when the stalled one wakes up its write is
//! refused: it opens a new session and campaigns again. Checks:
//! - every job was recorded done exactly once (version 1);
//! - every record was written by the leader of its revision (the oldest key of the election
//!   there named the writer, with the creation revision the record carries), while the
//!   writer was registered;
//! - once every worker has left, no registration or candidate is left.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use etcd_client::{
    Client, Compare, CompareOp, GetOptions, LeaderKey, PutOptions, ResignOptions, SortOrder,
    SortTarget, Txn, TxnOp,
};

use crate::{connect, keep_alive, run_clients, sessions_ended_by, within, Common, Report};

/// The workers' flags.
#[derive(clap::Args, Clone, Debug)]
pub struct Config {
    #[command(flatten)]
    #[allow(missing_docs)]
    pub common: Common,
    /// Workers.
    #[arg(long, default_value_t = 3)]
    pub workers: usize,
    /// Jobs to do.
    #[arg(long, default_value_t = 40)]
    pub jobs: usize,
    /// Milliseconds of work per job.
    #[arg(long, default_value_t = 100)]
    pub job_ms: u64,
    /// TTL of a worker's session, in seconds.
    #[arg(long, default_value_t = 2)]
    pub ttl: i64,
    /// Seconds after which the workers give up.
    #[arg(long, default_value_t = 120)]
    pub give_up_after: u64,
}

/// The election's name under `prefix`.
#[must_use]
pub fn election(prefix: &str) -> String {
    format!("{prefix}leader")
}

/// What one worker did.
#[derive(Debug, Default)]
struct Shift {
    /// Terms it was elected for.
    terms: usize,
    /// Jobs it recorded (acknowledged).
    recorded: usize,
    /// Records refused by the fence (it had lost its leadership).
    fenced_off: usize,
    /// Sessions it opened.
    sessions: usize,
}

fn done_key(prefix: &str, job: usize) -> String {
    format!("{prefix}done/{job:04}")
}

/// The lowest job not recorded done (`None`: all done), or an error if unanswered.
async fn next_job(
    client: &mut Client,
    prefix: &str,
    jobs: usize,
    timeout: Duration,
) -> Option<Option<usize>> {
    let options = GetOptions::new().with_prefix().with_keys_only();
    let r = within(timeout, client.get(format!("{prefix}done/"), Some(options))).await?;
    let mut done = vec![false; jobs];
    for kv in r.kvs() {
        let job = kv
            .key_str()
            .ok()
            .and_then(|k| k.strip_prefix(&format!("{prefix}done/")))
            .and_then(|j| j.parse::<usize>().ok());
        if let Some(j) = job.filter(|&j| j < jobs) {
            done[j] = true;
        }
    }
    Some(done.iter().position(|d| !d))
}

/// How a term ended.
enum TermEnd {
    /// Every job is done.
    Finished,
    /// The fence refused a record, or the cluster could not be reached: a new session.
    Lost,
}

/// A term as leader: jobs until all are done or the fence refuses.
async fn lead(
    client: &mut Client,
    config: &Config,
    prefix: &str,
    me: &str,
    leader: &LeaderKey,
    shift: &mut Shift,
) -> TermEnd {
    let timeout = config.common.timeout();
    let mut unanswered = 0;
    loop {
        let Some(job) = next_job(client, prefix, config.jobs, timeout).await else {
            unanswered += 1;
            if unanswered > 5 {
                return TermEnd::Lost;
            }
            continue;
        };
        let Some(job) = job else {
            return TermEnd::Finished;
        };
        // The work.
        tokio::time::sleep(Duration::from_millis(config.job_ms)).await;
        let record = Txn::new()
            .when(vec![Compare::create_revision(
                leader.key(),
                CompareOp::Equal,
                leader.rev(),
            )])
            .and_then(vec![TxnOp::put(
                done_key(prefix, job),
                format!("{me}@{}", leader.rev()),
                None,
            )]);
        match within(timeout, client.txn(record)).await {
            Some(r) if r.succeeded() => {
                shift.recorded += 1;
                unanswered = 0;
            }
            Some(_) => {
                shift.fenced_off += 1;
                return TermEnd::Lost;
            }
            None => {
                unanswered += 1;
                if unanswered > 5 {
                    return TermEnd::Lost;
                }
            }
        }
    }
}

async fn worker(index: usize, config: Config, prefix: String, until: Instant) -> Shift {
    let mut shift = Shift::default();
    let timeout = config.common.timeout();
    let me = format!("worker-{index}");
    let Ok(mut client) = connect(config.common.endpoint(index)).await else {
        return shift;
    };
    while Instant::now() < until {
        let Some(lease) = within(timeout, client.lease_grant(config.ttl, None)).await else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        shift.sessions += 1;
        let id = lease.id();
        let keeper = keep_alive(&client, id, config.ttl);
        let registered = within(
            timeout,
            client.put(
                format!("{prefix}members/{me}"),
                me.as_str(),
                Some(PutOptions::new().with_lease(id)),
            ),
        )
        .await;
        let elected = match registered {
            Some(_) => {
                let wait = until.saturating_duration_since(Instant::now());
                within(wait, client.campaign(election(&prefix), me.as_str(), id)).await
            }
            None => None,
        };
        let end = match elected.as_ref().and_then(|r| r.leader()) {
            Some(leader) => {
                shift.terms += 1;
                let end = lead(&mut client, &config, &prefix, &me, leader, &mut shift).await;
                let resign = ResignOptions::new().with_leader(leader.clone());
                let _ = within(timeout, client.resign(Some(resign))).await;
                end
            }
            None => TermEnd::Lost,
        };
        keeper.abort();
        let _ = within(timeout, client.lease_revoke(id)).await;
        if matches!(end, TermEnd::Finished) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    shift
}

/// Runs the workers and checks their records.
///
/// # Errors
/// If the records cannot be read back.
pub async fn run(config: &Config) -> anyhow::Result<Report> {
    let prefix = config.common.prefix("workers");
    let until = Instant::now() + Duration::from_secs(config.give_up_after);
    let shifts = run_clients(config.workers, |i| {
        worker(i, config.clone(), prefix.clone(), until)
    })
    .await?;
    let mut admin = connect(config.common.endpoint(0)).await?;
    let timeout = config.common.timeout();
    let deadline = sessions_ended_by(config.ttl);
    let (records, left_over) = loop {
        let read = within(
            timeout,
            admin.get(prefix.as_str(), Some(GetOptions::new().with_prefix())),
        )
        .await;
        let Some(all) = read else {
            anyhow::ensure!(Instant::now() < deadline, "cannot read the records");
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        let mut records = BTreeMap::new();
        let mut left_over = Vec::new();
        for kv in all.kvs() {
            let key = kv.key_str().unwrap_or("").to_string();
            if let Some(job) = key.strip_prefix(&format!("{prefix}done/")) {
                records.insert(
                    job.to_string(),
                    (
                        kv.value_str().unwrap_or("").to_string(),
                        kv.mod_revision(),
                        kv.version(),
                    ),
                );
            } else if key.starts_with(&format!("{prefix}members/"))
                || key.starts_with(&format!("{}/", election(&prefix)))
            {
                left_over.push(key);
            }
        }
        if left_over.is_empty() || Instant::now() >= deadline {
            break (records, left_over);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    // Each record against the election and the registry at its revision.
    let mut unfenced = Vec::new();
    for (job, (value, revision, _)) in &records {
        let (writer, rev) = value.split_once('@').unwrap_or(("", ""));
        let oldest = GetOptions::new()
            .with_prefix()
            .with_revision(*revision)
            .with_sort(SortTarget::Create, SortOrder::Ascend)
            .with_limit(1);
        let leader = admin
            .get(format!("{}/", election(&prefix)), Some(oldest))
            .await?;
        let led = leader.kvs().first().is_some_and(|kv| {
            kv.value() == writer.as_bytes() && kv.create_revision().to_string() == rev
        });
        let member = GetOptions::new().with_revision(*revision);
        let registered = !admin
            .get(format!("{prefix}members/{writer}"), Some(member))
            .await?
            .kvs()
            .is_empty();
        if !led || !registered {
            unfenced.push(format!(
                "job {job} recorded by {value} at revision {revision}: leading {led}, registered {registered}"
            ));
        }
    }
    let mut report = Report::default();
    report.note(format!(
        "{} workers, {} jobs: terms {:?}, sessions {:?}, jobs recorded {:?}, records refused by the fence {:?} (per worker)",
        config.workers,
        config.jobs,
        shifts.iter().map(|s| s.terms).collect::<Vec<_>>(),
        shifts.iter().map(|s| s.sessions).collect::<Vec<_>>(),
        shifts.iter().map(|s| s.recorded).collect::<Vec<_>>(),
        shifts.iter().map(|s| s.fenced_off).collect::<Vec<_>>(),
    ));
    let twice: Vec<&String> = records
        .iter()
        .filter(|(_, (_, _, version))| *version != 1)
        .map(|(job, _)| job)
        .collect();
    report.check(
        format!(
            "every job was recorded done exactly once ({} of {} recorded, {} more than once)",
            records.len(),
            config.jobs,
            twice.len()
        ),
        records.len() == config.jobs && twice.is_empty(),
    );
    report.check(
        format!(
            "every record was written by the leader of its revision, while registered{}",
            unfenced
                .first()
                .map_or(String::new(), |u| format!(" ({} not: {u})", unfenced.len()))
        ),
        unfenced.is_empty(),
    );
    report.check(
        format!(
            "once every worker left, no registration or candidate is left ({} left)",
            left_over.len()
        ),
        left_over.is_empty(),
    );
    Ok(report)
}
