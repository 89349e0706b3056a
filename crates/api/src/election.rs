//! etcd's Election service (`v3electionpb`): the campaigners of an election are keys under
//! `name/`, one per lease, ordered by creation revision; the oldest leads and its value is
//! what the election publishes. This is etcd's election recipe run on the server, as etcd
//! runs it:
//!
//! - Campaign creates `name/<lease in hex>` with the lease and the value unless it exists
//!   (if it exists with another value, the value is replaced, keeping the key's age), then
//!   waits until no older key remains, watching the deletion of the newest older one at a
//!   time. The answer names the key and its creation revision, which a txn can compare to
//!   act only while leading. A campaign without a lease gets one of 60 seconds that nobody
//!   renews, as etcd's session gives it.
//! - Proclaim replaces the value if the key still has the creation revision the leader was
//!   given; Resign deletes the key on the same condition (and is no error otherwise).
//! - Leader reads the oldest key; Observe streams it and every later put to the leader's
//!   key, and when that key is deleted, the next leader.
//!
//! A Campaign abandoned while it waits (the client gave up) resigns, so the election does not
//! wait for a client that left.
//!
//! As etcd's (which runs the recipe through a client and returns its errors as they are),
//! every error comes back with the code `Unknown` and etcd's message.

use std::pin::Pin;

use ::watch::{KeyRange, Message};
use futures::Stream;
use mvcc::{
    prefix_end, Command, CommandResponse, Compare, CompareResult, CompareTarget,
    DeleteRangeRequest, EventKind, KeyValue, LeaseGrantRequest, PutRequest, RangeRequest,
    RequestOp, ResponseOp, Revision, SortOrder, SortTarget, TxnRequest,
};
use node::{Node, NodeError};
use proto::etcdserverpb::ResponseHeader;
use proto::v3electionpb as pb;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::convert::key_value;
use crate::errors::{election_status, recipe_status, to_status, ElectionError, RequestError};
use crate::header;
use crate::kv::{mismatch, propose};
use crate::lease::min_ttl;
use crate::lock::{wait_deleted, watch_from};
use crate::waiter::Waiter;

/// Leader updates waiting for gRPC to send them, per Observe stream. When it is full the
/// stream stops reading its watch, whose own bounded queue then makes it catch up from
/// history: nothing grows without bound.
const OBSERVE_QUEUE: usize = 16;
/// The TTL of the lease a Campaign without one is given (etcd's default session TTL).
const SESSION_TTL: i64 = 60;

/// The Election service.
pub struct ElectionService {
    node: Node,
}

impl ElectionService {
    /// An Election service over `node`.
    #[must_use]
    pub fn new(node: Node) -> Self {
        Self { node }
    }
}

/// A campaigner's key: `name/` and the lease in lowercase hex, written as Go's `%x` writes a
/// signed number (a minus sign before the magnitude).
#[must_use]
pub fn campaign_key(name: &[u8], lease: i64) -> Vec<u8> {
    let mut key = name.to_vec();
    key.push(b'/');
    let hex = if lease < 0 {
        format!("-{:x}", lease.unsigned_abs())
    } else {
        format!("{lease:x}")
    };
    key.extend_from_slice(hex.as_bytes());
    key
}

/// `name/`: every campaigner's key starts with it.
fn election_prefix(name: &[u8]) -> Vec<u8> {
    let mut prefix = name.to_vec();
    prefix.push(b'/');
    prefix
}

/// "If `key` was created at `rev`": the condition under which a campaigner still holds its
/// place.
fn created_at(key: &[u8], rev: Revision) -> Compare {
    Compare {
        result: CompareResult::Equal,
        target: CompareTarget::Create(rev),
        key: key.to_vec(),
        range_end: Vec::new(),
    }
}

/// The txn that resigns the campaigner holding `key` since `rev`.
fn resign_txn(key: &[u8], rev: Revision) -> TxnRequest {
    TxnRequest {
        compare: vec![created_at(key, rev)],
        success: vec![RequestOp::DeleteRange(DeleteRangeRequest {
            key: key.to_vec(),
            range_end: Vec::new(),
            prev_kv: false,
        })],
        failure: Vec::new(),
    }
}

/// Runs a txn through the log; its result and the header after it.
async fn txn(node: &Node, txn: TxnRequest) -> Result<(mvcc::TxnResponse, ResponseHeader), Status> {
    match propose(node, Command::Txn(txn)).await? {
        (CommandResponse::Txn(result), header) => Ok((result, header)),
        (other, _) => Err(mismatch(&other)),
    }
}

