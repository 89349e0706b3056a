//! The Watch API against real etcd and through real clients: the same writes and the same
//! watch requests go to Debian's etcd and to a Concord cluster (through a follower), and the
//! answers must agree: created and cancelled replies, refusals and their reasons, compaction
//! replies, and every watcher's events (with previous versions and filters). Response
//! boundaries of live events are not compared: etcd sends one response per write and Concord
//! one per applied batch, and both are allowed (a response holds whole revisions).

use std::collections::BTreeMap;
use std::time::Duration;

use proto::etcdserverpb as pb;
use proto::etcdserverpb::kv_client::KvClient;
use proto::etcdserverpb::watch_client::WatchClient;
use proto::etcdserverpb::watch_request::RequestUnion;
use testkit::{Cluster, Etcd};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

use crate::diff::{delete, put};
use crate::{binary, ELECTION_DEADLINE};

/// How long a stream must stay quiet before the replies to a request are taken as complete.
const QUIET: Duration = Duration::from_millis(400);

/// One server's watch stream and what it answered so far.
struct Side {
    kv: KvClient<Channel>,
    requests: mpsc::Sender<pb::WatchRequest>,
    responses: tonic::Streaming<pb::WatchResponse>,
    /// Replies other than events, normalised, in order.
    control: Vec<String>,
    /// Every event each watcher got, in order.
    events: BTreeMap<i64, Vec<proto::mvccpb::Event>>,
}

impl Side {
    /// Opens a stream with `first` as its first request: etcd answers a stream's headers only
    /// with its first reply.
    async fn open(channel: Channel, first: RequestUnion) -> Side {
        let (requests, rx) = mpsc::channel(16);
        requests
            .send(pb::WatchRequest {
                request_union: Some(first),
            })
            .await
            .expect("queue the first request");
        let mut client = WatchClient::new(channel.clone());
        let responses = client
            .watch(ReceiverStream::new(rx))
            .await
            .expect("open a watch stream")
            .into_inner();
        let mut side = Side {
            kv: KvClient::new(channel),
            requests,
            responses,
            control: Vec::new(),
            events: BTreeMap::new(),
        };
        side.settle().await;
        side
    }

    /// Reads replies until the stream has been quiet for [`QUIET`].
    async fn settle(&mut self) {
        while let Ok(reply) = tokio::time::timeout(QUIET, self.responses.message()).await {
            let Some(reply) = reply.expect("a watch reply, not an error") else {
                panic!("the server ended the watch stream");
            };
            if reply.events.is_empty() {
                let header = reply.header.map(|h| h.revision);
                self.control.push(format!(
                    "id={} created={} canceled={} compact={} reason={:?} fragment={} header_revision={header:?}",
                    reply.watch_id, reply.created, reply.canceled, reply.compact_revision,
                    reply.cancel_reason, reply.fragment
                ));
            } else {
                self.events
                    .entry(reply.watch_id)
                    .or_default()
                    .extend(reply.events);
            }
        }
    }

    async fn send(&mut self, request: RequestUnion) {
        self.requests
            .send(pb::WatchRequest {
                request_union: Some(request),
            })
            .await
            .expect("the stream takes requests");
        self.settle().await;
    }
}

fn create(key: &[u8], range_end: &[u8], start_revision: i64) -> pb::WatchCreateRequest {
    pb::WatchCreateRequest {
        key: key.to_vec(),
        range_end: range_end.to_vec(),
        start_revision,
        ..Default::default()
    }
}

/// The same watch conversation with both servers.
struct Both {
    etcd: Side,
    concord: Side,
    transcript: Vec<String>,
}

impl Both {
    async fn request(&mut self, request: RequestUnion) {
        self.transcript.push(format!("{request:?}"));
        tokio::join!(self.etcd.send(request.clone()), self.concord.send(request));
        self.compare();
    }

    /// The same write to both; the revisions must agree.
    async fn write(&mut self, request: WriteReq) {
        self.transcript.push(format!("{request:?}"));
        let revision = |r: Result<i64, tonic::Status>| r.expect("the write succeeds");
        let (a, b) = tokio::join!(
            request.send(&mut self.etcd.kv),
            request.send(&mut self.concord.kv)
        );
        assert_eq!(revision(a), revision(b), "write {request:?}");
        tokio::join!(self.etcd.settle(), self.concord.settle());
        self.compare();
    }

    fn compare(&self) {
        let context = || self.transcript.join("\n");
        assert_eq!(
            self.etcd.control,
            self.concord.control,
            "replies differ after:\n{}",
            context()
        );
        assert_eq!(
            self.etcd.events,
            self.concord.events,
            "events differ after:\n{}",
            context()
        );
    }
}

#[derive(Clone, Debug)]
enum WriteReq {
    Put(pb::PutRequest),
    Delete(pb::DeleteRangeRequest),
    Txn(pb::TxnRequest),
    Compact(i64),
}

impl WriteReq {
    async fn send(&self, kv: &mut KvClient<Channel>) -> Result<i64, tonic::Status> {
        let revision = |h: Option<pb::ResponseHeader>| h.map_or(0, |h| h.revision);
        Ok(match self.clone() {
            WriteReq::Put(r) => revision(kv.put(r).await?.into_inner().header),
            WriteReq::Delete(r) => revision(kv.delete_range(r).await?.into_inner().header),
            WriteReq::Txn(r) => revision(kv.txn(r).await?.into_inner().header),
            WriteReq::Compact(revision) => {
                kv.compact(pb::CompactionRequest {
                    revision,
                    physical: true,
                })
                .await?;
                revision
            }
        })
    }
}

