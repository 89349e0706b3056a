//! Runtime membership with etcdctl, as an operator does it: listing members, adding a
//! learner that joins with `--initial-cluster-state existing` and is promoted, replacing a
//! dead member while clients write, removing the leader; and etcd's errors for refused
//! changes, compared with a real etcd.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context as _;
use proto::etcdserverpb::cluster_client::ClusterClient;
use proto::etcdserverpb::{
    request_op, HashKvRequest, MemberAddRequest, MemberAddResponse, MemberListRequest,
    MemberPromoteRequest, MemberPromoteResponse, MemberRemoveRequest, MemberRemoveResponse,
    MemberUpdateRequest, MemberUpdateResponse, PutRequest, RangeRequest, RequestOp, TxnRequest,
};
use testkit::{Cluster, EtcdCluster};
use tonic::transport::Channel;

use crate::{assert_acked_present, binary, read_prefix, Writers, ELECTION_DEADLINE};

/// How long a joining member may take to catch up, or the cluster to settle after a change.
const SETTLE_DEADLINE: Duration = Duration::from_secs(30);

/// What a member that applied its own removal says as it stops.
const REMOVED: &str = "the member has been permanently removed from the cluster";

async fn start(size: usize) -> Cluster {
    let mut cluster = Cluster::start(binary(), size, &[]).expect("start a Concord cluster");
    cluster
        .wait_for_leader(ELECTION_DEADLINE)
        .await
        .expect("a first leader");
    cluster
}

/// Runs etcdctl against member `i` and returns its stdout; fails with its stderr.
fn etcdctl_ok(cluster: &Cluster, i: usize, args: &[&str]) -> anyhow::Result<String> {
    let output = cluster.etcdctl(i, args)?;
    let (stdout, stderr) = (
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    );
    anyhow::ensure!(
        output.status.success(),
        "etcdctl {args:?} on member {i}: {stderr}"
    );
    Ok(stdout)
}

/// The last line etcdctl printed on stderr for a command expected to fail.
fn etcdctl_error(cluster: &Cluster, i: usize, args: &[&str]) -> String {
    let output = cluster.etcdctl(i, args).expect("run etcdctl");
    assert!(!output.status.success(), "etcdctl {args:?} succeeded");
    let stderr = String::from_utf8_lossy(&output.stderr);
    stderr.lines().last().unwrap_or_default().to_string()
}

/// One line of `etcdctl member list`: id, status, name, peer URLs, client URLs, learner.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Listed {
    id: u64,
    started: bool,
    name: String,
    peer_urls: String,
    client_urls: String,
    learner: bool,
}

/// `etcdctl member list` on member `i`, by id.
fn member_list(cluster: &Cluster, i: usize) -> anyhow::Result<BTreeMap<u64, Listed>> {
    let stdout = etcdctl_ok(cluster, i, &["member", "list"])?;
    stdout
        .lines()
        .map(|line| {
            let fields: Vec<&str> = line.split(", ").collect();
            anyhow::ensure!(fields.len() == 6, "a member list line: {line:?}");
            let listed = Listed {
                id: u64::from_str_radix(fields[0], 16).context("member id")?,
                started: fields[1] == "started",
                name: fields[2].to_string(),
                peer_urls: fields[3].to_string(),
                client_urls: fields[4].to_string(),
                learner: fields[5] == "true",
            };
            Ok((listed.id, listed))
        })
        .collect()
}

/// Member `i`'s id, as it reports it in its response headers.
async fn member_id(cluster: &Cluster, i: usize) -> u64 {
    let status = cluster.status(i).await.expect("status");
    status.header.expect("a header").member_id
}

/// Waits until every member in `members` reports the same HashKV at the same revision.
async fn wait_hashes_equal(cluster: &Cluster, members: &[usize]) -> anyhow::Result<()> {
    testkit::eventually(SETTLE_DEADLINE, "equal HashKV on every member", || async {
        let mut seen = Vec::new();
        for &i in members {
            let hash = cluster.hash_kv(i, 0).await?;
            let revision = hash.header.map_or(0, |h| h.revision);
            seen.push((i, revision, hash.hash));
        }
        let first = (seen[0].1, seen[0].2);
        anyhow::ensure!(
            seen.iter().all(|(_, r, h)| (*r, *h) == first),
            "members differ (member, revision, hash): {seen:?}"
        );
        Ok(())
    })
    .await
}

