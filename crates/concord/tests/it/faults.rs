//! Crashes and corrupt files, with real processes: acknowledged writes survive SIGKILL of the
//! leader or of every member, and a corrupt Raft log stops a member instead of serving.

use std::time::{Duration, Instant};

use futures::future::select_ok;
use proto::etcdserverpb::PutRequest;
use testkit::Cluster;

use crate::{assert_acked_present, binary, read_prefix, Writers, ELECTION_DEADLINE};

/// How soon after the leader's death a surviving member must accept writes again.
const FAILOVER_DEADLINE: Duration = Duration::from_secs(3);

/// Writes acknowledged before a crash, so the crash happens under load.
const ACKED_BEFORE_CRASH: usize = 300;

// Proves that SIGKILL of the leader during a stream of concurrent writes through every member
// loses no acknowledged write (read back linearizably from both survivors, and from the
// killed member once restarted), and that a write through a surviving member succeeds within
// 3 s of the kill.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_killed_during_writes_loses_nothing_and_fails_over_within_3s() {
    let mut cluster = Cluster::start(binary(), 3, &[]).unwrap();
    let leader = cluster.wait_for_leader(ELECTION_DEADLINE).await.unwrap();
    let survivors: Vec<usize> = (0..3).filter(|i| *i != leader).collect();
    let writers = Writers::start(&cluster, &[0, 1, 2], 8, "lk");
    writers
        .wait_acked(ACKED_BEFORE_CRASH, Duration::from_secs(30))
        .await
        .unwrap();

    cluster.kill(leader);
    let killed_at = Instant::now();
    let acked_at_kill = writers.acked();

    // Time until a write through a surviving member succeeds: probe both survivors at once,
    // each attempt with a 500 ms deadline, a fresh key each time.
    let probes: Vec<_> = survivors.iter().map(|&i| cluster.kv(i)).collect();
    let mut attempt = 0;
    let failover = loop {
        attempt += 1;
        let puts = probes.iter().map(|client| {
            let mut client = client.clone();
            let put = PutRequest {
                key: format!("probe/{attempt}").into_bytes(),
                value: b"p".to_vec(),
                ..Default::default()
            };
            Box::pin(async move {
                match tokio::time::timeout(Duration::from_millis(500), client.put(put)).await {
                    Ok(Ok(_)) => Ok(()),
                    _ => Err(()),
                }
            })
        });
        if select_ok(puts).await.is_ok() {
            break killed_at.elapsed();
        }
        assert!(
            killed_at.elapsed() < Duration::from_secs(30),
            "no write succeeded within 30 s of killing the leader m{leader}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    eprintln!("a surviving member accepted a write {failover:?} after the leader was killed");
    assert!(
        failover < FAILOVER_DEADLINE,
        "writes resumed only {failover:?} after the leader was killed"
    );

    // The writers keep going through the survivors; let them get more writes in.
    writers
        .wait_acked(acked_at_kill + ACKED_BEFORE_CRASH, Duration::from_secs(30))
        .await
        .unwrap();
    let acked = writers.finish().await;
    for &i in &survivors {
        let found = read_prefix(&cluster, i, "lk/").await.unwrap();
        assert_acked_present(&acked, &found, &format!("surviving member m{i}"));
    }

    // The killed member comes back, catches up, and holds every acknowledged write too.
    cluster.restart(leader).unwrap();
    cluster.wait_for_leader(ELECTION_DEADLINE).await.unwrap();
    let found = read_prefix(&cluster, leader, "lk/").await.unwrap();
    assert_acked_present(&acked, &found, &format!("restarted member m{leader}"));
}

// Proves that after SIGKILL of every member during concurrent writes, the restarted cluster
// elects a leader, holds every acknowledged write on every member, and takes new writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_members_killed_during_writes_keep_every_acknowledged_write() {
    let mut cluster = Cluster::start(binary(), 3, &[]).unwrap();
    cluster.wait_for_leader(ELECTION_DEADLINE).await.unwrap();
    let writers = Writers::start(&cluster, &[0, 1, 2], 8, "ka");
    writers
        .wait_acked(ACKED_BEFORE_CRASH, Duration::from_secs(30))
        .await
        .unwrap();
    cluster.kill_all();
    let acked = writers.finish().await;

    cluster.restart_all().unwrap();
    cluster.wait_for_leader(ELECTION_DEADLINE).await.unwrap();
    for i in 0..3 {
        let found = read_prefix(&cluster, i, "ka/").await.unwrap();
        assert_acked_present(&acked, &found, &format!("member m{i}"));
    }
    let writers = Writers::start(&cluster, &[0, 1, 2], 3, "after");
    writers
        .wait_acked(30, Duration::from_secs(30))
        .await
        .unwrap();
    writers.finish().await;
}

