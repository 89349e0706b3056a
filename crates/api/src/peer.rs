//! The peer transport: Raft messages and snapshots between the nodes of one cluster.
//!
//! Sending: one task per destination keeps one long-lived `Raft` stream open, reconnecting
//! with capped backoff, and sends everything queued for that node as one `RaftBatch`.
//! [`GrpcTransport`]'s methods are called from the store loop thread and never block: the
//! per-destination queues are bounded and drop when full (Raft retransmits). A snapshot goes
//! on its own `Snapshot` stream, one at a time per destination, in CRC32C-checked chunks.
//!
//! Receiving: [`PeerService`] checks that traffic is for this cluster and this node, hands
//! Raft messages to the node, and verifies every snapshot chunk before spooling it.
//!
//! Leases: only the leader keeps lease clocks, so [`LeaderLink`] takes a renewal (or a
//! question about the time a lease has left) to whichever member leads, retrying through
//! elections until the request's deadline. Membership changes go the same way (see
//! [`crate::cluster`]).
//!
//! Membership: the members change at runtime, so both peer maps (the transport's and the
//! leader link's) are updatable; the server follows the replicated membership and calls
//! [`GrpcTransport::update_peers`] and [`LeaderLink::update_peers`]. The `Members` call is
//! the one peer call answered without a cluster id: a member joining a running cluster asks
//! it for the cluster id and its own member id.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Duration;

use node::{
    Envelope, LeaseId, Member, MembershipChange, MvccError, Node, NodeError, NodeId,
    OutgoingSnapshot, ShardId, Transport,
};
use proto::peer as pb;
use proto::peer::peer_client::PeerClient;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

/// Batches of envelopes queued for one destination.
const PEER_QUEUE_BATCHES: usize = 4096;
/// Batches buffered inside one open stream.
const STREAM_BUFFER: usize = 64;
/// Envelopes merged into one `RaftBatch` at most.
const BATCH_ENVELOPES_MAX: usize = 4096;
/// Snapshot chunks read ahead of the network.
const SNAPSHOT_READ_AHEAD: usize = 4;
/// Largest peer message accepted (a snapshot chunk or a batch of appends).
pub const PEER_MESSAGE_BYTES_MAX: usize = 64 * 1024 * 1024;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// A peer connection that answers no HTTP/2 ping within [`PEER_PING_TIMEOUT`] of one sent
/// every [`PEER_PING_INTERVAL`] is dropped and made anew: a stream to a peer that was paused,
/// or cut off without a reset, is replaced within seconds instead of waiting on TCP's
/// retransmission backoff (which can reach a minute).
pub const PEER_PING_INTERVAL: Duration = Duration::from_secs(2);
/// See [`PEER_PING_INTERVAL`].
pub const PEER_PING_TIMEOUT: Duration = Duration::from_secs(2);
const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(1);
/// Distinct reasons remembered per unreachable peer, so each is logged once.
const LOGGED_FAILURES_MAX: usize = 16;
/// A Raft stream that lasted this long was healthy: a failure after it is news again.
const HEALTHY_STREAM: Duration = Duration::from_secs(5);
/// Pause before asking again while there is no leader, or the leader did not answer.
const FORWARD_RETRY: Duration = Duration::from_millis(50);

struct Link {
    queue: mpsc::Sender<Vec<Envelope>>,
    url: String,
    snapshot_in_flight: Arc<AtomicBool>,
}

/// [`Transport`] over gRPC streams.
pub struct GrpcTransport {
    local: NodeId,
    cluster_id: u64,
    /// Written only when the membership changes; read for every send.
    links: RwLock<HashMap<NodeId, Link>>,
    node: Arc<OnceLock<Node>>,
    runtime: tokio::runtime::Handle,
    /// Dials peers: plain for `http` peer URLs, TLS with the peer settings for `https`.
    dialer: tls::Dialer,
}

