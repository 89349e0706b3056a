//! The etcd Cluster service over the replicated membership: MemberList, MemberAdd,
//! MemberRemove, MemberUpdate and MemberPromote.
//!
//! The list is this member's copy of the replicated membership, as etcd serves it (no
//! consensus round). A new member's name and client URLs are empty until it has started and
//! published them.
//!
//! Changes go through Raft (`Node::change_membership`). Before adding, removing or promoting,
//! etcd's leader checks that the change is safe ([`check_change`]: its strict
//! reconfiguration checks and its limit of one learner). Only the leader can: it alone knows
//! which members are connected and how far each has caught up. So a member that does not
//! lead forwards the whole call to the leader's peer service (`ChangeMembership`), which
//! checks and proposes in one place, and passes the leader's answer back as it is; through
//! elections it asks again until the request's deadline. One call instead of a check then a
//! proposal from here means one round trip, and no window in which the leader that checked is
//! not the one the proposal reaches. (etcd forwards promotions to the leader the same way.)
//! MemberUpdate needs no check and is proposed where it arrives.

use std::sync::Arc;
use std::time::Duration;

use node::{Member, MembershipChange, Node, NodeError, NodeId, PeerProgress};
use proto::etcdserverpb as pb;
use tonic::{Request, Response, Status};

use crate::errors::{to_status, ApiError, ReconfigError, RequestError};
use crate::header;
use crate::peer::LeaderLink;

/// The checks a leader makes before a membership change (etcd's `--strict-reconfig-check`
/// and `--max-learners`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReconfigRules {
    /// Refuse a change that would leave too few started or connected voters for a quorum.
    /// Off, adding and removing are not checked at all, and promoting only for the
    /// learner's progress (as in etcd).
    pub strict: bool,
    /// Most learners the cluster may have.
    pub max_learners: usize,
}

impl Default for ReconfigRules {
    /// etcd's defaults: strict, one learner.
    fn default() -> Self {
        Self {
            strict: true,
            max_learners: 1,
        }
    }
}

/// A learner may be promoted once its log reaches this share of the leader's (etcd's
/// `readyPercent`, 90%), in tenths.
const LEARNER_READY_TENTHS: u128 = 9;

/// Pause before asking again while there is no leader, or the leader did not answer.
const FORWARD_RETRY: Duration = Duration::from_millis(50);

/// etcd's message for a request that only the leader can answer.
const NOT_LEADER: &str = "etcdserver: not leader";
const MEMBER_NOT_FOUND: &str = "etcdserver: member not found";

/// Makes a new member's id from its sorted canonical peer URLs.
pub type NewMemberId = Arc<dyn Fn(&[String]) -> u64 + Send + Sync>;

/// Decisions the Cluster service leaves to the server: what a valid peer URL is, and how a
/// new member's id is made.
#[derive(Clone)]
pub struct ClusterConfig {
    /// The canonical spelling of a peer URL, or `None` if a member cannot be reached at it.
    pub canonical_peer_url: fn(&str) -> Option<String>,
    /// A new member's id from its sorted canonical peer URLs (etcd hashes them with the
    /// cluster token and the current time, so a member added again gets a new id).
    pub new_member_id: NewMemberId,
    /// The checks made before a change, when this member leads.
    pub rules: ReconfigRules,
}

/// The Cluster service.
pub struct ClusterService {
    node: Node,
    leader: LeaderLink,
    config: ClusterConfig,
}

impl ClusterService {
    /// A Cluster service over `node`, reaching the leader through `leader`.
    #[must_use]
    pub fn new(node: Node, leader: LeaderLink, config: ClusterConfig) -> Self {
        Self {
            node,
            leader,
            config,
        }
    }

    fn header(&self) -> pb::ResponseHeader {
        header(&self.node, self.node.status().revision)
    }

    /// The canonical peer URLs of a request, sorted as etcd sorts them.
    fn peer_urls(&self, urls: &[String]) -> Result<Vec<String>, Status> {
        let mut canonical = urls
            .iter()
            .map(|url| (self.config.canonical_peer_url)(url.trim()))
            .collect::<Option<Vec<String>>>()
            .filter(|urls| !urls.is_empty())
            .ok_or_else(|| to_status(RequestError::InvalidMemberUrls))?;
        canonical.sort();
        Ok(canonical)
    }

