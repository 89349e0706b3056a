//! The watch workload and its validator.
//!
//! Writers change keys under `w/` (single puts, two-key txns, deletes) through every member,
//! while a watcher per member follows the whole prefix through kills, pauses and partitions:
//! with `hasleader` set (as Kubernetes does), asking for progress every so often, and after
//! any break (an error, the stream ending, or silence while a progress request goes
//! unanswered) resuming on the next member from the revision after the last one it saw, as
//! etcd's clients do. After the heal a final write marks the end; every watcher must reach it.
//! A fresh watch from the first revision then gives the reference history.
//!
//! The validator checks etcd's watch guarantees for every watcher, against the reference
//! and the writers' acknowledged writes:
//! - ordered and unique: revisions never go back, no (revision, key) twice;
//! - atomic: a revision's events never span two responses;
//! - reliable and resumable: across every break, the events seen are exactly the reference's
//!   from the watcher's start to the last revision it saw;
//! - bookmarkable: a progress notification at revision `r` comes after every event up to `r`;
//! - durable and real: every acknowledged write is in the reference at its revision with its
//!   value, and every value in the reference was written by some client;
//! - live: every watcher reaches the final write.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use etcd_client::{Client, DeleteOptions, EventType, PutOptions, Txn, TxnOp, WatchOptions};

use crate::nemesis::Rng;
use crate::workload::{connect, is_definite_failure, Connect};

/// The prefix every key of the workload lives under.
const PREFIX: &str = "w/";
/// The key of the final write.
const END_KEY: &str = "w/end";

/// How the watch workload runs.
#[derive(Clone, Debug)]
pub struct WatchConfig {
    /// Concurrent writers; writer `w` talks to member `w % members`.
    pub writers: usize,
    /// Keys written.
    pub keys: usize,
    /// How long a writer waits for an answer before recording the outcome as unknown.
    pub op_timeout: Duration,
    /// How often a watcher asks for progress.
    pub progress_every: Duration,
    /// Silence (no response at all, progress requests included) after which a watcher gives
    /// up on its member and resumes on the next.
    pub stall: Duration,
    /// How long after the final write every watcher must have seen it.
    pub catch_up: Duration,
}

impl Default for WatchConfig {
    fn default() -> Self {
        Self {
            writers: 4,
            keys: 6,
            op_timeout: Duration::from_secs(2),
            progress_every: Duration::from_millis(500),
            stall: Duration::from_secs(3),
            catch_up: Duration::from_secs(30),
        }
    }
}

/// One event as a watcher saw it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Seen {
    /// The event's revision (the key's mod revision).
    pub revision: i64,
    /// The key.
    pub key: String,
    /// The value put, `None` for a delete.
    pub value: Option<String>,
}

/// What a watcher received, in order.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub enum Received {
    /// One response's events.
    Events(Vec<Seen>),
    /// A progress notification for the whole stream at this revision.
    Progress(i64),
    /// The stream broke (the reason); the watcher resumes from the revision after the last
    /// one it saw.
    Break(String),
}

/// One watcher's record.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Observed {
    /// The revision it started from.
    pub start: i64,
    /// Everything it received, in order, across breaks.
    pub received: Vec<Received>,
}

impl Observed {
    fn events(&self) -> impl Iterator<Item = &Seen> {
        self.received.iter().flat_map(|r| match r {
            Received::Events(events) => events.as_slice(),
            _ => &[],
        })
    }

    fn last_revision(&self) -> Option<i64> {
        self.events().map(|e| e.revision).max()
    }
}

/// The outcome of one write.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub enum WriteOutcome {
    /// Acknowledged at this revision.
    Acked(i64),
    /// Refused before it could take effect.
    Failed,
    /// No answer: it may or may not have taken effect.
    Unknown,
}

/// One write: the keys it put (with their values) or deleted, and what became of it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Write {
    /// `(key, Some(value))` for puts, `(key, None)` for a delete.
    pub changes: Vec<(String, Option<String>)>,
    /// What the client was told.
    pub outcome: WriteOutcome,
}

