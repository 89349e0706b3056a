//! The Rust `etcd-client` crate against a Concord cluster: every KV, Maintenance and Cluster
//! call it offers, with the answers checked field by field, and etcd's errors where a request
//! is wrong.

use etcd_client::{
    AlarmAction, AlarmOptions, AlarmType, Client, CompactionOptions, Compare, CompareOp,
    DeleteOptions, GetOptions, PutOptions, SortOrder, SortTarget, Txn, TxnOp, TxnOpResponse,
};
use testkit::Cluster;
use tonic::Code;

use crate::{binary, ELECTION_DEADLINE};

async fn client(cluster: &Cluster) -> Client {
    let endpoints: Vec<String> = (0..cluster.size()).map(|i| cluster.client_url(i)).collect();
    Client::connect(endpoints, None).await.expect("connect")
}

fn keys(response: &etcd_client::GetResponse) -> Vec<String> {
    response
        .kvs()
        .iter()
        .map(|kv| String::from_utf8_lossy(kv.key()).into_owned())
        .collect()
}

/// The gRPC code and message of a failed call.
fn status(error: etcd_client::Error) -> (Code, String) {
    match error {
        etcd_client::Error::GRpcStatus(status) => (status.code(), status.message().to_string()),
        other => panic!("expected a gRPC status, got {other:?}"),
    }
}

fn header_revision(header: Option<&etcd_client::ResponseHeader>) -> i64 {
    header.expect("a header").revision()
}