impl GrpcTransport {
    /// A transport from `local` to `peers` (node id to peer URL, e.g.
    /// `http://127.0.0.1:2380`); starts one sender task per peer on the current runtime.
    ///
    /// # Panics
    /// Outside a tokio runtime.
    #[must_use]
    pub fn new(
        local: NodeId,
        cluster_id: u64,
        peers: HashMap<NodeId, String>,
        dialer: tls::Dialer,
    ) -> Self {
        let transport = Self {
            local,
            cluster_id,
            links: RwLock::new(HashMap::new()),
            node: Arc::new(OnceLock::new()),
            runtime: tokio::runtime::Handle::current(),
            dialer,
        };
        transport.update_peers(&peers, &[]);
        transport
    }

    /// Adds the members of `peers` (node id to peer URL) not known yet, moves those whose
    /// URL changed, and forgets those in `removed`. A link's sender task ends when its link
    /// is dropped; what was queued for a moved member is dropped (Raft resends).
    pub fn update_peers(&self, peers: &HashMap<NodeId, String>, removed: &[NodeId]) {
        let mut links = self.links.write().expect("no writer panics");
        for id in removed {
            if links.remove(id).is_some() {
                tracing::info!(peer_id = format!("{:x}", id.0), "peer removed");
            }
        }
        for (&id, url) in peers {
            if id == self.local || links.get(&id).is_some_and(|link| link.url == *url) {
                continue;
            }
            let (queue, rx) = mpsc::channel(PEER_QUEUE_BATCHES);
            self.runtime.spawn(send_loop(
                self.local,
                self.cluster_id,
                id,
                (self.dialer.clone(), url.clone()),
                rx,
                self.node.clone(),
            ));
            tracing::info!(peer_id = format!("{:x}", id.0), url = %url, "peer added");
            let link = Link {
                queue,
                url: url.clone(),
                snapshot_in_flight: Arc::new(AtomicBool::new(false)),
            };
            links.insert(id, link);
        }
    }

    /// Gives the transport the node it reports to. Call once, right after the node starts.
    pub fn attach(&self, node: Node) {
        let _ = self.node.set(node);
    }
}

impl Transport for GrpcTransport {
    fn send(&self, to: NodeId, envelopes: Vec<Envelope>) {
        let links = self.links.read().expect("no writer panics");
        let Some(link) = links.get(&to) else {
            tracing::debug!(peer_id = to.0, "message for an unknown peer");
            return;
        };
        // Full: drop. Raft retransmits, and a backlog to a slow peer must not grow.
        let _ = link.queue.try_send(envelopes);
    }

    fn send_snapshot(&self, to: NodeId, snapshot: OutgoingSnapshot) {
        let report = |delivered| {
            if let Some(node) = self.node.get() {
                node.report_snapshot(to, snapshot.shard, delivered);
            }
        };
        let links = self.links.read().expect("no writer panics");
        let Some(link) = links.get(&to) else {
            report(false);
            return;
        };
        if link.snapshot_in_flight.swap(true, Ordering::AcqRel) {
            report(false);
            return;
        }
        let in_flight = link.snapshot_in_flight.clone();
        let url = link.url.clone();
        let dialer = self.dialer.clone();
        let node = self.node.clone();
        let (local, cluster_id) = (self.local, self.cluster_id);
        self.runtime.spawn(async move {
            let shard = snapshot.shard;
            let delivered = send_snapshot(local, cluster_id, to, (&dialer, &url), snapshot).await;
            if let Err(e) = &delivered {
                tracing::warn!(peer_id = to.0, error = %e, "snapshot send failed");
            }
            in_flight.store(false, Ordering::Release);
            if let Some(node) = node.get() {
                node.report_snapshot(to, shard, delivered.is_ok());
            }
        });
    }
}

async fn connect(
    dialer: &tls::Dialer,
    url: &str,
) -> Result<PeerClient<tonic::transport::Channel>, String> {
    let (endpoint, connector) = dialer.endpoint(url)?;
    let channel = endpoint
        .connect_timeout(CONNECT_TIMEOUT)
        .http2_keep_alive_interval(PEER_PING_INTERVAL)
        .keep_alive_timeout(PEER_PING_TIMEOUT)
        .keep_alive_while_idle(true)
        .connect_with_connector(connector)
        .await
        .map_err(|e| tls::error_chain(&e))?;
    Ok(PeerClient::new(channel)
        .max_decoding_message_size(PEER_MESSAGE_BYTES_MAX)
        .max_encoding_message_size(PEER_MESSAGE_BYTES_MAX))
}

