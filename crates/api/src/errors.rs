//! The one place where errors become gRPC statuses, with etcd's exact codes and messages:
//! clients match on the message text.

use mvcc::MvccError;
use node::NodeError;
use tonic::{Code, Status};

/// A request rejected before it reaches the node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RequestError {
    /// An empty key.
    KeyNotProvided,
    /// The encoded request exceeds the configured maximum.
    TooLarge,
    /// A txn with too many operations.
    TooManyOps,
    /// A txn that writes a key twice.
    DuplicateKey,
    /// `ignore_value` with a value.
    ValueProvided,
    /// `ignore_lease` with a lease.
    LeaseProvided,
    /// An unknown sort order or target.
    InvalidSortOption,
    /// An empty `RequestOp`.
    EmptyRequestOp,
    /// A member's peer URLs are missing or not URLs a member can be reached at.
    InvalidMemberUrls,
    /// A learner serves only serializable ranges, status and backups (see
    /// [`crate::learner`]).
    NotSupportedForLearner,
}

/// A membership change refused by etcd's safety checks, which the leader runs before it
/// proposes the change (see [`crate::cluster`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReconfigError {
    /// Too few voters have started to keep a quorum after the change (etcd's strict
    /// reconfiguration check).
    NotEnoughStarted,
    /// Too few voters are connected to the leader to keep a quorum after the change.
    Unhealthy,
    /// The learner to promote has not caught up with the leader.
    LearnerNotReady,
    /// The cluster already has as many learners as it may (etcd's `--max-learners`, 1).
    TooManyLearners,
}

/// Every error a client can see, in one type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ApiError {
    /// Rejected by validation.
    Request(RequestError),
    /// Returned by the node.
    Node(NodeError),
    /// A membership change refused before it was proposed.
    Reconfig(ReconfigError),
}

impl From<ReconfigError> for ApiError {
    fn from(e: ReconfigError) -> Self {
        ApiError::Reconfig(e)
    }
}

impl From<RequestError> for ApiError {
    fn from(e: RequestError) -> Self {
        ApiError::Request(e)
    }
}

impl From<NodeError> for ApiError {
    fn from(e: NodeError) -> Self {
        ApiError::Node(e)
    }
}

impl From<MvccError> for ApiError {
    fn from(e: MvccError) -> Self {
        ApiError::Node(NodeError::Mvcc(e))
    }
}

/// An error of etcd's election recipe, which etcd's election service returns as it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ElectionError {
    /// Proclaim by a campaigner whose key is gone or was created again (etcd's
    /// `ErrElectionNotLeader`).
    NotLeader,
    /// Leader of an election nobody campaigns in (etcd's `ErrElectionNoLeader`).
    NoLeader,
    /// Proclaim or Resign without its `leader` field.
    MissingLeaderKey,
}

impl ElectionError {
    /// etcd's message.
    #[must_use]
    pub fn message(self) -> &'static str {
        match self {
            ElectionError::NotLeader => "election: not leader",
            ElectionError::NoLeader => "election: no leader",
            ElectionError::MissingLeaderKey => "\"leader\" field must be provided",
        }
    }
}

/// The status etcd's lock and election services answer with: they run their recipes
/// through an etcd client and return its errors as they are, so gRPC sends every one with
/// the code `Unknown` and the error's message.
#[must_use]
pub fn recipe_status(status: &Status) -> Status {
    Status::unknown(status.message())
}

/// The status of an election recipe error (code `Unknown`, etcd's message).
#[must_use]
pub fn election_status(error: ElectionError) -> Status {
    Status::unknown(error.message())
}

