//! The domain types of the etcd data model. They mirror etcd's messages field for field but
//! are plain Rust: `api` converts protobuf to and from these, nothing below `api` sees protobuf.

/// The keyspace's logical clock. One main revision per write transaction.
///
/// With one shard revisions are dense; with many they will be sparse, so no code may assume
/// that `r + 1` exists, only that revisions are ordered.
pub type Revision = i64;

/// A lease id (0 = no lease).
pub type LeaseId = i64;

/// One version of a key, as etcd's `mvccpb.KeyValue`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeyValue {
    /// Key bytes (never empty).
    pub key: Vec<u8>,
    /// Revision of the latest creation of this key.
    pub create_revision: Revision,
    /// Revision of the last change to this key.
    pub mod_revision: Revision,
    /// 1 on creation, +1 on every put, reset by delete.
    pub version: i64,
    /// Value bytes.
    pub value: Vec<u8>,
    /// Attached lease, 0 for none.
    pub lease: LeaseId,
}

/// Sort order of a range.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SortOrder {
    /// No sort (ascending key order, unless a sort target other than key is given).
    #[default]
    None,
    /// Ascending.
    Ascend,
    /// Descending.
    Descend,
}

/// Field a range is sorted by.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SortTarget {
    /// By key.
    #[default]
    Key,
    /// By version.
    Version,
    /// By create revision.
    Create,
    /// By mod revision.
    Mod,
    /// By value.
    Value,
}

/// etcd's `RangeRequest`. `range_end` follows etcd's rules: empty = the single key `key`;
/// `[0]` = every key `>= key`; otherwise the half-open interval `[key, range_end)`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RangeRequest {
    /// First key.
    pub key: Vec<u8>,
    /// End of the range (see the type doc).
    pub range_end: Vec<u8>,
    /// Maximum number of keys returned, 0 = no limit.
    pub limit: i64,
    /// Revision to read at, <= 0 = the current one.
    pub revision: Revision,
    /// Sort order.
    pub sort_order: SortOrder,
    /// Sort target.
    pub sort_target: SortTarget,
    /// Serve from local state without a consensus round (handled above mvcc).
    pub serializable: bool,
    /// Return keys without values.
    pub keys_only: bool,
    /// Return only the count.
    pub count_only: bool,
    /// Filter: mod_revision >= this (0 = no filter).
    pub min_mod_revision: Revision,
    /// Filter: mod_revision <= this (0 = no filter).
    pub max_mod_revision: Revision,
    /// Filter: create_revision >= this (0 = no filter).
    pub min_create_revision: Revision,
    /// Filter: create_revision <= this (0 = no filter).
    pub max_create_revision: Revision,
}

/// etcd's `RangeResponse`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RangeResponse {
    /// The revision etcd reports in this response's header: the store's revision as this
    /// read saw it (inside a txn, the txn's own once it has written).
    pub revision: Revision,
    /// The keys found (empty with `count_only`).
    pub kvs: Vec<KeyValue>,
    /// True if `limit` cut the result.
    pub more: bool,
    /// Number of keys in the range at that revision, unaffected by `limit`.
    pub count: i64,
}

/// etcd's `PutRequest`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PutRequest {
    /// Key (never empty).
    pub key: Vec<u8>,
    /// Value.
    pub value: Vec<u8>,
    /// Lease to attach, 0 = none.
    pub lease: LeaseId,
    /// Return the previous key-value.
    pub prev_kv: bool,
    /// Keep the current value.
    pub ignore_value: bool,
    /// Keep the current lease.
    pub ignore_lease: bool,
}

/// etcd's `PutResponse`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PutResponse {
    /// The revision etcd reports in this response's header: the one the put created.
    pub revision: Revision,
    /// The previous key-value, if asked for and it existed.
    pub prev_kv: Option<KeyValue>,
}

/// etcd's `DeleteRangeRequest`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeleteRangeRequest {
    /// First key.
    pub key: Vec<u8>,
    /// End of the range (rules as in [`RangeRequest`]).
    pub range_end: Vec<u8>,
    /// Return the deleted key-values.
    pub prev_kv: bool,
}

/// etcd's `DeleteRangeResponse`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeleteRangeResponse {
    /// The revision etcd reports in this response's header: the one the delete created, or
    /// the store's revision as it saw it if nothing has been written.
    pub revision: Revision,
    /// Number of keys deleted.
    pub deleted: i64,
    /// The deleted key-values, if asked for.
    pub prev_kvs: Vec<KeyValue>,
}

/// Comparison operator of a txn compare.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CompareResult {
    /// `==`
    Equal,
    /// `>`
    Greater,
    /// `<`
    Less,
    /// `!=`
    NotEqual,
}

/// What a txn compare looks at, with the operand.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CompareTarget {
    /// The key's version.
    Version(i64),
    /// The key's create revision.
    Create(Revision),
    /// The key's mod revision.
    Mod(Revision),
    /// The key's value (bytewise).
    Value(Vec<u8>),
    /// The key's lease.
    Lease(LeaseId),
}