async fn send_loop(
    local: NodeId,
    cluster_id: u64,
    to: NodeId,
    (dialer, url): (tls::Dialer, String),
    mut queue: mpsc::Receiver<Vec<Envelope>>,
    node: Arc<OnceLock<Node>>,
) {
    let mut backoff = BACKOFF_MIN;
    // The reasons logged since the peer was last reachable: each once, not every retry.
    let mut logged = Vec::new();
    loop {
        let mut client = match connect(&dialer, &url).await {
            Ok(client) => client,
            Err(e) => {
                log_failure(to, &url, e, &mut logged);
                if let Some(node) = node.get() {
                    node.report_unreachable(to);
                }
                // What queued up while the peer was away is stale; Raft resends what matters.
                // A closed queue: the member was removed, or moved to another URL.
                loop {
                    match queue.try_recv() {
                        Ok(_) => {}
                        Err(mpsc::error::TryRecvError::Empty) => break,
                        Err(mpsc::error::TryRecvError::Disconnected) => return,
                    }
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
                continue;
            }
        };
        backoff = BACKOFF_MIN;
        let (stream_tx, stream_rx) = mpsc::channel(STREAM_BUFFER);
        let opened = tokio::time::Instant::now();
        let call = tokio::spawn(async move { client.raft(ReceiverStream::new(stream_rx)).await });
        loop {
            let Some(mut envelopes) = queue.recv().await else {
                return;
            };
            while envelopes.len() < BATCH_ENVELOPES_MAX {
                match queue.try_recv() {
                    Ok(more) => envelopes.extend(more),
                    Err(_) => break,
                }
            }
            let batch = pb::RaftBatch {
                from: local.0,
                to: to.0,
                cluster_id,
                envelopes: envelopes
                    .into_iter()
                    .map(|e| pb::Envelope {
                        shard_id: e.shard.0,
                        message: e.message,
                    })
                    .collect(),
            };
            if stream_tx.send(batch).await.is_err() {
                break;
            }
        }
        drop(stream_tx);
        let ended = call.await;
        if opened.elapsed() >= HEALTHY_STREAM {
            logged.clear();
        }
        if let Ok(Err(status)) = ended {
            // In TLS 1.3 a refused client certificate shows here, not at connect.
            let mut error = status.message().to_string();
            if let Some(source) = std::error::Error::source(&status) {
                error = format!("{error}: {}", tls::error_chain(source));
            }
            log_failure(to, &url, error, &mut logged);
            if status.code() == tonic::Code::FailedPrecondition && status.message() == node::REMOVED
            {
                if let Some(node) = node.get() {
                    node.removed_by_peer(to);
                }
                return;
            }
        }
        if let Some(node) = node.get() {
            node.report_unreachable(to);
        }
    }
}

/// Logs why `to` cannot be reached: each reason once as a warning while the peer stays
/// unreachable (an operator must see a refused certificate), repeats only at debug level.
fn log_failure(to: NodeId, url: &str, error: String, logged: &mut Vec<String>) {
    if logged.contains(&error) {
        tracing::debug!(peer_id = format!("{:x}", to.0), error = %error, "peer unreachable");
        return;
    }
    tracing::warn!(peer_id = format!("{:x}", to.0), url = %url, error = %error, "cannot reach peer");
    if logged.len() >= LOGGED_FAILURES_MAX {
        logged.remove(0);
    }
    logged.push(error);
}

async fn send_snapshot(
    local: NodeId,
    cluster_id: u64,
    to: NodeId,
    (dialer, url): (&tls::Dialer, &str),
    snapshot: OutgoingSnapshot,
) -> Result<(), String> {
    let mut client = connect(dialer, url).await?;
    let shard = snapshot.shard;
    let (chunk_tx, mut chunk_rx) = mpsc::channel(SNAPSHOT_READ_AHEAD);
    let mut chunks = snapshot.chunks;
    // Reading the state machine is blocking IO: keep it off the async workers.
    tokio::task::spawn_blocking(move || {
        for chunk in chunks.by_ref() {
            let failed = chunk.is_err();
            if chunk_tx.blocking_send(chunk).is_err() || failed {
                return;
            }
        }
    });
    let (stream_tx, stream_rx) = mpsc::channel(SNAPSHOT_READ_AHEAD);
    let call = tokio::spawn(async move { client.snapshot(ReceiverStream::new(stream_rx)).await });
    let chunk_message = |message: Vec<u8>, data: Vec<u8>, last: bool| pb::SnapshotChunk {
        from: local.0,
        to: to.0,
        shard_id: shard.0,
        cluster_id,
        message,
        crc32c: crc32c::crc32c(&data),
        data,
        last,
    };
    let mut first = Some(snapshot.message);
    while let Some(chunk) = chunk_rx.recv().await {
        let data = chunk.map_err(|e| e.to_string())?;
        let message = chunk_message(first.take().unwrap_or_default(), data, false);
        if stream_tx.send(message).await.is_err() {
            break;
        }
    }
    let closing = chunk_message(first.take().unwrap_or_default(), Vec::new(), true);
    let _ = stream_tx.send(closing).await;
    drop(stream_tx);
    match call.await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(status)) => Err(status.message().to_string()),
        Err(e) => Err(e.to_string()),
    }
}

