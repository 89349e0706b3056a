use std::collections::VecDeque;
use std::sync::Arc;

use storage::{LogStore, MemLogStore, ShardId, ShardLogWrite};

use super::*;

struct NoSnapshots;

impl SnapshotSource for NoSnapshots {
    fn snapshot(&self, _: ShardId, _: u64, _: u64) -> raft::Result<Snapshot> {
        Err(RaftError::Store(
            RaftStorageError::SnapshotTemporarilyUnavailable,
        ))
    }
}

const SHARD: ShardId = ShardId(1);

fn bootstrap(voters: &[u64]) -> Vec<(Arc<MemLogStore>, Peer<MemLogStore>)> {
    voters
        .iter()
        .map(|&id| {
            let log = Arc::new(MemLogStore::new());
            let conf_state = ConfState {
                voters: voters.to_vec(),
                ..Default::default()
            };
            log.write(
                vec![ShardLogWrite {
                    shard: SHARD,
                    conf_state: Some(conf_state),
                    ..Default::default()
                }],
                true,
            )
            .unwrap();
            let storage = PeerStorage::new(SHARD, log.clone(), Arc::new(NoSnapshots));
            let peer = new_peer(&RaftConfig::new(id), storage).unwrap();
            (log, peer)
        })
        .collect()
}

/// Runs every ready of every peer: persist, deliver messages, collect committed entries.
fn stabilize(peers: &mut [(Arc<MemLogStore>, Peer<MemLogStore>)], committed: &mut [Vec<Entry>]) {
    let mut inflight: VecDeque<Message> = VecDeque::new();
    for _ in 0..1000 {
        let mut progressed = false;
        for (i, (log, peer)) in peers.iter_mut().enumerate() {
            if !peer.has_ready() {
                continue;
            }
            progressed = true;
            let mut ready = peer.ready();
            inflight.extend(ready.take_messages());
            committed[i].extend(ready.take_committed_entries());
            log.write(
                vec![ShardLogWrite {
                    shard: SHARD,
                    entries: ready.entries().clone(),
                    hard_state: ready.hs().cloned(),
                    ..Default::default()
                }],
                true,
            )
            .unwrap();
            inflight.extend(ready.take_persisted_messages());
            let mut light = peer.advance(ready);
            inflight.extend(light.take_messages());
            committed[i].extend(light.take_committed_entries());
            peer.advance_apply();
        }
        while let Some(message) = inflight.pop_front() {
            progressed = true;
            let to = message.to as usize - 1;
            let _ = peers[to].1.step(message);
        }
        if !progressed {
            return;
        }
    }
    panic!("cluster did not stabilize");
}

// Proves the adapter drives real Raft over a LogStore: three replicas elect the one that
// campaigns, a proposal commits on all of them, and every replica's log holds it durably.
#[test]
fn three_replicas_elect_and_commit_through_log_store() {
    let mut peers = bootstrap(&[1, 2, 3]);
    let mut committed = vec![Vec::new(); 3];
    peers[0].1.campaign().unwrap();
    stabilize(&mut peers, &mut committed);
    assert_eq!(peers[0].1.raft.state, StateRole::Leader);

    peers[0].1.propose(vec![], b"hello".to_vec()).unwrap();
    stabilize(&mut peers, &mut committed);
    for (i, entries) in committed.iter().enumerate() {
        let data: Vec<&[u8]> = entries
            .iter()
            .filter(|e| !e.data.is_empty())
            .map(|e| e.data.as_ref())
            .collect();
        assert_eq!(data, vec![b"hello".as_ref()], "replica {}", i + 1);
        let last = peers[i].0.last_index(SHARD);
        let stored = peers[i].0.entries(SHARD, 1, last + 1, u64::MAX).unwrap();
        assert!(stored.iter().any(|e| e.data.as_ref() == b"hello"));
    }
}

// Proves the jitter: a follower ticks freely until its election timeout, then withholds a
// seeded number of ticks in `0..T - 1` before its campaign tick; the same seed withholds the
// same, and leaders always tick.
#[test]
fn jitter_is_seeded_and_spares_leaders_and_leases() {
    const T: usize = 10;
    // Ticks from the timeout until the campaign tick passes, for each of `rounds` elections.
    let waits = |seed| {
        let mut jitter = ElectionJitter::new(seed);
        (0..200)
            .map(|_| {
                for elapsed in 0..T {
                    assert!(jitter.should_tick(StateRole::Follower, elapsed, T));
                }
                let mut withheld = 0;
                while !jitter.should_tick(StateRole::Follower, T, T) {
                    withheld += 1;
                }
                withheld
            })
            .collect::<Vec<usize>>()
    };
    assert_eq!(waits(7), waits(7));
    assert_ne!(waits(7), waits(8));
    let drawn = waits(7);
    assert!(drawn.iter().all(|w| *w < T - 1), "{drawn:?}");
    for w in 0..T - 1 {
        assert!(drawn.contains(&w), "{w} ticks never withheld: {drawn:?}");
    }
    let mut jitter = ElectionJitter::new(7);
    assert!((0..100).all(|i| jitter.should_tick(StateRole::Leader, T + i, T)));
}
