//! The etcd Watch service: one bidirectional stream per call, any number of watchers on it,
//! served by the member's watch hub (`watch` crate).
//!
//! Two tasks per stream: one reads the client's requests (create, cancel, progress) and
//! queues their answers on the stream's hub queue, so that a `created` is queued before the
//! watcher's first event; the other turns the queued messages into `WatchResponse`s. The
//! first blocks when the queue is full, which stops reading requests: a client that does
//! not read its responses is held back by gRPC flow control, never by server memory.

use std::pin::Pin;
use std::sync::Arc;

use ::watch::{KeyRange, Message, WatchError, WatchSpec, WatchStream, NO_WATCH_ID};
use futures::Stream;
use node::{Node, NodeError};
use proto::etcdserverpb as pb;
use proto::mvccpb;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::convert::key_value;
use crate::errors::to_status;
use crate::header;

/// Responses converted and waiting for gRPC to send them, per stream.
const OUTGOING_QUEUE: usize = 16;

/// The Watch service.
pub struct WatchService {
    node: Node,
    /// Responses larger than this are split for watchers that accept fragments.
    max_response_bytes: usize,
}

impl WatchService {
    /// A Watch service over `node`'s hub; `max_request_bytes` is etcd's fragment size.
    #[must_use]
    pub fn new(node: Node, max_request_bytes: usize) -> Self {
        Self {
            node,
            max_response_bytes: max_request_bytes,
        }
    }
}

type ResponseStream = Pin<Box<dyn Stream<Item = Result<pb::WatchResponse, Status>> + Send>>;

/// Whether the call carries etcd's `hasleader: true` metadata (clientv3.WithRequireLeader):
/// refused without a leader, ended if the leader is lost.
fn requires_leader(metadata: &tonic::metadata::MetadataMap) -> bool {
    metadata
        .get("hasleader")
        .is_some_and(|value| value.as_bytes() == b"true")
}

#[tonic::async_trait]
impl pb::watch_server::Watch for WatchService {
    type WatchStream = ResponseStream;

    async fn watch(
        &self,
        request: Request<Streaming<pb::WatchRequest>>,
    ) -> Result<Response<ResponseStream>, Status> {
        let require_leader = requires_leader(request.metadata());
        if require_leader && self.node.leader() == 0 {
            return Err(to_status(NodeError::NoLeader));
        }
        let (stream, messages) = self.node.watch_hub().open();
        let stream = Arc::new(stream);
        let (out, responses) = mpsc::channel(OUTGOING_QUEUE);
        tokio::spawn(receive(stream.clone(), request.into_inner(), out.clone()));
        tokio::spawn(send(
            self.node.clone(),
            stream,
            messages,
            out,
            require_leader,
            self.max_response_bytes,
        ));
        Ok(Response::new(Box::pin(ReceiverStream::new(responses))))
    }
}

/// Reads the client's requests until it closes its side (the watchers live on) or the call
/// ends.
async fn receive(
    stream: Arc<WatchStream>,
    mut requests: Streaming<pb::WatchRequest>,
    out: mpsc::Sender<Result<pb::WatchResponse, Status>>,
) {
    use pb::watch_request::RequestUnion;
    loop {
        let request = match requests.message().await {
            Ok(Some(request)) => request,
            Ok(None) => return,
            Err(status) => {
                let _ = out.send(Err(status)).await;
                return;
            }
        };
        let delivered = match request.request_union {
            Some(RequestUnion::CreateRequest(create)) => create_watcher(&stream, &create).await,
            Some(RequestUnion::CancelRequest(cancel)) => {
                // As etcd: an unknown id gets no answer.
                !stream.cancel(cancel.watch_id)
                    || stream
                        .send(Message::Canceled {
                            watch_id: cancel.watch_id,
                            revision: stream.current(),
                        })
                        .await
            }
            Some(RequestUnion::ProgressRequest(_)) => {
                // Not answered while a watcher is catching up: the client asks again.
                stream.request_progress();
                true
            }
            None => true,
        };
        if !delivered {
            return;
        }
    }
}

/// Creates a watcher and queues its `created` (or the refusal). False if the client is gone.
async fn create_watcher(stream: &WatchStream, create: &pb::WatchCreateRequest) -> bool {
    let created = watch_spec(create).and_then(|spec| stream.watch(spec));
    match created {
        Ok((watch_id, revision)) => {
            if !stream.send(Message::Created { watch_id, revision }).await {
                return false;
            }
            stream.activate(watch_id);
            true
        }
        Err(error) => {
            stream
                .send(Message::CreateFailed {
                    revision: stream.current(),
                    reason: error.to_string(),
                })
                .await
        }
    }
}

