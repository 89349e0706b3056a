//! etcd's checks before a membership change, over a membership and the leader's progress
//! written by hand.

use node::{Member, MembershipChange, PeerProgress};

use super::{check_change, ReconfigRules};
use crate::errors::{ApiError, ReconfigError};

const LEADER: u64 = 1;

fn voter(id: u64, started: bool) -> Member {
    Member {
        id,
        name: if started {
            format!("m{id}")
        } else {
            String::new()
        },
        peer_urls: vec![format!("http://127.0.0.1:{}", 2380 + id)],
        client_urls: Vec::new(),
        is_learner: false,
    }
}

fn learner(id: u64) -> Member {
    Member {
        is_learner: true,
        ..voter(id, false)
    }
}

fn peer(id: u64, matched: u64, active: bool) -> PeerProgress {
    PeerProgress {
        id,
        matched,
        recent_active: active,
        is_learner: false,
    }
}

/// Three started voters, all connected, the leader at index 100.
fn healthy() -> (Vec<Member>, Vec<PeerProgress>) {
    let members = vec![voter(1, true), voter(2, true), voter(3, true)];
    let progress = vec![peer(1, 100, true), peer(2, 100, true), peer(3, 100, true)];
    (members, progress)
}

fn check(
    members: &[Member],
    progress: &[PeerProgress],
    change: MembershipChange,
) -> Result<(), ApiError> {
    check_change(members, progress, LEADER, &change, ReconfigRules::default())
}

fn check_lax(
    members: &[Member],
    progress: &[PeerProgress],
    change: MembershipChange,
) -> Result<(), ApiError> {
    let rules = ReconfigRules {
        strict: false,
        max_learners: 2,
    };
    check_change(members, progress, LEADER, &change, rules)
}

// Proves adding is refused, as etcd 3.4 refuses it, while a voter is disconnected, when too
// few voters have started for the grown cluster's quorum, on a taken peer URL, and beyond one
// learner; and allowed otherwise.
#[test]
fn add_follows_etcds_checks() {
    let (members, mut progress) = healthy();
    assert_eq!(
        check(&members, &progress, MembershipChange::Add(voter(9, false))),
        Ok(())
    );
    assert_eq!(
        check(&members, &progress, MembershipChange::Add(learner(9))),
        Ok(())
    );

    let mut taken = voter(9, false);
    taken.peer_urls = members[1].peer_urls.clone();
    assert_eq!(
        check(&members, &progress, MembershipChange::Add(taken)),
        Err(mvcc::MvccError::PeerUrlExists.into())
    );

    let mut with_learner = members.clone();
    with_learner.push(learner(4));
    assert_eq!(
        check(&with_learner, &progress, MembershipChange::Add(learner(9))),
        Err(ReconfigError::TooManyLearners.into())
    );
    assert_eq!(
        check(
            &with_learner,
            &progress,
            MembershipChange::Add(voter(9, false))
        ),
        Ok(())
    );

    // Two of three voters not started: with the new one, 1 started of 4 is no quorum.
    let unstarted = vec![voter(1, true), voter(2, false), voter(3, false)];
    assert_eq!(
        check(
            &unstarted,
            &progress,
            MembershipChange::Add(voter(9, false))
        ),
        Err(ReconfigError::NotEnoughStarted.into())
    );
    // A started single member may take a second voter, as etcd lets it; an unstarted one
    // may not.
    assert_eq!(
        check(
            &[voter(1, true)],
            &progress[..1],
            MembershipChange::Add(voter(9, false))
        ),
        Ok(())
    );
    assert_eq!(
        check(
            &[voter(1, false)],
            &progress[..1],
            MembershipChange::Add(voter(9, false))
        ),
        Err(ReconfigError::NotEnoughStarted.into())
    );
    // A learner needs no started quorum.
    assert_eq!(
        check(&unstarted, &progress, MembershipChange::Add(learner(9))),
        Ok(())
    );

    progress[2].recent_active = false;
    for new in [voter(9, false), learner(9)] {
        assert_eq!(
            check(&members, &progress, MembershipChange::Add(new)),
            Err(ReconfigError::Unhealthy.into())
        );
    }
}