/// Takes lease requests to the leader: answered here when this member leads, forwarded to
/// the leader's peer service otherwise.
#[derive(Clone)]
pub struct LeaderLink {
    cluster_id: u64,
    dialer: tls::Dialer,
    /// Shared by every clone; written only when the membership changes.
    peers: Arc<RwLock<HashMap<NodeId, LinkPeer>>>,
}

#[derive(Clone)]
struct LinkPeer {
    url: String,
    client: PeerClient<tonic::transport::Channel>,
}

/// A client of the peer service at `url`; connects when first used.
fn lazy_client(
    dialer: &tls::Dialer,
    url: &str,
) -> Result<PeerClient<tonic::transport::Channel>, String> {
    let (endpoint, connector) = dialer
        .endpoint(url)
        .map_err(|e| format!("peer URL {url}: {e}"))?;
    let channel = endpoint
        .connect_timeout(CONNECT_TIMEOUT)
        .connect_with_connector_lazy(connector);
    Ok(PeerClient::new(channel))
}

impl LeaderLink {
    /// A link to `peers` (node id to peer URL). Connections are made when first used.
    ///
    /// # Errors
    /// A peer URL that is not a valid URI.
    pub fn new(
        cluster_id: u64,
        peers: &HashMap<NodeId, String>,
        dialer: tls::Dialer,
    ) -> Result<Self, String> {
        let mut clients = HashMap::new();
        for (id, url) in peers {
            let client = lazy_client(&dialer, url)?;
            let url = url.clone();
            clients.insert(*id, LinkPeer { url, client });
        }
        Ok(Self {
            cluster_id,
            dialer,
            peers: Arc::new(RwLock::new(clients)),
        })
    }

    /// Adds the members of `peers` (node id to peer URL) not known yet, moves those whose
    /// URL changed, and forgets those in `removed`. A URL that is not a valid URI is skipped
    /// (logged): the member stays unreachable through this link.
    pub fn update_peers(&self, peers: &HashMap<NodeId, String>, removed: &[NodeId]) {
        let mut known = self.peers.write().expect("no writer panics");
        for id in removed {
            known.remove(id);
        }
        for (&id, url) in peers {
            if known.get(&id).is_some_and(|peer| peer.url == *url) {
                continue;
            }
            match lazy_client(&self.dialer, url) {
                Ok(client) => {
                    let url = url.clone();
                    known.insert(id, LinkPeer { url, client });
                }
                Err(e) => {
                    tracing::warn!(peer_id = format!("{:x}", id.0), error = %e, "peer skipped")
                }
            }
        }
    }

    /// Every other member's id with a client to its peer service.
    pub(crate) fn peers(&self) -> Vec<(NodeId, PeerClient<tonic::transport::Channel>)> {
        let known = self.peers.read().expect("no writer panics");
        known
            .iter()
            .map(|(id, peer)| (*id, peer.client.clone()))
            .collect()
    }

    /// A client of member `id`'s peer service, if its URL is known.
    fn client(&self, id: NodeId) -> Option<PeerClient<tonic::transport::Channel>> {
        let known = self.peers.read().expect("no writer panics");
        known.get(&id).map(|peer| peer.client.clone())
    }

