//! Fixtures for tests against real `concord` processes, and real etcd ones to compare with.
//!
//! [`Cluster::start`] launches the members of a new cluster as child processes of the test,
//! on 127.0.0.1 with free ports, each with its own data directory that survives restarts. A
//! member's stdout and stderr go to `<name>.log` in the cluster's directory; every start of
//! the member appends to the same file after a `==== testkit:` marker line.
//!
//! Members can be killed ([`Cluster::kill`], SIGKILL), stopped ([`Cluster::stop`], SIGTERM)
//! and restarted with the same flags and data ([`Cluster::restart`]). A member can be added
//! to the running cluster: [`Cluster::new_member`] gives it ports (to pass to `etcdctl member
//! add`), and [`Cluster::start_joining`] starts it with `--initial-cluster-state existing`. Dropping the cluster
//! kills every member it started, also when the test panics; on a panic it also prints the
//! tail of every member's log and keeps the cluster's directory, naming its path, so a
//! failure can be read after the fact. Set `TESTKIT_KEEP=1` to keep the directory always,
//! and `TESTKIT_RUST_LOG` to pass a `RUST_LOG` filter to the members.
//!
//! [`EtcdCluster`] does the same for Debian's `etcd`, and [`Etcd`] runs a single etcd member.
//! Both cluster fixtures implement [`Members`], so that one trial can run against either.
//!
//! Every wait in this crate has a deadline: nothing here can hang a test forever.
//!
//! ```no_run
//! # async fn example() -> anyhow::Result<()> {
//! use std::time::Duration;
//! let mut cluster = testkit::Cluster::start("target/debug/concord", 3, &[])?;
//! let leader = cluster.wait_for_leader(Duration::from_secs(20)).await?;
//! cluster.kill(leader);
//! let output = cluster.etcdctl((leader + 1) % 3, &["put", "k", "v"])?;
//! assert!(output.status.success());
//! # Ok(())
//! # }
//! ```

use std::ffi::OsStr;
use std::fmt::Write as _;
use std::fs::File;
use std::future::Future;
use std::io::Write as _;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use proto::etcdserverpb::cluster_client::ClusterClient;
use proto::etcdserverpb::kv_client::KvClient;
use proto::etcdserverpb::maintenance_client::MaintenanceClient;
use proto::etcdserverpb::{HashKvRequest, HashKvResponse, StatusRequest, StatusResponse};
use tonic::transport::{Channel, Endpoint};

mod etcd;
mod etcd_cluster;
mod members;
mod pki;
pub use etcd::Etcd;
pub use etcd_cluster::EtcdCluster;
pub use members::Members;
pub use pki::{CertFiles, TestPki};

/// How long one `Maintenance.Status` or `HashKV` call made by the fixture may take.
pub const RPC_TIMEOUT: Duration = Duration::from_secs(3);

/// How long [`Cluster::start`] waits for every member to listen on its client port.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);

/// How long [`Cluster::etcdctl`] lets one etcdctl invocation run before killing it.
pub const ETCDCTL_TIMEOUT: Duration = Duration::from_secs(30);

/// How long [`Cluster::stop`] waits after SIGTERM before it sends SIGKILL.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(15);

/// Largest gRPC response the fixture's clients accept (a full read of a big key space).
pub const MAX_RESPONSE_BYTES: usize = 256 * 1024 * 1024;

/// How many times [`Cluster::start`] picks new ports after a member could not bind its own.
const START_ATTEMPTS: usize = 5;

/// The text a member prints when it cannot bind an address (see `server::run`).
const BIND_FAILURE: &str = "cannot listen";

/// Lines of each process's log printed when a test panics.
const LOG_TAIL_LINES: usize = 40;

/// Runs `etcdctl` (API v3) against `endpoints` (comma-separated) with `args`, feeding it
/// `stdin` if given (as `etcdctl txn` reads its requests), killed after [`ETCDCTL_TIMEOUT`]
/// (then the exit code is 124 or 137).
///
/// # Errors
/// etcdctl cannot be run.
pub fn etcdctl(endpoints: &str, args: &[&str], stdin: Option<&str>) -> anyhow::Result<Output> {
    let mut child = Command::new("timeout")
        .arg("--kill-after=5")
        .arg(ETCDCTL_TIMEOUT.as_secs().to_string())
        .arg("etcdctl")
        .arg(format!("--endpoints={endpoints}"))
        .args(args)
        .env("ETCDCTL_API", "3")
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("run etcdctl (is the etcd-client package installed?)")?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        use std::io::Write as _;
        pipe.write_all(text.as_bytes())
            .context("write etcdctl's input")?;
    }
    child.wait_with_output().context("wait for etcdctl")
}

