//! The revision-order verifier: etcd's answers name the version order directly (every write
//! returns the revision it created, every read its header revision and the key's mod
//! revision), so a history that recorded them can be checked without a search, in
//! O(n log n), however long it is and however many outcomes are unknown. It checks:
//!
//! - every write that took effect has a revision of its own (two writes, one revision: one
//!   of them was lost or applied twice);
//! - replaying the writes in revision order explains every read: the value read is the one
//!   written at the read's mod revision, and no write to the key took effect between that and
//!   the read's header revision (an absent key: none up to the header revision);
//! - revisions respect real time: an operation that began after another ended answered at a
//!   revision no lower (a write, strictly higher); this also means a client's revision never
//!   goes back, since its operations run one after another.
//!
//! It complements the Wing–Gong–Lowe search in [`crate::checker`], which needs no revisions but
//! may run out of budget on long histories. Keys are written only by puts and compare-and-sets
//! here (no deletes), as in the workloads that record histories.

use std::collections::{BTreeMap, HashMap};

use crate::history::{Call, History, Op, Outcome, Value};

/// At most this many anomalies are reported; one is enough to fail a run.
const MAX_ANOMALIES: usize = 20;

/// Every anomaly of `history`, described; empty if it has none. Operations without recorded
/// revisions are left out.
#[must_use]
pub fn verify(history: &History) -> Vec<String> {
    let mut anomalies = Vec::new();
    unique_write_revisions(history, &mut anomalies);
    reads_explained(history, &mut anomalies);
    real_time_order(history, &mut anomalies);
    anomalies.truncate(MAX_ANOMALIES);
    anomalies
}

/// The value a write put, if it took effect.
fn written(op: &Op) -> Option<Value> {
    match (&op.call, &op.outcome) {
        (Call::Write(v), Outcome::Written) | (Call::Cas { new: v, .. }, Outcome::Cas(true)) => {
            Some(*v)
        }
        _ => None,
    }
}

fn unique_write_revisions(history: &History, anomalies: &mut Vec<String>) {
    let mut by_revision: HashMap<u64, &Op> = HashMap::new();
    for op in history.ops() {
        let (Some(_), Some(revisions)) = (written(op), op.revisions) else {
            continue;
        };
        if let Some(other) = by_revision.insert(revisions.header, op) {
            anomalies.push(format!(
                "writes #{} and #{} both took effect at revision {}",
                other.id, op.id, revisions.header
            ));
        }
    }
}

fn reads_explained(history: &History, anomalies: &mut Vec<String>) {
    // Per key, the writes known to have taken effect, by revision.
    let mut writes: HashMap<&str, BTreeMap<u64, (Value, usize)>> = HashMap::new();
    // Per value, the revision its write took effect at, where known.
    let mut revision_of: HashMap<Value, u64> = HashMap::new();
    for op in history.ops() {
        if let (Some(value), Some(revisions)) = (written(op), op.revisions) {
            writes
                .entry(op.key.as_str())
                .or_default()
                .insert(revisions.header, (value, op.id));
            revision_of.insert(value, revisions.header);
        }
    }
    let empty = BTreeMap::new();
    for op in history.ops() {
        let (Outcome::Read(value), Some(revisions)) = (&op.outcome, op.revisions) else {
            continue;
        };
        let key_writes = writes.get(op.key.as_str()).unwrap_or(&empty);
        let read_at = revisions.header;
        match (value, revisions.modified) {
            (None, _) => {
                if let Some((revision, (_, id))) = key_writes.range(..=read_at).next() {
                    anomalies.push(format!(
                        "read #{} of {} at revision {read_at} found nothing, but write #{id} \
                         took effect at revision {revision}",
                        op.id, op.key
                    ));
                }
            }
            (Some(value), None) => anomalies.push(format!(
                "read #{} of {} found {value} without a mod revision",
                op.id, op.key
            )),
            (Some(value), Some(modified)) => {
                if modified > read_at {
                    anomalies.push(format!(
                        "read #{} of {} at revision {read_at} found a version from revision \
                         {modified}",
                        op.id, op.key
                    ));
                }
                if let Some(&revision) = revision_of.get(value) {
                    if revision != modified {
                        anomalies.push(format!(
                            "read #{} of {} found {value} at mod revision {modified}, but its \
                             write took effect at revision {revision}",
                            op.id, op.key
                        ));
                    }
                }
                let newer = (modified < read_at)
                    .then(|| key_writes.range(modified + 1..=read_at).next())
                    .flatten();
                if let Some((revision, (_, id))) = newer {
                    anomalies.push(format!(
                        "read #{} of {} at revision {read_at} found {value} from revision \
                         {modified}, but write #{id} took effect at revision {revision} in between",
                        op.id, op.key
                    ));
                }
            }
        }
    }
}

fn real_time_order(history: &History, anomalies: &mut Vec<String>) {
    // Operations with a definite answer and a revision.
    let mut ops: Vec<(&Op, u64)> = history
        .ops()
        .iter()
        .filter(|op| !matches!(op.outcome, Outcome::Unknown(_) | Outcome::Failed(_)))
        .filter(|op| op.completed_ns.is_some())
        .filter_map(|op| Some((op, op.revisions?.header)))
        .collect();
    let mut completions: Vec<(u64, u64, usize)> = ops
        .iter()
        .map(|&(op, revision)| (op.completed_ns.unwrap_or(0), revision, op.id))
        .collect();
    completions.sort_unstable();
    ops.sort_by_key(|&(op, _)| (op.invoked_ns, op.id));
    // Sweep in invocation order; `highest` is the highest revision among the operations that
    // completed before the current one began, and the operation that answered it.
    let mut done = 0;
    let mut highest: Option<(u64, usize)> = None;
    for &(op, revision) in &ops {
        while done < completions.len() && completions[done].0 < op.invoked_ns {
            let (_, r, id) = completions[done];
            if highest.is_none_or(|(h, _)| r > h) {
                highest = Some((r, id));
            }
            done += 1;
        }
        let Some((before, before_id)) = highest else {
            continue;
        };
        // A write creates a revision after everything it saw; a read may see the same one.
        let (too_low, relation) = if written(op).is_some() {
            (revision <= before, "not above")
        } else {
            (revision < before, "below")
        };
        if too_low {
            anomalies.push(format!(
                "#{} began after #{before_id} ended, yet answered at revision {revision}, \
                 {relation} {before}",
                op.id
            ));
        }
    }
}

#[cfg(test)]
mod tests;
