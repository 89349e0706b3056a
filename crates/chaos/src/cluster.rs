//! Concord members as real processes, one per host of a [`Network`].

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::Context as _;

use crate::net::Network;

/// The client port every member listens on (each host has its own address).
pub const CLIENT_PORT: u16 = 2379;
const PEER_PORT: u16 = 2380;
/// Entries between log compactions (etcd's `--snapshot-count`, 100,000 by default): small, so
/// that a run compacts logs and members that were killed or cut off catch up through
/// snapshots, under faults.
const SNAPSHOT_COUNT: &str = "500";

/// The members of a run.
pub struct Members {
    binary: PathBuf,
    dir: PathBuf,
    namespaces: Vec<String>,
    /// Each member's peer URL (its host's address: the same for a member that replaced it).
    peer_urls: Vec<String>,
    args: Vec<Vec<String>>,
    children: Vec<Option<Child>>,
    /// Members stopped with SIGSTOP, so that they are continued before being killed.
    paused: Vec<bool>,
}

impl Members {
    /// Starts one member on every host of `network`, with data and logs under `dir`.
    ///
    /// # Errors
    /// If a process cannot be started.
    pub(crate) fn start(
        binary: &Path,
        network: &Network,
        dir: &Path,
        scheme: &str,
        extra_flags: &[String],
    ) -> anyhow::Result<Members> {
        let hosts = network.hosts();
        let initial: Vec<String> = hosts
            .iter()
            .enumerate()
            .map(|(i, h)| format!("m{i}={scheme}://{}:{PEER_PORT}", h.ip))
            .collect();
        let initial = initial.join(",");
        let token = format!("chaos-{}", std::process::id());
        let args = hosts
            .iter()
            .enumerate()
            .map(|(i, h)| {
                let client = format!("{scheme}://{}:{CLIENT_PORT}", h.ip);
                let peer = format!("{scheme}://{}:{PEER_PORT}", h.ip);
                let data = dir.join(format!("m{i}"));
                [
                    "serve",
                    "--name",
                    &format!("m{i}"),
                    "--data-dir",
                    &data.to_string_lossy(),
                    "--listen-client-urls",
                    &client,
                    "--advertise-client-urls",
                    &client,
                    "--listen-peer-urls",
                    &peer,
                    "--initial-advertise-peer-urls",
                    &peer,
                    "--initial-cluster",
                    &initial,
                    "--initial-cluster-state",
                    "new",
                    "--initial-cluster-token",
                    &token,
                    "--snapshot-count",
                    SNAPSHOT_COUNT,
                ]
                .iter()
                .map(ToString::to_string)
                .chain(extra_flags.iter().cloned())
                .collect()
            })
            .collect();
        let mut members = Members {
            binary: binary.to_path_buf(),
            dir: dir.to_path_buf(),
            namespaces: hosts.iter().map(|h| h.namespace.clone()).collect(),
            peer_urls: hosts
                .iter()
                .map(|h| format!("{scheme}://{}:{PEER_PORT}", h.ip))
                .collect(),
            args,
            children: (0..hosts.len()).map(|_| None).collect(),
            paused: vec![false; hosts.len()],
        };
        for i in 0..hosts.len() {
            members.spawn(i)?;
        }
        Ok(members)
    }

    /// How many members there are.
    #[must_use]
    pub fn len(&self) -> usize {
        self.children.len()
    }

