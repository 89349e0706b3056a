//! Store-loop tests: whole nodes (store loop, apply task, raft, mvcc) over in-memory storage
//! and an in-process transport that can cut links.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use mvcc::{PutRequest, RangeRequest};
use parking_lot::Mutex;
use storage::faulty::{Faulty, FaultyKvStore, FaultyLogStore};
use storage::MemLogStore;

use super::*;

/// Delivers messages between nodes of one process; `cut` links drop everything.
#[derive(Default)]
struct LocalNet {
    nodes: Mutex<HashMap<u64, Node>>,
    cut: Mutex<HashSet<(u64, u64)>>,
}

impl LocalNet {
    fn linked(&self, from: u64, to: u64) -> bool {
        !self.cut.lock().contains(&(from, to))
    }

    fn isolate(&self, id: u64, ids: &[u64]) {
        let mut cut = self.cut.lock();
        for &other in ids {
            cut.insert((id, other));
            cut.insert((other, id));
        }
    }

    fn heal(&self) {
        self.cut.lock().clear();
    }

    fn node(&self, id: u64) -> Option<Node> {
        self.nodes.lock().get(&id).cloned()
    }
}

struct LocalTransport {
    from: u64,
    net: Arc<LocalNet>,
}

impl Transport for LocalTransport {
    fn send(&self, to: NodeId, envelopes: Vec<Envelope>) {
        if !self.net.linked(self.from, to.0) {
            return;
        }
        if let Some(node) = self.net.node(to.0) {
            node.step(NodeId(self.from), envelopes);
        }
    }

    fn send_snapshot(&self, to: NodeId, snapshot: OutgoingSnapshot) {
        let net = self.net.clone();
        let from = self.from;
        std::thread::spawn(move || {
            let delivered = (|| {
                if !net.linked(from, to.0) {
                    return false;
                }
                let Some(target) = net.node(to.0) else {
                    return false;
                };
                let Ok(mut sink) =
                    target.receive_snapshot(NodeId(from), snapshot.shard, &snapshot.message)
                else {
                    return false;
                };
                for chunk in snapshot.chunks {
                    let Ok(chunk) = chunk else { return false };
                    if sink.write_chunk(&chunk).is_err() {
                        return false;
                    }
                }
                sink.finish().is_ok()
            })();
            if let Some(sender) = net.node(from) {
                sender.report_snapshot(to, snapshot.shard, delivered);
            }
        });
    }
}

/// A member's disks: in memory, but a crash loses what was not made durable.
struct Disks {
    log: Arc<FaultyLogStore>,
    kv: Arc<FaultyKvStore>,
    /// Milliseconds every state machine write takes (a slow disk, a long compaction).
    write_delay: Arc<AtomicU64>,
    /// Milliseconds a snapshot restore takes (a large snapshot).
    restore_delay: Arc<AtomicU64>,
    /// Restores started and finished: a restore runs while they differ.
    restores: Arc<(AtomicU64, AtomicU64)>,
}

impl Disks {
    fn new() -> Self {
        Self {
            log: Arc::new(FaultyLogStore::new()),
            kv: Arc::new(FaultyKvStore::new()),
            write_delay: Arc::new(AtomicU64::new(0)),
            restore_delay: Arc::new(AtomicU64::new(0)),
            restores: Arc::new((AtomicU64::new(0), AtomicU64::new(0))),
        }
    }
}

/// The state machine store of a member, slowed down at will.
#[derive(Clone)]
struct SlowKv {
    inner: Arc<FaultyKvStore>,
    delay: Arc<AtomicU64>,
    restore_delay: Arc<AtomicU64>,
    restores: Arc<(AtomicU64, AtomicU64)>,
}

impl storage::KvStore for SlowKv {
    type Snapshot = <FaultyKvStore as storage::KvStore>::Snapshot;

    fn write(&self, ops: Vec<storage::WriteOp>, durable: bool) -> storage::Result<()> {
        let delay = self.delay.load(Ordering::Relaxed);
        if delay > 0 {
            std::thread::sleep(Duration::from_millis(delay));
        }
        self.inner.write(ops, durable)
    }

    fn snapshot(&self) -> storage::Result<Self::Snapshot> {
        self.inner.snapshot()
    }

    fn restore(
        &self,
        records: &mut dyn Iterator<Item = storage::Result<(storage::Table, Vec<u8>, Vec<u8>)>>,
    ) -> storage::Result<()> {
        self.restores.0.fetch_add(1, Ordering::AcqRel);
        std::thread::sleep(Duration::from_millis(
            self.restore_delay.load(Ordering::Relaxed),
        ));
        let restored = self.inner.restore(records);
        self.restores.1.fetch_add(1, Ordering::AcqRel);
        restored
    }

    fn size_bytes(&self) -> u64 {
        self.inner.size_bytes()
    }

    fn defragment(&self) -> storage::Result<()> {
        self.inner.defragment()
    }
}

struct TestCluster {
    net: Arc<LocalNet>,
    /// Every member that has disks here, in the order they were created.
    ids: Vec<u64>,
    /// The members the cluster was bootstrapped with; the others joined it.
    founders: Vec<u64>,
    members: HashMap<u64, Disks>,
    snapshot_count: u64,
    lease_checkpoint_interval: Duration,
    dir: std::path::PathBuf,
}

impl TestCluster {
    fn new(size: u64, snapshot_count: u64) -> Self {
        Self::with_checkpoints(size, snapshot_count, DEFAULT_LEASE_CHECKPOINT_INTERVAL)
    }

