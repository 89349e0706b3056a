//! Elections: etcd's Election service against real etcd (the same calls, the same answers,
//! the same errors, a second campaigner waiting until the first resigns, Observe streaming
//! every change of leader), and `etcdctl elect`, which runs the election recipe on the client
//! from leases, keepalives, txns and watches, against both servers.

use std::io::Read as _;
use std::process::Child;
use std::time::Duration;

use proto::etcdserverpb as pb;
use proto::etcdserverpb::kv_client::KvClient;
use proto::etcdserverpb::lease_client::LeaseClient;
use proto::v3electionpb::election_client::ElectionClient;
use proto::v3electionpb::{
    CampaignRequest, CampaignResponse, LeaderKey, LeaderRequest, LeaderResponse, ProclaimRequest,
    ProclaimResponse, ResignRequest, ResignResponse,
};
use testkit::{Cluster, Etcd};
use tonic::transport::Channel;

use crate::{assert_answers_as_etcd, binary, prefix_end, ELECTION_DEADLINE};

/// A call's answer as text: `what` of a success, or the error's code and message.
fn answer<T>(
    result: Result<tonic::Response<T>, tonic::Status>,
    what: impl Fn(T) -> String,
) -> String {
    match result {
        Ok(r) => what(r.into_inner()),
        Err(s) => format!("{:?}: {}", s.code(), s.message()),
    }
}

fn revision(header: Option<&pb::ResponseHeader>) -> i64 {
    header.map_or(0, |h| h.revision)
}

fn campaigned(r: CampaignResponse) -> String {
    let leader = r.leader.unwrap_or_default();
    format!(
        "campaign revision={} key={} rev={} lease={}",
        revision(r.header.as_ref()),
        String::from_utf8_lossy(&leader.key),
        leader.rev,
        leader.lease
    )
}

fn leader_kv(r: LeaderResponse) -> String {
    let kv = r.kv.unwrap_or_default();
    format!(
        "leader revision={} key={} value={} create={} mod={} version={} lease={}",
        revision(r.header.as_ref()),
        String::from_utf8_lossy(&kv.key),
        String::from_utf8_lossy(&kv.value),
        kv.create_revision,
        kv.mod_revision,
        kv.version,
        kv.lease
    )
}

fn campaign(name: &str, lease: i64, value: &str) -> CampaignRequest {
    CampaignRequest {
        name: name.into(),
        lease,
        value: value.into(),
    }
}

fn leader_request(name: &str) -> LeaderRequest {
    LeaderRequest { name: name.into() }
}

/// How many keys are under `prefix`.
async fn count(kv: &mut KvClient<Channel>, prefix: &str) -> i64 {
    kv.range(pb::RangeRequest {
        key: prefix.into(),
        range_end: prefix_end(prefix.as_bytes()),
        count_only: true,
        ..Default::default()
    })
    .await
    .expect("range")
    .into_inner()
    .count
}

