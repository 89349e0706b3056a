//! Fallback mvcc (scratch).
#![allow(missing_docs)]
mod types;

use std::collections::BTreeMap;

use parking_lot::RwLock;
pub use types::*;

use storage::{KvSnapshot, KvStore, StorageError, Table, WriteOp};

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MvccError {
    #[error("mvcc: required revision has been compacted")]
    Compacted,
    #[error("mvcc: required revision is a future revision")]
    FutureRevision,
    #[error("key not found")]
    KeyNotFound,
    #[error("requested lease not found")]
    LeaseNotFound,
    #[error("storage: {0}")]
    Storage(String),
}

impl From<StorageError> for MvccError {
    fn from(e: StorageError) -> Self {
        MvccError::Storage(e.to_string())
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AppliedIndex {
    pub index: u64,
    pub term: u64,
}

pub struct ApplyEntry<'a> {
    pub index: u64,
    pub term: u64,
    pub command: Option<&'a Command>,
}

#[derive(Clone, Default)]
struct Inner {
    current: i64,
    compacted: i64,
    applied: AppliedIndex,
    durable: AppliedIndex,
    history: BTreeMap<Vec<u8>, Vec<(i64, Option<KeyValue>)>>,
}

pub struct Store<S: KvStore> {
    kv: S,
    inner: RwLock<Inner>,
}

struct W<'a> {
    b: &'a mut Vec<u8>,
}
impl W<'_> {
    fn u8(&mut self, v: u8) {
        self.b.push(v)
    }
    fn i64(&mut self, v: i64) {
        self.b.extend_from_slice(&v.to_be_bytes())
    }
    fn bytes(&mut self, v: &[u8]) {
        self.b.extend_from_slice(&(v.len() as u32).to_be_bytes());
        self.b.extend_from_slice(v);
    }
}
struct R<'a> {
    b: &'a [u8],
}
fn bad() -> MvccError {
    MvccError::Storage("bad encoding".into())
}
impl R<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], MvccError> {
        if self.b.len() < n {
            return Err(bad());
        }
        let (a, rest) = self.b.split_at(n);
        self.b = rest;
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8, MvccError> {
        Ok(self.take(1)?[0])
    }
    fn i64(&mut self) -> Result<i64, MvccError> {
        Ok(i64::from_be_bytes(self.take(8)?.try_into().unwrap()))
    }
    fn bytes(&mut self) -> Result<Vec<u8>, MvccError> {
        let n = u32::from_be_bytes(self.take(4)?.try_into().unwrap()) as usize;
        Ok(self.take(n)?.to_vec())
    }
}

