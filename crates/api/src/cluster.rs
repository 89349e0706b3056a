//! The etcd Cluster service: the member list. Membership changes are not implemented yet.

use node::Node;
use proto::etcdserverpb as pb;
use tonic::{Request, Response, Status};

use crate::header;

/// One member of the cluster, as `MemberList` reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    /// Member id.
    pub id: u64,
    /// Member name.
    pub name: String,
    /// Peer URLs.
    pub peer_urls: Vec<String>,
    /// Client URLs.
    pub client_urls: Vec<String>,
}

/// The cluster's members (fixed at bootstrap for now).
pub type Membership = Vec<Member>;

/// The Cluster service.
pub struct ClusterService {
    node: Node,
    members: Membership,
}

impl ClusterService {
    /// A Cluster service reporting `members`.
    #[must_use]
    pub fn new(node: Node, members: Membership) -> Self {
        Self { node, members }
    }

    fn list(&self) -> Vec<pb::Member> {
        self.members
            .iter()
            .map(|m| pb::Member {
                id: m.id,
                name: m.name.clone(),
                peer_ur_ls: m.peer_urls.clone(),
                client_ur_ls: m.client_urls.clone(),
                is_learner: false,
            })
            .collect()
    }
}

const NO_MEMBERSHIP_CHANGES: &str = "membership changes are not implemented yet";

#[tonic::async_trait]
impl pb::cluster_server::Cluster for ClusterService {
    async fn member_add(
        &self,
        _: Request<pb::MemberAddRequest>,
    ) -> Result<Response<pb::MemberAddResponse>, Status> {
        Err(Status::unimplemented(NO_MEMBERSHIP_CHANGES))
    }

    async fn member_remove(
        &self,
        _: Request<pb::MemberRemoveRequest>,
    ) -> Result<Response<pb::MemberRemoveResponse>, Status> {
        Err(Status::unimplemented(NO_MEMBERSHIP_CHANGES))
    }

    async fn member_update(
        &self,
        _: Request<pb::MemberUpdateRequest>,
    ) -> Result<Response<pb::MemberUpdateResponse>, Status> {
        Err(Status::unimplemented(NO_MEMBERSHIP_CHANGES))
    }

    async fn member_list(
        &self,
        _: Request<pb::MemberListRequest>,
    ) -> Result<Response<pb::MemberListResponse>, Status> {
        let revision = self.node.status().revision;
        Ok(Response::new(pb::MemberListResponse {
            header: Some(header(&self.node, revision)),
            members: self.list(),
        }))
    }

    async fn member_promote(
        &self,
        _: Request<pb::MemberPromoteRequest>,
    ) -> Result<Response<pb::MemberPromoteResponse>, Status> {
        Err(Status::unimplemented(NO_MEMBERSHIP_CHANGES))
    }
}
