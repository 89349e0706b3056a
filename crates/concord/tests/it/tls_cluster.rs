//! TLS on the client and peer ports: mutual authentication with a private CA, failover and
//! certificate rotation over TLS, with etcdctl and the `etcd-client` crate.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use testkit::{Cluster, TestPki};
use tokio::io::AsyncReadExt as _;

use crate::{assert_acked_present, binary, read_prefix, Writers, ELECTION_DEADLINE};

/// etcdctl against `endpoints` with exactly `args` (no TLS flags added).
fn etcdctl(endpoints: &str, args: &[&str]) -> (bool, String) {
    let output = testkit::etcdctl(endpoints, args, None).expect("run etcdctl");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

fn tls_flags(ca: &Path, cert: Option<&testkit::CertFiles>) -> Vec<String> {
    let mut flags = vec![
        format!("--cacert={}", ca.display()),
        "--command-timeout=3s".to_string(),
        "--dial-timeout=2s".to_string(),
    ];
    if let Some(cert) = cert {
        flags.push(format!("--cert={}", cert.cert.display()));
        flags.push(format!("--key={}", cert.key.display()));
    }
    flags
}

/// Whether a TLS client with `certificate` (or none), trusting `ca_pem`, gets past the
/// handshake on `addr`: the server's HTTP/2 preface arrives, or the connection ends in an
/// alert (a refused client certificate shows at the first read in TLS 1.3).
async fn admitted(addr: &str, ca_pem: &str, certificate: Option<&testkit::CertFiles>) -> bool {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots);
    let mut config = match certificate {
        Some(files) => builder
            .with_client_auth_cert(
                CertificateDer::pem_file_iter(&files.cert)
                    .unwrap()
                    .map(Result::unwrap)
                    .collect(),
                PrivateKeyDer::from_pem_file(&files.key).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    let Ok(tcp) = tokio::net::TcpStream::connect(addr).await else {
        return false;
    };
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let Ok(mut stream) = connector
        .connect(ServerName::try_from("127.0.0.1").unwrap(), tcp)
        .await
    else {
        return false;
    };
    let mut preface = [0u8; 9];
    matches!(
        tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut preface)).await,
        Ok(Ok(_))
    )
}

fn host_port(url: &str) -> &str {
    url.split_once("://").map_or(url, |(_, rest)| rest)
}