/// Everything a watch run recorded.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct WatchHistory {
    /// Every write attempted.
    pub writes: Vec<Write>,
    /// Every watcher's record.
    pub watchers: Vec<Observed>,
    /// The revision of the final write (0 if it never succeeded).
    pub end: i64,
    /// Every event from revision 1 to `end`, read by a fresh watch after the run.
    pub reference: Vec<Seen>,
}

impl WatchHistory {
    /// Writes acknowledged, failed, unknown.
    #[must_use]
    pub fn counts(&self) -> (usize, usize, usize) {
        let count =
            |f: fn(&WriteOutcome) -> bool| self.writes.iter().filter(|w| f(&w.outcome)).count();
        (
            count(|o| matches!(o, WriteOutcome::Acked(_))),
            count(|o| *o == WriteOutcome::Failed),
            count(|o| *o == WriteOutcome::Unknown),
        )
    }

    /// Everything wrong with the run; empty for a pass.
    #[must_use]
    pub fn anomalies(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.end == 0 {
            problems.push("the final write never succeeded".to_string());
            return problems;
        }
        problems.extend(self.reference_problems());
        for (i, watcher) in self.watchers.iter().enumerate() {
            problems.extend(
                watcher_problems(watcher, &self.reference, self.end)
                    .into_iter()
                    .map(|p| format!("watcher {i}: {p}")),
            );
        }
        problems
    }

    /// The reference against the writes: every acknowledged write at its revision, nothing
    /// that no client wrote, revisions in order.
    fn reference_problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let mut by_revision: BTreeMap<i64, Vec<&Seen>> = BTreeMap::new();
        for seen in &self.reference {
            by_revision.entry(seen.revision).or_default().push(seen);
        }
        if !self
            .reference
            .windows(2)
            .all(|w| w[0].revision <= w[1].revision)
        {
            problems.push("the reference history goes back in revision".to_string());
        }
        let attempted: BTreeSet<(&str, &str)> = self
            .writes
            .iter()
            .flat_map(|w| &w.changes)
            .filter_map(|(k, v)| v.as_deref().map(|v| (k.as_str(), v)))
            .collect();
        for seen in &self.reference {
            if let Some(value) = &seen.value {
                if seen.key != END_KEY && !attempted.contains(&(seen.key.as_str(), value.as_str()))
                {
                    problems.push(format!(
                        "reference has {}={value} at {}, which no client wrote",
                        seen.key, seen.revision
                    ));
                }
            }
        }
        for write in &self.writes {
            let WriteOutcome::Acked(revision) = write.outcome else {
                continue;
            };
            let there = by_revision.get(&revision).cloned().unwrap_or_default();
            for (key, value) in &write.changes {
                // A delete of an absent key changes nothing and makes no event.
                let found = there.iter().any(|s| &s.key == key && &s.value == value);
                if !found && value.is_some() {
                    problems.push(format!(
                        "acknowledged write {key}={value:?} at revision {revision} is not in the history (there: {there:?})"
                    ));
                }
            }
        }
        problems
    }
}

