//! The command line: bad flags and bad data directories are refused at once with one clear
//! line, and `concord dev` runs a local cluster.

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use testkit::{free_port, free_ports, send_signal, Cluster};

use crate::{binary, ELECTION_DEADLINE};

/// How long a refusal may take: it happens before anything starts.
const REFUSAL_DEADLINE: Duration = Duration::from_secs(5);

/// Runs `concord serve <args>` (killed after 30 s) and asserts it failed within
/// [`REFUSAL_DEADLINE`]; its output.
fn refused(args: &[&str]) -> Output {
    let started = Instant::now();
    let output = Command::new("timeout")
        .arg("30")
        .arg(binary())
        .arg("serve")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run concord");
    let took = started.elapsed();
    assert!(!output.status.success(), "concord serve {args:?} started");
    assert_ne!(
        output.status.code(),
        Some(124),
        "concord serve {args:?} hung"
    );
    assert!(took < REFUSAL_DEADLINE, "refusing {args:?} took {took:?}");
    output
}

/// The single line on stderr of a refused start, asserting there is exactly one and that it
/// is `concord: error: ...` with exit code 1.
fn one_error_line(output: &Output) -> String {
    let stderr = String::from_utf8_lossy(&output.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(
        lines.len(),
        1,
        "expected one line on stderr, got:\n{stderr}"
    );
    assert!(lines[0].starts_with("concord: error: "), "{}", lines[0]);
    assert_eq!(output.status.code(), Some(1), "{}", lines[0]);
    lines[0].to_string()
}

// Proves each malformed --initial-cluster is refused at once with one line naming the problem.
#[test]
fn invalid_initial_cluster_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data = data.to_str().unwrap();
    for (cluster, expected) in [
        ("nonsense", "is not name=url"),
        ("default=ftp://127.0.0.1:2380", "scheme must be http"),
        ("default=http://127.0.0.1", "must have a port"),
        ("other=http://localhost:2380", "no member named \"default\""),
    ] {
        let line = one_error_line(&refused(&[
            "--data-dir",
            data,
            "--initial-cluster",
            cluster,
        ]));
        assert!(line.contains(expected), "{cluster}: {line}");
    }
    assert!(
        !dir.path().join("data").join("member").exists(),
        "a refused start wrote a data directory"
    );
}

// Proves an unknown flag is refused at once, the first line on stderr naming the flag (the
// usage that follows is clap's, as etcd prints its usage).
#[test]
fn unknown_flag_is_refused() {
    let output = refused(&["--no-such-flag"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let first = stderr.lines().next().unwrap_or_default();
    assert!(
        first.contains("error") && first.contains("--no-such-flag"),
        "{stderr}"
    );
}

// Proves etcd's flags that ask for what Concord does not do are refused at once with one
// line giving the reason, and harmless ones are accepted with a warning in the log.
#[test]
fn etcd_flags_concord_does_not_honour_are_refused_with_the_reason() {
    let line = one_error_line(&refused(&[
        "--enable-v2",
        "--client-crl-file",
        "/revoked.crl",
    ]));
    assert_eq!(
        line,
        "concord: error: --client-crl-file=/revoked.crl is not supported: certificate revocation \
         lists are not supported yet; rotate the CA bundle instead"
    );
    let line = one_error_line(&refused(&["--force-new-cluster"]));
    assert!(
        line.contains("--force-new-cluster=true is not supported"),
        "{line}"
    );
    // Harmless: accepted and warned about (the start then fails on purpose: a bad name).
    let line = one_error_line(&refused(&["--enable-v2", "--max-wals=9", "--name", ""]));
    assert!(line.contains("--name"), "{line}");
}

// Proves `--initial-cluster-state existing` with an empty data dir and no other member in
// `--initial-cluster` is refused at once with one line: a joining member must have a running
// member to ask for the cluster.
#[test]
fn existing_state_without_a_peer_to_ask_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ports = free_ports(2);
    let peer = format!("http://127.0.0.1:{}", ports[1]);
    let line = one_error_line(&refused(&[
        "--data-dir",
        dir.path().join("empty").to_str().unwrap(),
        "--initial-cluster-state",
        "existing",
        "--listen-client-urls",
        &format!("http://127.0.0.1:{}", ports[0]),
        "--listen-peer-urls",
        &peer,
        "--initial-advertise-peer-urls",
        &peer,
        "--initial-cluster",
        &format!("default={peer}"),
    ]));
    assert!(
        line.contains("existing") && line.contains("no other member"),
        "{line}"
    );
}

// Proves a data dir created by one cluster is refused by a member of another cluster (the same
// flags with another --initial-cluster-token) with one line, and is left intact: the member
// starts again with its own cluster's flags.
#[test]
fn data_dir_of_another_cluster_is_refused() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let mut cluster = Cluster::start(binary(), 1, &[]).unwrap();
    runtime
        .block_on(cluster.wait_for_leader(ELECTION_DEADLINE))
        .unwrap();
    cluster.stop(0);
    let mut args = cluster.args(0);
    let token = args
        .iter()
        .position(|a| a == "--initial-cluster-token")
        .unwrap();
    args[token + 1] = "another-cluster".into();
    let args: Vec<&str> = args.iter().skip(1).map(String::as_str).collect(); // skip "serve"
    let line = one_error_line(&refused(&args));
    assert!(line.contains("belongs to cluster"), "{line}");

    cluster.restart(0).unwrap();
    runtime
        .block_on(cluster.wait_for_leader(ELECTION_DEADLINE))
        .unwrap();
}

