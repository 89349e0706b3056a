//! The HTTP/1.1 endpoints etcd serves on its client port next to gRPC: `/health` and
//! `/version`. Operators' probes, load balancers and etcd's own tests call them with curl.

use std::time::Duration;

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use node::Node;

use crate::maintenance::{CLAIMED_ETCD_VERSION, CLUSTER_VERSION};

/// How long `/health` waits for its linearizable read before it answers unhealthy.
const HEALTH_READ_TIMEOUT: Duration = Duration::from_secs(1);

/// The HTTP routes for `node`.
pub fn routes(node: &Node) -> axum::Router {
    let health_node = node.clone();
    axum::Router::new()
        .route(
            "/health",
            get(move || {
                let node = health_node.clone();
                async move { health(&node).await }
            }),
        )
        .route("/version", get(version))
}

/// What answers a path no route serves: gRPC's "unimplemented" to a gRPC call (as tonic
/// answers), Go's plain 404 to anything else (as etcd answers).
pub async fn fallback(request: axum::extract::Request) -> Response {
    let grpc = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"));
    if grpc {
        return tonic::Status::unimplemented("").into_http();
    }
    (StatusCode::NOT_FOUND, "404 page not found\n").into_response()
}

fn json(status: StatusCode, body: String) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// etcd's health check: healthy when no alarm is raised and a linearizable read (a ReadIndex
/// round through the leader) completes in time: `{"health":"true"}` with 200, or
/// `{"health":"false"}` with 503.
async fn health(node: &Node) -> Response {
    let healthy = node.alarms().is_empty()
        && node.status().leader != 0
        && matches!(
            tokio::time::timeout(HEALTH_READ_TIMEOUT, node.read_index()).await,
            Ok(Ok(_))
        );
    let (status, body) = if healthy {
        (StatusCode::OK, r#"{"health":"true"}"#)
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, r#"{"health":"false"}"#)
    };
    json(status, body.to_string())
}

/// The server's and the cluster's version, as etcd spells them.
async fn version() -> Response {
    json(
        StatusCode::OK,
        format!(r#"{{"etcdserver":"{CLAIMED_ETCD_VERSION}","etcdcluster":"{CLUSTER_VERSION}.0"}}"#),
    )
}