    fn with_checkpoints(
        size: u64,
        snapshot_count: u64,
        lease_checkpoint_interval: Duration,
    ) -> Self {
        let ids: Vec<u64> = (1..=size).collect();
        let dir = std::env::temp_dir().join(format!(
            "concord-node-test-{}-{}",
            std::process::id(),
            NEXT_DIR.fetch_add(1, Ordering::Relaxed)
        ));
        let mut cluster = Self {
            net: Arc::new(LocalNet::default()),
            members: ids.iter().map(|&id| (id, Disks::new())).collect(),
            founders: ids.clone(),
            ids,
            snapshot_count,
            lease_checkpoint_interval,
            dir,
        };
        for id in cluster.ids.clone() {
            cluster.start(id);
        }
        cluster
    }

    fn config(&self, id: u64) -> NodeConfig {
        NodeConfig {
            node_id: NodeId(id),
            cluster_id: 7,
            initial_members: if self.founders.contains(&id) {
                self.founders.iter().map(|&id| test_member(id)).collect()
            } else {
                Vec::new()
            },
            tick_interval: Duration::from_millis(20),
            election_ticks: 10,
            heartbeat_ticks: 1,
            snapshot_count: self.snapshot_count,
            snapshot_catchup_entries: self.snapshot_count / 4,
            request_timeout: Duration::from_secs(5),
            max_pending_proposals: 10_000,
            seed: id * 7919,
            snapshot_dir: self.dir.join(id.to_string()),
            snapshot_keys: None,
            clock: Clock::system(),
            watch: WatchConfig::default(),
            watch_progress_notify_interval: DEFAULT_WATCH_PROGRESS_NOTIFY_INTERVAL,
            lease_checkpoint_interval: self.lease_checkpoint_interval,
        }
    }

    fn start(&mut self, id: u64) {
        let member = &self.members[&id];
        let transport = Arc::new(LocalTransport {
            from: id,
            net: self.net.clone(),
        });
        let kv = SlowKv {
            inner: member.kv.clone(),
            delay: member.write_delay.clone(),
            restore_delay: member.restore_delay.clone(),
            restores: member.restores.clone(),
        };
        let node =
            Node::start(self.config(id), member.log.clone(), kv, transport).expect("node starts");
        self.net.nodes.lock().insert(id, node);
    }

    /// Gives member `id` empty disks and starts it as a member joining the cluster (it
    /// waits for the leader; add it with a membership change).
    fn join(&mut self, id: u64) {
        self.ids.push(id);
        self.members.insert(id, Disks::new());
        self.start(id);
    }

    /// Changes the membership through member `via`.
    async fn change(&self, via: u64, change: MembershipChange) -> Result<Vec<Member>, NodeError> {
        self.node(via).change_membership(change).await
    }

    fn stop(&mut self, id: u64) {
        let node = self.net.nodes.lock().remove(&id).expect("running");
        node.shutdown();
    }

    fn node(&self, id: u64) -> Node {
        self.net.node(id).expect("running")
    }

    async fn put(&self, via: u64, key: &str, value: &str) -> Applied {
        let command = Command::Put(PutRequest {
            key: key.as_bytes().to_vec(),
            value: value.as_bytes().to_vec(),
            ..Default::default()
        });
        self.node(via).propose(command).await.expect("put applies")
    }

    async fn get(&self, via: u64, key: &str) -> Option<Vec<u8>> {
        let node = self.node(via);
        node.read_index().await.expect("read index");
        let req = RangeRequest {
            key: key.as_bytes().to_vec(),
            ..Default::default()
        };
        let (response, _) = node.range(&req).expect("range");
        response.kvs.into_iter().next().map(|kv| kv.value)
    }