    /// Asks member `leader` to make a membership change (add, remove or promote) as the
    /// leader, within `timeout`. `None` if its peer URL is unknown here.
    pub(crate) async fn change_membership(
        &self,
        leader: NodeId,
        change: &MembershipChange,
        timeout: Duration,
    ) -> Option<Result<Vec<Member>, Status>> {
        let mut client = self.client(leader)?;
        let change = match change {
            MembershipChange::Add(member) => pb::membership_request::Change::Add(to_pb(member)),
            MembershipChange::Remove(id) => pb::membership_request::Change::Remove(*id),
            MembershipChange::Promote(id) => pb::membership_request::Change::Promote(*id),
            MembershipChange::UpdatePeers { .. } | MembershipChange::Publish { .. } => {
                unreachable!("only add, remove and promote need the leader")
            }
        };
        let mut request = Request::new(pb::MembershipRequest {
            cluster_id: self.cluster_id,
            to: leader.0,
            change: Some(change),
        });
        request.set_timeout(timeout);
        let answer = client.change_membership(request).await;
        Some(answer.map(|r| r.into_inner().members.into_iter().map(from_pb).collect()))
    }

    /// The cluster id peer requests carry.
    pub(crate) fn cluster_id(&self) -> u64 {
        self.cluster_id
    }

    /// Renews lease `id` at the leader; returns the granted TTL.
    ///
    /// # Errors
    /// `Mvcc(LeaseNotFound)` for an unknown or expired lease; `Timeout` when no leader
    /// answered before the request deadline; `Stopped`.
    pub async fn renew(&self, node: &Node, id: LeaseId) -> Result<i64, NodeError> {
        let ttl = self
            .at_leader(
                node,
                id,
                |node| Box::pin(async move { node.renew_lease(id).await }),
                |mut client, request| {
                    Box::pin(async move {
                        client
                            .lease_renew(request)
                            .await
                            .map(|r| r.into_inner().ttl)
                    })
                },
            )
            .await?;
        if ttl == 0 {
            return Err(NodeError::Mvcc(MvccError::LeaseNotFound));
        }
        Ok(ttl)
    }

    /// The time lease `id` has left by the leader's clock; `None` if it does not exist.
    ///
    /// # Errors
    /// As [`LeaderLink::renew`].
    pub async fn remaining(&self, node: &Node, id: LeaseId) -> Result<Option<Duration>, NodeError> {
        self.at_leader(
            node,
            id,
            |node| Box::pin(async move { node.lease_remaining(id).await }),
            |mut client, request| {
                Box::pin(async move {
                    let answer = client.lease_remaining(request).await?.into_inner();
                    Ok(answer
                        .found
                        .then(|| Duration::from_millis(answer.remaining_ms)))
                })
            },
        )
        .await
    }

    /// Runs `local` if this member leads, else `remote` against the leader, until one
    /// answers or the request's deadline passes.
    async fn at_leader<T>(
        &self,
        node: &Node,
        id: LeaseId,
        local: impl Fn(Node) -> futures::future::BoxFuture<'static, Result<T, NodeError>>,
        remote: impl Fn(
            PeerClient<tonic::transport::Channel>,
            Request<pb::LeaseRequest>,
        ) -> futures::future::BoxFuture<'static, Result<T, Status>>,
    ) -> Result<T, NodeError> {
        let deadline = tokio::time::Instant::now() + node.request_timeout();
        let attempt_timeout = node.election_timeout();
        loop {
            let leader = match tokio::time::timeout_at(deadline, local(node.clone())).await {
                Err(_) => return Err(NodeError::Timeout),
                Ok(Err(NodeError::NotLeader(leader))) => leader,
                Ok(answer) => return answer,
            };
            if let Some(client) = self
                .client(NodeId(leader))
                .filter(|_| leader != node.id().0)
            {
                let mut request = Request::new(pb::LeaseRequest {
                    cluster_id: self.cluster_id,
                    to: leader,
                    id,
                });
                request.set_timeout(attempt_timeout);
                let call = remote(client, request);
                match tokio::time::timeout_at(deadline, call).await {
                    Err(_) => return Err(NodeError::Timeout),
                    Ok(Ok(answer)) => return Ok(answer),
                    // Not (or no longer) the leader, unreachable, timed out: ask again.
                    Ok(Err(status)) => {
                        tracing::debug!(leader_id = leader, error = %status, "lease request to the leader failed");
                    }
                }
            }
            if tokio::time::Instant::now() + FORWARD_RETRY >= deadline {
                return Err(NodeError::Timeout);
            }
            tokio::time::sleep(FORWARD_RETRY).await;
        }
    }
}

