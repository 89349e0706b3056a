//! Tests against real `concord` processes: the binary is started, killed and restarted as a
//! user or an operator would, and spoken to with etcdctl and gRPC clients.

mod cli;
mod faults;
mod kv;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use proto::etcdserverpb::{PutRequest, RangeRequest};
use testkit::Cluster;
use tokio::sync::Mutex;

fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_concord"))
}

/// Slow tests run only when `RUN_SLOW_TESTS` is set (CI sets it).
fn slow_tests_enabled() -> bool {
    std::env::var_os("RUN_SLOW_TESTS").is_some()
}

/// Writes acknowledged by the cluster: key -> value.
type Acked = Arc<Mutex<BTreeMap<String, String>>>;

/// Starts `writers` tasks that put unique keys through the given members (round robin, each
/// request with a 2 s timeout) until `stop` is set, recording every acknowledged write.
fn start_writers(
    cluster: &Cluster,
    members: &[usize],
    writers: usize,
    prefix: &str,
    stop: Arc<AtomicBool>,
    acked: Acked,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..writers)
        .map(|w| {
            let clients: Vec<_> = members.iter().map(|&m| cluster.kv(m)).collect();
            let stop = stop.clone();
            let acked = acked.clone();
            let prefix = prefix.to_string();
            tokio::spawn(async move {
                let mut n = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    let key = format!("{prefix}/{w}/{n:06}");
                    let value = format!("v{w}-{n}");
                    let mut client = clients[n % clients.len()].clone();
                    let put = PutRequest {
                        key: key.clone().into_bytes(),
                        value: value.clone().into_bytes(),
                        ..Default::default()
                    };
                    let sent = tokio::time::timeout(Duration::from_secs(2), client.put(put)).await;
                    if let Ok(Ok(_)) = sent {
                        acked.lock().await.insert(key, value);
                    } else {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    n += 1;
                }
            })
        })
        .collect()
}

/// Reads every key under `prefix` from member `i` (linearizable unless `serializable`).
async fn read_prefix(
    cluster: &Cluster,
    i: usize,
    prefix: &str,
    serializable: bool,
) -> anyhow::Result<BTreeMap<String, String>> {
    let mut end = prefix.as_bytes().to_vec();
    *end.last_mut().expect("non-empty prefix") += 1;
    let response = cluster
        .kv(i)
        .range(RangeRequest {
            key: prefix.as_bytes().to_vec(),
            range_end: end,
            serializable,
            ..Default::default()
        })
        .await?
        .into_inner();
    Ok(response
        .kvs
        .into_iter()
        .map(|kv| {
            (
                String::from_utf8_lossy(&kv.key).into_owned(),
                String::from_utf8_lossy(&kv.value).into_owned(),
            )
        })
        .collect())
}

/// Asserts every acknowledged write is present with its value in `found`.
fn assert_all_acked_present(
    acked: &BTreeMap<String, String>,
    found: &BTreeMap<String, String>,
    who: &str,
) {
    let missing: Vec<&String> = acked
        .iter()
        .filter(|(k, v)| found.get(*k) != Some(*v))
        .map(|(k, _)| k)
        .collect();
    assert!(
        missing.is_empty(),
        "{who}: {} of {} acknowledged writes missing, e.g. {:?}",
        missing.len(),
        acked.len(),
        missing.iter().take(5).collect::<Vec<_>>()
    );
}
