//! A real multi-member etcd, the reference for tests of behaviour across failures.
//!
//! [`EtcdCluster::start`] runs Debian's `etcd` (package `etcd-server`) as a cluster of
//! members `e0`, `e1`, ... on 127.0.0.1 with free ports, each with its own data directory in
//! one temporary directory, on etcd's default timers (the same as Concord's). Members can be
//! killed with SIGKILL and restarted on their data directory, as [`crate::Cluster`] does for
//! Concord. Dropping the cluster kills every member; on a panic it prints the end of every
//! member's log and keeps the directory (`TESTKIT_KEEP=1` keeps it always).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use tonic::transport::Channel;

use crate::{agreed_leader, launch, without_env_prefix, Launch, Member, Members, START_TIMEOUT};

/// What etcd prints when it cannot bind one of its ports.
const ETCD_BIND_FAILURE: &str = "address already in use";

/// Heartbeat interval in milliseconds: etcd's default, and Concord's.
const HEARTBEAT_MS: &str = "100";

/// Election timeout in milliseconds: etcd's default, and Concord's.
const ELECTION_TIMEOUT_MS: &str = "1000";

/// An etcd cluster owned by one test. Methods that take a member index panic if it is out
/// of range.
pub struct EtcdCluster {
    /// `None` only while being dropped.
    dir: Option<tempfile::TempDir>,
    members: Vec<Member>,
    token: String,
}

impl EtcdCluster {
    /// Starts `size` members of a new etcd cluster and waits until every one listens on its
    /// client port and all of them name the same leader.
    ///
    /// A member that cannot bind a port (taken after [`free_ports`] released it) makes the
    /// whole cluster start again on new ports, a few times.
    ///
    /// # Errors
    /// The `etcd` binary is missing (install Debian's `etcd-server`), a member exits or does
    /// not listen within [`START_TIMEOUT`], or no leader is agreed on within it.
    ///
    /// # Panics
    /// If `size` is 0.
    pub async fn start(size: usize) -> anyhow::Result<EtcdCluster> {
        assert!(size > 0, "a cluster has at least one member");
        let dir = tempfile::Builder::new()
            .prefix("etcd-cluster-")
            .tempdir()
            .context("create the etcd cluster's directory")?;
        let mut cluster = EtcdCluster {
            dir: Some(dir),
            members: Vec::new(),
            token: format!("testkit-etcd-{}", std::process::id()),
        };
        launch(&mut cluster, size, "e")?;
        cluster.wait_for_leader(START_TIMEOUT).await?;
        Ok(cluster)
    }

    /// The directory holding every member's data directory and log.
    #[must_use]
    pub fn dir(&self) -> &Path {
        self.dir.as_ref().expect("not dropped").path()
    }

    /// The data directory of member `i`; it survives the member's restarts.
    #[must_use]
    pub fn data_dir(&self, i: usize) -> PathBuf {
        self.dir().join(&self.members[i].name)
    }

    /// Everything member `i` has logged so far, over all its starts.
    #[must_use]
    pub fn log(&self, i: usize) -> String {
        self.members[i].log()
    }

