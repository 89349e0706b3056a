//! The corruption check: a member whose data was changed behind Raft's back is found by the
//! leader's periodic HashKV comparison (the CORRUPT alarm names it, and writes are refused),
//! and refuses to start when it checks itself against its peers.

use std::time::Duration;

use storage::{KvSnapshot, KvStore, Table, WriteOp};
use storage_disk::RedbKvStore;
use testkit::{eventually, Cluster};

use crate::{binary, ELECTION_DEADLINE};

/// Changes the last byte of the newest stored version in a stopped member's state machine:
/// the value of the last write, as a flipped bit on its disk would.
fn alter_newest_value(cluster: &Cluster, i: usize) {
    let path = cluster.data_dir(i).join("member").join("state.redb");
    let kv = RedbKvStore::open(&path).expect("open the member's state machine");
    let mut newest = None;
    kv.snapshot()
        .unwrap()
        .scan(Table::Revisions, &[], None, &mut |key, value| {
            newest = Some((key.to_vec(), value.to_vec()));
            true
        })
        .unwrap();
    let (key, mut value) = newest.expect("the member holds versions");
    *value.last_mut().expect("a record is not empty") ^= 0x01;
    kv.write(
        vec![WriteOp::Put {
            table: Table::Revisions,
            key,
            value,
        }],
        true,
    )
    .unwrap();
}

// Proves divergence is detected: the leader's periodic check raises CORRUPT naming the member
// whose stored data was altered while it was stopped, every member then refuses writes with
// etcd's error, and the altered member refuses to start with the startup check.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_whose_data_was_altered_is_found_and_named() {
    let mut cluster =
        Cluster::start(binary(), 3, &["--experimental-corrupt-check-time", "1s"]).unwrap();
    let leader = cluster.wait_for_leader(ELECTION_DEADLINE).await.unwrap();
    let victim = (leader + 1) % 3;
    for i in 0..10 {
        let out = cluster
            .etcdctl(leader, &["put", &format!("k{i}"), &format!("value-{i}")])
            .unwrap();
        assert!(out.status.success(), "{out:?}");
    }
    // The victim has applied every write before it stops: its state is complete.
    let revision = cluster
        .status(leader)
        .await
        .unwrap()
        .header
        .unwrap()
        .revision;
    eventually(
        Duration::from_secs(10),
        "the victim applies every write",
        || async {
            let status = cluster.status(victim).await?;
            anyhow::ensure!(status.header.unwrap().revision == revision);
            Ok(())
        },
    )
    .await
    .unwrap();
    // A check while all agree raises nothing.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let alarms = cluster.etcdctl(leader, &["alarm", "list"]).unwrap();
    assert!(
        alarms.stdout.is_empty(),
        "alarm with equal data: {alarms:?}"
    );

    cluster.stop(victim);
    alter_newest_value(&cluster, victim);

    // The startup check refuses to serve with data that differs.
    let mut args = cluster.args(victim);
    args.push("--experimental-initial-corrupt-check".into());
    let refused = tokio::task::spawn_blocking(move || {
        std::process::Command::new(binary())
            .args(&args)
            .output()
            .expect("run the member")
    })
    .await
    .unwrap();
    let log = String::from_utf8_lossy(&refused.stderr).into_owned()
        + &String::from_utf8_lossy(&refused.stdout);
    assert!(
        !refused.status.success(),
        "started with altered data: {log}"
    );
    assert!(
        log.contains("found data inconsistency with peers"),
        "no inconsistency reported: {log}"
    );

    // Started without it, the member serves until the leader's check finds it.
    cluster.restart(victim).unwrap();
    cluster
        .wait_listening(victim, Duration::from_secs(20))
        .unwrap();
    // etcdctl prints member ids in decimal.
    let member_id = cluster
        .status(victim)
        .await
        .unwrap()
        .header
        .unwrap()
        .member_id;
    let found = eventually(Duration::from_secs(15), "the CORRUPT alarm", || async {
        let out = cluster.etcdctl_all(&["alarm", "list"])?;
        let listed = String::from_utf8_lossy(&out.stdout).into_owned();
        anyhow::ensure!(listed.contains("alarm:CORRUPT"), "alarms: {listed:?}");
        Ok(listed)
    })
    .await
    .unwrap();
    assert_eq!(
        found.trim(),
        format!("memberID:{member_id} alarm:CORRUPT"),
        "the alarm names another member"
    );
    let refused = cluster.etcdctl(leader, &["put", "after", "x"]).unwrap();
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("etcdserver: corrupt cluster"),
        "{refused:?}"
    );
}