// Proves every KV call of the crate works against Concord with etcd's semantics: get with
// each option (ranges, prefix, from-key, limit and `more`, sort, historical revision,
// keys-only, count-only, serializable, mod and create revision filters), put with prev-kv,
// ignore-value and ignore-lease, delete by prefix with prev-kvs, txns with compares on every
// target and both branches, compaction (physical), and etcd's errors for bad requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv_calls_through_etcd_client() {
    let mut cluster = Cluster::start(binary(), 3, &[]).unwrap();
    cluster.wait_for_leader(ELECTION_DEADLINE).await.unwrap();
    let mut c = client(&cluster).await;

    // Puts: revisions 2..=6.
    let first = c.put("k/a", "1", None).await.unwrap();
    assert_eq!(header_revision(first.header()), 2);
    for (key, value) in [("k/b", "2"), ("k/c", "3"), ("k/d", "4"), ("l/x", "9")] {
        c.put(key, value, None).await.unwrap();
    }
    let previous = c
        .put("k/a", "1b", Some(PutOptions::new().with_prev_key()))
        .await
        .unwrap();
    let prev = previous.prev_key().expect("prev kv");
    assert_eq!(
        (prev.value(), prev.mod_revision(), prev.version()),
        (&b"1"[..], 2, 1)
    );
    assert_eq!(header_revision(previous.header()), 7);

    // Get: single key, range, prefix, from-key.
    let a = c.get("k/a", None).await.unwrap();
    let kv = &a.kvs()[0];
    assert_eq!(
        (
            kv.value(),
            kv.create_revision(),
            kv.mod_revision(),
            kv.version()
        ),
        (&b"1b"[..], 2, 7, 2)
    );
    let range = c
        .get("k/b", Some(GetOptions::new().with_range("k/d")))
        .await
        .unwrap();
    assert_eq!(keys(&range), ["k/b", "k/c"]);
    let prefix = c
        .get("k/", Some(GetOptions::new().with_prefix()))
        .await
        .unwrap();
    assert_eq!(keys(&prefix), ["k/a", "k/b", "k/c", "k/d"]);
    let from = c
        .get("k/c", Some(GetOptions::new().with_from_key()))
        .await
        .unwrap();
    assert_eq!(keys(&from), ["k/c", "k/d", "l/x"]);
    let all = c
        .get("", Some(GetOptions::new().with_all_keys()))
        .await
        .unwrap();
    assert_eq!(all.count(), 5);

    // Limit, sort, revision, keys-only, count-only, serializable, filters.
    let limited = c
        .get("k/", Some(GetOptions::new().with_prefix().with_limit(2)))
        .await
        .unwrap();
    assert_eq!(
        (keys(&limited), limited.more(), limited.count()),
        (vec!["k/a".to_string(), "k/b".into()], true, 4)
    );
    let sorted = c
        .get(
            "k/",
            Some(
                GetOptions::new()
                    .with_prefix()
                    .with_sort(SortTarget::Mod, SortOrder::Descend),
            ),
        )
        .await
        .unwrap();
    assert_eq!(keys(&sorted), ["k/a", "k/d", "k/c", "k/b"]);
    let by_value = c
        .get(
            "k/",
            Some(
                GetOptions::new()
                    .with_prefix()
                    .with_sort(SortTarget::Value, SortOrder::Ascend),
            ),
        )
        .await
        .unwrap();
    assert_eq!(keys(&by_value), ["k/a", "k/b", "k/c", "k/d"]);
    let old = c
        .get("k/a", Some(GetOptions::new().with_revision(3)))
        .await
        .unwrap();
    assert_eq!(old.kvs()[0].value(), b"1");
    assert_eq!(header_revision(old.header()), 7);
    let keys_only = c
        .get("k/", Some(GetOptions::new().with_prefix().with_keys_only()))
        .await
        .unwrap();
    assert!(keys_only.kvs().iter().all(|kv| kv.value().is_empty()));
    assert_eq!(keys_only.kvs().len(), 4);
    let count_only = c
        .get(
            "k/",
            Some(GetOptions::new().with_prefix().with_count_only()),
        )
        .await
        .unwrap();
    assert_eq!((count_only.kvs().len(), count_only.count()), (0, 4));
    let serializable = c
        .get("k/b", Some(GetOptions::new().with_serializable()))
        .await
        .unwrap();
    // Member-local: a lagging member may not have k/b yet, but never another value.
    assert!(serializable.kvs().iter().all(|kv| kv.value() == b"2"));
    let filtered = c
        .get(
            "k/",
            Some(
                GetOptions::new()
                    .with_prefix()
                    .with_min_mod_revision(4)
                    .with_max_mod_revision(5)
                    .with_min_create_revision(3)
                    .with_max_create_revision(5),
            ),
        )
        .await
        .unwrap();
    assert_eq!(keys(&filtered), ["k/c", "k/d"]);

    // Put with ignore_value / ignore_lease keeps the value and lease.
    let kept = c
        .put(
            "k/b",
            "",
            Some(PutOptions::new().with_ignore_value().with_prev_key()),
        )
        .await
        .unwrap();
    assert_eq!(kept.prev_key().unwrap().value(), b"2");
    let now = c.get("k/b", None).await.unwrap();
    assert_eq!(
        (now.kvs()[0].value(), now.kvs()[0].version()),
        (&b"2"[..], 2)
    );
    c.put("k/b", "2b", Some(PutOptions::new().with_ignore_lease()))
        .await
        .unwrap();
    assert_eq!(c.get("k/b", None).await.unwrap().kvs()[0].value(), b"2b");
    assert_eq!(
        status(
            c.put("k/none", "", Some(PutOptions::new().with_ignore_value()))
                .await
                .unwrap_err()
        ),
        (Code::InvalidArgument, "etcdserver: key not found".into())
    );
    assert_eq!(
        status(
            c.put("k/a", "v", Some(PutOptions::new().with_lease(12345)))
                .await
                .unwrap_err()
        ),
        (
            Code::NotFound,
            "etcdserver: requested lease not found".into()
        )
    );

    // Txn: compares on value, version, create and mod revision, lease; both branches.
    let revision = header_revision(c.get("k/a", None).await.unwrap().header());
    let txn = Txn::new()
        .when(vec![
            Compare::value("k/a", CompareOp::Equal, "1b"),
            Compare::version("k/a", CompareOp::Greater, 1),
            Compare::create_revision("k/a", CompareOp::Less, 3),
            Compare::mod_revision("k/c", CompareOp::NotEqual, 0),
            Compare::lease("k/a", CompareOp::Equal, 0),
        ])
        .and_then(vec![
            TxnOp::put("k/t", "yes", None),
            TxnOp::get("k/t", None),
            TxnOp::delete("k/d", Some(DeleteOptions::new().with_prev_key())),
            TxnOp::txn(Txn::new().and_then(vec![TxnOp::get("k/c", None)])),
        ])
        .or_else(vec![TxnOp::put("k/t", "no", None)]);
    let done = c.txn(txn).await.unwrap();
    assert!(done.succeeded());
    assert_eq!(header_revision(done.header()), revision + 1);
    let responses = done.op_responses();
    assert_eq!(responses.len(), 4);
    match &responses[1] {
        TxnOpResponse::Get(get) => assert_eq!(get.kvs()[0].value(), b"yes"),
        other => panic!("{other:?}"),
    }
    match &responses[2] {
        TxnOpResponse::Delete(delete) => {
            assert_eq!(
                (delete.deleted(), delete.prev_kvs()[0].value()),
                (1, &b"4"[..])
            );
        }
        other => panic!("{other:?}"),
    }
    match &responses[3] {
        TxnOpResponse::Txn(nested) => assert!(nested.succeeded()),
        other => panic!("{other:?}"),
    }
    let otherwise = c
        .txn(
            Txn::new()
                .when(vec![Compare::value("k/a", CompareOp::Equal, "nope")])
                .and_then(vec![TxnOp::put("k/t", "yes2", None)])
                .or_else(vec![TxnOp::get("k/t", None)]),
        )
        .await
        .unwrap();
    assert!(!otherwise.succeeded());
    assert_eq!(
        header_revision(otherwise.header()),
        revision + 1,
        "a read-only branch writes nothing"
    );

    // Delete by prefix, with the previous values.
    let deleted = c
        .delete(
            "l/",
            Some(DeleteOptions::new().with_prefix().with_prev_key()),
        )
        .await
        .unwrap();
    assert_eq!(
        (deleted.deleted(), deleted.prev_kvs()[0].value()),
        (1, &b"9"[..])
    );

    // Compaction, then the compacted and future revisions give etcd's errors.
    let current = header_revision(deleted.header());
    c.compact(current - 1, Some(CompactionOptions::new().with_physical()))
        .await
        .unwrap();
    assert_eq!(
        status(
            c.get("k/a", Some(GetOptions::new().with_revision(3)))
                .await
                .unwrap_err()
        ),
        (
            Code::OutOfRange,
            "etcdserver: mvcc: required revision has been compacted".into()
        )
    );
    assert_eq!(
        status(
            c.get("k/a", Some(GetOptions::new().with_revision(current + 100)))
                .await
                .unwrap_err()
        ),
        (
            Code::OutOfRange,
            "etcdserver: mvcc: required revision is a future revision".into()
        )
    );
    assert_eq!(
        status(c.compact(current - 1, None).await.unwrap_err()),
        (
            Code::OutOfRange,
            "etcdserver: mvcc: required revision has been compacted".into()
        )
    );

    // Bad requests.
    assert_eq!(
        status(c.put("", "v", None).await.unwrap_err()),
        (
            Code::InvalidArgument,
            "etcdserver: key is not provided".into()
        )
    );
    assert_eq!(
        status(c.put("big", vec![b'x'; 1_600_000], None).await.unwrap_err()),
        (
            Code::InvalidArgument,
            "etcdserver: request is too large".into()
        )
    );
    let many: Vec<TxnOp> = (0..129)
        .map(|i| TxnOp::put(format!("m/{i}"), "v", None))
        .collect();
    assert_eq!(
        status(c.txn(Txn::new().and_then(many)).await.unwrap_err()),
        (
            Code::InvalidArgument,
            "etcdserver: too many operations in txn request".into()
        )
    );
    let twice = vec![TxnOp::put("dup", "1", None), TxnOp::put("dup", "2", None)];
    assert_eq!(
        status(c.txn(Txn::new().and_then(twice)).await.unwrap_err()),
        (
            Code::InvalidArgument,
            "etcdserver: duplicate key given in txn request".into()
        )
    );
}

