//! Applying commands: an [`Execution`] runs one command (put, delete, txn, compact, alarms,
//! leases, checkpoints) against the index, recording its writes, its events and an undo log;
//! a failed command is undone, a successful one moves its keys between leases. Before
//! running, [`refused_by_alarms`] gates writes as the active alarms require.

use std::collections::HashMap;

use storage::{KvSnapshot, Table, WriteOp};

use crate::encoding::{
    alarm_key, decode_rev_key, encode_lease, encode_member, encode_record, event, lease_key,
    member_key, put_meta, record_bytes, rev_key, META_COMPACT_REVISION, META_MEMBER_PREFIX,
    META_REMOVED_PREFIX,
};
use crate::index::{check_lease, Index, LeaseEntry, Rev, Version};
use crate::read::{branch, range_at, ValueSource, View};
use crate::types::*;
use crate::{MvccError, MAX_LEASE_TTL};

/// One command's execution against the index: changes are applied to the index as they are
/// made (so later ops of a txn see them) and undone if the command fails.
pub(crate) struct Execution<'a> {
    pub(crate) index: &'a mut Index,
    pub(crate) snapshot: &'a dyn KvSnapshot,
    pub(crate) pending: &'a mut HashMap<Rev, Vec<u8>>,
    pub(crate) ops: Vec<WriteOp>,
    pub(crate) main: i64,
    pub(crate) sub: i64,
    /// Keys touched, with their number of versions before: the undo log.
    pub(crate) touched: Vec<(Vec<u8>, usize)>,
    /// Which events to report, and those of this command so far.
    pub(crate) wanted: EventsWanted,
    pub(crate) events: Vec<Event>,
}

