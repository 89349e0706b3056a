//! [`Members`]: what a test of behaviour across member failures needs from a cluster, so that
//! one trial runs unchanged against Concord ([`crate::Cluster`]) and against etcd
//! ([`crate::EtcdCluster`]).

use std::future::Future;
use std::time::{Duration, Instant};

use anyhow::anyhow;
use proto::etcdserverpb::kv_client::KvClient;
use tonic::transport::Channel;

use crate::MAX_RESPONSE_BYTES;

/// A cluster of member processes on 127.0.0.1 that a test can kill and restart. Methods that
/// take a member index panic if it is out of range.
pub trait Members: Send {
    /// The system's name in reports: `concord` or `etcd`.
    fn system(&self) -> &'static str;

    /// Number of members.
    fn size(&self) -> usize;

    /// The client URL of member `i`, such as `http://127.0.0.1:43121`.
    fn client_url(&self, i: usize) -> String;

    /// Every member's client URL, comma separated (etcdctl's `--endpoints`).
    fn endpoints(&self) -> String {
        (0..self.size())
            .map(|i| self.client_url(i))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// A KV client for member `i` (see [`crate::channel`]).
    fn kv(&self, i: usize) -> KvClient<Channel> {
        KvClient::new(crate::channel(&self.client_url(i)))
            .max_decoding_message_size(MAX_RESPONSE_BYTES)
    }

    /// Whether member `i`'s process is running.
    fn is_running(&mut self, i: usize) -> bool;

    /// Kills member `i` with SIGKILL and reaps it. Does nothing if it is not running.
    fn kill(&mut self, i: usize);

    /// Starts member `i` again with its flags and data directory, killing it first if it is
    /// running. Does not wait for it to serve.
    ///
    /// # Errors
    /// The process cannot be spawned.
    fn restart(&mut self, i: usize) -> anyhow::Result<()>;

    /// The member that every running member names as leader (`Maintenance.Status`), asking
    /// each once.
    ///
    /// # Errors
    /// A running member does not answer, has no leader, or they disagree.
    fn leader(&mut self) -> impl Future<Output = anyhow::Result<usize>> + Send;

    /// Waits until every running member names the same running member as leader; its index.
    /// A restarted member that agrees has heard from the leader: it has rejoined.
    ///
    /// # Errors
    /// No agreement within `timeout`; the error says why the last check failed.
    fn wait_for_leader(
        &mut self,
        timeout: Duration,
    ) -> impl Future<Output = anyhow::Result<usize>> + Send {
        async move {
            let deadline = Instant::now() + timeout;
            loop {
                let last = match tokio::time::timeout(
                    deadline.saturating_duration_since(Instant::now()),
                    self.leader(),
                )
                .await
                {
                    Ok(Ok(leader)) => return Ok(leader),
                    Ok(Err(e)) => e,
                    Err(_) => anyhow!("the last check was still running at the deadline"),
                };
                if Instant::now() >= deadline {
                    return Err(last.context(format!(
                        "{}: no agreed leader within {timeout:?}",
                        self.system()
                    )));
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }

    /// A report of every member: running or not, and the end of its log.
    fn report(&self) -> String;
}