fn enc_range(w: &mut W, r: &RangeRequest) {
    w.bytes(&r.key);
    w.bytes(&r.range_end);
    w.i64(r.limit);
    w.i64(r.revision);
    w.u8(r.serializable as u8 | (r.keys_only as u8) << 1 | (r.count_only as u8) << 2);
}
fn dec_range(r: &mut R) -> Result<RangeRequest, MvccError> {
    let key = r.bytes()?;
    let range_end = r.bytes()?;
    let limit = r.i64()?;
    let revision = r.i64()?;
    let f = r.u8()?;
    Ok(RangeRequest {
        key,
        range_end,
        limit,
        revision,
        serializable: f & 1 != 0,
        keys_only: f & 2 != 0,
        count_only: f & 4 != 0,
        ..Default::default()
    })
}
fn enc_op(w: &mut W, op: &RequestOp) {
    match op {
        RequestOp::Range(r) => {
            w.u8(0);
            enc_range(w, r)
        }
        RequestOp::Put(p) => {
            w.u8(1);
            enc_put(w, p)
        }
        RequestOp::DeleteRange(d) => {
            w.u8(2);
            w.bytes(&d.key);
            w.bytes(&d.range_end);
            w.u8(d.prev_kv as u8)
        }
        RequestOp::Txn(t) => {
            w.u8(3);
            enc_txn(w, t)
        }
    }
}
fn enc_put(w: &mut W, p: &PutRequest) {
    w.bytes(&p.key);
    w.bytes(&p.value);
    w.i64(p.lease);
    w.u8(p.prev_kv as u8 | (p.ignore_value as u8) << 1 | (p.ignore_lease as u8) << 2);
}
fn dec_put(r: &mut R) -> Result<PutRequest, MvccError> {
    let key = r.bytes()?;
    let value = r.bytes()?;
    let lease = r.i64()?;
    let f = r.u8()?;
    Ok(PutRequest {
        key,
        value,
        lease,
        prev_kv: f & 1 != 0,
        ignore_value: f & 2 != 0,
        ignore_lease: f & 4 != 0,
    })
}
fn enc_txn(w: &mut W, t: &TxnRequest) {
    w.i64(t.compare.len() as i64);
    for c in &t.compare {
        w.u8(c.result as u8);
        match &c.target {
            CompareTarget::Version(v) => {
                w.u8(0);
                w.i64(*v)
            }
            CompareTarget::Create(v) => {
                w.u8(1);
                w.i64(*v)
            }
            CompareTarget::Mod(v) => {
                w.u8(2);
                w.i64(*v)
            }
            CompareTarget::Value(v) => {
                w.u8(3);
                w.bytes(v)
            }
            CompareTarget::Lease(v) => {
                w.u8(4);
                w.i64(*v)
            }
        }
        w.bytes(&c.key);
        w.bytes(&c.range_end);
    }
    for ops in [&t.success, &t.failure] {
        w.i64(ops.len() as i64);
        for op in ops {
            enc_op(w, op);
        }
    }
}
fn dec_txn(r: &mut R, depth: u32) -> Result<TxnRequest, MvccError> {
    if depth > 100 {
        return Err(bad());
    }
    let n = r.i64()?;
    let mut compare = Vec::new();
    for _ in 0..n {
        let result = match r.u8()? {
            0 => CompareResult::Equal,
            1 => CompareResult::Greater,
            2 => CompareResult::Less,
            3 => CompareResult::NotEqual,
            _ => return Err(bad()),
        };
        let target = match r.u8()? {
            0 => CompareTarget::Version(r.i64()?),
            1 => CompareTarget::Create(r.i64()?),
            2 => CompareTarget::Mod(r.i64()?),
            3 => CompareTarget::Value(r.bytes()?),
            4 => CompareTarget::Lease(r.i64()?),
            _ => return Err(bad()),
        };
        compare.push(Compare {
            result,
            target,
            key: r.bytes()?,
            range_end: r.bytes()?,
        });
    }
    let mut branches = Vec::new();
    for _ in 0..2 {
        let n = r.i64()?;
        let mut ops = Vec::new();
        for _ in 0..n {
            ops.push(match r.u8()? {
                0 => RequestOp::Range(dec_range(r)?),
                1 => RequestOp::Put(dec_put(r)?),
                2 => RequestOp::DeleteRange(DeleteRangeRequest {
                    key: r.bytes()?,
                    range_end: r.bytes()?,
                    prev_kv: r.u8()? != 0,
                }),
                3 => RequestOp::Txn(dec_txn(r, depth + 1)?),
                _ => return Err(bad()),
            });
        }
        branches.push(ops);
    }
    let failure = branches.pop().unwrap();
    let success = branches.pop().unwrap();
    Ok(TxnRequest {
        compare,
        success,
        failure,
    })
}

impl Command {
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::new();
        let mut w = W { b: &mut b };
        match self {
            Command::Put(p) => {
                w.u8(1);
                enc_put(&mut w, p)
            }
            Command::DeleteRange(d) => {
                w.u8(2);
                w.bytes(&d.key);
                w.bytes(&d.range_end);
                w.u8(d.prev_kv as u8)
            }
            Command::Txn(t) => {
                w.u8(3);
                enc_txn(&mut w, t)
            }
            Command::Compact(c) => {
                w.u8(4);
                w.i64(c.revision);
                w.u8(c.physical as u8)
            }
        }
        b
    }
    pub fn decode(bytes: &[u8]) -> Result<Command, MvccError> {
        let mut r = R { b: bytes };
        Ok(match r.u8()? {
            1 => Command::Put(dec_put(&mut r)?),
            2 => Command::DeleteRange(DeleteRangeRequest {
                key: r.bytes()?,
                range_end: r.bytes()?,
                prev_kv: r.u8()? != 0,
            }),
            3 => Command::Txn(dec_txn(&mut r, 0)?),
            4 => Command::Compact(CompactRequest {
                revision: r.i64()?,
                physical: r.u8()? != 0,
            }),
            _ => return Err(bad()),
        })
    }
}