    /// The member every running member names as leader, once they agree.
    async fn leader(&self) -> u64 {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let running: Vec<Node> = self.net.nodes.lock().values().cloned().collect();
            let leaders: HashSet<u64> = running.iter().map(|n| n.status().leader).collect();
            if leaders.len() == 1 && !leaders.contains(&0) {
                return leaders.into_iter().next().expect("one");
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no agreed leader: {leaders:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn grant(&self, via: u64, id: LeaseId, ttl: i64) {
        let grant = Command::LeaseGrant(mvcc::LeaseGrantRequest { id, ttl });
        let applied = self.node(via).propose(grant).await.expect("grant applies");
        assert!(applied.result.is_ok(), "{applied:?}");
    }

    /// Renews through whichever member leads, as the API's leader link does: a member that
    /// cannot answer in time (cut off) is passed over for the next.
    async fn renew(&self, id: LeaseId) -> Result<i64, NodeError> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        let mut via = self.ids[0];
        loop {
            let next =
                self.ids[(self.ids.iter().position(|&i| i == via).unwrap() + 1) % self.ids.len()];
            let attempt = match self.net.node(via) {
                Some(node) => {
                    tokio::time::timeout(Duration::from_millis(300), node.renew_lease(id))
                        .await
                        .unwrap_or(Err(NodeError::Timeout))
                }
                None => Err(NodeError::Stopped),
            };
            match attempt {
                Err(NodeError::NotLeader(leader)) if leader != 0 && leader != via => via = leader,
                Err(NodeError::NotLeader(_) | NodeError::Timeout | NodeError::Stopped) => {
                    via = next
                }
                answer => return answer,
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no leader renewed lease {id}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Stops a follower and writes until the leader's log is compacted past what it has,
    /// so that it can catch up only through a snapshot. Returns the leader, the stopped
    /// member, and a running member to write through.
    async fn leave_a_member_behind_the_log(&mut self) -> (u64, u64, u64) {
        self.put(1, "first", "1").await;
        let leader = self.node(1).status().leader;
        let lagging = (1..=3).find(|id| *id != leader).unwrap();
        self.stop(lagging);
        let writer = (1..=3).find(|id| *id != lagging).unwrap();
        for i in 0..1500 {
            self.put(writer, &format!("key{i:05}"), &format!("{i}"))
                .await;
        }
        // Make sure the log was compacted past what the lagging member has: the apply task
        // makes its state durable at least every DURABLE_EVERY, then the loop compacts.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while self.members[&leader].log.first_index(FIRST_SHARD) < 300 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "log was never compacted"
            );
            self.put(writer, "tick", "t").await;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        (leader, lagging, writer)
    }

    async fn wait_applied(&self, id: u64, index: u64) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while self.node(id).status().applied_index < index {
            assert!(
                tokio::time::Instant::now() < deadline,
                "node {id} did not reach applied index {index}: {:?}",
                self.node(id).status()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        let nodes: Vec<Node> = self.net.nodes.lock().drain().map(|(_, n)| n).collect();
        for node in nodes {
            node.shutdown();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

static NEXT_DIR: AtomicU64 = AtomicU64::new(0);

/// Member `id` of a test cluster.
fn test_member(id: u64) -> Member {
    Member {
        id,
        name: format!("m{id}"),
        peer_urls: vec![format!("local://m{id}")],
        ..Default::default()
    }
}

// Proves the basic path: a write through any member is applied on all of them, gets one
// revision each, and a linearizable read through every member sees it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_through_any_member_are_read_everywhere() {
    let cluster = TestCluster::new(3, 100_000);
    let mut revisions = Vec::new();
    for via in 1..=3 {
        let applied = cluster
            .put(via, &format!("k{via}"), &format!("v{via}"))
            .await;
        assert!(applied.result.is_ok());
        revisions.push(applied.revision);
    }
    assert_eq!(revisions, vec![2, 3, 4]);
    for via in 1..=3 {
        for key in 1..=3 {
            let value = cluster.get(via, &format!("k{key}")).await;
            assert_eq!(value, Some(format!("v{key}").into_bytes()), "via {via}");
        }
    }
    let leader = cluster.node(1).status().leader;
    assert!(leader != 0);
    for id in 1..=3 {
        assert_eq!(cluster.node(id).status().leader, leader);
    }
}

// Proves a majority keeps serving while a member is cut off, that the isolated member
// cannot serve a linearizable read, and that it catches up from the log once healed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn minority_is_cut_off_then_catches_up() {
    let cluster = TestCluster::new(3, 100_000);
    cluster.put(1, "before", "1").await;
    let leader = cluster.node(1).status().leader;
    let follower = (1..=3).find(|id| *id != leader).unwrap();
    cluster.net.isolate(follower, &cluster.ids);
    let others: Vec<u64> = (1..=3).filter(|id| *id != follower).collect();
    let mut last = 0;
    for i in 0..20 {
        last = cluster
            .put(others[i % 2], &format!("during{i}"), "x")
            .await
            .revision;
    }
    // The isolated member must not answer a linearizable read while it cannot reach a quorum.
    let isolated = cluster.node(follower);
    let read = tokio::time::timeout(Duration::from_millis(500), isolated.read_index()).await;
    assert!(read.is_err() || read.unwrap().is_err());
    cluster.net.heal();
    assert_eq!(cluster.get(follower, "during19").await, Some(b"x".to_vec()));
    assert_eq!(cluster.node(follower).status().revision, last);
}

// Proves the snapshot path end to end: a member that misses more writes than the leader
// keeps in its log receives a streamed snapshot, installs it, and ends with exactly the
// leader's state (same HashKV), then keeps applying new writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lagging_member_catches_up_through_a_snapshot() {
    let mut cluster = TestCluster::new(3, 200);
    let (leader, lagging, writer) = cluster.leave_a_member_behind_the_log().await;
    cluster.start(lagging);
    let target = cluster.node(leader).status().applied_index;
    cluster.wait_applied(lagging, target).await;
    // The snapshot is installed in the state machine (which publishes the applied index)
    // before the log records it, so the log may lag the applied index by a moment.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while cluster.members[&lagging].log.first_index(FIRST_SHARD) <= 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the lagging member's log never recorded the snapshot"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let revision = cluster.node(leader).status().revision;
    cluster
        .wait_applied(lagging, cluster.node(leader).status().applied_index)
        .await;
    let leader_hash = cluster.node(leader).hash_kv(revision).unwrap();
    let lagging_hash = cluster.node(lagging).hash_kv(revision).unwrap();
    assert_eq!(leader_hash, lagging_hash);
    cluster.put(writer, "after", "snapshot").await;
    assert_eq!(
        cluster.get(lagging, "after").await,
        Some(b"snapshot".to_vec())
    );
}

// Proves that a snapshot install does not stop the store loop: while a member restores a
// snapshot slowly (2 s), its loop keeps ticking, a write sent through it waits and is then
// applied, and the member ends with the leader's state. Before, the loop waited for the
// restore, and every shard of the member stood still with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_loop_keeps_ticking_while_a_snapshot_is_restored() {
    let mut cluster = TestCluster::new(3, 200);
    let (leader, lagging, writer) = cluster.leave_a_member_behind_the_log().await;
    cluster.members[&lagging]
        .restore_delay
        .store(2000, Ordering::Relaxed);
    cluster.start(lagging);
    let restores = cluster.members[&lagging].restores.clone();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while restores.0.load(Ordering::Acquire) == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no snapshot restore started"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let node = cluster.node(lagging);
    let ticks_before = node.status().ticks;
    // Sent while the replica is parked: it must wait, not fail.
    let during = tokio::spawn({
        let node = node.clone();
        async move {
            node.propose(Command::Put(PutRequest {
                key: b"during".to_vec(),
                value: b"restore".to_vec(),
                ..Default::default()
            }))
            .await
        }
    });
    let started = std::time::Instant::now();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(
        restores.1.load(Ordering::Acquire),
        0,
        "the restore finished too early to tell ({:?}, {} started)",
        started.elapsed(),
        restores.0.load(Ordering::Acquire)
    );
    let ticks = node.status().ticks - ticks_before;
    // 50 ticks of 20 ms in that second; a loop that waits for the restore takes none.
    assert!(ticks >= 25, "the store loop ticked {ticks} times in 1 s");
    let applied = during
        .await
        .unwrap()
        .expect("the write is applied after the restore");
    assert!(applied.result.is_ok());
    assert!(restores.1.load(Ordering::Acquire) >= 1);
    let revision = cluster.node(leader).status().revision;
    cluster
        .wait_applied(lagging, cluster.node(leader).status().applied_index)
        .await;
    assert_eq!(
        cluster.node(leader).hash_kv(revision).unwrap(),
        cluster.node(lagging).hash_kv(revision).unwrap()
    );
    assert_eq!(
        cluster.get(writer, "during").await,
        Some(b"restore".to_vec())
    );
}

// Proves crash recovery: every member loses power at once, losing every write it had not
// made durable (the state machine makes its applies durable only now and then), and every
// acknowledged write is still there after the restart, replayed from the Raft log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_write_survives_a_full_crash() {
    let mut cluster = TestCluster::new(3, 100_000);
    for i in 0..50 {
        cluster
            .put(1 + i % 3, &format!("k{i}"), &format!("{i}"))
            .await;
    }
    let mut lost = 0;
    for id in 1..=3 {
        cluster.stop(id);
        let member = &cluster.members[&id];
        lost += member.kv.unsynced_writes();
        member.log.crash(0);
        member.kv.crash(0);
    }
    assert!(lost > 0, "the crash lost nothing: replay is not exercised");
    for id in 1..=3 {
        cluster.start(id);
    }
    for i in 0..50u64 {
        let value = cluster.get(1 + (i + 1) % 3, &format!("k{i}")).await;
        assert_eq!(value, Some(i.to_string().into_bytes()));
    }
}

// Proves the bound on waiting reads: a member that cannot get its ReadIndex rounds answered
// (cut off from the others) refuses reads with `TooManyRequests` once `max_pending_proposals`
// wait, counting those in rounds already sent, instead of holding every one until it times
// out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_waiting_for_unanswered_rounds_are_bounded() {
    let cluster = TestCluster::new(3, 100_000);
    cluster.put(1, "k", "v").await;
    let leader = cluster.leader().await;
    let follower = (1..=3).find(|id| *id != leader).unwrap();
    cluster.net.isolate(follower, &cluster.ids);
    let node = cluster.node(follower);
    let max = cluster.config(follower).max_pending_proposals;
    let mut waiting = Vec::new();
    let mut refused = 0;
    for i in 0..3 * max {
        match node.submit_read() {
            Ok(rx) => waiting.push(rx),
            Err(NodeError::TooManyRequests) => refused += 1,
            Err(e) => panic!("read {i}: {e}"),
        }
        if i % 1000 == 0 {
            // Let the store loop move the waiting reads into rounds.
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
    }
    assert!(
        refused > 0,
        "{} reads accepted, none refused",
        waiting.len()
    );
    assert!(
        waiting.len() <= max + 1000,
        "{} reads accepted for a bound of {max}",
        waiting.len()
    );
}

// Proves that ReadIndex contexts (and request ids, which they are drawn from) never repeat
// across restarts: a member restarted after many reads and writes starts past every id its
// previous run used, so a late answer to an old round cannot answer a new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_contexts_start_past_the_previous_run_after_a_restart() {
    let mut cluster = TestCluster::new(1, 100_000);
    for i in 0..200 {
        cluster.put(1, &format!("k{i}"), "v").await;
        cluster.get(1, &format!("k{i}")).await;
    }
    let used = cluster.node(1).shared.waiters.next_id();
    cluster.stop(1);
    cluster.start(1);
    let first = cluster.node(1).shared.waiters.next_id();
    assert!(
        first > used,
        "restarted at {first}, the last run reached {used}"
    );
}

// Proves the bound on waiting proposals: past `max_pending_proposals` a write is refused with
// `TooManyRequests` instead of queueing without limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_proposals_are_bounded() {
    let cluster = TestCluster::new(1, 100_000);
    let node = cluster.node(1);
    node.shared
        .waiters
        .fill_proposals(cluster.config(1).max_pending_proposals);
    let refused = node
        .propose(Command::Put(PutRequest {
            key: b"k".to_vec(),
            ..Default::default()
        }))
        .await;
    assert_eq!(refused.unwrap_err(), NodeError::TooManyRequests);
}

// Proves that a keepalive is answered by the leader from memory: a thousand renewals leave
// the Raft log as it was, and a member that does not lead refuses them, naming the leader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keepalives_are_answered_by_the_leader_without_a_log_write() {
    let cluster = TestCluster::new(3, 100_000);
    cluster.grant(1, 7, 60).await;
    let leader = cluster.leader().await;
    let node = cluster.node(leader);
    // The first renewal may wait for the leader to become the primary lessor.
    assert_eq!(node.renew_lease(7).await, Ok(60));
    let before = node.status().raft_index;
    for _ in 0..1000 {
        assert_eq!(node.renew_lease(7).await, Ok(60));
    }
    let after = node.status().raft_index;
    assert_eq!(before, after, "keepalives wrote to the log");
    for id in cluster.ids.iter().filter(|&&id| id != leader) {
        let refused = cluster.node(*id).renew_lease(7).await;
        assert_eq!(refused, Err(NodeError::NotLeader(leader)));
    }
    assert_eq!(
        node.renew_lease(8).await,
        Err(NodeError::Mvcc(MvccError::LeaseNotFound))
    );
}