/// The oldest key under `prefix` (the leader), read linearizably, with the revision read at.
async fn oldest(node: &Node, prefix: &[u8]) -> Result<(Option<KeyValue>, Revision), Status> {
    node.read_index().await.map_err(to_status)?;
    let first = RangeRequest {
        key: prefix.to_vec(),
        range_end: prefix_end(prefix),
        sort_order: SortOrder::Ascend,
        sort_target: SortTarget::Create,
        limit: 1,
        ..RangeRequest::default()
    };
    let (found, revision) = node.range(&first).map_err(to_status)?;
    Ok((found.kvs.into_iter().next(), revision))
}

/// The leader key a Proclaim or Resign names, checked as etcd's client checks it.
fn leader_key(leader: Option<pb::LeaderKey>) -> Result<pb::LeaderKey, Status> {
    let leader = leader.ok_or_else(|| election_status(ElectionError::MissingLeaderKey))?;
    if leader.key.is_empty() {
        return Err(recipe_status(&to_status(RequestError::KeyNotProvided)));
    }
    Ok(leader)
}

type ObserveStream = Pin<Box<dyn Stream<Item = Result<pb::LeaderResponse, Status>> + Send>>;

#[tonic::async_trait]
impl pb::election_server::Election for ElectionService {
    #[tracing::instrument(skip_all, name = "election.campaign")]
    async fn campaign(
        &self,
        request: Request<pb::CampaignRequest>,
    ) -> Result<Response<pb::CampaignResponse>, Status> {
        self.run_campaign(request.into_inner())
            .await
            .map(Response::new)
            .map_err(|s| recipe_status(&s))
    }

    #[tracing::instrument(skip_all, name = "election.proclaim")]
    async fn proclaim(
        &self,
        request: Request<pb::ProclaimRequest>,
    ) -> Result<Response<pb::ProclaimResponse>, Status> {
        let request = request.into_inner();
        let leader = leader_key(request.leader)?;
        let header = proclaim(
            &self.node,
            &leader.key,
            leader.rev,
            leader.lease,
            request.value,
        )
        .await
        .map_err(|s| recipe_status(&s))?;
        Ok(Response::new(pb::ProclaimResponse {
            header: Some(header),
        }))
    }

    #[tracing::instrument(skip_all, name = "election.leader")]
    async fn leader(
        &self,
        request: Request<pb::LeaderRequest>,
    ) -> Result<Response<pb::LeaderResponse>, Status> {
        let prefix = election_prefix(&request.into_inner().name);
        let (kv, revision) = oldest(&self.node, &prefix)
            .await
            .map_err(|s| recipe_status(&s))?;
        let kv = kv.ok_or_else(|| election_status(ElectionError::NoLeader))?;
        Ok(Response::new(pb::LeaderResponse {
            header: Some(header(&self.node, revision)),
            kv: Some(key_value(kv)),
        }))
    }

    type ObserveStream = ObserveStream;

    #[tracing::instrument(skip_all, name = "election.observe")]
    async fn observe(
        &self,
        request: Request<pb::LeaderRequest>,
    ) -> Result<Response<ObserveStream>, Status> {
        let prefix = election_prefix(&request.into_inner().name);
        let (out, responses) = mpsc::channel(OBSERVE_QUEUE);
        let node = self.node.clone();
        tokio::spawn(async move {
            tokio::select! {
                () = observe(&node, &prefix, &out) => {}
                () = out.closed() => {}
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(responses))))
    }

    #[tracing::instrument(skip_all, name = "election.resign")]
    async fn resign(
        &self,
        request: Request<pb::ResignRequest>,
    ) -> Result<Response<pb::ResignResponse>, Status> {
        let leader = leader_key(request.into_inner().leader)?;
        // A campaigner that no longer holds the key has nothing to give up: as in etcd, that
        // is no error.
        let (_, header) = txn(&self.node, resign_txn(&leader.key, leader.rev))
            .await
            .map_err(|s| recipe_status(&s))?;
        Ok(Response::new(pb::ResignResponse {
            header: Some(header),
        }))
    }
}

