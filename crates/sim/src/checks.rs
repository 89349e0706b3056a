//! Raft's safety properties, checked against what the members hold while the simulation runs.
//!
//! - Election safety: at most one leader per term.
//! - Log matching and state machine safety: every member's log, up to its commit index, holds
//!   the same entries at the same indices. One record of committed entries is kept for the
//!   whole cluster; each member's newly committed entries are compared with it (and extend it)
//!   after every step, so the cost follows the new entries, not the log's length.
//! - Leader completeness: a new leader's log holds every entry committed before it was seen
//!   leading.
//! - Log matching, at its base: a leader creates one entry per index in its term, so every
//!   entry any member holds at an `(index, term)` is the same entry. Each member's uncommitted
//!   tail — the only part that changes — is compared after every step.
//! - Entry uniqueness (the base of log matching): a leader creates one entry per index in its
//!   term, so every entry any member holds at an `(index, term)` is the same entry. Each
//!   member's uncommitted tail — the only part that changes — is compared after every step.

use std::collections::BTreeMap;

use storage::{Entry, LogStore, ShardId};

/// The shard the simulation checks (there is one).
const SHARD: ShardId = ShardId(1);

/// Records who led in which term and fails if two members did in one.
#[derive(Default)]
pub struct ElectionSafety {
    leaders: BTreeMap<u64, u64>,
}

impl ElectionSafety {
    /// Notes that `member` considers itself leader in `term`.
    ///
    /// # Errors
    /// If another member led in that term.
    pub fn observe(&mut self, term: u64, member: u64) -> Result<(), String> {
        match self.leaders.insert(term, member) {
            Some(other) if other != member => Err(format!(
                "election safety: members {other} and {member} both led term {term}"
            )),
            _ => Ok(()),
        }
    }

    /// Leaders seen, by term.
    pub fn leaders(&self) -> &BTreeMap<u64, u64> {
        &self.leaders
    }
}

/// What identifies a log entry for these checks.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Committed {
    term: u64,
    entry_type: i32,
    data: Vec<u8>,
}

impl Committed {
    fn of(entry: &Entry) -> Self {
        Self {
            term: entry.term,
            entry_type: entry.get_entry_type() as i32,
            data: entry.data.to_vec(),
        }
    }
}

/// The cluster's committed entries and each member's progress through them.
#[derive(Default)]
pub struct LogChecks {
    /// `committed[i]` is the term of the entry committed at index `i + 1`; its content is in
    /// `seen`, which holds one entry per `(index, term)`.
    committed: Vec<u64>,
    /// Per member: the index up to which its log was compared with `committed`.
    checked: BTreeMap<u64, u64>,
    /// Every entry seen in any member's log, by `(index, term)`.
    seen: BTreeMap<(u64, u64), Committed>,
}

impl LogChecks {
    /// Entries known committed so far.
    pub fn committed_len(&self) -> u64 {
        self.committed.len() as u64
    }

    /// A member restarted from what its disk kept: compare its log from the start again.
    pub fn restarted(&mut self, member: u64) {
        self.checked.remove(&member);
    }

    /// Compares `member`'s log up to `commit` with the cluster's committed entries, and
    /// extends those with what it has committed beyond them.
    ///
    /// # Errors
    /// If it holds a different entry at an index committed elsewhere.
    pub fn member_committed(
        &mut self,
        member: u64,
        log: &dyn LogStore,
        commit: u64,
    ) -> Result<(), String> {
        let commit = commit.min(log.last_index(SHARD));
        let from = self
            .checked
            .get(&member)
            .copied()
            .unwrap_or(0)
            .max(log.first_index(SHARD) - 1);
        if commit <= from {
            return Ok(());
        }
        for entry in read(member, log, from, commit)? {
            self.note_seen(member, &entry)?;
            let slot = (entry.index - 1) as usize;
            match self.committed.get(slot) {
                Some(&term) if term != entry.term => {
                    return Err(format!(
                        "state machine safety: member {member} committed index {} at term {} \
                         but the cluster committed it at term {term}",
                        entry.index, entry.term
                    ));
                }
                Some(_) => {}
                None if slot == self.committed.len() => self.committed.push(entry.term),
                None => {
                    // A member whose log starts after a snapshot can run ahead of the record;
                    // the entries between are checked when another member commits them.
                    break;
                }
            }
            self.checked.insert(member, entry.index);
        }
        Ok(())
    }

    /// Compares the entries of `member`'s log after `commit` with every entry seen before at
    /// the same index and term.
    ///
    /// # Errors
    /// If it holds a different entry at an `(index, term)` where another was seen.
    pub fn member_tail(
        &mut self,
        member: u64,
        log: &dyn LogStore,
        commit: u64,
    ) -> Result<(), String> {
        let last = log.last_index(SHARD);
        let from = commit.max(log.first_index(SHARD) - 1);
        if last <= from {
            return Ok(());
        }
        for entry in read(member, log, from, last)? {
            self.note_seen(member, &entry)?;
        }
        Ok(())
    }

    /// Records `entry` as seen at its `(index, term)`, or compares it with the one seen there.
    fn note_seen(&mut self, member: u64, entry: &Entry) -> Result<(), String> {
        let seen = Committed::of(entry);
        match self.seen.get(&(entry.index, entry.term)) {
            None => {
                self.seen.insert((entry.index, entry.term), seen);
                Ok(())
            }
            Some(known) if *known != seen => Err(format!(
                "log matching: member {member} holds another entry at index {} term {} than \
                 one seen before ({} bytes vs {} bytes)",
                entry.index,
                entry.term,
                seen.data.len(),
                known.data.len()
            )),
            Some(_) => Ok(()),
        }
    }

    /// Checks the log of `member`, seen leading `term` for the first time, against every
    /// entry committed so far. Called right after the step that elected it, when its log is
    /// on its disk. `newest_term` is the highest term any member was ever seen in: a leader
    /// of an older term is stale, and entries committed in a later term need not be in its
    /// log, so it is not checked.
    ///
    /// # Errors
    /// If the leader's log lacks a committed entry or holds another one in its place.
    pub fn new_leader(
        &self,
        member: u64,
        term: u64,
        newest_term: u64,
        log: &dyn LogStore,
    ) -> Result<(), String> {
        if term < newest_term {
            return Ok(());
        }
        let known = self.committed.len() as u64;
        let last = log.last_index(SHARD);
        if last < known {
            return Err(format!(
                "leader completeness: member {member} leads term {term} with a log ending at \
                 {last}, but entries up to {known} are committed"
            ));
        }
        for index in log.first_index(SHARD)..=known {
            let have = log
                .term(SHARD, index)
                .map_err(|e| format!("leader {member}: term of {index}: {e}"))?;
            let want = self.committed[(index - 1) as usize];
            if have != want {
                return Err(format!(
                    "leader completeness: member {member} leads term {term} with term {have} \
                     at index {index}, where the cluster committed term {want}"
                ));
            }
        }
        Ok(())
    }
}

/// `member`'s log entries in `(from, to]`.
fn read(member: u64, log: &dyn LogStore, from: u64, to: u64) -> Result<Vec<Entry>, String> {
    log.entries(SHARD, from + 1, to + 1, u64::MAX)
        .map_err(|e| format!("member {member}: read log {}..={to}: {e}", from + 1))
}
