//! The gRPC edge of a member: the etcd v3 client API over a [`node::Node`], and the peer
//! transport between nodes.
//!
//! This crate decodes, validates limits and rules that etcd checks before consensus, calls
//! the node, and encodes; it decides nothing else. Every domain error becomes a gRPC status
//! in one function ([`errors::to_status`]) with etcd's exact code and message.
//!
//! It owns no state and refuses to know storage or Raft: `node` is its only way in.

pub mod authority;
pub mod cluster;
pub mod convert;
pub mod corruption;
pub mod election;
pub mod errors;
pub mod http;
pub mod kv;
pub mod learner;
pub mod lease;
pub mod lock;
pub mod maintenance;
pub mod peer;
pub mod watch;

mod waiter;

use node::Node;
use proto::etcdserverpb as pb;

pub use cluster::ClusterConfig;
pub use peer::{GrpcTransport, LeaderLink, PeerService};

/// etcd's default backend quota: 2 GiB.
pub const DEFAULT_QUOTA_BACKEND_BYTES: u64 = 2 * 1024 * 1024 * 1024;

/// Limits of the client API.
#[derive(Clone, Copy, Debug)]
pub struct ApiConfig {
    /// Largest request accepted (etcd's `--max-request-bytes`, 1.5 MiB).
    pub max_request_bytes: usize,
    /// Most operations in one txn branch (etcd's `--max-txn-ops`, 128).
    pub max_txn_ops: usize,
    /// The backend quota in bytes (etcd's `--quota-backend-bytes`, 2 GiB), `None` when
    /// disabled. A write that would take the data past it raises the NOSPACE alarm.
    pub quota_backend_bytes: Option<u64>,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            max_request_bytes: 1536 * 1024,
            max_txn_ops: 128,
            quota_backend_bytes: Some(DEFAULT_QUOTA_BACKEND_BYTES),
        }
    }
}

impl ApiConfig {
    /// The gRPC decoding limit. Requests up to it are decoded and, when over
    /// `max_request_bytes`, answered with etcd's `etcdserver: request is too large`; anything
    /// larger is refused by gRPC before it is buffered. etcd's own limit is the request limit
    /// plus 512 KiB, past which its clients see a bare gRPC size error; twice the request limit
    /// keeps the bound on memory while giving clients the clear error for any plausible
    /// mistake.
    #[must_use]
    pub fn grpc_receive_bytes_max(&self) -> usize {
        2 * self.max_request_bytes + 512 * 1024
    }
}

/// The response header for a reply at `revision`.
pub(crate) fn header(node: &Node, revision: i64) -> pb::ResponseHeader {
    let (cluster_id, member_id, raft_term) = node.header_fields();
    pb::ResponseHeader {
        cluster_id,
        member_id,
        revision,
        raft_term,
    }
}

/// The client services (KV, Watch, Lease, Lock, Election, Maintenance, Cluster) for `node`,
/// ready to add to a server.
#[must_use]
pub fn client_routes(
    node: &Node,
    cluster: ClusterConfig,
    config: ApiConfig,
    leader: LeaderLink,
) -> tonic::service::Routes {
    let limit = config.grpc_receive_bytes_max();
    let kv = pb::kv_server::KvServer::new(kv::KvService::new(node.clone(), config))
        .max_decoding_message_size(limit)
        .max_encoding_message_size(usize::MAX);
    let maintenance = pb::maintenance_server::MaintenanceServer::new(
        maintenance::MaintenanceService::new(node.clone()),
    )
    .max_decoding_message_size(limit);
    let cluster = pb::cluster_server::ClusterServer::new(cluster::ClusterService::new(
        node.clone(),
        leader.clone(),
        cluster,
    ))
    .max_decoding_message_size(limit);
    let watch = pb::watch_server::WatchServer::new(watch::WatchService::new(
        node.clone(),
        config.max_request_bytes,
    ))
    .max_decoding_message_size(limit)
    .max_encoding_message_size(usize::MAX);
    let lease =
        pb::lease_server::LeaseServer::new(lease::LeaseService::new(node.clone(), config, leader))
            .max_decoding_message_size(limit);
    let lock = proto::v3lockpb::lock_server::LockServer::new(lock::LockService::new(node.clone()))
        .max_decoding_message_size(limit);
    let election = proto::v3electionpb::election_server::ElectionServer::new(
        election::ElectionService::new(node.clone()),
    )
    .max_decoding_message_size(limit);
    let grpc = tonic::service::Routes::new(learner::LearnerGate::new(kv, node.clone()))
        .add_service(learner::LearnerGate::new(watch, node.clone()))
        .add_service(learner::LearnerGate::new(lease, node.clone()))
        .add_service(learner::LearnerGate::new(lock, node.clone()))
        .add_service(learner::LearnerGate::new(election, node.clone()))
        .add_service(learner::LearnerGate::new(maintenance, node.clone()))
        .add_service(learner::LearnerGate::new(cluster, node.clone()));
    // etcd serves its HTTP endpoints on the client port too.
    let router = grpc
        .into_axum_router()
        .merge(http::routes(node))
        .fallback(http::fallback);
    tonic::service::Routes::from(router)
}

/// The peer service for `node`.
#[must_use]
pub fn peer_routes(
    node: &Node,
    cluster_id: u64,
    rules: cluster::ReconfigRules,
) -> tonic::service::Routes {
    let local = node::NodeId(node.status().member_id);
    let service = proto::peer::peer_server::PeerServer::new(PeerService::new(
        node.clone(),
        local,
        cluster_id,
        rules,
    ))
    .max_decoding_message_size(peer::PEER_MESSAGE_BYTES_MAX);
    tonic::service::Routes::new(service)
}
