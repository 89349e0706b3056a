//! Tests against real `concord` processes: the binary is started, killed and restarted as a
//! user or an operator would, and spoken to with etcdctl 3.4 and the gRPC clients of the
//! `proto` crate. Each test starts its own cluster on free ports (see `testkit`).
//!
//! Tests that take more than about 30 s run only when `RUN_SLOW_TESTS` is set (CI sets it).
//! Clusters are real processes sharing the machine's cores: run these tests one at a time
//! (`cargo test -p concord -- --test-threads=1`) where cores are few.

mod backup;
mod chaos;
mod cli;
mod corruption;
mod diff;
mod election;
mod encryption;
mod etcdctl;
mod examples;
mod failover;
mod faults;
mod http;
mod kv;
mod lease;
mod lock;
mod maintenance;
mod membership;
mod rolling;
mod rust_client;
mod snapshot;
mod tls_cluster;
mod watch;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use proto::etcdserverpb::PutRequest;
use proto::etcdserverpb::RangeRequest;
use proto::mvccpb::KeyValue;
use testkit::Cluster;

/// How long a fresh cluster may take to elect its first leader.
const ELECTION_DEADLINE: Duration = Duration::from_secs(20);

/// Holds `conversation` with a real etcd and with a follower of a fresh three-member
/// Concord cluster (a follower, so that calls are forwarded), and asserts that both
/// answered the same.
async fn assert_answers_as_etcd<F>(conversation: impl Fn(tonic::transport::Channel) -> F)
where
    F: std::future::Future<Output = Vec<String>>,
{
    let etcd = testkit::Etcd::start().expect("start the reference etcd");
    let mut cluster = Cluster::start(binary(), 3, &[]).expect("start a Concord cluster");
    let leader = cluster.wait_for_leader(ELECTION_DEADLINE).await.unwrap();
    let expected = conversation(etcd.channel()).await;
    let got = conversation(cluster.channel((leader + 1) % 3)).await;
    assert_eq!(got, expected);
}

fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_concord"))
}

/// Whether slow tests run (`RUN_SLOW_TESTS` is set); prints a note when they do not.
fn slow_tests_enabled(test: &str) -> bool {
    let enabled = std::env::var_os("RUN_SLOW_TESTS").is_some();
    if !enabled {
        eprintln!("{test}: skipped (slow); set RUN_SLOW_TESTS=1 to run it");
    }
    enabled
}

/// The value the writers put under `key`: any other value read back is corruption.
fn value_for(key: &str) -> String {
    format!("value-of-{key}")
}