async fn put_keys(cluster: &Cluster, i: usize, prefix: &str, count: usize) {
    let mut kv = cluster.kv(i);
    for n in 0..count {
        let key = format!("{prefix}/{n:05}");
        kv.put(PutRequest {
            key: key.clone().into_bytes(),
            value: crate::value_for(&key).into_bytes(),
            ..Default::default()
        })
        .await
        .expect("put");
    }
}

// Proves `etcdctl member list` shows every member with its name and client URL, on every
// member: each published them through Raft when it started.
#[tokio::test]
async fn member_list_shows_every_member_on_every_member() {
    let cluster = start(3).await;
    for i in 0..3 {
        let listed = testkit::eventually(SETTLE_DEADLINE, "published members", || async {
            let listed = member_list(&cluster, i)?;
            anyhow::ensure!(
                listed
                    .values()
                    .all(|m| m.started && !m.client_urls.is_empty()),
                "not every member has published: {listed:?}"
            );
            Ok(listed)
        })
        .await
        .unwrap();
        let mut names: Vec<(String, String, String)> = listed
            .values()
            .map(|m| (m.name.clone(), m.peer_urls.clone(), m.client_urls.clone()))
            .collect();
        names.sort();
        let expected: Vec<(String, String, String)> = (0..3)
            .map(|m| {
                (
                    cluster.name(m).to_string(),
                    cluster.peer_url(m),
                    cluster.client_url(m),
                )
            })
            .collect();
        assert_eq!(names, expected, "member list on member {i}");
        assert!(listed.values().all(|m| !m.learner));
        assert!(listed.contains_key(&member_id(&cluster, i).await));
    }
}

