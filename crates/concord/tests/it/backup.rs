//! Backups with real processes and etcd's own tools: `etcdctl snapshot save` from a loaded
//! cluster, `concord snapshot restore` into a new cluster, and the restored cluster serving
//! exactly the saved state.

use std::process::Command;

use proto::etcdserverpb::lease_client::LeaseClient;
use proto::etcdserverpb::{LeaseGrantRequest, PutRequest};
use testkit::Cluster;

use crate::{binary, ELECTION_DEADLINE};

/// Keys written before the backup.
const KEYS: usize = 2_000;

fn lease_client(cluster: &Cluster, i: usize) -> LeaseClient<tonic::transport::Channel> {
    LeaseClient::new(testkit::channel(&cluster.client_url(i)))
}

/// The value of `--flag` in `args`.
fn flag<'a>(args: &'a [String], flag: &str) -> &'a str {
    let at = args.iter().position(|a| a == flag).expect("flag present");
    &args[at + 1]
}

/// Runs `concord snapshot restore FILE` with member `i`'s serve flags in `cluster`.
fn restore(
    cluster: &Cluster,
    i: usize,
    file: &std::path::Path,
    extra: &[&str],
) -> std::process::Output {
    let args = cluster.args(i);
    Command::new(binary())
        .args(["snapshot", "restore"])
        .arg(file)
        .args(["--name", flag(&args, "--name")])
        .args(["--data-dir", flag(&args, "--data-dir")])
        .args(["--initial-cluster", flag(&args, "--initial-cluster")])
        .args([
            "--initial-cluster-token",
            flag(&args, "--initial-cluster-token"),
        ])
        .args([
            "--initial-advertise-peer-urls",
            flag(&args, "--initial-advertise-peer-urls"),
        ])
        .args(extra)
        .output()
        .expect("run concord snapshot restore")
}

// Proves the backup workflow operators run: `etcdctl snapshot save` from a loaded cluster
// (written keys, overwritten and deleted ones, a lease), `concord snapshot restore` of every
// member of a new three-member cluster, which then serves exactly the saved state (HashKV at
// the saved revision equals the source's, on every member), under its own membership, and
// takes writes; a backup with a flipped byte is refused with the checksum error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saved_snapshot_restores_into_a_new_cluster() {
    let mut source = Cluster::start(binary(), 3, &[]).unwrap();
    let leader = source.wait_for_leader(ELECTION_DEADLINE).await.unwrap();
    let mut kv = source.kv(leader);
    for i in 0..KEYS {
        let put = PutRequest {
            key: format!("backup/{i:05}").into_bytes(),
            value: format!("v{i}").into_bytes(),
            ..Default::default()
        };
        kv.put(put).await.unwrap();
    }
    for i in 0..100 {
        let put = PutRequest {
            key: format!("backup/{i:05}").into_bytes(),
            value: b"overwritten".to_vec(),
            ..Default::default()
        };
        kv.put(put).await.unwrap();
    }
    let mut leases = lease_client(&source, leader);
    leases
        .lease_grant(LeaseGrantRequest {
            ttl: 3600,
            id: 0x51,
        })
        .await
        .unwrap();
    let saved = source.dir().join("saved.db");
    let out = source
        .etcdctl(leader, &["snapshot", "save", saved.to_str().unwrap()])
        .unwrap();
    assert!(out.status.success(), "snapshot save: {out:?}");
    let status = Command::new(binary())
        .args(["snapshot", "status"])
        .arg(&saved)
        .output()
        .unwrap();
    assert!(status.status.success(), "{status:?}");
    // hash, revision, total keys, total size
    let status = String::from_utf8_lossy(&status.stdout).to_string();
    let revision: i64 = status.split(", ").nth(1).unwrap().parse().unwrap();
    assert!(revision > KEYS as i64, "{status}");
    let source_hash = source.hash_kv(leader, revision).await.unwrap().hash;

    let mut target = Cluster::start(binary(), 3, &[]).unwrap();
    target.kill_all();
    for i in 0..3 {
        std::fs::remove_dir_all(target.data_dir(i)).unwrap();
    }
    let mut flipped = std::fs::read(&saved).unwrap();
    let middle = flipped.len() / 2;
    flipped[middle] ^= 0x20;
    let bad = source.dir().join("flipped.db");
    std::fs::write(&bad, &flipped).unwrap();
    let refused = restore(&target, 0, &bad, &[]);
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("expected sha256"), "{stderr}");
    assert!(
        !target.data_dir(0).exists(),
        "a refused restore left a data dir"
    );

    for i in 0..3 {
        let out = restore(&target, i, &saved, &[]);
        assert!(out.status.success(), "restore {i}: {out:?}");
    }
    target.restart_all().unwrap();
    let leader = target.wait_for_leader(ELECTION_DEADLINE).await.unwrap();
    for i in 0..3 {
        let hash = target.hash_kv(i, revision).await.unwrap().hash;
        assert_eq!(hash, source_hash, "member {i}");
    }
    let members = target.etcdctl(leader, &["member", "list"]).unwrap();
    let members = String::from_utf8_lossy(&members.stdout);
    assert_eq!(members.lines().count(), 3, "{members}");
    for i in 0..3 {
        assert!(members.contains(&target.peer_url(i)), "{members}");
    }
    let put = target
        .kv(leader)
        .put(PutRequest {
            key: b"after-restore".to_vec(),
            value: b"yes".to_vec(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(put.header.unwrap().revision, revision + 1);
    let ttl = lease_client(&target, leader)
        .lease_time_to_live(proto::etcdserverpb::LeaseTimeToLiveRequest {
            id: 0x51,
            keys: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(ttl.ttl > 0, "the lease was not restored: {ttl:?}");
}