/// Asks the member whose peer service is at `url` for the cluster id and the members (the
/// `Members` call, which needs no cluster id), within `timeout`.
///
/// # Errors
/// The member cannot be reached or does not answer in time.
pub async fn ask_members(
    dialer: &tls::Dialer,
    url: &str,
    timeout: Duration,
) -> Result<(u64, Vec<Member>), String> {
    let (endpoint, connector) = dialer.endpoint(url)?;
    let channel = endpoint
        .connect_timeout(timeout)
        .timeout(timeout)
        .connect_with_connector(connector)
        .await
        .map_err(|e| tls::error_chain(&e))?;
    let answer = PeerClient::new(channel)
        .members(pb::MembersRequest {})
        .await
        .map_err(|status| status.message().to_string())?
        .into_inner();
    let members = answer.members.into_iter().map(from_pb).collect();
    Ok((answer.cluster_id, members))
}

/// A member in the peer protocol's terms.
#[must_use]
pub fn to_pb(member: &Member) -> pb::Member {
    pb::Member {
        id: member.id,
        name: member.name.clone(),
        peer_urls: member.peer_urls.clone(),
        client_urls: member.client_urls.clone(),
        is_learner: member.is_learner,
    }
}

/// A member from the peer protocol's terms.
#[must_use]
pub fn from_pb(member: pb::Member) -> Member {
    Member {
        id: member.id,
        name: member.name,
        peer_urls: member.peer_urls,
        client_urls: member.client_urls,
        is_learner: member.is_learner,
    }
}

/// The peer gRPC service.
pub struct PeerService {
    node: Node,
    local: NodeId,
    cluster_id: u64,
    /// The checks made before a membership change forwarded to this member as leader.
    rules: crate::cluster::ReconfigRules,
}

impl PeerService {
    /// Serves peer traffic for `node`.
    #[must_use]
    pub fn new(
        node: Node,
        local: NodeId,
        cluster_id: u64,
        rules: crate::cluster::ReconfigRules,
    ) -> Self {
        Self {
            node,
            local,
            cluster_id,
            rules,
        }
    }

    fn check(&self, cluster_id: u64, to: u64) -> Result<(), Status> {
        if cluster_id != self.cluster_id {
            return Err(Status::failed_precondition(format!(
                "peer traffic for cluster {cluster_id:x}, this is cluster {:x}",
                self.cluster_id
            )));
        }
        if to != self.local.0 {
            return Err(Status::failed_precondition(format!(
                "peer traffic for member {to:x}, this is member {:x}",
                self.local.0
            )));
        }
        Ok(())
    }
}

#[tonic::async_trait]
impl pb::peer_server::Peer for PeerService {
    async fn raft(
        &self,
        request: Request<Streaming<pb::RaftBatch>>,
    ) -> Result<Response<pb::RaftAck>, Status> {
        let mut stream = request.into_inner();
        while let Some(batch) = stream.message().await? {
            self.check(batch.cluster_id, batch.to)?;
            if self.node.was_removed(NodeId(batch.from)) {
                // As etcd tells a removed member that still sends: it stops on this answer.
                return Err(Status::failed_precondition(node::REMOVED));
            }
            let envelopes = batch
                .envelopes
                .into_iter()
                .map(|e| Envelope {
                    shard: ShardId(e.shard_id),
                    message: e.message,
                })
                .collect();
            self.node.step(NodeId(batch.from), envelopes);
        }
        Ok(Response::new(pb::RaftAck {}))
    }