// Proves removing a member that is down, or a learner, is allowed; removing a connected voter
// while another is down is refused (the connected voters left would be no quorum), as is
// removing when too few started voters would be left.
#[test]
fn remove_follows_etcds_checks() {
    let (members, mut progress) = healthy();
    assert_eq!(
        check(&members, &progress, MembershipChange::Remove(2)),
        Ok(())
    );
    assert_eq!(
        check(&members, &progress, MembershipChange::Remove(LEADER)),
        Ok(())
    );
    assert_eq!(
        check(&members, &progress, MembershipChange::Remove(42)),
        Ok(())
    );

    progress[2].recent_active = false;
    assert_eq!(
        check(&members, &progress, MembershipChange::Remove(3)),
        Ok(())
    );
    assert_eq!(
        check(&members, &progress, MembershipChange::Remove(2)),
        Err(ReconfigError::Unhealthy.into())
    );
    assert_eq!(
        check(&members, &progress, MembershipChange::Remove(LEADER)),
        Err(ReconfigError::Unhealthy.into())
    );

    let mut with_learner = members.clone();
    with_learner.push(learner(4));
    assert_eq!(
        check(&with_learner, &progress, MembershipChange::Remove(4)),
        Ok(())
    );

    let unstarted = vec![voter(1, true), voter(2, false), voter(3, true)];
    let (_, progress) = healthy();
    assert_eq!(
        check(&unstarted, &progress, MembershipChange::Remove(3)),
        Err(ReconfigError::NotEnoughStarted.into())
    );
    assert_eq!(
        check(&[voter(1, true)], &progress, MembershipChange::Remove(1)),
        Err(ReconfigError::NotEnoughStarted.into())
    );
}

// Proves a learner is promoted only once its log reaches 90% of the leader's, and that a
// voter or an unknown id passes the check (the state machine refuses them, as etcd's apply
// does).
#[test]
fn promote_needs_a_learner_in_sync() {
    let (mut members, mut progress) = healthy();
    members.push(learner(4));
    // Recorded, but not in the leader's progress yet.
    assert_eq!(
        check(&members, &progress, MembershipChange::Promote(4)),
        Err(ReconfigError::LearnerNotReady.into())
    );
    progress.push(PeerProgress {
        is_learner: true,
        ..peer(4, 89, true)
    });
    assert_eq!(
        check(&members, &progress, MembershipChange::Promote(4)),
        Err(ReconfigError::LearnerNotReady.into())
    );
    progress[3].matched = 90;
    assert_eq!(
        check(&members, &progress, MembershipChange::Promote(4)),
        Ok(())
    );
    assert_eq!(
        check(&members, &progress, MembershipChange::Promote(2)),
        Ok(())
    );
    assert_eq!(
        check(&members, &progress, MembershipChange::Promote(42)),
        Ok(())
    );

    let unstarted = vec![voter(1, true), voter(2, false), voter(3, false), learner(4)];
    assert_eq!(
        check(&unstarted, &progress, MembershipChange::Promote(4)),
        Err(ReconfigError::NotEnoughStarted.into())
    );
}

// Proves `--strict-reconfig-check=false` skips the quorum checks as etcd skips them (adding
// and removing while a voter is down or unstarted pass; promoting still needs a learner in
// sync), and that `--max-learners` sets the learner limit.
#[test]
fn lax_rules_skip_the_quorum_checks_only() {
    let (members, mut progress) = healthy();
    progress[2].recent_active = false;
    assert_eq!(
        check_lax(&members, &progress, MembershipChange::Add(voter(9, false))),
        Ok(())
    );
    assert_eq!(
        check_lax(&members, &progress, MembershipChange::Remove(2)),
        Ok(())
    );
    let unstarted = vec![voter(1, true), voter(2, false), voter(3, false)];
    assert_eq!(
        check_lax(&unstarted, &progress, MembershipChange::Remove(1)),
        Ok(())
    );

    let mut with_learner = members.clone();
    with_learner.push(learner(4));
    assert_eq!(
        check_lax(&with_learner, &progress, MembershipChange::Add(learner(9))),
        Ok(())
    );
    with_learner.push(learner(5));
    assert_eq!(
        check_lax(&with_learner, &progress, MembershipChange::Add(learner(9))),
        Err(ReconfigError::TooManyLearners.into())
    );
    // Taken peer URLs are refused whatever the rules.
    let mut taken = voter(9, false);
    taken.peer_urls = members[1].peer_urls.clone();
    assert_eq!(
        check_lax(&members, &progress, MembershipChange::Add(taken)),
        Err(mvcc::MvccError::PeerUrlExists.into())
    );
    assert_eq!(
        check_lax(&with_learner, &progress, MembershipChange::Promote(4)),
        Err(ReconfigError::LearnerNotReady.into())
    );
}