/// etcd's gRPC code and message for `error`.
#[must_use]
pub fn code_and_message(error: &ApiError) -> (Code, String) {
    use ApiError::{Node, Reconfig, Request};
    let (code, message) = match error {
        Request(RequestError::KeyNotProvided) => {
            (Code::InvalidArgument, "etcdserver: key is not provided")
        }
        Request(RequestError::TooLarge) => {
            (Code::InvalidArgument, "etcdserver: request is too large")
        }
        Request(RequestError::TooManyOps) => (
            Code::InvalidArgument,
            "etcdserver: too many operations in txn request",
        ),
        Request(RequestError::DuplicateKey) => (
            Code::InvalidArgument,
            "etcdserver: duplicate key given in txn request",
        ),
        Request(RequestError::ValueProvided) => {
            (Code::InvalidArgument, "etcdserver: value is provided")
        }
        Request(RequestError::LeaseProvided) => {
            (Code::InvalidArgument, "etcdserver: lease is provided")
        }
        Request(RequestError::InvalidSortOption) => {
            (Code::InvalidArgument, "etcdserver: invalid sort option")
        }
        Request(RequestError::EmptyRequestOp) | Node(NodeError::Mvcc(MvccError::KeyNotFound)) => {
            (Code::InvalidArgument, "etcdserver: key not found")
        }
        // Unavailable, as etcd answers: clients try another endpoint.
        Request(RequestError::NotSupportedForLearner) => (
            Code::Unavailable,
            "etcdserver: rpc not supported for learner",
        ),
        Request(RequestError::InvalidMemberUrls) => (
            Code::InvalidArgument,
            "etcdserver: given member URLs are invalid",
        ),
        Node(NodeError::Mvcc(MvccError::MemberExists)) => (
            Code::FailedPrecondition,
            "etcdserver: member ID already exist",
        ),
        Node(NodeError::Mvcc(MvccError::PeerUrlExists)) => (
            Code::FailedPrecondition,
            "etcdserver: Peer URLs already exists",
        ),
        Node(NodeError::Mvcc(MvccError::MemberNotFound)) => {
            (Code::NotFound, "etcdserver: member not found")
        }
        Node(NodeError::Mvcc(MvccError::MemberNotLearner)) => (
            Code::FailedPrecondition,
            "etcdserver: can only promote a learner member",
        ),
        Reconfig(ReconfigError::NotEnoughStarted) => (
            Code::FailedPrecondition,
            "etcdserver: re-configuration failed due to not enough started members",
        ),
        Reconfig(ReconfigError::Unhealthy) => (Code::Unavailable, "etcdserver: unhealthy cluster"),
        Reconfig(ReconfigError::LearnerNotReady) => (
            Code::FailedPrecondition,
            "etcdserver: can only promote a learner member which is in sync with leader",
        ),
        Reconfig(ReconfigError::TooManyLearners) => (
            Code::FailedPrecondition,
            "etcdserver: too many learner members in cluster",
        ),
        Node(NodeError::Mvcc(MvccError::Compacted)) => (
            Code::OutOfRange,
            "etcdserver: mvcc: required revision has been compacted",
        ),
        Node(NodeError::Mvcc(MvccError::FutureRevision)) => (
            Code::OutOfRange,
            "etcdserver: mvcc: required revision is a future revision",
        ),
        Node(NodeError::Mvcc(MvccError::LeaseNotFound)) => {
            (Code::NotFound, "etcdserver: requested lease not found")
        }
        Node(NodeError::Mvcc(MvccError::LeaseExists)) => {
            (Code::FailedPrecondition, "etcdserver: lease already exists")
        }
        Node(NodeError::Mvcc(MvccError::LeaseTtlTooLarge)) => {
            (Code::OutOfRange, "etcdserver: too large lease TTL")
        }
        Node(NodeError::Mvcc(MvccError::NoSpace)) => (
            Code::ResourceExhausted,
            "etcdserver: mvcc: database space exceeded",
        ),
        Node(NodeError::Mvcc(MvccError::Corrupt)) => {
            (Code::DataLoss, "etcdserver: corrupt cluster")
        }
        Node(NodeError::NoLeader) => (Code::Unavailable, "etcdserver: no leader"),
        Node(NodeError::LeaderChanged) => (Code::Unavailable, "etcdserver: leader changed"),
        Node(NodeError::NotLeader(_)) => (Code::FailedPrecondition, "etcdserver: not leader"),
        Node(NodeError::Timeout) => (Code::Unavailable, "etcdserver: request timed out"),
        Node(NodeError::BadLeaderTransferee) => (
            Code::FailedPrecondition,
            "etcdserver: bad leader transferee",
        ),
        // Not among etcd's gRPC errors: it reaches clients as Unknown.
        Node(NodeError::LeaderTransferTimeout) => (
            Code::Unknown,
            "etcdserver: request timed out, leader transfer took too long",
        ),
        Node(NodeError::TooManyRequests) => {
            (Code::ResourceExhausted, "etcdserver: too many requests")
        }
        Node(NodeError::Stopped) => (Code::Unavailable, "etcdserver: server stopped"),
        Node(NodeError::Mvcc(MvccError::Storage(detail)) | NodeError::Storage(detail)) => {
            return (
                Code::Internal,
                format!("etcdserver: storage error: {detail}"),
            );
        }
    };
    (code, message.to_string())
}

