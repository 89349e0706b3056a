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
