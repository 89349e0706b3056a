//! The wiring of one member: flags, data directory, stores, node, transport and gRPC servers.
//!
//! Only this crate reads flags and the environment. [`run`] takes a validated [`Config`] and
//! a shutdown future, as mini-redis's server does, so tests can run members in process.
//!
//! Data directory layout:
//!
//! ```text
//! <data-dir>/member/identity     cluster and member id this directory belongs to
//! <data-dir>/member/log/         the Raft log (raft-engine)
//! <data-dir>/member/state.redb   the state machine (redb)
//! <data-dir>/member/snap/        incoming snapshots, spooled before they are installed
//! ```
//!
//! The identity file is written first, atomically, on the first start; a later start with
//! flags that give other ids is refused (see [`Identity`]). Member and cluster ids are
//! derived from `--initial-cluster` and `--initial-cluster-token` alone ([`member_id`],
//! [`cluster_id`]), so every member computes the same ids without talking to the others.

mod config;
mod identity;
mod restore;

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use node::{Node, NodeConfig, NodeId};
use storage_disk::{RaftLogStore, RedbKvStore};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_stream::wrappers::TcpListenerStream;

pub use config::{
    cluster_id, member_id, ClusterState, Config, ConfigError, InitialMember, ServeArgs,
    MAX_REQUEST_BYTES_CEILING,
};
pub use identity::Identity;
pub use node::{backup_status, BackupStatus};
pub use restore::{restore, RestoreArgs, Restored};

/// Proposals waiting for apply before clients get `etcdserver: too many requests`.
const MAX_PENDING_PROPOSALS: usize = 10_000;
/// The fixed part of the request timeout; etcd's `ReqTimeout` is 5 s plus two election
/// timeouts.
const REQUEST_TIMEOUT_BASE: Duration = Duration::from_secs(5);
/// How long shutdown waits for in-flight client requests.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// Entries kept behind a log compaction for followers that are only a little behind
/// (etcd: 5000).
const SNAPSHOT_CATCHUP_ENTRIES: u64 = 5_000;
/// Concurrent HTTP/2 streams per client connection.
const MAX_CONCURRENT_STREAMS: u32 = 1024;

