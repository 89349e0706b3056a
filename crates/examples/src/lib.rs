//! Example programs of coordination through the etcd v3 API, with the `etcd-client` crate,
//! against any etcd v3 endpoints (Concord's or etcd's). Each example is a module with a
//! `Config` (its command-line flags) and a `run` that plays its scenario and returns a
//! [`Report`] of what it checked; the binaries in `src/bin/` are thin wrappers that exit
//! non-zero when an invariant is broken. See `README.md` for what each one shows.
//!
//! - [`bank`]: transfers as txns guarded by mod revisions; the total never changes.
//! - [`shop`]: a flash sale; reservations held by leases; never oversold.
//! - [`game`]: one item, many servers; exactly one player gets it and every server learns who.
//! - [`file_transfer`]: a file in checksummed chunks, resumed after an interruption.
//! - [`workers`]: registration by lease, a leader by election, its work fenced.
//!
//! Every client talks to one endpoint (client `i` to endpoint `i % n`), so a fault in one
//! member hits the clients of that member, as it would hit a program running beside it.

use std::future::Future;
use std::time::{Duration, Instant};

use etcd_client::{Client, ConnectOptions};

pub mod bank;
pub mod file_transfer;
pub mod game;
pub mod shop;
pub mod workers;

/// The flags every example takes.
#[derive(clap::Args, Clone, Debug)]
pub struct Common {
    /// Client endpoints, comma separated (the default is `concord dev`'s cluster).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "http://127.0.0.1:2379,http://127.0.0.1:2389,http://127.0.0.1:2399"
    )]
    pub endpoints: Vec<String>,
    /// Prefix of every key the run writes (default: the example's name and the start time,
    /// so that runs never share keys).
    #[arg(long)]
    pub prefix: Option<String>,
    /// Milliseconds a request may take before its outcome counts as unknown.
    #[arg(long, default_value_t = 2000)]
    pub timeout_ms: u64,
    /// Seed of the run's random choices.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

impl Common {
    /// The defaults, against `endpoints`.
    #[must_use]
    pub fn new(endpoints: Vec<String>) -> Common {
        Common {
            endpoints,
            prefix: None,
            timeout_ms: 2000,
            seed: 1,
        }
    }

    /// How long a request may take.
    #[must_use]
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }

    /// The endpoint of client `i`.
    #[must_use]
    pub fn endpoint(&self, i: usize) -> &str {
        &self.endpoints[i % self.endpoints.len()]
    }

    /// The prefix of the run's keys, ending with `/`.
    #[must_use]
    pub fn prefix(&self, example: &str) -> String {
        match &self.prefix {
            Some(p) if p.ends_with('/') => p.clone(),
            Some(p) => format!("{p}/"),
            None => {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis());
                format!("examples/{example}/{now}/")
            }
        }
    }
}

/// A client of `endpoint`, retrying for up to 30 s while the member does not answer.
///
/// # Errors
/// No connection within 30 s.
pub async fn connect(endpoint: &str) -> anyhow::Result<Client> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let options = ConnectOptions::new().with_connect_timeout(Duration::from_secs(2));
        let attempt = tokio::time::timeout(
            Duration::from_secs(3),
            Client::connect([endpoint], Some(options)),
        )
        .await;
        match attempt {
            Ok(Ok(client)) => return Ok(client),
            _ if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Ok(Err(e)) => anyhow::bail!("cannot connect to {endpoint}: {e}"),
            Err(_) => anyhow::bail!("cannot connect to {endpoint}: timed out"),
        }
    }
}

/// `call` with a deadline: `None` when it failed or did not answer in time (its outcome is
/// then unknown: it may have taken effect).
pub async fn within<T>(
    timeout: Duration,
    call: impl Future<Output = Result<T, etcd_client::Error>>,
) -> Option<T> {
    tokio::time::timeout(timeout, call).await.ok()?.ok()
}

