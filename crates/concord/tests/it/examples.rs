//! The example programs (`crates/examples`) against a 3-member cluster, each with a fault in
//! the middle of its run: the leader killed with SIGKILL and restarted (bank, game, file
//! transfer), or a member stopped with SIGSTOP for longer than the clients' lease TTL, so the
//! sessions of the clients it serves expire under them (shop, workers). Each run checks its
//! own invariant and must pass. Runs are short and counts small: the file takes under a
//! minute and a half.

use std::time::Duration;

use examples::Common;
use testkit::Cluster;

use crate::{binary, ELECTION_DEADLINE};

/// A 3-member cluster with a leader, and its client endpoints.
async fn cluster() -> (Cluster, Vec<String>) {
    let mut cluster = Cluster::start(binary(), 3, &[]).expect("the cluster starts");
    cluster
        .wait_for_leader(ELECTION_DEADLINE)
        .await
        .expect("a leader");
    let endpoints = (0..3).map(|i| cluster.client_url(i)).collect();
    (cluster, endpoints)
}

/// Kills the leader `after` into the run and restarts it `down` later; the member killed.
async fn kill_leader(cluster: &mut Cluster, after: Duration, down: Duration) -> usize {
    tokio::time::sleep(after).await;
    let leader = cluster
        .wait_for_leader(ELECTION_DEADLINE)
        .await
        .expect("a leader");
    cluster.kill(leader);
    eprintln!("killed the leader m{leader}");
    tokio::time::sleep(down).await;
    cluster.restart(leader).expect("the member restarts");
    eprintln!("restarted m{leader}");
    leader
}

/// Stops member `i` with SIGSTOP for `stopped`, then continues it.
async fn pause(cluster: &Cluster, i: usize, stopped: Duration) {
    let pid = cluster.pid(i).expect("the member runs");
    testkit::send_signal(pid, "STOP").expect("SIGSTOP");
    eprintln!("stopped m{i}");
    tokio::time::sleep(stopped).await;
    testkit::send_signal(pid, "CONT").expect("SIGCONT");
    eprintln!("continued m{i}");
}

/// Waits for a run and asserts every invariant it checked held.
async fn passed(name: &str, run: tokio::task::JoinHandle<anyhow::Result<examples::Report>>) {
    let report = run
        .await
        .expect("the run does not panic")
        .unwrap_or_else(|e| panic!("{name} could not run: {e:#}"));
    eprint!("{name}:\n{}", report.text());
    assert!(
        report.passed(),
        "{name} broke {:?}:\n{}",
        report.broken(),
        report.text()
    );
}

// Proves the bank's transfers keep the books under a leader kill: the total never changes,
// no balance goes negative, and the final balances are the opening ones moved by the
// recorded transfers, each applied once, although answers were lost and retried.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bank_keeps_its_books_across_a_leader_kill() {
    let (mut cluster, endpoints) = cluster().await;
    let config = examples::bank::Config {
        common: Common::new(endpoints),
        accounts: 4,
        opening_balance: 100,
        clients: 6,
        seconds: 5,
    };
    let run = tokio::spawn(async move { examples::bank::run(&config).await });
    kill_leader(
        &mut cluster,
        Duration::from_millis(1500),
        Duration::from_secs(1),
    )
    .await;
    passed("bank", run).await;
}