impl Execution<'_> {
    fn values(&self) -> ValueSource<'_> {
        ValueSource {
            pending: self.pending,
            snapshot: self.snapshot,
        }
    }

    fn view(&self) -> View<'_> {
        View {
            index: self.index,
            values: self.values(),
            at: self.read_revision(),
        }
    }

    /// The revision reads inside the command see: its own, once it has written.
    fn read_revision(&self) -> i64 {
        if self.sub > 0 {
            self.main
        } else {
            self.index.current
        }
    }

    fn record(
        &mut self,
        key: &[u8],
        mut version: Version,
        value: Vec<u8>,
    ) -> Result<(), MvccError> {
        if self.wanted != EventsWanted::None {
            self.record_event(key, &version, &value)?;
        }
        let record = encode_record(key, &version, &value);
        version.bytes = record_bytes(record.len());
        self.index.bytes += u64::from(version.bytes);
        let versions = self.index.keys.entry(key.to_vec()).or_default();
        self.touched.push((key.to_vec(), versions.len()));
        versions.push(version);
        self.ops.push(WriteOp::Put {
            table: Table::Revisions,
            key: rev_key(version.rev),
            value: record,
        });
        self.pending.insert(version.rev, value);
        self.sub += 1;
        Ok(())
    }

    /// Records the deletion of `key` (a tombstone) at the next sub-revision.
    fn record_deletion(&mut self, key: &[u8]) -> Result<(), MvccError> {
        let tombstone = Version {
            rev: (self.main, self.sub),
            create_revision: 0,
            version: 0,
            lease: 0,
            tombstone: true,
            bytes: 0,
        };
        self.record(key, tombstone, Vec::new())
    }

    /// The event `version` of `key` makes, before it is recorded.
    fn record_event(
        &mut self,
        key: &[u8],
        version: &Version,
        value: &[u8],
    ) -> Result<(), MvccError> {
        let prev_kv = match self.wanted {
            EventsWanted::WithPrevKv => match self.live_version(key) {
                Some(previous) => Some(self.values().key_value(key, &previous, true)?),
                None => None,
            },
            _ => None,
        };
        self.events
            .push(event(key, version, value.to_vec(), prev_kv));
        Ok(())
    }

    pub(crate) fn undo(&mut self) {
        for (key, len) in self.touched.drain(..).rev() {
            if let Some(versions) = self.index.keys.get_mut(&key) {
                for undone in versions.drain(len..) {
                    self.index.bytes -= u64::from(undone.bytes);
                }
                if versions.is_empty() {
                    self.index.keys.remove(&key);
                }
            }
        }
        for op in &self.ops {
            if let WriteOp::Put {
                table: Table::Revisions,
                key,
                ..
            } = op
            {
                if let Ok(rev) = decode_rev_key(key) {
                    self.pending.remove(&rev);
                }
            }
        }
        self.ops.clear();
        self.events.clear();
        self.sub = 0;
    }

    pub(crate) fn run(&mut self, command: &Command) -> Result<CommandResponse, MvccError> {
        match command {
            // etcd checks a lone put's lease before the key (`ignore_*` on a missing key).
            Command::Put(req) => check_lease(self.index, req.lease)
                .and_then(|()| self.put(req))
                .map(CommandResponse::Put),
            Command::DeleteRange(req) => self.delete(req).map(CommandResponse::DeleteRange),
            Command::Txn(req) => self.txn(req).map(CommandResponse::Txn),
            Command::Compact(req) => self
                .compact(req.revision)
                .map(|()| CommandResponse::Compact),
            Command::Alarm(req) => Ok(CommandResponse::Alarm(self.alarm(req))),
            Command::Membership(change) => self.membership(change).map(CommandResponse::Membership),
            Command::LeaseGrant(req) => self.grant(*req).map(CommandResponse::LeaseGrant),
            Command::LeaseRevoke(id) => self.revoke(*id).map(|()| CommandResponse::LeaseRevoke),
            Command::LeaseKeepAlive(id) => self.renew(*id).map(CommandResponse::LeaseKeepAlive),
            Command::LeaseExpire(req) => {
                let renewed = self
                    .index
                    .leases
                    .get(&req.id)
                    .is_none_or(|lease| lease.renewals != req.renewals);
                if renewed {
                    return Ok(CommandResponse::LeaseExpire(false));
                }
                self.revoke(req.id)
                    .map(|()| CommandResponse::LeaseExpire(true))
            }
            Command::LeaseCheckpoint(checkpoints) => {
                for checkpoint in checkpoints {
                    self.checkpoint(*checkpoint);
                }
                Ok(CommandResponse::LeaseCheckpoint)
            }
        }
    }

    /// Records the time a lease has left (etcd ignores checkpoints of unknown leases).
    fn checkpoint(&mut self, checkpoint: LeaseCheckpoint) {
        let Some(lease) = self.index.leases.get_mut(&checkpoint.id) else {
            return;
        };
        if lease.remaining_ttl == checkpoint.remaining_ttl {
            return;
        }
        lease.remaining_ttl = checkpoint.remaining_ttl;
        let record = encode_lease(lease);
        self.ops.push(WriteOp::Put {
            table: Table::Leases,
            key: lease_key(checkpoint.id),
            value: record,
        });
    }

    /// etcd's lessor `Grant`: a new lease; an id in use is refused.
    fn grant(&mut self, req: LeaseGrantRequest) -> Result<LeaseGrantRequest, MvccError> {
        if req.ttl > MAX_LEASE_TTL {
            return Err(MvccError::LeaseTtlTooLarge);
        }
        if self.index.leases.contains_key(&req.id) {
            return Err(MvccError::LeaseExists);
        }
        let lease = LeaseEntry {
            ttl: req.ttl,
            ..LeaseEntry::default()
        };
        self.ops.push(WriteOp::Put {
            table: Table::Leases,
            key: lease_key(req.id),
            value: encode_lease(&lease),
        });
        self.index.leases.insert(req.id, lease);
        Ok(req)
    }

    /// Deletes every key attached to the lease (in key order, at one revision, as etcd's
    /// revoke), then the lease.
    fn revoke(&mut self, id: LeaseId) -> Result<(), MvccError> {
        let lease = self
            .index
            .leases
            .remove(&id)
            .ok_or(MvccError::LeaseNotFound)?;
        for key in &lease.keys {
            if self.live_version(key).is_some() {
                self.record_deletion(key)?;
            }
        }
        self.ops.push(WriteOp::Delete {
            table: Table::Leases,
            key: lease_key(id),
        });
        Ok(())
    }

    /// A keepalive: counts the renewal; returns the granted TTL.
    fn renew(&mut self, id: LeaseId) -> Result<i64, MvccError> {
        let lease = self
            .index
            .leases
            .get_mut(&id)
            .ok_or(MvccError::LeaseNotFound)?;
        lease.renewals += 1;
        lease.remaining_ttl = 0;
        let (ttl, record) = (lease.ttl, encode_lease(lease));
        self.ops.push(WriteOp::Put {
            table: Table::Leases,
            key: lease_key(id),
            value: record,
        });
        Ok(ttl)
    }

    /// After a command succeeded: moves every key it changed from the lease of its previous
    /// live version (if any) to the lease of its new one (if any).
    pub(crate) fn attach_touched(&mut self) {
        let mut done = std::collections::BTreeSet::new();
        for (key, before) in std::mem::take(&mut self.touched) {
            if !done.insert(key.clone()) {
                continue;
            }
            let Some(versions) = self.index.keys.get(&key) else {
                continue;
            };
            let lease_of = |v: Option<&Version>| v.filter(|v| !v.tombstone).map_or(0, |v| v.lease);
            let old = lease_of(before.checked_sub(1).map(|i| &versions[i]));
            let new = lease_of(versions.last());
            if old == new {
                continue;
            }
            if let Some(lease) = self.index.leases.get_mut(&old) {
                lease.keys.remove(&key);
            }
            if let Some(lease) = self.index.leases.get_mut(&new) {
                lease.keys.insert(key);
            }
        }
    }

    /// etcd's alarm apply: `Get` lists the alarms of a type (all for `None`); `Activate`
    /// returns the alarm, new or already active; `Deactivate` returns it only if it was
    /// active. Both do nothing for `None`.
    fn alarm(&mut self, req: &AlarmRequest) -> Vec<AlarmMember> {
        let alarms = &mut self.index.alarms;
        let Some(alarm) = req.alarm else {
            return match req.action {
                AlarmAction::Get => alarms.iter().copied().collect(),
                AlarmAction::Activate | AlarmAction::Deactivate => Vec::new(),
            };
        };
        let member = AlarmMember {
            member_id: req.member_id,
            alarm,
        };
        match req.action {
            AlarmAction::Get => alarms
                .iter()
                .filter(|a| a.alarm == alarm)
                .copied()
                .collect(),
            AlarmAction::Activate => {
                if alarms.insert(member) {
                    self.ops.push(WriteOp::Put {
                        table: Table::Meta,
                        key: alarm_key(&member),
                        value: Vec::new(),
                    });
                }
                vec![member]
            }
            AlarmAction::Deactivate => {
                if !alarms.remove(&member) {
                    return Vec::new();
                }
                self.ops.push(WriteOp::Delete {
                    table: Table::Meta,
                    key: alarm_key(&member),
                });
                vec![member]
            }
        }
    }

    /// Applies a membership change, checked whole before anything changes (it never needs
    /// an undo); returns the members after it.
    fn membership(&mut self, change: &MembershipChange) -> Result<Vec<Member>, MvccError> {
        let members = &mut self.index.members;
        let known = |id: u64| members.contains_key(&id);
        let changed = match change {
            MembershipChange::Add(member) => {
                if known(member.id) || self.index.removed.contains(&member.id) {
                    return Err(MvccError::MemberExists);
                }
                let taken = members
                    .values()
                    .flat_map(|m| &m.peer_urls)
                    .any(|url| member.peer_urls.contains(url));
                if taken {
                    return Err(MvccError::PeerUrlExists);
                }
                members.insert(member.id, member.clone());
                member.id
            }
            MembershipChange::Remove(id) => {
                if members.remove(id).is_none() {
                    return Err(MvccError::MemberNotFound);
                }
                self.index.removed.insert(*id);
                self.ops.push(WriteOp::Delete {
                    table: Table::Meta,
                    key: member_key(META_MEMBER_PREFIX, *id),
                });
                self.ops.push(WriteOp::Put {
                    table: Table::Meta,
                    key: member_key(META_REMOVED_PREFIX, *id),
                    value: Vec::new(),
                });
                return Ok(self.index.members.values().cloned().collect());
            }
            MembershipChange::Promote(id) => {
                let member = members.get_mut(id).ok_or(MvccError::MemberNotFound)?;
                if !member.is_learner {
                    return Err(MvccError::MemberNotLearner);
                }
                member.is_learner = false;
                *id
            }
            MembershipChange::UpdatePeers { id, peer_urls } => {
                let taken = members
                    .values()
                    .filter(|m| m.id != *id)
                    .flat_map(|m| &m.peer_urls)
                    .any(|url| peer_urls.contains(url));
                let member = members.get_mut(id).ok_or(MvccError::MemberNotFound)?;
                if taken {
                    return Err(MvccError::PeerUrlExists);
                }
                member.peer_urls.clone_from(peer_urls);
                *id
            }
            MembershipChange::Publish {
                id,
                name,
                client_urls,
            } => {
                let member = members.get_mut(id).ok_or(MvccError::MemberNotFound)?;
                member.name.clone_from(name);
                member.client_urls.clone_from(client_urls);
                *id
            }
        };
        let member = &self.index.members[&changed];
        self.ops.push(WriteOp::Put {
            table: Table::Meta,
            key: member_key(META_MEMBER_PREFIX, changed),
            value: encode_member(member),
        });
        Ok(self.index.members.values().cloned().collect())
    }

    fn live_version(&self, key: &[u8]) -> Option<Version> {
        self.index
            .version_at(key, i64::MAX)
            .filter(|v| !v.tombstone)
            .copied()
    }

    fn put(&mut self, req: &PutRequest) -> Result<PutResponse, MvccError> {
        let previous = self.live_version(&req.key);
        let previous_kv = match &previous {
            Some(v) if req.prev_kv || req.ignore_value => {
                Some(self.values().key_value(&req.key, v, true)?)
            }
            Some(v) => Some(self.values().key_value(&req.key, v, false)?),
            None => None,
        };
        if (req.ignore_value || req.ignore_lease) && previous.is_none() {
            return Err(MvccError::KeyNotFound);
        }
        let value = if req.ignore_value {
            previous_kv
                .as_ref()
                .map(|kv| kv.value.clone())
                .unwrap_or_default()
        } else {
            req.value.clone()
        };
        let lease = match (&previous, req.ignore_lease) {
            (Some(v), true) => v.lease,
            _ => req.lease,
        };
        if !req.ignore_lease {
            check_lease(self.index, lease)?;
        }
        let version = Version {
            rev: (self.main, self.sub),
            create_revision: previous.map_or(self.main, |v| v.create_revision),
            version: previous.map_or(1, |v| v.version + 1),
            lease,
            tombstone: false,
            bytes: 0,
        };
        self.record(&req.key, version, value)?;
        Ok(PutResponse {
            revision: self.main,
            prev_kv: if req.prev_kv { previous_kv } else { None },
        })
    }

    fn delete(&mut self, req: &DeleteRangeRequest) -> Result<DeleteRangeResponse, MvccError> {
        let live: Vec<(Vec<u8>, Version)> = self
            .index
            .live(&req.key, &req.range_end, i64::MAX)
            .into_iter()
            .map(|(k, v)| (k.clone(), v))
            .collect();
        let mut prev_kvs = Vec::new();
        for (key, version) in &live {
            if req.prev_kv {
                prev_kvs.push(self.values().key_value(key, version, true)?);
            }
            self.record_deletion(key)?;
        }
        Ok(DeleteRangeResponse {
            revision: self.read_revision(),
            deleted: live.len() as i64,
            prev_kvs,
        })
    }

    /// A txn as etcd applies it (server/etcdserver/txn/txn.go): first every compare on the
    /// path taken, nested txns' included, is evaluated against the state before the txn;
    /// then the puts on that path are checked, then the ranges; only then do the operations
    /// run. So a nested compare does not see its parent's writes, and which error a bad txn
    /// gets follows that order.
    fn txn(&mut self, req: &TxnRequest) -> Result<TxnResponse, MvccError> {
        let view = self.view();
        let path = view.checked_path(req)?;
        self.run_path(req, &path, &mut 0)
    }

    fn run_path(
        &mut self,
        req: &TxnRequest,
        path: &[bool],
        at: &mut usize,
    ) -> Result<TxnResponse, MvccError> {
        let succeeded = path[*at];
        *at += 1;
        let ops = branch(req, succeeded);
        let mut responses = Vec::with_capacity(ops.len());
        for op in ops {
            responses.push(match op {
                RequestOp::Range(req) => {
                    let current = self.read_revision();
                    ResponseOp::Range(range_at(self.index, &self.values(), req, current)?)
                }
                RequestOp::Put(req) => ResponseOp::Put(self.put(req)?),
                RequestOp::DeleteRange(req) => ResponseOp::DeleteRange(self.delete(req)?),
                RequestOp::Txn(nested) => ResponseOp::Txn(self.run_path(nested, path, at)?),
            });
        }
        Ok(TxnResponse {
            succeeded,
            responses,
        })
    }

    fn compact(&mut self, revision: i64) -> Result<(), MvccError> {
        if revision <= self.index.compacted {
            return Err(MvccError::Compacted);
        }
        if revision > self.index.current {
            return Err(MvccError::FutureRevision);
        }
        let mut emptied = Vec::new();
        for (key, versions) in &mut self.index.keys {
            // Keep the newest version at or below `revision` unless it is a tombstone, and
            // everything after it.
            let position = versions.partition_point(|v| v.rev.0 <= revision);
            if position == 0 {
                continue;
            }
            let keep_from = if versions[position - 1].tombstone {
                position
            } else {
                position - 1
            };
            for dead in versions.drain(..keep_from) {
                self.index.bytes -= u64::from(dead.bytes);
                self.ops.push(WriteOp::Delete {
                    table: Table::Revisions,
                    key: rev_key(dead.rev),
                });
            }
            if versions.is_empty() {
                emptied.push(key.clone());
            }
        }
        for key in emptied {
            self.index.keys.remove(&key);
        }
        self.index.compacted = revision;
        put_meta(&mut self.ops, META_COMPACT_REVISION, revision);
        Ok(())
    }
}