/// The same election conversation with one server: what it answered, in order.
#[allow(clippy::too_many_lines)]
async fn conversation(channel: Channel) -> Vec<String> {
    let mut leases = LeaseClient::new(channel.clone());
    let kv = KvClient::new(channel.clone());
    let mut election = ElectionClient::new(channel);
    let mut out = Vec::new();
    for id in [100, 101, 102] {
        leases
            .lease_grant(pb::LeaseGrantRequest { ttl: 60, id })
            .await
            .expect("grant");
    }
    out.push(answer(
        election.leader(leader_request("e")).await,
        leader_kv,
    ));
    // Observe from before anyone campaigns: it waits for the first leader, then sees each
    // proclaimed value and the next leader. (etcd answers the call only with the first
    // leader, so it is made in a task of its own.)
    let mut observing = election.clone();
    let observer = tokio::spawn(async move {
        let mut stream = observing
            .observe(leader_request("e"))
            .await
            .expect("observe")
            .into_inner();
        let mut seen = Vec::new();
        for _ in 0..4 {
            let next = stream.message().await.expect("the observe stream");
            seen.push(format!(
                "observed {}",
                leader_kv(next.expect("not the end of the stream"))
            ));
        }
        seen
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let first = election
        .campaign(campaign("e", 100, "a"))
        .await
        .expect("the first campaign")
        .into_inner();
    let leader = first.leader.clone().expect("a leader key");
    out.push(campaigned(first));
    out.push(answer(
        election.campaign(campaign("e", 999, "z")).await,
        campaigned,
    ));
    // Campaigning again with the same lease keeps the place and replaces the value.
    out.push(answer(
        election.campaign(campaign("e", 100, "b")).await,
        campaigned,
    ));
    out.push(answer(
        election.leader(leader_request("e")).await,
        leader_kv,
    ));
    let proclaim = |leader: Option<LeaderKey>, value: &str| ProclaimRequest {
        leader,
        value: value.into(),
    };
    let stale = LeaderKey {
        rev: leader.rev + 1,
        ..leader.clone()
    };
    let proclaimed =
        |r: ProclaimResponse| format!("proclaim revision={}", revision(r.header.as_ref()));
    out.push(answer(
        election.proclaim(proclaim(Some(stale.clone()), "x")).await,
        proclaimed,
    ));
    out.push(answer(
        election.proclaim(proclaim(None, "x")).await,
        proclaimed,
    ));
    out.push(answer(
        election
            .proclaim(proclaim(
                Some(LeaderKey {
                    key: Vec::new(),
                    ..leader.clone()
                }),
                "x",
            ))
            .await,
        proclaimed,
    ));
    out.push(answer(
        election
            .proclaim(proclaim(
                Some(LeaderKey {
                    lease: 999,
                    ..leader.clone()
                }),
                "x",
            ))
            .await,
        proclaimed,
    ));
    out.push(answer(
        election.proclaim(proclaim(Some(leader.clone()), "c")).await,
        proclaimed,
    ));
    // A second campaigner waits until the first resigns.
    let mut second = election.clone();
    let waiting = tokio::spawn(async move { second.campaign(campaign("e", 101, "y")).await });
    tokio::time::sleep(Duration::from_millis(800)).await;
    out.push(format!(
        "second finished before resign: {}",
        waiting.is_finished()
    ));
    // A third one gives up while it waits: its key goes away.
    let mut third = election.clone();
    let gave_up = tokio::time::timeout(
        Duration::from_millis(500),
        third.campaign(campaign("e", 102, "w")),
    )
    .await;
    out.push(format!("third gave up: {}", gave_up.is_err()));
    testkit::eventually(
        Duration::from_secs(10),
        "the third campaign's key deleted",
        || {
            let mut kv = kv.clone();
            async move {
                let n = count(&mut kv, "e/").await;
                anyhow::ensure!(n == 2, "{n} campaigners");
                Ok(())
            }
        },
    )
    .await
    .expect("the campaign that gave up resigned");
    let resigned = |r: ResignResponse| format!("resign revision={}", revision(r.header.as_ref()));
    out.push(answer(
        election
            .resign(ResignRequest {
                leader: Some(leader.clone()),
            })
            .await,
        resigned,
    ));
    let second = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("the second campaigner leads")
        .expect("the task")
        .expect("the second campaign")
        .into_inner();
    let second_leader = second.leader.clone().expect("a leader key");
    out.push(campaigned(second));
    out.push(answer(
        election.leader(leader_request("e")).await,
        leader_kv,
    ));
    // Resigning what one no longer holds is no error; a missing leader field is one.
    out.push(answer(
        election
            .resign(ResignRequest {
                leader: Some(leader),
            })
            .await,
        resigned,
    ));
    out.push(answer(
        election.resign(ResignRequest { leader: None }).await,
        resigned,
    ));
    out.push(answer(
        election
            .resign(ResignRequest {
                leader: Some(second_leader),
            })
            .await,
        resigned,
    ));
    out.push(answer(
        election.leader(leader_request("e")).await,
        leader_kv,
    ));
    // A campaign without a lease is given one.
    let leaseless = election
        .campaign(campaign("f", 0, "free"))
        .await
        .expect("a campaign without a lease")
        .into_inner();
    let leaseless = leaseless.leader.expect("a leader key");
    out.push(format!(
        "leaseless: lease given={} key is name/lease={}",
        leaseless.lease != 0,
        leaseless.key == format!("f/{:x}", leaseless.lease).into_bytes()
    ));
    // What the observer saw: the first leader, each value proclaimed, the next leader.
    let seen = tokio::time::timeout(Duration::from_secs(10), observer)
        .await
        .expect("four observed leaders")
        .expect("the observer");
    out.extend(seen);
    out
}

// Proves the Election service answers as etcd's: campaign keys `name/<lease in hex>` at the
// revisions etcd gives, an unknown lease refused, a repeated campaign keeping its place and
// replacing the value, Leader and its "no leader" error, Proclaim with a stale revision
// ("not leader"), without a leader or a key, or with an unknown lease, Resign (no error when
// not leading), a second campaigner that waits for the first to resign, a campaign given
// up while waiting that removes its key, a campaign without a lease that is given one, and
// Observe seeing every leader and proclaimed value in order. Every error has etcd's code and
// message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn election_calls_answer_as_etcd_does() {
    assert_answers_as_etcd(conversation).await;
}

/// Reads what a running etcdctl printed so far, without waiting for more.
fn kill_and_read(mut child: Child) -> String {
    let _ = child.kill();
    let _ = child.wait();
    let mut text = String::new();
    if let Some(mut stdout) = child.stdout.take() {
        let _ = stdout.read_to_string(&mut text);
    }
    text
}

/// Lease ids in `output` (the hex after `name/`) replaced by their order of appearance.
fn normalise_leases(output: &str, name: &str) -> Vec<String> {
    let mut seen: Vec<String> = Vec::new();
    output
        .lines()
        .map(|line| match line.strip_prefix(&format!("{name}/")) {
            Some(lease) => {
                let n = seen.iter().position(|l| l == lease).unwrap_or_else(|| {
                    seen.push(lease.to_string());
                    seen.len() - 1
                });
                format!("{name}/<lease {n}>")
            }
            None => line.to_string(),
        })
        .collect()
}

/// The lease of the campaign key `etcdctl elect` printed first.
fn printed_lease(child: &mut Child, name: &str) -> String {
    let stdout = child.stdout.as_mut().expect("piped");
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while stdout.read(&mut byte).expect("read etcdctl") == 1 && byte[0] != b'\n' {
        line.push(byte[0]);
    }
    let line = String::from_utf8_lossy(&line).into_owned();
    line.strip_prefix(&format!("{name}/"))
        .unwrap_or_else(|| panic!("etcdctl elect printed {line:?}"))
        .to_string()
}

/// `etcdctl elect` with one server: an observer, a leader, a second campaigner that takes
/// over when the leader's process is killed and its lease revoked, and one that resigns on
/// interrupt. What the observer printed, lease ids by order of appearance.
async fn elect_with_etcdctl(endpoints: &str) -> Vec<String> {
    let observer = testkit::spawn_etcdctl(endpoints, &["elect", "-l", "job"]).unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut first = testkit::spawn_etcdctl(endpoints, &["elect", "job", "one"]).unwrap();
    let first_lease = printed_lease(&mut first, "job");
    let mut second = testkit::spawn_etcdctl(endpoints, &["elect", "job", "two"]).unwrap();
    tokio::time::sleep(Duration::from_millis(800)).await;
    // The second waits while the first lives: kill it (no resignation) and revoke its lease.
    let _ = first.kill();
    let _ = first.wait();
    let revoked = testkit::etcdctl(endpoints, &["lease", "revoke", &first_lease], None).unwrap();
    assert!(revoked.status.success(), "lease revoke: {revoked:?}");
    let second_lease = printed_lease(&mut second, "job");
    assert_ne!(first_lease, second_lease);
    let third = testkit::spawn_etcdctl(endpoints, &["elect", "job", "three"]).unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Interrupted, etcdctl resigns: the third leads at once.
    testkit::send_signal(second.id(), "INT").unwrap();
    let _ = second.wait();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let _ = kill_and_read(third);
    normalise_leases(&kill_and_read(observer), "job")
}

// Proves `etcdctl elect` (the election recipe run by the client) works against Concord as
// against etcd: `elect -l` prints every leader in order, a second campaigner leads once the
// first's process is killed and its lease revoked, and a third once the second is
// interrupted and resigns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_elect_hands_over_as_with_etcd() {
    let etcd = Etcd::start().expect("start the reference etcd");
    let mut cluster = Cluster::start(binary(), 3, &[]).unwrap();
    cluster.wait_for_leader(ELECTION_DEADLINE).await.unwrap();
    let expected = elect_with_etcdctl(&etcd.client_url()).await;
    assert_eq!(
        expected,
        [
            "job/<lease 0>",
            "one",
            "job/<lease 1>",
            "two",
            "job/<lease 2>",
            "three"
        ],
        "etcd's etcdctl elect -l"
    );
    let got = elect_with_etcdctl(&cluster.endpoints()).await;
    assert_eq!(got, expected);
}

