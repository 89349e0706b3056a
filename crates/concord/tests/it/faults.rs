//! Crashes, restarts, lagging members and corrupt files, with real processes.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use proto::etcdserverpb::maintenance_client::MaintenanceClient;
use proto::etcdserverpb::{HashKvRequest, PutRequest};
use testkit::Cluster;
use tokio::sync::Mutex;

use crate::{assert_all_acked_present, binary, read_prefix, slow_tests_enabled, start_writers};

/// The line a member logs when it has installed a snapshot from the leader.
const SNAPSHOT_INSTALLED_LOG: &str = "installed snapshot";

// Proves that killing the leader with SIGKILL during a stream of concurrent writes loses no
// acknowledged write, and that a new leader serves within 3 s of the kill.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_killed_during_writes_loses_nothing() {
    let mut cluster = Cluster::start(binary(), 3, &[]).unwrap();
    let leader = cluster
        .wait_for_leader(Duration::from_secs(20))
        .await
        .unwrap();
    let survivors: Vec<usize> = (0..3).filter(|i| *i != leader).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(BTreeMap::new()));
    let writers = start_writers(&cluster, &[0, 1, 2], 8, "lk", stop.clone(), acked.clone());
    tokio::time::sleep(Duration::from_secs(2)).await;

    let before_kill = acked.lock().await.len();
    assert!(before_kill > 0, "no write succeeded before the kill");
    cluster.kill(leader);
    let killed_at = Instant::now();

    // A write through a surviving member succeeds again once a new leader serves.
    let mut probe = cluster.kv(survivors[0]);
    let mut attempt = 0;
    let recovered = loop {
        attempt += 1;
        let put = PutRequest {
            key: format!("probe/{attempt}").into_bytes(),
            value: b"p".to_vec(),
            ..Default::default()
        };
        if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_secs(1), probe.put(put)).await {
            break killed_at.elapsed();
        }
        assert!(
            killed_at.elapsed() < Duration::from_secs(10),
            "no leader after 10 s"
        );
    };
    assert!(
        recovered < Duration::from_secs(3),
        "writes resumed only after {recovered:?}"
    );

    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    for writer in writers {
        writer.await.unwrap();
    }
    let acked = acked.lock().await.clone();
    assert!(
        acked.len() > before_kill,
        "no write succeeded after the kill"
    );
    for &i in &survivors {
        let found = read_prefix(&cluster, i, "lk/", false).await.unwrap();
        assert_all_acked_present(&acked, &found, &format!("member {i}"));
    }
    // The killed member comes back, catches up, and holds every acknowledged write too.
    cluster.restart(leader).unwrap();
    cluster
        .wait_for_leader(Duration::from_secs(20))
        .await
        .unwrap();
    let found = read_prefix(&cluster, leader, "lk/", false).await.unwrap();
    assert_all_acked_present(&acked, &found, "restarted member");
}

// Proves that after every member is killed with SIGKILL during writes and restarted, every
// acknowledged write is present.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_members_killed_and_restarted_keep_every_acknowledged_write() {
    let mut cluster = Cluster::start(binary(), 3, &[]).unwrap();
    cluster
        .wait_for_leader(Duration::from_secs(20))
        .await
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(BTreeMap::new()));
    let writers = start_writers(&cluster, &[0, 1, 2], 8, "ka", stop.clone(), acked.clone());
    tokio::time::sleep(Duration::from_secs(2)).await;
    for i in 0..3 {
        cluster.kill(i);
    }
    stop.store(true, Ordering::Relaxed);
    for writer in writers {
        writer.await.unwrap();
    }
    let acked = acked.lock().await.clone();
    assert!(!acked.is_empty());
    for i in 0..3 {
        cluster.restart(i).unwrap();
    }
    cluster
        .wait_for_leader(Duration::from_secs(15))
        .await
        .unwrap();
    for i in 0..3 {
        let found = read_prefix(&cluster, i, "ka/", false).await.unwrap();
        assert_all_acked_present(&acked, &found, &format!("member {i}"));
    }
}