// Proves the Maintenance and Cluster calls of the crate against Concord: status of every
// member (one leader, the claimed version, sizes, indexes), Hash and HashKV equal on every
// member at one revision, member list with names and URLs, alarms raised, listed and disarmed
// (writes refused meanwhile with etcd's error), and defragment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maintenance_and_cluster_calls_through_etcd_client() {
    let mut cluster = Cluster::start(binary(), 3, &[]).unwrap();
    cluster.wait_for_leader(ELECTION_DEADLINE).await.unwrap();
    let mut all = client(&cluster).await;
    for i in 0..20 {
        all.put(format!("s/{i}"), "v", None).await.unwrap();
    }
    let revision = header_revision(all.get("s/0", None).await.unwrap().header());

    let mut ids = Vec::new();
    let mut leaders = Vec::new();
    let mut hashes = Vec::new();
    for i in 0..3 {
        let mut one = Client::connect([cluster.client_url(i)], None)
            .await
            .unwrap();
        let status = one.status().await.unwrap();
        assert_eq!(status.version(), "3.4.0");
        assert!(status.db_size() > 0);
        assert!(status.raft_index() >= status.raft_applied_index());
        assert!(status.raft_term() >= 1);
        assert!(status.errors().is_empty());
        ids.push(status.header().unwrap().member_id());
        leaders.push(status.leader());
        // Followers apply asynchronously: a linearizable read first brings this one up to date.
        one.get("s/0", None).await.unwrap();
        let hash_kv = one.hash_kv(revision).await.unwrap();
        assert_eq!(hash_kv.compact_version(), -1);
        hashes.push(hash_kv.hash());
        assert_ne!(one.hash().await.unwrap().hash(), 0);
    }
    assert!(
        leaders.iter().all(|&l| l == leaders[0] && ids.contains(&l)),
        "{leaders:?} {ids:?}"
    );
    assert!(hashes.iter().all(|&h| h == hashes[0]), "{hashes:?}");

    let members = all.member_list().await.unwrap();
    let mut names: Vec<&str> = members.members().iter().map(|m| m.name()).collect();
    names.sort_unstable();
    assert_eq!(names, ["m0", "m1", "m2"]);
    for member in members.members() {
        assert!(ids.contains(&member.id()));
        assert_eq!(member.peer_urls().len(), 1);
        assert!(!member.is_learner());
    }

    // Alarms: raise NOSPACE for a member, see writes refused, disarm.
    let mut options = AlarmOptions::new();
    options.with_member(ids[1]);
    let raised = all
        .alarm(AlarmAction::Activate, AlarmType::Nospace, Some(options))
        .await
        .unwrap();
    assert_eq!(raised.alarms().len(), 1);
    assert_eq!(
        (raised.alarms()[0].member_id(), raised.alarms()[0].alarm()),
        (ids[1], AlarmType::Nospace)
    );
    let listed = all
        .alarm(AlarmAction::Get, AlarmType::None, None)
        .await
        .unwrap();
    assert_eq!(listed.alarms().len(), 1);
    assert_eq!(
        status(all.put("s/x", "v", None).await.unwrap_err()),
        (
            Code::ResourceExhausted,
            "etcdserver: mvcc: database space exceeded".into()
        )
    );
    all.delete("s/0", None).await.unwrap();
    let mut one = Client::connect([cluster.client_url(0)], None)
        .await
        .unwrap();
    // A linearizable read first: the member has then applied the alarm too.
    one.get("s/1", None).await.unwrap();
    assert_eq!(one.status().await.unwrap().errors().len(), 1);
    let mut options = AlarmOptions::new();
    options.with_member(ids[1]);
    let cleared = all
        .alarm(AlarmAction::Deactivate, AlarmType::Nospace, Some(options))
        .await
        .unwrap();
    assert_eq!(cleared.alarms().len(), 1);
    all.put("s/x", "v", None).await.unwrap();
    assert!(all
        .alarm(AlarmAction::Get, AlarmType::None, None)
        .await
        .unwrap()
        .alarms()
        .is_empty());

    all.defragment().await.unwrap();
    assert_eq!(all.get("s/x", None).await.unwrap().kvs()[0].value(), b"v");
}