/// A create request as the hub's watcher spec.
///
/// # Errors
/// `EmptyRange` as etcd.
pub fn watch_spec(create: &pb::WatchCreateRequest) -> Result<WatchSpec, WatchError> {
    use pb::watch_create_request::FilterType;
    let filtered = |filter: FilterType| create.filters.contains(&(filter as i32));
    Ok(WatchSpec {
        id: create.watch_id,
        range: KeyRange::new(&create.key, &create.range_end)?,
        start_revision: create.start_revision,
        no_put: filtered(FilterType::Noput),
        no_delete: filtered(FilterType::Nodelete),
        prev_kv: create.prev_kv,
        progress_notify: create.progress_notify,
        fragment: create.fragment,
    })
}

/// Turns queued messages into responses until the call ends. A stream that requires a
/// leader ends with `etcdserver: no leader` when, at a check (one per election timeout, as
/// etcd), the member has none.
async fn send(
    node: Node,
    stream: Arc<WatchStream>,
    mut messages: mpsc::Receiver<Message>,
    out: mpsc::Sender<Result<pb::WatchResponse, Status>>,
    require_leader: bool,
    max_response_bytes: usize,
) {
    let mut leader_check = tokio::time::interval(node.election_timeout());
    leader_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            message = messages.recv() => {
                let Some(message) = message else { break };
                for response in responses(&node, message, max_response_bytes) {
                    if out.send(Ok(response)).await.is_err() {
                        break;
                    }
                }
            }
            () = out.closed() => break,
            _ = leader_check.tick(), if require_leader => {
                if node.leader() == 0 {
                    let _ = out.send(Err(to_status(NodeError::NoLeader))).await;
                    break;
                }
            }
        }
    }
    // The watchers go with the stream once the request side lets go too.
    drop(stream);
}

/// The responses one queued message becomes (several when a fragmented one is split).
#[must_use]
pub fn responses(node: &Node, message: Message, max_bytes: usize) -> Vec<pb::WatchResponse> {
    let reply = |revision, watch_id| pb::WatchResponse {
        header: Some(header(node, revision)),
        watch_id,
        ..pb::WatchResponse::default()
    };
    match message {
        Message::Created { watch_id, revision } => vec![pb::WatchResponse {
            created: true,
            ..reply(revision, watch_id)
        }],
        Message::CreateFailed { revision, reason } => vec![pb::WatchResponse {
            created: true,
            canceled: true,
            cancel_reason: reason,
            ..reply(revision, NO_WATCH_ID)
        }],
        Message::Canceled { watch_id, revision } => vec![pb::WatchResponse {
            canceled: true,
            ..reply(revision, watch_id)
        }],
        Message::Events {
            watch_id,
            revision,
            events,
            prev_kv,
            fragment,
        } => {
            let response = pb::WatchResponse {
                events: events.iter().map(|e| event(e, prev_kv)).collect(),
                ..reply(revision, watch_id)
            };
            if fragment {
                fragments(response, max_bytes)
            } else {
                vec![response]
            }
        }
        // As etcd: the compaction answer carries no header revision, and `canceled`.
        Message::Compacted {
            watch_id,
            compact_revision,
        } => vec![pb::WatchResponse {
            canceled: true,
            compact_revision,
            ..reply(0, watch_id)
        }],
        Message::Progress { watch_id, revision } => vec![reply(revision, watch_id)],
    }
}

fn event(event: &mvcc::Event, with_prev_kv: bool) -> mvccpb::Event {
    let kind = match event.kind {
        mvcc::EventKind::Put => mvccpb::event::EventType::Put,
        mvcc::EventKind::Delete => mvccpb::event::EventType::Delete,
    };
    mvccpb::Event {
        r#type: kind as i32,
        kv: Some(key_value(event.kv.clone())),
        prev_kv: event
            .prev_kv
            .clone()
            .filter(|_| with_prev_kv)
            .map(key_value),
    }
}

/// etcd's fragmentation: a response of at least `max_bytes` with two or more events is sent
/// as several, each as full as it can be below `max_bytes` (but never empty), all but the
/// last marked `fragment`. A revision may thus span responses; clients that ask for
/// fragments reassemble them.
#[must_use]
pub fn fragments(response: pb::WatchResponse, max_bytes: usize) -> Vec<pb::WatchResponse> {
    use prost::Message as _;
    if response.encoded_len() < max_bytes || response.events.len() < 2 {
        return vec![response];
    }
    let mut events = response.events.into_iter().peekable();
    let template = pb::WatchResponse {
        events: Vec::new(),
        fragment: true,
        ..response
    };
    let base = template.encoded_len();
    let mut out = Vec::new();
    loop {
        let mut part = template.clone();
        let mut size = base;
        while let Some(next) = events.peek() {
            let grown = size + prost::encoding::message::encoded_len(11, next);
            if !part.events.is_empty() && grown >= max_bytes {
                break;
            }
            size = grown;
            part.events.extend(events.next());
        }
        let last = events.peek().is_none();
        part.fragment = !last;
        out.push(part);
        if last {
            return out;
        }
    }
}
