//! The HTTP/1.1 endpoints on the client port, next to gRPC, compared with etcd's: `/health`,
//! `/version`, and what an unknown path answers.

use std::io::{Read as _, Write as _};
use std::time::Duration;

use testkit::{Cluster, Etcd};

use crate::{binary, ELECTION_DEADLINE};

/// `GET path` on the server at `url` (`http://host:port`) over HTTP/1.1: the status code
/// and the body.
fn get(url: &str, path: &str) -> anyhow::Result<(u16, String)> {
    let address = url.trim_start_matches("http://");
    let mut stream = std::net::TcpStream::connect(address)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow::anyhow!("no end of headers in {response:?}"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no status in {head:?}"))?;
    // Chunked bodies (Go's server for small ones) carry their sizes on lines of their own.
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        body.split("\r\n")
            .collect::<Vec<_>>()
            .chunks(2)
            .filter_map(|pair| pair.get(1).copied())
            .collect()
    } else {
        body.to_string()
    };
    Ok((status, body))
}

/// The keys of a flat JSON object, sorted.
fn keys(json: &str) -> Vec<String> {
    let value: serde_json::Value = serde_json::from_str(json).expect("JSON");
    let mut keys: Vec<String> = value
        .as_object()
        .expect("an object")
        .keys()
        .cloned()
        .collect();
    keys.sort();
    keys
}

// Proves `/health`, `/version` and an unknown path answer over HTTP/1.1 on the client port
// as etcd's do (status and body; the version's fields), while gRPC goes on on the same port.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_endpoints_answer_as_etcd_does() {
    let etcd = Etcd::start().unwrap();
    let mut cluster = Cluster::start(binary(), 1, &[]).unwrap();
    cluster.wait_for_leader(ELECTION_DEADLINE).await.unwrap();
    let (etcd_url, concord_url) = (etcd.client_url(), cluster.client_url(0));
    for path in ["/health", "/nope"] {
        let expected = get(&etcd_url, path).unwrap();
        let got = testkit::eventually(Duration::from_secs(5), path, || async {
            let got = get(&concord_url, path)?;
            anyhow::ensure!(got == expected, "{got:?}, etcd: {expected:?}");
            Ok(got)
        })
        .await
        .unwrap();
        assert_eq!(got, expected, "{path}");
    }
    let (etcd_status, etcd_version) = get(&etcd_url, "/version").unwrap();
    let (status, version) = get(&concord_url, "/version").unwrap();
    assert_eq!((status, keys(&version)), (etcd_status, keys(&etcd_version)));
    assert!(version.contains(r#""etcdserver":"3.4."#), "{version}");
    let output = cluster.etcdctl(0, &["put", "k", "v"]).unwrap();
    assert!(output.status.success());
}

// Proves `/health` turns false when the member loses its quorum (two of three killed), with
// 503 as etcd answers, within a few seconds; and true again once a member is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_follows_the_quorum() {
    let mut cluster = Cluster::start(binary(), 3, &[]).unwrap();
    cluster.wait_for_leader(ELECTION_DEADLINE).await.unwrap();
    let url = cluster.client_url(0);
    let healthy = (200, r#"{"health":"true"}"#.to_string());
    let unhealthy = (503, r#"{"health":"false"}"#.to_string());
    testkit::eventually(Duration::from_secs(5), "healthy", || async {
        anyhow::ensure!(get(&url, "/health")? == healthy);
        Ok(())
    })
    .await
    .unwrap();
    cluster.kill(1);
    cluster.kill(2);
    testkit::eventually(
        Duration::from_secs(5),
        "unhealthy without quorum",
        || async {
            anyhow::ensure!(get(&url, "/health")? == unhealthy);
            Ok(())
        },
    )
    .await
    .unwrap();
    cluster.restart(1).unwrap();
    testkit::eventually(ELECTION_DEADLINE, "healthy again", || async {
        anyhow::ensure!(get(&url, "/health")? == healthy);
        Ok(())
    })
    .await
    .unwrap();
}