/// Reads watch responses until `done` says enough, failing after `deadline`.
async fn read_watch(
    stream: &mut etcd_client::WatchStream,
    deadline: std::time::Duration,
    mut done: impl FnMut(&etcd_client::WatchResponse) -> bool,
) {
    tokio::time::timeout(deadline, async {
        loop {
            let response = stream
                .message()
                .await
                .expect("a watch response")
                .expect("the stream stays open");
            if done(&response) {
                return;
            }
        }
    })
    .await
    .expect("the expected watch responses in time");
}

// Proves watches through the crate: history with previous versions; a watcher that does not
// read while 2,000 writes of 4 KiB land (far more than the server queues for it) still gets
// every event exactly once, in revision order, once it reads; a progress request is answered
// for the whole stream at the current revision; a watcher from a compacted revision is
// cancelled with the compaction revision.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_through_etcd_client() {
    use etcd_client::{EventType, WatchOptions};
    let mut cluster = Cluster::start(binary(), 3, &[]).unwrap();
    cluster.wait_for_leader(ELECTION_DEADLINE).await.unwrap();
    let mut c = client(&cluster).await;
    c.put("w/a", "1", None).await.unwrap(); // 2
    c.put("w/a", "2", None).await.unwrap(); // 3
    c.delete("w/a", None).await.unwrap(); // 4

    let options = WatchOptions::new()
        .with_prefix()
        .with_prev_key()
        .with_start_revision(2);
    let mut history = c.watch("w/", Some(options)).await.unwrap();
    let mut events = Vec::new();
    read_watch(&mut history, std::time::Duration::from_secs(10), |r| {
        events.extend(r.events().iter().map(|e| {
            let kv = e.kv().expect("a kv");
            (
                e.event_type(),
                kv.mod_revision(),
                e.prev_kv().map(|p| p.value().to_vec()),
            )
        }));
        events.len() >= 3
    })
    .await;
    assert_eq!(
        events,
        vec![
            (EventType::Put, 2, None),
            (EventType::Put, 3, Some(b"1".to_vec())),
            (EventType::Delete, 4, Some(b"2".to_vec())),
        ]
    );

    // A slow reader.
    let mut slow = c
        .watch("s/", Some(WatchOptions::new().with_prefix()))
        .await
        .unwrap();
    let created = slow.message().await.unwrap().unwrap();
    assert!(created.created());
    let value = "v".repeat(4096);
    let mut writers = Vec::new();
    for w in 0..8 {
        let mut c = c.clone();
        let value = value.clone();
        writers.push(tokio::spawn(async move {
            let mut revisions = Vec::new();
            for n in 0..250 {
                let put = c
                    .put(format!("s/{w}/{n}"), value.clone(), None)
                    .await
                    .unwrap();
                revisions.push(header_revision(put.header()));
            }
            revisions
        }));
    }
    let mut written = Vec::new();
    for writer in writers {
        written.extend(writer.await.unwrap());
    }
    written.sort_unstable();
    let mut seen = Vec::new();
    read_watch(&mut slow, std::time::Duration::from_secs(60), |r| {
        assert!(
            !r.canceled(),
            "the slow watcher was cancelled: {}",
            r.cancel_reason()
        );
        seen.extend(r.events().iter().map(|e| e.kv().unwrap().mod_revision()));
        seen.len() >= written.len()
    })
    .await;
    assert_eq!(seen, written, "every write once, in revision order");

    // Progress for the whole stream, at the current revision.
    let current = *written.last().unwrap();
    slow.request_progress().await.unwrap();
    read_watch(&mut slow, std::time::Duration::from_secs(10), |r| {
        assert!(r.events().is_empty(), "no event after the writes");
        assert_eq!(r.watch_id(), -1);
        assert_eq!(header_revision(r.header()), current);
        true
    })
    .await;

    // Behind a compaction.
    c.compact(current - 10, None).await.unwrap();
    let mut old = c
        .watch(
            "s/",
            Some(WatchOptions::new().with_prefix().with_start_revision(5)),
        )
        .await
        .unwrap();
    read_watch(&mut old, std::time::Duration::from_secs(10), |r| {
        r.canceled() && r.compact_revision() == current - 10
    })
    .await;
}

