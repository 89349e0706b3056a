//! The etcd Lease service over a [`Node`]: grant, revoke, keepalive (a stream), time to live
//! and listing. Grants and revokes go through the log. Keepalives and the time a lease has
//! left are the leader's, from its lessor's memory (see `node`'s lessor): a member that does
//! not lead forwards them to the one that does, as etcd does.

use std::pin::Pin;

use futures::Stream;
use mvcc::{Command, CommandResponse, LeaseGrantRequest, MvccError, MAX_LEASE_TTL};
use node::{Node, NodeError};

use crate::peer::LeaderLink;
use proto::etcdserverpb as pb;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::errors::to_status;
use crate::kv::{check_quota, mismatch, propose};
use crate::{header, ApiConfig};

/// Keepalive responses waiting for gRPC to send them, per stream.
const KEEPALIVE_QUEUE: usize = 16;
/// What a lease's record costs against the backend quota (etcd counts the lease's
/// encoded size; ours is its 8-byte key and 17-byte record).
const LEASE_COST: u64 = 25;

/// The Lease service.
pub struct LeaseService {
    node: Node,
    config: ApiConfig,
    leader: LeaderLink,
}

impl LeaseService {
    /// A Lease service over `node`; `leader` reaches the leader's lessor.
    #[must_use]
    pub fn new(node: Node, config: ApiConfig, leader: LeaderLink) -> Self {
        Self {
            node,
            config,
            leader,
        }
    }

    fn min_ttl(&self) -> i64 {
        min_ttl(&self.node)
    }
}

/// etcd's minimum TTL: one and a half election timeouts, rounded up to whole seconds, so
/// that a lease survives a leader election.
pub(crate) fn min_ttl(node: &Node) -> i64 {
    let millis = node.election_timeout().as_millis() as i64;
    (3 * millis / 2 + 999) / 1000
}

type KeepAliveStream =
    Pin<Box<dyn Stream<Item = Result<pb::LeaseKeepAliveResponse, Status>> + Send>>;

#[tonic::async_trait]
impl pb::lease_server::Lease for LeaseService {
    #[tracing::instrument(skip_all, name = "lease.grant")]
    async fn lease_grant(
        &self,
        request: Request<pb::LeaseGrantRequest>,
    ) -> Result<Response<pb::LeaseGrantResponse>, Status> {
        let request = request.into_inner();
        check_quota(&self.node, &self.config, LEASE_COST).await?;
        if request.ttl > MAX_LEASE_TTL {
            return Err(to_status(MvccError::LeaseTtlTooLarge));
        }
        let grant = LeaseGrantRequest {
            id: if request.id == 0 {
                self.node.unique_id()
            } else {
                request.id
            },
            ttl: request.ttl.max(self.min_ttl()),
        };
        match propose(&self.node, Command::LeaseGrant(grant)).await? {
            (CommandResponse::LeaseGrant(granted), header) => {
                Ok(Response::new(pb::LeaseGrantResponse {
                    header: Some(header),
                    id: granted.id,
                    ttl: granted.ttl,
                    error: String::new(),
                }))
            }
            (other, _) => Err(mismatch(&other)),
        }
    }

    #[tracing::instrument(skip_all, name = "lease.revoke")]
    async fn lease_revoke(
        &self,
        request: Request<pb::LeaseRevokeRequest>,
    ) -> Result<Response<pb::LeaseRevokeResponse>, Status> {
        let id = request.into_inner().id;
        let (_, header) = propose(&self.node, Command::LeaseRevoke(id)).await?;
        Ok(Response::new(pb::LeaseRevokeResponse {
            header: Some(header),
        }))
    }

    type LeaseKeepAliveStream = KeepAliveStream;

    #[tracing::instrument(skip_all, name = "lease.keep_alive")]
    async fn lease_keep_alive(
        &self,
        request: Request<Streaming<pb::LeaseKeepAliveRequest>>,
    ) -> Result<Response<KeepAliveStream>, Status> {
        let mut requests = request.into_inner();
        let (out, responses) = mpsc::channel(KEEPALIVE_QUEUE);
        let node = self.node.clone();
        let leader = self.leader.clone();
        tokio::spawn(async move {
            loop {
                let request = tokio::select! {
                    request = requests.message() => request,
                    () = out.closed() => return,
                };
                let request = match request {
                    Ok(Some(request)) => request,
                    Ok(None) => return,
                    Err(status) => {
                        let _ = out.send(Err(status)).await;
                        return;
                    }
                };
                let response = keep_alive(&node, &leader, request.id).await;
                let failed = response.is_err();
                if out.send(response).await.is_err() || failed {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(responses))))
    }

    #[tracing::instrument(skip_all, name = "lease.time_to_live")]
    async fn lease_time_to_live(
        &self,
        request: Request<pb::LeaseTimeToLiveRequest>,
    ) -> Result<Response<pb::LeaseTimeToLiveResponse>, Status> {
        let request = request.into_inner();
        self.node.read_index().await.map_err(to_status)?;
        let revision = self.node.current_revision();
        let header = Some(header(&self.node, revision));
        // As etcd: an unknown lease is TTL -1, not an error.
        let unknown = pb::LeaseTimeToLiveResponse {
            header,
            id: request.id,
            ttl: -1,
            ..Default::default()
        };
        let Some(lease) = self.node.lease(request.id) else {
            return Ok(Response::new(unknown));
        };
        let left = self
            .leader
            .remaining(&self.node, request.id)
            .await
            .map_err(to_status)?;
        // Revoked or expired since the read: as unknown.
        let Some(left) = left else {
            return Ok(Response::new(unknown));
        };
        Ok(Response::new(pb::LeaseTimeToLiveResponse {
            header,
            id: lease.id,
            ttl: left.as_secs() as i64,
            granted_ttl: lease.ttl,
            keys: if request.keys { lease.keys } else { Vec::new() },
        }))
    }

    #[tracing::instrument(skip_all, name = "lease.leases")]
    async fn lease_leases(
        &self,
        _request: Request<pb::LeaseLeasesRequest>,
    ) -> Result<Response<pb::LeaseLeasesResponse>, Status> {
        self.node.read_index().await.map_err(to_status)?;
        let revision = self.node.current_revision();
        let leases = self
            .node
            .leases()
            .into_iter()
            .map(|lease| pb::LeaseStatus { id: lease.id })
            .collect();
        Ok(Response::new(pb::LeaseLeasesResponse {
            header: Some(header(&self.node, revision)),
            leases,
        }))
    }
}

/// One keepalive, answered by the leader: renewed (the granted TTL), or TTL 0 for a lease
/// that does not exist or has expired (as etcd, not an error). Any other error ends the
/// stream with it, as etcd's does.
async fn keep_alive(
    node: &Node,
    leader: &LeaderLink,
    id: i64,
) -> Result<pb::LeaseKeepAliveResponse, Status> {
    let ttl = match leader.renew(node, id).await {
        Ok(ttl) => ttl,
        Err(NodeError::Mvcc(MvccError::LeaseNotFound)) => 0,
        Err(e) => return Err(to_status(e)),
    };
    Ok(pb::LeaseKeepAliveResponse {
        header: Some(header(node, node.current_revision())),
        id,
        ttl,
    })
}
