//! Detection of divergence, as etcd's corruption check does it: members that applied the same
//! log hold the same key space, so their HashKV at the same revision (and compaction) must be
//! equal. A member whose data changed behind Raft's back (a disk that flipped bits, an
//! operator's edit, a bug) differs, and must be found before it serves or spreads its data.
//!
//! - Periodically (`--experimental-corrupt-check-time`), the leader compares its hash at its
//!   current revision with every other member's at the same revision, and raises the CORRUPT
//!   alarm naming each member that differs. The alarm goes through the log, so every member
//!   refuses writes until an operator has dealt with it.
//! - At startup (`--experimental-initial-corrupt-check`), a member compares itself with its
//!   peers before it serves clients, and refuses to start if it differs.
//!
//! A member that has not reached the revision yet, or compacted differently, cannot be
//! compared this time; it is skipped, as etcd skips it.

use std::time::Duration;

use mvcc::{AlarmAction, AlarmRequest, AlarmType, Command};
use node::{Node, NodeError};
use proto::peer as pb;
use tonic::Request;

use crate::peer::LeaderLink;

/// How long one peer may take to answer for its hash (a full scan of its state).
const PEER_HASH_TIMEOUT: Duration = Duration::from_secs(10);

/// The members whose HashKV differs from this member's at this member's current revision
/// (and the same compaction). Members that cannot be compared now are left out.
///
/// # Errors
/// This member's own HashKV failed (storage).
pub async fn differing_peers(node: &Node, link: &LeaderLink) -> Result<Vec<u64>, NodeError> {
    let local = node.clone();
    let (hash, compacted, revision) = tokio::task::spawn_blocking(move || local.hash_kv(0))
        .await
        .map_err(|e| NodeError::Storage(format!("hash task: {e}")))??;
    let mut differing = Vec::new();
    for (id, mut client) in link.peers().into_iter().filter(|(id, _)| *id != node.id()) {
        let mut request = Request::new(pb::HashKvRequest {
            cluster_id: link.cluster_id(),
            to: id.0,
            revision,
        });
        request.set_timeout(PEER_HASH_TIMEOUT);
        match client.hash_kv(request).await {
            Ok(answer) => {
                let answer = answer.into_inner();
                if answer.compact_revision != compacted {
                    tracing::debug!(
                        peer_id = id.0,
                        revision,
                        "cannot compare hashes: the member compacted at another revision"
                    );
                } else if answer.hash != hash {
                    tracing::error!(
                        peer_id = format!("{:x}", id.0),
                        revision,
                        local_hash = hash,
                        peer_hash = answer.hash,
                        "found a member whose data differs at the same revision"
                    );
                    differing.push(id.0);
                }
            }
            // Behind (a future revision for it), compacted past it, or unreachable.
            Err(status) => {
                tracing::debug!(peer_id = id.0, revision, error = %status.message(), "cannot compare hashes with a member");
            }
        }
    }
    Ok(differing)
}

/// Compares the leader's hash with every member's every `interval`, for as long as the node
/// runs, and raises the CORRUPT alarm for each member that differs.
pub async fn monitor(node: Node, link: LeaderLink, interval: Duration) {
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick is immediate: the check starts one interval after startup.
    ticks.tick().await;
    loop {
        ticks.tick().await;
        if node.leader() != node.id().0 {
            continue;
        }
        let differing = match differing_peers(&node, &link).await {
            Ok(differing) => differing,
            Err(e) => {
                tracing::warn!(error = %e, "corruption check failed");
                continue;
            }
        };
        for member_id in differing {
            let alarm = Command::Alarm(AlarmRequest {
                action: AlarmAction::Activate,
                member_id,
                alarm: Some(AlarmType::Corrupt),
            });
            if let Err(e) = node.propose(alarm).await {
                tracing::warn!(error = %e, peer_id = format!("{member_id:x}"), "cannot raise the CORRUPT alarm");
            }
        }
    }
}

/// The startup check: `Err` naming the members this one differs from.
///
/// # Errors
/// The members whose data differs, or this member's own HashKV failed.
pub async fn check_at_startup(node: &Node, link: &LeaderLink) -> Result<(), String> {
    let differing = differing_peers(node, link)
        .await
        .map_err(|e| format!("corruption check: {e}"))?;
    if differing.is_empty() {
        return Ok(());
    }
    let members: Vec<String> = differing.iter().map(|id| format!("{id:x}")).collect();
    Err(format!(
        "found data inconsistency with peers {}",
        members.join(", ")
    ))
}