// Proves etcd's require-leader watches: with `hasleader` metadata, a watch on a member that
// has lost its quorum ends with `etcdserver: no leader`, and a new one is refused with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn require_leader_watches_end_when_the_leader_is_lost() {
    use etcd_client::{ConnectOptions, WatchOptions};
    let mut cluster = Cluster::start(binary(), 3, &[]).unwrap();
    cluster.wait_for_leader(ELECTION_DEADLINE).await.unwrap();
    let options = ConnectOptions::new().with_require_leader(true);
    let mut c = Client::connect([cluster.client_url(0)], Some(options.clone()))
        .await
        .expect("connect");
    let mut watch = c
        .watch("k", Some(WatchOptions::new()))
        .await
        .expect("a watch while there is a leader");
    assert!(watch.message().await.unwrap().unwrap().created());
    cluster.kill(1);
    cluster.kill(2);
    let ended = tokio::time::timeout(std::time::Duration::from_secs(15), watch.message())
        .await
        .expect("the watch ends once the leader is lost");
    assert_eq!(
        status(ended.expect_err("an error ends the stream")),
        (Code::Unavailable, "etcdserver: no leader".to_string())
    );
    let mut c = Client::connect([cluster.client_url(0)], Some(options))
        .await
        .expect("connect");
    let refused = c
        .watch("k", None)
        .await
        .expect_err("refused without a leader");
    assert_eq!(
        status(refused),
        (Code::Unavailable, "etcdserver: no leader".to_string())
    );
}