/// `concord dev`, stopped with Ctrl-C (SIGINT) when dropped if still running, then killed
/// after 20 s: a failing test leaves no members behind.
struct Dev(std::process::Child);

impl Dev {
    fn interrupt(&self) {
        let _ = send_signal(self.0.id(), "INT");
    }

    /// Waits for the exit, for at most `timeout`.
    fn wait(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = self.0.try_wait().unwrap() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

impl Drop for Dev {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            self.interrupt();
            if self.wait(Duration::from_secs(20)).is_none() {
                let _ = self.0.kill();
                let _ = self.0.wait();
            }
        }
    }
}

// Proves `concord dev` starts a working 3-member cluster in one command, prints how to reach
// it, that `concord dev --join` adds a fourth member to it (a membership change through the
// API; the new member receives the data and serves), that it serves TLS with its own CA by default (a client without the certificate is refused), and that Ctrl-C (SIGINT) stops every
// member.
#[test]
fn dev_starts_a_cluster_and_stops_on_ctrl_c() {
    let dir = tempfile::tempdir().unwrap();
    // Member i listens on base + 10*i (clients) and base + 10*i + 1 (peers); pick a base whose
    // eight ports (three members and the one that joins) are free now.
    let base = (0..100)
        .map(|_| free_port().saturating_sub(40).max(1024))
        .find(|base| {
            (0..4u16).all(|i| {
                [base + 10 * i, base + 10 * i + 1]
                    .iter()
                    .all(|p| std::net::TcpListener::bind(("127.0.0.1", *p)).is_ok())
            })
        })
        .expect("eight free ports");
    let mut dev = Dev(Command::new(binary())
        .args(["dev", "--base-port", &base.to_string(), "--data-dir"])
        .arg(dir.path().join("dev"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap());
    // Read what dev and its members print as it comes, so a full pipe never blocks them.
    let mut stdout = dev.0.stdout.take().unwrap();
    let (printed_tx, printed) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut printed = String::new();
        let _ = std::io::Read::read_to_string(&mut stdout, &mut printed);
        let _ = printed_tx.send(printed);
    });
    // TLS by default: the dev CA and client certificate are in the data directory.
    let pki = dir.path().join("dev").join("pki");
    let etcdctl_with = |i: u16, tls: &[String], args: &[&str]| {
        Command::new("timeout")
            .args(["10", "etcdctl"])
            .arg(format!("--endpoints=https://127.0.0.1:{}", base + 10 * i))
            .args(tls)
            .args(args)
            .env("ETCDCTL_API", "3")
            .output()
            .unwrap()
    };
    let client_tls = [
        format!("--cacert={}", pki.join("ca.pem").display()),
        format!("--cert={}", pki.join("client.crt").display()),
        format!("--key={}", pki.join("client.key").display()),
    ];
    let etcdctl = |i: u16, args: &[&str]| etcdctl_with(i, &client_tls, args);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !etcdctl(0, &["put", "dev-key", "dev-value"])
        .status
        .success()
    {
        assert!(
            Instant::now() < deadline && dev.0.try_wait().unwrap().is_none(),
            "the dev cluster did not serve within 30 s"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    for i in 0..3 {
        let got = etcdctl(i, &["get", "dev-key"]);
        assert_eq!(
            String::from_utf8_lossy(&got.stdout),
            "dev-key\ndev-value\n",
            "via member {i}"
        );
    }
    // Without the client certificate, the dev cluster does not answer.
    let refused = etcdctl_with(
        0,
        &[format!("--cacert={}", pki.join("ca.pem").display())],
        &["--command-timeout=2s", "get", "dev-key"],
    );
    assert!(!refused.status.success(), "{refused:?}");

    let mut join = Dev(Command::new(binary())
        .args([
            "dev",
            "--join",
            "--base-port",
            &base.to_string(),
            "--data-dir",
        ])
        .arg(dir.path().join("dev"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap());
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got = etcdctl(3, &["get", "dev-key"]);
        if String::from_utf8_lossy(&got.stdout) == "dev-key\ndev-value\n" {
            break;
        }
        assert!(
            Instant::now() < deadline && join.0.try_wait().unwrap().is_none(),
            "the joined member did not serve the data within 30 s"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let listed = etcdctl(0, &["member", "list"]);
    let listed = String::from_utf8_lossy(&listed.stdout).to_string();
    assert_eq!(listed.lines().count(), 4, "{listed}");
    assert!(listed.contains(", m3, "), "{listed}");
    join.interrupt();
    let status = join
        .wait(Duration::from_secs(20))
        .expect("concord dev --join did not stop within 20 s of SIGINT");
    assert!(status.success(), "{status}");

    dev.interrupt();
    let status = dev
        .wait(Duration::from_secs(20))
        .expect("concord dev did not stop within 20 s of SIGINT");
    assert!(status.success(), "{status}");
    // The pipe closes once dev and every member it started have exited.
    let printed = printed
        .recv_timeout(Duration::from_secs(20))
        .expect("a member of dev still holds its stdout 20 s after dev exited");
    assert!(
        printed.contains(&format!("https://127.0.0.1:{base}")),
        "{printed}"
    );
    assert!(
        printed.contains(&format!(
            "ETCDCTL_CERT={}",
            std::path::absolute(pki.join("client.crt"))
                .unwrap()
                .display()
        )),
        "{printed}"
    );
    // No member outlived dev: nothing listens on any of their ports.
    for port in (0..4u16).flat_map(|i| [base + 10 * i, base + 10 * i + 1]) {
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        assert!(
            std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_err(),
            "something still listens on {addr} after dev exited"
        );
    }
}

// Proves `--wal-dir` puts the Raft log where it says (nothing under the data directory's
// own log), and that the member restarts from it with its writes.
#[tokio::test]
async fn wal_dir_holds_the_raft_log() {
    let wal = tempfile::tempdir().unwrap();
    let wal_dir = wal.path().join("wal");
    let flag = format!("--wal-dir={}", wal_dir.display());
    let mut cluster = Cluster::start(binary(), 1, &[flag.as_str()]).unwrap();
    cluster.wait_for_leader(ELECTION_DEADLINE).await.unwrap();
    let put = cluster.etcdctl(0, &["put", "k", "v"]).unwrap();
    assert!(put.status.success());
    let logs = std::fs::read_dir(&wal_dir)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.file_name().to_string_lossy().ends_with(".raftlog"))
        })
        .count();
    assert!(logs > 0, "no log files in {}", wal_dir.display());
    assert!(!cluster.data_dir(0).join("member").join("log").exists());
    cluster.kill(0);
    cluster.restart(0).unwrap();
    cluster.wait_for_leader(ELECTION_DEADLINE).await.unwrap();
    let got = cluster
        .etcdctl(0, &["get", "k", "--print-value-only"])
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&got.stdout).trim(), "v");
}
