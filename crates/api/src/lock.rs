//! etcd's Lock service (`v3lockpb`): a lock is a queue of keys under `name/`, one per lease,
//! ordered by creation revision; the holder is the oldest. This is etcd's mutex recipe run
//! on the server: create `name/<lease in hex>` with the lease unless it exists, then wait
//! until no older key remains (watching the deletion of the newest one older than ours, one
//! at a time), and answer with the key. The key's creation revision orders the holders, so it
//! serves as a fencing token; the lock is lost when its lease expires.
//!
//! A Lock call abandoned while it waits (the client gave up) deletes its key, so the queue
//! does not wait for a client that left.
//!
//! As etcd's (whose lock service calls the KV API through a client and returns its errors
//! as they are), every error comes back with the code `Unknown` and etcd's message.

use ::watch::{KeyRange, Message, WatchSpec, WatchStream, AUTO_WATCH_ID};
use mvcc::{
    prefix_end, Command, CommandResponse, Compare, CompareResult, CompareTarget,
    DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, ResponseOp, SortOrder, SortTarget,
    TxnRequest,
};
use node::{Node, NodeError};
use proto::v3lockpb as pb;
use tokio::sync::mpsc;
use tonic::{Request, Response, Status};

use crate::errors::to_status;
use crate::header;
use crate::kv::{mismatch, propose};
use crate::waiter::Waiter;

/// The Lock service.
pub struct LockService {
    node: Node,
}

impl LockService {
    /// A Lock service over `node`.
    #[must_use]
    pub fn new(node: Node) -> Self {
        Self { node }
    }
}

/// The command that deletes one lock key: what Unlock does, and what an abandoned Lock
/// call leaves behind.
fn delete_key(key: Vec<u8>) -> Command {
    Command::DeleteRange(DeleteRangeRequest {
        key,
        range_end: Vec::new(),
        prev_kv: false,
    })
}

/// An error as etcd's lock service returns it: code `Unknown`, the same message.
fn unknown(status: Status) -> Status {
    Status::unknown(status.message())
}

#[tonic::async_trait]
impl pb::lock_server::Lock for LockService {
    #[tracing::instrument(skip_all, name = "lock.lock")]
    async fn lock(
        &self,
        request: Request<pb::LockRequest>,
    ) -> Result<Response<pb::LockResponse>, Status> {
        self.acquire(request.into_inner()).await.map_err(unknown)
    }

    #[tracing::instrument(skip_all, name = "lock.unlock")]
    async fn unlock(
        &self,
        request: Request<pb::UnlockRequest>,
    ) -> Result<Response<pb::UnlockResponse>, Status> {
        let delete = delete_key(request.into_inner().key);
        let (_, header) = propose(&self.node, delete).await.map_err(unknown)?;
        Ok(Response::new(pb::UnlockResponse {
            header: Some(header),
        }))
    }
}

impl LockService {
    /// Joins the queue of `request.name` and waits for its turn.
    async fn acquire(
        &self,
        request: pb::LockRequest,
    ) -> Result<Response<pb::LockResponse>, Status> {
        let mut prefix = request.name;
        prefix.push(b'/');
        let mut key = prefix.clone();
        key.extend_from_slice(format!("{:x}", request.lease).as_bytes());
        // Join the queue unless this lease is in it already (a retried call keeps its place).
        let join = TxnRequest {
            compare: vec![Compare {
                result: CompareResult::Equal,
                target: CompareTarget::Create(0),
                key: key.clone(),
                range_end: Vec::new(),
            }],
            success: vec![RequestOp::Put(PutRequest {
                key: key.clone(),
                lease: request.lease,
                ..PutRequest::default()
            })],
            failure: vec![RequestOp::Range(RangeRequest {
                key: key.clone(),
                ..RangeRequest::default()
            })],
        };
        let (joined, header_at_join) = match propose(&self.node, Command::Txn(join)).await? {
            (CommandResponse::Txn(txn), header) => (txn, header),
            (other, _) => return Err(mismatch(&other)),
        };
        // Created now, or already there (then its range says since when).
        let my_revision = match joined.responses.first() {
            Some(ResponseOp::Range(range)) if !joined.succeeded => range
                .kvs
                .first()
                .map_or(header_at_join.revision, |kv| kv.create_revision),
            _ => header_at_join.revision,
        };
        let mut waiter = Waiter::new(self.node.clone(), delete_key(key.clone()));
        loop {
            self.node.read_index().await.map_err(to_status)?;
            let ahead = RangeRequest {
                key: prefix.clone(),
                range_end: prefix_end(&prefix),
                max_create_revision: my_revision - 1,
                sort_order: SortOrder::Descend,
                sort_target: SortTarget::Create,
                limit: 1,
                ..RangeRequest::default()
            };
            let (ahead, revision) = self.node.range(&ahead).map_err(to_status)?;
            if let Some(newest) = ahead.kvs.first() {
                wait_deleted(&self.node, &newest.key, revision).await?;
                continue;
            }
            // Nobody older is left; the key must still be ours (the lease may have expired
            // while we waited).
            let mine = RangeRequest {
                key: key.clone(),
                ..RangeRequest::default()
            };
            let (mine, revision) = self.node.range(&mine).map_err(to_status)?;
            if mine.kvs.first().map(|kv| kv.create_revision) != Some(my_revision) {
                waiter.disarm();
                return Err(Status::unknown("mutex: session is expired"));
            }
            waiter.disarm();
            return Ok(Response::new(pb::LockResponse {
                header: Some(header(&self.node, revision)),
                key,
            }));
        }
    }
}

/// A watch of `range` from `start`, without puts or deletes as asked; the stream handle
/// (dropping it ends the watch) and its messages.
pub(crate) fn watch_from(
    node: &Node,
    range: KeyRange,
    start: i64,
    no_put: bool,
    no_delete: bool,
) -> Result<(WatchStream, mpsc::Receiver<Message>), Status> {
    let (stream, messages) = node.watch_hub().open();
    let spec = WatchSpec {
        id: AUTO_WATCH_ID,
        range,
        start_revision: start,
        no_put,
        no_delete,
        prev_kv: false,
        progress_notify: false,
        fragment: false,
    };
    let (id, _) = stream
        .watch(spec)
        .map_err(|e| Status::resource_exhausted(e.to_string()))?;
    stream.activate(id);
    Ok((stream, messages))
}

/// Waits until `key`, present at `revision`, is deleted (or its history is compacted away,
/// after which the caller looks again).
pub(crate) async fn wait_deleted(node: &Node, key: &[u8], revision: i64) -> Result<(), Status> {
    let range = KeyRange::Key(key.to_vec());
    let (_stream, mut messages) = watch_from(node, range, revision + 1, true, false)?;
    loop {
        match messages.recv().await {
            Some(Message::Events { .. } | Message::Compacted { .. }) => return Ok(()),
            Some(_) => {}
            None => return Err(to_status(NodeError::Stopped)),
        }
    }
}