/// Runs a member until `shutdown` resolves or the member fails.
///
/// In order: check the data directory's identity, bind every listener, claim the data
/// directory (nothing is written before the addresses are ours), open the Raft log and the
/// state machine, start the node, serve clients and peers. On shutdown: stop accepting
/// connections, let in-flight client requests finish (at most 5 s), stop the node, return.
///
/// # Errors
/// An address cannot be bound, the data directory belongs to another cluster or cannot be
/// used, a store is corrupt, or the member failed while running. Each is one line naming
/// the address, directory or file.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let expected = Identity {
        cluster_id: config.cluster_id,
        member_id: config.member_id,
        name: config.name.clone(),
        token: config.token.clone(),
    };
    let found = identity::check(&config.data_dir, &expected, config.cluster_state)?;
    let mut peer_listeners = Vec::with_capacity(config.peer_addrs.len());
    for addr in &config.peer_addrs {
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen for peers on {addr}"))?;
        peer_listeners.push(listener);
    }
    let mut client_listeners = Vec::with_capacity(config.client_addrs.len());
    for addr in &config.client_addrs {
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen for clients on {addr}"))?;
        client_listeners.push(listener);
    }
    identity::claim(&config.data_dir, &expected, found)?;
    log_config(&config, &client_listeners, &peer_listeners);

    let member_dir = config.data_dir.join("member");
    let log = member_dir.join("log");
    let log = Arc::new(
        RaftLogStore::open(&log)
            .with_context(|| format!("cannot open the raft log in {}", log.display()))?,
    );
    let state = member_dir.join("state.redb");
    let kv = RedbKvStore::open(&state)
        .with_context(|| format!("cannot open the state machine {}", state.display()))?;

    let local = NodeId(config.member_id);
    let peers: HashMap<NodeId, String> = config
        .members
        .iter()
        .map(|m| (NodeId(m.id), m.peer_urls[0].clone()))
        .collect();
    let leader_link =
        api::LeaderLink::new(config.cluster_id, &peers).map_err(|e| anyhow::anyhow!(e))?;
    let transport = Arc::new(api::GrpcTransport::new(local, config.cluster_id, peers));
    let node = Node::start(node_config(&config), log, kv, transport.clone())
        .map_err(|e| anyhow::anyhow!("cannot start the member: {e}"))?;
    transport.attach(node.clone());

    let members: api::Membership = config
        .members
        .iter()
        .map(|m| api::Member {
            id: m.id,
            name: m.name.clone(),
            peer_urls: m.peer_urls.clone(),
            // Other members' client URLs are not in the flags; they arrive with membership
            // changes.
            client_urls: if m.id == config.member_id {
                config.advertise_client_urls.clone()
            } else {
                Vec::new()
            },
        })
        .collect();
    let api_config = api::ApiConfig {
        max_request_bytes: config.max_request_bytes,
        max_txn_ops: config.max_txn_ops,
        quota_backend_bytes: config.quota_backend_bytes,
    };

    // Shutdown: `stop_tx` tells every server to stop accepting; each server task ends when
    // its in-flight requests are done.
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut peer_servers = tokio::task::JoinSet::new();
    let mut servers = tokio::task::JoinSet::new();
    for listener in peer_listeners {
        let routes = api::peer_routes(&node, config.cluster_id);
        peer_servers.spawn(serve_peers(listener, routes, stop_rx.clone()));
    }
    if config.initial_corrupt_check {
        api::corruption::check_at_startup(&node, &leader_link)
            .await
            .map_err(|e| anyhow::anyhow!(e))?;
        tracing::info!("initial corruption check passed");
    }
    if let Some(interval) = config.corrupt_check_interval {
        tokio::spawn(api::corruption::monitor(
            node.clone(),
            leader_link.clone(),
            interval,
        ));
    }
    for listener in client_listeners {
        let routes = api::client_routes(&node, members.clone(), api_config, leader_link.clone());
        servers.spawn(serve_clients(listener, routes, stop_rx.clone()));
    }
    tracing::info!(
        member_id = format!("{:x}", config.member_id),
        cluster_id = format!("{:x}", config.cluster_id),
        "serving"
    );

    let server_stopped =
        |result: Option<Result<anyhow::Result<()>, tokio::task::JoinError>>| match result {
            Some(Ok(Err(e))) => Err(e),
            Some(Err(e)) => Err(anyhow::anyhow!("a server task failed: {e}")),
            _ => Err(anyhow::anyhow!("a server stopped unexpectedly")),
        };
    let outcome = tokio::select! {
        () = shutdown => Ok(()),
        failure = node.failed() => Err(anyhow::anyhow!("member failed: {failure}")),
        result = servers.join_next() => server_stopped(result),
        result = peer_servers.join_next() => server_stopped(result),
    };
    tracing::info!("stopping");
    // Stop accepting and let in-flight client requests finish (bounded). Peer streams are
    // long-lived and would hold a graceful stop open until the other members go away, so the
    // peer servers are simply dropped: a member that stops is, to its peers, one that left.
    // Then stop the node, whose threads are joined off the runtime.
    let _ = stop_tx.send(true);
    peer_servers.abort_all();
    let drain = async { while servers.join_next().await.is_some() {} };
    if tokio::time::timeout(DRAIN_TIMEOUT, drain).await.is_err() {
        tracing::warn!("client requests still running after the drain timeout; dropping them");
        servers.abort_all();
    }
    tokio::task::spawn_blocking(move || node.shutdown())
        .await
        .context("node shutdown")?;
    tracing::info!("stopped");
    outcome
}

/// The node's settings, from the member's: etcd's tick model (one tick per heartbeat, the
/// election timeout in ticks) and its request timeout (5 s plus two election timeouts).
fn node_config(config: &Config) -> NodeConfig {
    let heartbeat_ms = config.heartbeat.as_millis().max(1);
    let election_ticks =
        usize::try_from(config.election_timeout.as_millis() / heartbeat_ms).unwrap_or(usize::MAX);
    NodeConfig {
        node_id: NodeId(config.member_id),
        cluster_id: config.cluster_id,
        initial_members: match config.cluster_state {
            ClusterState::New => config
                .members
                .iter()
                .map(|m| node::Member {
                    id: m.id,
                    name: m.name.clone(),
                    peer_urls: m.peer_urls.clone(),
                    client_urls: Vec::new(),
                    is_learner: false,
                })
                .collect(),
            // A member of an existing cluster learns the members from its log.
            ClusterState::Existing => Vec::new(),
        },
        tick_interval: config.heartbeat,
        election_ticks,
        heartbeat_ticks: 1,
        snapshot_count: config.snapshot_count,
        snapshot_catchup_entries: SNAPSHOT_CATCHUP_ENTRIES.min(config.snapshot_count / 2),
        request_timeout: REQUEST_TIMEOUT_BASE + 2 * config.election_timeout,
        max_pending_proposals: MAX_PENDING_PROPOSALS,
        seed: seed(),
        snapshot_dir: config.data_dir.join("member").join("snap"),
        clock: node::Clock::system(),
        watch: node::WatchConfig::default(),
        watch_progress_notify_interval: config.watch_progress_notify_interval,
        lease_checkpoint_interval: node::DEFAULT_LEASE_CHECKPOINT_INTERVAL,
    }
}