// Proves that expiry is the leader's and survives a change of leader both ways: a lease kept
// alive through whichever member leads outlives the old leader's isolation, and a lease
// nobody renews still expires after it, not before its TTL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_lease_outlives_a_leader_change_and_a_forgotten_one_expires() {
    let cluster = TestCluster::new(3, 100_000);
    let started = tokio::time::Instant::now();
    cluster.grant(1, 1, 2).await;
    cluster.grant(1, 2, 2).await;
    let old = cluster.leader().await;
    let mut isolated = false;
    while started.elapsed() < Duration::from_secs(5) {
        assert_eq!(cluster.renew(1).await, Ok(2));
        if !isolated && started.elapsed() > Duration::from_millis(600) {
            cluster.net.isolate(old, &cluster.ids);
            isolated = true;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let new = (1..=3).find(|&id| id != old).unwrap();
    let node = cluster.node(new);
    node.read_index().await.expect("the majority serves");
    assert!(node.lease(1).is_some(), "the kept lease expired");
    assert!(
        node.lease(2).is_none(),
        "the forgotten lease outlived its TTL by 3 s"
    );
    assert!(node.status().leader != old);
}

// Proves lease checkpoints: the leader records how long a lease nobody renews has left, so a
// new leader does not restart it at its full TTL; and a renewal of a checkpointed lease
// clears the checkpoint through the log before it is answered, so that no later leader can
// cut the renewed lease short.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoints_carry_remaining_ttls_across_leaders_and_renewals_clear_them() {
    let cluster = TestCluster::with_checkpoints(3, 100_000, Duration::from_millis(200));
    let granted = tokio::time::Instant::now();
    cluster.grant(1, 1, 6).await;
    cluster.grant(1, 2, 6).await;
    let old = cluster.leader().await;
    // Under half the TTL left: checkpointed at the next interval.
    let checkpointed = |id: LeaseId| {
        let node = cluster.node(old);
        node.lease(id).map_or(0, |lease| lease.remaining_ttl)
    };
    while checkpointed(1) == 0 || checkpointed(2) == 0 {
        assert!(granted.elapsed() < Duration::from_secs(5), "no checkpoint");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        checkpointed(1) <= 3,
        "checkpoint {} of a 6 s lease at half time",
        checkpointed(1)
    );
    // A renewal clears the checkpoint before it is answered.
    assert_eq!(cluster.renew(2).await, Ok(6));
    assert_eq!(
        checkpointed(2),
        0,
        "renewed without clearing the checkpoint"
    );
    cluster.net.isolate(old, &cluster.ids);
    let new = (1..=3).find(|&id| id != old).unwrap();
    let node = cluster.node(new);
    // Lease 1 expires about 6 s after its grant (its checkpoint), not a full TTL after the
    // new leader took over.
    loop {
        node.read_index().await.expect("the majority serves");
        if node.lease(1).is_none() {
            break;
        }
        assert!(
            granted.elapsed() < Duration::from_millis(8500),
            "lease 1 restarted at its full TTL"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        granted.elapsed() >= Duration::from_secs(6),
        "lease 1 expired early"
    );
    // Lease 2 was renewed after its checkpoint: the new leader gives it its full TTL.
    assert!(node.lease(2).is_some(), "lease 2 lost its renewal");
}

// Proves that recovery checks the term, not only the index, of an interrupted snapshot
// install: a log whose entry at the state machine's index is a deposed leader's (another
// term) records the snapshot instead of keeping that divergent tail as committed.
#[test]
fn an_interrupted_install_over_a_divergent_tail_is_completed() {
    let log = MemLogStore::new();
    let entries: Vec<consensus::Entry> = (1..=10)
        .map(|index| consensus::Entry {
            index,
            term: 1,
            ..Default::default()
        })
        .collect();
    log.write(
        vec![ShardLogWrite {
            shard: FIRST_SHARD,
            entries,
            ..Default::default()
        }],
        true,
    )
    .unwrap();
    let cluster_config = TestCluster::with_checkpoints(0, 100, DEFAULT_LEASE_CHECKPOINT_INTERVAL);
    let config = cluster_config.config(1);
    let installed = mvcc::AppliedIndex { index: 8, term: 2 };
    recover_log(&config, &log, FIRST_SHARD, installed, &[]).unwrap();
    assert_eq!(log.term(FIRST_SHARD, 8).unwrap(), 2);
    assert_eq!(
        log.last_index(FIRST_SHARD),
        8,
        "the divergent tail survived"
    );
    // A log that agrees is left alone.
    recover_log(&config, &log, FIRST_SHARD, installed, &[]).unwrap();
    assert_eq!(log.last_index(FIRST_SHARD), 8);
    assert_eq!(log.state(FIRST_SHARD).unwrap().hard_state.commit, 8);
}

// Proves the store loop never waits for apply: with the leader's state machine writes taking
// two seconds each (a long compaction, a slow disk, with the state machine's lock held) and
// writes arriving one per store-loop iteration, the leader keeps its heartbeats going
// and stays leader in the same term; then, with many writes at once, it refuses proposals
// once apply trails too far (etcd's too many requests); and it applies everything once its
// disk is fast again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_apply_does_not_cost_the_leader_its_leadership() {
    let cluster = TestCluster::new(3, 100_000);
    cluster.put(1, "warm", "up").await;
    let leader = cluster.leader().await;
    let term = cluster.node(leader).status().term;
    cluster.members[&leader]
        .write_delay
        .store(2000, Ordering::Relaxed);
    let node = cluster.node(leader);
    let started = tokio::time::Instant::now();
    let mut refused = 0;
    let mut accepted = Vec::new();
    // Many store-loop iterations, each committing one entry: thousands of batches for an
    // apply task that takes two seconds per write; then bursts, until apply trails too far.
    while started.elapsed() < Duration::from_secs(5) {
        let burst = if started.elapsed() < Duration::from_secs(3) {
            1
        } else {
            100
        };
        for _ in 0..burst {
            let command = Command::Put(PutRequest {
                key: b"k".to_vec(),
                value: b"v".to_vec(),
                ..Default::default()
            });
            match node.submit(&command) {
                Ok(receiver) => accepted.push(receiver),
                Err(NodeError::TooManyRequests) => refused += 1,
                Err(e) => panic!("proposal failed: {e}"),
            }
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    for id in &cluster.ids {
        let status = cluster.node(*id).status();
        assert_eq!(
            (status.leader, status.term),
            (leader, term),
            "member {id} saw an election while the leader's apply was slow"
        );
    }
    assert!(refused > 0, "no proposal was refused with apply far behind");
    cluster.members[&leader]
        .write_delay
        .store(0, Ordering::Relaxed);
    for (_, receiver) in accepted {
        let applied = tokio::time::timeout(Duration::from_secs(30), receiver)
            .await
            .expect("applied once the disk is fast again")
            .expect("not dropped")
            .expect("applied");
        assert!(applied.result.is_ok());
    }
}

// Proves a driven node's apply runs only when it is stepped: store-loop steps alone commit a
// write without applying it (apply trails by as many iterations), and one apply step applies
// it and answers the proposal.
#[test]
fn a_driven_nodes_apply_trails_its_store_loop_until_stepped() {
    let cluster = TestCluster::with_checkpoints(0, 100, DEFAULT_LEASE_CHECKPOINT_INTERVAL);
    let mut config = cluster.config(1);
    config.initial_members = vec![test_member(1)];
    config.clock = Clock::manual();
    let clock = config.clock.clone();
    let tick = config.tick_interval;
    let transport = Arc::new(LocalTransport {
        from: 1,
        net: cluster.net.clone(),
    });
    let (node, mut driver) = Node::start_driven(
        config,
        Arc::new(MemLogStore::new()),
        storage::MemKvStore::new(),
        transport,
    )
    .unwrap();
    for _ in 0..100 {
        if node.leader() == 1 && node.applied_index() == node.status().commit_index {
            break;
        }
        clock.advance(tick);
        assert!(driver.step());
    }
    assert_eq!(node.leader(), 1, "a single member elects itself");
    let before = node.applied_index();
    let command = Command::Put(PutRequest {
        key: b"k".to_vec(),
        value: b"v".to_vec(),
        ..Default::default()
    });
    let (_, mut answer) = node.submit(&command).unwrap();
    for _ in 0..3 {
        assert!(driver.step_store());
    }
    assert!(node.status().commit_index > before, "the write committed");
    assert_eq!(node.applied_index(), before, "apply ran without a step");
    assert!(answer.try_recv().is_err(), "answered before it was applied");
    assert!(driver.apply_pending());
    assert_eq!(driver.apply_lag(), 3);
    assert!(driver.step_apply());
    assert_eq!(node.applied_index(), node.status().commit_index);
    assert!(answer.try_recv().unwrap().unwrap().result.is_ok());
    assert!(!driver.apply_pending());
    assert_eq!(driver.apply_lag(), 0);
    node.shutdown();
}

fn ids(members: &[Member]) -> Vec<(u64, bool)> {
    members.iter().map(|m| (m.id, m.is_learner)).collect()
}

/// Whether a write through `via` commits within a second.
async fn commits(cluster: &TestCluster, via: u64, key: &str) -> bool {
    let put = Command::Put(PutRequest {
        key: key.as_bytes().to_vec(),
        value: b"v".to_vec(),
        ..Default::default()
    });
    matches!(
        tokio::time::timeout(Duration::from_secs(1), cluster.node(via).propose(put)).await,
        Ok(Ok(_))
    )
}

// Proves a member added at runtime: it joins with empty disks, catches up through a snapshot
// (the log was compacted before it came) that carries the configuration, every member
// records the same membership, and it counts in the quorum: with one founder down, writes
// need its acknowledgement, and with it down too, nothing commits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_added_at_runtime_catches_up_and_counts_in_the_quorum() {
    let mut cluster = TestCluster::new(3, 200);
    for i in 0..1500 {
        cluster.put(1, &format!("key{i:05}"), "v").await;
    }
    let leader = cluster.leader().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while cluster.members[&leader].log.first_index(FIRST_SHARD) < 300 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "log never compacted"
        );
        cluster.put(leader, "tick", "t").await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    cluster.join(4);
    let members = cluster
        .change(leader, MembershipChange::Add(test_member(4)))
        .await
        .expect("member 4 is added");
    assert_eq!(
        ids(&members),
        vec![(1, false), (2, false), (3, false), (4, false)]
    );
    cluster.put(leader, "after", "add").await;
    let target = cluster.node(leader).status().applied_index;
    cluster.wait_applied(4, target).await;
    assert!(
        cluster.members[&4].restores.1.load(Ordering::Acquire) >= 1,
        "member 4 caught up without a snapshot"
    );
    for id in 1..=4 {
        assert_eq!(cluster.node(id).members(), members, "members on {id}");
    }
    let revision = cluster.node(leader).status().revision;
    assert_eq!(
        cluster.node(leader).hash_kv(revision).unwrap(),
        cluster.node(4).hash_kv(revision).unwrap()
    );
    let founder = (1..=3).find(|&id| id != leader).unwrap();
    cluster.stop(founder);
    assert!(
        commits(&cluster, leader, "with-4").await,
        "3 of 4 members could not commit"
    );
    cluster.stop(4);
    assert!(
        !commits(&cluster, leader, "without-4").await,
        "2 of 4 members committed a write"
    );
}