// Proves client and peer TLS with client-certificate auth, as a user meets them: etcdctl and
// the etcd-client crate with a certificate from the cluster's CA read and write; without a
// certificate, with one from a foreign CA, or in plaintext, they are refused; the peer port
// refuses connections without a certificate from the CA (so nobody else can inject Raft
// messages or snapshots) and admits the members' own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_cluster_admits_only_clients_with_a_certificate_from_its_ca() {
    let mut cluster = Cluster::start_tls(binary(), 3, &[]).unwrap();
    cluster.wait_for_leader(ELECTION_DEADLINE).await.unwrap();
    let pki = cluster.pki().unwrap();
    let client = pki.client().unwrap();
    let ca = pki.ca();
    let endpoints = cluster.endpoints();
    assert!(endpoints.starts_with("https://"), "{endpoints}");

    let ok = cluster.etcdctl_all(&["put", "k", "over-tls"]).unwrap();
    assert!(ok.status.success(), "{ok:?}");
    for i in 0..3 {
        let got = cluster
            .etcdctl(i, &["get", "k", "--print-value-only"])
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&got.stdout),
            "over-tls\n",
            "member {i}"
        );
    }

    let foreign_dir = cluster.dir().join("foreign");
    std::fs::create_dir_all(&foreign_dir).unwrap();
    let foreign = TestPki::new(&foreign_dir, "foreign-ca").unwrap();
    let stranger = foreign.issue("stranger", "root").unwrap();
    let mut args = tls_flags(&ca, None);
    args.extend(["get".to_string(), "k".to_string()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (success, text) = etcdctl(&endpoints, &args);
    assert!(!success, "no client certificate, yet admitted: {text}");

    let mut args = tls_flags(&ca, Some(&stranger));
    args.extend(["get".to_string(), "k".to_string()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (success, text) = etcdctl(&endpoints, &args);
    assert!(!success, "a foreign CA's certificate, yet admitted: {text}");

    let plaintext = cluster.client_url(0).replace("https://", "http://");
    let (success, text) = etcdctl(&plaintext, &["--command-timeout=3s", "get", "k"]);
    assert!(!success, "plaintext, yet answered: {text}");

    // The etcd-client crate, configured as for etcd.
    let tls = etcd_client::TlsOptions::new()
        .ca_certificate(etcd_client::Certificate::from_pem(pki.ca_pem()))
        .identity(etcd_client::Identity::from_pem(
            std::fs::read(&client.cert).unwrap(),
            std::fs::read(&client.key).unwrap(),
        ));
    let options = etcd_client::ConnectOptions::new().with_tls(tls);
    let mut rust = etcd_client::Client::connect([cluster.client_url(1)], Some(options))
        .await
        .expect("the etcd-client crate connects over TLS");
    rust.put("from-rust", "v", None).await.unwrap();
    let got = rust.get("k", None).await.unwrap();
    assert_eq!(got.kvs()[0].value(), b"over-tls");

    // The peer port: only certificates from the cluster's CA get in.
    let peer = cluster.peer_url(2);
    let peer = host_port(&peer);
    let member = pki.issue("m0", "m0").unwrap();
    assert!(
        admitted(peer, &pki.ca_pem(), Some(&member)).await,
        "a member's certificate was refused"
    );
    assert!(
        !admitted(peer, &pki.ca_pem(), None).await,
        "no certificate, yet admitted to the peer port"
    );
    assert!(
        !admitted(peer, &pki.ca_pem(), Some(&stranger)).await,
        "a foreign CA's certificate, yet admitted to the peer port"
    );
    let client_port = cluster.client_url(2);
    assert!(
        !admitted(host_port(&client_port), &pki.ca_pem(), None).await,
        "no certificate, yet admitted to the client port"
    );
}

// Proves failover over TLS: the leader is killed (SIGKILL) under writes through every
// member; writes resume through the survivors, and every acknowledged write is there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_cluster_fails_over_without_losing_acknowledged_writes() {
    let mut cluster = Cluster::start_tls(binary(), 3, &[]).unwrap();
    let leader = cluster.wait_for_leader(ELECTION_DEADLINE).await.unwrap();
    let survivors: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    let writers = Writers::start(&cluster, &[0, 1, 2], 4, "failover");
    writers
        .wait_acked(200, Duration::from_secs(30))
        .await
        .unwrap();
    cluster.kill(leader);
    let before = writers.acked();
    // Half the writers' requests went to the dead member: wait for enough through the others.
    writers
        .wait_acked(before + 200, Duration::from_secs(30))
        .await
        .expect("writes resume after the leader is killed");
    let new_leader = cluster.wait_for_leader(ELECTION_DEADLINE).await.unwrap();
    assert!(survivors.contains(&new_leader));
    let acked = writers.finish().await;
    let found = read_prefix(&cluster, survivors[0], "failover/")
        .await
        .unwrap();
    assert_acked_present(&acked, &found, "after the failover");
}

// Proves rotation without restart under load: the CA bundle gains a new CA, then every
// member's certificate and key are replaced by ones from the new CA; no write fails, no
// member restarts, and new connections are served with the new certificates (a client that
// trusts only the new CA is refused before and admitted after).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_and_ca_rotate_on_disk_without_a_restart() {
    let mut cluster = Cluster::start_tls(binary(), 3, &[]).unwrap();
    cluster.wait_for_leader(ELECTION_DEADLINE).await.unwrap();
    let pids: Vec<Option<u32>> = (0..3).map(|i| cluster.pid(i)).collect();
    let pki = cluster.pki().unwrap();
    let new_dir = cluster.dir().join("new-ca");
    std::fs::create_dir_all(&new_dir).unwrap();
    let new_ca = TestPki::new(&new_dir, "new-ca").unwrap();
    let client = pki.client().unwrap();
    let endpoints = cluster.endpoints();
    let trusts_new_only = |endpoints: &str| {
        let mut args = tls_flags(&new_ca.ca(), Some(&client));
        args.extend(["get".to_string(), "k".to_string()]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        etcdctl(endpoints, &args)
    };
    let (success, text) = trusts_new_only(&endpoints);
    assert!(!success, "the new CA verified the old certificates: {text}");

    let writers = Writers::start(&cluster, &[0, 1, 2], 3, "rotation");
    writers
        .wait_acked(100, Duration::from_secs(30))
        .await
        .unwrap();
    // First the bundle (old and new CA), so that both are trusted while certificates change.
    let bundle = format!("{}{}", pki.ca_pem(), new_ca.ca_pem());
    tls::pki::write_pem(&pki.ca(), &bundle, false).unwrap();
    for i in 0..3 {
        let name = cluster.name(i).to_string();
        let fresh = new_ca.issue(&name, &name).unwrap();
        let current = pki.issue(&name, &name).unwrap();
        // Key and certificate each replaced by a rename, as a certificate manager does.
        std::fs::copy(&fresh.key, current.key.with_extension("key.new")).unwrap();
        std::fs::copy(&fresh.cert, current.cert.with_extension("crt.new")).unwrap();
        std::fs::rename(current.key.with_extension("key.new"), &current.key).unwrap();
        std::fs::rename(current.cert.with_extension("crt.new"), &current.cert).unwrap();
    }
    // Members look at their files at most once a second, when a connection comes.
    testkit::eventually(
        Duration::from_secs(15),
        "the rotated certificates served",
        || async {
            let (success, text) = trusts_new_only(&endpoints);
            anyhow::ensure!(success, "{text}");
            Ok(())
        },
    )
    .await
    .unwrap();
    for i in 0..3 {
        let (success, text) = trusts_new_only(&cluster.client_url(i));
        assert!(
            success,
            "member {i} does not serve its new certificate: {text}"
        );
    }
    let before = writers.acked();
    writers
        .wait_acked(before + 100, Duration::from_secs(30))
        .await
        .unwrap();
    let failed = writers.failed();
    let acked = writers.finish().await;
    assert_eq!(failed, 0, "writes failed during the rotation");
    let found = read_prefix(&cluster, 0, "rotation/").await.unwrap();
    assert_acked_present(&acked, &found, "after the rotation");
    // Members dial each other anew with the rotated files: kill one and bring it back.
    let survivors_pids: Vec<Option<u32>> = (0..3).map(|i| cluster.pid(i)).collect();
    assert_eq!(survivors_pids, pids, "a member restarted");
    cluster.kill(2);
    cluster.restart(2).unwrap();
    cluster.wait_listening(2, Duration::from_secs(20)).unwrap();
    let end = crate::prefix_end(b"rotation/");
    testkit::eventually(
        Duration::from_secs(20),
        "the restarted member catching up",
        || async {
            let (_, kvs) = crate::read_range(&cluster, 2, b"rotation/", &end, true, 0).await?;
            anyhow::ensure!(
                kvs.len() == found.len(),
                "{} of {} keys",
                kvs.len(),
                found.len()
            );
            Ok(())
        },
    )
    .await
    .unwrap();
}
