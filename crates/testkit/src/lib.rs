//! Fixtures for tests against real `concord` processes.
//!
//! [`Cluster`] starts members of a cluster as child processes on 127.0.0.1 with free ports,
//! each with its own data directory that survives restarts, and its output captured in a log
//! file. Members can be killed (SIGKILL), stopped (SIGTERM) and restarted with the same flags.
//! Dropping the cluster kills every member it started, also when a test panics.

use std::fs::File;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use proto::etcdserverpb::kv_client::KvClient;
use proto::etcdserverpb::maintenance_client::MaintenanceClient;
use proto::etcdserverpb::{StatusRequest, StatusResponse};
use tonic::transport::Channel;

/// A port that was free a moment ago.
///
/// # Panics
/// If no port can be bound on 127.0.0.1.
#[must_use]
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind an ephemeral port")
        .local_addr()
        .expect("local address")
        .port()
}

struct Member {
    name: String,
    client_port: u16,
    peer_port: u16,
    child: Option<Child>,
    log: PathBuf,
}

/// A cluster of `concord serve` processes.
pub struct Cluster {
    binary: PathBuf,
    dir: tempfile::TempDir,
    members: Vec<Member>,
    token: String,
    extra_args: Vec<String>,
}

impl Cluster {
    /// Starts `size` members of a new cluster with `extra_args` added to every member's
    /// command line.
    ///
    /// # Errors
    /// A member cannot be spawned.
    pub fn start(binary: &Path, size: usize, extra_args: &[&str]) -> anyhow::Result<Cluster> {
        let dir = tempfile::Builder::new()
            .prefix("concord-cluster-")
            .tempdir()?;
        let members = (0..size)
            .map(|i| Member {
                name: format!("m{i}"),
                client_port: free_port(),
                peer_port: free_port(),
                child: None,
                log: dir.path().join(format!("m{i}.log")),
            })
            .collect();
        let mut cluster = Cluster {
            binary: binary.to_path_buf(),
            dir,
            members,
            token: "testkit".to_string(),
            extra_args: extra_args.iter().map(|s| (*s).to_string()).collect(),
        };
        for i in 0..size {
            cluster.spawn(i)?;
        }
        Ok(cluster)
    }

    /// Number of members.
    #[must_use]
    pub fn size(&self) -> usize {
        self.members.len()
    }