impl ElectionService {
    /// Joins the election and waits to lead.
    async fn run_campaign(
        &self,
        request: pb::CampaignRequest,
    ) -> Result<pb::CampaignResponse, Status> {
        let lease = if request.lease == 0 {
            self.session_lease().await?
        } else {
            request.lease
        };
        let prefix = election_prefix(&request.name);
        let key = campaign_key(&request.name, lease);
        // Join unless this lease campaigns already (a retried call keeps its place).
        let join = TxnRequest {
            compare: vec![created_at(&key, 0)],
            success: vec![RequestOp::Put(PutRequest {
                key: key.clone(),
                value: request.value.clone(),
                lease,
                ..PutRequest::default()
            })],
            failure: vec![RequestOp::Range(RangeRequest {
                key: key.clone(),
                ..RangeRequest::default()
            })],
        };
        let (joined, header_at_join) = txn(&self.node, join).await?;
        let mut rev = header_at_join.revision;
        if !joined.succeeded {
            if let Some(ResponseOp::Range(range)) = joined.responses.into_iter().next() {
                if let Some(existing) = range.kvs.into_iter().next() {
                    rev = existing.create_revision;
                    if existing.value != request.value {
                        if let Err(e) =
                            proclaim(&self.node, &key, rev, lease, request.value.clone()).await
                        {
                            let _ = txn(&self.node, resign_txn(&key, rev)).await;
                            return Err(e);
                        }
                    }
                }
            }
        }
        // Dropped while waiting (the client left), the campaign resigns. A failed wait keeps
        // its place, as in etcd: a retried Campaign with the same lease finds it.
        let mut waiter = Waiter::new(self.node.clone(), Command::Txn(resign_txn(&key, rev)));
        let waited = wait_turn(&self.node, &prefix, rev).await;
        waiter.disarm();
        waited?;
        // As etcd, the answer does not look again at the campaigner's own key, and carries
        // the header of the txn that joined.
        Ok(pb::CampaignResponse {
            header: Some(header_at_join),
            leader: Some(pb::LeaderKey {
                name: request.name,
                key,
                rev,
                lease,
            }),
        })
    }

    /// Grants the lease a Campaign without one campaigns with: etcd's session lease, which
    /// nobody renews.
    async fn session_lease(&self) -> Result<i64, Status> {
        let grant = LeaseGrantRequest {
            id: self.node.unique_id(),
            ttl: SESSION_TTL.max(min_ttl(&self.node)),
        };
        match propose(&self.node, Command::LeaseGrant(grant)).await? {
            (CommandResponse::LeaseGrant(granted), _) => Ok(granted.id),
            (other, _) => Err(mismatch(&other)),
        }
    }
}

/// Waits until no key under `prefix` is older than `rev`, watching the deletion of the
/// newest older one at a time.
async fn wait_turn(node: &Node, prefix: &[u8], rev: Revision) -> Result<(), Status> {
    loop {
        node.read_index().await.map_err(to_status)?;
        let ahead = RangeRequest {
            key: prefix.to_vec(),
            range_end: prefix_end(prefix),
            max_create_revision: rev - 1,
            sort_order: SortOrder::Descend,
            sort_target: SortTarget::Create,
            limit: 1,
            ..RangeRequest::default()
        };
        let (ahead, revision) = node.range(&ahead).map_err(to_status)?;
        match ahead.kvs.first() {
            Some(newest) => wait_deleted(node, &newest.key, revision).await?,
            None => return Ok(()),
        }
    }
}

/// Replaces the value of `key` if it was created at `rev`, keeping it attached to `lease`.
async fn proclaim(
    node: &Node,
    key: &[u8],
    rev: Revision,
    lease: i64,
    value: Vec<u8>,
) -> Result<ResponseHeader, Status> {
    let update = TxnRequest {
        compare: vec![created_at(key, rev)],
        success: vec![RequestOp::Put(PutRequest {
            key: key.to_vec(),
            value,
            lease,
            ..PutRequest::default()
        })],
        failure: Vec::new(),
    };
    let (result, header) = txn(node, update).await?;
    if !result.succeeded {
        return Err(election_status(ElectionError::NotLeader));
    }
    Ok(header)
}

/// Feeds `out` the leader of the election under `prefix` and every change of it, as etcd's
/// `Election.Observe` does, until the client leaves or a read or watch fails (then the stream
/// ends, as etcd's does).
async fn observe(
    node: &Node,
    prefix: &[u8],
    out: &mpsc::Sender<Result<pb::LeaderResponse, Status>>,
) {
    let _ = observe_leaders(node, prefix, out).await;
}