/// The status for `error`.
#[must_use]
pub fn to_status(error: impl Into<ApiError>) -> Status {
    let (code, message) = code_and_message(&error.into());
    Status::new(code, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    // Proves every error maps to etcd's exact code and message (clients match on the text).
    #[test]
    fn every_error_maps_to_etcds_code_and_message() {
        let table: Vec<(ApiError, Code, &str)> = vec![
            (
                RequestError::KeyNotProvided.into(),
                Code::InvalidArgument,
                "etcdserver: key is not provided",
            ),
            (
                RequestError::TooLarge.into(),
                Code::InvalidArgument,
                "etcdserver: request is too large",
            ),
            (
                RequestError::TooManyOps.into(),
                Code::InvalidArgument,
                "etcdserver: too many operations in txn request",
            ),
            (
                RequestError::DuplicateKey.into(),
                Code::InvalidArgument,
                "etcdserver: duplicate key given in txn request",
            ),
            (
                RequestError::ValueProvided.into(),
                Code::InvalidArgument,
                "etcdserver: value is provided",
            ),
            (
                RequestError::LeaseProvided.into(),
                Code::InvalidArgument,
                "etcdserver: lease is provided",
            ),
            (
                RequestError::InvalidSortOption.into(),
                Code::InvalidArgument,
                "etcdserver: invalid sort option",
            ),
            (
                RequestError::EmptyRequestOp.into(),
                Code::InvalidArgument,
                "etcdserver: key not found",
            ),
            (
                MvccError::KeyNotFound.into(),
                Code::InvalidArgument,
                "etcdserver: key not found",
            ),
            (
                MvccError::Compacted.into(),
                Code::OutOfRange,
                "etcdserver: mvcc: required revision has been compacted",
            ),
            (
                MvccError::FutureRevision.into(),
                Code::OutOfRange,
                "etcdserver: mvcc: required revision is a future revision",
            ),
            (
                MvccError::LeaseNotFound.into(),
                Code::NotFound,
                "etcdserver: requested lease not found",
            ),
            (
                MvccError::LeaseExists.into(),
                Code::FailedPrecondition,
                "etcdserver: lease already exists",
            ),
            (
                MvccError::LeaseTtlTooLarge.into(),
                Code::OutOfRange,
                "etcdserver: too large lease TTL",
            ),
            (
                MvccError::NoSpace.into(),
                Code::ResourceExhausted,
                "etcdserver: mvcc: database space exceeded",
            ),
            (
                MvccError::Corrupt.into(),
                Code::DataLoss,
                "etcdserver: corrupt cluster",
            ),
            (
                RequestError::InvalidMemberUrls.into(),
                Code::InvalidArgument,
                "etcdserver: given member URLs are invalid",
            ),
            (
                MvccError::MemberExists.into(),
                Code::FailedPrecondition,
                "etcdserver: member ID already exist",
            ),
            (
                MvccError::PeerUrlExists.into(),
                Code::FailedPrecondition,
                "etcdserver: Peer URLs already exists",
            ),
            (
                MvccError::MemberNotFound.into(),
                Code::NotFound,
                "etcdserver: member not found",
            ),
            (
                MvccError::MemberNotLearner.into(),
                Code::FailedPrecondition,
                "etcdserver: can only promote a learner member",
            ),
            (
                ReconfigError::NotEnoughStarted.into(),
                Code::FailedPrecondition,
                "etcdserver: re-configuration failed due to not enough started members",
            ),
            (
                ReconfigError::Unhealthy.into(),
                Code::Unavailable,
                "etcdserver: unhealthy cluster",
            ),
            (
                ReconfigError::LearnerNotReady.into(),
                Code::FailedPrecondition,
                "etcdserver: can only promote a learner member which is in sync with leader",
            ),
            (
                ReconfigError::TooManyLearners.into(),
                Code::FailedPrecondition,
                "etcdserver: too many learner members in cluster",
            ),
            (
                NodeError::NoLeader.into(),
                Code::Unavailable,
                "etcdserver: no leader",
            ),
            (
                NodeError::LeaderChanged.into(),
                Code::Unavailable,
                "etcdserver: leader changed",
            ),
            (
                NodeError::Timeout.into(),
                Code::Unavailable,
                "etcdserver: request timed out",
            ),
            (
                NodeError::TooManyRequests.into(),
                Code::ResourceExhausted,
                "etcdserver: too many requests",
            ),
            (
                NodeError::Stopped.into(),
                Code::Unavailable,
                "etcdserver: server stopped",
            ),
        ];
        for (error, code, message) in table {
            let status = to_status(error.clone());
            assert_eq!(status.code(), code, "{error:?}");
            assert_eq!(status.message(), message, "{error:?}");
        }
        let storage = to_status(NodeError::Storage("disk".into()));
        assert_eq!(storage.code(), Code::Internal);
    }

    // Proves the election service's own errors carry etcd's messages and etcd's code for them
    // (Unknown: etcd's election service returns its client's errors as they are), and that
    // errors passed through from the store keep their message but take that code too.
    #[test]
    fn election_errors_are_unknown_with_etcds_messages() {
        let table = [
            (ElectionError::NotLeader, "election: not leader"),
            (ElectionError::NoLeader, "election: no leader"),
            (
                ElectionError::MissingLeaderKey,
                "\"leader\" field must be provided",
            ),
        ];
        for (error, message) in table {
            let status = election_status(error);
            assert_eq!(status.code(), Code::Unknown, "{error:?}");
            assert_eq!(status.message(), message, "{error:?}");
        }
        let passed = recipe_status(&to_status(MvccError::LeaseNotFound));
        assert_eq!(passed.code(), Code::Unknown);
        assert_eq!(passed.message(), "etcdserver: requested lease not found");
    }
}