fn txn_puts(keys: &[&[u8]]) -> pb::TxnRequest {
    pb::TxnRequest {
        success: keys
            .iter()
            .map(|k| pb::RequestOp {
                request: Some(pb::request_op::Request::RequestPut(put(k, b"t"))),
            })
            .collect(),
        ..Default::default()
    }
}

// Proves the Watch API answers as etcd does, request by request: watchers from the past (with
// previous versions, through deletes and multi-key txns), from now and from the future;
// client-chosen and duplicate ids; empty ranges; NOPUT and NODELETE filters; cancelling known
// and unknown ids; negative start revisions; and watchers behind a compaction.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_answers_as_etcd_does() {
    let etcd = Etcd::start().expect("start the reference etcd");
    let mut cluster = Cluster::start(binary(), 3, &[]).expect("start a Concord cluster");
    let leader = cluster.wait_for_leader(ELECTION_DEADLINE).await.unwrap();
    let follower = (leader + 1) % 3;
    use RequestUnion::{CancelRequest, CreateRequest};
    // A watcher on a key never written opens both streams.
    let first = CreateRequest(create(b"nothing", b"", 0));
    let (etcd_side, concord_side) = tokio::join!(
        Side::open(etcd.channel(), first.clone()),
        Side::open(cluster.channel(follower), first)
    );
    let mut both = Both {
        etcd: etcd_side,
        concord: concord_side,
        transcript: Vec::new(),
    };
    both.compare();
    both.write(WriteReq::Put(put(b"a", b"1"))).await; // 2
    both.write(WriteReq::Put(put(b"b", b"1"))).await; // 3
    both.write(WriteReq::Put(put(b"a", b"2"))).await; // 4
    both.write(WriteReq::Delete(delete(b"a", b""))).await; // 5
    both.write(WriteReq::Txn(txn_puts(&[b"c", b"d"]))).await; // 6
    both.write(WriteReq::Delete(delete(b"b", b"e"))).await; // 7

    // From the past, with previous versions.
    both.request(CreateRequest(pb::WatchCreateRequest {
        prev_kv: true,
        ..create(b"a", b"", 2)
    }))
    .await;
    // Everything, from now.
    both.request(CreateRequest(create(b"", b"\0", 0))).await;
    // A prefix from the start, deletes filtered out; puts filtered out.
    both.request(CreateRequest(pb::WatchCreateRequest {
        filters: vec![pb::watch_create_request::FilterType::Nodelete as i32],
        ..create(b"a", b"z", 1)
    }))
    .await;
    both.request(CreateRequest(pb::WatchCreateRequest {
        filters: vec![pb::watch_create_request::FilterType::Noput as i32],
        prev_kv: true,
        ..create(b"a", b"z", 1)
    }))
    .await;
    // Refusals: an empty range, a duplicate id.
    both.request(CreateRequest(create(b"b", b"a", 0))).await;
    both.request(CreateRequest(create(b"a", b"a", 0))).await;
    both.request(CreateRequest(pb::WatchCreateRequest {
        watch_id: 7,
        ..create(b"c", b"", 0)
    }))
    .await;
    both.request(CreateRequest(pb::WatchCreateRequest {
        watch_id: 7,
        ..create(b"d", b"", 0)
    }))
    .await;
    // Automatic ids skip the chosen one later on.
    for _ in 0..4 {
        both.request(CreateRequest(create(b"q", b"", 0))).await;
    }
    // Negative start revisions.
    both.request(CreateRequest(create(b"c", b"", -1))).await;
    both.request(CreateRequest(create(b"c", b"", -5))).await;
    // From the future.
    both.request(CreateRequest(create(b"f", b"", 10))).await;
    // Cancels: a known id, an unknown one.
    both.request(CancelRequest(pb::WatchCancelRequest { watch_id: 1 }))
        .await;
    both.request(CancelRequest(pb::WatchCancelRequest { watch_id: 99 }))
        .await;

    // Live events reach the watchers still there.
    both.write(WriteReq::Put(put(b"a", b"3"))).await; // 8
    both.write(WriteReq::Put(put(b"f", b"1"))).await; // 9
    both.write(WriteReq::Put(put(b"f", b"2"))).await; // 10
    both.write(WriteReq::Put(put(b"f", b"3"))).await; // 11
    both.write(WriteReq::Txn(txn_puts(&[b"a", b"c", b"f"])))
        .await; // 12
    both.write(WriteReq::Delete(delete(b"a", b"\0"))).await; // 13

    // Compaction: a watcher that starts below it is told, one at it is served.
    both.write(WriteReq::Compact(9)).await;
    both.request(CreateRequest(create(b"a", b"", 3))).await;
    both.request(CreateRequest(pb::WatchCreateRequest {
        prev_kv: true,
        ..create(b"f", b"", 9)
    }))
    .await;
    both.request(CreateRequest(create(b"a", b"\0", 10))).await;
    drop(etcd);
}