    /// The process id of member `i`, if it was started and has not been reaped.
    #[must_use]
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.members[i].child.as_ref().map(std::process::Child::id)
    }

    /// A gRPC channel to member `i` (see [`crate::channel`]).
    #[must_use]
    pub fn channel(&self, i: usize) -> Channel {
        crate::channel(&self.members[i].client_url())
    }

    /// Kills every member with SIGKILL.
    pub fn kill_all(&mut self) {
        for member in &mut self.members {
            member.kill();
        }
    }

    /// Waits until member `i` accepts TCP connections on its client port.
    ///
    /// # Errors
    /// The member exits or is not listening within `timeout`; the error carries its log.
    pub fn wait_listening(&mut self, i: usize, timeout: Duration) -> anyhow::Result<()> {
        self.members[i].wait_listening(&format!("etcd member {i}"), timeout)
    }

    /// The command line of member `i`. The `--initial-*` flags matter only on the first
    /// start: a restarted member finds its membership in its data directory.
    fn args(&self, i: usize) -> Vec<String> {
        let initial_cluster: Vec<String> = self
            .members
            .iter()
            .map(|m| format!("{}={}", m.name, m.peer_url()))
            .collect();
        let member = &self.members[i];
        let (client, peer) = (member.client_url(), member.peer_url());
        [
            "--name",
            &member.name,
            "--data-dir",
            &self.data_dir(i).display().to_string(),
            "--listen-client-urls",
            &client,
            "--advertise-client-urls",
            &client,
            "--listen-peer-urls",
            &peer,
            "--initial-advertise-peer-urls",
            &peer,
            "--initial-cluster",
            &initial_cluster.join(","),
            "--initial-cluster-state",
            "new",
            "--initial-cluster-token",
            &self.token,
            "--heartbeat-interval",
            HEARTBEAT_MS,
            "--election-timeout",
            ELECTION_TIMEOUT_MS,
            // Timestamped lines on stderr, which goes to the member's log.
            "--logger",
            "zap",
            "--log-outputs",
            "stderr",
        ]
        .iter()
        .map(|s| (*s).to_string())
        .collect()
    }

    fn spawn(&mut self, i: usize) -> anyhow::Result<()> {
        let args = self.args(i);
        self.members[i]
            .spawn(Path::new("etcd"), &args, |command| {
                // etcd reads ETCD_* variables as flags: the test's environment must not
                // change it.
                without_env_prefix(command, "ETCD");
            })
            .context("spawn etcd (is Debian's etcd-server package installed?)")
    }

    fn wait_all_listening(&mut self) -> anyhow::Result<()> {
        let deadline = std::time::Instant::now() + START_TIMEOUT;
        for i in 0..self.members.len() {
            self.wait_listening(
                i,
                deadline.saturating_duration_since(std::time::Instant::now()),
            )?;
        }
        Ok(())
    }

    fn bind_failed(&self) -> bool {
        self.members
            .iter()
            .any(|m| m.current_log().contains(ETCD_BIND_FAILURE))
    }
}

impl Launch for EtcdCluster {
    fn dir(&self) -> &Path {
        EtcdCluster::dir(self)
    }

    fn set_members(&mut self, members: Vec<Member>) {
        self.members = members;
    }

    fn data_dir(&self, i: usize) -> PathBuf {
        EtcdCluster::data_dir(self, i)
    }

    fn spawn(&mut self, i: usize) -> anyhow::Result<()> {
        EtcdCluster::spawn(self, i)
    }

    fn wait_all_listening(&mut self) -> anyhow::Result<()> {
        EtcdCluster::wait_all_listening(self)
    }

    fn bind_failed(&self) -> bool {
        EtcdCluster::bind_failed(self)
    }

    fn kill_all(&mut self) {
        EtcdCluster::kill_all(self);
    }
}

impl Members for EtcdCluster {
    fn system(&self) -> &'static str {
        "etcd"
    }

    fn size(&self) -> usize {
        self.members.len()
    }

    fn client_url(&self, i: usize) -> String {
        self.members[i].client_url()
    }

    fn is_running(&mut self, i: usize) -> bool {
        self.members[i].is_running()
    }

    fn kill(&mut self, i: usize) {
        self.members[i].kill();
    }

    /// Starts member `i` again on its data directory, killing it first if it runs. Does not
    /// wait for it to serve.
    fn restart(&mut self, i: usize) -> anyhow::Result<()> {
        self.members[i].kill();
        self.spawn(i)
    }

    async fn leader(&mut self) -> anyhow::Result<usize> {
        let running: Vec<usize> = (0..self.members.len())
            .filter(|&i| self.members[i].is_running())
            .collect();
        let running: Vec<(usize, Channel)> =
            running.into_iter().map(|i| (i, self.channel(i))).collect();
        agreed_leader(&running).await
    }

    fn report(&self) -> String {
        let mut report = format!("etcd cluster directory: {}\n", self.dir().display());
        for (i, member) in self.members.iter().enumerate() {
            let _ = writeln!(
                report,
                "--- etcd member {i} ({}, client {}, {}); {}",
                member.name,
                member.client_url(),
                match self.pid(i) {
                    Some(pid) => format!("pid {pid}"),
                    None => "not running".to_string(),
                },
                member.describe_log()
            );
        }
        report
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        self.kill_all();
        let Some(dir) = self.dir.take() else { return };
        if std::thread::panicking() {
            // Put the dir back for `report`, then keep it on disk.
            self.dir = Some(dir);
            eprintln!("testkit: the test failed; {}", self.report());
            let dir = self.dir.take().expect("just set");
            eprintln!("testkit: kept {}", dir.keep().display());
        } else if std::env::var_os("TESTKIT_KEEP").is_some() {
            eprintln!("testkit: kept {}", dir.keep().display());
        }
    }
}
