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

mod config;
mod identity;

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

pub use config::{cluster_id, member_id, ClusterState, Config, ConfigError, ServeArgs};
pub use identity::Identity;

/// Proposals waiting for apply before clients get `etcdserver: too many requests`.
const MAX_PENDING_PROPOSALS: usize = 10_000;
/// Entries kept behind a log compaction for followers that are only a little behind
/// (etcd: 5000).
const SNAPSHOT_CATCHUP_ENTRIES: u64 = 5_000;
/// Concurrent HTTP/2 streams per client connection.
const MAX_CONCURRENT_STREAMS: u32 = 1024;

/// Runs a member until `shutdown` resolves or the member fails.
///
/// # Errors
/// The data directory belongs to another cluster or cannot be used, a store is corrupt, an
/// address cannot be bound, or the member failed while running.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let member_dir = config.data_dir.join("member");
    let expected = Identity {
        cluster_id: config.cluster_id,
        member_id: config.member_id,
    };
    identity::check_or_create(&member_dir, expected, config.cluster_state)?;

    let log =
        Arc::new(RaftLogStore::open(&member_dir.join("log")).context("cannot open the raft log")?);
    let kv = RedbKvStore::open(&member_dir.join("state.redb"))
        .context("cannot open the state machine")?;

    let local = NodeId(config.member_id);
    let peers: HashMap<NodeId, String> = config
        .members
        .iter()
        .map(|m| (NodeId(m.id), m.peer_urls[0].clone()))
        .collect();
    let transport = Arc::new(api::GrpcTransport::new(local, config.cluster_id, peers));
    let election_ticks =
        (config.election_timeout.as_millis() / config.heartbeat.as_millis().max(1)) as usize;
    let node_config = NodeConfig {
        node_id: local,
        cluster_id: config.cluster_id,
        initial_voters: config.members.iter().map(|m| NodeId(m.id)).collect(),
        tick_interval: config.heartbeat,
        election_ticks,
        heartbeat_ticks: 1,
        snapshot_count: config.snapshot_count,
        snapshot_catchup_entries: SNAPSHOT_CATCHUP_ENTRIES.min(config.snapshot_count / 2),
        request_timeout: Duration::from_secs(5) + 2 * config.election_timeout,
        max_pending_proposals: MAX_PENDING_PROPOSALS,
        seed: seed(config.member_id),
        snapshot_dir: member_dir.join("snap"),
    };
    let node = Node::start(node_config, log, kv, transport.clone())
        .map_err(|e| anyhow::anyhow!("cannot start the member: {e}"))?;
    transport.attach(node.clone());

    let members: api::Membership = config
        .members
        .iter()
        .map(|m| api::Member {
            id: m.id,
            name: m.name.clone(),
            peer_urls: m.peer_urls.clone(),
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
    };

    let (stop_tx, stop_rx) = watch::channel(false);
    let mut peer_servers = tokio::task::JoinSet::new();
    let mut servers = tokio::task::JoinSet::new();
    for addr in &config.peer_addrs {
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen for peers on {addr}"))?;
        let routes = api::peer_routes(&node, config.cluster_id);
        peer_servers.spawn(serve(listener, routes, stop_rx.clone()));
    }
    for addr in &config.client_addrs {
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen for clients on {addr}"))?;
        let routes = api::client_routes(&node, members.clone(), api_config);
        servers.spawn(serve_clients(listener, routes, stop_rx.clone()));
    }
    tracing::info!(
        name = %config.name,
        member_id = format!("{:x}", config.member_id),
        cluster_id = format!("{:x}", config.cluster_id),
        data_dir = %config.data_dir.display(),
        clients = ?config.client_addrs,
        peers = ?config.peer_addrs,
        heartbeat_ms = config.heartbeat.as_millis() as u64,
        election_timeout_ms = config.election_timeout.as_millis() as u64,
        snapshot_count = config.snapshot_count,
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
    // Stop accepting and let in-flight client requests finish (bounded). Peer streams are
    // long-lived and would hold a graceful stop open until the other members go away, so the
    // peer servers are simply dropped. Then stop the node.
    let _ = stop_tx.send(true);
    peer_servers.abort_all();
    let drain = async { while servers.join_next().await.is_some() {} };
    let _ = tokio::time::timeout(Duration::from_secs(5), drain).await;
    tokio::task::spawn_blocking(move || node.shutdown())
        .await
        .context("node shutdown")?;
    outcome
}

async fn serve(
    listener: TcpListener,
    routes: tonic::service::Routes,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    use tokio_stream::StreamExt as _;
    let incoming = TcpListenerStream::new(listener).map(|conn| conn.inspect(nodelay));
    server_builder()
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

/// The election-jitter seed. It only needs to differ between members and runs; simulations
/// pass their own. The clock and the member id are enough here, at the edge.
fn seed(member_id: u64) -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    nanos ^ member_id.rotate_left(17) ^ u64::from(std::process::id())
}

#[cfg(test)]
mod tests;