/// One watcher against the reference.
fn watcher_problems(watcher: &Observed, reference: &[Seen], end: i64) -> Vec<String> {
    let mut problems = Vec::new();
    let events: Vec<&Seen> = watcher.events().collect();
    // Ordered and unique.
    let mut seen_keys = BTreeSet::new();
    for pair in events.windows(2) {
        if pair[1].revision < pair[0].revision {
            problems.push(format!(
                "revision {} after {}",
                pair[1].revision, pair[0].revision
            ));
        }
    }
    for event in &events {
        if !seen_keys.insert((event.revision, event.key.as_str())) {
            problems.push(format!(
                "{} at revision {} seen twice",
                event.key, event.revision
            ));
        }
    }
    // Atomic: a response ends a revision.
    let mut last_of_previous: Option<i64> = None;
    for received in &watcher.received {
        if let Received::Events(events) = received {
            if let (Some(last), Some(first)) = (last_of_previous, events.first()) {
                if first.revision <= last {
                    problems.push(format!(
                        "revision {} split across responses",
                        first.revision
                    ));
                }
            }
            last_of_previous = events.last().map(|e| e.revision).or(last_of_previous);
        }
    }
    // Reliable and resumable: exactly the reference, from the start to the last revision.
    let last = watcher.last_revision().unwrap_or(watcher.start - 1);
    let expected: Vec<&Seen> = reference
        .iter()
        .filter(|s| s.revision >= watcher.start && s.revision <= last)
        .collect();
    if events != expected {
        let position = events
            .iter()
            .zip(&expected)
            .position(|(a, b)| a != b)
            .unwrap_or(events.len().min(expected.len()));
        problems.push(format!(
            "events differ from the history at position {position}: saw {:?}, history has {:?}",
            events.get(position),
            expected.get(position)
        ));
    }
    // Bookmarkable.
    let mut before = 0usize;
    for received in &watcher.received {
        match received {
            Received::Events(events) => before += events.len(),
            Received::Progress(revision) => {
                let owed = reference
                    .iter()
                    .filter(|s| s.revision >= watcher.start && s.revision <= *revision)
                    .count();
                if before < owed {
                    problems.push(format!(
                        "progress at revision {revision} after {before} events, but {owed} were due"
                    ));
                }
            }
            Received::Break(_) => {}
        }
    }
    // Live.
    if last < end {
        problems.push(format!(
            "never reached the final write at revision {end} (last seen {last})"
        ));
    }
    problems
}

fn seen(event: &etcd_client::Event) -> Option<Seen> {
    let kv = event.kv()?;
    Some(Seen {
        revision: kv.mod_revision(),
        key: String::from_utf8_lossy(kv.key()).into_owned(),
        value: match event.event_type() {
            EventType::Put => Some(String::from_utf8_lossy(kv.value()).into_owned()),
            EventType::Delete => None,
        },
    })
}

