//! The apply task: committed entries go into the state machine here, on their own thread, so
//! that a slow apply never stalls consensus (the store loop only queues work for it).
//!
//! It batches whatever is queued into one `mvcc::Store::apply_batch` call, makes every
//! [`DURABLE_EVERY_ENTRIES`] entries or [`DURABLE_EVERY`] durable (the log replays the rest
//! after a crash), answers the waiting proposals that originated on this node, and publishes
//! the applied index for linearizable reads.

use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, SyncSender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use consensus::{Entry, EntryType};
use mvcc::{AppliedIndex, ApplyEntry, Store};
use storage::KvStore;

use crate::snapshot::RecordReader;
use crate::{proposal, NodeError, Shared};

/// Entries applied between two durable state-machine commits.
pub(crate) const DURABLE_EVERY_ENTRIES: u64 = 5_000;
/// Longest time between two durable state-machine commits while entries arrive.
pub(crate) const DURABLE_EVERY: Duration = Duration::from_millis(500);
/// Entries merged into one apply batch at most.
const APPLY_BATCH_ENTRIES: usize = 4096;

/// Work for the apply task, in log order.
pub(crate) enum ApplyTask {
    /// Committed entries to apply.
    Entries(Vec<Entry>),
    /// Replace the state machine with a spooled snapshot; answer with the restored position.
    Restore {
        path: PathBuf,
        reply: SyncSender<Result<AppliedIndex, NodeError>>,
    },
}

pub(crate) struct ApplyLoop<S: KvStore> {
    pub store: Arc<Store<S>>,
    pub shared: Arc<Shared>,
    pub tasks: Receiver<ApplyTask>,
}

impl<S: KvStore> ApplyLoop<S> {
    pub(crate) fn run(self) {
        let mut since_durable = 0u64;
        let mut last_durable = Instant::now();
        while let Ok(task) = self.tasks.recv() {
            let mut entries = match task {
                ApplyTask::Entries(entries) => entries,
                ApplyTask::Restore { path, reply } => {
                    let restored = self.restore(&path);
                    let failed = restored.is_err();
                    let _ = reply.send(restored);
                    if failed {
                        return;
                    }
                    since_durable = 0;
                    last_durable = Instant::now();
                    continue;
                }
            };
            // Merge what else is queued, up to a bound, but never past a restore.
            let mut pending_restore = None;
            while entries.len() < APPLY_BATCH_ENTRIES {
                match self.tasks.try_recv() {
                    Ok(ApplyTask::Entries(more)) => entries.extend(more),
                    Ok(restore) => {
                        pending_restore = Some(restore);
                        break;
                    }
                    Err(_) => break,
                }
            }
            since_durable += entries.len() as u64;
            let durable =
                since_durable >= DURABLE_EVERY_ENTRIES || last_durable.elapsed() >= DURABLE_EVERY;
            if let Err(e) = self.apply(&entries, durable) {
                self.shared.fail(format!("apply failed: {e}"));
                return;
            }
            if durable {
                since_durable = 0;
                last_durable = Instant::now();
            }
            if let Some(ApplyTask::Restore { path, reply }) = pending_restore {
                let restored = self.restore(&path);
                let failed = restored.is_err();
                let _ = reply.send(restored);
                if failed {
                    return;
                }
            }
        }
    }

    fn apply(&self, entries: &[Entry], durable: bool) -> Result<(), NodeError> {
        let Some(last) = entries.last() else {
            return Ok(());
        };
        let mut decoded = Vec::with_capacity(entries.len());
        for entry in entries {
            let proposal = match entry.get_entry_type() {
                EntryType::EntryNormal if !entry.data.is_empty() => {
                    Some(proposal::decode(&entry.data).map_err(|e| {
                        NodeError::Storage(format!("entry {} does not decode: {e}", entry.index))
                    })?)
                }
                // A new leader's no-op, or a configuration change (membership changes are
                // not proposed yet; the configuration is fixed at bootstrap).
                _ => None,
            };
            decoded.push((entry.index, entry.term, proposal));
        }
        let batch: Vec<ApplyEntry<'_>> = decoded
            .iter()
            .map(|(index, term, proposal)| ApplyEntry {
                index: *index,
                term: *term,
                command: proposal.as_ref().map(|p| &p.command),
            })
            .collect();
        let results = self
            .store
            .apply_batch(&batch, durable)
            .map_err(|e| NodeError::Storage(e.to_string()))?;

        let mut results = results.into_iter();
        let node_id = self.shared.config.node_id.0;
        let mut proposals = self.shared.proposals.lock();
        for proposal in decoded.iter().filter_map(|(_, _, p)| p.as_ref()) {
            let applied = results
                .next()
                .expect("apply_batch returns one result per command");
            if proposal.origin == node_id {
                if let Some(waiter) = proposals.remove(&proposal.request_id) {
                    let _ = waiter.send(Ok(applied));
                }
            }
        }
        drop(proposals);
        self.shared.publish_applied(last.index);
        Ok(())
    }

    fn restore(&self, path: &Path) -> Result<AppliedIndex, NodeError> {
        let mut records =
            RecordReader::open(path).map_err(|e| NodeError::Storage(e.to_string()))?;
        let applied = self
            .store
            .restore(&mut records)
            .map_err(|e| NodeError::Storage(format!("install snapshot: {e}")))?;
        self.shared.publish_applied(applied.index);
        Ok(applied)
    }
}