    /// Makes `change` at the leader: here if this member leads, else forwarded to it, until
    /// one answers or the request's deadline passes.
    async fn change_at_leader(&self, change: MembershipChange) -> Result<Vec<Member>, Status> {
        let deadline = tokio::time::Instant::now() + self.node.request_timeout();
        let removing = match change {
            MembershipChange::Remove(id) if self.is_member(id) => Some(id),
            _ => None,
        };
        // Whether an earlier attempt of this call may have reached the leader and changed
        // something without an answer getting back.
        let mut unanswered_before = false;
        loop {
            let leader = self.node.leader();
            let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
            let answer = if leader == self.node.id().0 {
                Some(change_as_leader(&self.node, self.config.rules, change.clone()).await)
            } else if leader != 0 {
                self.leader
                    .change_membership(NodeId(leader), &change, remaining)
                    .await
            } else {
                None
            };
            // A member that applies its own removal stops at once, so a leader that removed
            // itself may answer "server stopped", or nothing: the removal is known done when
            // this member applies it too. So is an earlier unanswered attempt's, answered
            // "not found" on the retry. "Not leader" is definite (that member changed
            // nothing), and so is "not found" to a first attempt: the member was removed
            // before this call, by a change this member has not applied yet.
            if let (Some(id), Some(Err(status))) = (removing, &answer) {
                let refused = status.message() == NOT_LEADER
                    || (status.message() == MEMBER_NOT_FOUND && !unanswered_before);
                if !refused {
                    if let Some(members) = self.wait_removed(id).await {
                        return Ok(members);
                    }
                }
            }
            match answer {
                Some(Ok(members)) => return Ok(members),
                // etcd's own errors are the answer; anything else (not the leader any more,
                // unreachable, timed out on the way) is worth asking again.
                Some(Err(status))
                    if status.message() != NOT_LEADER
                        && status.message().starts_with("etcdserver: ") =>
                {
                    return Err(status)
                }
                Some(Err(status)) => {
                    unanswered_before = true;
                    tracing::debug!(leader_id = leader, error = %status, "membership change at the leader failed");
                }
                None => {}
            }
            if tokio::time::Instant::now() + FORWARD_RETRY >= deadline {
                return Err(to_status(NodeError::Timeout));
            }
            tokio::time::sleep(FORWARD_RETRY).await;
        }
    }
}

impl ClusterService {
    fn is_member(&self, id: u64) -> bool {
        self.node.members().iter().any(|m| m.id == id)
    }

    /// The members once member `id` is gone from this member's membership, if that happens
    /// within an election timeout.
    async fn wait_removed(&self, id: u64) -> Option<Vec<Member>> {
        let mut members = self.node.watch_members();
        let gone = members.wait_for(|members| !members.iter().any(|m| m.id == id));
        let found = match tokio::time::timeout(self.node.election_timeout(), gone).await {
            Ok(Ok(members)) => Some(members.clone()),
            _ => None,
        };
        found
    }
}

/// Checks `change` against etcd's rules, then proposes it; only the leader may (anyone
/// else answers etcd's "not leader"). A member counts as connected if the leader heard
/// from it within the last election timeout (see [`Node::peer_progress`]).
///
/// # Errors
/// etcd's status for a refused or failed change.
pub(crate) async fn change_as_leader(
    node: &Node,
    rules: ReconfigRules,
    change: MembershipChange,
) -> Result<Vec<Member>, Status> {
    let check = || {
        let Some(progress) = node.peer_progress() else {
            return Err(ApiError::Node(NodeError::NotLeader(node.leader())));
        };
        check_change(&node.members(), &progress, node.id().0, &change, rules)?;
        Ok(progress)
    };
    let progress = check().map_err(to_status)?;
    let me = node.id().0;
    if change == MembershipChange::Remove(me) {
        // A leader that removes itself first hands leadership to the voter most caught
        // up: once it stops, the others would otherwise wait out an election timeout with
        // no leader. The new leader makes the change: the caller asks again on "not
        // leader". If the hand-over fails, this member makes the change itself.
        if let Some(to) = successor(&progress, me) {
            match node.move_leader(to).await {
                Ok(()) => return Err(to_status(NodeError::NotLeader(to))),
                Err(e) => {
                    tracing::warn!(error = %e, "could not hand leadership over before removing this member")
                }
            }
        }
    }
    node.change_membership(change).await.map_err(to_status)
}