/// The body of [`observe`]; `Err` when the stream must end.
async fn observe_leaders(
    node: &Node,
    prefix: &[u8],
    out: &mpsc::Sender<Result<pb::LeaderResponse, Status>>,
) -> Result<(), Status> {
    let send = |kv: KeyValue, revision: Revision| {
        let response = pb::LeaderResponse {
            header: Some(header(node, revision)),
            kv: Some(key_value(kv)),
        };
        async move {
            out.send(Ok(response))
                .await
                .map_err(|_| Status::cancelled("the client left"))
        }
    };
    loop {
        let (leader, revision) = oldest(node, prefix).await?;
        let (leader, revision) = match leader {
            Some(kv) => (kv, revision),
            // Nobody campaigns: the first key put under the prefix (from the revision read
            // on) is the leader.
            None => first_put(node, prefix, revision).await?,
        };
        let key = leader.key.clone();
        send(leader, revision).await?;
        // Every put to the leader's key is news, until it is deleted.
        let (_stream, mut messages) =
            watch_from(node, KeyRange::Key(key), revision + 1, false, false)?;
        'leading: loop {
            match messages.recv().await {
                Some(Message::Events {
                    revision, events, ..
                }) => {
                    for event in events {
                        if event.kind == EventKind::Delete {
                            break 'leading;
                        }
                        send(event.kv.clone(), revision).await?;
                    }
                }
                Some(Message::Compacted { .. } | Message::CreateFailed { .. }) | None => {
                    return Err(to_status(NodeError::Stopped));
                }
                Some(_) => {}
            }
        }
    }
}