    /// The command line flags of member `i`.
    #[must_use]
    pub fn args(&self, i: usize) -> Vec<String> {
        let member = &self.members[i];
        let initial_cluster: Vec<String> = self
            .members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer_port))
            .collect();
        let client = format!("http://127.0.0.1:{}", member.client_port);
        let peer = format!("http://127.0.0.1:{}", member.peer_port);
        let mut args: Vec<String> = vec![
            "serve".into(),
            "--name".into(),
            member.name.clone(),
            "--data-dir".into(),
            self.data_dir(i).display().to_string(),
            "--listen-client-urls".into(),
            client.clone(),
            "--advertise-client-urls".into(),
            client,
            "--listen-peer-urls".into(),
            peer.clone(),
            "--initial-advertise-peer-urls".into(),
            peer,
            "--initial-cluster".into(),
            initial_cluster.join(","),
            "--initial-cluster-token".into(),
            self.token.clone(),
        ];
        args.extend(self.extra_args.iter().cloned());
        args
    }

    /// The data directory of member `i`.
    #[must_use]
    pub fn data_dir(&self, i: usize) -> PathBuf {
        self.dir.path().join(&self.members[i].name)
    }

    fn spawn(&mut self, i: usize) -> anyhow::Result<()> {
        let args = self.args(i);
        let member = &mut self.members[i];
        let log = File::options()
            .create(true)
            .append(true)
            .open(&member.log)?;
        let child = Command::new(&self.binary)
            .args(&args)
            .env("RUST_LOG", "info,slog=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("spawn {}", self.binary.display()))?;
        member.child = Some(child);
        Ok(())
    }

    /// The client URL of member `i`.
    #[must_use]
    pub fn client_url(&self, i: usize) -> String {
        format!("http://127.0.0.1:{}", self.members[i].client_port)
    }

    /// Every client URL, comma separated (etcdctl's `--endpoints`).
    #[must_use]
    pub fn endpoints(&self) -> String {
        (0..self.size())
            .map(|i| self.client_url(i))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The process id of member `i`, if running.
    #[must_use]
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.members[i].child.as_ref().map(Child::id)
    }

    /// Kills member `i` with SIGKILL and reaps it.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.members[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops member `i` with SIGTERM and waits for it to exit (SIGKILL after 10 s).
    pub fn stop(&mut self, i: usize) {
        if let Some(mut child) = self.members[i].child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts member `i` again with the same flags and data.
    ///
    /// # Errors
    /// The process cannot be spawned.
    pub fn restart(&mut self, i: usize) -> anyhow::Result<()> {
        self.kill(i);
        self.spawn(i)
    }

    /// Waits until member `i`'s process exits, for at most `timeout`; its exit status.
    ///
    /// # Errors
    /// Still running at the deadline.
    pub fn wait_exit(
        &mut self,
        i: usize,
        timeout: Duration,
    ) -> anyhow::Result<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        let child = self.members[i]
            .child
            .as_mut()
            .context("member not running")?;
        loop {
            if let Some(status) = child.try_wait()? {
                self.members[i].child = None;
                return Ok(status);
            }
            if Instant::now() >= deadline {
                bail!("member {i} still running after {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The output member `i` has written so far.
    #[must_use]
    pub fn log(&self, i: usize) -> String {
        std::fs::read_to_string(&self.members[i].log).unwrap_or_default()
    }

    /// A gRPC channel to member `i` (connects lazily).
    ///
    /// # Panics
    /// Never for the URLs this cluster makes.
    #[must_use]
    pub fn channel(&self, i: usize) -> Channel {
        tonic::transport::Endpoint::from_shared(self.client_url(i))
            .expect("valid URL")
            .connect_timeout(Duration::from_secs(1))
            .timeout(Duration::from_secs(10))
            .connect_lazy()
    }

    /// A KV client for member `i`.
    #[must_use]
    pub fn kv(&self, i: usize) -> KvClient<Channel> {
        KvClient::new(self.channel(i))
    }

    /// `Maintenance.Status` of member `i`.
    ///
    /// # Errors
    /// The member does not answer.
    pub async fn status(&self, i: usize) -> anyhow::Result<StatusResponse> {
        let mut client = MaintenanceClient::new(self.channel(i));
        Ok(client.status(StatusRequest {}).await?.into_inner())
    }

    /// Waits until every running member agrees on one leader; returns its member index.
    ///
    /// # Errors
    /// No agreement within `timeout`.
    pub async fn wait_for_leader(&self, timeout: Duration) -> anyhow::Result<usize> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(leader) = self.agreed_leader().await {
                return Ok(leader);
            }
            if Instant::now() >= deadline {
                bail!(
                    "no agreed leader within {timeout:?}; logs in {}",
                    self.dir.path().display()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn agreed_leader(&self) -> Option<usize> {
        let mut leader = None;
        let mut ids = Vec::new();
        for i in 0..self.size() {
            if self.members[i].child.is_none() {
                ids.push(None);
                continue;
            }
            let status = self.status(i).await.ok()?;
            let header = status.header?;
            ids.push(Some(header.member_id));
            if status.leader == 0 || leader.is_some_and(|l| l != status.leader) {
                return None;
            }
            leader = Some(status.leader);
        }
        let leader = leader?;
        ids.iter().position(|id| *id == Some(leader))
    }

    /// Runs `etcdctl` (API v3) against member `i` with `args`, with a 20 s timeout.
    ///
    /// # Errors
    /// etcdctl cannot be run.
    pub fn etcdctl(&self, i: usize, args: &[&str]) -> anyhow::Result<Output> {
        Command::new("timeout")
            .arg("20")
            .arg("etcdctl")
            .arg(format!("--endpoints={}", self.client_url(i)))
            .args(args)
            .env("ETCDCTL_API", "3")
            .output()
            .context("run etcdctl (is the etcd-client package installed?)")
    }

    /// Where the cluster keeps data and logs.
    #[must_use]
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Keeps the cluster's directory after the test (for debugging a failure).
    pub fn keep_dir(self) -> PathBuf {
        let mut this = self;
        for i in 0..this.size() {
            this.kill(i);
        }
        let dir = std::mem::replace(&mut this.dir, tempfile::tempdir().expect("tempdir"));
        dir.keep()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }
}
