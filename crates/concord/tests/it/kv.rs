//! The KV API through real clients: etcdctl 3.4 and gRPC.

use std::time::Duration;

use proto::etcdserverpb::{PutRequest, RangeRequest};
use testkit::Cluster;
use tonic::Code;

use crate::binary;

fn stdout(output: &std::process::Output) -> String {
    assert!(
        output.status.success(),
        "etcdctl failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

// Proves etcdctl can put, get and delete through every member of a 3-member cluster, and
// that every member sees what was written through any other; also that `endpoint health`,
// `endpoint status` and `member list` work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_put_get_delete_through_every_member() {
    let cluster = Cluster::start(binary(), 3, &[]).unwrap();
    cluster
        .wait_for_leader(Duration::from_secs(20))
        .await
        .unwrap();
    for writer in 0..3 {
        let key = format!("key-{writer}");
        let value = format!("value-{writer}");
        assert_eq!(
            stdout(&cluster.etcdctl(writer, &["put", &key, &value]).unwrap()),
            "OK\n"
        );
        for reader in 0..3 {
            let got = stdout(&cluster.etcdctl(reader, &["get", &key]).unwrap());
            assert_eq!(
                got,
                format!("{key}\n{value}\n"),
                "written via {writer}, read via {reader}"
            );
        }
        let deleter = (writer + 1) % 3;
        assert_eq!(
            stdout(&cluster.etcdctl(deleter, &["del", &key]).unwrap()),
            "1\n"
        );
        for reader in 0..3 {
            assert_eq!(
                stdout(&cluster.etcdctl(reader, &["get", &key]).unwrap()),
                ""
            );
        }
    }
    let prefix = stdout(&cluster.etcdctl(0, &["get", "--prefix", "key-"]).unwrap());
    assert_eq!(prefix, "");

    let endpoints = format!("--endpoints={}", cluster.endpoints());
    let health = std::process::Command::new("etcdctl")
        .args([endpoints.as_str(), "endpoint", "health"])
        .env("ETCDCTL_API", "3")
        .output()
        .unwrap();
    let health = String::from_utf8_lossy(&health.stderr).into_owned()
        + &String::from_utf8_lossy(&health.stdout);
    assert_eq!(health.matches("is healthy").count(), 3, "{health}");

    // etcdctl 3.4 sends a malformed :authority on `endpoint status`; it must work anyway, and
    // exactly one member must report itself as leader.
    let status = std::process::Command::new("etcdctl")
        .args([endpoints.as_str(), "endpoint", "status", "-w", "simple"])
        .env("ETCDCTL_API", "3")
        .output()
        .unwrap();
    let status = stdout(&status);
    assert_eq!(status.lines().count(), 3, "{status}");
    let leaders = status
        .lines()
        .filter(|l| l.contains(", true, false,"))
        .count();
    assert_eq!(leaders, 1, "{status}");

    let members = stdout(&cluster.etcdctl(1, &["member", "list"]).unwrap());
    assert_eq!(members.lines().count(), 3, "{members}");
    for i in 0..3 {
        assert!(members.contains(&format!("m{i}")), "{members}");
    }

    // Exactly one leader, and every member names the same one.
    let mut leaders = Vec::new();
    let mut ids = Vec::new();
    for i in 0..3 {
        let status = cluster.status(i).await.unwrap();
        leaders.push(status.leader);
        ids.push(status.header.unwrap().member_id);
    }
    assert!(leaders.iter().all(|l| *l == leaders[0] && *l != 0));
    assert_eq!(ids.iter().filter(|id| **id == leaders[0]).count(), 1);
}

// Proves etcd's exact errors for a request over the 1.5 MiB limit and for an empty key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_request_and_empty_key_get_etcds_errors() {
    let cluster = Cluster::start(binary(), 1, &[]).unwrap();
    cluster
        .wait_for_leader(Duration::from_secs(20))
        .await
        .unwrap();
    let mut kv = cluster.kv(0);
    let too_large = kv
        .put(PutRequest {
            key: b"big".to_vec(),
            value: vec![b'x'; 1024 * 1024 + 600 * 1024],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(too_large.code(), Code::InvalidArgument);
    assert_eq!(too_large.message(), "etcdserver: request is too large");

    let empty = kv
        .put(PutRequest {
            key: Vec::new(),
            value: b"v".to_vec(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(empty.code(), Code::InvalidArgument);
    assert_eq!(empty.message(), "etcdserver: key is not provided");

    let empty_range = kv.range(RangeRequest::default()).await.unwrap_err();
    assert_eq!(empty_range.message(), "etcdserver: key is not provided");

    // The member still serves after refusing them.
    kv.put(PutRequest {
        key: b"k".to_vec(),
        value: b"v".to_vec(),
        ..Default::default()
    })
    .await
    .unwrap();
}