// Proves removal: the removed member stops with etcd's message (and does not come back on
// a restart), the others go on as a smaller cluster, and etcd's errors for a removed or
// unknown id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_member_stops_and_the_others_go_on() {
    let mut cluster = TestCluster::new(3, 100_000);
    cluster.put(1, "k", "v").await;
    let leader = cluster.leader().await;
    let removed = (1..=3).find(|&id| id != leader).unwrap();
    let members = cluster
        .change(leader, MembershipChange::Remove(removed))
        .await
        .expect("removed");
    assert!(members.iter().all(|m| m.id != removed));
    assert_eq!(members.len(), 2);
    let failure = tokio::time::timeout(Duration::from_secs(5), cluster.node(removed).failed())
        .await
        .expect("the removed member stops");
    assert!(failure.contains(REMOVED), "{failure}");
    let other = (1..=3).find(|&id| id != leader && id != removed).unwrap();
    cluster.stop(other);
    assert!(
        !commits(&cluster, leader, "alone").await,
        "one of two members committed a write"
    );
    cluster.start(other);
    cluster.put(leader, "two", "members").await;
    assert_eq!(
        cluster
            .change(leader, MembershipChange::Remove(removed))
            .await,
        Err(NodeError::Mvcc(MvccError::MemberNotFound))
    );
    assert_eq!(
        cluster
            .change(leader, MembershipChange::Add(test_member(removed)))
            .await,
        Err(NodeError::Mvcc(MvccError::MemberExists))
    );
    // Restarted on its disks, it finds itself removed again.
    cluster.stop(removed);
    let member = &cluster.members[&removed];
    let kv = SlowKv {
        inner: member.kv.clone(),
        delay: member.write_delay.clone(),
        restore_delay: member.restore_delay.clone(),
        restores: member.restores.clone(),
    };
    let transport = Arc::new(LocalTransport {
        from: removed,
        net: cluster.net.clone(),
    });
    match Node::start(cluster.config(removed), member.log.clone(), kv, transport) {
        Err(e) => assert!(e.to_string().contains(REMOVED), "{e}"),
        Ok(node) => {
            let failure = tokio::time::timeout(Duration::from_secs(5), node.failed())
                .await
                .expect("the removed member stops again");
            assert!(failure.contains(REMOVED), "{failure}");
            node.shutdown();
        }
    }
}

