//! The fixture against a fake member: this test binary itself, re-run through a shell script
//! as the "binary", listens on its client port until killed, and on the first start of all
//! fails the way a member does when its port was taken.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::*;

/// The fake member: not a test (ignored in a normal run, so that it never counts as one
/// that passed); started by the script from [`fake_binary`], it acts as a `concord serve`
/// whose flags are in `FAKE_MEMBER_ARGS`.
#[test]
#[ignore = "a fake member process for the cluster tests, not a test"]
fn fake_member() {
    let args = std::env::var("FAKE_MEMBER_ARGS").expect("started by the fake-member script");
    let marker = PathBuf::from(std::env::var_os("FAKE_MEMBER_MARKER").unwrap());
    let args: Vec<&str> = args.split(' ').collect();
    let flag = |name: &str| args[args.iter().position(|a| *a == name).unwrap() + 1];
    let client = flag("--listen-client-urls").trim_start_matches("http://");
    if File::options()
        .write(true)
        .create_new(true)
        .open(&marker)
        .is_ok()
    {
        eprintln!("concord: error: {BIND_FAILURE} for peers on {client}: Address already in use");
        std::process::exit(1);
    }
    let _listener = TcpListener::bind(client).unwrap();
    eprintln!("fake member listening on {client}");
    // Bounded, like every wait here: a leaked fake dies on its own.
    std::thread::sleep(Duration::from_secs(120));
}

/// A script that starts [`fake_member`] of this test binary with the script's arguments.
fn fake_binary(dir: &Path) -> PathBuf {
    let script = dir.join("fake-concord");
    let exe = std::env::current_exe().unwrap();
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nFAKE_MEMBER_ARGS=\"$*\" FAKE_MEMBER_MARKER='{}' exec '{}' --exact tests::fake_member --ignored --nocapture --test-threads=1\n",
            dir.join("first-start-fails").display(),
            exe.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    script
}

fn listening(port: u16) -> bool {
    TcpStream::connect_timeout(
        &SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_millis(500),
    )
    .is_ok()
}

fn alive(pid: u32) -> bool {
    send_signal(pid, "0").is_ok()
}

#[test]
fn start_retries_on_new_ports_after_a_bind_failure() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::start(fake_binary(dir.path()), 2, &["--extra", "x"]).unwrap();
    let log = cluster.log(0) + &cluster.log(1);
    assert!(log.contains(BIND_FAILURE), "{log}");
    for i in 0..2 {
        assert!(listening(cluster.members[i].client_port), "member {i}");
        assert!(cluster.current_log(i).contains("--extra x"));
        assert!(cluster.current_log(i).contains(&format!("--name m{i}")));
    }
    assert_eq!(
        cluster.endpoints(),
        format!("{},{}", cluster.client_url(0), cluster.client_url(1))
    );
}

#[test]
fn kill_stop_restart_and_drop_act_on_the_members() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("first-start-fails"), "").unwrap();
    let mut cluster = Cluster::start(fake_binary(dir.path()), 3, &[]).unwrap();
    let port = |c: &Cluster, i: usize| c.members[i].client_port;

    cluster.kill(0);
    assert!(!cluster.is_running(0));
    assert!(cluster.pid(0).is_none());
    assert!(!listening(port(&cluster, 0)));

    let status = cluster.stop(1).expect("stopped by SIGTERM");
    assert!(!status.success());
    assert!(!listening(port(&cluster, 1)));

    cluster.restart(0).unwrap();
    cluster.wait_listening(0, Duration::from_secs(20)).unwrap();
    assert_eq!(cluster.log(0).matches("==== testkit: start").count(), 2);
    assert!(cluster.data_dir(0).starts_with(cluster.dir()));

    cluster.restart_all().unwrap();
    for i in 0..3 {
        cluster.wait_listening(i, Duration::from_secs(20)).unwrap();
    }
    let pids: Vec<u32> = (0..3).map(|i| cluster.pid(i).unwrap()).collect();
    assert!(pids.iter().all(|pid| alive(*pid)));
    let kept = cluster.dir().to_path_buf();
    drop(cluster);
    assert!(
        pids.iter().all(|pid| !alive(*pid)),
        "a member outlived the cluster"
    );
    assert!(!kept.exists(), "the directory of a passing test is removed");
}

#[test]
fn wait_listening_reports_a_member_that_exits() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("first-start-fails"), "").unwrap();
    let mut cluster = Cluster::start(fake_binary(dir.path()), 1, &[]).unwrap();
    cluster.kill(0);
    std::fs::remove_file(dir.path().join("first-start-fails")).unwrap();
    cluster.restart(0).unwrap();
    let error = cluster
        .wait_listening(0, Duration::from_secs(20))
        .unwrap_err()
        .to_string();
    assert!(error.contains("exited before listening"), "{error}");
    assert!(
        error.contains(BIND_FAILURE),
        "the log is in the error: {error}"
    );
}

#[test]
fn free_ports_are_distinct() {
    let ports = free_ports(20);
    let distinct: std::collections::BTreeSet<_> = ports.iter().collect();
    assert_eq!(distinct.len(), 20);
}

#[tokio::test]
async fn eventually_returns_the_value_or_the_last_error() {
    let mut calls = 0;
    let value = eventually(Duration::from_secs(5), "three calls", || {
        calls += 1;
        let n = calls;
        async move {
            anyhow::ensure!(n >= 3, "call {n}");
            Ok(n)
        }
    })
    .await
    .unwrap();
    assert_eq!(value, 3);

    let error = eventually::<(), _, _>(Duration::from_millis(200), "never", || async {
        anyhow::bail!("still not")
    })
    .await
    .unwrap_err();
    assert!(
        format!("{error:#}").contains("never: not within"),
        "{error:#}"
    );
    assert!(format!("{error:#}").contains("still not"), "{error:#}");
}

// Proves the etcd cluster fixture works as `Members` says, with Debian's etcd: a leader is
// agreed on at start, a new one among the others after the leader is killed, and the
// restarted member rejoins on its data directory and names the same leader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_cluster_fails_over_and_takes_a_restarted_member_back() {
    let mut etcd = EtcdCluster::start(3).await.unwrap();
    assert_eq!(etcd.system(), "etcd");
    let urls: Vec<String> = (0..3).map(|i| etcd.client_url(i)).collect();
    assert_eq!(etcd.endpoints(), urls.join(","));
    let leader = etcd.leader().await.unwrap();
    let log_before = etcd.log(leader);

    etcd.kill(leader);
    assert!(!etcd.is_running(leader));
    let next = etcd.wait_for_leader(Duration::from_secs(20)).await.unwrap();
    assert_ne!(next, leader);

    etcd.restart(leader).unwrap();
    etcd.wait_listening(leader, Duration::from_secs(20))
        .unwrap();
    assert_eq!(
        etcd.wait_for_leader(Duration::from_secs(20)).await.unwrap(),
        next
    );
    assert!(etcd.log(leader).len() > log_before.len());
    assert_eq!(etcd.log(leader).matches("==== testkit: start").count(), 2);
    assert!(etcd.report().contains("etcd member 2"));
}