// Proves the server's election and etcdctl's agree on the keys and their order: campaigners
// through the Election service are seen by `etcdctl elect -l`, values proclaimed through it
// too, and a gRPC campaigner leads once `etcdctl elect`'s lease is revoked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_sees_the_services_leaders() {
    let mut cluster = Cluster::start(binary(), 3, &[]).unwrap();
    let leader = cluster.wait_for_leader(ELECTION_DEADLINE).await.unwrap();
    let endpoints = cluster.endpoints();
    let channel = cluster.channel((leader + 1) % 3);
    let mut leases = LeaseClient::new(channel.clone());
    let mut election = ElectionClient::new(channel);
    let observer = testkit::spawn_etcdctl(&endpoints, &["elect", "-l", "svc"]).unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut by_etcdctl = testkit::spawn_etcdctl(&endpoints, &["elect", "svc", "cli"]).unwrap();
    let cli_lease = printed_lease(&mut by_etcdctl, "svc");
    leases
        .lease_grant(pb::LeaseGrantRequest { ttl: 60, id: 0x51 })
        .await
        .unwrap();
    let mut waiting = election.clone();
    let campaign =
        tokio::spawn(async move { waiting.campaign(campaign("svc", 0x51, "grpc")).await });
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(!campaign.is_finished(), "the gRPC campaigner did not wait");
    let _ = by_etcdctl.kill();
    let _ = by_etcdctl.wait();
    let lease = i64::from_str_radix(&cli_lease, 16).unwrap();
    leases
        .lease_revoke(pb::LeaseRevokeRequest { id: lease })
        .await
        .unwrap();
    let won = tokio::time::timeout(Duration::from_secs(10), campaign)
        .await
        .expect("the gRPC campaigner leads")
        .unwrap()
        .unwrap()
        .into_inner();
    let leader = won.leader.unwrap();
    assert_eq!(leader.key, b"svc/51");
    election
        .proclaim(ProclaimRequest {
            leader: Some(leader),
            value: b"proclaimed".to_vec(),
        })
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let seen = kill_and_read(observer);
    // etcdctl observes on the client: once the first leader's key is gone it reads the next
    // leader at the latest revision, which may already carry the proclaimed value.
    let every = format!("svc/{cli_lease}\ncli\nsvc/51\ngrpc\nsvc/51\nproclaimed\n");
    let late = format!("svc/{cli_lease}\ncli\nsvc/51\nproclaimed\n");
    assert!(seen == every || seen == late, "etcdctl observed {seen:?}");
}

