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
//! flags that give other ids is refused (see [`Identity`]). The members of a new cluster
//! derive their ids from `--initial-cluster` and `--initial-cluster-token` alone
//! ([`member_id`], [`cluster_id`]), so every member computes the same ids without talking to
//! the others. A member joining a running cluster (`--initial-cluster-state existing`) was
//! given its id when an operator added it ([`added_member_id`]) and asks its peers for it
//! (see `join`).
//!
//! Membership: the server follows the replicated membership to keep the peer transport's
//! and the leader link's maps of peer URLs current, and publishes this member's name and
//! client URLs through Raft once it runs (etcd's publish).

mod config;
mod etcd_flags;
mod identity;
mod join;
mod restore;

use std::collections::HashMap;
use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use encryption::KeyRing;
use identity::Claim;
use node::{Member, MembershipChange, Node, NodeConfig, NodeError, NodeId};
use storage_disk::{RaftLogStore, RedbKvStore};
use tokio::net::TcpListener;
use tokio::sync::watch;

pub use config::{
    added_member_id, canonical_peer_url, cluster_id, member_id, ClusterState, Config, ConfigError,
    InitialMember, ServeArgs, MAX_REQUEST_BYTES_CEILING,
};
pub use etcd_flags::take_etcd_flags;
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
/// Concurrent HTTP/2 streams per peer connection (clients': `--max-concurrent-streams`).
const PEER_MAX_CONCURRENT_STREAMS: u32 = 1024;
/// Pause before publishing this member's name and client URLs again after a failure.
const PUBLISH_RETRY: Duration = Duration::from_millis(500);

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
        version: identity::FORMAT_VERSION,
    };
    let found = identity::check(&config.data_dir, &expected, config.cluster_state)?;
    let mut peer_listeners = Vec::with_capacity(config.peer_addrs.len());
    for listen in &config.peer_addrs {
        let listener = TcpListener::bind(listen.addr)
            .await
            .with_context(|| format!("cannot listen for peers on {}", listen.addr))?;
        peer_listeners.push((listener, listen.tls));
    }
    let mut client_listeners = Vec::with_capacity(config.client_addrs.len());
    for listen in &config.client_addrs {
        let listener = TcpListener::bind(listen.addr)
            .await
            .with_context(|| format!("cannot listen for clients on {}", listen.addr))?;
        client_listeners.push((listener, listen.tls));
    }
    for warning in &config.warnings {
        tracing::warn!("{warning}");
    }
    let tls = Tls::load(&config)?;
    let (me, joined) = match &found {
        Claim::Ours(recorded) => (recorded.clone(), None),
        Claim::Unclaimed if config.cluster_state == ClusterState::Existing => {
            let joined = join::ask_cluster(&config, &tls.dialer).await?;
            let me = Identity {
                cluster_id: joined.cluster_id,
                member_id: joined.member_id,
                ..expected.clone()
            };
            (me, Some(joined))
        }
        Claim::Unclaimed => (expected.clone(), None),
    };
    identity::claim(&config.data_dir, &me, &found)?;
    log_config(&config, &me, &client_listeners, &peer_listeners);
    // A member of a new cluster starts the cluster from the flags (its log, if it has one,
    // already holds them); a member that joined waits for the leader to send it the log.
    let bootstrap =
        joined.is_none() && me.member_id == config.member_id && me.cluster_id == config.cluster_id;

    let member_dir = config.data_dir.join("member");
    let keys = load_encryption_keys(config.encryption_key_file.as_deref())?;
    let log = &config.wal_dir;
    let log = Arc::new(
        RaftLogStore::open_with(log, keys.clone())
            .with_context(|| format!("cannot open the raft log in {}", log.display()))?,
    );
    let state = member_dir.join("state.redb");
    let kv = RedbKvStore::open_with(&state, keys.clone())
        .with_context(|| format!("cannot open the state machine {}", state.display()))?;

    let local = NodeId(me.member_id);
    // The peers to start with: as the cluster answered the join, else from the flags (a
    // member added since is learnt from the replicated membership once the node runs).
    let peers: HashMap<NodeId, String> = match &joined {
        Some(joined) => peer_map(&joined.members, local),
        None => config
            .members
            .iter()
            .filter(|m| m.name != config.name)
            .map(|m| (NodeId(m.id), m.peer_urls[0].clone()))
            .collect(),
    };
    let leader_link = api::LeaderLink::new(me.cluster_id, &peers, tls.dialer.clone())
        .map_err(|e| anyhow::anyhow!(e))?;
    let transport = Arc::new(api::GrpcTransport::new(
        local,
        me.cluster_id,
        peers,
        tls.dialer.clone(),
    ));
    let initial_members = if bootstrap {
        config
            .members
            .iter()
            .map(|m| Member {
                id: m.id,
                name: m.name.clone(),
                peer_urls: m.peer_urls.clone(),
                client_urls: Vec::new(),
                is_learner: false,
            })
            .collect()
    } else {
        Vec::new()
    };
    let node = Node::start(
        node_config(&config, &me, initial_members, keys),
        log,
        kv,
        transport.clone(),
    )
    .map_err(|e| anyhow::anyhow!("cannot start the member: {e}"))?;
    transport.attach(node.clone());
    tokio::spawn(follow_members(
        node.clone(),
        transport.clone(),
        leader_link.clone(),
    ));
    tokio::spawn(publish(
        node.clone(),
        config.name.clone(),
        config.advertise_client_urls.clone(),
    ));

    let token = config.token.clone();
    let cluster = api::ClusterConfig {
        canonical_peer_url: config::canonical_peer_url,
        new_member_id: Arc::new(move |peer_urls: &[String]| {
            // The edge, where the clock may be read: the time makes the id new.
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default();
            added_member_id(peer_urls, &token, now)
        }),
        rules: config.reconfig,
    };
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
    for (listener, secure) in peer_listeners {
        let routes = api::peer_routes(&node, me.cluster_id, config.reconfig);
        let tls = tls.peer_server.clone().filter(|_| secure);
        peer_servers.spawn(serve_peers(listener, tls, routes, stop_rx.clone()));
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
    for (listener, secure) in client_listeners {
        let routes = api::client_routes(&node, cluster.clone(), api_config, leader_link.clone());
        servers.spawn(serve_clients(
            listener,
            tls.client_server.clone().filter(|_| secure),
            routes,
            config.max_concurrent_streams,
            stop_rx.clone(),
        ));
    }
    tracing::info!(
        member_id = format!("{:x}", me.member_id),
        cluster_id = format!("{:x}", me.cluster_id),
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

/// Every member's first peer URL by id, but `local`'s.
fn peer_map(members: &[Member], local: NodeId) -> HashMap<NodeId, String> {
    members
        .iter()
        .filter(|m| m.id != local.0)
        .filter_map(|m| Some((NodeId(m.id), m.peer_urls.first()?.clone())))
        .collect()
}

/// Keeps the transport's and the leader link's peers as the replicated membership says:
/// members added or moved are reached at their first peer URL, and removed ones are
/// forgotten. A member is forgotten only when a change removes it (removed ids never come
/// back), never for being absent from an older membership that this member is still
/// catching up through: the peers it was started with may be newer than its log.
async fn follow_members(
    node: Node,
    transport: Arc<api::GrpcTransport>,
    leader_link: api::LeaderLink,
) {
    let local = node.id();
    let mut members = node.watch_members();
    let mut previous: Vec<u64> = Vec::new();
    loop {
        let current = members.borrow_and_update().clone();
        if !current.is_empty() {
            let peers = peer_map(&current, local);
            let removed: Vec<NodeId> = previous
                .iter()
                .filter(|id| !current.iter().any(|m| m.id == **id))
                .map(|id| NodeId(*id))
                .collect();
            transport.update_peers(&peers, &removed);
            leader_link.update_peers(&peers, &removed);
            previous = current.iter().map(|m| m.id).collect();
        }
        if members.changed().await.is_err() {
            return;
        }
    }
}

/// Publishes this member's name and client URLs through Raft once the membership lists it,
/// unless they are already recorded (etcd's publish), retrying until it applies or the node
/// stops.
async fn publish(node: Node, name: String, client_urls: Vec<String>) {
    let local = node.id().0;
    let mut members = node.watch_members();
    // Not a member yet (joining): wait for the log to say so.
    loop {
        if members.borrow_and_update().iter().any(|m| m.id == local) {
            break;
        }
        if members.changed().await.is_err() {
            return;
        }
    }
    // Published through the log at every start, as etcd does, even when the attributes are
    // already recorded: once the publish is applied here, this member has applied its log
    // that far and serves. Operators' scripts and etcd's tests wait for these lines.
    let change = MembershipChange::Publish {
        id: local,
        name: name.clone(),
        client_urls: client_urls.clone(),
    };
    loop {
        match node.change_membership(change.clone()).await {
            Ok(_) => break,
            Err(NodeError::Stopped) => return,
            Err(e) => {
                tracing::debug!(error = %e, "publish failed; trying again");
                tokio::time::sleep(PUBLISH_RETRY).await;
            }
        }
    }
    let (cluster_id, _, _) = node.header_fields();
    tracing::info!(
        name = %name,
        client_urls = ?client_urls,
        cluster_id = format!("{cluster_id:x}"),
        "published local member to cluster through raft"
    );
    tracing::info!(
        "enabled capabilities for version {}",
        api::maintenance::CLUSTER_VERSION
    );
    tracing::info!("ready to serve client requests");
}

/// The node's settings, from the member's: etcd's tick model (one tick per heartbeat, the
/// election timeout in ticks) and its request timeout (5 s plus two election timeouts).
/// `me` gives the ids; `initial_members` starts a new cluster (empty: join one).
fn node_config(
    config: &Config,
    me: &Identity,
    initial_members: Vec<Member>,
    keys: Option<Arc<encryption::KeyRing>>,
) -> NodeConfig {
    let heartbeat_ms = config.heartbeat.as_millis().max(1);
    let election_ticks =
        usize::try_from(config.election_timeout.as_millis() / heartbeat_ms).unwrap_or(usize::MAX);
    NodeConfig {
        node_id: NodeId(me.member_id),
        cluster_id: me.cluster_id,
        initial_members,
        tick_interval: config.heartbeat,
        election_ticks,
        heartbeat_ticks: 1,
        snapshot_count: config.snapshot_count,
        snapshot_catchup_entries: SNAPSHOT_CATCHUP_ENTRIES.min(config.snapshot_count / 2),
        request_timeout: REQUEST_TIMEOUT_BASE + 2 * config.election_timeout,
        max_pending_proposals: MAX_PENDING_PROPOSALS,
        seed: seed(),
        snapshot_dir: config.data_dir.join("member").join("snap"),
        snapshot_keys: keys,
        clock: node::Clock::system(),
        watch: node::WatchConfig::default(),
        watch_progress_notify_interval: config.watch_progress_notify_interval,
        lease_checkpoint_interval: node::DEFAULT_LEASE_CHECKPOINT_INTERVAL,
    }
}

/// The TLS a member serves and dials with, loaded from its files at startup (auto-TLS
/// certificates are made first, if not there yet).
struct Tls {
    /// For the client port's https listeners.
    client_server: Option<Arc<tls::ServerTls>>,
    /// For the peer port's https listeners.
    peer_server: Option<Arc<tls::ServerTls>>,
    /// Dials the other members: TLS for https peer URLs.
    dialer: tls::Dialer,
}

impl Tls {
    fn load(config: &Config) -> anyhow::Result<Self> {
        let prepare = |plan: &Option<config::TlsPlan>| -> anyhow::Result<Option<tls::TlsSettings>> {
            let Some(plan) = plan else { return Ok(None) };
            if let Some(hosts) = &plan.auto_hosts {
                let dir = plan
                    .settings
                    .cert_file
                    .parent()
                    .context("auto-TLS directory")?;
                tls::pki::auto_tls(dir, hosts).map_err(|e| anyhow::anyhow!("auto-TLS: {e}"))?;
            }
            Ok(Some(plan.settings.clone()))
        };
        let client = prepare(&config.client_tls)?;
        let peer = prepare(&config.peer_tls)?;
        let client_server = client
            .map(|settings| tls::ServerTls::new(settings, &[b"h2", b"http/1.1"]))
            .transpose()?
            .map(Arc::new);
        let peer_server = peer
            .clone()
            .map(|settings| tls::ServerTls::new(settings, &[b"h2"]))
            .transpose()?
            .map(Arc::new);
        // Members dial https peers with the peer certificate as their client certificate;
        // without a CA to verify the others with (and no auto-TLS), only http peers can be
        // dialled (validation refused https ones in --initial-cluster).
        let peer_client = match peer {
            Some(settings) if settings.trusted_ca_file.is_some() || settings.self_signed => {
                Some(Arc::new(tls::ClientTls::new(settings)?))
            }
            _ => None,
        };
        Ok(Self {
            client_server,
            peer_server,
            dialer: tls::Dialer::new(peer_client),
        })
    }
}

/// The keys of `--encryption-key-file`, if given (for `serve`, `snapshot restore` and
/// `snapshot status`).
///
/// # Errors
/// The key file's own one-line error.
pub fn load_encryption_keys(path: Option<&Path>) -> anyhow::Result<Option<Arc<KeyRing>>> {
    let Some(path) = path else {
        return Ok(None);
    };
    let ring = KeyRing::load(path).map_err(|e| anyhow::anyhow!(e))?;
    tracing::info!(
        sealing_key = %ring.active().id(),
        keys = ring.len(),
        "encryption at rest: new writes are sealed with the first key of the key file"
    );
    Ok(Some(Arc::new(ring)))
}

/// Logs the effective configuration once, at startup.
fn log_config(
    config: &Config,
    me: &Identity,
    clients: &[(TcpListener, bool)],
    peers: &[(TcpListener, bool)],
) {
    let bound = |listeners: &[(TcpListener, bool)]| -> Vec<String> {
        listeners
            .iter()
            .filter_map(|(l, secure)| {
                let scheme = if *secure { "https" } else { "http" };
                l.local_addr().ok().map(|a| format!("{scheme}://{a}"))
            })
            .collect()
    };
    let initial_cluster: Vec<String> = config
        .members
        .iter()
        .flat_map(|m| m.peer_urls.iter().map(move |u| format!("{}={u}", m.name)))
        .collect();
    tracing::info!(
        name = %config.name,
        member_id = format!("{:x}", me.member_id),
        cluster_id = format!("{:x}", me.cluster_id),
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
        encryption_key_file = ?config.encryption_key_file,
        "starting"
    );
}

/// Serves the peer service on `listener` (TLS with `tls`) until `stop` turns true.
async fn serve_peers(
    listener: TcpListener,
    tls: Option<Arc<tls::ServerTls>>,
    routes: tonic::service::Routes,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let incoming = tls::incoming(listener, tls);
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

/// Serves client connections (TLS with `tls`), each through [`api::authority::AuthorityFix`] so that older
/// etcd clients' malformed `:authority` headers are accepted as etcd accepts them.
async fn serve_clients(
    listener: TcpListener,
    tls: Option<Arc<tls::ServerTls>>,
    routes: tonic::service::Routes,
    max_concurrent_streams: u32,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    use futures::StreamExt as _;
    let incoming =
        tls::incoming(listener, tls).map(|conn| conn.map(api::authority::AuthorityFix::new));
    // HTTP/1.1 too: etcd's `/health` and `/version` share the port with gRPC.
    server_builder()
        .max_concurrent_streams(max_concurrent_streams)
        .accept_http1(true)
        .add_routes(routes)
        .serve_with_incoming_shutdown(incoming, async move {
            let _ = stop.wait_for(|stopped| *stopped).await;
        })
        .await
        .context("grpc server")
}

fn server_builder() -> tonic::transport::Server {
    tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .max_concurrent_streams(PEER_MAX_CONCURRENT_STREAMS)
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
