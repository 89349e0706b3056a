//! The apply task: committed entries go into the state machine here, on their own thread, so
//! that a slow apply never stalls consensus (the store loop only queues work for it).
//!
//! It batches whatever is queued into one `mvcc::Store::apply_batch` call, makes every
//! [`DURABLE_EVERY_ENTRIES`] entries or [`DURABLE_EVERY`] durable (the log replays the rest
//! after a crash), answers the waiting proposals that originated on this node, and publishes
//! the applied index for linearizable reads.

use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, Sender, SyncSender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use consensus::{Entry, EntryType};
use mvcc::{Applied, AppliedIndex, ApplyEntry, Command, Store};
use storage::KvStore;

use crate::shared::Shared;
use crate::snapshot::RecordReader;
use crate::{proposal, NodeError};

/// Entries applied between two durable state-machine commits.
pub(crate) const DURABLE_EVERY_ENTRIES: u64 = 5_000;
/// Longest time between two durable state-machine commits while entries arrive.
pub(crate) const DURABLE_EVERY: Duration = Duration::from_millis(500);
/// Entries merged into one apply batch at most.
const APPLY_BATCH_ENTRIES: usize = 4096;

/// A conf change entry apply has applied to the state machine, for the store loop, which
/// then applies it to the Raft configuration (`conf_change` is `None` if the state machine
/// refused it: the configuration stays as it is).
pub(crate) struct ConfApplied {
    pub(crate) index: u64,
    pub(crate) conf_change: Option<consensus::ConfChange>,
}

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
    store: Arc<Store<S>>,
    shared: Arc<Shared>,
    tasks: Receiver<ApplyTask>,
    /// Conf changes applied, for the store loop. Unbounded, but holds at most the conf
    /// change entries of the log handed to apply (one at a time unless replaying).
    conf_applied: Sender<ConfApplied>,
    /// A task taken off the queue to see whether there was one (driven nodes only), handled
    /// before anything behind it.
    peeked: Option<ApplyTask>,
    /// Entries applied since the last durable commit.
    since_durable: u64,
    last_durable: Instant,
}

impl<S: KvStore> ApplyLoop<S> {
    pub(crate) fn new(
        store: Arc<Store<S>>,
        shared: Arc<Shared>,
        tasks: Receiver<ApplyTask>,
        conf_applied: Sender<ConfApplied>,
    ) -> Self {
        let last_durable = shared.config.clock.now();
        Self {
            store,
            shared,
            tasks,
            conf_applied,
            peeked: None,
            since_durable: 0,
            last_durable,
        }
    }

    /// The state machine.
    pub(crate) fn store(&self) -> Arc<Store<S>> {
        self.store.clone()
    }

    /// Applies tasks as they arrive until the store loop goes away or applying fails.
    pub(crate) fn run(mut self) {
        while let Some(task) = self.peeked.take().or_else(|| self.tasks.recv().ok()) {
            if !self.handle(task) {
                return;
            }
        }
    }

    /// The next queued task, without waiting.
    fn try_next(&mut self) -> Option<ApplyTask> {
        self.peeked.take().or_else(|| self.tasks.try_recv().ok())
    }

    /// Whether work is queued for apply.
    pub(crate) fn has_queued(&mut self) -> bool {
        if self.peeked.is_none() {
            self.peeked = self.tasks.try_recv().ok();
        }
        self.peeked.is_some()
    }

    /// One iteration of the apply thread, without waiting: the next queued task and the
    /// entries queued behind it, up to [`APPLY_BATCH_ENTRIES`] and never past a restore.
    /// Returns false if applying failed (the member has then failed).
    pub(crate) fn step(&mut self) -> bool {
        match self.try_next() {
            Some(task) => self.handle(task),
            None => true,
        }
    }

    /// Applies every task already queued, without waiting. Returns false if applying failed
    /// (the member has then failed).
    pub(crate) fn drain(&mut self) -> bool {
        while let Some(task) = self.try_next() {
            if !self.handle(task) {
                return false;
            }
        }
        true
    }

    /// Handles `task` and whatever entries are queued behind it; false if applying failed.
    fn handle(&mut self, task: ApplyTask) -> bool {
        let mut entries = match task {
            ApplyTask::Entries(entries) => entries,
            ApplyTask::Restore { path, reply } => return self.restore_and_reply(&path, &reply),
        };
        // Merge what else is queued, up to a bound, but never past a restore.
        let mut pending_restore = None;
        while entries.len() < APPLY_BATCH_ENTRIES {
            match self.try_next() {
                Some(ApplyTask::Entries(more)) => entries.extend(more),
                Some(restore) => {
                    pending_restore = Some(restore);
                    break;
                }
                None => break,
            }
        }
        self.since_durable += entries.len() as u64;
        let now = self.shared.config.clock.now();
        let durable = self.since_durable >= DURABLE_EVERY_ENTRIES
            || now.duration_since(self.last_durable) >= DURABLE_EVERY;
        if let Err(e) = self.apply(&entries, durable) {
            self.shared.fail(format!("apply failed: {e}"));
            return false;
        }
        if durable {
            let last = entries.last().map_or(0, |entry| entry.index);
            self.shared.progress.publish_durable(last);
            self.since_durable = 0;
            self.last_durable = now;
        }
        match pending_restore {
            Some(ApplyTask::Restore { path, reply }) => self.restore_and_reply(&path, &reply),
            _ => true,
        }
    }