/// Starts `etcdctl` (API v3) against `endpoints` (comma-separated) with `args`, its stdout
/// and stderr piped, and leaves it running: for commands that run until stopped, such as
/// `lease keep-alive`. It dies with the thread that started it (see [`pdeathsig_wrapper`]);
/// the caller kills it.
///
/// # Errors
/// etcdctl cannot be run.
pub fn spawn_etcdctl(endpoints: &str, args: &[&str]) -> anyhow::Result<Child> {
    wrapped("etcdctl")
        .arg(format!("--endpoints={endpoints}"))
        .args(args)
        .env("ETCDCTL_API", "3")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("run etcdctl (is the etcd-client package installed?)")
}

/// `n` distinct ports that were free a moment ago.
///
/// All `n` are bound at once (so they differ from each other), then released. Another process
/// may take one before it is used; [`Cluster::start`] retries with new ports when that
/// happens.
///
/// # Panics
/// If no port can be bound on 127.0.0.1.
#[must_use]
pub fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port on 127.0.0.1"))
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().expect("local address").port())
        .collect()
}

/// A port that was free a moment ago (see [`free_ports`]).
///
/// # Panics
/// If no port can be bound on 127.0.0.1.
#[must_use]
pub fn free_port() -> u16 {
    free_ports(1)[0]
}

/// Sends `signal` (a name such as `TERM` or `INT`) to process `pid`, with the shell's `kill`
/// builtin (no `kill` binary needed, no unsafe code).
///
/// # Errors
/// The shell cannot be run or the process does not exist.
pub fn send_signal(pid: u32, signal: &str) -> anyhow::Result<()> {
    let status = Command::new("sh")
        .args(["-c", "kill -s \"$0\" \"$1\"", signal, &pid.to_string()])
        .stderr(Stdio::null())
        .status()
        .context("run sh")?;
    anyhow::ensure!(status.success(), "kill -s {signal} {pid}: {status}");
    Ok(())
}

