//! What a learner serves. A learner is not yet a voter and may be far behind, so as in
//! etcd it answers only serializable ranges, `Status` and the `Snapshot` stream, and refuses
//! everything else with `etcdserver: rpc not supported for learner` (Unavailable, so that
//! clients move on to another endpoint). Linearizable ranges are refused in the range
//! handler, which alone sees the request.

use std::convert::Infallible;

use node::Node;
use tonic::body::Body;
use tonic::codegen::http;
use tonic::codegen::{BoxFuture, Context, Poll, Service};
use tonic::server::NamedService;

use crate::errors::{to_status, RequestError};

/// The etcd client API methods a learner serves (a range only when serializable).
const SERVED_BY_LEARNERS: [&str; 3] = [
    "/etcdserverpb.KV/Range",
    "/etcdserverpb.Maintenance/Status",
    "/etcdserverpb.Maintenance/Snapshot",
];

/// Whether a learner serves the gRPC method at `path`.
fn served_by_learners(path: &str) -> bool {
    SERVED_BY_LEARNERS.contains(&path)
}

/// Refuses a learner's request: the error, or nothing if `node` serves it.
///
/// # Errors
/// `NotSupportedForLearner` if `node` is a learner.
pub(crate) fn refuse_if_learner(node: &Node) -> Result<(), tonic::Status> {
    if node.is_learner() {
        return Err(to_status(RequestError::NotSupportedForLearner));
    }
    Ok(())
}

/// Wraps one client service: while the member is a learner, calls to methods it does not
/// serve are answered with the refusal and never reach the service.
#[derive(Clone)]
pub struct LearnerGate<S> {
    inner: S,
    node: Node,
}

impl<S> LearnerGate<S> {
    /// Gates `inner` by `node`'s role.
    pub fn new(inner: S, node: Node) -> Self {
        Self { inner, node }
    }
}

impl<S: NamedService> NamedService for LearnerGate<S> {
    const NAME: &'static str = S::NAME;
}

impl<S> Service<http::Request<Body>> for LearnerGate<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Infallible>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        if !served_by_learners(request.uri().path()) {
            if let Err(status) = refuse_if_learner(&self.node) {
                return Box::pin(async move { Ok(status.into_http()) });
            }
        }
        Box::pin(self.inner.call(request))
    }
}

#[cfg(test)]
mod tests {
    use super::served_by_learners;

    // Proves the gate lets through exactly what etcd's learners serve.
    #[test]
    fn learners_serve_ranges_status_and_backups_only() {
        assert!(served_by_learners("/etcdserverpb.KV/Range"));
        assert!(served_by_learners("/etcdserverpb.Maintenance/Status"));
        assert!(served_by_learners("/etcdserverpb.Maintenance/Snapshot"));
        for refused in [
            "/etcdserverpb.KV/Put",
            "/etcdserverpb.KV/Txn",
            "/etcdserverpb.Watch/Watch",
            "/etcdserverpb.Lease/LeaseGrant",
            "/etcdserverpb.Cluster/MemberList",
            "/etcdserverpb.Maintenance/HashKV",
            "/v3lockpb.Lock/Lock",
            "/v3electionpb.Election/Campaign",
        ] {
            assert!(!served_by_learners(refused), "{refused}");
        }
    }
}