/// Writes `count` keys `<prefix>/<n>` through member `i`, in txns of 100 puts from eight
/// clients at once.
async fn put_many(cluster: &Cluster, i: usize, prefix: &str, count: usize) {
    let mut tasks = Vec::new();
    for client in 0..8 {
        let mut kv = cluster.kv(i);
        let prefix = prefix.to_string();
        tasks.push(tokio::spawn(async move {
            for batch in (client * 100..count).step_by(800) {
                let success = (batch..(batch + 100).min(count))
                    .map(|n| {
                        let key = format!("{prefix}/{n:06}");
                        RequestOp {
                            request: Some(request_op::Request::RequestPut(PutRequest {
                                value: crate::value_for(&key).into_bytes(),
                                key: key.into_bytes(),
                                ..Default::default()
                            })),
                        }
                    })
                    .collect();
                kv.txn(TxnRequest {
                    success,
                    ..Default::default()
                })
                .await
                .expect("txn");
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
}

/// The code and message of a refused call, or `None` if it succeeded.
fn refusal<T>(result: Result<T, tonic::Status>) -> Option<(tonic::Code, String)> {
    result
        .err()
        .map(|status| (status.code(), status.message().to_string()))
}

// Proves a learner added with `member add --learner` joins with `--initial-cluster-state
// existing`, counts toward etcd's one-learner limit, and cannot be promoted while behind
// (100,000 keys written before it started); once started it receives the data, serves
// serializable reads and refuses every other request as etcd's learners do, publishes its
// name, and is promoted to a voter, after which its HashKV equals the others'. Promoting a
// voter is refused with etcd's message. The promoted member restarts on its own data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn learner_joins_catches_up_and_is_promoted() {
    let mut cluster = start(3).await;
    put_keys(&cluster, 0, "before", 200).await;
    let new = cluster.new_member();
    let peer = cluster.peer_url(new);
    let added = etcdctl_ok(
        &cluster,
        1,
        &[
            "member",
            "add",
            cluster.name(new),
            "--learner",
            &format!("--peer-urls={peer}"),
        ],
    )
    .unwrap();
    assert!(
        added.contains("ETCD_INITIAL_CLUSTER_STATE=\"existing\""),
        "{added}"
    );
    let learner = member_list(&cluster, 0)
        .unwrap()
        .into_values()
        .find(|m| m.peer_urls == peer)
        .expect("the learner is listed");
    assert!(learner.learner && !learner.started, "{learner:?}");

    let voter = format!("{:x}", member_id(&cluster, 2).await);
    assert_eq!(
        etcdctl_error(&cluster, 0, &["member", "promote", &voter]),
        "Error: etcdserver: can only promote a learner member"
    );
    let second = format!("--peer-urls=http://127.0.0.1:{}", testkit::free_port());
    assert_eq!(
        etcdctl_error(&cluster, 0, &["member", "add", "x", "--learner", &second]),
        "Error: etcdserver: too many learner members in cluster"
    );

    // Far behind: refused.
    put_many(&cluster, 0, "bulk", 100_000).await;
    let id = format!("{:x}", learner.id);
    assert_eq!(
        etcdctl_error(&cluster, 1, &["member", "promote", &id]),
        "Error: etcdserver: can only promote a learner member which is in sync with leader"
    );

    cluster.start_joining(new, &[]).unwrap();
    cluster.wait_listening(new, SETTLE_DEADLINE).unwrap();
    assert_eq!(member_id(&cluster, new).await, learner.id);
    let bulk_end = crate::prefix_end(b"bulk/");
    let mut kv = cluster.kv(new);
    testkit::eventually(SETTLE_DEADLINE, "the learner has the data", || {
        let mut kv = kv.clone();
        let bulk_end = bulk_end.clone();
        async move {
            let count = kv
                .range(RangeRequest {
                    key: b"bulk/".to_vec(),
                    range_end: bulk_end,
                    serializable: true,
                    count_only: true,
                    ..Default::default()
                })
                .await?
                .into_inner()
                .count;
            anyhow::ensure!(count == 100_000, "{count} keys");
            Ok(())
        }
    })
    .await
    .unwrap();
    assert!(cluster.status(new).await.unwrap().is_learner);
    // Everything else is refused, as etcd's learners refuse it.
    let refused = Some((
        tonic::Code::Unavailable,
        "etcdserver: rpc not supported for learner".to_string(),
    ));
    let linearizable = kv
        .range(RangeRequest {
            key: b"before/00000".to_vec(),
            ..Default::default()
        })
        .await;
    assert_eq!(refusal(linearizable), refused);
    let put = kv
        .put(PutRequest {
            key: b"k".to_vec(),
            value: b"v".to_vec(),
            ..Default::default()
        })
        .await;
    assert_eq!(refusal(put), refused);
    let hash = cluster
        .maintenance(new)
        .hash_kv(HashKvRequest { revision: 0 })
        .await;
    assert_eq!(refusal(hash), refused);
    let list = cluster
        .cluster_client(new)
        .member_list(MemberListRequest::default())
        .await;
    assert_eq!(refusal(list), refused);

    // Caught up: promoted.
    testkit::eventually(SETTLE_DEADLINE, "the promotion", || async {
        etcdctl_ok(&cluster, 2, &["member", "promote", &id]).map(|_| ())
    })
    .await
    .unwrap();
    let listed = testkit::eventually(SETTLE_DEADLINE, "the promoted member", || async {
        let listed = member_list(&cluster, new)?;
        let me = &listed[&learner.id];
        anyhow::ensure!(me.started && !me.learner, "{me:?}");
        Ok(listed)
    })
    .await
    .unwrap();
    assert_eq!(listed.len(), 4);
    assert_eq!(listed[&learner.id].name, cluster.name(new));
    assert_eq!(listed[&learner.id].client_urls, cluster.client_url(new));
    assert!(!cluster.status(new).await.unwrap().is_learner);
    wait_hashes_equal(&cluster, &[0, 1, 2, new]).await.unwrap();

    // A voter now: it restarts on its own data and the cluster of four keeps writing.
    // (Until it has applied its log again it knows itself as the learner it was.)
    cluster.restart(new).unwrap();
    cluster.wait_listening(new, SETTLE_DEADLINE).unwrap();
    testkit::eventually(SETTLE_DEADLINE, "a voter again", || async {
        anyhow::ensure!(!cluster.status(new).await?.is_learner);
        Ok(())
    })
    .await
    .unwrap();
    put_keys(&cluster, new, "after", 50).await;
    wait_hashes_equal(&cluster, &[0, 1, 2, new]).await.unwrap();
    assert_eq!(
        read_prefix(&cluster, new, "before/").await.unwrap().len(),
        200
    );
}

// Proves a dead member can be replaced while clients write: kill -9 a follower, `member
// remove` it, `member add` a fresh member on new ports, start it with `existing`; writes
// continue, no acknowledged write is lost, and every live member holds the same data.
#[tokio::test]
async fn dead_member_is_replaced_without_losing_writes() {
    let mut cluster = start(3).await;
    let leader = cluster.leader().await.unwrap();
    let dead = (leader + 1) % 3;
    let live: Vec<usize> = (0..3).filter(|&i| i != dead).collect();
    let dead_id = member_id(&cluster, dead).await;
    let writers = Writers::start(&cluster, &live, 4, "replace");
    writers.wait_acked(100, SETTLE_DEADLINE).await.unwrap();

    cluster.kill(dead);
    let removed = etcdctl_ok(
        &cluster,
        live[1],
        &["member", "remove", &format!("{dead_id:x}")],
    )
    .unwrap();
    assert!(removed.contains("removed from cluster"), "{removed}");

    let new = cluster.new_member();
    let peer = cluster.peer_url(new);
    etcdctl_ok(
        &cluster,
        live[0],
        &[
            "member",
            "add",
            cluster.name(new),
            &format!("--peer-urls={peer}"),
        ],
    )
    .unwrap();
    cluster.start_joining(new, &[]).unwrap();
    cluster.wait_listening(new, SETTLE_DEADLINE).unwrap();
    let acked = writers.acked();
    writers
        .wait_acked(acked + 200, SETTLE_DEADLINE)
        .await
        .unwrap();
    let acked = writers.finish().await;

    let mut members = live.clone();
    members.push(new);
    wait_hashes_equal(&cluster, &members).await.unwrap();
    for &i in &members {
        let found = read_prefix(&cluster, i, "replace/").await.unwrap();
        assert_acked_present(&acked, &found, &format!("member {i}"));
    }
    let listed = member_list(&cluster, new).unwrap();
    assert_eq!(listed.len(), 3);
    assert!(!listed.contains_key(&dead_id));
}

// Proves the leader can be removed through a follower (which forwards the change to it):
// the removed member stops with etcd's reason in its log, and the two left elect a leader
// and take writes.
#[tokio::test]
async fn removed_leader_stops_and_the_rest_go_on() {
    let mut cluster = start(3).await;
    let leader = cluster.leader().await.unwrap();
    let follower = (leader + 1) % 3;
    let leader_id = member_id(&cluster, leader).await;
    let removed = etcdctl_ok(
        &cluster,
        follower,
        &["member", "remove", &format!("{leader_id:x}")],
    )
    .unwrap();
    assert!(removed.contains("removed from cluster"), "{removed}");
    cluster
        .wait_exit(leader, SETTLE_DEADLINE)
        .expect("the removed leader stops");
    assert!(
        cluster.current_log(leader).contains(REMOVED),
        "{}",
        cluster.current_log(leader)
    );
    let next = cluster.wait_for_leader(ELECTION_DEADLINE).await.unwrap();
    assert_ne!(next, leader);
    put_keys(&cluster, follower, "after-removal", 10).await;
    let listed = member_list(&cluster, follower).unwrap();
    assert_eq!(listed.len(), 2);
    assert!(!listed.contains_key(&leader_id));
}

// Proves a member that missed its own removal (it was down meanwhile, and the leader no
// longer sends to it) stops as soon as it speaks to a peer again, with etcd's reason in its
// log: the peers refuse a removed member's traffic, instead of letting it campaign forever.
#[tokio::test]
async fn member_that_missed_its_removal_stops_when_it_returns() {
    let mut cluster = start(3).await;
    let leader = cluster.leader().await.unwrap();
    let (gone, other) = ((leader + 1) % 3, (leader + 2) % 3);
    let gone_id = member_id(&cluster, gone).await;
    cluster.kill(gone);
    etcdctl_ok(
        &cluster,
        other,
        &["member", "remove", &format!("{gone_id:x}")],
    )
    .unwrap();
    put_keys(&cluster, leader, "without-it", 10).await;
    cluster.restart(gone).unwrap();
    cluster
        .wait_exit(gone, SETTLE_DEADLINE)
        .expect("the removed member stops");
    let log = cluster.current_log(gone);
    assert!(log.contains(REMOVED), "{log}");
    assert!(
        log.contains("a peer says this member was removed from the cluster"),
        "{log}"
    );
}

// Proves a member started with `existing` that was never added is refused with a line
// naming its peer URLs and the command that adds it, and writes nothing.
#[tokio::test]
async fn joining_without_being_added_is_refused() {
    let mut cluster = start(1).await;
    let new = cluster.new_member();
    cluster.start_joining(new, &[]).unwrap();
    let status = cluster.wait_exit(new, SETTLE_DEADLINE).unwrap();
    assert!(!status.success());
    let log = cluster.current_log(new);
    let expected = format!(
        "no member has the peer URLs {} (add it first: etcdctl member add",
        cluster.peer_url(new)
    );
    assert!(log.contains(&expected), "{log}");
    assert!(!cluster.data_dir(new).join("member").exists());
}

/// A Cluster call's outcome as a client sees it: the member count on success, else the
/// gRPC code and message.
type Outcome = Result<usize, (tonic::Code, String)>;

/// A Cluster call's answer, of which the differential test compares the member count.
trait MemberCount {
    fn member_count(&self) -> usize;
}

macro_rules! member_count {
    ($($response:ty),*) => {$(
        impl MemberCount for $response {
            fn member_count(&self) -> usize {
                self.members.len()
            }
        }
    )*};
}

member_count!(
    MemberAddResponse,
    MemberPromoteResponse,
    MemberRemoveResponse,
    MemberUpdateResponse
);

/// The outcome of a Cluster call.
fn outcome<R: MemberCount>(result: Result<tonic::Response<R>, tonic::Status>) -> Outcome {
    result
        .map(|r| r.get_ref().member_count())
        .map_err(|status| (status.code(), status.message().to_string()))
}

/// The refused membership changes of the differential test, against one system through
/// `client`: a fresh peer URL comes from `free_url`.
async fn refused_changes(mut client: ClusterClient<Channel>) -> Vec<(&'static str, Outcome)> {
    let list = client
        .member_list(MemberListRequest::default())
        .await
        .expect("member list")
        .into_inner()
        .members;
    let voter = &list[0];
    let fresh = || format!("http://127.0.0.1:{}", testkit::free_port());
    let mut outcomes = Vec::new();
    let r = client
        .member_remove(MemberRemoveRequest { id: 0x1234 })
        .await;
    outcomes.push(("remove an unknown id", outcome(r)));
    let r = client
        .member_add(MemberAddRequest {
            peer_ur_ls: voter.peer_ur_ls.clone(),
            is_learner: false,
        })
        .await;
    outcomes.push(("add a taken peer URL", outcome(r)));
    let r = client
        .member_add(MemberAddRequest {
            peer_ur_ls: vec!["foo".into()],
            is_learner: false,
        })
        .await;
    outcomes.push(("add a bad peer URL", outcome(r)));
    let r = client
        .member_promote(MemberPromoteRequest { id: voter.id })
        .await;
    outcomes.push(("promote a voter", outcome(r)));
    let r = client
        .member_update(MemberUpdateRequest {
            id: 0x1234,
            peer_ur_ls: vec![fresh()],
        })
        .await;
    outcomes.push(("update an unknown id", outcome(r)));
    let r = client
        .member_add(MemberAddRequest {
            peer_ur_ls: vec![fresh()],
            is_learner: true,
        })
        .await;
    let learner = r.as_ref().ok().and_then(|r| r.get_ref().member.clone());
    outcomes.push(("add a learner", outcome(r)));
    let r = client
        .member_add(MemberAddRequest {
            peer_ur_ls: vec![fresh()],
            is_learner: true,
        })
        .await;
    outcomes.push(("add a second learner", outcome(r)));
    let learner = learner.map_or(0, |m| m.id);
    let r = client
        .member_promote(MemberPromoteRequest { id: learner })
        .await;
    outcomes.push(("promote a learner that never started", outcome(r)));
    let r = client
        .member_remove(MemberRemoveRequest { id: learner })
        .await;
    outcomes.push(("remove the learner", outcome(r)));
    let r = client
        .member_remove(MemberRemoveRequest { id: learner })
        .await;
    outcomes.push(("remove it again", outcome(r)));
    outcomes
}

// Proves refused membership changes fail as etcd 3.4's do, code and message: an unknown id,
// a taken or invalid peer URL, promoting a voter or a learner that is not in sync, a second
// learner, and a removed id; and that the allowed ones answer the same member counts.
#[tokio::test]
async fn refused_changes_match_etcd() {
    let etcd = EtcdCluster::start(3).await.expect("start etcd");
    let concord = start(3).await;
    // etcd refuses additions until its members have been connected for 5 s.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let expected = refused_changes(ClusterClient::new(etcd.channel(1))).await;
    let got = refused_changes(concord.cluster_client(1)).await;
    for ((what, etcd), (_, concord)) in expected.iter().zip(&got) {
        assert_eq!(concord, etcd, "{what}");
    }
    assert!(
        matches!(expected[0].1, Err((tonic::Code::NotFound, _))),
        "{expected:?}"
    );
}

// Proves a cluster grows from three members to five and shrinks back to three while clients
// write, removing the leader on the way down: each new member joins with `existing` and
// receives the data, writes never stop for longer than an election (the removed leader
// hands leadership over first, and no proposal in flight is lost: a lost one would stall a
// writer for its 2 s timeout), no acknowledged write is lost, and the three left hold the
// same data.
// The writers send through the members that stay (a client of a removed member sees its
// connection end), and leadership is moved to a member that goes (`move-leader`), so that
// the leader's own removal is among the changes. (Two runtime threads: waiting for a
// removed member to exit blocks one, and the writers must go on meanwhile.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grows_to_five_and_back_to_three_under_load() {
    /// Longest time without an acknowledged write. A removed leader hands leadership over
    /// first, and no proposal is lost on the way (each writer's request times out after
    /// 2 s, so one lost shows as a 2 s gap): well under an election (1 s) on a quiet
    /// machine (tens of milliseconds), with margin for a loaded one.
    const LONGEST_GAP: Duration = Duration::from_millis(1500);
    let mut cluster = start(3).await;
    for _ in 0..2 {
        let new = cluster.new_member();
        let peer = format!("--peer-urls={}", cluster.peer_url(new));
        // Refused as unhealthy until the last member to join is connected, as etcd does.
        let name = cluster.name(new).to_string();
        let cluster_ref = &cluster;
        testkit::eventually(SETTLE_DEADLINE, "member add", || async {
            etcdctl_ok(cluster_ref, 0, &["member", "add", &name, &peer]).map(|_| ())
        })
        .await
        .unwrap();
        cluster.start_joining(new, &[]).unwrap();
        cluster.wait_listening(new, SETTLE_DEADLINE).unwrap();
        put_keys(&cluster, new, &format!("grow-{new}"), 20).await;
    }
    assert_eq!(member_list(&cluster, 4).unwrap().len(), 5);
    let staying = [2, 3, 4];
    let writers = Writers::start(&cluster, &staying, 4, "grow");
    writers.wait_acked(100, SETTLE_DEADLINE).await.unwrap();
    let endpoints: Vec<String> = (0..5).map(|i| cluster.client_url(i)).collect();
    let first_id = member_id(&cluster, 0).await;
    let first = format!("{first_id:x}");
    let cluster_ref = &cluster;
    testkit::eventually(SETTLE_DEADLINE, "leadership on member 0", || async {
        let leads = |status: proto::etcdserverpb::StatusResponse| status.leader == first_id;
        if !leads(cluster_ref.status(2).await?) {
            let _ = testkit::etcdctl(&endpoints.join(","), &["move-leader", &first], None)?;
        }
        anyhow::ensure!(
            leads(cluster_ref.status(2).await?),
            "member 0 does not lead yet"
        );
        Ok(())
    })
    .await
    .unwrap();
    for victim in [0, 1] {
        let id = member_id(&cluster, victim).await;
        etcdctl_ok(&cluster, 2, &["member", "remove", &format!("{id:x}")]).unwrap();
        cluster.wait_exit(victim, SETTLE_DEADLINE).unwrap();
        let acked = writers.acked();
        writers
            .wait_acked(acked + 100, SETTLE_DEADLINE)
            .await
            .unwrap();
    }
    let longest = writers.longest_gap();
    let acked = writers.finish().await;
    eprintln!(
        "3 -> 5 -> 3: {} writes, longest gap {longest:?}",
        acked.len()
    );
    assert!(longest < LONGEST_GAP, "writes stopped for {longest:?}");
    wait_hashes_equal(&cluster, &staying).await.unwrap();
    for &i in &staying {
        let found = read_prefix(&cluster, i, "grow/").await.unwrap();
        assert_acked_present(&acked, &found, &format!("member {i}"));
    }
    assert_eq!(member_list(&cluster, 2).unwrap().len(), 3);
}