/// The connected voter other than `leader` whose log reaches furthest.
fn successor(progress: &[PeerProgress], leader: u64) -> Option<u64> {
    progress
        .iter()
        .filter(|p| p.id != leader && !p.is_learner && p.recent_active)
        .max_by_key(|p| p.matched)
        .map(|p| p.id)
}

/// etcd 3.4's checks before a membership change, as its leader runs them, in its order:
///
/// - adding a voter: the voters that have started (published their name) must be a quorum
///   of the voters with the new one (strict reconfiguration check), except that a started
///   single member may take a second;
/// - adding any member: every voter must be connected to the leader (etcd: connected for the
///   last 5 s; here: recently active by Raft's progress);
/// - then, as etcd's apply does: the peer URLs must be free, and a learner may be added only
///   below `rules.max_learners`;
/// - removing a voter: the started voters left must be a quorum of the voters left; and,
///   unless the member is already down, the connected voters left must be one too;
/// - promoting: the learner's log must reach 90% of the leader's (a learner the leader has
///   no progress for yet has nothing); the started voters with the learner must be a quorum
///   of the voters with it.
///
/// `members` is the replicated membership, `progress` the leader's view of each member, and
/// `leader` the leader's id. Unknown ids pass: the state machine answers them. With
/// `rules.strict` off, as in etcd, adding skips the started and connected checks, removing
/// skips every check, and promoting checks only the learner's progress.
///
/// # Errors
/// The check that failed, with etcd's error.
pub fn check_change(
    members: &[Member],
    progress: &[PeerProgress],
    leader: u64,
    change: &MembershipChange,
    rules: ReconfigRules,
) -> Result<(), ApiError> {
    let quorum = |n: usize| n / 2 + 1;
    let voters: Vec<&Member> = members.iter().filter(|m| !m.is_learner).collect();
    let started = |members: &[&Member]| members.iter().filter(|m| !m.name.is_empty()).count();
    let active = |id: u64| id == leader || progress.iter().any(|p| p.id == id && p.recent_active);
    let connected = voters.iter().filter(|m| active(m.id)).count();
    match change {
        MembershipChange::Add(member) => {
            if rules.strict {
                // etcd lets a started single member take a second voter (how a cluster
                // restored from a backup grows), though one of two is no quorum.
                let grows_a_single_member = voters.len() == 1 && started(&voters) == 1;
                if !member.is_learner
                    && !grows_a_single_member
                    && started(&voters) < quorum(voters.len() + 1)
                {
                    return Err(ReconfigError::NotEnoughStarted.into());
                }
                if connected < voters.len() {
                    return Err(ReconfigError::Unhealthy.into());
                }
            }
            let taken = members
                .iter()
                .flat_map(|m| &m.peer_urls)
                .any(|url| member.peer_urls.contains(url));
            if taken {
                return Err(mvcc::MvccError::PeerUrlExists.into());
            }
            let learners = members.iter().filter(|m| m.is_learner).count();
            if member.is_learner && learners >= rules.max_learners {
                return Err(ReconfigError::TooManyLearners.into());
            }
        }
        MembershipChange::Remove(_) if !rules.strict => {}
        MembershipChange::Remove(id) => {
            let Some(target) = members.iter().find(|m| m.id == *id) else {
                return Ok(());
            };
            if target.is_learner {
                return Ok(());
            }
            let left: Vec<&Member> = voters.iter().copied().filter(|m| m.id != *id).collect();
            if started(&left) < quorum(left.len()) {
                return Err(ReconfigError::NotEnoughStarted.into());
            }
            // A member that is down is not part of the active quorum: removing it is safe.
            if *id != leader && !active(*id) {
                return Ok(());
            }
            if connected.saturating_sub(1) < quorum(left.len()) {
                return Err(ReconfigError::Unhealthy.into());
            }
        }
        MembershipChange::Promote(id) => {
            let matched = |id: u64| progress.iter().find(|p| p.id == id).map(|p| p.matched);
            let is_learner = members.iter().any(|m| m.id == *id && m.is_learner);
            match (matched(*id), matched(leader)) {
                // Only a learner's progress is checked (a voter is refused as not a learner
                // when the change applies, as etcd refuses it).
                (Some(learner), Some(lead))
                    if is_learner
                        && u128::from(learner) * 10 < u128::from(lead) * LEARNER_READY_TENTHS =>
                {
                    return Err(ReconfigError::LearnerNotReady.into());
                }
                // Added, but not in Raft's configuration yet: it has nothing.
                (None, _) if is_learner => return Err(ReconfigError::LearnerNotReady.into()),
                _ => {}
            }
            if rules.strict && 1 + started(&voters) < quorum(voters.len() + 1) {
                return Err(ReconfigError::NotEnoughStarted.into());
            }
        }
        MembershipChange::UpdatePeers { .. } | MembershipChange::Publish { .. } => {}
    }
    Ok(())
}