/// The error the active alarms answer `command` with, as etcd's corrupt and capped
/// appliers: CORRUPT refuses every write; NOSPACE refuses what adds data, a put or a txn
/// with a put at its top level (what etcd's quota counts, so a nested put passes there too).
/// Read-only txns are reads and pass, as they bypass etcd's applier.
pub(crate) fn refused_by_alarms(
    alarms: &std::collections::BTreeSet<AlarmMember>,
    command: &Command,
) -> Option<MvccError> {
    let active = |alarm: AlarmType| alarms.iter().any(|a| a.alarm == alarm);
    if active(AlarmType::Corrupt) {
        let writes = match command {
            Command::Put(_)
            | Command::DeleteRange(_)
            | Command::Compact(_)
            | Command::LeaseGrant(_)
            | Command::LeaseRevoke(_)
            | Command::LeaseExpire(_) => true,
            Command::Txn(txn) => !txn.is_read_only(),
            // Membership changes pass: a corrupt cluster must still be repairable.
            Command::Alarm(_)
            | Command::LeaseKeepAlive(_)
            | Command::LeaseCheckpoint(_)
            | Command::Membership(_) => false,
        };
        return writes.then_some(MvccError::Corrupt);
    }
    if active(AlarmType::NoSpace) {
        let adds = match command {
            Command::Put(_) | Command::LeaseGrant(_) => true,
            Command::Txn(txn) => txn
                .success
                .iter()
                .chain(&txn.failure)
                .any(|op| matches!(op, RequestOp::Put(_))),
            _ => false,
        };
        return adds.then_some(MvccError::NoSpace);
    }
    None
}