/// Client tasks putting unique keys (`<prefix>/<writer>/<n>`) round robin through a set of
/// members, recording every write the cluster acknowledged.
struct Writers {
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<BTreeMap<String, i64>>>,
    /// When the last write was acknowledged, and the longest time between two.
    gaps: Arc<Mutex<(Instant, Duration)>>,
    failed: Arc<AtomicUsize>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Writers {
    /// Starts `count` writer tasks sending through `members` of `cluster`, each request with
    /// a 2 s deadline; an error or timeout leaves that write unacknowledged (its outcome is
    /// unknown) and the writer moves on to its next key after a 20 ms pause.
    fn start(cluster: &Cluster, members: &[usize], count: usize, prefix: &str) -> Writers {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(Mutex::new(BTreeMap::new()));
        let failed = Arc::new(AtomicUsize::new(0));
        let gaps = Arc::new(Mutex::new((Instant::now(), Duration::ZERO)));
        let tasks = (0..count)
            .map(|w| {
                let clients: Vec<_> = members.iter().map(|&m| cluster.kv(m)).collect();
                let (stop, acked, failed) = (stop.clone(), acked.clone(), failed.clone());
                let gaps = gaps.clone();
                let prefix = prefix.to_string();
                tokio::spawn(async move {
                    let mut n = 0usize;
                    while !stop.load(Ordering::Relaxed) {
                        let key = format!("{prefix}/{w:02}/{n:07}");
                        let mut client = clients[(n + w) % clients.len()].clone();
                        let put = PutRequest {
                            key: key.clone().into_bytes(),
                            value: value_for(&key).into_bytes(),
                            ..Default::default()
                        };
                        match tokio::time::timeout(Duration::from_secs(2), client.put(put)).await {
                            Ok(Ok(response)) => {
                                let revision =
                                    response.into_inner().header.map_or(0, |h| h.revision);
                                acked.lock().unwrap().insert(key, revision);
                                let mut gaps = gaps.lock().unwrap();
                                gaps.1 = gaps.1.max(gaps.0.elapsed());
                                gaps.0 = Instant::now();
                            }
                            _ => {
                                failed.fetch_add(1, Ordering::Relaxed);
                                tokio::time::sleep(Duration::from_millis(20)).await;
                            }
                        }
                        n += 1;
                    }
                })
            })
            .collect();
        Writers {
            stop,
            acked,
            gaps,
            failed,
            tasks,
        }
    }

    /// The longest time without an acknowledged write so far.
    fn longest_gap(&self) -> Duration {
        self.gaps.lock().unwrap().1
    }

    /// How many writes have failed or timed out so far.
    fn failed(&self) -> usize {
        self.failed.load(Ordering::Relaxed)
    }

    /// How many writes have been acknowledged so far.
    fn acked(&self) -> usize {
        self.acked.lock().unwrap().len()
    }

    /// Waits until at least `n` writes have been acknowledged.
    async fn wait_acked(&self, n: usize, timeout: Duration) -> anyhow::Result<()> {
        testkit::eventually(timeout, &format!("{n} acknowledged writes"), || async {
            let acked = self.acked();
            anyhow::ensure!(acked >= n, "{acked} acknowledged so far");
            Ok(())
        })
        .await
    }

    /// Stops the writers; every acknowledged key with the revision it was written at.
    async fn finish(self) -> BTreeMap<String, i64> {
        self.stop.store(true, Ordering::Relaxed);
        for task in self.tasks {
            task.await.expect("a writer panicked");
        }
        eprintln!(
            "writers: {} acknowledged, {} failed or unknown",
            self.acked.lock().unwrap().len(),
            self.failed.load(Ordering::Relaxed)
        );
        let acked = self.acked.lock().unwrap();
        acked.clone()
    }
}

/// The end of the range holding every key that starts with `prefix`.
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// Every key in `[key, range_end)` on member `i` (`range_end` as in etcd: `[0]` means "to the
/// end"), read in pages of 10,000 at one revision: `revision`, or if 0 the revision of the
/// first page. Linearizable unless `serializable`. Returns the revision read and the pairs.
async fn read_range(
    cluster: &Cluster,
    i: usize,
    key: &[u8],
    range_end: &[u8],
    serializable: bool,
    revision: i64,
) -> anyhow::Result<(i64, Vec<KeyValue>)> {
    let mut client = cluster.kv(i);
    let mut revision = revision;
    let mut next = key.to_vec();
    let mut kvs = Vec::new();
    loop {
        let response = client
            .range(RangeRequest {
                key: next.clone(),
                range_end: range_end.to_vec(),
                limit: 10_000,
                revision,
                serializable,
                ..Default::default()
            })
            .await
            .with_context(|| format!("range on member {i}"))?
            .into_inner();
        if revision == 0 {
            revision = response
                .header
                .context("a response without header")?
                .revision;
        }
        let more = response.more;
        kvs.extend(response.kvs);
        if !more {
            return Ok((revision, kvs));
        }
        next = kvs.last().context("more without keys")?.key.clone();
        next.push(0);
    }
}

/// Every key under `prefix` on member `i` with its value, read linearizably (retried for up
/// to 30 s while the member is still catching up or electing).
async fn read_prefix(
    cluster: &Cluster,
    i: usize,
    prefix: &str,
) -> anyhow::Result<BTreeMap<String, String>> {
    let end = prefix_end(prefix.as_bytes());
    let (_, kvs) = testkit::eventually(Duration::from_secs(30), "a linearizable read", || {
        read_range(cluster, i, prefix.as_bytes(), &end, false, 0)
    })
    .await?;
    Ok(kvs
        .into_iter()
        .map(|kv| {
            (
                String::from_utf8_lossy(&kv.key).into_owned(),
                String::from_utf8_lossy(&kv.value).into_owned(),
            )
        })
        .collect())
}

/// Asserts every acknowledged write is in `found` with its value, and that everything in
/// `found` carries the value its writer put (nothing corrupt or invented).
fn assert_acked_present(
    acked: &BTreeMap<String, i64>,
    found: &BTreeMap<String, String>,
    who: &str,
) {
    let missing: Vec<&String> = acked.keys().filter(|k| !found.contains_key(*k)).collect();
    assert!(
        missing.is_empty(),
        "{who}: {} of {} acknowledged writes are missing, e.g. {:?}",
        missing.len(),
        acked.len(),
        &missing[..missing.len().min(5)]
    );
    let wrong: Vec<(&String, &String)> =
        found.iter().filter(|(k, v)| **v != value_for(k)).collect();
    assert!(
        wrong.is_empty(),
        "{who}: wrong values, e.g. {:?}",
        &wrong[..wrong.len().min(5)]
    );
}