// Proves snapshot catch-up: a member stopped while 100,000 writes and log compactions happen
// comes back, receives a snapshot, and then holds exactly the leader's data (equal HashKV at
// the same revision, and equal full reads).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopped_member_catches_up_through_a_snapshot() {
    if !slow_tests_enabled() {
        eprintln!("skipped: set RUN_SLOW_TESTS=1");
        return;
    }
    let mut cluster = Cluster::start(binary(), 3, &["--snapshot-count", "2000"]).unwrap();
    let leader = cluster
        .wait_for_leader(Duration::from_secs(20))
        .await
        .unwrap();
    let lagging = (leader + 1) % 3;
    let writer = (leader + 2) % 3;
    cluster.stop(lagging);

    const KEYS: usize = 100_000;
    const CONCURRENCY: usize = 64;
    let mut tasks = Vec::new();
    for task in 0..CONCURRENCY {
        let targets = [cluster.kv(leader), cluster.kv(writer)];
        tasks.push(tokio::spawn(async move {
            for n in (task..KEYS).step_by(CONCURRENCY) {
                let mut client = targets[n % 2].clone();
                let put = PutRequest {
                    key: format!("snap/{n:06}").into_bytes(),
                    value: format!("value-{n}").into_bytes(),
                    ..Default::default()
                };
                let mut tries = 0;
                while client.put(put.clone()).await.is_err() {
                    tries += 1;
                    assert!(tries < 20, "put {n} keeps failing");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }

    cluster.restart(lagging).unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    let target = cluster.status(leader).await.unwrap().raft_applied_index;
    loop {
        if let Ok(status) = cluster.status(lagging).await {
            if status.raft_applied_index >= target {
                break;
            }
        }
        assert!(Instant::now() < deadline, "lagging member did not catch up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        cluster.log(lagging).contains(SNAPSHOT_INSTALLED_LOG),
        "the member caught up without a snapshot; its log:\n{}",
        cluster.log(lagging)
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
        let mut client = MaintenanceClient::new(cluster.channel(i));
        let hash = client
            .hash_kv(HashKvRequest { revision })
            .await
            .unwrap()
            .into_inner();
        hashes.push((hash.hash, hash.hash_revision));
    }
    assert!(hashes.iter().all(|h| *h == hashes[0]), "{hashes:?}");
    let leader_data = read_prefix(&cluster, leader, "snap/", true).await.unwrap();
    assert_eq!(leader_data.len(), KEYS);
    let lagging_data = read_prefix(&cluster, lagging, "snap/", true).await.unwrap();
    assert!(
        leader_data == lagging_data,
        "the caught-up member's data differs"
    );
}

// Proves that one flipped byte in a Raft log record is detected at startup: the member exits
// with an error naming the file and the offset, and never serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flipped_byte_in_the_log_stops_the_member() {
    let mut cluster = Cluster::start(binary(), 1, &[]).unwrap();
    cluster
        .wait_for_leader(Duration::from_secs(20))
        .await
        .unwrap();
    let mut kv = cluster.kv(0);
    for n in 0..50 {
        kv.put(PutRequest {
            key: format!("c/{n}").into_bytes(),
            value: vec![b'v'; 100],
            ..Default::default()
        })
        .await
        .unwrap();
    }
    cluster.stop(0);

    let log_dir = cluster.data_dir(0).join("member").join("log");
    let file = std::fs::read_dir(&log_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "raftlog"))
        .expect("a raft log file");
    let mut bytes = std::fs::read(&file).unwrap();
    // The engine preallocates its files: records end where the zeros start. Flip a byte in
    // the middle of the records, well past the file header.
    let written = bytes.iter().rposition(|b| *b != 0).unwrap() + 1;
    assert!(
        written > 2000,
        "expected the writes above in the log, found {written} bytes"
    );
    let offset = written / 2;
    bytes[offset] ^= 0x5a;
    std::fs::write(&file, &bytes).unwrap();

    cluster.restart(0).unwrap();
    let status = cluster.wait_exit(0, Duration::from_secs(20)).unwrap();
    assert!(!status.success());
    let log = cluster.log(0);
    let error = log
        .lines()
        .find(|l| l.starts_with("concord: error:"))
        .unwrap_or_else(|| panic!("no error line in:\n{log}"));
    let name = file.file_name().unwrap().to_str().unwrap();
    assert!(error.contains(name), "{error}");
    assert!(error.contains("offset"), "{error}");
    assert!(
        cluster.status(0).await.is_err(),
        "a corrupt member must not serve"
    );
}