/// One writer until `until`.
async fn writer(
    process: usize,
    endpoint: String,
    config: WatchConfig,
    seed: u64,
    until: Instant,
) -> Vec<Write> {
    let mut rng = Rng::new(seed ^ 0x7761_7463 ^ (process as u64).wrapping_mul(0x9e37_79b9));
    let mut writes = Vec::new();
    let mut n = 0u64;
    let mut client = None;
    while Instant::now() < until {
        let Some(c) = client.as_mut() else {
            client = connect(&endpoint, config.op_timeout, Connect::default()).await;
            if client.is_none() {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            continue;
        };
        let key = |rng: &mut Rng| format!("{PREFIX}{}", rng.below(config.keys as u64));
        let mut value = || {
            n += 1;
            format!("{process}-{n}")
        };
        let first = key(&mut rng);
        let (changes, request) = match rng.below(10) {
            0 => (vec![(first.clone(), None)], Request::Delete(first)),
            1..=3 => {
                let mut second = key(&mut rng);
                while second == first {
                    second = key(&mut rng);
                }
                let changes = vec![(first, Some(value())), (second, Some(value()))];
                (changes.clone(), Request::Txn(changes))
            }
            _ => {
                let v = value();
                (
                    vec![(first.clone(), Some(v.clone()))],
                    Request::Put(first, v),
                )
            }
        };
        let outcome = match tokio::time::timeout(config.op_timeout, request.send(c)).await {
            Ok(Ok(revision)) => WriteOutcome::Acked(revision),
            Ok(Err(etcd_client::Error::GRpcStatus(status)))
                if is_definite_failure(status.code(), status.message()) =>
            {
                WriteOutcome::Failed
            }
            _ => WriteOutcome::Unknown,
        };
        if !matches!(outcome, WriteOutcome::Acked(_)) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        writes.push(Write { changes, outcome });
    }
    writes
}

enum Request {
    Put(String, String),
    Txn(Vec<(String, Option<String>)>),
    Delete(String),
}

impl Request {
    async fn send(&self, client: &mut Client) -> Result<i64, etcd_client::Error> {
        let revision = |h: Option<&etcd_client::ResponseHeader>| h.map_or(0, |h| h.revision());
        Ok(match self {
            Request::Put(key, value) => revision(
                client
                    .put(key.as_str(), value.as_str(), None)
                    .await?
                    .header(),
            ),
            Request::Txn(changes) => {
                let ops: Vec<TxnOp> = changes
                    .iter()
                    .map(|(k, v)| {
                        TxnOp::put(
                            k.as_str(),
                            v.clone().unwrap_or_default(),
                            None::<PutOptions>,
                        )
                    })
                    .collect();
                revision(client.txn(Txn::new().and_then(ops)).await?.header())
            }
            Request::Delete(key) => revision(
                client
                    .delete(key.as_str(), None::<DeleteOptions>)
                    .await?
                    .header(),
            ),
        })
    }
}

/// One watcher: follows the prefix from `start`, moving to the next member after a break,
/// until it has seen revision `end` (once known) or `deadline` passes.
async fn watcher(
    index: usize,
    endpoints: Vec<String>,
    config: WatchConfig,
    start: i64,
    end: tokio::sync::watch::Receiver<i64>,
    deadline: tokio::sync::watch::Receiver<Option<Instant>>,
) -> Observed {
    let mut observed = Observed {
        start,
        received: Vec::new(),
    };
    let mut member = index % endpoints.len();
    let mut next = start;
    let done = |next: i64| {
        let end = *end.borrow();
        end > 0 && next > end
            || deadline
                .borrow()
                .is_some_and(|deadline| Instant::now() >= deadline)
    };
    while !done(next) {
        let reason = follow(&endpoints[member], &config, &mut next, &mut observed, &done).await;
        if let Some(reason) = reason {
            observed
                .received
                .push(Received::Break(format!("m{member}: {reason}")));
            member = (member + 1) % endpoints.len();
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    observed
}

/// Watches through one member until the stream breaks (the reason) or `done` (None).
async fn follow(
    endpoint: &str,
    config: &WatchConfig,
    next: &mut i64,
    observed: &mut Observed,
    done: &(dyn Fn(i64) -> bool + Sync),
) -> Option<String> {
    let Some(mut client) = connect(
        endpoint,
        config.op_timeout,
        Connect {
            request_timeout: false,
            require_leader: true,
        },
    )
    .await
    else {
        return Some("cannot connect".to_string());
    };
    let options = WatchOptions::new().with_prefix().with_start_revision(*next);
    let mut stream =
        match tokio::time::timeout(config.op_timeout, client.watch(PREFIX, Some(options))).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => return Some(format!("watch refused: {e}")),
            Err(_) => return Some("watch not opened in time".to_string()),
        };
    let mut last_heard = Instant::now();
    let mut ticker = tokio::time::interval(config.progress_every);
    loop {
        if done(*next) {
            return None;
        }
        tokio::select! {
            message = stream.message() => {
                let response = match message {
                    Ok(Some(response)) => response,
                    Ok(None) => return Some("stream ended".to_string()),
                    Err(e) => return Some(e.to_string()),
                };
                last_heard = Instant::now();
                if response.canceled() {
                    return Some(format!(
                        "cancelled (compact revision {}): {}",
                        response.compact_revision(),
                        response.cancel_reason()
                    ));
                }
                if response.created() {
                    continue;
                }
                if response.events().is_empty() {
                    if response.watch_id() == -1 {
                        let revision = response.header().map_or(0, |h| h.revision());
                        observed.received.push(Received::Progress(revision));
                    }
                    continue;
                }
                let events: Vec<Seen> = response.events().iter().filter_map(seen).collect();
                if let Some(last) = events.last() {
                    *next = last.revision + 1;
                }
                observed.received.push(Received::Events(events));
            }
            _ = ticker.tick() => {
                if last_heard.elapsed() >= config.stall {
                    return Some(format!("silent for {:?}", config.stall));
                }
                if stream.request_progress().await.is_err() {
                    return Some("cannot ask for progress".to_string());
                }
            }
        }
    }
}

/// Runs the watch workload: writers until `until`, then a final write (retried until it
/// succeeds or the catch-up time runs out), watchers until they have seen it, and the
/// reference read.
///
/// # Errors
/// If the workload's first write, which fixes the start revision, fails for 30 s.
pub async fn run_watch(
    endpoints: Vec<String>,
    config: WatchConfig,
    seed: u64,
    until: Instant,
) -> anyhow::Result<WatchHistory> {
    let start = final_write(&endpoints, &config, "start", Duration::from_secs(30))
        .await
        .ok_or_else(|| anyhow::anyhow!("no member took the first write"))?;
    let (end_tx, end_rx) = tokio::sync::watch::channel(0i64);
    let (deadline_tx, deadline_rx) = tokio::sync::watch::channel(None);
    let watchers: Vec<_> = (0..endpoints.len())
        .map(|i| {
            tokio::spawn(watcher(
                i,
                endpoints.clone(),
                config.clone(),
                start,
                end_rx.clone(),
                deadline_rx.clone(),
            ))
        })
        .collect();
    let writers: Vec<_> = (0..config.writers)
        .map(|w| {
            let endpoint = endpoints[w % endpoints.len()].clone();
            tokio::spawn(writer(w, endpoint, config.clone(), seed, until))
        })
        .collect();
    let mut history = WatchHistory::default();
    for writer in writers {
        history.writes.extend(writer.await?);
    }
    history.end = final_write(&endpoints, &config, "end", config.catch_up)
        .await
        .unwrap_or(0);
    let _ = end_tx.send(history.end);
    let _ = deadline_tx.send(Some(Instant::now() + config.catch_up));
    for watcher in watchers {
        history.watchers.push(watcher.await?);
    }
    if history.end > 0 {
        history.reference = reference(&endpoints[0], start, history.end, &config).await?;
    }
    Ok(history)
}

/// Puts `END_KEY` through any member, retrying until `within` passes; its revision.
async fn final_write(
    endpoints: &[String],
    config: &WatchConfig,
    value: &str,
    within: Duration,
) -> Option<i64> {
    let deadline = Instant::now() + within;
    let mut member = 0;
    while Instant::now() < deadline {
        if let Some(mut client) =
            connect(&endpoints[member], config.op_timeout, Connect::default()).await
        {
            let put =
                tokio::time::timeout(config.op_timeout, client.put(END_KEY, value, None)).await;
            if let Ok(Ok(response)) = put {
                return response.header().map(|h| h.revision());
            }
        }
        member = (member + 1) % endpoints.len();
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    None
}

/// Every event on the prefix from `start` to `end`, from a fresh watch.
async fn reference(
    endpoint: &str,
    start: i64,
    end: i64,
    config: &WatchConfig,
) -> anyhow::Result<Vec<Seen>> {
    let mut client = connect(endpoint, config.op_timeout, Connect::default())
        .await
        .ok_or_else(|| anyhow::anyhow!("cannot connect to {endpoint} for the reference"))?;
    let options = WatchOptions::new().with_prefix().with_start_revision(start);
    let mut stream = client.watch(PREFIX, Some(options)).await?;
    let mut events = Vec::new();
    let read = async {
        while events.last().is_none_or(|e: &Seen| e.revision < end) {
            let Some(response) = stream.message().await? else {
                anyhow::bail!("the reference watch ended");
            };
            anyhow::ensure!(!response.canceled(), "the reference watch was cancelled");
            events.extend(response.events().iter().filter_map(seen));
        }
        anyhow::Ok(())
    };
    tokio::time::timeout(config.catch_up, read)
        .await
        .map_err(|_| anyhow::anyhow!("the reference watch did not reach revision {end}"))??;
    events.retain(|e| e.revision <= end);
    Ok(events)
}

/// A readable account of what each watcher received.
#[must_use]
pub fn timeline(history: &WatchHistory) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(out, "end revision {}", history.end);
    for (i, watcher) in history.watchers.iter().enumerate() {
        let _ = writeln!(out, "watcher {i} from revision {}:", watcher.start);
        for received in &watcher.received {
            let _ = match received {
                Received::Events(events) => writeln!(
                    out,
                    "  events {:?}",
                    events
                        .iter()
                        .map(|e| format!("{}@{}={:?}", e.key, e.revision, e.value))
                        .collect::<Vec<_>>()
                ),
                Received::Progress(r) => writeln!(out, "  progress {r}"),
                Received::Break(reason) => writeln!(out, "  break: {reason}"),
            };
        }
    }
    let mut writes: HashMap<&str, usize> = HashMap::new();
    for write in &history.writes {
        let kind = match write.outcome {
            WriteOutcome::Acked(_) => "acked",
            WriteOutcome::Failed => "failed",
            WriteOutcome::Unknown => "unknown",
        };
        *writes.entry(kind).or_default() += 1;
    }
    let _ = writeln!(out, "writes: {writes:?}");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(revision: i64, key: &str, value: &str) -> Seen {
        Seen {
            revision,
            key: key.to_string(),
            value: Some(value.to_string()),
        }
    }

    fn history(received: Vec<Received>) -> WatchHistory {
        let reference = vec![
            put(2, "w/0", "0-1"),
            put(3, "w/0", "0-2"),
            put(3, "w/1", "0-3"),
            put(4, END_KEY, "end"),
        ];
        WatchHistory {
            writes: vec![
                Write {
                    changes: vec![("w/0".into(), Some("0-1".into()))],
                    outcome: WriteOutcome::Acked(2),
                },
                Write {
                    changes: vec![
                        ("w/0".into(), Some("0-2".into())),
                        ("w/1".into(), Some("0-3".into())),
                    ],
                    outcome: WriteOutcome::Unknown,
                },
            ],
            watchers: vec![Observed { start: 2, received }],
            end: 4,
            reference,
        }
    }

    // Proves the validator passes a correct watcher (with a break and a resume in between)
    // and catches each broken guarantee: a lost event, a duplicate, reordering, a revision
    // split across responses, a progress notification ahead of its events, a watcher that
    // never catches up, an acknowledged write missing from the history, and a value nobody
    // wrote.
    #[test]
    fn validator_catches_each_broken_guarantee() {
        let [a, b, c, end] = [
            put(2, "w/0", "0-1"),
            put(3, "w/0", "0-2"),
            put(3, "w/1", "0-3"),
            put(4, END_KEY, "end"),
        ];
        let good = history(vec![
            Received::Events(vec![a.clone()]),
            Received::Progress(2),
            Received::Break("m0: stream ended".into()),
            Received::Events(vec![b.clone(), c.clone()]),
            Received::Events(vec![end.clone()]),
        ]);
        assert_eq!(good.anomalies(), Vec::<String>::new());
        let bad_runs = [
            vec![Received::Events(vec![a.clone(), c.clone(), end.clone()])],
            vec![
                Received::Events(vec![a.clone(), b.clone(), c.clone()]),
                Received::Events(vec![c.clone(), end.clone()]),
            ],
            vec![Received::Events(vec![
                a.clone(),
                c.clone(),
                b.clone(),
                end.clone(),
            ])],
            vec![
                Received::Events(vec![a.clone(), b.clone()]),
                Received::Events(vec![c.clone(), end.clone()]),
            ],
            vec![
                Received::Progress(3),
                Received::Events(vec![a.clone(), b.clone(), c.clone(), end.clone()]),
            ],
            vec![Received::Events(vec![a.clone(), b.clone(), c.clone()])],
        ];
        for received in bad_runs {
            let problems = history(received.clone()).anomalies();
            assert!(!problems.is_empty(), "not caught: {received:?}");
        }
        let mut lost = good.clone();
        lost.reference.remove(0);
        lost.watchers.clear();
        assert!(!lost.anomalies().is_empty(), "a lost acknowledged write");
        let mut phantom = good.clone();
        phantom.reference[1].value = Some("9-9".into());
        phantom.watchers.clear();
        assert!(!phantom.anomalies().is_empty(), "a value nobody wrote");
    }
}
