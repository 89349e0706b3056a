//! The node's view of the state machine, with the storage engine's type erased so that
//! `Node` is not generic.

use mvcc::{
    AlarmMember, AppliedIndex, Lease, LeaseId, MvccError, RangeRequest, RangeResponse, Revision,
    Store, TxnRequest, TxnResponse,
};
use storage::{KvSnapshot, KvStore};

/// What the node reads from the state machine outside the apply task.
pub(crate) trait StateReader: Send + Sync + 'static {
    fn range(&self, req: &RangeRequest) -> Result<(RangeResponse, Revision), MvccError>;
    fn read_txn(&self, req: &TxnRequest) -> Result<(TxnResponse, Revision), MvccError>;
    fn hash_kv(&self, revision: Revision) -> Result<(u32, Revision, Revision), MvccError>;
    fn current_revision(&self) -> Revision;
    fn snapshot_view(&self) -> Result<(Box<dyn KvSnapshot>, AppliedIndex), MvccError>;
    fn size_bytes(&self) -> u64;
    /// The one write made outside the apply task: it holds apply back, never reads.
    fn defragment(&self) -> Result<(), MvccError>;
    fn bytes_in_use(&self) -> u64;
    fn alarms(&self) -> Vec<AlarmMember>;
    fn was_removed(&self, id: u64) -> bool;
    fn leases(&self) -> Vec<Lease>;
    fn lease(&self, id: LeaseId) -> Option<Lease>;
}

impl<S: KvStore> StateReader for Store<S> {
    fn range(&self, req: &RangeRequest) -> Result<(RangeResponse, Revision), MvccError> {
        Store::range(self, req)
    }

    fn read_txn(&self, req: &TxnRequest) -> Result<(TxnResponse, Revision), MvccError> {
        Store::read_txn(self, req)
    }

    fn hash_kv(&self, revision: Revision) -> Result<(u32, Revision, Revision), MvccError> {
        Store::hash_kv(self, revision)
    }

    fn current_revision(&self) -> Revision {
        Store::current_revision(self)
    }

    fn snapshot_view(&self) -> Result<(Box<dyn KvSnapshot>, AppliedIndex), MvccError> {
        let (view, applied) = Store::snapshot_view(self)?;
        Ok((Box::new(view), applied))
    }

    fn size_bytes(&self) -> u64 {
        self.kv().size_bytes()
    }

    fn defragment(&self) -> Result<(), MvccError> {
        Store::defragment(self)
    }

    fn bytes_in_use(&self) -> u64 {
        Store::bytes_in_use(self)
    }

    fn alarms(&self) -> Vec<AlarmMember> {
        Store::alarms(self)
    }

    fn was_removed(&self, id: u64) -> bool {
        Store::was_removed(self, id)
    }

    fn leases(&self) -> Vec<Lease> {
        Store::leases(self)
    }

    fn lease(&self, id: LeaseId) -> Option<Lease> {
        Store::lease(self, id)
    }
}