/// Logs the effective configuration once, at startup.
fn log_config(config: &Config, clients: &[TcpListener], peers: &[TcpListener]) {
    let bound = |listeners: &[TcpListener]| -> Vec<String> {
        listeners
            .iter()
            .filter_map(|l| l.local_addr().ok())
            .map(|a| a.to_string())
            .collect()
    };
    let initial_cluster: Vec<String> = config
        .members
        .iter()
        .flat_map(|m| m.peer_urls.iter().map(move |u| format!("{}={u}", m.name)))
        .collect();
    tracing::info!(
        name = %config.name,
        member_id = format!("{:x}", config.member_id),
        cluster_id = format!("{:x}", config.cluster_id),
        data_dir = %config.data_dir.display(),
        listen_client = ?bound(clients),
        advertise_client_urls = ?config.advertise_client_urls,
        listen_peer = ?bound(peers),
        advertise_peer_urls = ?config.advertise_peer_urls,
        initial_cluster = %initial_cluster.join(","),
        initial_cluster_state = ?config.cluster_state,
        initial_cluster_token = %config.token,
        heartbeat_ms = config.heartbeat.as_millis() as u64,
        election_timeout_ms = config.election_timeout.as_millis() as u64,
        snapshot_count = config.snapshot_count,
        max_request_bytes = config.max_request_bytes,
        max_txn_ops = config.max_txn_ops,
        quota_backend_bytes = ?config.quota_backend_bytes,
        "starting"
    );
}

/// Serves the peer service on `listener` until `stop` turns true.
async fn serve_peers(
    listener: TcpListener,
    routes: tonic::service::Routes,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    use tokio_stream::StreamExt as _;
    let incoming = TcpListenerStream::new(listener).map(|conn| conn.inspect(nodelay));
    // Peers are pinged more often than clients: a stalled peer stream must be replaced
    // within seconds (see `api::peer::PEER_PING_INTERVAL`).
    server_builder()
        .http2_keepalive_interval(Some(api::peer::PEER_PING_INTERVAL))
        .http2_keepalive_timeout(Some(api::peer::PEER_PING_TIMEOUT))
        .add_routes(routes)
        .serve_with_incoming_shutdown(incoming, async move {
            let _ = stop.wait_for(|stopped| *stopped).await;
        })
        .await
        .context("grpc server")
}

/// Serves client connections, each through [`api::authority::AuthorityFix`] so that older
/// etcd clients' malformed `:authority` headers are accepted as etcd accepts them.
async fn serve_clients(
    listener: TcpListener,
    routes: tonic::service::Routes,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    use tokio_stream::StreamExt as _;
    let incoming = TcpListenerStream::new(listener).map(|conn| {
        conn.map(|stream| {
            nodelay(&stream);
            api::authority::AuthorityFix::new(stream)
        })
    });
    server_builder()
        .add_routes(routes)
        .serve_with_incoming_shutdown(incoming, async move {
            let _ = stop.wait_for(|stopped| *stopped).await;
        })
        .await
        .context("grpc server")
}

/// Small responses must leave at once: with Nagle's algorithm on, a response written in two
/// segments waits for the client's delayed ACK (about 40 ms). The server builder's own
/// `tcp_nodelay` applies only to listeners it binds itself, not to a given stream of
/// connections, so it is set here on each accepted connection.
fn nodelay(stream: &tokio::net::TcpStream) {
    if let Err(e) = stream.set_nodelay(true) {
        tracing::debug!(error = %e, "cannot set TCP_NODELAY");
    }
}

fn server_builder() -> tonic::transport::Server {
    tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
}

/// The election-jitter seed. It only needs to differ between members and runs (simulations
/// pass their own): std's `RandomState` is keyed from the operating system's random source,
/// and the clock and process id are mixed in for good measure. This is the edge, where
/// randomness may enter.
fn seed() -> u64 {
    use std::hash::{BuildHasher as _, Hasher as _};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    hasher.write_u128(nanos);
    hasher.write_u32(std::process::id());
    hasher.finish()
}

#[cfg(test)]
mod tests;