fn enc_kv(key: &[u8], kv: &Option<KeyValue>) -> Vec<u8> {
    let mut b = Vec::new();
    let mut w = W { b: &mut b };
    w.bytes(key);
    match kv {
        None => w.u8(0),
        Some(kv) => {
            w.u8(1);
            w.i64(kv.create_revision);
            w.i64(kv.mod_revision);
            w.i64(kv.version);
            w.bytes(&kv.value);
            w.i64(kv.lease);
        }
    }
    b
}
fn dec_kv(b: &[u8]) -> Result<(Vec<u8>, Option<KeyValue>), MvccError> {
    let mut r = R { b };
    let key = r.bytes()?;
    if r.u8()? == 0 {
        return Ok((key, None));
    }
    let kv = KeyValue {
        key: key.clone(),
        create_revision: r.i64()?,
        mod_revision: r.i64()?,
        version: r.i64()?,
        value: r.bytes()?,
        lease: r.i64()?,
    };
    Ok((key, Some(kv)))
}

fn in_range(key: &[u8], start: &[u8], end: &[u8]) -> bool {
    if end.is_empty() {
        key == start
    } else if end == [0] {
        key >= start
    } else {
        key >= start && key < end
    }
}

impl Inner {
    fn at(&self, key: &[u8], rev: i64) -> Option<&KeyValue> {
        self.history
            .get(key)?
            .iter()
            .rev()
            .find(|(r, _)| *r <= rev)
            .and_then(|(_, kv)| kv.as_ref())
    }
    fn live(&self, start: &[u8], end: &[u8], rev: i64) -> Vec<KeyValue> {
        self.history
            .keys()
            .filter(|k| in_range(k, start, end))
            .filter_map(|k| self.at(k, rev).cloned())
            .collect()
    }
    fn range(&self, req: &RangeRequest) -> Result<RangeResponse, MvccError> {
        let rev = if req.revision <= 0 {
            self.current
        } else {
            req.revision
        };
        if rev > self.current {
            return Err(MvccError::FutureRevision);
        }
        if rev < self.compacted {
            return Err(MvccError::Compacted);
        }
        let mut kvs = self.live(&req.key, &req.range_end, rev);
        let count = kvs.len() as i64;
        let mut more = false;
        if req.limit > 0 && kvs.len() > req.limit as usize {
            kvs.truncate(req.limit as usize);
            more = true;
        }
        if req.keys_only {
            kvs.iter_mut().for_each(|kv| kv.value.clear());
        }
        if req.count_only {
            kvs.clear();
        }
        Ok(RangeResponse { kvs, more, count })
    }
    fn write(
        &mut self,
        rev: i64,
        sub: &mut i64,
        ops: &mut Vec<WriteOp>,
        key: &[u8],
        kv: Option<KeyValue>,
    ) {
        let mut k = rev.to_be_bytes().to_vec();
        k.extend_from_slice(&sub.to_be_bytes());
        *sub += 1;
        ops.push(WriteOp::Put {
            table: Table::Revisions,
            key: k,
            value: enc_kv(key, &kv),
        });
        self.history
            .entry(key.to_vec())
            .or_default()
            .push((rev, kv));
    }
    fn exec(
        &mut self,
        op: &RequestOp,
        rev: i64,
        sub: &mut i64,
        ops: &mut Vec<WriteOp>,
    ) -> Result<ResponseOp, MvccError> {
        Ok(match op {
            RequestOp::Range(r) => {
                let mut r = r.clone();
                r.revision = 0;
                let cur = self.current;
                self.current = rev.max(cur);
                let res = self.range(&r);
                self.current = cur;
                ResponseOp::Range(res?)
            }
            RequestOp::Put(p) => {
                let prev = self.at(&p.key, i64::MAX).cloned();
                if (p.ignore_value || p.ignore_lease) && prev.is_none() {
                    return Err(MvccError::KeyNotFound);
                }
                let value = if p.ignore_value {
                    prev.as_ref().unwrap().value.clone()
                } else {
                    p.value.clone()
                };
                let lease = if p.ignore_lease {
                    prev.as_ref().unwrap().lease
                } else {
                    p.lease
                };
                let kv = KeyValue {
                    key: p.key.clone(),
                    create_revision: prev.as_ref().map_or(rev, |k| k.create_revision),
                    mod_revision: rev,
                    version: prev.as_ref().map_or(1, |k| k.version + 1),
                    value,
                    lease,
                };
                self.write(rev, sub, ops, &p.key, Some(kv));
                ResponseOp::Put(PutResponse {
                    prev_kv: if p.prev_kv { prev } else { None },
                })
            }
            RequestOp::DeleteRange(d) => {
                let live = self.live(&d.key, &d.range_end, i64::MAX);
                for kv in &live {
                    self.write(rev, sub, ops, &kv.key, None);
                }
                ResponseOp::DeleteRange(DeleteRangeResponse {
                    deleted: live.len() as i64,
                    prev_kvs: if d.prev_kv { live } else { vec![] },
                })
            }
            RequestOp::Txn(t) => {
                let ok = t.compare.iter().all(|c| self.compare(c));
                let branch = if ok { &t.success } else { &t.failure };
                let mut responses = Vec::new();
                for op in branch {
                    responses.push(self.exec(op, rev, sub, ops)?);
                }
                ResponseOp::Txn(TxnResponse {
                    succeeded: ok,
                    responses,
                })
            }
        })
    }
    fn compare(&self, c: &Compare) -> bool {
        let kvs = if c.range_end.is_empty() {
            vec![self.at(&c.key, i64::MAX).cloned().unwrap_or_default()]
        } else {
            self.live(&c.key, &c.range_end, i64::MAX)
        };
        kvs.iter().all(|kv| {
            let ord = match &c.target {
                CompareTarget::Version(v) => kv.version.cmp(v),
                CompareTarget::Create(v) => kv.create_revision.cmp(v),
                CompareTarget::Mod(v) => kv.mod_revision.cmp(v),
                CompareTarget::Value(v) => {
                    if kv.key.is_empty() {
                        return false;
                    }
                    kv.value.as_slice().cmp(v.as_slice())
                }
                CompareTarget::Lease(v) => kv.lease.cmp(v),
            };
            match c.result {
                CompareResult::Equal => ord.is_eq(),
                CompareResult::Greater => ord.is_gt(),
                CompareResult::Less => ord.is_lt(),
                CompareResult::NotEqual => ord.is_ne(),
            }
        })
    }
}