// Proves learners: a learner receives the log but does not count in the quorum until it is
// promoted (with a voter and the learner down, the two other voters still commit; after the
// promotion they no longer can), the configuration survives restarts, and etcd's errors for
// promoting a voter and reusing a peer URL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_learner_counts_in_the_quorum_only_once_promoted() {
    let mut cluster = TestCluster::new(3, 100_000);
    cluster.put(1, "k", "v").await;
    let leader = cluster.leader().await;
    cluster.join(4);
    let learner = Member {
        is_learner: true,
        ..test_member(4)
    };
    let members = cluster
        .change(leader, MembershipChange::Add(learner))
        .await
        .expect("learner added");
    assert_eq!(
        ids(&members),
        vec![(1, false), (2, false), (3, false), (4, true)]
    );
    assert_eq!(
        cluster.change(leader, MembershipChange::Promote(1)).await,
        Err(NodeError::Mvcc(MvccError::MemberNotLearner))
    );
    let taken = Member {
        id: 5,
        ..test_member(1)
    };
    assert_eq!(
        cluster.change(leader, MembershipChange::Add(taken)).await,
        Err(NodeError::Mvcc(MvccError::PeerUrlExists))
    );
    cluster.put(leader, "for", "learner").await;
    cluster
        .wait_applied(4, cluster.node(leader).status().applied_index)
        .await;
    let founder = (1..=3).find(|&id| id != leader).unwrap();
    cluster.stop(founder);
    cluster.stop(4);
    assert!(
        commits(&cluster, leader, "learner-down").await,
        "two of three voters could not commit: the learner counted"
    );
    cluster.start(founder);
    cluster.start(4);
    let leader = cluster.leader().await;
    cluster.put(leader, "back", "again").await;
    cluster
        .wait_applied(4, cluster.node(leader).status().applied_index)
        .await;
    let members = cluster
        .change(leader, MembershipChange::Promote(4))
        .await
        .expect("promoted");
    assert_eq!(
        ids(&members),
        vec![(1, false), (2, false), (3, false), (4, false)]
    );
    let founder = (1..=3).find(|&id| id != leader).unwrap();
    cluster.stop(founder);
    cluster.stop(4);
    assert!(
        !commits(&cluster, leader, "voter-down").await,
        "two of four voters committed a write"
    );
}