/// Runs `client(i)` for every `i` in `0..n`, each in its own task, and returns what each
/// returned, in order of `i`.
///
/// # Errors
/// If a client's task panicked.
pub async fn run_clients<T, F>(n: usize, client: impl FnMut(usize) -> F) -> anyhow::Result<Vec<T>>
where
    F: Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let tasks: Vec<_> = (0..n).map(client).map(tokio::spawn).collect();
    let mut results = Vec::with_capacity(n);
    for task in tasks {
        results.push(task.await?);
    }
    Ok(results)
}

/// Keeps lease `id`, granted with `ttl` seconds, alive through `client` until aborted. It
/// renews four times a TTL (no more often than every 200 ms), so that one or two lost renewals do not
/// end the session.
pub fn keep_alive(client: &Client, id: i64, ttl: i64) -> tokio::task::JoinHandle<()> {
    let every = Duration::from_millis((ttl as u64 * 1000 / 4).max(200));
    let mut client = client.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(every).await;
            let renew = async {
                let (mut keeper, mut stream) = client.lease_keep_alive(id).await?;
                keeper.keep_alive().await?;
                stream.message().await
            };
            let _ = tokio::time::timeout(Duration::from_secs(1), renew).await;
        }
    })
}

/// When every session with leases of `ttl` seconds has surely ended: closed, or its lease
/// run out within a TTL (and the time a new leader of the cluster gives a lease).
#[must_use]
pub fn sessions_ended_by(ttl: i64) -> Instant {
    Instant::now() + Duration::from_secs(ttl as u64 * 2 + 20)
}

/// What a run checked, and what it found broken.
#[derive(Debug, Default)]
pub struct Report {
    /// What happened (counts), for a person.
    pub notes: Vec<String>,
    /// Every invariant checked, with whether it held.
    pub checks: Vec<(String, bool)>,
}

impl Report {
    /// Adds a line about what happened.
    pub fn note(&mut self, text: impl Into<String>) {
        self.notes.push(text.into());
    }

    /// Records that `invariant` was checked and whether it `held`.
    pub fn check(&mut self, invariant: impl Into<String>, held: bool) {
        self.checks.push((invariant.into(), held));
    }

    /// The invariants that did not hold.
    #[must_use]
    pub fn broken(&self) -> Vec<&str> {
        self.checks
            .iter()
            .filter(|(_, held)| !held)
            .map(|(what, _)| what.as_str())
            .collect()
    }

    /// Whether every invariant held.
    #[must_use]
    pub fn passed(&self) -> bool {
        self.checks.iter().all(|(_, held)| *held)
    }

    /// The report as text.
    #[must_use]
    pub fn text(&self) -> String {
        let mut out = String::new();
        for note in &self.notes {
            out.push_str(&format!("  {note}\n"));
        }
        for (what, held) in &self.checks {
            let mark = if *held { "ok    " } else { "BROKEN" };
            out.push_str(&format!("{mark} {what}\n"));
        }
        out
    }
}

/// The `main` of an example's binary: parses the example's flags `C` from the command line
/// (with `about` as the help's summary), runs it and exits as [`exit`] does.
pub fn main<C: clap::Args>(
    example: &'static str,
    about: &'static str,
    run: impl AsyncFnOnce(&C) -> anyhow::Result<Report>,
) -> ! {
    // The summary goes on last: the flags' own doc comment would otherwise replace it.
    let command = C::augment_args(clap::Command::new(example)).about(about);
    let config = C::from_arg_matches(&command.clone().get_matches())
        .map_err(|e| e.format(&mut command.clone()))
        .unwrap_or_else(|e| e.exit());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("Failed building the Runtime");
    let outcome = runtime.block_on(run(&config));
    exit(example, outcome)
}

/// Prints a run's outcome and exits: 0 if every invariant held, 1 if one broke, 2 if the
/// run could not be carried out.
pub fn exit(example: &str, outcome: anyhow::Result<Report>) -> ! {
    match outcome {
        Ok(report) => {
            print!("{example}:\n{}", report.text());
            if report.passed() {
                println!("{example}: every invariant held");
                std::process::exit(0);
            }
            println!("{example}: {} invariant(s) broken", report.broken().len());
            std::process::exit(1);
        }
        Err(e) => {
            eprintln!("{example}: {e:#}");
            std::process::exit(2);
        }
    }
}
