//! A rolling restart, as operators upgrade a cluster: every member stopped and started again,
//! one at a time, while clients write.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use proto::etcdserverpb::kv_client::KvClient;
use proto::etcdserverpb::PutRequest;
use testkit::Cluster;
use tonic::transport::Channel;

use crate::{assert_acked_present, binary, read_prefix, value_for, ELECTION_DEADLINE};

/// Concurrent writers.
const WRITERS: usize = 4;
/// How long one write may take, retries included, before the test calls it failed.
const RETRY_FOR: Duration = Duration::from_secs(10);

/// Writes `roll/<writer>/<n>` keys, each retried on the next member until it succeeds, until
/// `stop`; the keys acknowledged and the longest time one write took.
async fn write_until(
    mut clients: Vec<KvClient<Channel>>,
    writer: usize,
    stop: Arc<AtomicBool>,
) -> (BTreeMap<String, i64>, Duration) {
    let mut acked = BTreeMap::new();
    let mut slowest = Duration::ZERO;
    let mut member = writer % clients.len();
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let key = format!("roll/{writer}/{n:06}");
        let put = PutRequest {
            value: value_for(&key).into_bytes(),
            key: key.clone().into_bytes(),
            ..Default::default()
        };
        let started = Instant::now();
        loop {
            let attempt =
                tokio::time::timeout(Duration::from_secs(2), clients[member].put(put.clone()))
                    .await;
            match attempt {
                Ok(Ok(response)) => {
                    let revision = response.into_inner().header.map_or(0, |h| h.revision);
                    acked.insert(key.clone(), revision);
                    break;
                }
                // Retried on the next member, as a client with every endpoint does.
                _ => {
                    assert!(
                        started.elapsed() < RETRY_FOR,
                        "writer {writer}: {key} failed for {RETRY_FOR:?}"
                    );
                    member = (member + 1) % clients.len();
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
        slowest = slowest.max(started.elapsed());
        n += 1;
    }
    (acked, slowest)
}

// Proves a rolling restart loses nothing and fails nothing for a client that retries on
// another member: four writers write while each member in turn is stopped (SIGTERM),
// started again and back in the cluster; every write succeeds within its retries, and every
// acknowledged write is on every member afterwards, with equal HashKV.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_loses_and_fails_nothing() {
    let mut cluster = Cluster::start(binary(), 3, &[]).unwrap();
    cluster.wait_for_leader(ELECTION_DEADLINE).await.unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for writer in 0..WRITERS {
        let clients = (0..cluster.size()).map(|i| cluster.kv(i)).collect();
        writers.push(tokio::spawn(write_until(clients, writer, stop.clone())));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    for i in 0..cluster.size() {
        cluster.stop(i);
        tokio::time::sleep(Duration::from_millis(500)).await;
        cluster.restart(i).unwrap();
        cluster.wait_listening(i, ELECTION_DEADLINE).unwrap();
        cluster.wait_for_leader(ELECTION_DEADLINE).await.unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let mut acked = BTreeMap::new();
    let mut slowest = Duration::ZERO;
    for writer in writers {
        let (keys, slow) = writer.await.unwrap();
        acked.extend(keys);
        slowest = slowest.max(slow);
    }
    eprintln!(
        "rolling restart: {} writes acknowledged, the slowest took {slowest:?}",
        acked.len()
    );
    assert!(acked.len() > 100, "too few writes: {}", acked.len());
    for i in 0..cluster.size() {
        let found = read_prefix(&cluster, i, "roll/").await.unwrap();
        assert_acked_present(&acked, &found, &format!("member {i}"));
    }
    let revision = cluster.status(0).await.unwrap().header.unwrap().revision;
    let mut hashes = Vec::new();
    for i in 0..cluster.size() {
        hashes.push(cluster.hash_kv(i, revision).await.unwrap().hash);
    }
    assert!(hashes.windows(2).all(|w| w[0] == w[1]), "{hashes:?}");
}