// Proves backups: a backup taken from a member while it serves holds exactly its state (the
// restored state machine has the same HashKV at the backup's revision), a new one-member
// cluster started on it serves the data and writes on, with its own membership; a backup
// with a flipped byte is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_restores_into_a_new_cluster() {
    let cluster = TestCluster::new(3, 100_000);
    for i in 0..300 {
        cluster
            .put(1 + i % 3, &format!("k{i:03}"), &format!("{i}"))
            .await;
    }
    cluster.grant(1, 77, 60).await;
    let source = cluster.node(1);
    cluster.get(1, "k000").await;
    let revision = source.status().revision;
    let path = cluster.dir.join("backup.db");
    std::fs::create_dir_all(&cluster.dir).unwrap();
    let mut file = Vec::new();
    for chunk in source.backup().unwrap() {
        file.extend_from_slice(&chunk.unwrap());
    }
    std::fs::write(&path, &file).unwrap();
    // etcdctl keeps a saved file only if its checksum follows 512-byte pages.
    assert_eq!(file.len() % 512, 32);

    let status = backup_status(&path, None).unwrap();
    assert_eq!(status.revision, revision);
    assert_eq!(status.total_size, file.len() as u64);

    let mut flipped = file.clone();
    flipped[file.len() / 2] ^= 1;
    let bad = cluster.dir.join("flipped.db");
    std::fs::write(&bad, &flipped).unwrap();
    let refused = restore_backup(&bad, FaultyKvStore::new(), false, None).unwrap_err();
    assert!(refused.to_string().contains("expected sha256"), "{refused}");

    let disks = Disks::new();
    let restored = restore_backup(&path, disks.kv.clone(), false, None).unwrap();
    assert_eq!(restored, status);
    let mut config = cluster.config(1);
    config.node_id = NodeId(9);
    config.initial_members = vec![test_member(9)];
    config.snapshot_dir = cluster.dir.join("9");
    let net = Arc::new(LocalNet::default());
    let transport = Arc::new(LocalTransport {
        from: 9,
        net: net.clone(),
    });
    let node = Node::start(config, disks.log.clone(), disks.kv.clone(), transport).unwrap();
    net.nodes.lock().insert(9, node.clone());
    assert_eq!(
        node.hash_kv(revision).unwrap().0,
        source.hash_kv(revision).unwrap().0
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while node.status().leader != 9 {
        assert!(tokio::time::Instant::now() < deadline, "no leader");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    node.read_index().await.unwrap();
    let (response, _) = node
        .range(&RangeRequest {
            key: b"k299".to_vec(),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(response.kvs[0].value, b"299".to_vec());
    let ids: Vec<u64> = node.members().iter().map(|m| m.id).collect();
    assert_eq!(ids, vec![9]);
    assert!(node.lease_remaining(77).await.unwrap().is_some());
    let applied = node
        .propose(Command::Put(PutRequest {
            key: b"after".to_vec(),
            value: b"restore".to_vec(),
            ..Default::default()
        }))
        .await
        .unwrap();
    assert_eq!(applied.revision, revision + 1);
    node.shutdown();
}

// Proves that a leader asked to remove itself answers with the new membership before it
// stops, and the others elect a leader among themselves and go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_that_removes_itself_answers_before_it_stops() {
    let mut cluster = TestCluster::new(3, 100_000);
    cluster.put(1, "k", "v").await;
    let leader = cluster.leader().await;
    let members = cluster
        .change(leader, MembershipChange::Remove(leader))
        .await
        .expect("the leader answers its own removal");
    assert!(members.iter().all(|m| m.id != leader));
    let failure = tokio::time::timeout(Duration::from_secs(5), cluster.node(leader).failed())
        .await
        .expect("the removed leader stops");
    assert!(failure.contains(REMOVED), "{failure}");
    cluster.stop(leader);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let next = loop {
        let next = cluster.leader().await;
        if next != leader {
            break next;
        }
        assert!(tokio::time::Instant::now() < deadline, "no new leader");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    cluster.put(next, "after", "removal").await;
}

// Proves no proposal is lost while leadership moves: writers propose through every member
// without pause while the leader hands leadership over again and again. Raft drops the
// proposals a leader receives while it hands over, and those a member receives while it
// knows no leader; the member that forwarded them cannot tell, and its client would wait
// out its timeout. Held and stepped again once a leader is known, every one completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proposals_survive_leadership_hand_overs() {
    let cluster = TestCluster::new(3, 100_000);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut writers = Vec::new();
    for (w, via) in [1u64, 2, 3, 1, 2, 3].into_iter().enumerate() {
        let node = cluster.node(via);
        let stop = stop.clone();
        writers.push(tokio::spawn(async move {
            let (mut done, mut lost) = (0, Vec::new());
            while !stop.load(Ordering::Relaxed) {
                let command = Command::Put(PutRequest {
                    key: format!("w{w}/{done}").into_bytes(),
                    value: b"v".to_vec(),
                    ..Default::default()
                });
                match tokio::time::timeout(Duration::from_secs(2), node.propose(command)).await {
                    Ok(Ok(applied)) => assert!(applied.result.is_ok(), "{applied:?}"),
                    Ok(Err(e)) => lost.push(format!("refused: {e}")),
                    Err(_) => lost.push("timed out".to_string()),
                }
                done += 1;
            }
            (done, lost)
        }));
    }
    for _ in 0..6 {
        let leader = cluster.leader().await;
        let to = leader % 3 + 1;
        cluster
            .node(leader)
            .move_leader(to)
            .await
            .expect("hand over");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let mut total = 0;
    for writer in writers {
        let (done, lost) = writer.await.unwrap();
        assert!(lost.is_empty(), "lost proposals: {lost:?}");
        total += done;
    }
    assert!(total > 100, "only {total} proposals made");
}