/// A member as etcd's API shows it.
fn to_pb(member: &Member) -> pb::Member {
    pb::Member {
        id: member.id,
        name: member.name.clone(),
        peer_ur_ls: member.peer_urls.clone(),
        client_ur_ls: member.client_urls.clone(),
        is_learner: member.is_learner,
    }
}

fn to_pb_list(members: &[Member]) -> Vec<pb::Member> {
    members.iter().map(to_pb).collect()
}

#[tonic::async_trait]
impl pb::cluster_server::Cluster for ClusterService {
    async fn member_add(
        &self,
        request: Request<pb::MemberAddRequest>,
    ) -> Result<Response<pb::MemberAddResponse>, Status> {
        let request = request.into_inner();
        let peer_urls = self.peer_urls(&request.peer_ur_ls)?;
        let member = Member {
            id: (self.config.new_member_id)(&peer_urls),
            name: String::new(),
            peer_urls,
            client_urls: Vec::new(),
            is_learner: request.is_learner,
        };
        let members = self
            .change_at_leader(MembershipChange::Add(member.clone()))
            .await?;
        tracing::info!(
            member_id = format!("{:x}", member.id),
            learner = member.is_learner,
            "member added"
        );
        Ok(Response::new(pb::MemberAddResponse {
            header: Some(self.header()),
            member: Some(to_pb(&member)),
            members: to_pb_list(&members),
        }))
    }

    async fn member_remove(
        &self,
        request: Request<pb::MemberRemoveRequest>,
    ) -> Result<Response<pb::MemberRemoveResponse>, Status> {
        let id = request.into_inner().id;
        let members = self.change_at_leader(MembershipChange::Remove(id)).await?;
        tracing::info!(member_id = format!("{id:x}"), "member removed");
        Ok(Response::new(pb::MemberRemoveResponse {
            header: Some(self.header()),
            members: to_pb_list(&members),
        }))
    }

    async fn member_update(
        &self,
        request: Request<pb::MemberUpdateRequest>,
    ) -> Result<Response<pb::MemberUpdateResponse>, Status> {
        let request = request.into_inner();
        let peer_urls = self.peer_urls(&request.peer_ur_ls)?;
        let members = self
            .node
            .change_membership(MembershipChange::UpdatePeers {
                id: request.id,
                peer_urls,
            })
            .await
            .map_err(to_status)?;
        Ok(Response::new(pb::MemberUpdateResponse {
            header: Some(self.header()),
            members: to_pb_list(&members),
        }))
    }

    async fn member_list(
        &self,
        _: Request<pb::MemberListRequest>,
    ) -> Result<Response<pb::MemberListResponse>, Status> {
        Ok(Response::new(pb::MemberListResponse {
            header: Some(self.header()),
            members: to_pb_list(&self.node.members()),
        }))
    }

    async fn member_promote(
        &self,
        request: Request<pb::MemberPromoteRequest>,
    ) -> Result<Response<pb::MemberPromoteResponse>, Status> {
        let id = request.into_inner().id;
        let members = self.change_at_leader(MembershipChange::Promote(id)).await?;
        tracing::info!(member_id = format!("{id:x}"), "member promoted");
        Ok(Response::new(pb::MemberPromoteResponse {
            header: Some(self.header()),
            members: to_pb_list(&members),
        }))
    }
}

#[cfg(test)]
mod tests;