fn meta(ops: &mut Vec<WriteOp>, name: &str, v: i64) {
    ops.push(WriteOp::Put {
        table: Table::Meta,
        key: name.as_bytes().to_vec(),
        value: v.to_be_bytes().to_vec(),
    });
}

fn load<T: KvSnapshot + ?Sized>(snap: &T) -> Result<Inner, MvccError> {
    let mut inner = Inner {
        current: 1,
        ..Default::default()
    };
    let get = |name: &str| -> Result<i64, MvccError> {
        Ok(snap
            .get(Table::Meta, name.as_bytes())?
            .map(|v| i64::from_be_bytes(v.try_into().unwrap()))
            .unwrap_or(0))
    };
    inner.current = get("current")?.max(1);
    inner.compacted = get("compacted")?;
    inner.applied = AppliedIndex {
        index: get("applied_index")? as u64,
        term: get("applied_term")? as u64,
    };
    inner.durable = inner.applied;
    let mut err = None;
    snap.scan(Table::Revisions, &[], None, &mut |k, v| {
        let rev = i64::from_be_bytes(k[..8].try_into().unwrap());
        match dec_kv(v) {
            Ok((key, kv)) => inner.history.entry(key).or_default().push((rev, kv)),
            Err(e) => err = Some(e),
        }
        true
    })?;
    if let Some(e) = err {
        return Err(e);
    }
    Ok(inner)
}

impl<S: KvStore> Store<S> {
    pub fn open(kv: S) -> Result<Self, MvccError> {
        let inner = load(&kv.snapshot()?)?;
        Ok(Self {
            kv,
            inner: RwLock::new(inner),
        })
    }

