//! The etcd KV service over a [`Node`].

use mvcc::{
    AlarmAction, AlarmRequest, AlarmType, Command, CommandResponse, CompactRequest, MvccError,
};
use node::Node;
use proto::etcdserverpb as pb;
use tonic::{Request, Response, Status};

use crate::convert;
use crate::errors::to_status;
use crate::{header, ApiConfig};

/// The KV service.
pub struct KvService {
    node: Node,
    config: ApiConfig,
}

impl KvService {
    /// A KV service answering from `node`.
    #[must_use]
    pub fn new(node: Node, config: ApiConfig) -> Self {
        Self { node, config }
    }

    async fn check_quota(&self, cost: u64) -> Result<(), Status> {
        check_quota(&self.node, &self.config, cost).await
    }

    async fn propose(
        &self,
        command: Command,
    ) -> Result<(CommandResponse, pb::ResponseHeader), Status> {
        propose(&self.node, command).await
    }
}

/// etcd's quota check (`v3rpc/quota.go`), made before anything else about a write: a
/// write that adds `cost` bytes and would reach the quota raises this member's NOSPACE
/// alarm through the log, so every member refuses such writes from then on, and is
/// refused. Writes that add nothing pass.
///
/// The quota counts the bytes the data occupies, not the file's size: the engine reuses
/// the space compaction frees, so the data fits again once compaction freed room, even
/// before an operator defragments.
pub(crate) async fn check_quota(node: &Node, config: &ApiConfig, cost: u64) -> Result<(), Status> {
    let Some(quota) = config.quota_backend_bytes else {
        return Ok(());
    };
    if cost == 0 || node.bytes_in_use().saturating_add(cost) < quota {
        return Ok(());
    }
    let (_, member_id, _) = node.header_fields();
    let raised = node
        .alarms()
        .iter()
        .any(|a| a.member_id == member_id && a.alarm == AlarmType::NoSpace);
    if !raised {
        let alarm = Command::Alarm(AlarmRequest {
            action: AlarmAction::Activate,
            member_id,
            alarm: Some(AlarmType::NoSpace),
        });
        // As etcd, the write is refused whether or not raising the alarm succeeded.
        if let Err(e) = node.propose(alarm).await {
            tracing::warn!(error = %e, "could not raise the NOSPACE alarm");
        }
    }
    Err(to_status(MvccError::NoSpace))
}

/// Proposes `command` and waits for its result, with the header of the revision after it.
pub(crate) async fn propose(
    node: &Node,
    command: Command,
) -> Result<(CommandResponse, pb::ResponseHeader), Status> {
    let applied = node.propose(command).await.map_err(to_status)?;
    let response = applied.result.map_err(to_status)?;
    Ok((response, header(node, applied.revision)))
}

#[tonic::async_trait]
impl pb::kv_server::Kv for KvService {
    #[tracing::instrument(skip_all, name = "kv.range")]
    async fn range(
        &self,
        request: Request<pb::RangeRequest>,
    ) -> Result<Response<pb::RangeResponse>, Status> {
        let range =
            convert::range_request(request.into_inner(), &self.config).map_err(to_status)?;
        if !range.serializable {
            crate::learner::refuse_if_learner(&self.node)?;
            self.node.read_index().await.map_err(to_status)?;
        }
        let (result, revision) = self.node.range(&range).map_err(to_status)?;
        Ok(Response::new(pb::RangeResponse {
            header: Some(header(&self.node, revision)),
            ..convert::range_response(result)
        }))
    }

    #[tracing::instrument(skip_all, name = "kv.put")]
    async fn put(
        &self,
        request: Request<pb::PutRequest>,
    ) -> Result<Response<pb::PutResponse>, Status> {
        let put = convert::put_request(request.into_inner(), &self.config);
        self.check_quota(put.cost).await?;
        let put = put.request.map_err(to_status)?;
        match self.propose(Command::Put(put)).await? {
            (CommandResponse::Put(result), header) => Ok(Response::new(pb::PutResponse {
                header: Some(header),
                ..convert::put_response(result)
            })),
            (other, _) => Err(mismatch(&other)),
        }
    }

    #[tracing::instrument(skip_all, name = "kv.delete_range")]
    async fn delete_range(
        &self,
        request: Request<pb::DeleteRangeRequest>,
    ) -> Result<Response<pb::DeleteRangeResponse>, Status> {
        let delete =
            convert::delete_request(request.into_inner(), &self.config).map_err(to_status)?;
        match self.propose(Command::DeleteRange(delete)).await? {
            (CommandResponse::DeleteRange(result), header) => {
                Ok(Response::new(pb::DeleteRangeResponse {
                    header: Some(header),
                    ..convert::delete_response(result)
                }))
            }
            (other, _) => Err(mismatch(&other)),
        }
    }

    #[tracing::instrument(skip_all, name = "kv.txn")]
    async fn txn(
        &self,
        request: Request<pb::TxnRequest>,
    ) -> Result<Response<pb::TxnResponse>, Status> {
        let txn = convert::txn_request(request.into_inner(), &self.config);
        self.check_quota(txn.cost).await?;
        let txn = txn.request.map_err(to_status)?;
        // As etcd: a txn that writes nothing is a read, served from local state after a
        // ReadIndex round unless every operation is a serializable range.
        if txn.is_read_only() {
            if !convert::txn_is_serializable(&txn) {
                self.node.read_index().await.map_err(to_status)?;
            }
            let (result, revision) = self.node.read_txn(&txn).map_err(to_status)?;
            let header = header(&self.node, revision);
            return Ok(Response::new(convert::txn_response(result, &header)));
        }
        match self.propose(Command::Txn(txn)).await? {
            (CommandResponse::Txn(result), header) => {
                Ok(Response::new(convert::txn_response(result, &header)))
            }
            (other, _) => Err(mismatch(&other)),
        }
    }

    #[tracing::instrument(skip_all, name = "kv.compact")]
    async fn compact(
        &self,
        request: Request<pb::CompactionRequest>,
    ) -> Result<Response<pb::CompactionResponse>, Status> {
        let request = request.into_inner();
        let command = Command::Compact(CompactRequest {
            revision: request.revision,
            physical: request.physical,
        });
        let (_, header) = self.propose(command).await?;
        Ok(Response::new(pb::CompactionResponse {
            header: Some(header),
        }))
    }
}

/// The error for an apply result of the wrong kind: a broken invariant, reported rather than
/// panicking in a request handler.
pub(crate) fn mismatch(response: &CommandResponse) -> Status {
    Status::internal(format!("etcdserver: unexpected apply result {response:?}"))
}