/// The Rust `etcd-client` crate's election calls with one server: what it answered.
async fn through_etcd_client(endpoint: String) -> Vec<String> {
    use etcd_client::{Client, LeaseGrantOptions, ProclaimOptions, ResignOptions};
    let mut client = Client::connect([endpoint], None).await.expect("connect");
    let mut out = Vec::new();
    client
        .lease_grant(60, Some(LeaseGrantOptions::new().with_id(0x77)))
        .await
        .expect("grant");
    let won = client.campaign("rc", "v1", 0x77).await.expect("campaign");
    let leader = won.leader().expect("a leader key").clone();
    out.push(format!(
        "campaign key={} rev={} lease={}",
        String::from_utf8_lossy(leader.key()),
        leader.rev(),
        leader.lease()
    ));
    let mut observer = client.observe("rc").await.expect("observe");
    let mut values = Vec::new();
    let mut next = async || {
        let seen = tokio::time::timeout(Duration::from_secs(10), observer.message())
            .await
            .expect("an observed value")
            .expect("the observe stream")
            .expect("not the end");
        String::from_utf8_lossy(seen.kv().expect("a kv").value()).into_owned()
    };
    // The current leader first, then each value as it is proclaimed.
    values.push(next().await);
    for value in ["v2", "v3"] {
        client
            .proclaim(
                value,
                Some(ProclaimOptions::new().with_leader(leader.clone())),
            )
            .await
            .expect("proclaim");
    }
    values.push(next().await);
    values.push(next().await);
    out.push(format!("observed {values:?}"));
    let current = client.leader("rc").await.expect("leader");
    out.push(format!(
        "leader value={}",
        String::from_utf8_lossy(current.kv().expect("a kv").value())
    ));
    client
        .resign(Some(ResignOptions::new().with_leader(leader)))
        .await
        .expect("resign");
    match client.leader("rc").await {
        Ok(_) => out.push("a leader after resigning".to_string()),
        Err(etcd_client::Error::GRpcStatus(status)) => {
            out.push(format!("{:?}: {}", status.code(), status.message()));
        }
        Err(e) => out.push(format!("{e}")),
    }
    out
}

// Proves the `etcd-client` crate's election client works with Concord as with etcd:
// campaign, observe (the leader, then each value proclaimed), leader, resign, and the
// "no leader" error after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_client_elections_work_as_with_etcd() {
    let etcd = Etcd::start().expect("start the reference etcd");
    let mut cluster = Cluster::start(binary(), 3, &[]).unwrap();
    let leader = cluster.wait_for_leader(ELECTION_DEADLINE).await.unwrap();
    let expected = through_etcd_client(etcd.client_url()).await;
    assert_eq!(
        expected[1], "observed [\"v1\", \"v2\", \"v3\"]",
        "etcd's observed values"
    );
    let got = through_etcd_client(cluster.client_url((leader + 1) % 3)).await;
    assert_eq!(got, expected);
}