    pub fn apply_batch(
        &self,
        entries: &[ApplyEntry<'_>],
        durable: bool,
    ) -> Result<Vec<Applied>, MvccError> {
        let mut inner = self.inner.read().clone();
        let mut ops = Vec::new();
        let mut out = Vec::new();
        for e in entries {
            inner.applied = AppliedIndex {
                index: e.index,
                term: e.term,
            };
            let Some(cmd) = e.command else { continue };
            let rev = inner.current + 1;
            let mut sub = 0;
            let mut local = Vec::new();
            let mut trial = inner.clone();
            let result = match cmd {
                Command::Put(p) => trial
                    .exec(&RequestOp::Put(p.clone()), rev, &mut sub, &mut local)
                    .map(|r| match r {
                        ResponseOp::Put(p) => CommandResponse::Put(p),
                        _ => unreachable!(),
                    }),
                Command::DeleteRange(d) => trial
                    .exec(
                        &RequestOp::DeleteRange(d.clone()),
                        rev,
                        &mut sub,
                        &mut local,
                    )
                    .map(|r| match r {
                        ResponseOp::DeleteRange(p) => CommandResponse::DeleteRange(p),
                        _ => unreachable!(),
                    }),
                Command::Txn(t) => trial
                    .exec(&RequestOp::Txn(t.clone()), rev, &mut sub, &mut local)
                    .map(|r| match r {
                        ResponseOp::Txn(p) => CommandResponse::Txn(p),
                        _ => unreachable!(),
                    }),
                Command::Compact(c) => {
                    if c.revision > trial.current {
                        Err(MvccError::FutureRevision)
                    } else if c.revision <= trial.compacted {
                        Err(MvccError::Compacted)
                    } else {
                        trial.compacted = c.revision;
                        meta(&mut local, "compacted", c.revision);
                        Ok(CommandResponse::Compact)
                    }
                }
            };
            if result.is_ok() {
                if sub > 0 {
                    trial.current = rev;
                }
                inner = trial;
                ops.extend(local);
            }
            out.push(Applied {
                result,
                revision: inner.current,
            });
        }
        meta(&mut ops, "current", inner.current);
        meta(&mut ops, "applied_index", inner.applied.index as i64);
        meta(&mut ops, "applied_term", inner.applied.term as i64);
        self.kv.write(ops, durable)?;
        if durable {
            inner.durable = inner.applied;
        }
        *self.inner.write() = inner;
        Ok(out)
    }

    pub fn range(&self, req: &RangeRequest) -> Result<(RangeResponse, Revision), MvccError> {
        let inner = self.inner.read();
        Ok((inner.range(req)?, inner.current))
    }
    pub fn current_revision(&self) -> Revision {
        self.inner.read().current
    }
    pub fn compact_revision(&self) -> Revision {
        self.inner.read().compacted
    }
    pub fn applied(&self) -> AppliedIndex {
        self.inner.read().applied
    }
    pub fn durable_applied(&self) -> AppliedIndex {
        self.inner.read().durable
    }
    pub fn snapshot_view(&self) -> Result<(S::Snapshot, AppliedIndex), MvccError> {
        let snap = self.kv.snapshot()?;
        let applied = load(&snap)?.applied;
        Ok((snap, applied))
    }
    pub fn restore(
        &self,
        entries: &mut dyn Iterator<Item = storage::Result<(Table, Vec<u8>, Vec<u8>)>>,
    ) -> Result<AppliedIndex, MvccError> {
        let mut inner = self.inner.write();
        self.kv.restore(entries)?;
        *inner = load(&self.kv.snapshot()?)?;
        Ok(inner.applied)
    }
    pub fn hash_kv(&self, revision: Revision) -> Result<(u32, Revision, Revision), MvccError> {
        let inner = self.inner.read();
        let rev = if revision <= 0 {
            inner.current
        } else {
            revision
        };
        let mut h = 0u64;
        for (k, versions) in &inner.history {
            for (r, kv) in versions {
                if *r <= rev {
                    for b in k.iter().chain(format!("{r}{kv:?}").as_bytes()) {
                        h = h.wrapping_mul(31).wrapping_add(*b as u64);
                    }
                }
            }
        }
        Ok((h as u32, inner.compacted, rev))
    }
    pub fn kv(&self) -> &S {
        &self.kv
    }
}
