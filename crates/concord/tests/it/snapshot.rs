//! Snapshot catch-up with real processes: a member that misses more than the leader keeps in
//! its log receives a snapshot and ends with exactly the same key space.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use proto::etcdserverpb::PutRequest;
use testkit::Cluster;

use crate::{binary, read_range, slow_tests_enabled, value_for, ELECTION_DEADLINE};

/// The text of the line a member logs once it has installed a snapshot sent by the leader
/// (logged by the node's store loop). Change it here if the log line changes.
pub const SNAPSHOT_INSTALLED_LOG: &str = "installed snapshot";

/// Keys written while the member is stopped.
const KEYS: usize = 100_000;

/// Concurrent Put streams writing them.
const STREAMS: usize = 64;

// Proves snapshot catch-up: with the Raft log compacted every 1,000 entries, a follower that
// is stopped while 100,000 keys are written comes back, installs a snapshot (its log says so),
// catches up to the leader's applied index, and then holds exactly the same key space as every
// other member: equal HashKV at one revision, and equal full serializable reads at that
// revision, every key with the value that was written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopped_member_catches_up_through_a_snapshot() {
    if !slow_tests_enabled("stopped_member_catches_up_through_a_snapshot") {
        return;
    }
    let mut cluster = Cluster::start(binary(), 3, &["--snapshot-count", "1000"]).unwrap();
    let leader = cluster.wait_for_leader(ELECTION_DEADLINE).await.unwrap();
    let lagging = (leader + 1) % 3;
    let running = [leader, (leader + 2) % 3];
    cluster.stop(lagging);

    let started = Instant::now();
    let write_deadline = started + Duration::from_secs(300);
    let next = Arc::new(AtomicUsize::new(0));
    let mut streams = Vec::new();
    for stream in 0..STREAMS {
        let mut client = cluster.kv(running[stream % running.len()]);
        let next = next.clone();
        streams.push(tokio::spawn(async move {
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= KEYS {
                    return;
                }
                let key = format!("snap/{n:06}");
                let put = PutRequest {
                    value: value_for(&key).into_bytes(),
                    key: key.into_bytes(),
                    ..Default::default()
                };
                // A failed put is retried: the key ends with the same value either way.
                while let Err(e) = client.put(put.clone()).await {
                    assert!(
                        Instant::now() < write_deadline,
                        "put {n} still failing at the deadline: {e}"
                    );
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }));
    }
    for stream in streams {
        stream.await.unwrap();
    }
    eprintln!("wrote {KEYS} keys in {:?}", started.elapsed());

    let mut target = 0;
    for &i in &running {
        target = target.max(cluster.status(i).await.unwrap().raft_applied_index);
    }
    cluster.restart(lagging).unwrap();
    let restarted = Instant::now();
    testkit::eventually(
        Duration::from_secs(120),
        "the restarted member catching up",
        || async {
            let applied = cluster.status(lagging).await?.raft_applied_index;
            anyhow::ensure!(applied >= target, "applied index {applied} of {target}");
            Ok(())
        },
    )
    .await
    .unwrap();
    eprintln!(
        "caught up to applied index {target} in {:?}",
        restarted.elapsed()
    );
    // Apply publishes the restored index as soon as the state machine holds the snapshot;
    // the store loop logs the install a moment later, when it has recorded it in the log.
    let logged = testkit::eventually(Duration::from_secs(5), "the install logged", || async {
        let log = cluster.current_log(lagging);
        anyhow::ensure!(log.contains(SNAPSHOT_INSTALLED_LOG), "{log}");
        Ok(())
    })
    .await;
    assert!(
        logged.is_ok(),
        "m{lagging} caught up without logging {SNAPSHOT_INSTALLED_LOG:?}; its log since the restart:\n{}",
        cluster.current_log(lagging)
    );

    let revision = cluster
        .status(leader)
        .await
        .unwrap()
        .header
        .unwrap()
        .revision;
    let mut hashes = Vec::new();
    for i in 0..3 {
        let hash = cluster.hash_kv(i, revision).await.unwrap();
        hashes.push((hash.hash, hash.hash_revision, hash.compact_revision));
    }
    assert!(
        hashes.iter().all(|h| *h == hashes[0]),
        "HashKV at revision {revision} differs between members: {hashes:?}"
    );

    // An independent check: the whole key space, read serializably at the same revision.
    let (_, expected) = read_range(&cluster, leader, &[0], &[0], true, revision)
        .await
        .unwrap();
    assert_eq!(expected.len(), KEYS, "keys on the leader");
    for kv in &expected {
        let key = String::from_utf8_lossy(&kv.key);
        assert_eq!(kv.value, value_for(&key).into_bytes(), "value of {key}");
    }
    for i in (0..3).filter(|i| *i != leader) {
        let (_, kvs) = read_range(&cluster, i, &[0], &[0], true, revision)
            .await
            .unwrap();
        assert_eq!(kvs.len(), expected.len(), "keys on m{i} and on the leader");
        let differ = kvs.iter().zip(&expected).find(|(a, b)| a != b);
        assert!(
            differ.is_none(),
            "m{i} and the leader differ at revision {revision}: {differ:?}"
        );
    }
}