    /// Whether there are none.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.children.is_empty()
    }

    fn spawn(&mut self, i: usize) -> anyhow::Result<()> {
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("m{i}.log")))?;
        // The member dies with the harness (`setpriv --pdeathsig`), even if it is killed.
        let child = Command::new("ip")
            .args(["netns", "exec", &self.namespaces[i]])
            .args(["setpriv", "--pdeathsig", "KILL", "--"])
            .arg(&self.binary)
            .args(&self.args[i])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("start member {i}"))?;
        self.children[i] = Some(child);
        self.paused[i] = false;
        Ok(())
    }

    fn signal(&self, i: usize, signal: nix::sys::signal::Signal) {
        if let Some(child) = &self.children[i] {
            let pid = nix::unistd::Pid::from_raw(child.id() as i32);
            let _ = nix::sys::signal::kill(pid, signal);
        }
    }

    /// Kills member `i` with SIGKILL and reaps it.
    pub fn kill(&mut self, i: usize) {
        self.signal(i, nix::sys::signal::Signal::SIGKILL);
        if let Some(mut child) = self.children[i].take() {
            let _ = child.wait();
        }
        self.paused[i] = false;
    }

    /// Starts member `i` again on its data (after [`Members::kill`]).
    ///
    /// # Errors
    /// If the process cannot be started.
    pub fn restart(&mut self, i: usize) -> anyhow::Result<()> {
        if self.children[i].is_none() {
            self.spawn(i)?;
        }
        Ok(())
    }

    /// Member `i`'s peer URL.
    #[must_use]
    pub fn peer_url(&self, i: usize) -> &str {
        &self.peer_urls[i]
    }

    /// Waits up to `timeout` for member `i` to exit on its own (as a removed member does),
    /// then kills it if it still runs; reaps it either way. Returns whether it exited on
    /// its own.
    pub async fn wait_exit(&mut self, i: usize, timeout: std::time::Duration) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        while let Some(child) = &mut self.children[i] {
            if matches!(child.try_wait(), Ok(Some(_))) {
                self.children[i] = None;
                return true;
            }
            if std::time::Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        self.kill(i);
        false
    }

    /// Starts a new member in place of member `i` (which must have stopped): on an empty
    /// data directory, with `--initial-cluster-state existing` and `initial_cluster` (the
    /// members as the cluster lists them, this one included), so it joins the cluster.
    /// Later restarts start it on its own data.
    ///
    /// # Errors
    /// If the old data cannot be removed or the process cannot be started.
    pub fn start_replacement(&mut self, i: usize, initial_cluster: &str) -> anyhow::Result<()> {
        anyhow::ensure!(self.children[i].is_none(), "m{i} still runs");
        let data = self.dir.join(format!("m{i}"));
        if data.exists() {
            std::fs::remove_dir_all(&data).with_context(|| format!("wipe m{i}'s data"))?;
        }
        let args = &mut self.args[i];
        for (flag, value) in [
            ("--initial-cluster-state", "existing"),
            ("--initial-cluster", initial_cluster),
        ] {
            let at = args
                .iter()
                .position(|a| a == flag)
                .expect("every member is started with the flag");
            args[at + 1] = value.to_string();
        }
        self.spawn(i)
    }

    /// Freezes member `i` (SIGSTOP): it holds its connections but answers nothing.
    pub fn pause(&mut self, i: usize) {
        self.signal(i, nix::sys::signal::Signal::SIGSTOP);
        self.paused[i] = true;
    }

    /// Lets a paused member run again (SIGCONT).
    pub fn resume(&mut self, i: usize) {
        self.signal(i, nix::sys::signal::Signal::SIGCONT);
        self.paused[i] = false;
    }

    /// Resumes every paused member and restarts every killed one.
    ///
    /// # Errors
    /// If a process cannot be started.
    pub fn heal(&mut self) -> anyhow::Result<()> {
        for i in 0..self.len() {
            if self.paused[i] {
                self.resume(i);
            }
            self.restart(i)?;
        }
        Ok(())
    }

    /// Members that exited on their own (not killed by the harness), with their status.
    pub fn crashed(&mut self) -> Vec<(usize, String)> {
        let mut crashed = Vec::new();
        for (i, child) in self.children.iter_mut().enumerate() {
            if let Some(child) = child {
                if let Ok(Some(status)) = child.try_wait() {
                    crashed.push((i, status.to_string()));
                }
            }
        }
        crashed
    }

    /// The end of member `i`'s log.
    #[must_use]
    pub fn log_tail(&self, i: usize, lines: usize) -> String {
        let text = std::fs::read_to_string(self.dir.join(format!("m{i}.log"))).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for Members {
    fn drop(&mut self) {
        for i in 0..self.len() {
            if self.paused[i] {
                self.resume(i);
            }
            self.kill(i);
        }
    }
}