// Proves the flash sale is never oversold when shoppers' sessions die under them: once a
// shopper served by a follower holds a reservation, that member is stopped past the lease
// TTL; the holds of its shoppers expire and their items are reserved by others, and their
// checkouts, made after the member is back, are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shop_is_never_oversold_when_sessions_die() {
    let (mut cluster, endpoints) = cluster().await;
    let leader = cluster
        .wait_for_leader(ELECTION_DEADLINE)
        .await
        .expect("a leader");
    // A follower: the leader's lessor goes on deciding expiries meanwhile.
    let stopped = (leader + 1) % 3;
    let prefix = "shop-test/".to_string();
    let config = examples::shop::Config {
        common: Common {
            prefix: Some(prefix.clone()),
            ..Common::new(endpoints.clone())
        },
        stock: 6,
        shoppers: 12,
        ttl: 2,
        // Longer than the stop: the stalled shoppers check out after it.
        min_think_ms: 4500,
        think_ms: 5500,
        walk_away_percent: 0,
        seconds: 14,
    };
    let run = tokio::spawn(async move { examples::shop::run(&config).await });
    // Shopper `i` talks to member `i % 3`: wait until one of the stopped member's holds.
    let client = etcd_client::Client::connect([endpoints[leader].as_str()], None)
        .await
        .expect("a client");
    let holds = format!("{prefix}hold/");
    testkit::eventually(
        Duration::from_secs(10),
        "a hold of a shopper of the member",
        || {
            let mut client = client.clone();
            let holds = holds.clone();
            async move {
                let options = etcd_client::GetOptions::new().with_prefix();
                let r = client.get(holds, Some(options)).await?;
                let held = r.kvs().iter().any(|kv| {
                    kv.value_str()
                        .ok()
                        .and_then(|v| v.strip_prefix("shopper-"))
                        .and_then(|i| i.parse::<usize>().ok())
                        .is_some_and(|i| i % 3 == stopped)
                });
                anyhow::ensure!(held, "none yet");
                Ok(())
            }
        },
    )
    .await
    .expect("a shopper of the member holds an item");
    pause(&cluster, stopped, Duration::from_secs(4)).await;
    passed("shop", run).await;
}

// Proves exactly one player gets each item and every game server learns who, through its
// watch, while the leader is killed and restarted in the middle of the game.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn game_gives_each_item_to_one_player_across_a_leader_kill() {
    let (mut cluster, endpoints) = cluster().await;
    let config = examples::game::Config {
        common: Common::new(endpoints),
        servers: 3,
        players: 4,
        items: 15,
        every_ms: 200,
    };
    let run = tokio::spawn(async move { examples::game::run(&config).await });
    kill_leader(
        &mut cluster,
        Duration::from_millis(1000),
        Duration::from_secs(1),
    )
    .await;
    passed("game", run).await;
}

// Proves an interrupted file transfer resumes and arrives whole: every chunk stored once and
// matching its checksum, and the file's SHA-256 the original's, with the leader killed and
// restarted during the upload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_transfer_resumes_and_verifies_across_a_leader_kill() {
    let (mut cluster, endpoints) = cluster().await;
    let config = examples::file_transfer::Config {
        common: Common::new(endpoints),
        size: 256 << 10,
        chunk_size: 8 << 10,
        interrupt_after: 8,
        pace_ms: 60,
    };
    let run = tokio::spawn(async move { examples::file_transfer::run(&config).await });
    kill_leader(
        &mut cluster,
        Duration::from_millis(800),
        Duration::from_secs(1),
    )
    .await;
    passed("file-transfer", run).await;
}

// Proves the workers' leader is fenced: the member serving the leading worker is stopped past
// the lease TTL, its registration and leader key expire, another worker is elected and goes
// on, and the stalled leader's late record is refused. Every job is recorded once, each by
// the leader of its revision while registered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_fence_a_stalled_leader() {
    let (cluster, endpoints) = cluster().await;
    let prefix = "workers-test/".to_string();
    let config = examples::workers::Config {
        common: Common {
            prefix: Some(prefix.clone()),
            ..Common::new(endpoints.clone())
        },
        workers: 3,
        jobs: 40,
        job_ms: 100,
        ttl: 2,
        give_up_after: 60,
    };
    let run = tokio::spawn(async move { examples::workers::run(&config).await });
    // Whom the election chose: worker `i` talks to member `i % 3`.
    let client = etcd_client::Client::connect([endpoints[0].as_str()], None)
        .await
        .expect("a client");
    let name = examples::workers::election(&prefix);
    let leader = testkit::eventually(Duration::from_secs(10), "a leading worker", || {
        let mut client = client.clone();
        let name = name.clone();
        async move {
            let r = client.leader(name).await?;
            let value = r.kv().map(|kv| kv.value().to_vec()).unwrap_or_default();
            let worker: usize = String::from_utf8(value)?
                .strip_prefix("worker-")
                .ok_or_else(|| anyhow::anyhow!("no worker leads"))?
                .parse()?;
            Ok(worker)
        }
    })
    .await
    .expect("a worker leads");
    tokio::time::sleep(Duration::from_millis(500)).await;
    pause(&cluster, leader % 3, Duration::from_secs(4)).await;
    passed("workers", run).await;
}
