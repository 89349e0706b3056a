//! Bad flags and bad data directories: each refuses to start with one clear line.

use std::process::Command;
use std::time::Duration;

use crate::binary;
use testkit::{free_port, Cluster};

fn serve(args: &[&str]) -> std::process::Output {
    Command::new("timeout")
        .arg("20")
        .arg(binary())
        .arg("serve")
        .args(args)
        .output()
        .expect("run concord")
}

fn first_stderr_line(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stderr)
        .lines()
        .next()
        .unwrap_or_default()
        .to_string()
}

// Proves each malformed --initial-cluster is refused with one line naming the problem.
#[test]
fn invalid_initial_cluster_is_refused() {
    let dir = tempfile_dir();
    let data = dir.join("d");
    let data = data.to_str().unwrap();
    for (cluster, expected) in [
        ("nonsense", "is not name=url"),
        ("default=ftp://127.0.0.1:2380", "scheme must be http"),
        ("default=http://127.0.0.1", "must have a port"),
        ("other=http://localhost:2380", "no member named \"default\""),
    ] {
        let output = serve(&["--data-dir", data, "--initial-cluster", cluster]);
        assert_eq!(output.status.code(), Some(1), "{cluster}");
        let line = first_stderr_line(&output);
        assert!(line.starts_with("concord: error: "), "{line}");
        assert!(line.contains(expected), "{cluster}: {line}");
        assert_eq!(String::from_utf8_lossy(&output.stderr).lines().count(), 1);
    }
}

// Proves an unknown flag is refused before anything starts, naming the flag.
#[test]
fn unknown_flag_is_refused() {
    let output = serve(&["--no-such-flag"]);
    assert_eq!(output.status.code(), Some(2));
    let line = first_stderr_line(&output);
    assert!(line.contains("--no-such-flag"), "{line}");
}

// Proves `--initial-cluster-state existing` on an empty data dir is refused with one line.
#[test]
fn existing_state_with_empty_data_dir_is_refused() {
    let dir = tempfile_dir();
    let port = free_port();
    let peer = format!("http://127.0.0.1:{port}");
    let output = serve(&[
        "--data-dir",
        dir.join("empty").to_str().unwrap(),
        "--initial-cluster-state",
        "existing",
        "--listen-client-urls",
        &format!("http://127.0.0.1:{}", free_port()),
        "--listen-peer-urls",
        &peer,
        "--initial-advertise-peer-urls",
        &peer,
        "--initial-cluster",
        &format!("default={peer}"),
    ]);
    assert_eq!(output.status.code(), Some(1));
    let line = first_stderr_line(&output);
    assert!(
        line.contains("existing") && line.contains("empty"),
        "{line}"
    );
}

// Proves a data dir created by one cluster is refused by a member of another cluster (here:
// the same flags with another cluster token), with one line saying whose it is.
#[test]
fn data_dir_of_another_cluster_is_refused() {
    let mut cluster = Cluster::start(binary(), 1, &[]).unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime
        .block_on(cluster.wait_for_leader(Duration::from_secs(20)))
        .unwrap();
    cluster.stop(0);
    let mut args = cluster.args(0);
    let token = args
        .iter()
        .position(|a| a == "--initial-cluster-token")
        .unwrap();
    args[token + 1] = "another-cluster".into();
    let output = Command::new("timeout")
        .arg("20")
        .arg(binary())
        .args(&args)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let line = first_stderr_line(&output);
    assert!(line.contains("belongs to cluster"), "{line}");
}

fn tempfile_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "concord-cli-{}-{}",
        std::process::id(),
        free_port()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

// Proves `concord dev` starts a working 3-member cluster in one command, prints how to reach
// it, and stops every member cleanly on Ctrl-C (SIGINT).
#[test]
fn dev_starts_a_cluster_and_stops_on_ctrl_c() {
    let dir = tempfile_dir();
    // Member i listens on base + 10*i (clients) and base + 10*i + 1 (peers).
    let base = 30_000 + (std::process::id() % 2_000) as u16 * 10;
    let mut dev = Command::new(binary())
        .args(["dev", "--base-port", &base.to_string(), "--data-dir"])
        .arg(dir.join("dev"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let endpoint = |i: u16| format!("--endpoints=http://127.0.0.1:{}", base + 10 * i);
    let etcdctl = |i: u16, args: &[&str]| {
        Command::new("timeout")
            .args(["10", "etcdctl", &endpoint(i)])
            .args(args)
            .env("ETCDCTL_API", "3")
            .output()
            .unwrap()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !etcdctl(0, &["put", "dev-key", "dev-value"])
        .status
        .success()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "dev cluster never served"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let got = etcdctl(2, &["get", "dev-key"]);
    assert_eq!(String::from_utf8_lossy(&got.stdout), "dev-key\ndev-value\n");

    let _ = Command::new("kill")
        .args(["-INT", &dev.id().to_string()])
        .status();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = dev.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = dev.kill();
            panic!("concord dev did not stop on SIGINT");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status}");
    let mut printed = String::new();
    std::io::Read::read_to_string(&mut dev.stdout.take().unwrap(), &mut printed).unwrap();
    assert!(
        printed.contains(&format!("http://127.0.0.1:{base}")),
        "{printed}"
    );
    assert!(printed.contains("etcdctl"), "{printed}");
    assert!(
        !etcdctl(1, &["get", "dev-key"]).status.success(),
        "a member outlived dev"
    );
}