// Proves that one flipped byte inside a record of a member's Raft log is detected at startup:
// the member exits non-zero with an error naming the file and the offset, and never answers a
// request. Restoring the byte makes the same data directory start and serve again, so it was
// the flipped byte, and nothing else, that stopped it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flipped_byte_in_the_raft_log_stops_the_member() {
    let mut cluster = Cluster::start(binary(), 1, &[]).unwrap();
    cluster.wait_for_leader(ELECTION_DEADLINE).await.unwrap();
    let mut kv = cluster.kv(0);
    for n in 0..50 {
        kv.put(PutRequest {
            key: format!("c/{n:02}").into_bytes(),
            value: crate::value_for(&format!("c/{n:02}")).into_bytes(),
            ..Default::default()
        })
        .await
        .unwrap();
    }
    assert!(
        cluster.stop(0).is_some(),
        "the member did not stop on SIGTERM"
    );

    let log_dir = cluster.data_dir(0).join("member").join("log");
    let mut files: Vec<_> = std::fs::read_dir(&log_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "raftlog"))
        .collect();
    files.sort();
    let file = files.last().expect("a *.raftlog file").clone();
    let original = std::fs::read(&file).unwrap();
    // The engine preallocates its files: the records end where the zero tail starts. Flip a
    // byte in the middle of the records, well past the file header.
    let written = original.iter().rposition(|b| *b != 0).unwrap() + 1;
    assert!(
        written > 2000,
        "expected the 50 writes in {}, found {written} bytes",
        file.display()
    );
    let name = file.file_name().unwrap().to_str().unwrap().to_string();
    for offset in [written / 4, written / 2, written * 3 / 4] {
        let mut corrupt = original.clone();
        corrupt[offset] ^= 0x5a;
        std::fs::write(&file, &corrupt).unwrap();

        cluster.restart(0).unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while cluster.is_running(0) {
            assert!(
                cluster.status(0).await.is_err(),
                "the member served with byte {offset} of {name} flipped"
            );
            assert!(
                Instant::now() < deadline,
                "the member with byte {offset} of {name} flipped still runs after 30 s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let status = cluster.wait_exit(0, Duration::from_secs(1)).unwrap();
        assert!(!status.success(), "exit status {status}");
        let log = cluster.current_log(0);
        let error = log
            .lines()
            .find(|l| l.starts_with("concord: error:"))
            .unwrap_or_else(|| panic!("no `concord: error:` line in:\n{log}"));
        eprintln!("flipped byte {offset} of {name}; the member said: {error}");
        assert!(
            error.contains(&name),
            "the error does not name {name}: {error}"
        );
        // The offset reported is that of the damaged record: at or before the flipped byte.
        let reported: usize = error
            .split("offset ")
            .nth(1)
            .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|digits| digits.parse().ok())
            .unwrap_or_else(|| panic!("the error gives no offset: {error}"));
        assert!(
            reported <= offset,
            "reported offset {reported}, flipped byte {offset}"
        );
    }

    std::fs::write(&file, &original).unwrap();
    cluster.restart(0).unwrap();
    cluster.wait_for_leader(ELECTION_DEADLINE).await.unwrap();
    let found = read_prefix(&cluster, 0, "c/").await.unwrap();
    assert_eq!(found.len(), 50, "the restored log lost writes");
}