    async fn snapshot(
        &self,
        request: Request<Streaming<pb::SnapshotChunk>>,
    ) -> Result<Response<pb::SnapshotAck>, Status> {
        let mut stream = request.into_inner();
        let mut sink = None;
        while let Some(chunk) = stream.message().await? {
            self.check(chunk.cluster_id, chunk.to)?;
            if crc32c::crc32c(&chunk.data) != chunk.crc32c {
                return Err(Status::data_loss("snapshot chunk failed its checksum"));
            }
            if sink.is_none() {
                let started = self
                    .node
                    .receive_snapshot(NodeId(chunk.from), ShardId(chunk.shard_id), &chunk.message)
                    .map_err(|e| Status::failed_precondition(e.to_string()))?;
                sink = Some(started);
            }
            let writer = sink.as_mut().expect("set above");
            writer
                .write_chunk(&chunk.data)
                .map_err(|e| Status::internal(e.to_string()))?;
            if chunk.last {
                let done = sink.take().expect("set above");
                done.finish()
                    .map_err(|e| Status::unavailable(e.to_string()))?;
                return Ok(Response::new(pb::SnapshotAck {}));
            }
        }
        Err(Status::data_loss(
            "snapshot stream ended before its last chunk",
        ))
    }

    async fn lease_renew(
        &self,
        request: Request<pb::LeaseRequest>,
    ) -> Result<Response<pb::LeaseRenewResponse>, Status> {
        let request = request.into_inner();
        self.check(request.cluster_id, request.to)?;
        // Answered here or not at all: a forwarded request is never forwarded again.
        let ttl = match self.node.renew_lease(request.id).await {
            Ok(ttl) => ttl,
            Err(NodeError::Mvcc(MvccError::LeaseNotFound)) => 0,
            Err(e) => return Err(crate::errors::to_status(e)),
        };
        Ok(Response::new(pb::LeaseRenewResponse { ttl }))
    }

    async fn hash_kv(
        &self,
        request: Request<pb::HashKvRequest>,
    ) -> Result<Response<pb::HashKvResponse>, Status> {
        let request = request.into_inner();
        self.check(request.cluster_id, request.to)?;
        let node = self.node.clone();
        // A full scan of the state machine: off the async workers.
        let (hash, compact_revision, revision) =
            tokio::task::spawn_blocking(move || node.hash_kv(request.revision))
                .await
                .map_err(|e| Status::internal(e.to_string()))?
                .map_err(crate::errors::to_status)?;
        Ok(Response::new(pb::HashKvResponse {
            hash,
            compact_revision,
            revision,
        }))
    }

    async fn lease_remaining(
        &self,
        request: Request<pb::LeaseRequest>,
    ) -> Result<Response<pb::LeaseRemainingResponse>, Status> {
        let request = request.into_inner();
        self.check(request.cluster_id, request.to)?;
        let remaining = self
            .node
            .lease_remaining(request.id)
            .await
            .map_err(crate::errors::to_status)?;
        Ok(Response::new(pb::LeaseRemainingResponse {
            found: remaining.is_some(),
            remaining_ms: remaining.map_or(0, |d| d.as_millis() as u64),
        }))
    }

    async fn change_membership(
        &self,
        request: Request<pb::MembershipRequest>,
    ) -> Result<Response<pb::MembershipResponse>, Status> {
        let request = request.into_inner();
        self.check(request.cluster_id, request.to)?;
        let change = match request.change {
            Some(pb::membership_request::Change::Add(member)) => {
                MembershipChange::Add(from_pb(member))
            }
            Some(pb::membership_request::Change::Remove(id)) => MembershipChange::Remove(id),
            Some(pb::membership_request::Change::Promote(id)) => MembershipChange::Promote(id),
            None => {
                return Err(Status::invalid_argument(
                    "a membership request without a change",
                ))
            }
        };
        // Answered here or not at all: a forwarded change is never forwarded again.
        let members = crate::cluster::change_as_leader(&self.node, self.rules, change).await?;
        Ok(Response::new(pb::MembershipResponse {
            members: members.iter().map(to_pb).collect(),
        }))
    }

    async fn members(
        &self,
        _: Request<pb::MembersRequest>,
    ) -> Result<Response<pb::MembersResponse>, Status> {
        Ok(Response::new(pb::MembersResponse {
            cluster_id: self.cluster_id,
            member_id: self.local.0,
            members: self.node.members().iter().map(to_pb).collect(),
        }))
    }
}