/// etcd's `Compare`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Compare {
    /// Operator.
    pub result: CompareResult,
    /// Target and operand.
    pub target: CompareTarget,
    /// Key (never empty).
    pub key: Vec<u8>,
    /// If not empty, the compare must hold for every key in `[key, range_end)`.
    pub range_end: Vec<u8>,
}

/// One operation of a txn branch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RequestOp {
    /// A read.
    Range(RangeRequest),
    /// A write.
    Put(PutRequest),
    /// A delete.
    DeleteRange(DeleteRangeRequest),
    /// A nested txn.
    Txn(TxnRequest),
}

/// The result of one [`RequestOp`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ResponseOp {
    /// A read's result.
    Range(RangeResponse),
    /// A write's result.
    Put(PutResponse),
    /// A delete's result.
    DeleteRange(DeleteRangeResponse),
    /// A nested txn's result.
    Txn(TxnResponse),
}

/// etcd's `TxnRequest`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TxnRequest {
    /// Predicates, AND-ed.
    pub compare: Vec<Compare>,
    /// Ops run if every compare holds.
    pub success: Vec<RequestOp>,
    /// Ops run otherwise.
    pub failure: Vec<RequestOp>,
}

impl TxnRequest {
    /// Whether no operation on either branch, nested txns' included, writes (etcd's
    /// `isTxnReadonly`).
    #[must_use]
    pub fn is_read_only(&self) -> bool {
        self.success.iter().chain(&self.failure).all(|op| match op {
            RequestOp::Range(_) => true,
            RequestOp::Put(_) | RequestOp::DeleteRange(_) => false,
            RequestOp::Txn(nested) => nested.is_read_only(),
        })
    }
}

/// etcd's `TxnResponse`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TxnResponse {
    /// Whether the success branch ran.
    pub succeeded: bool,
    /// One response per executed op, in order.
    pub responses: Vec<ResponseOp>,
}

/// etcd's `CompactionRequest`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CompactRequest {
    /// Compact history before this revision.
    pub revision: Revision,
    /// Wait until the space is physically reclaimed.
    pub physical: bool,
}

/// A cluster alarm, as etcd's `AlarmType` less its `NONE` (which names no alarm and is
/// handled where requests are decoded).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum AlarmType {
    /// The backend quota was exceeded: writes that add data are refused until an operator
    /// frees space and disarms.
    NoSpace,
    /// A member's data was found inconsistent: every write is refused.
    Corrupt,
}

/// An active alarm: the member that raised it and what it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AlarmMember {
    /// The member the alarm is about.
    pub member_id: u64,
    /// The alarm.
    pub alarm: AlarmType,
}

/// What an alarm request does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AlarmAction {
    /// List the active alarms (of one type, or all).
    Get,
    /// Raise an alarm for a member.
    Activate,
    /// Clear a member's alarm.
    Deactivate,
}

/// etcd's `AlarmRequest`. Alarms are cluster state: they change through the log, so every
/// member refuses the same writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AlarmRequest {
    /// What to do.
    pub action: AlarmAction,
    /// The member concerned (ignored by `Get`).
    pub member_id: u64,
    /// The alarm; `None` (etcd's `NONE`) lists every alarm with `Get` and changes nothing
    /// otherwise.
    pub alarm: Option<AlarmType>,
}

/// A state-machine command: what one Raft log entry asks the state machine to do.
/// Encoded with [`Command::encode`]; the encoding is a persisted format.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// A put.
    Put(PutRequest),
    /// A delete.
    DeleteRange(DeleteRangeRequest),
    /// A txn (possibly read-only).
    Txn(TxnRequest),
    /// A compaction.
    Compact(CompactRequest),
    /// An alarm change or listing.
    Alarm(AlarmRequest),
    /// Create a lease.
    LeaseGrant(LeaseGrantRequest),
    /// Delete a lease and every key attached to it, at the client's request.
    LeaseRevoke(LeaseId),
    /// A client renewed a lease: members restart its clock.
    LeaseKeepAlive(LeaseId),
    /// The leader found a lease expired: revoke it, unless it was renewed since.
    LeaseExpire(LeaseExpireRequest),
    /// The leader records how long leases have left (etcd's lease checkpoints), so that a new
    /// leader does not give a lease that nobody renews a full TTL again. A remaining TTL of 0
    /// clears the checkpoint: the next leader starts the lease at its full TTL.
    LeaseCheckpoint(Vec<LeaseCheckpoint>),
    /// A change of the cluster's membership.
    Membership(MembershipChange),
}

/// A member of the cluster, as the replicated membership records it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Member {
    /// The member id (its Raft node id).
    pub id: u64,
    /// Its name; empty until the member has started and published it.
    pub name: String,
    /// Where its peers reach it.
    pub peer_urls: Vec<String>,
    /// Where clients reach it; empty until the member has started and published them.
    pub client_urls: Vec<String>,
    /// A learner receives the log but does not vote.
    pub is_learner: bool,
}