/// Polls `check` every 50 ms until it returns `Ok`, for at most `timeout`.
///
/// # Errors
/// The deadline passed; the error names `what` and carries the last failure of `check`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        let last = match tokio::time::timeout(remaining, check()).await {
            Ok(Ok(value)) => return Ok(value),
            Ok(Err(e)) => e,
            Err(_) => anyhow!("the last attempt was still running at the deadline"),
        };
        if Instant::now() >= deadline {
            return Err(last.context(format!("{what}: not within {timeout:?}")));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One process of a cluster (Concord's or etcd's): its ports, its process while it runs, and
/// the log every start of it appends to.
struct Member {
    name: String,
    /// Whether its URLs are https.
    tls: bool,
    client_port: u16,
    peer_port: u16,
    child: Option<Child>,
    log: PathBuf,
    starts: usize,
}

/// A cluster of member processes as [`launch`] starts it.
trait Launch {
    /// The directory of the members' data directories and logs.
    fn dir(&self) -> &Path;
    /// Whether members serve clients and peers over TLS.
    fn tls(&self) -> bool {
        false
    }
    fn set_members(&mut self, members: Vec<Member>);
    fn data_dir(&self, i: usize) -> PathBuf;
    fn spawn(&mut self, i: usize) -> anyhow::Result<()>;
    /// Waits until every member listens, within [`START_TIMEOUT`].
    fn wait_all_listening(&mut self) -> anyhow::Result<()>;
    /// Whether a member failed because its port was taken.
    fn bind_failed(&self) -> bool;
    fn kill_all(&mut self);
}

/// Starts `size` new members named `{prefix}{i}` on free ports and waits until each
/// listens. A member that cannot bind a port (taken after [`free_ports`] released it)
/// makes the whole cluster start again on new ports, a few times.
fn launch(cluster: &mut impl Launch, size: usize, prefix: &str) -> anyhow::Result<()> {
    for attempt in 1..=START_ATTEMPTS {
        cluster.kill_all();
        let ports = free_ports(2 * size);
        let members = (0..size)
            .map(|i| Member {
                name: format!("{prefix}{i}"),
                tls: cluster.tls(),
                client_port: ports[2 * i],
                peer_port: ports[2 * i + 1],
                child: None,
                log: cluster.dir().join(format!("{prefix}{i}.log")),
                starts: 0,
            })
            .collect();
        cluster.set_members(members);
        for i in 0..size {
            // A previous attempt's data was made for other ports: start afresh.
            let data = cluster.data_dir(i);
            if data.exists() {
                std::fs::remove_dir_all(&data)
                    .with_context(|| format!("remove {}", data.display()))?;
            }
            cluster.spawn(i)?;
        }
        match cluster.wait_all_listening() {
            Ok(()) => return Ok(()),
            Err(e) if attempt < START_ATTEMPTS && cluster.bind_failed() => {
                eprintln!("testkit: port collision, starting again on new ports ({e:#})");
            }
            Err(e) => return Err(e),
        }
    }
    unreachable!("the last attempt returns")
}

impl Launch for Cluster {
    fn dir(&self) -> &Path {
        Cluster::dir(self)
    }

    fn tls(&self) -> bool {
        self.pki.is_some()
    }

    fn set_members(&mut self, members: Vec<Member>) {
        self.members = members;
    }

    fn data_dir(&self, i: usize) -> PathBuf {
        Cluster::data_dir(self, i)
    }

    fn spawn(&mut self, i: usize) -> anyhow::Result<()> {
        Cluster::spawn(self, i)
    }

    fn wait_all_listening(&mut self) -> anyhow::Result<()> {
        Cluster::wait_all_listening(self, START_TIMEOUT)
    }

    fn bind_failed(&self) -> bool {
        Cluster::bind_failed(self)
    }

    fn kill_all(&mut self) {
        Cluster::kill_all(self);
    }
}

impl Member {
    fn scheme(&self) -> &'static str {
        if self.tls {
            "https"
        } else {
            "http"
        }
    }

    fn client_url(&self) -> String {
        format!("{}://127.0.0.1:{}", self.scheme(), self.client_port)
    }

    fn peer_url(&self) -> String {
        format!("{}://127.0.0.1:{}", self.scheme(), self.peer_port)
    }

    fn is_running(&mut self) -> bool {
        match self.child.as_mut().map(Child::try_wait) {
            Some(Ok(None)) => true,
            Some(Ok(Some(_)) | Err(_)) | None => false,
        }
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn current_log(&self) -> String {
        let log = self.log();
        match log.rfind("==== testkit: start") {
            Some(at) => log[at..].to_string(),
            None => log,
        }
    }

    fn describe_log(&self) -> String {
        format!(
            "its log ({}) ends with:\n{}",
            self.log.display(),
            tail(&self.current_log())
        )
    }

    /// Starts `program` with `args`, appending its output to the member's log after a marker
    /// line; `configure` adjusts the command's environment.
    fn spawn(
        &mut self,
        program: &Path,
        args: &[String],
        configure: impl FnOnce(&mut Command),
    ) -> anyhow::Result<()> {
        self.starts += 1;
        let mut log = File::options()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("open {}", self.log.display()))?;
        writeln!(
            log,
            "==== testkit: start #{} of {}: {} {}",
            self.starts,
            self.name,
            program.display(),
            args.join(" ")
        )?;
        let mut command = wrapped(program);
        command.args(args).stdin(Stdio::null());
        configure(&mut command);
        let child = command
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("spawn {}", program.display()))?;
        self.child = Some(child);
        Ok(())
    }

    /// Waits until the member accepts TCP connections on its client port; `who` names it in
    /// the error.
    fn wait_listening(&mut self, who: &str, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        let addr = SocketAddr::from(([127, 0, 0, 1], self.client_port));
        loop {
            if !self.is_running() {
                bail!(
                    "{who} exited before listening on {addr}; {}",
                    self.describe_log()
                );
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "{who} not listening on {addr} after {timeout:?}; {}",
                    self.describe_log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A cluster of `concord serve` processes on 127.0.0.1, owned by one test.
///
/// Member `i` is named `m{i}`. Methods that take a member index panic if it is out of range.
pub struct Cluster {
    binary: PathBuf,
    /// `None` only while being dropped.
    dir: Option<tempfile::TempDir>,
    members: Vec<Member>,
    token: String,
    extra_args: Vec<String>,
    /// Members `0..bootstrap` started the cluster; the others joined it.
    bootstrap: usize,
    /// The command lines of members that joined, by index.
    joined_args: std::collections::HashMap<usize, Vec<String>>,
    /// With TLS: the CA that issued the members' and the client's certificates.
    pki: Option<TestPki>,
    /// With TLS: how clients connect.
    client_tls: Option<std::sync::Arc<tls::ClientTls>>,
}

impl Cluster {
    /// Starts `size` members of a new cluster, `extra_args` added to every member's command
    /// line (for example `["--snapshot-count", "1000"]`), and waits until every member
    /// listens on its client port.
    ///
    /// A member that cannot bind a port (another process took it after [`free_ports`]
    /// released it) makes the whole cluster start again on new ports, up to 5 times.
    ///
    /// # Errors
    /// A member cannot be spawned, exits, or does not listen within [`START_TIMEOUT`]; the
    /// error carries its log.
    ///
    /// # Panics
    /// If `size` is 0.
    pub fn start(
        binary: impl AsRef<Path>,
        size: usize,
        extra_args: &[&str],
    ) -> anyhow::Result<Cluster> {
        Self::start_with(binary, size, extra_args, false)
    }

    /// As [`Cluster::start`], with TLS everywhere: a private CA in `<dir>/pki` issues each
    /// member's certificate; members serve clients and peers on https URLs and require a
    /// certificate from that CA on both ports. [`Cluster::etcdctl`], [`Cluster::channel`]
    /// and the other clients here connect with the CA's client certificate (`root`).
    ///
    /// # Errors
    /// As [`Cluster::start`], or the certificates cannot be made.
    pub fn start_tls(
        binary: impl AsRef<Path>,
        size: usize,
        extra_args: &[&str],
    ) -> anyhow::Result<Cluster> {
        Self::start_with(binary, size, extra_args, true)
    }

    fn start_with(
        binary: impl AsRef<Path>,
        size: usize,
        extra_args: &[&str],
        tls: bool,
    ) -> anyhow::Result<Cluster> {
        assert!(size > 0, "a cluster has at least one member");
        let dir = tempfile::Builder::new()
            .prefix("concord-cluster-")
            .tempdir()
            .context("create the cluster directory")?;
        let mut cluster = Cluster {
            binary: binary.as_ref().to_path_buf(),
            dir: Some(dir),
            members: Vec::new(),
            token: format!("testkit-{}", std::process::id()),
            extra_args: extra_args.iter().map(|s| (*s).to_string()).collect(),
            bootstrap: size,
            joined_args: std::collections::HashMap::new(),
            pki: None,
            client_tls: None,
        };
        if tls {
            let dir = cluster.dir().join("pki");
            std::fs::create_dir_all(&dir).context("create the pki directory")?;
            let pki = TestPki::new(&dir, "concord-test-ca")?;
            cluster.client_tls = Some(pki.client_tls()?);
            cluster.pki = Some(pki);
        }
        launch(&mut cluster, size, "m")?;
        Ok(cluster)
    }

    /// Makes room for a new member `m{i}` on free ports and returns its index `i`, without
    /// starting it: add it to the cluster first (`etcdctl member add` with
    /// [`Cluster::peer_url`]), then [`Cluster::start_joining`].
    pub fn new_member(&mut self) -> usize {
        let i = self.size();
        let ports = free_ports(2);
        let name = format!("m{i}");
        self.members.push(Member {
            log: self.dir().join(format!("{name}.log")),
            tls: self.pki.is_some(),
            name,
            client_port: ports[0],
            peer_port: ports[1],
            child: None,
            starts: 0,
        });
        i
    }

    /// Starts member `i` (made by [`Cluster::new_member`]) with `--initial-cluster-state
    /// existing`, its `--initial-cluster` listing the members running now and itself, plus
    /// `extra_args`. Later restarts use the same command line. Does not wait for it to
    /// listen.
    ///
    /// # Errors
    /// The process cannot be spawned.
    pub fn start_joining(&mut self, i: usize, extra_args: &[&str]) -> anyhow::Result<()> {
        let running: Vec<usize> = (0..self.size())
            .filter(|&m| m == i || self.is_running(m))
            .collect();
        let mut args = self.args_with(i, &running, "existing");
        args.extend(extra_args.iter().map(|s| (*s).to_string()));
        self.joined_args.insert(i, args);
        self.spawn(i)
    }

    /// Number of members.
    #[must_use]
    pub fn size(&self) -> usize {
        self.members.len()
    }

    /// The name of member `i` (`m{i}`).
    #[must_use]
    pub fn name(&self, i: usize) -> &str {
        &self.members[i].name
    }

    /// The client URL of member `i`, such as `http://127.0.0.1:43121`.
    #[must_use]
    pub fn client_url(&self, i: usize) -> String {
        self.members[i].client_url()
    }

    /// The peer URL of member `i`.
    #[must_use]
    pub fn peer_url(&self, i: usize) -> String {
        self.members[i].peer_url()
    }

    /// Every member's client URL, comma separated (etcdctl's `--endpoints`).
    #[must_use]
    pub fn endpoints(&self) -> String {
        (0..self.size())
            .map(|i| self.client_url(i))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The command line of member `i`, without the binary (starts with `serve`).
    #[must_use]
    pub fn args(&self, i: usize) -> Vec<String> {
        if let Some(args) = self.joined_args.get(&i) {
            return args.clone();
        }
        let bootstrap: Vec<usize> = (0..self.bootstrap).collect();
        self.args_with(i, &bootstrap, "new")
    }

    /// The command line of member `i` with `initial` as `--initial-cluster` and `state` as
    /// `--initial-cluster-state`.
    fn args_with(&self, i: usize, initial: &[usize], state: &str) -> Vec<String> {
        let initial_cluster: Vec<String> = initial
            .iter()
            .map(|&m| format!("{}={}", self.members[m].name, self.peer_url(m)))
            .collect();
        let client = self.client_url(i);
        let peer = self.peer_url(i);
        let mut args: Vec<String> = [
            "serve",
            "--name",
            &self.members[i].name,
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
            state,
            "--initial-cluster-token",
            &self.token,
        ]
        .iter()
        .map(|s| (*s).to_string())
        .collect();
        if let Some(pki) = &self.pki {
            args.extend(
                pki.member_args(&self.members[i].name)
                    .expect("the member's certificate can be written"),
            );
        }
        args.extend(self.extra_args.iter().cloned());
        args
    }

    /// With TLS ([`Cluster::start_tls`]): the CA, to issue more certificates.
    #[must_use]
    pub fn pki(&self) -> Option<&TestPki> {
        self.pki.as_ref()
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

    /// The file that member `i`'s stdout and stderr go to.
    #[must_use]
    pub fn log_path(&self, i: usize) -> &Path {
        &self.members[i].log
    }

    /// Everything member `i` has written so far, over all its starts.
    #[must_use]
    pub fn log(&self, i: usize) -> String {
        self.members[i].log()
    }

    /// What member `i` has written since it was last started.
    #[must_use]
    pub fn current_log(&self, i: usize) -> String {
        self.members[i].current_log()
    }

    /// The process id of member `i`, if the fixture started it and has not reaped it.
    #[must_use]
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.members[i].child.as_ref().map(Child::id)
    }

    /// Whether member `i`'s process is running (reaps it if it has exited).
    pub fn is_running(&mut self, i: usize) -> bool {
        self.members[i].is_running()
    }

    /// Kills member `i` with SIGKILL, sent to its process id, and reaps it. Does nothing if
    /// it is not running.
    pub fn kill(&mut self, i: usize) {
        self.members[i].kill();
    }

    /// Kills every member with SIGKILL.
    pub fn kill_all(&mut self) {
        for i in 0..self.size() {
            self.kill(i);
        }
    }

    /// Stops member `i` with SIGTERM and waits for it to exit, sending SIGKILL after
    /// [`STOP_TIMEOUT`]; its exit status (`None` if it was not running or had to be killed).
    pub fn stop(&mut self, i: usize) -> Option<ExitStatus> {
        let mut child = self.members[i].child.take()?;
        let _ = send_signal(child.id(), "TERM");
        let deadline = Instant::now() + STOP_TIMEOUT;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!("testkit: member {i} ignored SIGTERM for {STOP_TIMEOUT:?}; killing it");
        let _ = child.kill();
        let _ = child.wait();
        None
    }

    /// Stops every member (SIGTERM, see [`Cluster::stop`]).
    pub fn stop_all(&mut self) {
        for i in 0..self.size() {
            self.stop(i);
        }
    }

    /// Starts member `i` again with the same flags and data directory, killing it first if it
    /// is running. Does not wait for it to serve; see [`Cluster::wait_listening`] and
    /// [`Cluster::wait_for_leader`].
    ///
    /// # Errors
    /// The process cannot be spawned.
    pub fn restart(&mut self, i: usize) -> anyhow::Result<()> {
        self.kill(i);
        self.spawn(i)
    }

    /// Restarts every member (see [`Cluster::restart`]).
    ///
    /// # Errors
    /// A process cannot be spawned.
    pub fn restart_all(&mut self) -> anyhow::Result<()> {
        for i in 0..self.size() {
            self.restart(i)?;
        }
        Ok(())
    }

    /// Waits until member `i` exits, for at most `timeout`; its exit status.
    ///
    /// # Errors
    /// Not running, or still running at the deadline.
    pub fn wait_exit(&mut self, i: usize, timeout: Duration) -> anyhow::Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        let child = self.members[i]
            .child
            .as_mut()
            .with_context(|| format!("member {i} is not running"))?;
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

    /// Waits until member `i` accepts TCP connections on its client port.
    ///
    /// # Errors
    /// The member exits or is not listening within `timeout`; the error carries its log.
    pub fn wait_listening(&mut self, i: usize, timeout: Duration) -> anyhow::Result<()> {
        self.members[i].wait_listening(&format!("member {i}"), timeout)
    }

    fn wait_all_listening(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        for i in 0..self.size() {
            self.wait_listening(i, deadline.saturating_duration_since(Instant::now()))?;
        }
        Ok(())
    }

    fn bind_failed(&self) -> bool {
        (0..self.size()).any(|i| self.current_log(i).contains(BIND_FAILURE))
    }

    fn spawn(&mut self, i: usize) -> anyhow::Result<()> {
        let args = self.args(i);
        self.members[i].spawn(&self.binary, &args, |command| {
            // The members' behaviour comes from their flags alone, not from the test's
            // environment.
            without_env_prefix(command, "CONCORD_");
            // Plain text in the log files.
            command.env("NO_COLOR", "1");
            match std::env::var_os("TESTKIT_RUST_LOG") {
                Some(filter) => command.env("RUST_LOG", filter),
                None => command.env_remove("RUST_LOG"),
            };
        })
    }

    /// A gRPC channel to member `i`: connects lazily, 1 s connect timeout, 10 s per request.
    ///
    /// # Panics
    /// Never for the URLs this cluster makes.
    #[must_use]
    pub fn channel(&self, i: usize) -> Channel {
        match &self.client_tls {
            Some(tls) => tls_channel(&self.client_url(i), tls.clone()),
            None => channel(&self.client_url(i)),
        }
    }

    /// A KV client for member `i` that accepts responses up to [`MAX_RESPONSE_BYTES`].
    #[must_use]
    pub fn kv(&self, i: usize) -> KvClient<Channel> {
        KvClient::new(self.channel(i)).max_decoding_message_size(MAX_RESPONSE_BYTES)
    }

    /// A Maintenance client for member `i`.
    #[must_use]
    pub fn maintenance(&self, i: usize) -> MaintenanceClient<Channel> {
        MaintenanceClient::new(self.channel(i)).max_decoding_message_size(MAX_RESPONSE_BYTES)
    }

    /// A Cluster client for member `i`.
    #[must_use]
    pub fn cluster_client(&self, i: usize) -> ClusterClient<Channel> {
        ClusterClient::new(self.channel(i))
    }

    /// `Maintenance.Status` of member `i`, within [`RPC_TIMEOUT`].
    ///
    /// # Errors
    /// The member does not answer in time.
    pub async fn status(&self, i: usize) -> anyhow::Result<StatusResponse> {
        status(self.channel(i), i).await
    }

    /// `Maintenance.HashKV` of member `i` at `revision` (0: the latest), within
    /// [`RPC_TIMEOUT`] times ten (it reads the whole key space).
    ///
    /// # Errors
    /// The member does not answer in time or refuses.
    pub async fn hash_kv(&self, i: usize, revision: i64) -> anyhow::Result<HashKvResponse> {
        let mut client = self.maintenance(i);
        let response =
            tokio::time::timeout(RPC_TIMEOUT * 10, client.hash_kv(HashKvRequest { revision }))
                .await
                .with_context(|| format!("hashkv of member {i}: timed out"))?
                .with_context(|| format!("hashkv of member {i}"))?;
        Ok(response.into_inner())
    }

    /// The member that every running member currently names as leader, asking each once.
    ///
    /// # Errors
    /// A running member does not answer, has no leader, or they disagree, or the leader they
    /// name is not a running member of this cluster.
    pub async fn leader(&mut self) -> anyhow::Result<usize> {
        let running: Vec<usize> = (0..self.size()).filter(|&i| self.is_running(i)).collect();
        let running: Vec<(usize, Channel)> =
            running.into_iter().map(|i| (i, self.channel(i))).collect();
        agreed_leader(&running).await
    }

    /// Waits until every running member names the same running member as leader; its index.
    ///
    /// # Errors
    /// No agreement within `timeout`; the error says why the last check failed and where
    /// the members' logs are.
    pub async fn wait_for_leader(&mut self, timeout: Duration) -> anyhow::Result<usize> {
        let dir = self.dir().display().to_string();
        Members::wait_for_leader(self, timeout)
            .await
            .with_context(|| format!("member logs in {dir}"))
    }

    /// Runs `etcdctl` (API v3) against member `i` with `args`, killed after
    /// [`ETCDCTL_TIMEOUT`] (then the exit code is 124 or 137).
    ///
    /// # Errors
    /// etcdctl cannot be run.
    pub fn etcdctl(&self, i: usize, args: &[&str]) -> anyhow::Result<Output> {
        self.etcdctl_with_endpoints(&self.client_url(i), args)
    }

    /// Runs `etcdctl` (API v3) against every member's endpoint (see [`Cluster::etcdctl`]).
    ///
    /// # Errors
    /// etcdctl cannot be run.
    pub fn etcdctl_all(&self, args: &[&str]) -> anyhow::Result<Output> {
        self.etcdctl_with_endpoints(&self.endpoints(), args)
    }

    fn etcdctl_with_endpoints(&self, endpoints: &str, args: &[&str]) -> anyhow::Result<Output> {
        match &self.pki {
            Some(pki) => {
                let mut with_tls = pki.etcdctl_args()?;
                with_tls.extend(args.iter().map(|s| (*s).to_string()));
                let with_tls: Vec<&str> = with_tls.iter().map(String::as_str).collect();
                etcdctl(endpoints, &with_tls, None)
            }
            None => etcdctl(endpoints, args, None),
        }
    }

    /// A report of every member: running or not, and the end of its log.
    #[must_use]
    pub fn report(&self) -> String {
        let mut report = format!("cluster directory: {}\n", self.dir().display());
        for i in 0..self.size() {
            let _ = writeln!(
                report,
                "--- member {i} ({}, client {}, {}); {}",
                self.members[i].name,
                self.client_url(i),
                match self.pid(i) {
                    Some(pid) => format!("pid {pid}"),
                    None => "not running".to_string(),
                },
                self.members[i].describe_log()
            );
        }
        report
    }
}

impl Members for Cluster {
    fn system(&self) -> &'static str {
        "concord"
    }

    fn size(&self) -> usize {
        Cluster::size(self)
    }

    fn client_url(&self, i: usize) -> String {
        Cluster::client_url(self, i)
    }

    fn kv(&self, i: usize) -> KvClient<Channel> {
        Cluster::kv(self, i)
    }

    fn is_running(&mut self, i: usize) -> bool {
        Cluster::is_running(self, i)
    }

    fn kill(&mut self, i: usize) {
        Cluster::kill(self, i);
    }

    fn restart(&mut self, i: usize) -> anyhow::Result<()> {
        Cluster::restart(self, i)
    }

    async fn leader(&mut self) -> anyhow::Result<usize> {
        Cluster::leader(self).await
    }

    fn report(&self) -> String {
        Cluster::report(self)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.kill_all();
        let Some(dir) = self.dir.take() else { return };
        let keep = std::env::var_os("TESTKIT_KEEP").is_some();
        if std::thread::panicking() {
            // Put the dir back for `report`, then keep it on disk.
            self.dir = Some(dir);
            eprintln!("testkit: the test failed; {}", self.report());
            let dir = self.dir.take().expect("just set");
            eprintln!("testkit: kept {}", dir.keep().display());
        } else if keep {
            eprintln!("testkit: kept {}", dir.keep().display());
        }
    }
}

/// A gRPC channel to `url`: connects lazily, 1 s connect timeout, 10 s per request.
///
/// # Panics
/// If `url` is not a valid URL.
#[must_use]
pub fn channel(url: &str) -> Channel {
    Endpoint::from_shared(url.to_string())
        .expect("a valid URL")
        .connect_timeout(Duration::from_secs(1))
        .timeout(Duration::from_secs(10))
        .connect_lazy()
}

/// As [`channel`], over TLS with `tls` for an https `url`.
///
/// # Panics
/// If `url` is not a valid URL.
#[must_use]
pub fn tls_channel(url: &str, tls: std::sync::Arc<tls::ClientTls>) -> Channel {
    let (endpoint, connector) = tls::Dialer::new(Some(tls))
        .endpoint(url)
        .expect("a valid URL");
    endpoint
        .connect_timeout(Duration::from_secs(1))
        .timeout(Duration::from_secs(10))
        .connect_with_connector_lazy(connector)
}

/// `Maintenance.Status` through `channel` (to member `i`), within [`RPC_TIMEOUT`].
async fn status(channel: Channel, i: usize) -> anyhow::Result<StatusResponse> {
    let mut client = MaintenanceClient::new(channel);
    let response = tokio::time::timeout(RPC_TIMEOUT, client.status(StatusRequest {}))
        .await
        .with_context(|| format!("status of member {i}: timed out"))?
        .with_context(|| format!("status of member {i}"))?;
    Ok(response.into_inner())
}

/// The member that every one of `running` (member index and channel) names as leader,
/// asking each once; Concord and etcd answer `Maintenance.Status` alike.
async fn agreed_leader(running: &[(usize, Channel)]) -> anyhow::Result<usize> {
    if running.is_empty() {
        bail!("no member is running");
    }
    let mut ids = Vec::new();
    let mut leader = None;
    for (i, channel) in running {
        let status = status(channel.clone(), *i).await?;
        let header = status.header.context("a status without a header")?;
        ids.push((*i, header.member_id));
        if status.leader == 0 {
            bail!("member {i} has no leader");
        }
        match leader {
            Some(l) if l != status.leader => {
                bail!(
                    "members disagree on the leader: {l:x} and {:x}",
                    status.leader
                )
            }
            _ => leader = Some(status.leader),
        }
    }
    let leader = leader.expect("at least one running member");
    ids.iter()
        .find(|(_, id)| *id == leader)
        .map(|(i, _)| *i)
        .with_context(|| format!("the leader {leader:x} is not a running member"))
}

/// A command that runs `program` under [`pdeathsig_wrapper`] when there is one.
fn wrapped(program: impl AsRef<OsStr>) -> Command {
    match pdeathsig_wrapper() {
        Some(wrapper) => {
            let mut command = Command::new(wrapper);
            command.args(["--pdeathsig", "KILL", "--"]).arg(program);
            command
        }
        None => Command::new(program),
    }
}

/// Removes every environment variable whose name starts with `prefix` from `command`'s
/// environment.
fn without_env_prefix(command: &mut Command, prefix: &str) {
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with(prefix) {
            command.env_remove(&key);
        }
    }
}

/// The last [`LOG_TAIL_LINES`] lines of `log`.
fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
}

/// `setpriv` if it can make a child die with its parent: members then die even if the test
/// process is killed (a harness timeout) before it can drop its clusters. The signal is sent
/// when the thread that spawned the member exits, so spawn members from the test's thread.
fn pdeathsig_wrapper() -> Option<&'static Path> {
    static WRAPPER: OnceLock<Option<PathBuf>> = OnceLock::new();
    WRAPPER
        .get_or_init(|| {
            let output = Command::new("setpriv").arg("--help").output().ok()?;
            String::from_utf8_lossy(&output.stdout)
                .contains("--pdeathsig")
                .then(|| PathBuf::from("setpriv"))
        })
        .as_deref()
}

#[cfg(test)]
mod tests;
