//! An end-to-end load generator that speaks only the public etcd v3 API, so the same run can
//! be pointed at Concord and at etcd and the two compared.
//!
//! The load is closed-loop: `clients` tasks each send one request at a time, spread over
//! `connections` HTTP/2 connections round-robin across the endpoints. Latency is measured per
//! request from just before the send to the response.

use std::time::{Duration, Instant};

use proto::etcdserverpb::kv_client::KvClient;
use proto::etcdserverpb::{PutRequest, RangeRequest};
use tonic::transport::{Channel, Endpoint};

/// What to run.
#[derive(Clone, Debug)]
pub struct BenchConfig {
    /// Client URLs, e.g. `http://127.0.0.1:2379`.
    pub endpoints: Vec<String>,
    /// HTTP/2 connections, spread round-robin over the endpoints.
    pub connections: usize,
    /// Concurrent requests in flight.
    pub clients: usize,
    /// Requests in all.
    pub total: usize,
    /// Key size in bytes (keys are distinct, zero-padded numbers).
    pub key_size: usize,
    /// Value size in bytes.
    pub value_size: usize,
    /// What to send.
    pub workload: Workload,
}

/// The request mix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workload {
    /// Puts of distinct keys.
    Put,
    /// Linearizable gets of one key.
    Get,
    /// Serializable gets of one key.
    GetSerializable,
}

/// The outcome of a run.
#[derive(Clone, Debug)]
pub struct Report {
    /// Requests that succeeded.
    pub succeeded: usize,
    /// Requests that failed.
    pub failed: usize,
    /// Wall time of the run.
    pub elapsed: Duration,
    /// Latency percentiles of successful requests: p50, p90, p99, p99.9, max.
    pub latency: [Duration; 5],
    /// The first error seen, if any.
    pub first_error: Option<String>,
}

impl Report {
    /// Successful requests per second.
    #[must_use]
    pub fn throughput(&self) -> f64 {
        self.succeeded as f64 / self.elapsed.as_secs_f64()
    }
}

/// Why a run could not start.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// An endpoint URL is not valid or cannot be reached.
    #[error("endpoint {endpoint}: {detail}")]
    Connect {
        /// The endpoint.
        endpoint: String,
        /// What went wrong.
        detail: String,
    },
    /// The configuration cannot run.
    #[error("invalid benchmark: {0}")]
    Invalid(String),
}

/// Runs the benchmark to completion.
///
/// # Errors
/// `Invalid` for an empty endpoint list or zero clients/connections, `Connect` if an
/// endpoint cannot be reached.
pub async fn run(config: &BenchConfig) -> Result<Report, BenchError> {
    if config.endpoints.is_empty() || config.clients == 0 || config.connections == 0 {
        return Err(BenchError::Invalid(
            "needs at least one endpoint, client and connection".into(),
        ));
    }
    let mut channels = Vec::with_capacity(config.connections);
    for i in 0..config.connections {
        let url = &config.endpoints[i % config.endpoints.len()];
        let connect_error = |detail: String| BenchError::Connect {
            endpoint: url.clone(),
            detail,
        };
        let channel = Endpoint::from_shared(url.clone())
            .map_err(|e| connect_error(e.to_string()))?
            .tcp_nodelay(true)
            .connect()
            .await
            .map_err(|e| connect_error(e.to_string()))?;
        channels.push(channel);
    }
    if config.workload != Workload::Put {
        let mut kv = KvClient::new(channels[0].clone());
        kv.put(PutRequest {
            key: b"bench-read-key".to_vec(),
            value: vec![b'v'; config.value_size],
            ..Default::default()
        })
        .await
        .map_err(|e| BenchError::Connect {
            endpoint: config.endpoints[0].clone(),
            detail: e.message().to_string(),
        })?;
    }

    let started = Instant::now();
    let mut tasks = Vec::with_capacity(config.clients);
    for client in 0..config.clients {
        let count =
            config.total / config.clients + usize::from(client < config.total % config.clients);
        let first = (0..client)
            .map(|c| config.total / config.clients + usize::from(c < config.total % config.clients))
            .sum::<usize>();
        let channel = channels[client % channels.len()].clone();
        let config = config.clone();
        tasks.push(tokio::spawn(client_loop(channel, config, first, count)));
    }
    let mut latencies = Vec::with_capacity(config.total);
    let mut failed = 0;
    let mut first_error = None;
    for task in tasks {
        let outcome = task.await.expect("client task does not panic");
        latencies.extend(outcome.latencies);
        failed += outcome.failed;
        if first_error.is_none() {
            first_error = outcome.first_error;
        }
    }
    let elapsed = started.elapsed();
    latencies.sort_unstable();
    let percentile = |p: f64| {
        if latencies.is_empty() {
            return Duration::ZERO;
        }
        let rank = ((latencies.len() as f64 * p).ceil() as usize).clamp(1, latencies.len());
        latencies[rank - 1]
    };
    Ok(Report {
        succeeded: latencies.len(),
        failed,
        elapsed,
        latency: [
            percentile(0.50),
            percentile(0.90),
            percentile(0.99),
            percentile(0.999),
            percentile(1.0),
        ],
        first_error,
    })
}

struct ClientOutcome {
    latencies: Vec<Duration>,
    failed: usize,
    first_error: Option<String>,
}

async fn client_loop(
    channel: Channel,
    config: BenchConfig,
    first: usize,
    count: usize,
) -> ClientOutcome {
    let mut kv = KvClient::new(channel);
    let value = vec![b'v'; config.value_size];
    let mut outcome = ClientOutcome {
        latencies: Vec::with_capacity(count),
        failed: 0,
        first_error: None,
    };
    for i in first..first + count {
        let sent = Instant::now();
        let result = match config.workload {
            Workload::Put => kv
                .put(PutRequest {
                    key: format!("{i:0width$}", width = config.key_size).into_bytes(),
                    value: value.clone(),
                    ..Default::default()
                })
                .await
                .map(drop),
            Workload::Get | Workload::GetSerializable => kv
                .range(RangeRequest {
                    key: b"bench-read-key".to_vec(),
                    serializable: config.workload == Workload::GetSerializable,
                    ..Default::default()
                })
                .await
                .map(drop),
        };
        match result {
            Ok(()) => outcome.latencies.push(sent.elapsed()),
            Err(status) => {
                outcome.failed += 1;
                if outcome.first_error.is_none() {
                    outcome.first_error = Some(status.message().to_string());
                }
            }
        }
    }
    outcome
}