/// A change of the cluster's membership. `Add`, `Remove` and `Promote` change the Raft
/// configuration as well: they travel in Raft conf change entries, and every member applies
/// them to its Raft configuration once the state machine has accepted them. `UpdatePeers`
/// and `Publish` change only the recorded attributes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MembershipChange {
    /// A new member (voter or learner, as `is_learner` says).
    Add(Member),
    /// A member leaves; its id can never be used again.
    Remove(u64),
    /// A learner becomes a voter.
    Promote(u64),
    /// A member's peer URLs change (etcd's MemberUpdate).
    UpdatePeers {
        /// The member.
        id: u64,
        /// Its new peer URLs.
        peer_urls: Vec<String>,
    },
    /// A member that started tells its name and client URLs (etcd's publish).
    Publish {
        /// The member.
        id: u64,
        /// Its name.
        name: String,
        /// Its client URLs.
        client_urls: Vec<String>,
    },
}

/// The time one lease has left, as the leader's clock said when it proposed the checkpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseCheckpoint {
    /// The lease.
    pub id: LeaseId,
    /// Seconds left (rounded up), or 0 to clear the checkpoint.
    pub remaining_ttl: i64,
}

/// etcd's `LeaseGrantRequest`, with the id chosen and the TTL raised to the minimum before
/// it is proposed (so every member applies the same).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseGrantRequest {
    /// The lease id (never 0).
    pub id: LeaseId,
    /// Time to live, in seconds.
    pub ttl: i64,
}

/// A lease the leader found expired, with how often it had been renewed when it decided: a
/// renewal applied in between wins, so a client's acknowledged keepalive is never undone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseExpireRequest {
    /// The lease.
    pub id: LeaseId,
    /// [`Lease::renewals`] as the leader saw it.
    pub renewals: u64,
}

/// A lease as the state machine keeps it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Lease {
    /// The lease id.
    pub id: LeaseId,
    /// Granted time to live, in seconds.
    pub ttl: i64,
    /// Keepalives applied through the log so far (keepalives are answered by the leader
    /// from its memory; only logs written before that carry them).
    pub renewals: u64,
    /// The last checkpointed remaining TTL in seconds; 0 when none (a new leader then gives
    /// the lease its full TTL).
    pub remaining_ttl: i64,
    /// The keys attached to it, in key order.
    pub keys: Vec<Vec<u8>>,
}

/// The result of applying a [`Command`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CommandResponse {
    /// The members after a membership change, in id order.
    Membership(Vec<Member>),
    /// A put's result.
    Put(PutResponse),
    /// A delete's result.
    DeleteRange(DeleteRangeResponse),
    /// A txn's result.
    Txn(TxnResponse),
    /// A compaction's result.
    Compact,
    /// The alarms listed, raised or cleared (etcd returns only those that changed).
    Alarm(Vec<AlarmMember>),
    /// The lease granted: its id and TTL.
    LeaseGrant(LeaseGrantRequest),
    /// The lease was revoked.
    LeaseRevoke,
    /// The lease was renewed; its granted TTL.
    LeaseKeepAlive(i64),
    /// Whether the lease expired (false: it was renewed since the leader decided).
    LeaseExpire(bool),
    /// The checkpoints were recorded (those of leases that no longer exist are ignored).
    LeaseCheckpoint,
}

/// A command's result together with the store revision after it was applied (the header
/// revision etcd returns).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Applied {
    /// The result, or the error etcd would return.
    pub result: Result<CommandResponse, crate::MvccError>,
    /// Current revision after applying (unchanged if the command wrote nothing or failed).
    pub revision: Revision,
}

/// What a change did to its key, as etcd's `mvccpb.Event.EventType`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// The key was created or updated.
    Put,
    /// The key was deleted.
    Delete,
}

/// One change to one key, as etcd's `mvccpb.Event`. A delete's `kv` carries only the key and
/// the deletion revision (`mod_revision`), as etcd's does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// Put or delete.
    pub kind: EventKind,
    /// The key after the change.
    pub kv: KeyValue,
    /// The key before the change, when asked for and the key existed (and is not compacted).
    pub prev_kv: Option<KeyValue>,
}

impl Event {
    /// The revision of the change.
    #[must_use]
    pub fn revision(&self) -> Revision {
        self.kv.mod_revision
    }
}

/// Which events [`crate::Store::apply_batch_with_events`] reports.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum EventsWanted {
    /// None: nobody watches, so no event is built.
    #[default]
    None,
    /// Every change, without the previous version.
    Events,
    /// Every change with the key's previous version (one more read per change).
    WithPrevKv,
}

/// Events read back from the store's history by [`crate::Store::history`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct History {
    /// The events, in revision order and, within a revision, in the order they were made.
    pub events: Vec<Event>,
    /// Every event up to this revision is in `events` (a read stops at a revision boundary
    /// when it reaches its byte budget).
    pub through: Revision,
}
