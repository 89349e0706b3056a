//! Locks: etcd's Lock service against real etcd (the same calls, the same answers, a second
//! locker waiting until the first unlocks), and `etcdctl lock`, which builds its mutex on the
//! client from leases, keepalives, txns and watches.

use std::time::Duration;

use proto::etcdserverpb as pb;
use proto::etcdserverpb::lease_client::LeaseClient;
use proto::v3lockpb::lock_client::LockClient;
use proto::v3lockpb::{LockRequest, UnlockRequest};
use testkit::Cluster;
use tonic::transport::Channel;

use crate::{assert_answers_as_etcd, binary, ELECTION_DEADLINE};

/// A lock call's answer: the key and header revision, or the error.
fn answer(result: Result<tonic::Response<proto::v3lockpb::LockResponse>, tonic::Status>) -> String {
    match result {
        Ok(r) => {
            let r = r.into_inner();
            format!(
                "key={} revision={}",
                String::from_utf8_lossy(&r.key),
                r.header.map_or(0, |h| h.revision)
            )
        }
        Err(s) => format!("{:?}: {}", s.code(), s.message()),
    }
}

/// The same lock conversation with one server: what it answered, in order.
async fn conversation(channel: Channel) -> Vec<String> {
    let mut leases = LeaseClient::new(channel.clone());
    let mut lock = LockClient::new(channel);
    let mut out = Vec::new();
    for id in [100, 101] {
        leases
            .lease_grant(pb::LeaseGrantRequest { ttl: 60, id })
            .await
            .expect("grant");
    }
    let lock_request = |lease| LockRequest {
        name: b"mtx".to_vec(),
        lease,
    };
    let first = lock
        .lock(lock_request(100))
        .await
        .expect("the first lock")
        .into_inner();
    let first_key = first.key.clone();
    out.push(answer(Ok(tonic::Response::new(first))));
    out.push(answer(lock.lock(lock_request(999)).await));
    // Locking again with the same lease keeps its place: it holds the lock already.
    out.push(answer(lock.lock(lock_request(100)).await));
    // A second locker waits until the first unlocks.
    let mut second = lock.clone();
    let waiting = tokio::spawn(async move { second.lock(lock_request(101)).await });
    tokio::time::sleep(Duration::from_millis(800)).await;
    out.push(format!(
        "second finished before unlock: {}",
        waiting.is_finished()
    ));
    let unlocked = lock
        .unlock(UnlockRequest { key: first_key })
        .await
        .expect("unlock");
    out.push(format!(
        "unlock revision={}",
        unlocked.into_inner().header.map_or(0, |h| h.revision)
    ));
    let second = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("the second locker gets the lock")
        .expect("the task");
    out.push(answer(second));
    out
}

// Proves the Lock service answers as etcd's: the key is `name/<lease in hex>` at the
// revision etcd gives, an unknown lease is refused with etcd's error, locking again with the
// same lease holds at once, and a second locker waits until the first unlocks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_calls_answer_as_etcd_does() {
    assert_answers_as_etcd(conversation).await;
}

// Proves `etcdctl lock` works: it holds the lock while its command runs, and a second
// `etcdctl lock` on the same name runs its command only after the first has finished.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_lock_serialises_commands() {
    let mut cluster = Cluster::start(binary(), 3, &[]).unwrap();
    cluster.wait_for_leader(ELECTION_DEADLINE).await.unwrap();
    let endpoints = cluster.endpoints();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let run = |tag: &'static str| {
        let endpoints = endpoints.clone();
        let log = log.clone();
        std::thread::spawn(move || {
            let script = format!(
                "echo start-{tag} >> {0}; sleep 1; echo end-{tag} >> {0}",
                log.display()
            );
            testkit::etcdctl(
                &endpoints,
                &["lock", "shared", "--", "sh", "-c", &script],
                None,
            )
        })
    };
    let first = run("a");
    std::thread::sleep(Duration::from_millis(300));
    let second = run("b");
    for handle in [first, second] {
        let output = handle.join().unwrap().unwrap();
        assert!(output.status.success(), "etcdctl lock: {output:?}");
    }
    let lines = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<&str> = lines.lines().collect();
    assert_eq!(
        lines,
        ["start-a", "end-a", "start-b", "end-b"],
        "the commands overlapped"
    );
}
