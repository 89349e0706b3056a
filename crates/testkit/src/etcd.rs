//! A real etcd, the reference implementation, for differential tests.
//!
//! [`Etcd::start`] runs Debian's `etcd` (package `etcd-server`) as a single-member cluster on
//! 127.0.0.1 with free ports and a data directory of its own. Dropping it kills the process;
//! on a panic the end of its log is printed.

use std::fs::File;
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use proto::etcdserverpb::kv_client::KvClient;
use proto::etcdserverpb::maintenance_client::MaintenanceClient;
use tonic::transport::Channel;

use crate::{free_ports, tail, without_env_prefix, wrapped, MAX_RESPONSE_BYTES, START_TIMEOUT};

/// A single-member etcd owned by one test.
pub struct Etcd {
    child: Option<Child>,
    client_port: u16,
    log: PathBuf,
    /// Holds the data directory and the log; removed on drop.
    _dir: tempfile::TempDir,
}

impl Etcd {
    /// Starts etcd and waits until it listens on its client port.
    ///
    /// # Errors
    /// The `etcd` binary is missing (install Debian's `etcd-server`), exits, or does not
    /// listen within [`START_TIMEOUT`].
    pub fn start() -> anyhow::Result<Etcd> {
        let dir = tempfile::Builder::new()
            .prefix("etcd-reference-")
            .tempdir()
            .context("create etcd's directory")?;
        let ports = free_ports(2);
        let client = format!("http://127.0.0.1:{}", ports[0]);
        let peer = format!("http://127.0.0.1:{}", ports[1]);
        let log = dir.path().join("etcd.log");
        let log_file = File::create(&log).context("create etcd's log")?;
        let mut command = wrapped("etcd");
        command
            .args(["--name", "reference"])
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("reference={peer}")])
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file);
        // etcd reads ETCD_* variables as flags: the test's environment must not change it.
        without_env_prefix(&mut command, "ETCD");
        let child = command
            .spawn()
            .context("spawn etcd (is Debian's etcd-server package installed?)")?;
        let mut etcd = Etcd {
            child: Some(child),
            client_port: ports[0],
            log,
            _dir: dir,
        };
        etcd.wait_listening(START_TIMEOUT)?;
        Ok(etcd)
    }

    /// The client URL.
    #[must_use]
    pub fn client_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    /// A gRPC channel: connects lazily, 1 s connect timeout, 10 s per request.
    ///
    /// # Panics
    /// Never for the URL this fixture makes.
    #[must_use]
    pub fn channel(&self) -> Channel {
        crate::channel(&self.client_url())
    }

    /// A KV client that accepts responses up to [`MAX_RESPONSE_BYTES`].
    #[must_use]
    pub fn kv(&self) -> KvClient<Channel> {
        KvClient::new(self.channel()).max_decoding_message_size(MAX_RESPONSE_BYTES)
    }

    /// A Maintenance client.
    #[must_use]
    pub fn maintenance(&self) -> MaintenanceClient<Channel> {
        MaintenanceClient::new(self.channel()).max_decoding_message_size(MAX_RESPONSE_BYTES)
    }

    /// Everything etcd has logged so far.
    #[must_use]
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn wait_listening(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        let addr = SocketAddr::from(([127, 0, 0, 1], self.client_port));
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                bail!(
                    "etcd exited ({status}); its log ends with:\n{}",
                    tail(&self.log())
                );
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "etcd not listening on {addr} after {timeout:?}; its log ends with:\n{}",
                    tail(&self.log())
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "testkit: reference etcd's log ends with:\n{}",
                tail(&self.log())
            );
        }
    }
}