    fn restore_and_reply(
        &mut self,
        path: &Path,
        reply: &SyncSender<Result<AppliedIndex, NodeError>>,
    ) -> bool {
        let restored = self.restore(path);
        let failed = restored.is_err();
        let _ = reply.send(restored);
        // The store loop resumes the parked replica on its next iteration: wake it now.
        let _ = self.shared.inbox.try_send(crate::store::StoreMsg::Wake);
        // A restore is durable: the count starts again.
        self.since_durable = 0;
        self.last_durable = self.shared.config.clock.now();
        !failed
    }

    fn apply(&self, entries: &[Entry], durable: bool) -> Result<(), NodeError> {
        let Some(last) = entries.last() else {
            return Ok(());
        };
        let mut decoded = Vec::with_capacity(entries.len());
        let mut conf_changes = Vec::new();
        for entry in entries {
            let undecodable = |e: String| {
                NodeError::Storage(format!("entry {} does not decode: {e}", entry.index))
            };
            let proposal = match entry.get_entry_type() {
                EntryType::EntryNormal if !entry.data.is_empty() => {
                    Some(proposal::decode(&entry.data).map_err(|e| undecodable(e.to_string()))?)
                }
                // A new leader's no-op.
                EntryType::EntryNormal => None,
                EntryType::EntryConfChange => {
                    let cc = consensus::decode_conf_change(&entry.data).map_err(undecodable)?;
                    let proposal =
                        proposal::decode(&cc.context).map_err(|e| undecodable(e.to_string()))?;
                    if !matches!(proposal.command, Command::Membership(_)) {
                        return Err(undecodable(
                            "a conf change without a membership change".into(),
                        ));
                    }
                    conf_changes.push((entry.index, cc, decoded.len()));
                    Some(proposal)
                }
                // Never proposed by this version.
                EntryType::EntryConfChangeV2 => {
                    return Err(undecodable("a joint conf change".into()));
                }
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
        // Events are built only when someone watches; the hub copes with a watcher that
        // arrives while the batch is applied.
        let hub = &self.shared.watch_hub;
        let wanted = hub.events_wanted();
        let (results, events) = self
            .store
            .apply_batch_with_events(&batch, durable, wanted)
            .map_err(|e| NodeError::Storage(e.to_string()))?;
        hub.publish(events, self.store.current_revision(), wanted);

        // Which result is whose: one per entry that carries a proposal, in order.
        let mut results = results.into_iter();
        let mut outcomes: Vec<Option<Applied>> = Vec::with_capacity(decoded.len());
        for (_, _, proposal) in &decoded {
            outcomes.push(proposal.as_ref().map(|_| {
                results
                    .next()
                    .expect("apply_batch returns one result per command")
            }));
        }
        let now = self.shared.config.clock.now();
        // What Raft is told of each conf change, decided before the results move to their
        // waiters: only a change the state machine accepted changes the configuration.
        let me = self.shared.config.node_id.0;
        let reports: Vec<ConfApplied> = conf_changes
            .into_iter()
            .map(|(index, cc, position)| {
                let accepted = outcomes[position]
                    .as_ref()
                    .is_some_and(|applied| applied.result.is_ok());
                ConfApplied {
                    index,
                    conf_change: accepted.then_some(cc),
                }
            })
            .collect();
        let removes_me = reports.iter().any(|report| {
            report.conf_change.as_ref().is_some_and(|cc| {
                cc.get_change_type() == consensus::ConfChangeType::RemoveNode && cc.node_id == me
            })
        });
        let mut answers = Vec::new();
        let mut membership_changed = false;
        for ((_, _, proposal), outcome) in decoded.iter().zip(outcomes) {
            let (Some(proposal), Some(applied)) = (proposal, outcome) else {
                continue;
            };
            self.shared.lessor.applied(now, &proposal.command, &applied);
            if matches!(proposal.command, Command::Membership(_)) && applied.result.is_ok() {
                membership_changed = true;
            }
            if proposal.origin == me {
                answers.push((proposal.request_id, applied));
            }
        }
        if membership_changed {
            self.shared.progress.publish_members(self.store.members());
        }
        // A member that removes itself stops once the store loop hears of it, and stopping
        // drops every waiter: answer first.
        if removes_me {
            self.shared
                .waiters
                .finish_applied(std::mem::take(&mut answers));
        }
        // The Raft configuration follows the state machine's membership, entry by entry.
        let woke = !reports.is_empty();
        for report in reports {
            if self.conf_applied.send(report).is_err() {
                return Err(NodeError::Stopped);
            }
        }
        // A leader becomes the primary lessor once it applied an entry of its own term.
        self.shared.lessor.applied_term(last.term);
        crate::leases::maybe_promote(&self.shared);
        self.shared.progress.publish_applied(last.index);
        if woke {
            // The store loop applies them to Raft on its next iteration: wake it now.
            let _ = self.shared.inbox.try_send(crate::store::StoreMsg::Wake);
        }
        // Answered last: a client that sends its next conf change on this answer finds the
        // store loop told of this one already.
        self.shared.waiters.finish_applied(answers);
        Ok(())
    }

    fn restore(&self, path: &Path) -> Result<AppliedIndex, NodeError> {
        let keys = self.shared.config.snapshot_keys.as_ref();
        let mut records =
            RecordReader::open(path, keys).map_err(|e| NodeError::Storage(e.to_string()))?;
        let applied = self
            .store
            .restore(&mut records)
            .map_err(|e| NodeError::Storage(format!("install snapshot: {e}")))?;
        self.shared.progress.publish_members(self.store.members());
        // The lessor's clocks describe the state that was replaced.
        self.shared.lessor.reset();
        self.shared.lessor.applied_term(applied.term);
        // The snapshot may skip revisions: watchers catch up from the new history.
        self.shared.watch_hub.reset(self.store.current_revision());
        self.shared.progress.restored(applied.index);
        Ok(applied)
    }
}
