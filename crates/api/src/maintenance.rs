//! The etcd Maintenance service: status, hashes, alarms, defragmentation, backups (the
//! Snapshot stream `etcdctl snapshot save` reads) and leader transfer. Downgrade is not
//! implemented yet and says so.

use mvcc::{Command, CommandResponse};
use node::Node;
use proto::etcdserverpb as pb;
use tonic::{Request, Response, Status};

use crate::convert;
use crate::errors::to_status;
use crate::header;

/// The etcd version `Status` claims. Only a version whose features Concord fully implements
/// may be claimed: Kubernetes switches features on by it (watch progress from 3.5.13).
/// Concord does not serve watches yet, so it claims the 3.4 line's first release.
pub const CLAIMED_ETCD_VERSION: &str = "3.4.0";

/// The cluster version of [`CLAIMED_ETCD_VERSION`] (major.minor), as etcd names it.
pub const CLUSTER_VERSION: &str = "3.4";

/// The Maintenance service.
pub struct MaintenanceService {
    node: Node,
}

impl MaintenanceService {
    /// A Maintenance service for `node`.
    #[must_use]
    pub fn new(node: Node) -> Self {
        Self { node }
    }
}

/// Backup chunks (about a MiB each) queued for a Snapshot stream.
const SNAPSHOT_QUEUE_CHUNKS: usize = 4;

type SnapshotStream =
    std::pin::Pin<Box<dyn futures::Stream<Item = Result<pb::SnapshotResponse, Status>> + Send>>;

#[tonic::async_trait]
impl pb::maintenance_server::Maintenance for MaintenanceService {
    async fn alarm(
        &self,
        request: Request<pb::AlarmRequest>,
    ) -> Result<Response<pb::AlarmResponse>, Status> {
        // Listing goes through the log too, as in etcd: the answer is the cluster's
        // alarms as of a point after the request arrived, whichever member answers.
        let Some(alarm) = convert::alarm_request(&request.into_inner()) else {
            return Ok(Response::new(pb::AlarmResponse {
                header: Some(header(&self.node, self.node.status().revision)),
                alarms: Vec::new(),
            }));
        };
        let applied = self
            .node
            .propose(Command::Alarm(alarm))
            .await
            .map_err(to_status)?;
        match applied.result.map_err(to_status)? {
            CommandResponse::Alarm(alarms) => Ok(Response::new(pb::AlarmResponse {
                header: Some(header(&self.node, applied.revision)),
                alarms: alarms.into_iter().map(convert::alarm_member).collect(),
            })),
            other => Err(crate::kv::mismatch(&other)),
        }
    }

    async fn status(
        &self,
        _: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        let status = self.node.status();
        let db_size = i64::try_from(status.db_size).unwrap_or(i64::MAX);
        // The records' bytes leave out the engine's page overhead; never report more in use
        // than the file holds.
        let db_size_in_use =
            i64::try_from(status.db_size_in_use.min(status.db_size)).unwrap_or(i64::MAX);
        Ok(Response::new(pb::StatusResponse {
            header: Some(header(&self.node, status.revision)),
            version: CLAIMED_ETCD_VERSION.to_string(),
            db_size,
            leader: status.leader,
            raft_index: status.raft_index,
            raft_term: status.term,
            raft_applied_index: status.applied_index,
            errors: self
                .node
                .alarms()
                .into_iter()
                .map(convert::alarm_error)
                .collect(),
            db_size_in_use,
            is_learner: self.node.is_learner(),
        }))
    }

    /// etcd's defragmentation: this member's state machine file is rewritten without the
    /// space compaction freed, and the smaller file replaces it. Applying waits meanwhile
    /// (as in etcd, writes stall); unlike etcd, reads go on, served from the old file.
    async fn defragment(
        &self,
        _: Request<pb::DefragmentRequest>,
    ) -> Result<Response<pb::DefragmentResponse>, Status> {
        let started = std::time::Instant::now();
        let before = self.node.status().db_size;
        self.node.defragment().await.map_err(to_status)?;
        let status = self.node.status();
        tracing::info!(
            before_bytes = before,
            after_bytes = status.db_size,
            took_ms = started.elapsed().as_millis() as u64,
            "defragmented the state machine"
        );
        Ok(Response::new(pb::DefragmentResponse {
            header: Some(header(&self.node, status.revision)),
        }))
    }

    async fn hash(
        &self,
        _: Request<pb::HashRequest>,
    ) -> Result<Response<pb::HashResponse>, Status> {
        let (hash, _, revision) = self.node.hash_kv(0).map_err(to_status)?;
        Ok(Response::new(pb::HashResponse {
            header: Some(header(&self.node, revision)),
            hash,
        }))
    }

    async fn hash_kv(
        &self,
        request: Request<pb::HashKvRequest>,
    ) -> Result<Response<pb::HashKvResponse>, Status> {
        let revision = request.into_inner().revision;
        let (hash, compact_revision, hash_revision) =
            self.node.hash_kv(revision).map_err(to_status)?;
        let current = self.node.status().revision;
        Ok(Response::new(pb::HashKvResponse {
            header: Some(header(&self.node, current)),
            hash,
            compact_revision,
            hash_revision,
        }))
    }

    type SnapshotStream = SnapshotStream;

    /// A backup of this member's state machine (see `node::restore_backup`), streamed in
    /// chunks read from one consistent view on a blocking thread; the last message carries
    /// the SHA-256 of the rest. The queue between them holds a few chunks: a slow client
    /// slows the reading, it does not make the server hold the whole backup.
    async fn snapshot(
        &self,
        _: Request<pb::SnapshotRequest>,
    ) -> Result<Response<Self::SnapshotStream>, Status> {
        let chunks = self.node.backup().map_err(to_status)?;
        let header = header(&self.node, self.node.status().revision);
        let (tx, rx) = tokio::sync::mpsc::channel(SNAPSHOT_QUEUE_CHUNKS);
        tokio::task::spawn_blocking(move || {
            let mut chunks = chunks.peekable();
            while let Some(chunk) = chunks.next() {
                let message = chunk.map_err(to_status).map(|blob| pb::SnapshotResponse {
                    header: Some(header),
                    // Unknown until the end: 0 marks the last message, as etcd's does.
                    remaining_bytes: u64::from(chunks.peek().is_some()),
                    blob,
                    version: String::new(),
                });
                let failed = message.is_err();
                if tx.blocking_send(message).is_err() || failed {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn move_leader(
        &self,
        request: Request<pb::MoveLeaderRequest>,
    ) -> Result<Response<pb::MoveLeaderResponse>, Status> {
        let target = request.into_inner().target_id;
        self.node.move_leader(target).await.map_err(to_status)?;
        Ok(Response::new(pb::MoveLeaderResponse {
            header: Some(header(&self.node, self.node.status().revision)),
        }))
    }

    async fn downgrade(
        &self,
        _: Request<pb::DowngradeRequest>,
    ) -> Result<Response<pb::DowngradeResponse>, Status> {
        Err(Status::unimplemented("downgrade is not implemented yet"))
    }
}