/// Waits for the first put under `prefix` from `revision` on; the key and the revision it
/// was put at.
async fn first_put(
    node: &Node,
    prefix: &[u8],
    revision: Revision,
) -> Result<(KeyValue, Revision), Status> {
    let range = KeyRange::Between(prefix.to_vec(), prefix_end(prefix));
    let (_stream, mut messages) = watch_from(node, range, revision, false, true)?;
    loop {
        match messages.recv().await {
            Some(Message::Events { events, .. }) => {
                if let Some(put) = events.iter().find(|e| e.kind == EventKind::Put) {
                    let kv = put.kv.clone();
                    let revision = kv.mod_revision;
                    return Ok((kv, revision));
                }
            }
            Some(Message::Compacted { .. } | Message::CreateFailed { .. }) | None => {
                return Err(to_status(NodeError::Stopped));
            }
            Some(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Proves campaign keys are written as etcd writes them (`%x` of a signed lease id).
    #[test]
    fn campaign_keys_are_name_slash_lease_in_lowercase_hex() {
        assert_eq!(campaign_key(b"e", 100), b"e/64".to_vec());
        assert_eq!(
            campaign_key(b"job", 0x694d_8a2c_1f3b_0b0e),
            b"job/694d8a2c1f3b0b0e".to_vec()
        );
        assert_eq!(campaign_key(b"", 255), b"/ff".to_vec());
        assert_eq!(campaign_key(b"n", -1), b"n/-1".to_vec());
        assert_eq!(
            campaign_key(b"n", i64::MIN),
            b"n/-8000000000000000".to_vec()
        );
    }

    /// A single-member node in memory, and the election service over it.
    mod member {
        use std::sync::Arc;
        use std::time::Duration;

        use node::{Clock, Envelope, Node, NodeConfig, NodeId, OutgoingSnapshot, Transport};

        struct Alone;

        impl Transport for Alone {
            fn send(&self, _: NodeId, _: Vec<Envelope>) {}
            fn send_snapshot(&self, _: NodeId, _: OutgoingSnapshot) {}
        }

        pub(super) async fn start(dir: &std::path::Path) -> Node {
            let config = NodeConfig {
                node_id: NodeId(1),
                cluster_id: 7,
                initial_members: vec![node::Member {
                    id: 1,
                    ..Default::default()
                }],
                tick_interval: Duration::from_millis(10),
                election_ticks: 10,
                heartbeat_ticks: 1,
                snapshot_count: 10_000,
                snapshot_catchup_entries: 1_000,
                request_timeout: Duration::from_secs(5),
                max_pending_proposals: 1_000,
                seed: 1,
                snapshot_dir: dir.to_path_buf(),
                snapshot_keys: None,
                clock: Clock::system(),
                watch: node::WatchConfig::default(),
                watch_progress_notify_interval: node::DEFAULT_WATCH_PROGRESS_NOTIFY_INTERVAL,
                lease_checkpoint_interval: node::DEFAULT_LEASE_CHECKPOINT_INTERVAL,
            };
            let node = Node::start(
                config,
                Arc::new(storage::MemLogStore::new()),
                storage::MemKvStore::new(),
                Arc::new(Alone),
            )
            .expect("the node starts");
            for _ in 0..500 {
                if node.status().leader == 1 {
                    return node;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            panic!("the member did not elect itself");
        }
    }

    use std::time::Duration;

    use futures::StreamExt as _;
    use pb::election_server::Election as _;

    async fn grant(node: &Node, id: i64) {
        let grant = Command::LeaseGrant(LeaseGrantRequest { id, ttl: 60 });
        node.propose(grant)
            .await
            .expect("grant")
            .result
            .expect("granted");
    }

    fn request(name: &str, lease: i64, value: &str) -> Request<pb::CampaignRequest> {
        Request::new(pb::CampaignRequest {
            name: name.into(),
            lease,
            value: value.into(),
        })
    }

    /// The next update of an Observe stream, as `key=value`.
    async fn read(stream: &mut ObserveStream) -> String {
        let response = tokio::time::timeout(Duration::from_secs(5), stream.next())
            .await
            .expect("a leader update")
            .expect("the stream goes on")
            .expect("no error");
        let kv = response.kv.unwrap();
        format!(
            "{}={}",
            String::from_utf8_lossy(&kv.key),
            String::from_utf8_lossy(&kv.value)
        )
    }

    async fn keys_under(node: &Node, prefix: &[u8]) -> Vec<Vec<u8>> {
        node.read_index().await.expect("read index");
        let range = RangeRequest {
            key: prefix.to_vec(),
            range_end: prefix_end(prefix),
            ..RangeRequest::default()
        };
        let (found, _) = node.range(&range).expect("range");
        found.kvs.into_iter().map(|kv| kv.key).collect()
    }

    // Proves Observe streams the leader, each value it proclaims and the next leader once
    // the first resigns, in order, and that its task stops (dropping its watches) when the
    // client leaves.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn observe_follows_values_and_leaders_and_stops_with_its_client() {
        let dir = tempfile::tempdir().unwrap();
        let node = member::start(dir.path()).await;
        let service = ElectionService::new(node.clone());
        for id in [1, 2] {
            grant(&node, id).await;
        }
        let leader = service
            .campaign(request("obs", 1, "first"))
            .await
            .unwrap()
            .into_inner()
            .leader
            .unwrap();
        let mut stream = service
            .observe(Request::new(pb::LeaderRequest { name: "obs".into() }))
            .await
            .unwrap()
            .into_inner();
        let mut seen = Vec::new();
        seen.push(read(&mut stream).await);
        let second = ElectionService::new(node.clone());
        let next = tokio::spawn(async move {
            second
                .campaign(request("obs", 2, "second"))
                .await
                .map(|_| ())
        });
        service
            .proclaim(Request::new(pb::ProclaimRequest {
                leader: Some(leader.clone()),
                value: b"again".to_vec(),
            }))
            .await
            .unwrap();
        service
            .resign(Request::new(pb::ResignRequest {
                leader: Some(leader),
            }))
            .await
            .unwrap();
        seen.push(read(&mut stream).await);
        seen.push(read(&mut stream).await);
        assert_eq!(seen, ["obs/1=first", "obs/1=again", "obs/2=second"]);
        next.await.unwrap().unwrap();
        // The second campaign's own watch (on the key before it) goes away with its task.
        for _ in 0..200 {
            if node.watch_hub().watchers() == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(
            node.watch_hub().watchers(),
            1,
            "observe watches the leader's key"
        );
        drop(stream);
        for _ in 0..200 {
            if node.watch_hub().watchers() == 0 {
                node.shutdown();
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the observer still watches after its client left");
    }

    // Proves a Campaign dropped while it waits resigns (its key goes), and that a Campaign
    // that won keeps its key.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_campaign_given_up_while_waiting_withdraws() {
        let dir = tempfile::tempdir().unwrap();
        let node = member::start(dir.path()).await;
        let service = ElectionService::new(node.clone());
        for id in [1, 2] {
            grant(&node, id).await;
        }
        service.campaign(request("w", 1, "a")).await.unwrap();
        let waiting = tokio::time::timeout(
            Duration::from_millis(300),
            service.campaign(request("w", 2, "b")),
        )
        .await;
        assert!(waiting.is_err(), "the second campaign did not wait");
        for _ in 0..200 {
            if keys_under(&node, b"w/").await == [b"w/1".to_vec()] {
                node.shutdown();
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("left: {:?}", keys_under(&node, b"w/").await);
    }
}
